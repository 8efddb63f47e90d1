"""The model registry the fleet shares: which models exist, by which names, with which file.

Not to be confused with shared/registry.py (which workers are alive). An entry is added once
(`tokenq model add`) and kept in Redis, so every API replica and worker host sees the same
names; the file itself stays on each host's disk, in its model directory, named by its sha256
(files.py), and a worker serves it only if its digest is still the registered one.
"""

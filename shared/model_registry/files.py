"""Model files on this host: kept in the model directory under their digest
(`sha256-<hex>.gguf`, as Ollama names its blobs), so a registry entry finds its file on any
host that has it, and a changed file is told apart from the registered one."""

import os
import shutil
import uuid
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel

from shared.model_facts import sha256
from shared.model_registry.entry import ModelEntry


class Placement(StrEnum):
    """How `tokenq model add` puts a file into the model directory."""

    LINK = "link"  # a symbolic link to the file where it is (nothing copied)
    COPY = "copy"  # a copy: the model directory holds the data itself
    MOVE = "move"  # the file itself, renamed (one written in the model directory already)


class ModelFileError(Exception):
    """The registered file cannot be served from this host (the message says why)."""


class FileCheck(BaseModel):
    """What `verify` found: the file, and its digest now (None: no file)."""

    path: Path
    expected: str
    found: str | None

    @property
    def ok(self) -> bool:
        return self.found == self.expected

    def problem(self, name: str) -> str | None:
        """Why the file cannot be served as `name`, or None."""
        if self.found is None:
            return (
                f"the file of '{name}' (sha256 {self.expected}) is not on this host: expected "
                f"at {self.path}; add it with `tokenq model add FILE --name {name}`"
            )
        if not self.ok:
            return (
                f"the file of '{name}' at {self.path} was changed: its sha256 is {self.found}, "
                f"registered {self.expected}; restore the file or register it anew "
                f"(`tokenq model rm {name}`, then `tokenq model add`)"
            )
        return None


def file_name(digest: str) -> str:
    return f"sha256-{digest}.gguf"


def locate(models_dir: Path, digest: str) -> Path:
    """Where the file of this digest is (or would be) on this host."""
    return models_dir / file_name(digest)


def place(models_dir: Path, source: Path, digest: str, how: Placement) -> Path:
    """Put `source` (whose sha256 is `digest`) into the model directory; its path there.

    A file already there under this digest is kept. Written under a temporary name and
    renamed, so a concurrent reader never sees half a file.
    """
    target = locate(models_dir, digest)
    if target.exists():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    if how is Placement.MOVE:
        os.replace(source, target)
        return target
    partial = models_dir / f".{target.name}.{uuid.uuid4().hex}.partial"
    try:
        if how is Placement.LINK:
            partial.symlink_to(source.resolve())
        else:
            shutil.copyfile(source, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def check(models_dir: Path, entry: ModelEntry) -> FileCheck:
    """Hash this host's file of `entry` (about 0.3 s per 100 MB)."""
    path = locate(models_dir, entry.digest)
    found = sha256(path) if path.is_file() else None
    return FileCheck(path=path, expected=entry.digest, found=found)


def verified_path(models_dir: Path, entry: ModelEntry) -> Path:
    """This host's file of `entry`, checked against the registered digest."""
    result = check(models_dir, entry)
    problem = result.problem(entry.name)
    if problem is not None:
        raise ModelFileError(problem)
    return result.path


def discard(models_dir: Path, digest: str) -> Path | None:
    """Remove this host's file of `digest` (a link: only the link); the path removed."""
    path = locate(models_dir, digest)
    if not (path.is_symlink() or path.exists()):
        return None
    path.unlink()
    return path

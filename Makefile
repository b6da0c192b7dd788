# Everything runs inside .venv, created and filled from pyproject.toml on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast demo bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

## the whole suite (CPU, offline): unit tests, config tests and the end-to-end runs
test: $(STAMP)
	$(PY) -m pytest -q --durations=15

## unit and config tests only (no Ray, no MLflow end-to-end runs)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not cluster"

## the main job on the embedded default: a smoke search on scikit-learn's digits
demo: $(STAMP)
	$(PY) -m search.run space=alpha profile=smoke

## throughput of the training step (prints images/s and the ratio to the per-image baseline), then one RSLAD
## epoch: a reference-style loop vs fit() vs fit() with the soft-label cache (a few minutes on a CPU)
bench: $(STAMP)
	$(PY) -m benchmarks.train_speed
	$(PY) -m benchmarks.rslad_epoch

## bf16 vs fp32 on a GPU: accuracy and images/s side by side (says so and exits 0 without CUDA)
gpu-check: $(STAMP)
	$(PY) -m benchmarks.gpu_check

clean:
	rm -rf $(VENV) ray_results mlruns.db mlartifacts optuna.db reports .pytest_cache

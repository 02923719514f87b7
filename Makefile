# The demo/test environment lives outside the checkout and is keyed on pyproject.toml,
# so a repeat `make test` (or a fresh clone on the same machine) installs nothing new.
PYTHON    ?= python3
ENV_ROOT  ?= $(HOME)/.cache/rmeval
DEPS_KEY  := $(shell cat pyproject.toml Makefile | sha256sum | cut -c1-12)
VENV      ?= $(ENV_ROOT)/venv-$(DEPS_KEY)
# The CPU wheel that lies on local disk; pyproject leaves torch unpinned for GPU users.
TORCH_PIN ?= torch==2.13.0
EXTRAS    ?= test,beaker,verify,fit,lightgbm
PATH_KEY  := $(shell printf '%s' "$(CURDIR)" | sha256sum | cut -c1-12)
DEPS_OK   := $(VENV)/.deps-ok
PKG_OK    := $(VENV)/.pkg-$(PATH_KEY)
BIN       := $(VENV)/bin

.PHONY: env demo test lint format bench clean-env image help

help:
	@echo "make demo   - set up the environment and run the end-to-end demo"
	@echo "make test   - set up the environment, lint, and run the whole test suite"

$(DEPS_OK):
	@echo ">> creating environment $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24" "setuptools>=68" wheel
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/pip check
	@# RewardBench's own scoring helper, to test ours against it. Its dependencies (fastchat,
	@# datasets, ...) are not wanted: the tests load only its constants and one function.
	$(BIN)/pip install -q --no-deps "rewardbench==0.1.4"
	touch $(DEPS_OK)
	@# environments of older pyproject versions are left behind by nothing else: prune them
	@for d in $(ENV_ROOT)/venv-*; do [ "$$d" = "$(VENV)" ] || rm -rf "$$d"; done

# The package itself is installed editable from *this* checkout (no dependencies).
$(PKG_OK): $(DEPS_OK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.pkg-*
	touch $(PKG_OK)

env: $(PKG_OK)

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: env
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: env lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: env
	$(BIN)/rmeval demo

bench: env
	@for b in benchmarks/*.py; do echo ">> $$b"; $(BIN)/python $$b || exit 1; done

image:
	@if docker info >/dev/null 2>&1; then docker build -t rmeval:latest . ; \
	else echo "make image: no Docker engine here; build the image where one runs (see README)"; fi

clean-env:
	rm -rf $(VENV)

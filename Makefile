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

# Reference environments the compatibility and parity tests run other transformers in:
# 4.43 (the upstream conversion image's) and RewardBench 0.1.4 with fastchat (it pins
# transformers 4.51.0). Each is keyed on a hash of its pins, built on first use, and lives
# beside the main environment under ENV_ROOT (named ref-*, not venv-*, which are pruned).
REF_TF443_PINS := transformers==4.43.1 sentencepiece==0.2.0 protobuf==5.29.5
REF_RUNRM_PINS := rewardbench==0.1.4 fschat==0.2.36 sentencepiece==0.2.0 protobuf==5.29.5 \
                  datasets==5.0.1 accelerate==1.15.0
pins_key = $(shell printf '%s' "$(TORCH_PIN) $(1)" | sha256sum | cut -c1-12)
REF_TF443 := $(ENV_ROOT)/ref-tf443-$(call pins_key,$(REF_TF443_PINS))
REF_RUNRM := $(ENV_ROOT)/ref-runrm-$(call pins_key,$(REF_RUNRM_PINS))
# what `make test` tells the tests (tests/refenv.py reads them)
REF_ENV_VARS := RMEVAL_TF443_PYTHON=$(REF_TF443)/bin/python RMEVAL_RUNRM_PYTHON=$(REF_RUNRM)/bin/python

.PHONY: env ref-envs demo test lint format bench clean-env image help

help:
	@echo "make demo   - set up the environment and run the end-to-end demo"
	@echo "make test   - set up the environments, lint, and run the whole test suite"
	@echo "make ref-envs - build the transformers 4.43 and RewardBench 0.1.4 reference environments"

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

# $(call ref_env,NAME,PINS): ENV_ROOT/NAME-<hash of the pins>, with the CPU torch wheel
# installed first (so nothing pulls a CUDA build), then the pins, then pip check; NAME-*
# siblings with other pins are pruned.
define ref_env
	@echo ">> creating reference environment $(ENV_ROOT)/$(1)-$(call pins_key,$(2))"
	rm -rf $(ENV_ROOT)/$(1)-$(call pins_key,$(2))
	$(PYTHON) -m venv $(ENV_ROOT)/$(1)-$(call pins_key,$(2))
	$(ENV_ROOT)/$(1)-$(call pins_key,$(2))/bin/pip install -q --upgrade "pip>=24" "setuptools>=68" wheel
	$(ENV_ROOT)/$(1)-$(call pins_key,$(2))/bin/pip install -q "$(TORCH_PIN)"
	$(ENV_ROOT)/$(1)-$(call pins_key,$(2))/bin/pip install -q "$(TORCH_PIN)" $(2)
	$(ENV_ROOT)/$(1)-$(call pins_key,$(2))/bin/pip check
	touch $(ENV_ROOT)/$(1)-$(call pins_key,$(2))/.ok
	@for d in $(ENV_ROOT)/$(1)-*; do \
		[ "$$d" = "$(ENV_ROOT)/$(1)-$(call pins_key,$(2))" ] || rm -rf "$$d"; done
endef

$(REF_TF443)/.ok:
	$(call ref_env,ref-tf443,$(REF_TF443_PINS))

$(REF_RUNRM)/.ok:
	$(call ref_env,ref-runrm,$(REF_RUNRM_PINS))

ref-envs: $(REF_TF443)/.ok $(REF_RUNRM)/.ok

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: env
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: env lint ref-envs
	$(REF_ENV_VARS) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: env
	$(BIN)/rmeval demo

bench: env
	@for b in benchmarks/*.py; do echo ">> $$b"; $(BIN)/python $$b || exit 1; done

image:
	@if docker info >/dev/null 2>&1; then docker build -t rmeval:latest . ; \
	else echo "make image: no Docker engine here; build the image where one runs (see README)"; fi

clean-env:
	rm -rf $(VENV) $(REF_TF443) $(REF_RUNRM)

# The demo/test environment lives outside the checkout and is keyed on pyproject.toml and
# this Makefile, so a repeat `make test` (or another checkout on the same machine) installs
# nothing new. It holds rmeval's dependencies only, never rmeval itself: every target runs
# this checkout's code (PYTHONPATH=$(CURDIR), `python -m rmeval`), and so does every process
# they start, so two checkouts that share the environment never run each other's code.
PYTHON    ?= python3
ENV_ROOT  ?= $(HOME)/.cache/rmeval
DEPS_KEY  := $(shell cat pyproject.toml Makefile | sha256sum | cut -c1-12)
VENV      ?= $(ENV_ROOT)/venv-$(DEPS_KEY)
# The CPU wheel that lies on local disk; pyproject leaves torch unpinned for GPU users.
TORCH_PIN ?= torch==2.13.0
# Where that torch comes from when it is not on local disk: CI on GitHub-hosted runners sets
# TORCH_INDEX (from the repository variable TORCH_CPU_INDEX) to the CPU-only wheel index,
# so pip does not pull the multi-GB CUDA build. Empty: pip's own configuration.
TORCH_INDEX ?=
TORCH_FROM = $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
EXTRAS    ?= test,beaker,verify,fit,lightgbm
DEPS_OK   := $(VENV)/.deps-ok
BIN       := $(VENV)/bin
PY        := $(BIN)/python
# How every target runs code: this checkout first on the path (children inherit it). Other
# recipes (pip above all) never see a PYTHONPATH.
RUN_ENV   := PYTHONPATH=$(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
unexport PYTHONPATH
ARGS      ?= --help

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

# The lock of the run-time dependencies (scripts/lock.py): uv, pinned, in its own small
# environment beside the others (named lock-uv-*, never pruned by the main one).
UV_PIN   := uv==0.13.8
LOCK_UV  := $(ENV_ROOT)/lock-uv-$(shell printf '%s' "$(UV_PIN)" | sha256sum | cut -c1-12)

.PHONY: help env ref-envs lint typecheck format test demo run bench image clean-env lock lock-check

help: ## list the targets (this text)
	@awk -F ':.*## ' '/^[a-z-]+:.*## / {printf "make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# pip installs the package with its extras (resolving every pin), then removes the package
# itself and the build's leftovers in the checkout: what stays is the dependencies. The
# check after it proves rmeval is not importable from the environment alone.
$(DEPS_OK):
	@echo ">> creating environment $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24" "setuptools>=68" wheel
	$(BIN)/pip install -q $(TORCH_FROM) "$(TORCH_PIN)"
	$(BIN)/pip install -q ".[$(EXTRAS)]"
	$(BIN)/pip uninstall -q -y rmeval
	rm -rf build rmeval.egg-info
	$(BIN)/pip check
	@# RewardBench's own scoring helper, to test ours against it. Its dependencies (fastchat,
	@# datasets, ...) are not wanted: the tests load only its constants and one function.
	$(BIN)/pip install -q --no-deps "rewardbench==0.1.4"
	cd / && ! PYTHONPATH= $(PY) -c "import rmeval" 2>/dev/null
	touch $(DEPS_OK)
	@# environments of older pyproject versions are left behind by nothing else: prune them
	@for d in $(ENV_ROOT)/venv-*; do [ "$$d" = "$(VENV)" ] || rm -rf "$$d"; done

env: $(DEPS_OK) ## create the shared dependency environment if it is missing

# $(call ref_env,NAME,PINS): ENV_ROOT/NAME-<hash of the pins>, with the CPU torch wheel
# installed first (so nothing pulls a CUDA build), then the pins, then pip check; NAME-*
# siblings with other pins are pruned.
define ref_env
	@echo ">> creating reference environment $(ENV_ROOT)/$(1)-$(call pins_key,$(2))"
	rm -rf $(ENV_ROOT)/$(1)-$(call pins_key,$(2))
	$(PYTHON) -m venv $(ENV_ROOT)/$(1)-$(call pins_key,$(2))
	$(ENV_ROOT)/$(1)-$(call pins_key,$(2))/bin/pip install -q --upgrade "pip>=24" "setuptools>=68" wheel
	$(ENV_ROOT)/$(1)-$(call pins_key,$(2))/bin/pip install -q $(TORCH_FROM) "$(TORCH_PIN)"
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

ref-envs: $(REF_TF443)/.ok $(REF_RUNRM)/.ok ## build the transformers 4.43 and RewardBench 0.1.4 reference environments

$(LOCK_UV)/.ok:
	rm -rf $(LOCK_UV)
	$(PYTHON) -m venv $(LOCK_UV)
	$(LOCK_UV)/bin/pip install -q "$(UV_PIN)"
	touch $(LOCK_UV)/.ok

lock: $(LOCK_UV)/.ok ## write requirements.lock from pyproject.toml (uv, with hashes)
	$(PYTHON) scripts/lock.py --uv $(LOCK_UV)/bin/uv

lock-check: $(LOCK_UV)/.ok ## fail when requirements.lock is stale (CI runs it)
	$(PYTHON) scripts/lock.py --uv $(LOCK_UV)/bin/uv --check

lint: env ## ruff check, ruff format --check (the pinned ruff) and mypy rmeval
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy rmeval

typecheck: env ## mypy rmeval alone (also part of lint)
	$(BIN)/mypy rmeval

format: env ## ruff format, then ruff check --fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: env lint ref-envs ## lint, then the whole test suite (PYTEST_ARGS=... to narrow it)
	$(REF_ENV_VARS) $(RUN_ENV) $(PY) -m pytest -q $(PYTEST_ARGS)

demo: env ## the whole pipeline on the embedded default (demo-work/, results/demo/)
	$(RUN_ENV) $(PY) -m rmeval demo

run: env ## this checkout's rmeval with ARGS, e.g. make run ARGS="plan --help"
	$(RUN_ENV) $(PY) -m rmeval $(ARGS)

bench: env ## every benchmark in benchmarks/
	@for b in benchmarks/*.py; do echo ">> $$b"; $(RUN_ENV) $(PY) $$b || exit 1; done

# The build context has no .git: the version is computed here (empty without the environment:
# the image then says 0.0.0).
image: ## the task image (needs a Docker engine), its version from git
	@if docker info >/dev/null 2>&1; then \
		version="$$($(PY) -m setuptools_scm 2>/dev/null)"; \
		docker build --build-arg RMEVAL_VERSION="$$version" -t rmeval:latest . ; \
	else echo "make image: no Docker engine here; build the image where one runs (see README)"; fi

clean-env: ## remove the environments (every checkout using this ENV_ROOT shares them)
	rm -rf $(VENV) $(REF_TF443) $(REF_RUNRM)

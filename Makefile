# One entry point per job. Every target bootstraps .venv from pyproject.toml by itself,
# so a fresh clone needs nothing but Python 3.11 and make.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck layers pytest proto venv clean bench

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "DCNR needs Python >= 3.11, found " + sys.version'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing dependencies from pyproject.toml into $(VENV) ..."
	@$(BIN)/python -m pip install --disable-pip-version-check --upgrade pip > $(VENV)/install.log 2>&1 \
	  || { tail -40 $(VENV)/install.log; exit 1; }
	@$(BIN)/python -m pip install --disable-pip-version-check -e '.[dev]' --config-settings editable_mode=compat >> $(VENV)/install.log 2>&1 \
	  || { tail -40 $(VENV)/install.log; exit 1; }
	@$(BIN)/python -c 'import grpc, google.protobuf, boto3, pydantic, moto, pytest'
	@touch $(STAMP)

venv: $(STAMP)

BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP)
	@$(BIN)/python -m pip install --disable-pip-version-check -e '.[dev,bench]' --config-settings editable_mode=compat >> $(VENV)/install.log 2>&1 \
	  || { tail -40 $(VENV)/install.log; exit 1; }
	@touch $(BENCH_STAMP)

# Not part of make test (about 18 minutes): benchmarks/README.md is regenerated.
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: lint typecheck layers pytest

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

layers: $(STAMP)
	$(BIN)/lint-imports

pytest: $(STAMP)
	$(BIN)/pytest

proto: $(STAMP)
	$(BIN)/python -m api.codegen

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

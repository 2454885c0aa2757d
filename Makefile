# streamrec: `make demo` and `make test` work on a fresh clone with Python 3.11 and nothing else.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# One BLAS thread: OpenBLAS worker threads spinning doubled CPU per event (issue 7).
export OPENBLAS_NUM_THREADS ?= 1

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint soak bench evaluate clean tools

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found; install Python 3.11 or run make PYTHON=python3"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install streamrec with its test tools

# tests/unit/test_deploy.py runs promtool (Debian package prometheus) and docker-compose.
# Installed with apt when missing and running as root; otherwise this says what to run and
# those tests fail with the same advice (they skip only on an OS without apt-get).
DEPLOY_TOOLS := promtool:prometheus docker-compose:docker-compose

tools: ## install promtool and docker-compose for the deploy checks (apt, as root; no-op if present)
	@missing=""; \
	for pair in $(DEPLOY_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make tools: no apt-get on this OS; install$$missing by hand for the deploy checks" >&2; exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "make tools: not root; run: sudo apt-get install -y --no-install-recommends$$missing" >&2; exit 0; fi; \
	echo "make tools: apt-get install$$missing"; \
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends$$missing >/dev/null; } \
	|| echo "make tools: apt-get install$$missing FAILED; the deploy tests will fail" >&2

demo: $(STAMP) ## run the whole pipeline on embedded Kafka and Redis, then summarise
	$(BIN)/streamrec demo

test: $(STAMP) tools lint ## ruff and mypy, then every test (unit, integration, fault); fails if none ran
	$(BIN)/python -m pytest -m "not soak" -p no:cacheprovider

test-fast: $(STAMP) tools ## unit tests only
	$(BIN)/python -m pytest -m "not integration and not fault and not soak" -p no:cacheprovider

lint: $(STAMP) ## ruff, then mypy (configured in pyproject.toml)
	$(BIN)/ruff check streamrec streams models producers consumers tests
	$(BIN)/mypy

soak: $(STAMP) ## 5-minute memory soak at a steady rate
	$(BIN)/python -m pytest -m soak -s -p no:cacheprovider

bench: $(STAMP) ## throughput and latency benchmark
	$(BIN)/streamrec bench --events 300000 --report bench.json

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

# onnx-web cluster: the commands people type. `make help` lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 5000
T ?= tests
TESTARGS ?=
FUZZ_CASES ?= 10000
FUZZ_TIMEOUT_S ?= 3600
LOAD_SECONDS ?= 60

##@ Set-up

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[worker,local,dev]'
	$(BIN)/python -m pip install -q --no-deps -r requirements/convert-nodeps.txt
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the service, worker, local stack and dev tools

demo-models: install ## Build the small random-weight demo models into ./var/models
	$(BIN)/onnx-web convert demo --models var/models

##@ Running

run: install ## Run everything locally (embedded Postgres + S3, api on PORT=5000, one worker)
	@test -f gui/dist/index.html || ./scripts/gui-build.sh || echo "GUI not built; the api serves a placeholder page"
	$(BIN)/onnx-web run --port $(PORT)

gui: ## Build the web GUI bundle into gui/dist
	./scripts/gui-build.sh

##@ Checks

test: install ## Run every test: unit, integration (real Postgres/S3), end to end, GUI in Chromium
	$(BIN)/pytest -q $(T) $(TESTARGS)
	./scripts/gui-test.sh
	./scripts/gui-e2e.sh

test/unit: install ## Unit tests only (no services)
	$(BIN)/pytest -q tests/unit $(TESTARGS)

test/integration: install ## Integration tests against embedded Postgres and SeaweedFS
	$(BIN)/pytest -q tests/integration $(TESTARGS)

check-infra: install ## Containerfile, compose and Kubernetes manifests, checked offline (tests/infra)
	$(BIN)/pytest -q tests/infra $(TESTARGS)

test/e2e: install ## End-to-end tests through the running stack
	$(BIN)/pytest -q tests/e2e $(TESTARGS)

release-check: install ## Release references: every mode at fixed seeds against tests/e2e/refs (URL=http://host:port PLATFORM=cuda for a running server)
	$(BIN)/python -m tests.e2e.release $(if $(URL),--url $(URL)) $(if $(PLATFORM),--platform $(PLATFORM)) $(CASES)

refs: install ## Write the release references anew (CPU set on the demo models), after a change meant to move pixels
	$(BIN)/python -m tests.e2e.release --update $(if $(URL),--url $(URL)) $(if $(PLATFORM),--platform $(PLATFORM)) $(CASES)

test-fuzz: install ## Fuzz the running stack from /api/openapi.json (FUZZ_CASES=10000); summary in bench-results/fuzz.json
	FUZZ_CASES=$(FUZZ_CASES) FUZZ_SUMMARY=bench-results/fuzz.json $(BIN)/pytest -q tests/fuzz --timeout $(FUZZ_TIMEOUT_S) $(TESTARGS)

test-load: install ## Locust against a local stack for LOAD_SECONDS=60; p50/p95/p99, rate, 5xx in bench-results/load.json
	$(BIN)/python -m bench.load --seconds $(LOAD_SECONDS) --out bench-results/load.json

CHAOS_JOBS ?= 1000
test-chaos: install ## Chaos run: CHAOS_JOBS=1000 jobs, 4 workers, workers/api/S3 killed, Postgres restarted; bench-results/chaos.json
	@mkdir -p bench-results
	$(BIN)/python scripts/chaos.py --jobs $(CHAOS_JOBS) --workers 4 --out bench-results/chaos.json

lint: install ## ruff and mypy
	$(BIN)/ruff check service pipelines bench tests scripts migrations
	$(BIN)/ruff format --check service pipelines bench tests scripts migrations
	$(BIN)/mypy

bench: install ## Benchmarks: queue throughput, submit-to-success overhead, modes vs diffusers, real workers
	$(BIN)/python -m bench.suite --out bench-results/bench.json

bench-scale: install ## Queue scale-out: 1-64 simulated workers, 1,000 and 100,000 pending; bench-results/scale.json
	$(BIN)/python -m bench.scale --out bench-results/scale.json

bench-worker: install ## Real workers: images/s with and without output overlap, 1 vs 2 processes, affinity's model loads; bench-results/worker.json
	$(BIN)/python -m bench.worker --out bench-results/worker.json

clean: ## Remove local data, builds and caches (keeps .venv)
	rm -rf var bench-results gui/dist .pytest_cache .mypy_cache .ruff_cache

help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} /^[a-zA-Z_\/-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

.PHONY: install demo-models run gui test test/unit test/integration check-infra test/e2e release-check refs test-fuzz test-load test-chaos lint bench bench-scale bench-worker clean help

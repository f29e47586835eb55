# feedrank: the two commands are `make demo` and `make test`; everything else is a building block.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
PY          := $(VENV)/bin/python
PIP         := $(VENV)/bin/pip
# maturin gets its own target directory: it builds the binding with other features than
# `cargo build --workspace`, and sharing one would make each rebuild the other's work.
MATURIN_TARGET := target-maturin
export DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/feedrank
export REDIS_URL    ?= redis://127.0.0.1:6379/0

RUST_SOURCES := $(shell find rust -name '*.rs' -o -name Cargo.toml) Cargo.toml
API_SOURCES  := $(shell find api/src -name '*.rs') api/Cargo.toml $(wildcard migrations/*.sql api/static/*) $(RUST_SOURCES)

.PHONY: help demo demo-kernels demo-check test test-fast test-distributed venv develop api openapi services migrate lint rust-test py-test stubtest bench bench-api bench-load bench-pipeline bench-retrieval bench-pipeline-celery nextauth-helper fuzz fuzz-api soak reliability-tools distributed-tools

help:
	@echo "make demo   build everything, start the services, load demo data and show it working"
	@echo "make test   the whole test suite (starts the services it needs)"
	@echo "make test-fast  the core's cargo tests and the Python tests that need no service (< 3 min)"
	@echo "make test-distributed  the pipeline on Celery workers in network namespaces, S3, Kubernetes loading, API replicas, Redis Cluster (root)"
	@echo "make bench  kernel benchmarks against scikit-learn, implicit and numpy"
	@echo "make fuzz / fuzz-api / soak   hostile input and load (docs/reliability.md)"

# --- set-up steps, each skipped when already done ------------------------------------------

$(VENV)/.installed: requirements-dev.txt
	@echo "==> python virtual environment $(VENV)"
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PIP) install --quiet --upgrade pip
	@$(PIP) install --quiet -r requirements-dev.txt
	@touch $@

venv: $(VENV)/.installed

$(VENV)/.feedrank-built: $(VENV)/.installed $(RUST_SOURCES) pyproject.toml $(shell find python -name '*.py' -o -name '*.pyi')
	@echo "==> building the feedrank extension (maturin, release)"
	@CARGO_TARGET_DIR=$(MATURIN_TARGET) $(VENV)/bin/maturin develop --release --quiet --uv 2>/dev/null \
	  || CARGO_TARGET_DIR=$(MATURIN_TARGET) $(VENV)/bin/maturin develop --release --quiet
	@touch $@

develop: $(VENV)/.feedrank-built

target/release/feedrank-api: $(API_SOURCES)
	@echo "==> building the API (cargo, release)"
	@cargo build --release -p feedrank-api --quiet
	@touch $@

api: target/release/feedrank-api

# docs/openapi.json, the committed contract: regenerated here only (a test compares it with what
# the API serves and fails when they differ).
openapi: api
	@target/release/feedrank-api openapi > docs/openapi.json
	@echo "==> docs/openapi.json written"

# The API's tests mint NextAuth session cookies with the real next-auth package (tests/nextauth).
NEXTAUTH_HELPER := tests/nextauth/node_modules/.package-lock.json
$(NEXTAUTH_HELPER): tests/nextauth/package.json tests/nextauth/package-lock.json
	@echo "==> next-auth test helper (npm ci)"
	@cd tests/nextauth && npm ci --no-audit --no-fund --silent
	@touch $@

nextauth-helper: $(NEXTAUTH_HELPER)

services:
	@scripts/services.sh up

migrate: api services
	@target/release/feedrank-api migrate

# --- tests -----------------------------------------------------------------------------------

lint:
	@echo "==> cargo fmt --check, cargo clippy -D warnings"
	@cargo fmt --all -- --check
	@cargo clippy --workspace --all-targets --quiet -- -D warnings

# The stubs (python/feedrank/_core.pyi) against the built module: every name, parameter and
# default as the module declares them (mypy.stubtest, as pydantic-core does).
.PHONY: stubtest
stubtest: develop
	@echo "==> mypy.stubtest feedrank._core"
	@MYPYPATH=python MYPY_CACHE_DIR=$(MATURIN_TARGET)/mypy-cache $(PY) -m mypy.stubtest feedrank._core

rust-test: services $(NEXTAUTH_HELPER)
	@echo "==> cargo test"
	@cargo test --workspace --quiet

py-test: develop services api reliability-tools distributed-tools
	@echo "==> pytest"
	@$(PY) -m pytest -q tests

# socat bridges the distributed tests' network namespaces to the services (tests/distributed/
# cluster.py); HAProxy balances the API replicas (tests/distributed/replicas.py); ip and unshare
# come with every Debian system, moto's S3 server with requirements-dev, redis-server (the Redis
# Cluster nodes) with the services.
distributed-tools:
	@command -v socat >/dev/null || { echo "==> installing socat (apt-get)"; \
	  apt-get install -y socat >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y socat >/dev/null; }; }
	@command -v haproxy >/dev/null || { echo "==> installing haproxy (apt-get)"; \
	  apt-get install -y haproxy >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y haproxy >/dev/null; }; } \
	  || { echo "haproxy could not be installed (apt-get install haproxy): the API replicas test needs it" >&2; exit 1; }

# Past one machine (tests/distributed, about 5 minutes; part of `make test` too): the IO manager
# on moto's S3 server, the sharded graph on two Celery workers each in its own network namespace
# (a worker killed mid-write), the Kubernetes executor loaded; the API as three replicas behind
# HAProxy, and the API and the pipeline on a three-node Redis Cluster. Needs root (ip netns) and
# RabbitMQ on 127.0.0.1:5672; a missing one fails the tests, never skips them.
test-distributed: develop services api distributed-tools
	@echo "==> pytest tests/distributed"
	@$(PY) -m pytest -q tests/distributed

test: lint stubtest rust-test py-test demo-check

# The edit-test loop: the core's Rust tests and every Python test that needs no service
# (`pytest -m fast`: tests/python and the tests marked fast; tests/conftest.py fails one that
# reaches PostgreSQL, Redis or RabbitMQ). No service is started.
test-fast: develop
	@echo "==> cargo test -p feedrank-core"
	@cargo test -p feedrank-core --quiet
	@echo "==> pytest -m fast"
	@$(PY) -m pytest -q -m fast tests

# --- demo and benchmarks ---------------------------------------------------------------------

# The whole system, as a newcomer meets it (scripts/demo.sh says what it does; Ctrl-C stops it).
demo:
	@scripts/demo.sh

# The kernels alone, in Python: the extension's runnable example.
demo-kernels: develop
	@$(PY) scripts/demo_kernels.py

# Runs `make demo` in the background, checks what it prints and the /demo page, stops it (< 10 min).
demo-check: develop api
	@$(PY) scripts/demo_check.py

bench: develop
	@$(PY) scripts/bench_kernels.py kernels

# The API under wrk on loopback (feed from the cache, random fallback, tracking); loads
# 100,000 users and 1,000,000 posts into its own database first (docs/api.md, "Benchmark").
bench-api: api develop services
	@api/bench/bench.sh

# Candidate retrieval against exhaustive scoring on the benchmark's synthetic data (no services):
# top-k overlap and topk time of both paths; RETRIEVAL='{"budget": 4000}' sets the candidate
# path's settings (docs/scaling.md, issue 17).
# GROWTH=30000,100000,300000 measures both paths at those user counts instead (posts 2x,
# interactions 50x; 3,000 sampled users each) and prints each path's growth exponent.
# CONFIG=docs/configs/candidates.json: both paths with that ScoringConfig (its mode aside).
RETRIEVAL ?= {}
GROWTH ?=
bench-retrieval: develop
	@PYTHONPATH=$(CURDIR) $(PY) -W ignore scripts/bench_retrieval.py --retrieval '$(RETRIEVAL)' $(if $(CONFIG),--config $(CONFIG)) \
	  $(if $(GROWTH),--growth $(GROWTH) --sample 3000) --json artifacts/bench-retrieval.json

# `feedrank demo-data` bulk load of 10,000,000 interactions into a throw-away database.
bench-load: api develop services
	@FEEDRANK_API_BIN=$(CURDIR)/target/release/feedrank-api $(PY) scripts/bench_load.py

# The Dagster pipeline on 100,000 users / 200,000 posts / 5,000,000 interactions, top 200: a
# throw-away database, one process per asset; prints time by kind and peak RSS per asset, then the
# incremental refresh of 1,000 users who liked a post since (issue 13's "under 60 s").
# GROWTH=30000,100000,300000 runs the graph at those user counts instead (posts 2x, interactions
# 50x) and prints the growth table: whole graph, scoring, peak RSS, exponents (issue 17).
# CONFIG=docs/configs/candidates.json scores with the candidate path (any ScoringConfig file).
bench-pipeline: api develop services
	@FEEDRANK_API_BIN=$(CURDIR)/target/release/feedrank-api $(PY) -W ignore -m dagster_pipeline.bench \
	  $(if $(CONFIG),--config $(CONFIG)) $(if $(GROWTH),--growth $(GROWTH) --top-k 200,--users 100000 --posts 200000 --interactions 5000000 \
	  --top-k 200 --refresh-users 1000 --json artifacts/bench-pipeline.json)

# The same graph on Celery (two local workers, RabbitMQ, moto's S3 server) against the
# multiprocess executor on the same data: the overhead split into broker, object store and Dagster
# event time, and the object store's cost per asset (dagster_pipeline/README.md). BENCH_USERS etc.
# set the size; the full size is `make bench-pipeline-celery BENCH_USERS=100000 BENCH_POSTS=200000
# BENCH_INTERACTIONS=5000000`.
BENCH_USERS        ?= 20000
BENCH_POSTS        ?= 40000
BENCH_INTERACTIONS ?= 1000000
bench-pipeline-celery: api develop services
	@FEEDRANK_API_BIN=$(CURDIR)/target/release/feedrank-api $(PY) -W ignore -m dagster_pipeline.bench --executor celery \
	  --users $(BENCH_USERS) --posts $(BENCH_POSTS) --interactions $(BENCH_INTERACTIONS) --top-k 200 \
	  --json artifacts/bench-pipeline-celery.json

# --- reliability: hostile input, faults, load (docs/reliability.md) --------------------------

# wrk for the soak runs; the next-auth helper for the forged-cookie attacks.
reliability-tools: $(NEXTAUTH_HELPER)
	@command -v wrk >/dev/null || { echo "==> installing wrk (apt-get)"; \
	  apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }; }

FUZZ_SECONDS ?= 300
FUZZ_CASES   ?= 5000
# proptest on the parsers of outside input (query strings, tracking bodies, bearer JWTs, NextAuth
# cookies, TF-IDF tokenization of arbitrary bytes), round after round with fresh random seeds, for
# FUZZ_SECONDS. (cargo-fuzz needs nightly Rust, which this project does not use.) A failure is
# shrunk, printed and saved by proptest as a regression case that every later run replays first.
fuzz:
	@echo "==> proptest fuzzing of the parsers, $(FUZZ_CASES) cases per property per round, $(FUZZ_SECONDS) s"
	@cargo test -p feedrank-api --test parsers_props --no-run --quiet
	@end=$$((SECONDS + $(FUZZ_SECONDS))); rounds=0; \
	while [ $$SECONDS -lt $$end ]; do \
	  PROPTEST_CASES=$(FUZZ_CASES) cargo test -p feedrank-api --test parsers_props --quiet >/tmp/feedrank-fuzz.log 2>&1 \
	    || { cat /tmp/feedrank-fuzz.log; exit 1; }; \
	  rounds=$$((rounds + 1)); \
	done; \
	echo "fuzz: $$rounds rounds x 15 properties x $(FUZZ_CASES) cases, no failure"

# schemathesis from /openapi.json, >= FUZZ_API_EXAMPLES (2000) requests per route with inputs.
fuzz-api: api venv reliability-tools
	@scripts/fuzz_api.sh

# 10 minutes of wrk (SOAK_SECONDS overrides), 90% feed / 10% tracking, Redis restarted midway.
soak: api venv reliability-tools
	@scripts/soak.sh

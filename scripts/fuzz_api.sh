#!/usr/bin/env bash
# make fuzz-api: schemathesis generates requests from the API's own /openapi.json (valid and
# invalid) and sends them to the real binary on a private PostgreSQL cluster and private Redis.
# Fails on any 5xx, any answer that breaks the documented schema (status, content type, headers,
# body), or when a route with inputs received fewer than FUZZ_API_EXAMPLES requests (counted by
# the API's own /metrics).
#
#   FUZZ_API_EXAMPLES   examples per operation (default 2000)
#   FUZZ_API_WORKERS    concurrent schemathesis workers (default 1: with 2, schemathesis 4.32
#                       cut one operation short; the per-route count catches that)
#   FUZZ_API_SEED       a seed, to replay a run
#   FUZZ_API_JSON       also write the report (JSON) to this file
set -euo pipefail
cd "$(dirname "$0")/.."

args=(--max-examples "${FUZZ_API_EXAMPLES:-2000}" --workers "${FUZZ_API_WORKERS:-1}")
[[ -n "${FUZZ_API_SEED:-}" ]] && args+=(--seed "$FUZZ_API_SEED")
[[ -n "${FUZZ_API_JSON:-}" ]] && args+=(--json "$FUZZ_API_JSON")
exec env FEEDRANK_API_BIN="${FEEDRANK_API_BIN:-target/release/feedrank-api}" \
    .venv/bin/python tests/reliability/fuzz_api_run.py "${args[@]}"

#!/usr/bin/env bash
# make soak: mixed load (wrk: 90% feed reads, 10% tracking with unique event ids) against the API
# on a private PostgreSQL cluster and a private Redis (never the shared services), Redis restarted
# once in the middle; afterwards every accepted event is looked up in user_interactions.
#
#   SOAK_SECONDS   duration (default 600)
#   SOAK_CONNECTIONS, SOAK_THREADS   wrk -c / -t (default 32 / 2)
#   SOAK_JSON      also write the report (JSON) to this file
#
# Exit status 0 only when no accepted event is missing, no event id is stored twice, the API's
# RSS grew less than the stated bound after the warm-up, and the error rate is under its bound
# (tests/reliability/soak_run.py says the bounds).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        echo "==> installing wrk (apt-get)"
        apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
    else
        echo "soak: wrk is not installed (apt-get install -y wrk)" >&2
        exit 2
    fi
fi

args=(--seconds "${SOAK_SECONDS:-600}" --connections "${SOAK_CONNECTIONS:-32}" --threads "${SOAK_THREADS:-2}")
[[ -n "${SOAK_JSON:-}" ]] && args+=(--json "$SOAK_JSON")
exec env FEEDRANK_API_BIN="${FEEDRANK_API_BIN:-target/release/feedrank-api}" \
    .venv/bin/python tests/reliability/soak_run.py "${args[@]}"

#!/usr/bin/env bash
# `make demo`: the whole of feedrank on one machine, from a clean clone.
#
# 1. installs what is missing (virtual environment, the extension, the API), each step skipped
#    when already done;
# 2. brings up PostgreSQL and Redis, applies the migrations, loads the synthetic demo data (only
#    into an empty database) and materializes the Dagster graph (skipped when the last complete
#    run is fresh);
# 3. starts the API (127.0.0.1:8080) and `dagster dev` (127.0.0.1:3000, DAGSTER_HOME=.dagster_home
#    holding deploy/dagster.yaml: runs and events in PostgreSQL) and prints what to try next;
# 4. on Ctrl-C (or SIGTERM) stops what it started; the data stays for the next run.
#
# Needs no standard input. Settings (environment): DATABASE_URL, REDIS_URL, FEEDRANK_DEMO_API_PORT
# (8080), FEEDRANK_DEMO_DAGSTER_PORT (3000), FEEDRANK_DEMO_DAGSTER_HOME (.dagster_home),
# DAGSTER_POSTGRES_URL (the Dagster instance's database: DATABASE_URL's server, database
# <DATABASE_URL's database>_dagster, created when missing),
# FEEDRANK_DEMO_DIR (.data/demo: logs, the development AUTH_SECRET), AUTH_SECRET (generated once
# and kept in FEEDRANK_DEMO_DIR when unset).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

VENV=.venv
PY=$VENV/bin/python
API_BIN=target/release/feedrank-api
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/feedrank}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
API_PORT="${FEEDRANK_DEMO_API_PORT:-8080}"
DAGSTER_PORT="${FEEDRANK_DEMO_DAGSTER_PORT:-3000}"
DEMO_DIR="${FEEDRANK_DEMO_DIR:-$ROOT/.data/demo}"
export DAGSTER_HOME="${FEEDRANK_DEMO_DAGSTER_HOME:-$ROOT/.dagster_home}"
API_URL="http://127.0.0.1:$API_PORT"
DAGSTER_URL="http://127.0.0.1:$DAGSTER_PORT"

STEPS=8
STEP=0
T0=$SECONDS
API_PID=""
DAGSTER_PID=""
STOP_SERVICES=0

step() {
    STEP=$((STEP + 1))
    printf '\n==> [%d/%d] %s  (at %d s)\n' "$STEP" "$STEPS" "$*" "$((SECONDS - T0))"
}
info() { printf '    %s\n' "$*"; }
fail() {
    printf '\nmake demo: %s\n' "$*" >&2
    exit 1
}

# --- stopping what we started ------------------------------------------------------------------

# Each server runs in its own session (scripts/run_dagster_dev.py), so its process group id is its
# pid and one signal to the group reaches every process it spawned (dagster dev's webserver,
# daemon and code server included). Both are asked at once; dagster dev takes about 10 s.
# A process group still has a live (not zombie) member.
group_alive() {
    ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { found = 1 } END { exit !found }'
}

stop_groups() { # PID... (empty ones are skipped)
    local pid i alive
    for pid in "$@"; do
        [[ -n $pid ]] && kill -TERM -- "-$pid" 2>/dev/null || true
    done
    for ((i = 0; i < 240; i++)); do
        alive=0
        for pid in "$@"; do
            [[ -n $pid ]] && group_alive "$pid" && alive=1
        done
        [[ $alive == 0 ]] && return 0
        sleep 0.25
    done
    printf '    still running after 60 s: killing process groups %s\n' "$*"
    for pid in "$@"; do
        [[ -n $pid ]] && kill -KILL -- "-$pid" 2>/dev/null || true
    done
}

cleanup() {
    local code=$?
    trap - EXIT INT TERM
    if [[ -n $API_PID || -n $DAGSTER_PID ]]; then
        printf '\n==> stopping the demo (data stays in place for the next run)\n'
        printf '    stopping the API (process group %s) and dagster dev (process group %s)\n' \
            "${API_PID:--}" "${DAGSTER_PID:--}"
        stop_groups "$API_PID" "$DAGSTER_PID"
        rm -f "$DEMO_DIR/pids"
        printf '    stopped.\n'
    fi
    if [[ $STOP_SERVICES == 1 ]]; then
        scripts/services.sh down || true
    fi
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_http() { # URL SECONDS PID NAME LOG
    local url=$1 secs=$2 pid=$3 name=$4 log=$5 i
    for ((i = 0; i < secs * 4; i++)); do
        if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            printf '    %s exited; the end of %s:\n' "$name" "$log" >&2
            tail -n 30 "$log" >&2 || true
            fail "$name did not start"
        fi
        sleep 0.25
    done
    tail -n 30 "$log" >&2 || true
    fail "$name did not answer at $url within $secs s (log: $log)"
}

# Runs `make FILE-TARGET` unless it is up to date, and says which.
make_step() { # TARGET WHAT
    if make --no-print-directory -q "$1" 2>/dev/null; then
        info "$2: up to date, skipped"
    else
        make --no-print-directory "$1"
        info "$2: done"
    fi
}

apt_install() { # PACKAGE... (only as root with apt-get; otherwise says what to install)
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        info "installing Debian packages: $*"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null ||
            { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; } ||
            fail "apt-get install $* failed"
    else
        fail "missing: $* (install them with your package manager, then run make demo again)"
    fi
}

# --- 1. prerequisites ------------------------------------------------------------------------

step "prerequisites (python3 >= 3.11, cargo >= 1.92, a C compiler, curl)"
command -v curl >/dev/null || apt_install curl
command -v python3 >/dev/null || apt_install python3 python3-venv
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    fail "python3 is $(python3 --version 2>&1); feedrank needs 3.11 or newer"
python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
command -v cc >/dev/null || apt_install build-essential
command -v cargo >/dev/null ||
    fail "cargo is missing: install Rust 1.92 or newer (https://rustup.rs), then run make demo again"
info "$(python3 --version), $(cargo --version)"

# --- 2. build ------------------------------------------------------------------------------------

step "python environment ($VENV: dagster, polars, psycopg, ... from requirements-dev.txt)"
make_step "$VENV/.installed" "virtual environment"

step "the feedrank extension (maturin develop --release) and the API (cargo build --release)"
make_step "$VENV/.feedrank-built" "extension"
make_step "$API_BIN" "API binary $API_BIN"

# --- 3. services, schema, data -------------------------------------------------------------------

step "PostgreSQL and Redis (scripts/services.sh up)"
# Services that this run starts (services.sh records them in its state file) are stopped again
# on exit with `services.sh down`; the data stays in PostgreSQL.
SERVICES_STATE="${FEEDRANK_DATA_DIR:-$ROOT/.data}/services.state"
before=$(cat "$SERVICES_STATE" 2>/dev/null || true)
FEEDRANK_SKIP_RABBITMQ=1 scripts/services.sh up
if [[ $(cat "$SERVICES_STATE" 2>/dev/null || true) != "$before" ]]; then
    STOP_SERVICES=1
fi

step "schema migrations (feedrank-api migrate)"
"$API_BIN" migrate

step "demo data (feedrank demo-data)"
if n=$("$PY" scripts/demo_state.py data-loaded 2>/dev/null); then
    info "the database already holds $n posts: loading skipped (feedrank demo-data --reset reloads)"
else
    "$VENV/bin/feedrank" demo-data
fi

step "recommendations (dagster asset materialize --select 'not key:experiment_report')"
mkdir -p "$DEMO_DIR" "$DAGSTER_HOME"
# The project's instance (deploy/dagster.yaml): runs, events and schedules in PostgreSQL, in a
# database of their own beside the demo's.
ln -sfn "$ROOT/deploy/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"
if [[ -z ${DAGSTER_POSTGRES_URL:-} ]]; then
    DAGSTER_POSTGRES_URL=$("$PY" -c 'import sys; from feedrank import db
url = db.with_database(sys.argv[1], db.database_name(sys.argv[1]) + "_dagster")
print("postgresql+psycopg2://" + url.split("://", 1)[1])' "$DATABASE_URL")
    export DAGSTER_POSTGRES_URL
    "$PY" -c 'import sys; from feedrank import db
name = db.database_name(sys.argv[1]) + "_dagster"
db.database_exists(name, sys.argv[1]) or db.create_database(name, sys.argv[1])' "$DATABASE_URL"
fi
info "Dagster instance: $DAGSTER_HOME/dagster.yaml (runs, events, schedules in PostgreSQL: DAGSTER_POSTGRES_URL)"
if age=$("$PY" scripts/demo_state.py recommendations-fresh 2>/dev/null); then
    info "the last complete run is $age h old and newer than every post: skipped"
    info "(the UI's Materialize all, or the 02:00 UTC schedule, builds a new one)"
else
    t=$SECONDS
    info "materializing the whole graph (log: $DEMO_DIR/materialize.log)"
    # In one process: the default multiprocess executor starts a Python process per step, which
    # costs 5-15 s each on 2 busy cores, more than this data set's steps themselves.
    if ! "$VENV/bin/dagster" asset materialize -m dagster_pipeline.definitions --select 'not key:experiment_report' \
        --config-json '{"execution": {"config": {"in_process": {}}}}' \
        </dev/null >"$DEMO_DIR/materialize.log" 2>&1; then
        tail -n 40 "$DEMO_DIR/materialize.log" >&2
        fail "materializing the pipeline failed (full log: $DEMO_DIR/materialize.log)"
    fi
    grep -oE 'Finished execution of step "[^"]+" in ([0-9]+m)?[0-9.]+m?s' "$DEMO_DIR/materialize.log" |
        sed 's/^/    /' || true
    info "materialized in $((SECONDS - t)) s"
fi

# --- 4. servers --------------------------------------------------------------------------------

step "starting the API on $API_URL and dagster dev on $DAGSTER_URL"
for p in "$API_PORT" "$DAGSTER_PORT"; do
    port_busy "$p" && fail "port $p is already in use (another make demo?); stop it, or set FEEDRANK_DEMO_API_PORT / FEEDRANK_DEMO_DAGSTER_PORT"
done

# A development signing secret, made once and kept beside the logs (not in the repository).
if [[ -z ${AUTH_SECRET:-} ]]; then
    if [[ ! -s $DEMO_DIR/auth_secret ]]; then
        (umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(32))' >"$DEMO_DIR/auth_secret")
    fi
    AUTH_SECRET=$(<"$DEMO_DIR/auth_secret")
fi
export AUTH_SECRET

# FEEDRANK_DEMO=1 turns on the /demo page's user list (with development tokens); it is off unless
# set, and only this script sets it.
FEEDRANK_DEMO=1 BIND_ADDR="127.0.0.1:$API_PORT" \
    "$PY" scripts/run_dagster_dev.py "$API_BIN" serve </dev/null >"$DEMO_DIR/api.log" 2>&1 &
API_PID=$!
"$PY" scripts/run_dagster_dev.py "$VENV/bin/dagster" dev -m dagster_pipeline.definitions \
    -h 127.0.0.1 -p "$DAGSTER_PORT" </dev/null >"$DEMO_DIR/dagster.log" 2>&1 &
DAGSTER_PID=$!
printf 'api %s\ndagster %s\n' "$API_PID" "$DAGSTER_PID" >"$DEMO_DIR/pids"
info "API pid $API_PID (log $DEMO_DIR/api.log), dagster dev pid $DAGSTER_PID (log $DEMO_DIR/dagster.log)"

wait_http "$API_URL/healthz" 60 "$API_PID" "the API" "$DEMO_DIR/api.log"
info "the API answers"

USER_ID=$("$PY" scripts/demo_state.py demo-user) || fail "no demo user with recommendations"
TOKEN=$("$API_BIN" token --user "$USER_ID" | tail -n 1)
[[ -n $TOKEN ]] || fail "feedrank-api token printed nothing"
FEED_URL="$API_URL/api/feeds?limit=5"
summary=$("$PY" scripts/demo_state.py warm-feed "$FEED_URL" "$TOKEN") ||
    fail "GET $FEED_URL did not answer from the cache: $summary"
POST_ID=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["first_post_id"])' "$summary")

wait_http "$DAGSTER_URL/server_info" 180 "$DAGSTER_PID" "dagster dev" "$DEMO_DIR/dagster.log"
info "the Dagster UI answers"
SCHEDULES=$("$PY" scripts/demo_state.py schedules "$DAGSTER_URL") || {
    printf '%s\n' "$SCHEDULES"
    tail -n 30 "$DEMO_DIR/dagster.log" >&2
    fail "the pipeline's schedule is not running in dagster dev (log: $DEMO_DIR/dagster.log)"
}
info "$SCHEDULES"

# --- 5. what to do next ------------------------------------------------------------------------

cat <<EOF

feedrank demo is ready (started in $((SECONDS - T0)) s). Press Ctrl-C to stop it; the data stays.

  The feed of demo user $USER_ID (development token, valid for a day):

    curl -s -H "Authorization: Bearer $TOKEN" "$FEED_URL"

  answered just now:
$("$PY" scripts/demo_state.py describe-feed "$summary")

  Track a like on the first post (201 with the interaction id):

    curl -s -X POST -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" -d '{"postId":"$POST_ID","interactionType":"like"}' "$API_URL/api/track"

  The demo page (pick a user, their feed beside the random fallback, like or hide posts):

    $API_URL/demo

  The Dagster UI (assets, runs, checks, the schedule):

    $DAGSTER_URL
$(printf '%s\n' "$SCHEDULES" | sed 's/^/    /')

  In a notebook (with this project's .venv as the kernel):

    import feedrank
    X = feedrank.TfidfVectorizer().fit_transform(["rust makes python fast", "fast python notebooks", "rust kernels for feeds"])
    neighbours, similarity = feedrank.cosine_topk(X, k=1); print(neighbours.ravel(), similarity.ravel())

EOF

# Stay in the foreground until Ctrl-C, or until a server dies (then say so and stop the other).
set +e
wait -n "$API_PID" "$DAGSTER_PID"
code=$?
set -e
if ! kill -0 -- "-$API_PID" 2>/dev/null; then
    tail -n 20 "$DEMO_DIR/api.log" >&2
    fail "the API exited ($code); log: $DEMO_DIR/api.log"
fi
tail -n 20 "$DEMO_DIR/dagster.log" >&2
fail "dagster dev exited ($code); log: $DEMO_DIR/dagster.log"

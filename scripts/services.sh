#!/usr/bin/env bash
# scripts/services.sh up|down|status
#
# Makes PostgreSQL and Redis answer at DATABASE_URL and REDIS_URL (defaults
# postgres://postgres@127.0.0.1:5432/feedrank and redis://127.0.0.1:6379/0), and RabbitMQ on
# 127.0.0.1:5672 (the Celery broker of the distributed tests, which make their vhosts with
# rabbitmqctl), the way `make demo` and `make test` need them:
#   1. a service that already answers is used as it is (this is the fast path, well under 1 s);
#   2. otherwise, where a Docker engine answers (`docker info`), `docker compose up -d` starts the
#      postgres/redis services of docker-compose.yml;
#   3. otherwise the Debian packages are used (installed with apt-get when missing and running as
#      root) and started without systemd:
#        - PostgreSQL: an existing Debian cluster on the URL's port is started with pg_ctlcluster;
#          else a project-local cluster in .data/postgres (trust auth on loopback only, so the
#          password-less default URL works) is created with initdb and started with pg_ctl;
#        - Redis: redis-server --daemonize with its files in .data/redis (nothing saved to disk:
#          it only holds a cache);
#        - RabbitMQ: always from the Debian package (rabbitmq-server -detached): the tests need
#          its rabbitmqctl on this machine. FEEDRANK_SKIP_RABBITMQ=1 leaves it out (make demo).
# Then it creates the database named in DATABASE_URL when missing. Idempotent; prints what it did.
# `down` stops only what this script started; `status` reports and exits 0 when both answer.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_DIR="${FEEDRANK_DATA_DIR:-$ROOT/.data}"
STATE_FILE="$DATA_DIR/services.state"   # lines "postgres=<how>" / "redis=<how>" for `down`
DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/feedrank}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
WAIT_SECONDS="${FEEDRANK_SERVICES_WAIT:-60}"

say() { echo "services: $*"; }
die() { echo "services: ERROR: $*" >&2; exit 1; }

# --- URLs ----------------------------------------------------------------------------------------

# postgres[ql]://[user[:password]@][host][:port][/dbname][?params]
pg_re='^(postgres(ql)?://)([^@/]*@)?(\[[^]]*\]|[^:/?]*)(:([0-9]+))?(/([^?]*))?(\?.*)?$'
[[ "$DATABASE_URL" =~ $pg_re ]] || die "DATABASE_URL must be a postgres:// URL, got: $DATABASE_URL"
PG_SCHEME="${BASH_REMATCH[1]}" PG_USERINFO="${BASH_REMATCH[3]}" PG_HOST="${BASH_REMATCH[4]:-}"
PG_PORT="${BASH_REMATCH[6]:-5432}" PG_DB="${BASH_REMATCH[8]:-}" PG_QUERY="${BASH_REMATCH[9]:-}"
PG_USER="${PG_USERINFO%@}"; PG_USER="${PG_USER%%:*}"; PG_USER="${PG_USER:-${USER:-postgres}}"
PG_DB="${PG_DB:-$PG_USER}"
[[ "$PG_DB" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "database name '$PG_DB' in DATABASE_URL is not a plain identifier"
PG_MAINT_URL="${PG_SCHEME}${PG_USERINFO}${PG_HOST}:${PG_PORT}/postgres${PG_QUERY}"

redis_re='^rediss?://([^@/]*@)?(\[[^]]*\]|[^:/]*)(:([0-9]+))?(/.*)?$'
[[ "$REDIS_URL" =~ $redis_re ]] || die "REDIS_URL must be a redis:// URL, got: $REDIS_URL"
REDIS_HOST="${BASH_REMATCH[2]:-127.0.0.1}" REDIS_PORT="${BASH_REMATCH[4]:-6379}"

is_local() { [[ -z "$1" || "$1" == 127.0.0.1 || "$1" == localhost || "$1" == "[::1]" ]]; }

# --- probes (fast: each is one short-lived client process) --------------------------------------

pg_answers() { pg_isready -q -t 2 -d "$PG_MAINT_URL" >/dev/null 2>&1; }
# The error text only (stderr captured, the query's output dropped).
# shellcheck disable=SC2069
pg_login_error() { psql "$PG_MAINT_URL" -wXAtqc 'SELECT 1' 2>&1 >/dev/null || true; }
pg_db_exists() { [[ "$(psql "$PG_MAINT_URL" -wXAtqc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" 2>/dev/null)" == 1 ]]; }
redis_answers() { [[ "$(redis-cli -u "$REDIS_URL" --no-auth-warning ping 2>/dev/null)" == PONG ]]; }

wait_for() { # wait_for <what> <probe>
    local i
    for ((i = 0; i < WAIT_SECONDS * 4; i++)); do
        "$2" && return 0
        sleep 0.25
    done
    return 1
}

record() { mkdir -p "$DATA_DIR"; { grep -v "^$1=" "$STATE_FILE" 2>/dev/null || true; echo "$1=$2"; } >"$STATE_FILE.tmp"; mv "$STATE_FILE.tmp" "$STATE_FILE"; }
recorded() { grep "^$1=" "$STATE_FILE" 2>/dev/null | cut -d= -f2- || true; }

# --- installing what is missing -----------------------------------------------------------------

APT_UPDATED=0
INSTALLED_POSTGRES_SERVER=0
apt_install() { # apt_install <why> <package>...
    local why="$1"; shift
    if [[ "$(id -u)" != 0 ]]; then
        die "$why is missing. Install it as root: sudo apt-get install -y $* (or start the services yourself and set DATABASE_URL/REDIS_URL)"
    fi
    command -v apt-get >/dev/null || die "$why is missing and there is no apt-get here: install the packages '$*' (PostgreSQL 15+ and Redis 7) with your package manager, or run Docker"
    if [[ $APT_UPDATED == 0 ]]; then
        say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
    say "installing $* (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
}

ensure_clients() {
    command -v psql >/dev/null && command -v pg_isready >/dev/null || apt_install "the PostgreSQL client (psql, pg_isready)" postgresql-client
    command -v redis-cli >/dev/null || apt_install "the Redis client (redis-cli)" redis-tools
}

pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

# --- docker compose -----------------------------------------------------------------------------

compose() {
    if docker compose version >/dev/null 2>&1; then docker compose "$@"
    elif command -v docker-compose >/dev/null; then docker-compose "$@"
    else return 127; fi
}
docker_engine() { command -v docker >/dev/null && timeout 5 docker info >/dev/null 2>&1 && compose version >/dev/null 2>&1; }

start_with_compose() { # start_with_compose <service> <probe>
    say "starting $1 with docker compose (docker-compose.yml)"
    (cd "$ROOT" && POSTGRES_PORT="$PG_PORT" REDIS_PORT="$REDIS_PORT" compose up -d "$1") \
        || die "docker compose up -d $1 failed"
    record "$1" compose
    wait_for "$1" "$2" || die "$1 started by docker compose does not answer after ${WAIT_SECONDS}s (docker compose logs $1)"
}

# --- PostgreSQL from the Debian packages --------------------------------------------------------

as_postgres() { if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

local_pgdata() {
    # PostgreSQL refuses to run as root; as root the cluster belongs to the `postgres` user, who
    # must be able to reach the directory. A project under a private home falls back to a
    # per-project directory under /var/lib/postgresql.
    local dir="$DATA_DIR/postgres"
    if [[ "$(id -u)" == 0 ]] && ! runuser -u postgres -- test -x "$(dirname "$DATA_DIR")"; then
        dir="/var/lib/postgresql/feedrank-$(echo -n "$ROOT" | md5sum | cut -c1-8)"
    fi
    echo "$dir"
}

debian_cluster_on_port() { # prints "version name" of a Debian cluster configured on PG_PORT
    command -v pg_lsclusters >/dev/null || return 0
    pg_lsclusters --no-header 2>/dev/null | awk -v p="$PG_PORT" '$3 == p { print $1, $2; exit }'
}

start_postgres_from_packages() {
    local bindir cluster pgdata
    bindir="$(pg_bindir)"
    if [[ -z "$bindir" ]]; then
        apt_install "the PostgreSQL server" postgresql
        INSTALLED_POSTGRES_SERVER=1
        bindir="$(pg_bindir)"
        [[ -n "$bindir" ]] || die "postgresql installed but no /usr/lib/postgresql/*/bin found"
        # The package's own cluster asks for a password on 127.0.0.1 and would hold the port:
        # keep it stopped and out of autostart; the project-local cluster below serves the project.
        cluster="$(debian_cluster_on_port)"
        if [[ -n "$cluster" ]]; then
            set -- $cluster
            pg_ctlcluster --skip-systemctl-redirect "$1" "$2" stop >/dev/null 2>&1 || true
            echo manual >"/etc/postgresql/$1/$2/start.conf"
            say "set the new Debian cluster $1/$2 to manual start (it wants passwords); using a project-local cluster"
        fi
    fi
    pgdata="$(local_pgdata)"
    cluster="$(debian_cluster_on_port)"
    if [[ ! -f "$pgdata/PG_VERSION" && -n "$cluster" && $INSTALLED_POSTGRES_SERVER == 0 ]]; then
        set -- $cluster
        say "starting the Debian PostgreSQL cluster $1/$2 on port $PG_PORT (pg_ctlcluster)"
        pg_ctlcluster --skip-systemctl-redirect "$1" "$2" start || die "pg_ctlcluster $1 $2 start failed (see /var/log/postgresql/)"
        record postgres "debian-cluster $1 $2"
        return
    fi
    if [[ ! -f "$pgdata/PG_VERSION" ]]; then
        say "creating a project-local PostgreSQL cluster in $pgdata (trust auth on loopback)"
        mkdir -p "$pgdata"
        [[ "$(id -u)" == 0 ]] && chown postgres:postgres "$pgdata"
        chmod 700 "$pgdata"
        as_postgres "$bindir/initdb" -D "$pgdata" -U "$PG_USER" --auth-local=trust --auth-host=trust \
            -E UTF8 --locale=C.UTF-8 >"$pgdata.initdb.log" 2>&1 \
            || die "initdb failed, see $pgdata.initdb.log"
        # Loopback only: trust auth must never face the network.
        cat >>"$pgdata/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$pgdata'
EOF
    fi
    say "starting the project-local PostgreSQL cluster $pgdata on 127.0.0.1:$PG_PORT (pg_ctl)"
    as_postgres "$bindir/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w -t "$WAIT_SECONDS" start >/dev/null \
        || die "pg_ctl start failed, see $pgdata/server.log"
    record postgres "local $pgdata"
}

ensure_postgres() {
    if pg_answers; then
        local err; err="$(pg_login_error)"
        [[ -z "$err" ]] || die "PostgreSQL answers at ${PG_HOST:-local socket}:$PG_PORT but refuses the connection: $err
Put the password in DATABASE_URL, or allow this user in the server's pg_hba.conf."
        POSTGRES_STATE="answers at ${PG_HOST:-local socket}:$PG_PORT"
    else
        is_local "$PG_HOST" || die "PostgreSQL does not answer at $PG_HOST:$PG_PORT, and that host is not this machine: start it there, or point DATABASE_URL elsewhere"
        if docker_engine; then
            start_with_compose postgres pg_answers
        else
            start_postgres_from_packages
            wait_for postgres pg_answers || die "PostgreSQL does not answer at 127.0.0.1:$PG_PORT after ${WAIT_SECONDS}s"
        fi
        local err; err="$(pg_login_error)"
        [[ -z "$err" ]] || die "PostgreSQL started but refuses the connection: $err
Put the password in DATABASE_URL, or allow this user in the cluster's pg_hba.conf (on a development
machine: host all all 127.0.0.1/32 trust)."
        POSTGRES_STATE="started, answers at 127.0.0.1:$PG_PORT"
    fi
    if pg_db_exists; then
        say "PostgreSQL $POSTGRES_STATE; database $PG_DB exists"
    else
        psql "$PG_MAINT_URL" -wXAtqc "CREATE DATABASE \"$PG_DB\"" >/dev/null || die "could not create database $PG_DB"
        say "PostgreSQL $POSTGRES_STATE; created database $PG_DB"
    fi
}

# --- Redis from the Debian packages -------------------------------------------------------------

start_redis_from_packages() {
    command -v redis-server >/dev/null || apt_install "the Redis server" redis-server
    # A freshly installed package may have started its own service on the port.
    redis_answers && { record redis external; return; }
    local dir="$DATA_DIR/redis"
    mkdir -p "$dir"
    say "starting redis-server on $REDIS_HOST:$REDIS_PORT (files in $dir, nothing saved to disk)"
    redis-server --daemonize yes --bind "${REDIS_HOST:-127.0.0.1}" --port "$REDIS_PORT" \
        --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
        --save "" --appendonly no >/dev/null || die "redis-server failed to start, see $dir/redis.log"
    record redis "local $dir"
}

ensure_redis() {
    if redis_answers; then
        say "Redis answers at $REDIS_HOST:$REDIS_PORT"
        return
    fi
    is_local "$REDIS_HOST" || die "Redis does not answer at $REDIS_HOST:$REDIS_PORT, and that host is not this machine"
    if docker_engine; then
        start_with_compose redis redis_answers
    else
        start_redis_from_packages
        wait_for redis redis_answers || die "Redis does not answer at $REDIS_HOST:$REDIS_PORT after ${WAIT_SECONDS}s"
    fi
    say "Redis started, answers at $REDIS_HOST:$REDIS_PORT"
}

# --- RabbitMQ from the Debian package ----------------------------------------------------------

RABBITMQ_PORT="${RABBITMQ_PORT:-5672}"
rabbitmq_answers() { timeout 2 bash -c "</dev/tcp/127.0.0.1/$RABBITMQ_PORT" 2>/dev/null; }

ensure_rabbitmq() {
    [[ "${FEEDRANK_SKIP_RABBITMQ:-0}" == 1 ]] && return
    command -v rabbitmqctl >/dev/null || apt_install "RabbitMQ (rabbitmq-server, with rabbitmqctl)" rabbitmq-server
    if rabbitmq_answers; then
        say "RabbitMQ answers at 127.0.0.1:$RABBITMQ_PORT"
        return
    fi
    say "starting rabbitmq-server (detached)"
    rabbitmq-server -detached >/dev/null 2>&1 || die "rabbitmq-server -detached failed (see /var/log/rabbitmq/)"
    record rabbitmq local
    wait_for rabbitmq rabbitmq_answers || die "RabbitMQ does not answer at 127.0.0.1:$RABBITMQ_PORT after ${WAIT_SECONDS}s"
    rabbitmqctl await_startup >/dev/null 2>&1 || die "RabbitMQ started but rabbitmqctl await_startup failed"
    say "RabbitMQ started, answers at 127.0.0.1:$RABBITMQ_PORT"
}

# --- commands -----------------------------------------------------------------------------------

cmd_up() {
    ensure_clients
    ensure_postgres
    ensure_redis
    ensure_rabbitmq
}

cmd_down() {
    local how
    how="$(recorded postgres)"
    case "$how" in
        compose) say "stopping postgres (docker compose)"; (cd "$ROOT" && compose stop postgres) ;;
        "debian-cluster "*) set -- $how; say "stopping the Debian cluster $2/$3"; pg_ctlcluster --skip-systemctl-redirect "$2" "$3" stop || true ;;
        "local "*) local pgdata="${how#local }"; say "stopping the project-local PostgreSQL $pgdata"
                   as_postgres "$(pg_bindir)/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null || true ;;
        *) say "PostgreSQL was not started by this script: left as it is" ;;
    esac
    how="$(recorded redis)"
    case "$how" in
        compose) say "stopping redis (docker compose)"; (cd "$ROOT" && compose stop redis) ;;
        "local "*) say "stopping the project-local redis-server"
                   redis-cli -u "$REDIS_URL" --no-auth-warning shutdown nosave >/dev/null 2>&1 || true ;;
        *) say "Redis was not started by this script: left as it is" ;;
    esac
    if [[ "$(recorded rabbitmq)" == local ]]; then
        say "stopping rabbitmq-server"
        rabbitmqctl stop >/dev/null 2>&1 || true
    fi
    rm -f "$STATE_FILE"
}

cmd_status() {
    local ok=0 how
    command -v pg_isready >/dev/null || { say "PostgreSQL: client tools missing (postgresql-client)"; ok=1; }
    command -v redis-cli >/dev/null || { say "Redis: client tools missing (redis-tools)"; ok=1; }
    [[ $ok == 0 ]] || return 1
    how="$(recorded postgres)"
    if pg_answers && [[ -z "$(pg_login_error)" ]]; then
        if pg_db_exists; then say "PostgreSQL: up at ${PG_HOST:-socket}:$PG_PORT, database $PG_DB exists${how:+ (started by this script: $how)}"
        else say "PostgreSQL: up at ${PG_HOST:-socket}:$PG_PORT, database $PG_DB MISSING (run: scripts/services.sh up)"; ok=1; fi
    else say "PostgreSQL: DOWN at ${PG_HOST:-socket}:$PG_PORT"; ok=1; fi
    how="$(recorded redis)"
    if redis_answers; then say "Redis: up at $REDIS_HOST:$REDIS_PORT${how:+ (started by this script: $how)}"
    else say "Redis: DOWN at $REDIS_HOST:$REDIS_PORT"; ok=1; fi
    if [[ "${FEEDRANK_SKIP_RABBITMQ:-0}" != 1 ]]; then
        if rabbitmq_answers; then say "RabbitMQ: up at 127.0.0.1:$RABBITMQ_PORT"
        else say "RabbitMQ: DOWN at 127.0.0.1:$RABBITMQ_PORT"; ok=1; fi
    fi
    return $ok
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Prepare a checkout of ACB on a Debian 12 machine (run as root):
#   - a virtualenv in .venv with the project installed in editable mode,
#   - a RabbitMQ broker answering on ACB_BROKER_URL, with stream queues usable,
#   - with --tests, a PostgreSQL server on 127.0.0.1:5432 that trusts local TCP,
#   - the store migrated and the system keys created, once those commands exist.
# Every step checks before it acts, so a second run only looks and is quick.
set -euo pipefail

usage() {
    echo "usage: bash .ci/setup.sh [--tests]" >&2
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
STAMP="$VENV/.acb-installed"
BROKER_URL=${ACB_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672/}
PG_HOST=127.0.0.1
PG_PORT=5432
PG_ETC=/etc/postgresql
WAIT_SECONDS=60

export DEBIAN_FRONTEND=noninteractive

log() {
    printf 'setup: %s\n' "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

# Run a noisy command with its output kept aside; show it only if it fails.
quietly() {
    local out="$WORK/out"
    if "$@" >"$out" 2>&1; then
        return 0
    else
        local rc=$?
        tail -n 60 "$out" >&2
        return "$rc"
    fi
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found; install by hand: $*"
    if [[ $APT_UPDATED -eq 0 ]]; then
        log "apt-get update"
        quietly apt-get update -q || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    quietly apt-get install -y -q --no-install-recommends "$@"
}

# True when something accepts a TCP connection on host:port within a second.
port_answers() {
    local host=$1 port=$2
    host=${host#[}
    host=${host%]}
    # shellcheck disable=SC2016 # $1 and $2 are expanded by the inner bash
    timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" >/dev/null 2>&1
}

# Wait until "$@" succeeds, for at most WAIT_SECONDS in all.
wait_for() {
    local what=$1
    shift
    local deadline=$((SECONDS + WAIT_SECONDS))
    until "$@"; do
        ((SECONDS < deadline)) || die "$what did not come up within ${WAIT_SECONDS}s"
        sleep 1
    done
}

is_loopback() {
    case "$1" in
        127.* | localhost | ::1 | '[::1]') return 0 ;;
        *) return 1 ;;
    esac
}

ensure_python() {
    if ! command -v python3 >/dev/null; then
        apt_install python3 python3-venv python3-pip || die "could not install python3"
    fi
}

ensure_venv() {
    if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c '' 2>/dev/null; then
        return 0
    fi
    log "creating $VENV"
    rm -rf "$VENV"
    # Debian ships the venv module without ensurepip; only then is python3-venv needed.
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        apt_install python3-venv python3-pip || die "could not install python3-venv"
        python3 -m venv "$VENV" || die "python3 -m venv failed"
    fi
}

ensure_project_installed() {
    local want
    want=$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
        log "python packages up to date"
        return 0
    fi
    log "installing the project and its test and gui extras into .venv"
    (cd "$ROOT" && quietly "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[test,gui]') ||
        die "pip install failed"
    echo "$want" >"$STAMP"
}

# Prints "host port" of an amqp(s):// URL.
broker_address() {
    "$VENV/bin/python" - "$BROKER_URL" <<'EOF'
import sys
from urllib.parse import urlsplit

url = urlsplit(sys.argv[1])
default = 5671 if url.scheme == "amqps" else 5672
print(url.hostname or "127.0.0.1", url.port or default)
EOF
}

rabbitmq_ready() {
    port_answers "$1" "$2" && timeout "$WAIT_SECONDS" rabbitmqctl -q await_startup >/dev/null 2>&1
}

start_local_rabbitmq() {
    local host=$1 port=$2
    if ! command -v rabbitmq-server >/dev/null; then
        # Without systemd the package's postinst may fail to start the service; starting
        # it below is what counts, so only a missing binary is an error.
        apt_install rabbitmq-server || log "rabbitmq-server package reported an error; carrying on"
        command -v rabbitmq-server >/dev/null || die "rabbitmq-server could not be installed"
    fi
    if ! port_answers "$host" "$port"; then
        [[ $port == 5672 ]] || log "warning: rabbitmq-server listens on 5672 unless configured, the URL asks for $port"
        log "starting rabbitmq-server"
        rabbitmq-server -detached >/dev/null 2>&1 || true
    fi
    wait_for "RabbitMQ on $host:$port" rabbitmq_ready "$host" "$port"
}

# Declares and deletes a stream queue over AMQP 0.9.1; exit 0 when streams work.
stream_queue_works() {
    "$VENV/bin/python" - "$BROKER_URL" <<'EOF' 2>"$WORK/stream-check"
import os
import sys

import pika

params = pika.URLParameters(sys.argv[1])
params.connection_attempts = 1
params.socket_timeout = 5
name = f"acb.setup.stream-check.{os.getpid()}"
try:
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        channel.queue_declare(name, durable=True, arguments={"x-queue-type": "stream"})
        channel.queue_delete(name)
    finally:
        if connection.is_open:
            connection.close()
except Exception as exc:
    sys.exit(f"{type(exc).__name__}: {exc}")
EOF
}

ensure_broker() {
    local address host port
    address=$(broker_address) || die "cannot read host and port from ACB_BROKER_URL=$BROKER_URL"
    read -r host port <<<"$address"
    if port_answers "$host" "$port"; then
        log "broker answers on $host:$port"
    elif is_loopback "$host"; then
        log "no broker on $host:$port"
        start_local_rabbitmq "$host" "$port"
    else
        die "no broker answers on $host:$port (ACB_BROKER_URL); start it or unset ACB_BROKER_URL"
    fi

    if stream_queue_works; then
        return 0
    fi
    # A node upgraded from before 3.9 keeps the stream_queue feature flag off until asked;
    # turning it on needs no restart.
    if is_loopback "$host" && command -v rabbitmqctl >/dev/null; then
        log "enabling the stream_queue feature flag"
        quietly rabbitmqctl enable_feature_flag stream_queue || true
        stream_queue_works && return 0
    fi
    tail -n 3 "$WORK/stream-check" >&2
    die "could not declare a stream queue at $host:$port (needs RabbitMQ 3.9+ and a vhost the user may configure)"
}

pg_ready() {
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT"
}

pg_trusts_tcp() {
    psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -w -Atq -c 'select 1' >/dev/null 2>&1
}

pg_version() {
    # shellcheck disable=SC2012 # cluster versions are plain numbers
    ls "$PG_ETC" | head -1
}

ensure_postgres() {
    if ! port_answers "$PG_HOST" "$PG_PORT"; then
        log "no PostgreSQL on $PG_HOST:$PG_PORT"
        if ! command -v pg_ctlcluster >/dev/null || [[ -z "$(ls "$PG_ETC" 2>/dev/null)" ]]; then
            apt_install postgresql || log "postgresql package reported an error; carrying on"
            [[ -n "$(ls "$PG_ETC" 2>/dev/null)" ]] || die "postgresql could not be installed"
        fi
        if ! pg_ready; then
            log "starting PostgreSQL $(pg_version)"
            quietly pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main start || true
        fi
    fi
    wait_for "PostgreSQL on $PG_HOST:$PG_PORT" pg_ready
    if pg_trusts_tcp; then
        log "PostgreSQL answers on $PG_HOST:$PG_PORT"
        return 0
    fi

    local hba
    hba="$PG_ETC/$(pg_version)/main/pg_hba.conf"
    [[ -f "$hba" ]] || die "psql cannot log in as postgres and $hba is missing"
    log "trusting local TCP connections in $hba"
    # pg_hba.conf is read top down and the first match wins, so these go first.
    {
        echo "# added by .ci/setup.sh: the tests connect as postgres without a password"
        echo "host all all 127.0.0.1/32 trust"
        echo "host all all ::1/128 trust"
        cat "$hba"
    } >"$WORK/pg_hba.conf"
    cat "$WORK/pg_hba.conf" >"$hba"
    quietly pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main reload || die "PostgreSQL reload failed"
    wait_for "password-free login to PostgreSQL" pg_trusts_tcp
}

migrate_store() {
    [[ -f "$ROOT/migrations/alembic.ini" ]] || return 0
    mkdir -p "${ACB_HOME:-$HOME/.acb}"
    log "applying store migrations"
    (cd "$ROOT" && quietly "$VENV/bin/alembic" -c migrations/alembic.ini upgrade head) || die "alembic upgrade failed"
}

init_keys() {
    if "$VENV/bin/acb" init --help >/dev/null 2>&1; then
        log "acb init"
        "$VENV/bin/acb" init
    fi
}

main() {
    local with_tests=0 arg
    for arg in "$@"; do
        case "$arg" in
            --tests) with_tests=1 ;;
            -h | --help) usage; return 0 ;;
            *) usage; return 2 ;;
        esac
    done

    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT

    ensure_python
    ensure_venv
    ensure_project_installed
    ensure_broker
    if [[ $with_tests -eq 1 ]]; then
        ensure_postgres
    fi
    migrate_store
    init_keys
    log "ready"
}

# Sourcing the file only defines the steps, so each can be tried on its own.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi

#!/usr/bin/env bash
# Prepare a checkout of ACB on a Debian 12 machine (run as root):
#   - a virtualenv in .venv with the project installed in editable mode,
#   - a RabbitMQ broker answering where ACB_BROKER_URL points (default 127.0.0.1:5672), with
#     stream queues usable, the management API on, a message size limit, and ACB's own vhost
#     and role users (peer, replica, operator: see broker/admin.py and docs/broker-roles.md),
#   - with --tls, a TLS listener on 5671 with a CA of this machine's own (clients verify the
#     broker; replicas may present a client certificate),
#   - with --tests, all of the above plus --tls, and a PostgreSQL server on 127.0.0.1:5432 that
#     trusts local TCP,
#   - the store migrated and the system keys created, once those commands exist.
# On a local broker the administrator is a user of ACB's own (acb-admin), made with rabbitmqctl;
# its URL is kept in $ACB_HOME/system/broker-admin.url. For a broker elsewhere give its
# administrator as ACB_BROKER_ADMIN_URL=http://USER:PASSWORD@HOST:15672/.
# Every step checks before it acts, so a second run only looks and is quick.
set -euo pipefail

usage() {
    echo "usage: bash .ci/setup.sh [--tls] [--tests]" >&2
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
STAMP="$VENV/.acb-installed"
# Only the host and port of this URL are used here: where the broker is.
BROKER_URL=${ACB_BROKER_URL:-amqp://127.0.0.1:5672/}
ACB_HOME_DIR=${ACB_HOME:-$HOME/.acb}
SYSTEM_DIR="$ACB_HOME_DIR/system"
ADMIN_FILE="$SYSTEM_DIR/broker-admin.url"
ADMIN_USER=acb-admin
MGMT_PORT=15672
TLS_PORT=5671
RABBIT_CONF=/etc/rabbitmq/rabbitmq.conf
RABBIT_TLS=/etc/rabbitmq/tls
# broker.admin.MAX_MESSAGE_SIZE: fits a dispute (one 4 MiB segment, base64) with room to spare.
MAX_MESSAGE_SIZE=16777216
VHOST=acb
PREFIX=${ACB_PREFIX:-acb}
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
    # The bench extra is matplotlib, for `acb bench load`'s plot. The extras are part of the stamp, so adding
    # one reinstalls on a machine set up before.
    local extras="test,gui,bench"
    want=$( (cat "$ROOT/pyproject.toml"; echo "$extras") | sha256sum | cut -d' ' -f1)
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
        log "python packages up to date"
        return 0
    fi
    log "installing the project and its $extras extras into .venv"
    (cd "$ROOT" && quietly "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e ".[$extras]") ||
        die "pip install failed"
    echo "$want" >"$STAMP"
}

# The system libraries PySide6's wheels load but do not ship (found with ldd on its Qt libraries
# and platform plugins): without them pytest-qt fails to import Qt and no test runs. The first
# line is enough offscreen (the tests); the rest serve a real display (xcb, wayland).
QT_LIBS=(
    libglib2.0-0 libgl1 libegl1 libopengl0 libdbus-1-3 libfontconfig1 libfreetype6 libxkbcommon0 libgssapi-krb5-2
    libx11-6 libx11-xcb1 libxcb1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-glx0 libxcb-icccm4 libxcb-image0
    libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-render0 libxcb-shape0 libxcb-shm0 libxcb-sync1
    libxcb-util1 libxcb-xfixes0 libxcb-xinerama0 libxcb-xkb1 libwayland-client0 libwayland-cursor0
    libwayland-egl1 libdrm2
)

ensure_qt_libraries() {
    local missing
    # One dpkg-query for all: a package dpkg does not know prints nothing, hence the comparison.
    missing=$({ dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${QT_LIBS[@]}" 2>/dev/null || true; } |
        awk '$2 == "installed" {print $1}' | sort | comm -13 - <(printf '%s\n' "${QT_LIBS[@]}" | sort))
    if [[ -z "$missing" ]]; then
        return 0
    fi
    # shellcheck disable=SC2086 # one package a word
    apt_install $missing || die "could not install the libraries Qt needs: $missing"
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

# The address of the broker: "host port" (sets BROKER_HOST and BROKER_PORT).
read_broker_address() {
    local address
    address=$(broker_address) || die "cannot read host and port from ACB_BROKER_URL=$BROKER_URL"
    read -r BROKER_HOST BROKER_PORT <<<"$address"
}

# True when this script can administer the broker with rabbitmqctl (it runs on this machine).
broker_is_local() {
    is_loopback "$BROKER_HOST" && command -v rabbitmqctl >/dev/null
}

ensure_broker() {
    read_broker_address
    local host=$BROKER_HOST port=$BROKER_PORT
    if port_answers "$host" "$port"; then
        log "broker answers on $host:$port"
    elif is_loopback "$host"; then
        log "no broker on $host:$port"
        start_local_rabbitmq "$host" "$port"
    else
        die "no broker answers on $host:$port (ACB_BROKER_URL); start it or unset ACB_BROKER_URL"
    fi
}

rabbit_eval() {
    quietly rabbitmqctl eval "$1"
}

# True when rabbitmq.conf sets KEY (a cuttlefish key, regex-quoted by the caller).
conf_has() {
    [[ -f "$RABBIT_CONF" ]] && grep -q -E "^[[:space:]]*$1[[:space:]]*=" "$RABBIT_CONF"
}

conf_append() {
    mkdir -p "$(dirname "$RABBIT_CONF")"
    {
        echo "# added by ACB's .ci/setup.sh: $1"
        shift
        printf '%s\n' "$@"
    } >>"$RABBIT_CONF"
}

# The management API on a local broker, on loopback only. The plugin starts without a restart;
# its address is set in the running node first and in rabbitmq.conf for the next start.
ensure_management() {
    if ! port_answers 127.0.0.1 "$MGMT_PORT"; then
        log "enabling the rabbitmq_management plugin on 127.0.0.1:$MGMT_PORT"
        rabbit_eval "application:set_env(rabbitmq_management, tcp_config, [{ip, \"127.0.0.1\"}, {port, $MGMT_PORT}])." ||
            die "could not configure the management plugin"
        quietly rabbitmq-plugins enable rabbitmq_management || die "could not enable rabbitmq_management"
        wait_for "the management API on 127.0.0.1:$MGMT_PORT" port_answers 127.0.0.1 "$MGMT_PORT"
    fi
    if ! conf_has 'management\.tcp\.ip'; then
        conf_append "the management API on loopback only" \
            "management.tcp.ip = 127.0.0.1" "management.tcp.port = $MGMT_PORT"
    fi
}

admin_works() {
    "$VENV/bin/python" -m broker.admin check-admin >/dev/null 2>&1
}

new_password() {
    "$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(24))'
}

# ACB's own administrator on a local broker. rabbitmqctl takes a password only as an argument,
# visible to `ps` for a moment, so it gets a throwaway one; the real one is then set over the
# management API as that user, and travels only in the environment of our own process.
ensure_admin() {
    if admin_works; then
        log "broker administrator $ADMIN_USER works"
        return 0
    fi
    if [[ -n "${ACB_BROKER_ADMIN_URL:-}" ]]; then
        die "ACB_BROKER_ADMIN_URL does not log in to the broker's management API"
    fi
    broker_is_local || die "cannot administer the broker at $BROKER_HOST: give ACB_BROKER_ADMIN_URL=http://USER:PASSWORD@HOST:$MGMT_PORT/"
    local throwaway password
    throwaway=$(new_password)
    password=$(new_password)
    log "creating the broker administrator $ADMIN_USER"
    if rabbitmqctl -q list_users 2>/dev/null | cut -f1 | grep -qx "$ADMIN_USER"; then
        quietly rabbitmqctl change_password "$ADMIN_USER" "$throwaway" || die "could not reset $ADMIN_USER"
    else
        quietly rabbitmqctl add_user "$ADMIN_USER" "$throwaway" || die "could not create $ADMIN_USER"
    fi
    quietly rabbitmqctl set_user_tags "$ADMIN_USER" administrator || die "could not make $ADMIN_USER an administrator"
    mkdir -p "$SYSTEM_DIR"
    chmod 700 "$SYSTEM_DIR"
    ACB_SETUP_OLD="$throwaway" ACB_SETUP_NEW="$password" "$VENV/bin/python" - "$ADMIN_USER" "$MGMT_PORT" "$ADMIN_FILE" <<'EOF' ||
import os
import sys

from broker.admin import AdminApi

user, port, path = sys.argv[1], sys.argv[2], sys.argv[3]
api = AdminApi(f"http://{user}:{os.environ['ACB_SETUP_OLD']}@127.0.0.1:{port}/")
api.put(f"/users/{user}", {"password": os.environ["ACB_SETUP_NEW"], "tags": "administrator"})
fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    f.write(f"http://{user}:{os.environ['ACB_SETUP_NEW']}@127.0.0.1:{port}/\n")
os.replace(path + ".tmp", path)
EOF
        die "could not set the password of $ADMIN_USER"
    admin_works || die "the new administrator $ADMIN_USER cannot log in"
}

# RabbitMQ's node-wide message size limit: in rabbitmq.conf for the next start, and in the
# running node for channels opened from now on.
ensure_message_limit() {
    if conf_has 'max_message_size'; then
        return 0
    fi
    log "limiting messages to $MAX_MESSAGE_SIZE bytes"
    rabbit_eval "application:set_env(rabbit, max_message_size, $MAX_MESSAGE_SIZE)." ||
        die "could not set max_message_size"
    conf_append "no message above 16 MiB (docs/broker-roles.md)" "max_message_size = $MAX_MESSAGE_SIZE"
}

# Install FILE into RABBIT_TLS as NAME with MODE, owned by the broker; true when it changed.
install_tls_file() {
    local src=$1 name=$2 mode=$3
    if cmp -s "$src" "$RABBIT_TLS/$name"; then
        return 1
    fi
    install -o rabbitmq -g rabbitmq -m "$mode" "$src" "$RABBIT_TLS/$name"
}

tls_listener_spec() {
    # On loopback when plain AMQP is (this machine), else on every address like Debian's default.
    if conf_has 'listeners\.tcp\.[a-z0-9_]+' && grep -q -E '^[[:space:]]*listeners\.tcp\.[a-z0-9_]+[[:space:]]*=[[:space:]]*127\.0\.0\.1:' "$RABBIT_CONF"; then
        echo "127.0.0.1:$TLS_PORT"
    else
        echo "$TLS_PORT"
    fi
}

# A TLS listener: CA and certificates under $ACB_HOME/system/tls (the CA key stays there), the
# broker's pair copied where the broker can read it. The listener is started in the running
# node; only if that fails is the broker restarted to take it from rabbitmq.conf.
ensure_tls() {
    broker_is_local || die "--tls sets up a local broker only; $BROKER_HOST is not this machine"
    local tls_dir="$SYSTEM_DIR/tls" changed=0 spec host erl_listener name
    for name in ca.pem ca.key server.pem server.key client.pem client.key; do
        if [[ ! -f "$tls_dir/$name" ]]; then
            "$VENV/bin/python" -m broker.admin tls-files --dir "$tls_dir" --host localhost --host 127.0.0.1 \
                --host ::1 --host "$(hostname)" --host "$BROKER_HOST" >/dev/null || die "could not make the TLS files"
            break
        fi
    done
    install -d -o rabbitmq -g rabbitmq -m 0750 "$RABBIT_TLS"
    install_tls_file "$tls_dir/ca.pem" ca.pem 0644 && changed=1
    install_tls_file "$tls_dir/server.pem" server.pem 0644 && changed=1
    install_tls_file "$tls_dir/server.key" server.key 0600 && changed=1
    spec=$(tls_listener_spec)
    if ! conf_has 'listeners\.ssl\.[a-z0-9_]+'; then
        conf_append "TLS on $spec; clients verify the broker, the broker verifies client certificates when given" \
            "listeners.ssl.default = $spec" \
            "ssl_options.cacertfile = $RABBIT_TLS/ca.pem" \
            "ssl_options.certfile = $RABBIT_TLS/server.pem" \
            "ssl_options.keyfile = $RABBIT_TLS/server.key" \
            "ssl_options.verify = verify_peer" \
            "ssl_options.fail_if_no_peer_cert = false" \
            "ssl_options.versions.1 = tlsv1.3" \
            "ssl_options.versions.2 = tlsv1.2"
    fi
    host=127.0.0.1
    if port_answers "$host" "$TLS_PORT"; then
        if [[ $changed -eq 1 ]]; then
            rabbit_eval "ssl:clear_pem_cache()." || true
        fi
        log "TLS listener answers on $TLS_PORT"
        return 0
    fi
    log "starting a TLS listener on $spec"
    if [[ $spec == *:* ]]; then
        erl_listener="{\"${spec%:*}\", ${spec##*:}}"
    else
        erl_listener=$spec
    fi
    if ! rabbit_eval "
        Opts = [{cacertfile, \"$RABBIT_TLS/ca.pem\"}, {certfile, \"$RABBIT_TLS/server.pem\"},
                {keyfile, \"$RABBIT_TLS/server.key\"}, {verify, verify_peer}, {fail_if_no_peer_cert, false},
                {versions, ['tlsv1.3', 'tlsv1.2']}],
        ok = application:set_env(rabbit, ssl_options, Opts),
        ok = application:set_env(rabbit, ssl_listeners, [$erl_listener]),
        ok = rabbit_networking:start_ssl_listener($erl_listener, rabbit_networking:ensure_ssl(), 10, 1)."; then
        log "the running broker did not take the listener; restarting it"
        quietly rabbitmqctl stop || true
        rabbitmq-server -detached >/dev/null 2>&1 || true
        wait_for "RabbitMQ on $BROKER_HOST:$BROKER_PORT" rabbitmq_ready "$BROKER_HOST" "$BROKER_PORT"
    fi
    wait_for "the TLS listener on $TLS_PORT" port_answers "$host" "$TLS_PORT"
}

# ACB's vhost, the role users (passwords made once and kept), their limits and policies; then a
# stream queue declared and deleted. Streams need RabbitMQ 3.9+, and a node upgraded from before
# keeps the stream_queue feature flag off until asked (turning it on needs no restart).
setup_roles() {
    "$VENV/bin/python" -m broker.admin broker-setup --vhost "$VHOST" --prefix "$PREFIX" --check-streams \
        --amqp-url "amqp://$BROKER_HOST:$BROKER_PORT" >"$WORK/roles" 2>&1
}

ensure_roles() {
    local rc=0
    setup_roles || rc=$?
    if [[ $rc -eq 3 ]] && broker_is_local; then
        log "enabling the stream_queue feature flag"
        quietly rabbitmqctl enable_feature_flag stream_queue || true
        rc=0
        setup_roles || rc=$?
    fi
    if [[ $rc -ne 0 ]]; then
        cat "$WORK/roles" >&2
        [[ $rc -eq 3 ]] && die "stream queues do not work at $BROKER_HOST:$BROKER_PORT (needs RabbitMQ 3.9+)"
        die "broker set-up failed"
    fi
    log "$(cat "$WORK/roles")"
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
    mkdir -p "$ACB_HOME_DIR"
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
    local with_tests=0 with_tls=0 arg
    for arg in "$@"; do
        case "$arg" in
            --tests) with_tests=1 with_tls=1 ;;
            --tls) with_tls=1 ;;
            -h | --help) usage; return 0 ;;
            *) usage; return 2 ;;
        esac
    done

    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT

    ensure_python
    ensure_venv
    ensure_project_installed
    ensure_qt_libraries
    ensure_broker
    if broker_is_local; then
        ensure_management
    fi
    ensure_admin
    if broker_is_local; then
        ensure_message_limit
    else
        log "the broker is not on this machine: set max_message_size = $MAX_MESSAGE_SIZE in its rabbitmq.conf"
    fi
    if [[ $with_tls -eq 1 ]]; then
        ensure_tls
    fi
    ensure_roles
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

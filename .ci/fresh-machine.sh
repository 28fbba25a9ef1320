#!/usr/bin/env bash
# Prove the README's two lines on a fresh Debian 12, as root, with nothing pre-installed:
#   bash .ci/fresh-machine.sh [--keep] [--root DIR]
#
# A bookworm root is made with debootstrap (its .debs cached in /var/cache/acb-fresh, so a rerun
# only unpacks), the repository's committed HEAD is cloned into it, and the first code block of
# README.md is run in it line by line. The root gets a network namespace of its own, so this
# machine's RabbitMQ and PostgreSQL are invisible and setup.sh must install and start its own.
# The package registries are reached through tinyproxy on this machine's loopback, bridged into
# the namespace over a UNIX socket by two socat processes: no address outside loopback is used,
# and the proxy lets through only the Debian mirror's and PyPI's host names.
# Everything is undone on exit (processes, mounts, namespace, proxies); --keep leaves the root
# on disk for inspection. The last line printed is PASS or FAIL.
set -euo pipefail

usage() {
    echo "usage: bash .ci/fresh-machine.sh [--keep] [--root DIR]" >&2
}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=/var/cache/acb-fresh
SUITE=bookworm
ARCH=$(dpkg --print-architecture)
TARBALL="$CACHE/$SUITE-$ARCH.tgz"
NS="acbfresh$$"
PROXY_IN_NS=3128 # where apt and pip inside the root find the proxy (the namespace's own loopback)
PYPI_HOSTS=(pypi.org files.pythonhosted.org)
KEEP=0
ROOT=''
WORK=''
PIDS=()
NS_MADE=0
MIRROR=""
RESULT='' # the verdict, printed last of all by cleanup

log() {
    printf 'fresh-machine: %s\n' "$*" >&2
}

die() {
    log "error: $*"
    RESULT="FAIL: $*"
    exit 1
}

# The Debian mirror this machine's apt uses (deb822 or one-line sources), else deb.debian.org.
host_mirror() {
    local uri
    uri=$(grep -h -E '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '{print $2}' | grep -E '/debian/?$' | head -1 || true)
    if [[ -z "$uri" && -f /etc/apt/sources.list ]]; then
        uri=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# Host names of every Debian repository this machine's sources name (the proxy lets only these through).
mirror_hosts() {
    {
        grep -h -E '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{for (i = 2; i <= NF; i++) print $i}'
        awk '$1 == "deb" {print $2}' /etc/apt/sources.list 2>/dev/null
        echo "$MIRROR"
    } | grep -E '/debian(-security)?/?$' | sed -E 's#^[a-z]+://([^/:]+).*#\1#' | sort -u
}

ensure_host_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v tinyproxy >/dev/null || missing+=(tinyproxy)
    command -v socat >/dev/null || missing+=(socat)
    command -v git >/dev/null || missing+=(git)
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >"$WORK/apt.log" 2>&1 ||
            { tail -n 30 "$WORK/apt.log" >&2; die "could not install ${missing[*]}"; }
    fi
}

make_root() {
    mkdir -p "$CACHE"
    if [[ ! -s "$TARBALL" ]]; then
        log "downloading $SUITE's packages from $MIRROR into $TARBALL (once)"
        local scratch
        scratch=$(mktemp -d /var/tmp/acb-debootstrap.XXXXXX)
        if ! debootstrap --arch="$ARCH" --make-tarball="$TARBALL.tmp" "$SUITE" "$scratch" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
            rm -rf --one-file-system "$scratch" "$TARBALL.tmp"
            tail -n 30 "$WORK/debootstrap.log" >&2
            die "debootstrap --make-tarball failed"
        fi
        rm -rf --one-file-system "$scratch"
        mv "$TARBALL.tmp" "$TARBALL"
    fi
    log "unpacking a fresh $SUITE root into $ROOT"
    local started=$SECONDS
    if ! debootstrap --arch="$ARCH" --unpack-tarball="$TARBALL" "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
        tail -n 30 "$WORK/debootstrap.log" >&2
        die "debootstrap failed (a stale $TARBALL? delete it and retry)"
    fi
    log "root ready in $((SECONDS - started)) s"
}

# What an installer would have written, and this machine's facts: its apt sources, a trust store
# that knows the CA re-signing registry TLS here, and apt and pip told where the proxy is.
configure_root() {
    local proxy="http://127.0.0.1:$PROXY_IN_NS" host
    host=$(hostname)
    echo "$host" >"$ROOT/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$host" >"$ROOT/etc/hosts"
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        cp /etc/apt/sources.list.d/debian.sources "$ROOT/etc/apt/sources.list.d/debian.sources"
        rm -f "$ROOT/etc/apt/sources.list"
    fi
    # Copied twice: as the bundle, and as a local CA, so that a later update-ca-certificates (when
    # apt installs the ca-certificates package) keeps it in the bundle it rebuilds.
    mkdir -p "$ROOT/etc/ssl/certs" "$ROOT/usr/local/share/ca-certificates"
    cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
    cp /etc/ssl/certs/ca-certificates.crt "$ROOT/usr/local/share/ca-certificates/acb-host-bundle.crt"
    printf 'Acquire::http::Proxy "%s";\nAcquire::https::Proxy "%s";\n' "$proxy" "$proxy" >"$ROOT/etc/apt/apt.conf.d/01proxy"
    printf '[global]\nproxy = %s\ncert = /etc/ssl/certs/ca-certificates.crt\n' "$proxy" >"$ROOT/etc/pip.conf"
    # A fresh /dev/ptmx for the devpts instance of the root's own.
    rm -f "$ROOT/dev/ptmx"
    ln -s pts/ptmx "$ROOT/dev/ptmx"
}

clone_repo() {
    log "cloning $(git -C "$REPO" rev-parse --short HEAD) of $REPO"
    git clone -q --no-hardlinks "$REPO" "$ROOT/root/acb" || die "git clone failed"
}

start_proxy() {
    local port filter conf
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    filter="$WORK/filter"
    conf="$WORK/tinyproxy.conf"
    {
        for host in $(mirror_hosts) "${PYPI_HOSTS[@]}"; do
            printf '^%s$\n' "${host//./\\.}"
        done
    } >"$filter"
    chmod 755 "$WORK"
    chmod 644 "$filter"
    cat >"$conf" <<EOF
User nobody
Group nogroup
Port $port
Listen 127.0.0.1
Timeout 600
MaxClients 100
Allow 127.0.0.1
ConnectPort 443
Filter "$filter"
FilterType ere
FilterDefaultDeny Yes
LogLevel Notice
EOF
    tinyproxy -d -c "$conf" >"$WORK/tinyproxy.log" 2>&1 &
    PIDS+=($!)
    local sock="$WORK/proxy.sock"
    socat "UNIX-LISTEN:$sock,fork,mode=600" "TCP:127.0.0.1:$port" 2>"$WORK/socat-host.log" &
    PIDS+=($!)
    local deadline=$((SECONDS + 20))
    until [[ -S "$sock" ]] && timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$port" 2>/dev/null; do
        ((SECONDS < deadline)) || die "the proxy did not start (see $WORK/tinyproxy.log)"
        sleep 0.2
    done
    ip netns exec "$NS" socat "TCP-LISTEN:$PROXY_IN_NS,bind=127.0.0.1,fork,reuseaddr" "UNIX-CONNECT:$sock" \
        2>"$WORK/socat-ns.log" &
    PIDS+=($!)
    log "registries reachable through tinyproxy on 127.0.0.1:$port, in the namespace on 127.0.0.1:$PROXY_IN_NS"
}

make_namespace() {
    ip netns add "$NS" || die "ip netns add $NS failed"
    NS_MADE=1
    ip netns exec "$NS" ip link set lo up || die "cannot bring up lo in $NS"
}

# The root is bind-mounted onto itself so that `/` inside it is a mount point: `ip netns exec`
# run by the tests inside the root remounts `/` as a slave, which fails on a plain directory.
mount_root() {
    mount --bind "$ROOT" "$ROOT"
    mount -t proc proc "$ROOT/proc"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$ROOT/dev/pts"
    mount -t tmpfs -o mode=1777 tmpfs "$ROOT/dev/shm"
}

# Run one line as root inside the root and its namespace, with a login shell's environment.
# sysfs is mounted in the private mount namespace `ip netns exec` makes, so it shows this
# namespace's network devices and goes away with it.
run_line() {
    local line=$1
    # shellcheck disable=SC2016 # expanded by the inner sh
    ip netns exec "$NS" sh -c '
        mount -t sysfs sysfs "$1/sys" &&
        exec chroot "$1" /usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            /bin/bash -l -c "cd /root/acb && $2"' _ "$ROOT" "$line" </dev/null
}

readme_lines() {
    awk '
        /^[[:space:]]*```/ { if (inside) exit; inside = 1; next }
        inside && NF { sub(/^\$ /, ""); print }
    ' "$ROOT/root/acb/README.md"
}

# Processes left inside: whatever is in the namespace, or has the root as its root directory
# (a test's own nested namespace is not ours, but its processes are still under the root).
root_pids() {
    local p
    if [[ $NS_MADE -eq 1 ]]; then
        ip netns pids "$NS" 2>/dev/null || true
    fi
    for p in /proc/[0-9]*; do
        [[ "$(readlink "$p/root" 2>/dev/null)" == "$ROOT" ]] && echo "${p#/proc/}"
    done
    return 0
}

stop_root_processes() {
    local pids round
    for round in TERM TERM KILL; do
        pids=$(root_pids | sort -u)
        [[ -z "$pids" ]] && return 0
        # shellcheck disable=SC2086 # one pid a word
        kill -s "$round" $pids 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            [[ -z "$(root_pids)" ]] && return 0
            sleep 0.5
        done
    done
}

mounted_under_root() {
    awk -v root="$ROOT" '$5 == root || index($5, root "/") == 1 {print $5}' /proc/self/mountinfo
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n "$ROOT" && -d "$ROOT" ]]; then
        stop_root_processes
        local m
        for _ in 1 2 3; do
            for m in $(mounted_under_root | sort -r); do
                umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
            done
            [[ -z "$(mounted_under_root)" ]] && break
        done
    fi
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    if [[ $NS_MADE -eq 1 ]]; then
        ip netns del "$NS" 2>/dev/null
    fi
    if [[ -n "$ROOT" && -d "$ROOT" ]]; then
        if [[ -n "$(mounted_under_root)" ]]; then
            log "still mounted under $ROOT, not deleting it: $(mounted_under_root | tr '\n' ' ')"
        elif [[ $KEEP -eq 1 ]]; then
            log "kept the root for inspection: $ROOT (delete it with rm -rf --one-file-system $ROOT)"
        else
            rm -rf --one-file-system "$ROOT"
        fi
    fi
    [[ -n "$WORK" ]] && rm -rf "$WORK"
    if [[ -z "$RESULT" ]]; then
        RESULT="FAIL: stopped with exit status $rc before both lines ran"
        [[ $rc -eq 0 ]] && rc=1
    fi
    echo "$RESULT"
    exit "$rc"
}

main() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --keep) KEEP=1 ;;
            --root) ROOT=$2; shift ;;
            -h | --help) usage; return 0 ;;
            *) usage; return 2 ;;
        esac
        shift
    done
    [[ $(id -u) -eq 0 ]] || die "run as root (debootstrap, mounts and namespaces need it)"
    WORK=$(mktemp -d /tmp/acb-fresh-work.XXXXXX)
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    if [[ -z "$ROOT" ]]; then
        ROOT=$(mktemp -d /var/tmp/acb-fresh.XXXXXX)
    elif [[ -e "$ROOT" && -n "$(ls -A "$ROOT")" ]]; then
        ROOT=''
        die "--root must name an empty or missing directory"
    fi
    mkdir -p "$ROOT"
    # mktemp makes it 0700, and a root directory others cannot enter stops every service user.
    chmod 755 "$ROOT"
    ROOT=$(cd "$ROOT" && pwd -P)
    MIRROR=$(host_mirror)

    ensure_host_tools
    make_root
    configure_root
    clone_repo
    make_namespace
    mount_root
    start_proxy

    local n=0 line started took results=() failed=''
    while IFS= read -r line; do
        n=$((n + 1))
        log "line $n: $line"
        started=$SECONDS
        if run_line "$line"; then
            took=$((SECONDS - started))
            results+=("line $n passed in ${took} s")
            log "line $n passed in ${took} s"
        else
            took=$((SECONDS - started))
            results+=("line $n failed after ${took} s")
            failed="line $n ($line) failed after ${took} s"
            break
        fi
    done < <(readme_lines)
    [[ $n -gt 0 ]] || die "README.md has no code block to run"
    if [[ -n "$failed" ]]; then
        RESULT="FAIL: $failed"
        return 1
    fi
    RESULT="PASS: $(IFS=';'; echo "${results[*]}" | sed 's/;/; /g') (fresh $SUITE root, its own network namespace)"
}

# Sourcing the file only defines the steps, so each can be tried on its own (e.g. on a --keep root).
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi

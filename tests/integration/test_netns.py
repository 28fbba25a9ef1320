"""The namespace helpers behind the link-cut tests: a relay that works wherever the broker listens,
and nothing left behind when a step fails.

A plain TCP echo server stands in for RabbitMQ: what is checked is the relay and the namespace, not
AMQP.
"""
from __future__ import annotations

import gc
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator

import pytest

from console.netns import NetnsError, NetnsLink, _ip, netns_available

pytestmark = pytest.mark.skipif(not netns_available(), reason="needs root and a working `ip netns exec`")

# Addresses 10.231.<index>.0/30; the drill uses small indexes and test_transfer_faults 200.
_INDEX = 211


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], check=True, capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


@pytest.fixture
def echo_on_every_address() -> Iterator[int]:
    """An echo server on 0.0.0.0:<port>, as Debian's rabbitmq-server listens on *:5672."""
    lst = socket.socket()
    lst.bind(("0.0.0.0", 0))
    lst.listen(8)
    port = int(lst.getsockname()[1])

    def serve() -> None:
        while True:
            try:
                conn, _ = lst.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield port
    finally:
        lst.shutdown(socket.SHUT_RDWR)  # wakes the accept() that close alone would leave blocked
        lst.close()
        t.join(5)


def test_the_relay_works_when_the_broker_listens_on_every_address(echo_on_every_address: int) -> None:
    ns = "acbtest-relay"
    with NetnsLink.create(ns, index=_INDEX, upstream=("127.0.0.1", echo_on_every_address)) as link:
        url = link.broker_url(f"amqp://u:p@127.0.0.1:{echo_on_every_address}/vh")
        assert url.startswith(f"amqp://u:p@{link.host_ip}:") and url.endswith("/vh")
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        # From inside the namespace, through the veth and the relay, to the server on the host's loopback.
        probe = ("import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 5); "
                 "s.sendall(b'ping'); print(s.recv(4).decode()); s.close()")
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe, link.host_ip, str(port)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "ping"
    assert ns not in _namespaces()
    assert link.host_if not in _links()


def test_a_failed_step_leaves_no_namespace_no_veth_and_no_open_socket() -> None:
    ns = "acbtest-fail"
    link = NetnsLink(ns, "10.231.212.1", "10.231.212.2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # An index past 255 makes `ip addr add` refuse the address, after the namespace and veth exist.
        with pytest.raises(NetnsError) as failed:
            NetnsLink.create(ns, index=300)
        gc.collect()
    assert "10.231.300.1/30" in str(failed.value)
    assert "exit status" in str(failed.value)
    # ip's own words, not just its exit status.
    assert any(word in str(failed.value).lower() for word in ("invalid", "error", "expected")), str(failed.value)
    assert ns not in _namespaces()
    assert link.host_if not in _links()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_ip_errors_carry_ips_own_message() -> None:
    with pytest.raises(NetnsError, match="acbtest-none") as failed:
        _ip("netns", "exec", "acbtest-none", "true")
    assert "Cannot open network namespace" in str(failed.value)


def test_destroy_twice_is_harmless(echo_on_every_address: int) -> None:
    link = NetnsLink.create("acbtest-twice", index=_INDEX, upstream=("127.0.0.1", echo_on_every_address))
    link.destroy()
    link.destroy()
    assert "acbtest-twice" not in _namespaces()

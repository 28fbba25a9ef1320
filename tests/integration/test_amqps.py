"""TLS to the broker: the demo end to end over amqps://, clients verify the broker, replicas may use mutual TLS.

The listener is the one ``bash .ci/setup.sh --tests`` (which implies ``--tls``) gives the local RabbitMQ,
with the CA it keeps in ``$ACB_HOME/system/tls``. Without it these tests fail; they do not skip.
"""
from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import errors
from broker.certs import TlsFiles, ensure_tls_files
from broker.client import connect
from tests.support.broker_roles import admin_api, role_vhost, tls_dir
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

TLS_HOST, TLS_PORT = "127.0.0.1", 5671
ACB = [sys.executable, "-m", "peer.cli"]
_SETUP = "run `bash .ci/setup.sh --tests` (it implies --tls)"


@pytest.fixture(scope="module")
def tls() -> TlsFiles:
    """The machine's broker CA, and a TLS listener that presents a certificate it signed."""
    files = TlsFiles(tls_dir())
    if not files.ca_cert.exists():
        pytest.fail(f"no broker CA at {files.ca_cert}: {_SETUP}")
    try:
        _handshake(files.ca_cert, TLS_HOST)
    except OSError as exc:
        pytest.fail(f"no TLS listener that {files.ca_cert} vouches for on {TLS_HOST}:{TLS_PORT} ({exc}): {_SETUP}")
    return files


def _handshake(cafile: Path, server_name: str) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection((TLS_HOST, TLS_PORT), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as sock:
            assert sock.version() in ("TLSv1.3", "TLSv1.2")
            return dict(sock.getpeercert() or {})


@pytest.fixture
def clean_tls_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in ("ACB_BROKER_CA", "ACB_BROKER_CERT", "ACB_BROKER_KEY"):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


def test_the_broker_presents_a_certificate_of_our_ca_for_its_names(tls: TlsFiles) -> None:
    for name in ("127.0.0.1", "localhost"):
        cert = _handshake(tls.ca_cert, name)
        assert dict(x[0] for x in cert["subject"])["commonName"] == "acb broker"


def test_the_demo_runs_over_amqps_end_to_end(tls: TlsFiles, tmp_path: Path) -> None:
    # The demo makes a throwaway vhost with its three roles where ACB_BROKER_URL says the broker is
    # (here its TLS listener), runs a replica and the peers there, and removes it afterwards.
    api = admin_api()
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "ACB_HOME": str(home), "ACB_BROKER_URL": f"amqps://{TLS_HOST}:{TLS_PORT}/",
           "ACB_BROKER_ADMIN_URL": api.url, "ACB_BROKER_CA": str(tls.ca_cert)}
    for name in ("ACB_REPLICA_BROKER_URL", "ACB_OPERATOR_BROKER_URL", "ACB_PREFIX", "ACB_STORE_URL", "ACB_USER",
                 "ACB_BROKER_CERT", "ACB_BROKER_KEY"):
        env.pop(name, None)
    # While it runs, look at the broker's connections: every one in the demo's vhost must be TLS.
    seen: dict[str, list[bool]] = {}
    done = threading.Event()

    def watch() -> None:
        # rabbitmqctl asks the node itself; the management API's connection list lags by its stats interval.
        while not done.is_set():
            out = subprocess.run(["rabbitmqctl", "-q", "list_connections", "vhost", "ssl"], capture_output=True,
                                 text=True, timeout=60)
            for line in out.stdout.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0].startswith("acb-demo-"):
                    seen.setdefault(parts[0], []).append(parts[1] == "true")

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out = subprocess.run(ACB + ["demo", "--json"], env=env, capture_output=True, text=True, timeout=280)
    finally:
        done.set()
        watcher.join(10)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["content_verified"] is True
    assert report["balances_after"]["owner"] - report["balances_before"]["owner"] == report["fee"]
    ours = {vhost: flags for vhost, flags in seen.items() if any(flags)}
    assert ours, f"no TLS connection of the demo was seen (saw {seen})"
    assert all(all(flags) for flags in ours.values()), f"the demo also connected without TLS: {ours}"
    # Its vhost is gone afterwards.
    vhosts = {item["name"] for item in api.request("GET", "/vhosts")}
    assert not set(ours) & vhosts


def test_a_client_that_does_not_trust_the_ca_is_refused_with_a_clear_error(
        tls: TlsFiles, tmp_path: Path, clean_tls_env: pytest.MonkeyPatch) -> None:
    stranger, _ = ensure_tls_files(tmp_path / "stranger")  # a CA that never signed the broker's certificate
    with role_vhost(tls=True) as rv:
        clean_tls_env.setenv("ACB_BROKER_CA", str(stranger.ca_cert))
        with pytest.raises(errors.BrokerUnavailable) as info:
            connect(rv.peer_url)
        message = str(info.value)
        assert "certificate" in message and rv.peer_url.split("@")[0].split(":")[-1] not in message  # no password

        home = tmp_path / "home"
        home.mkdir()
        (home / "operator.pub").write_text("ab" * 32)  # a peer machine is given the operator's key with the URL
        env = {**os.environ, **rv.env(), "ACB_HOME": str(home), "ACB_BROKER_CA": str(stranger.ca_cert),
               "ACB_REPLY_TIMEOUT": "20"}
        start = time.monotonic()
        out = subprocess.run(ACB + ["search", "anything"], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 1
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("acb: ") and "certificate" in last, out.stderr
        assert "Traceback" not in out.stderr
        assert time.monotonic() - start < 15, "a broker we do not trust is not worth waiting for"

        # The same client with the right CA gets through.
        clean_tls_env.setenv("ACB_BROKER_CA", str(tls.ca_cert))
        connect(rv.peer_url).close()


def test_a_replica_may_present_a_client_certificate_and_a_foreign_one_is_refused(
        tls: TlsFiles, tmp_path: Path, clean_tls_env: pytest.MonkeyPatch) -> None:
    api = admin_api()
    with role_vhost(tls=True, declare=True) as rv:
        clean_tls_env.setenv("ACB_BROKER_CA", str(tls.ca_cert))
        clean_tls_env.setenv("ACB_BROKER_CERT", str(tls.client_cert))
        clean_tls_env.setenv("ACB_BROKER_KEY", str(tls.client_key))
        conn = connect(rv.replica_url, name="acb-mtls-check")
        try:
            conn.channel().queue_declare(rv.names.log, passive=True)

            def checked() -> list[dict[str, Any]]:
                mine = [c for c in api.request("GET", "/connections") or [] if c.get("vhost") == rv.vhost]
                return mine if mine and mine[0].get("peer_cert_subject") else []

            # The broker's statistics list the connection, with the certificate it checked, a moment after it opens.
            mine = wait_for(checked, 10, "the broker to list the connection with its client certificate", interval=0.1)
            assert mine[0]["ssl"] is True and "acb replica" in mine[0]["peer_cert_subject"]
        finally:
            conn.close()

        # A client certificate from another CA is checked, not ignored: the handshake fails.
        foreign, _ = ensure_tls_files(tmp_path / "foreign")
        clean_tls_env.setenv("ACB_BROKER_CERT", str(foreign.client_cert))
        clean_tls_env.setenv("ACB_BROKER_KEY", str(foreign.client_key))
        with pytest.raises(errors.BrokerUnavailable):
            connect(rv.replica_url).close()

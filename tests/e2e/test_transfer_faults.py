"""A download survives its provider being killed and its link being cut, and finishes with the right content.

Real processes throughout: a ledger replica, `acb serve` for the provider and
`acb buy` for the consumer. The provider is throttled so the fault lands mid-way.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from console.netns import NetnsLink, netns_available
from tests.support.cluster import ACB, Cluster
from tests.support.waiting import wait_for

ALICE = {"ACB_USER": "alice", "ACB_PASSWORD": "alice-secret-1"}
BOB = {"ACB_USER": "bob", "ACB_PASSWORD": "bob-secret-12", "ACB_IO_TIMEOUT": "3"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _market(cluster: Cluster, tmp_path: Path, endpoint: str) -> tuple[Path, str]:
    cluster.start("r1")
    assert cluster.acb("register", "alice", env=ALICE).returncode == 0
    assert cluster.acb("register", "bob", env=BOB).returncode == 0
    cluster.acb_json("operator", "deposit", "bob", "100.00")
    doc = tmp_path / "big.bin"
    doc.write_bytes(os.urandom(12 * (1 << 20) + 777))
    shared = cluster.acb_json("share", str(doc), "--price", "9.99", "--topic", "data", "--title", "Big data",
                              "--endpoint", endpoint, env=ALICE)
    return doc, shared["doc_id"]


def _serve(cluster: Cluster, listen: str, *, rate: str | None, prefix: list[str] | None = None,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    cmd = (prefix or []) + ACB + ["serve", "--listen", listen] + (["--rate-limit", rate] if rate else [])
    proc = subprocess.Popen(cmd, env={**cluster.env, **ALICE, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith(b"serving"), "acb serve did not start"
    return proc


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(15)
    if proc.stdout is not None:
        proc.stdout.close()


def _buy(cluster: Cluster, doc_id: str, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(ACB + ["buy", doc_id, "--out", str(out), "--json"], env={**cluster.env, **BOB},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stored_bytes(cluster: Cluster) -> int:
    downloads = cluster.home / "users" / "bob" / "downloads"
    return sum(p.stat().st_size for p in downloads.glob("*.ct")) if downloads.exists() else 0


def _wait_for_progress(cluster: Cluster, at_least: int, timeout: float = 30.0) -> None:
    wait_for(lambda: _stored_bytes(cluster) >= at_least, timeout, f"bob's download to store {at_least} bytes",
             interval=0.1)


def _finish(cluster: Cluster, doc: Path, doc_id: str, out: Path) -> dict[str, object]:
    second = cluster.acb("buy", doc_id, "--out", str(out), "--json", env=BOB)
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout.strip().splitlines()[-1])
    assert result["verified"] is True
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(doc.read_bytes()).digest()
    # One sale, paid once: the interrupted attempt did not charge twice.
    assert cluster.acb_json("balance", env=BOB)["available"] == 10_000 - 999
    assert [s["status"] for s in cluster.acb_json("sales", env=BOB)["sales"]] == ["settled"]
    return result


def test_download_resumes_after_the_provider_is_killed(cluster: Cluster, tmp_path: Path) -> None:
    port = _free_port()
    doc, doc_id = _market(cluster, tmp_path, f"127.0.0.1:{port}")
    serve = _serve(cluster, f"127.0.0.1:{port}", rate="2")
    out = tmp_path / "got.bin"
    buying = _buy(cluster, doc_id, out)
    try:
        _wait_for_progress(cluster, 4 << 20)
        _stop(serve, signal.SIGKILL)  # the provider's machine dies mid-transfer
        _out, err = buying.communicate(timeout=60)
        assert buying.returncode == 1
        assert err.strip().splitlines()[-1].startswith("acb: ")
        assert "Traceback" not in err
        assert not out.exists()
        serve = _serve(cluster, f"127.0.0.1:{port}", rate=None)
        result = _finish(cluster, doc, doc_id, out)
        assert isinstance(result["resumed_from"], int) and result["resumed_from"] >= 3
    finally:
        _stop(serve)
        if buying.poll() is None:
            buying.kill()
            buying.communicate()


@pytest.mark.skipif(not netns_available(), reason="cutting a link needs root and ip netns")
def test_download_resumes_after_the_link_is_cut(cluster: Cluster, tmp_path: Path) -> None:
    link = NetnsLink.create(f"acbt{os.getpid() % 100000}", index=200)
    try:
        port = 7700
        doc, doc_id = _market(cluster, tmp_path, f"{link.ns_ip}:{port}")
        serve = _serve(cluster, f"{link.ns_ip}:{port}", rate="2", prefix=["ip", "netns", "exec", link.ns],
                       env={"ACB_BROKER_URL": link.broker_url(cluster.peer_url)})
        out = tmp_path / "got.bin"
        buying = _buy(cluster, doc_id, out)
        try:
            _wait_for_progress(cluster, 4 << 20)
            link.cut()  # the cable is pulled: no FIN, no RST, just silence
            _out, err = buying.communicate(timeout=60)
            assert buying.returncode == 1
            assert "silent" in err or "timed out" in err, err
            link.restore()
            result = _finish(cluster, doc, doc_id, out)
            assert isinstance(result["resumed_from"], int) and result["resumed_from"] >= 3
        finally:
            _stop(serve)
            if buying.poll() is None:
                buying.kill()
                buying.communicate()
    finally:
        link.destroy()

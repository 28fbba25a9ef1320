"""The CLI as separate processes, the way a new user runs it: a whole paid download and its errors."""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.support.cluster import ACB, Cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_paid_download_through_the_cli(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start("r1")
    alice = {"ACB_USER": "alice", "ACB_PASSWORD": "alice-secret-1"}
    bob = {"ACB_USER": "bob", "ACB_PASSWORD": "bob-secret-12"}
    assert cluster.acb("register", "alice", env=alice).returncode == 0
    assert cluster.acb("register", "bob", env=bob).returncode == 0
    assert cluster.acb_json("operator", "deposit", "bob", "50.00")["balance"] == 5000

    doc = tmp_path / "paper.txt"
    doc.write_bytes(b"a paper worth paying for\n" * 40_000)
    port = _free_port()
    shared = cluster.acb_json("share", str(doc), "--price", "3.50", "--topic", "papers", "--title", "Replication paper",
                              "--endpoint", f"127.0.0.1:{port}", env=alice)
    server = subprocess.Popen(ACB + ["serve", "--listen", f"127.0.0.1:{port}"], env={**cluster.env, **alice},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert server.stdout is not None and server.stdout.readline().startswith(b"serving")
        hits = cluster.acb_json("search", "replication", env=bob)["hits"]
        assert [h["doc_id"] for h in hits] == [shared["doc_id"]]
        assert hits[0]["price"] == 350 and hits[0]["provider"] == "alice"

        out = tmp_path / "bought.txt"
        bought = cluster.acb_json("buy", shared["doc_id"], "--out", str(out), env=bob)
        assert bought["verified"] is True and bought["price"] == 350 and bought["fee"] == 4  # 3.5 half up
        assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(doc.read_bytes()).digest()

        assert cluster.acb_json("balance", env=bob)["available"] == 5000 - 350
        assert cluster.acb_json("balance", env=alice)["available"] == 350 - 4
        assert cluster.acb_json("operator", "balance", "owner")["available"] == 4
        kinds = [f["kind"] for f in cluster.acb_json("flows", env=bob)["flows"]]
        assert kinds == ["deposit", "hold", "payment"]
        sales = cluster.acb_json("sales", env=alice)["sales"]
        assert [s["status"] for s in sales] == ["settled"]

        # Buying one's own document: one clear line, a non-zero exit, nothing moves.
        own = cluster.acb("buy", shared["doc_id"], env=alice)
        assert own.returncode == 2
        assert own.stderr.strip().splitlines()[-1] == f"acb: refused: own_document: alice provides {shared['doc_id']} and cannot buy it"
        assert cluster.acb_json("balance", env=alice)["available"] == 346
        # Buying the same document twice by mistake is stopped; on purpose it goes through.
        twice = cluster.acb("buy", shared["doc_id"], "--out", str(tmp_path / "again.txt"), env=bob)
        assert twice.returncode == 1
        assert twice.stderr.strip().splitlines()[-1].startswith(f"acb: you bought {shared['doc_id']} already")
        assert cluster.acb_json("balance", env=bob)["available"] == 5000 - 350
        assert cluster.acb_json("buy", shared["doc_id"], "--out", str(tmp_path / "again.txt"), "--again",
                                env=bob)["verified"] is True
        assert cluster.acb_json("balance", env=bob)["available"] == 5000 - 700
    finally:
        server.terminate()
        server.wait(10)
        assert server.stdout is not None and server.stderr is not None
        server.stdout.close()
        server.stderr.close()


def test_login_errors_are_one_clear_line(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start("r1")
    assert cluster.acb("register", "carol", env={"ACB_PASSWORD": "carol-secret"}).returncode == 0
    # Another machine: an empty ACB_HOME profile, so the keystore comes from the ledger.
    other = {"ACB_HOME": str(tmp_path / "laptop")}
    os.makedirs(other["ACB_HOME"], exist_ok=True)
    # Without the operator's public key it cannot tell the real ledger's answers from forgeries: it says so.
    blind = cluster.acb("login", "carol", env={**other, "ACB_PASSWORD": "carol-secret"})
    assert blind.returncode == 1 and blind.stderr.strip().splitlines()[-1].startswith("acb: no operator public key")
    # What a peer machine is given with the broker URL: the operator's public key.
    shutil.copy(cluster.home / "system" / "operator.pub", tmp_path / "laptop" / "operator.pub")
    wrong = cluster.acb("login", "carol", env={**other, "ACB_PASSWORD": "not-her-password"})
    assert wrong.returncode == 1
    assert wrong.stderr.strip().splitlines()[-1] == "acb: wrong password for carol"
    right = cluster.acb_json("login", "carol", env={**other, "ACB_PASSWORD": "carol-secret"})
    assert right["login"] == "carol" and right["available"] == 0
    unknown = cluster.acb("login", "nobody", env={**other, "ACB_PASSWORD": "whatever-1"})
    assert unknown.returncode == 2 and "unknown_user" in unknown.stderr
    dup = cluster.acb("register", "carol", env={"ACB_PASSWORD": "carol-secret"})
    assert dup.returncode == 2 and "duplicate_registration" in dup.stderr
    poor = cluster.acb("share", str(tmp_path), "--price", "0", "--topic", "t", "--title", "x",
                       env={"ACB_USER": "carol"})
    assert poor.returncode == 1 and "no such file" in poor.stderr


def test_no_ledger_is_a_clear_wait_then_error(cluster: Cluster) -> None:
    # No replica runs: the command waits (shown as a wait), then says so; it does not hang or trace back.
    start = time.monotonic()
    out = subprocess.run(ACB + ["search", "anything"], env={**cluster.env, "ACB_REPLY_TIMEOUT": "3"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "no reply" in out.stderr.strip().splitlines()[-1]
    assert "Traceback" not in out.stderr
    assert time.monotonic() - start < 60


def test_the_apps_start_from_the_cli_and_photograph_themselves(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start("r1")
    assert cluster.acb("register", "dora", env={"ACB_PASSWORD": "dora-secret-1"}).returncode == 0
    qt = {"QT_QPA_PLATFORM": "offscreen", "ACB_USER": "dora"}
    for app in ("console", "gui"):
        shot = tmp_path / f"{app}.png"
        out = cluster.acb(app, "--screenshot", str(shot), env=qt)
        assert out.returncode == 0, out.stderr
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

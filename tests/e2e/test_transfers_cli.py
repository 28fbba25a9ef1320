"""`acb transfers` against a running `acb serve`, all as separate processes: list, limit, pause, resume."""
from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from tests.support.cluster import ACB, Cluster
from tests.support.waiting import wait_for, wait_still

ALICE = {"ACB_USER": "alice", "ACB_PASSWORD": "alice-secret-1"}
BOB = {"ACB_USER": "bob", "ACB_PASSWORD": "bob-secret-12"}


TRANSFERS = [*ACB, "transfers"]


def _transfers(cluster: Cluster, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(TRANSFERS + list(args), check=False, env={**cluster.env, **env}, capture_output=True, text=True,
                          timeout=60)


def _listing(cluster: Cluster, env: dict[str, str]) -> dict[str, Any]:
    out = _transfers(cluster, "--json", env=env)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_uploads_listed_limited_paused_resumed(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start("r1")
    assert cluster.acb("register", "alice", env=ALICE).returncode == 0
    assert cluster.acb("register", "bob", env=BOB).returncode == 0
    cluster.acb_json("operator", "deposit", "bob", "20.00")
    doc = tmp_path / "atlas.bin"
    doc.write_bytes(os.urandom(3 * 1024 * 1024 + 5000))
    port = _free_port()
    shared = cluster.acb_json("share", str(doc), "--price", "2.00", "--topic", "maps", "--title", "Atlas",
                              "--endpoint", f"127.0.0.1:{port}", env=ALICE)

    # Nothing serves yet: the listing says so, steering is one clear line.
    idle = _listing(cluster, ALICE)
    assert idle == {"uploads": [], "downloads": [], "serve": None}
    refused = _transfers(cluster, "pause", "s-none", env=ALICE)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == "acb: no `acb serve` running for alice"

    server = subprocess.Popen(ACB + ["serve", "--listen", f"127.0.0.1:{port}"], env={**cluster.env, **ALICE},
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    buyer: subprocess.Popen[str] | None = None
    sock = cluster.home / "users" / "alice" / "serve.sock"
    try:
        assert server.stdout is not None and server.stdout.readline().startswith(b"serving")
        assert sock.exists() and (sock.stat().st_mode & 0o777) == 0o600
        limited = _transfers(cluster, "limit", "0.25", env=ALICE)
        assert limited.returncode == 0 and "0.25 MB/s" in limited.stdout

        out = tmp_path / "bought.bin"
        buyer = subprocess.Popen(ACB + ["buy", shared["doc_id"], "--out", str(out), "--json"],
                                 env={**cluster.env, **BOB}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def sending() -> dict[str, Any] | None:
            rows = _listing(cluster, ALICE)["uploads"]
            return next((u for u in rows if u["state"] == "sending" and u["bytes_sent"] > 0), None)

        row = wait_for(sending, 20, "the upload to show", interval=0.2)
        sale = row["sale"]
        # Paused at once: at 0.25 MB/s the rest of the file takes about eight seconds, and on a loaded
        # machine a few `acb` calls can take seconds each.
        paused = _transfers(cluster, "pause", sale, env=ALICE)
        assert paused.returncode == 0 and paused.stdout.strip() == f"upload of sale {sale} paused"
        listing = _listing(cluster, ALICE)
        assert listing["serve"] == {"endpoint": f"127.0.0.1:{port}", "limit_mbps": 0.25}
        assert row["consumer"] == "bob" and row["doc"] == shared["doc_id"] and row["segments_total"] == 4
        assert row["allotted_mbps"] == 0.25 and row["priority"] == 1
        # A bound the throttle guarantees however loaded the machine: the shared bucket (0.25 MB/s, a
        # quarter second of burst) lets at most 62.5 kB + 0.25 MB/s * elapsed through, and a whole 1 MiB
        # segment was sent, so elapsed >= 3.9 s and the average is at most 0.27 MB/s. The current rate
        # counts whole segments over a two-second window and may read above the limit, so it is only
        # checked to be there.
        assert 0 < row["avg_mbps"] <= 0.3 and row["rate_mbps"] >= 0
        text = _transfers(cluster, env=ALICE)
        assert text.returncode == 0 and sale in text.stdout and "bob" in text.stdout

        # The segment in flight may land; then nothing moves for a whole second and a half, where the
        # limit would move 0.375 MB.
        def upload() -> tuple[str, int]:
            [only] = _listing(cluster, ALICE)["uploads"]
            return only["state"], only["bytes_sent"]

        state, sent = wait_still(upload, 1.5, 20, "the paused upload", interval=0.2)
        assert state == "paused" and sent < doc.stat().st_size
        # The buyer's side: a partial download of the same sale, seen from its own profile.
        [mine] = _listing(cluster, BOB)["downloads"]
        assert mine["sale"] == sale and mine["state"] == "partial" and mine["open_sale"] is True
        assert mine["provider"] == "alice" and mine["segments_total"] == 4

        assert _transfers(cluster, "limit", "0", env=ALICE).returncode == 0  # the rest at full speed
        assert _transfers(cluster, "resume", sale, env=ALICE).returncode == 0
        stdout, stderr = buyer.communicate(timeout=30)
        assert buyer.returncode == 0, stderr
        assert json.loads(stdout.strip().splitlines()[-1])["verified"] is True
        assert out.read_bytes() == doc.read_bytes()
        [done] = _listing(cluster, ALICE)["uploads"]
        assert done["state"] == "done" and done["segments_sent"] == 4
        assert _listing(cluster, BOB)["downloads"] == []  # decrypted and verified: nothing left behind
    finally:
        if buyer is not None and buyer.poll() is None:
            buyer.kill()
            buyer.communicate()
        server.terminate()
        server.wait(10)
        assert server.stdout is not None
        server.stdout.close()
    assert not sock.exists()

"""Benchmark: ACB's authenticated, encrypted, resumable transfer against plain TCP.

Usage: ``python -m bench.transfer --size 512MiB --json``

One run generates a random file, then alternates (five times each):

* plain: one process reads the file and ``sendall``s 1 MiB chunks over TCP, the
  other writes what it receives to a file and fsyncs it once at the end (the
  same bytes hit the disk and are made durable, as in ACB; no crypto, no journal);
* acb: a :class:`ProviderServer` process and a process running :func:`download`,
  with fresh identities, mutual TLS, per-sale AES-GCM, signed manifest entries,
  BLAKE3 checks and the crash-safe journal.

Both are timed inside the receiving process from connect to durable file; MB is
10^6 bytes and the median of the five runs is reported. A third measurement
kills the consumer process half way, resumes, and counts the segments the
provider had to send twice. The last stdout line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.content import choose_segment_size, describe_file, key_commitment, segment_count_for
from peer.transfer import ProviderServer, SaleGrant, decrypt_file, download, load_download
from peer.transfer.tls import certificate_public_key, make_certificate

__all__ = ["main", "parse_size", "run"]

_CHUNK = 1 << 20
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30,
          "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """Parse ``512MiB``, ``1GiB``, ``100MB``, ``4096`` into bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (try 512MiB or 1GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


# ---------------------------------------------------------------------------- plain TCP


def _plain_sender(path: str, port_out: Connection) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port_out.send(listener.getsockname()[1])
        conn, _ = listener.accept()
        with conn, open(path, "rb", buffering=0) as fh:
            buf = bytearray(_CHUNK)
            view = memoryview(buf)
            while n := fh.readinto(buf):
                conn.sendall(view[:n])


def _plain_receiver(port: int, out: str, fsync: bool, result: Connection) -> None:
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as conn, open(out, "wb", buffering=0) as fh:
        while n := conn.recv_into(buf):
            fh.write(view[:n])
        if fsync:
            os.fsync(fh.fileno())
    result.send(time.perf_counter() - t0)


def _run_plain(ctx: Any, src: Path, work: Path, fsync: bool) -> float:
    out = work / "plain.out"
    port_r, port_w = ctx.Pipe(duplex=False)
    res_r, res_w = ctx.Pipe(duplex=False)
    sender = ctx.Process(target=_plain_sender, args=(str(src), port_w))
    sender.start()
    port = port_r.recv()
    receiver = ctx.Process(target=_plain_receiver, args=(port, str(out), fsync, res_w))
    receiver.start()
    elapsed: float = res_r.recv()
    receiver.join()
    sender.join()
    for c in (port_r, port_w, res_r, res_w):
        c.close()
    out.unlink()
    return elapsed


# ---------------------------------------------------------------------------- ACB


class _Setup:
    """Identities, sale and document shared with the child processes (picklable)."""

    def __init__(self, src: Path, segment_size: int) -> None:
        raw = (serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        pk, ck = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        self.provider_key = pk.private_bytes(*raw)
        self.consumer_key = ck.private_bytes(*raw)
        self.provider_cert = make_certificate(pk, "bench-provider")
        self.consumer_cert = make_certificate(ck, "bench-consumer")
        self.src = src
        self.segment_size = segment_size
        self.commitment = describe_file(src, segment_size)
        self.key = os.urandom(32)

    def grant(self, sale_id: str) -> Any:
        return SaleGrant(
            sale_id=sale_id, doc_id="bench-doc", consumer_login="bench-consumer",
            consumer_cert_pem=self.consumer_cert, consumer_public_key=certificate_public_key(self.consumer_cert),
            path=self.src, segment_size=self.segment_size, key=self.key,
            key_commitment=key_commitment(sale_id, self.key), commitment=self.commitment,
        )


def _provider_proc(setup: _Setup, control: Connection) -> None:
    key = Ed25519PrivateKey.from_private_bytes(setup.provider_key)
    server = ProviderServer(key, "bench-provider", setup.provider_cert, lambda sale, _seq: setup.grant(sale))
    server.start()
    control.send(server.port)
    while control.recv() == "status":
        control.send([(u.sale_id, u.segments_sent, u.state) for u in server.uploads()])
    server.stop()


def _consumer_proc(setup: _Setup, port: int, sale_id: str, dest: str, result: Connection | None,
                   done_segments: Synchronized | None) -> None:  # type: ignore[type-arg]
    c = setup.commitment

    def progress(done: int, _total: int) -> None:
        if done_segments is not None:
            done_segments.value = done // setup.segment_size

    t0 = time.perf_counter()
    r = download(
        host="127.0.0.1", port=port, identity_key=Ed25519PrivateKey.from_private_bytes(setup.consumer_key),
        cert_pem=setup.consumer_cert, sale_id=sale_id, min_seq=0, provider_login="bench-provider",
        provider_cert_pem=setup.provider_cert, provider_public_key=certificate_public_key(setup.provider_cert),
        size=c.size, segment_size=c.segment_size, merkle_root_hex=c.merkle_root, dest_dir=Path(dest),
        progress=progress,
    )
    elapsed = time.perf_counter() - t0
    if result is not None:
        result.send({"elapsed": elapsed, "received": r.segments_received, "resumed_from": r.resumed_from,
                     "rechecked": r.segments_rechecked})


class _Provider:
    """A provider process for the whole benchmark."""

    def __init__(self, ctx: Any, setup: _Setup) -> None:
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_provider_proc, args=(setup, child))
        self._proc.start()
        child.close()
        self.port: int = self._conn.recv()

    def uploads(self) -> list[tuple[str, int, str]]:
        self._conn.send("status")
        result: list[tuple[str, int, str]] = self._conn.recv()
        return result

    def close(self) -> None:
        self._conn.send("stop")
        self._proc.join(30)
        self._conn.close()


def _run_acb(ctx: Any, setup: _Setup, provider: _Provider, work: Path, sale_id: str) -> float:
    dest = work / "acb"
    res_r, res_w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_consumer_proc, args=(setup, provider.port, sale_id, str(dest), res_w, None))
    proc.start()
    out = res_r.recv()
    proc.join()
    res_r.close()
    res_w.close()
    shutil.rmtree(dest)
    return float(out["elapsed"])


def _run_resume(ctx: Any, setup: _Setup, provider: _Provider, work: Path) -> dict[str, Any]:
    """Kill the consumer process half way, resume in a new one, count re-sent segments."""
    sale_id = "bench-resume"
    dest = work / "resume"
    count = segment_count_for(setup.commitment.size, setup.segment_size)
    done = ctx.Value("q", 0)
    first = ctx.Process(target=_consumer_proc, args=(setup, provider.port, sale_id, str(dest), None, done))
    first.start()
    deadline = time.monotonic() + 300
    while done.value < count // 2 and first.is_alive() and time.monotonic() < deadline:
        time.sleep(0.001)
    killed_at = int(done.value)
    first.kill()
    first.join()
    res_r, res_w = ctx.Pipe(duplex=False)
    second = ctx.Process(target=_consumer_proc, args=(setup, provider.port, sale_id, str(dest), res_w, None))
    second.start()
    out = res_r.recv()
    second.join()
    res_r.close()
    res_w.close()
    sent = sum(n for s, n, _ in provider.uploads() if s == sale_id)
    result = load_download(dest, sale_id)
    plain = decrypt_file(result, setup.key, work / "resume.out", sha256_hex=setup.commitment.sha256,
                         merkle_root_hex=setup.commitment.merkle_root)
    plain.unlink()
    shutil.rmtree(dest)
    return {
        "resume_overhead_segments": float(sent - count),
        "resume_killed_at_segment": killed_at,
        "resume_restarted_from_segment": out["resumed_from"],
        "resume_rechecked_segments": out["rechecked"],
        "resume_verified": True,
    }


# ---------------------------------------------------------------------------- driver


def _make_file(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 16 << 20)
            fh.write(os.urandom(n))
            left -= n


def run(size_bytes: int, json_out: bool, *, repeats: int = 5, segment_size: int | None = None,
        workdir: Path | None = None) -> dict[str, Any]:
    """Run the benchmark and return the summary (also printed, table then JSON if ``json_out``)."""
    segment_size = segment_size or choose_segment_size(size_bytes)  # what `acb share` would pick
    out = sys.stderr if json_out else sys.stdout
    ctx = mp.get_context("spawn")
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="acb-bench-", dir=workdir) as tmp:
        work = Path(tmp)
        src = work / "source.bin"
        _make_file(src, size_bytes)
        setup = _Setup(src, segment_size)
        provider = _Provider(ctx, setup)
        runs: dict[str, list[float]] = {"plain": [], "acb": [], "plain_nofsync": []}
        try:
            # One untimed round first: the first touch of fresh memory and disk
            # blocks in this VM costs several times a warm run, for both sides.
            _run_plain(ctx, src, work, fsync=True)
            _run_acb(ctx, setup, provider, work, "bench-warmup")
            for i in range(repeats):
                # Start each run with no dirty pages left over from the previous one.
                for name in ("plain", "acb", "plain_nofsync"):
                    os.sync()
                    if name == "acb":
                        elapsed = _run_acb(ctx, setup, provider, work, f"bench-{i}")
                    else:
                        elapsed = _run_plain(ctx, src, work, fsync=name == "plain")
                    runs[name].append(size_bytes / elapsed / 1e6)
                    print(f"  run {i + 1} {name:<14} {runs[name][-1]:9.1f} MB/s", file=out, flush=True)
            os.sync()
            resume = _run_resume(ctx, setup, provider, work)
        finally:
            provider.close()
    plain, acb = statistics.median(runs["plain"]), statistics.median(runs["acb"])
    nofsync = statistics.median(runs["plain_nofsync"])
    summary: dict[str, Any] = {
        "plain_MBps": round(plain, 1),
        "acb_MBps": round(acb, 1),
        "ratio": round(acb / plain, 3),
        "resume_overhead_segments": resume.pop("resume_overhead_segments"),
        "plain_nofsync_MBps": round(nofsync, 1),
        "ratio_vs_nofsync": round(acb / nofsync, 3),
        "size_bytes": size_bytes,
        "segment_size": segment_size,
        "repeats": repeats,
        "runs_MBps": {k: [round(v, 1) for v in vs] for k, vs in runs.items()},
        **resume,
        "seconds": round(time.monotonic() - began, 1),
    }
    _print_table(summary, out)
    if json_out:
        print(json.dumps(summary), flush=True)
    return summary


def _print_table(s: dict[str, Any], out: Any) -> None:
    rows = [
        ("file size", f"{s['size_bytes'] / 2**20:.0f} MiB, segments of {s['segment_size'] / 2**20:g} MiB"),
        ("plain TCP + fsync (median)", f"{s['plain_MBps']:.1f} MB/s"),
        ("ACB transfer (median)", f"{s['acb_MBps']:.1f} MB/s"),
        ("ratio ACB / plain", f"{s['ratio']:.3f}"),
        ("plain TCP, no fsync (median)", f"{s['plain_nofsync_MBps']:.1f} MB/s  (ratio {s['ratio_vs_nofsync']:.3f})"),
        ("resume after kill", (f"{s['resume_overhead_segments']:g} segments sent twice "
                               f"(killed at {s['resume_killed_at_segment']}, restarted at "
                               f"{s['resume_restarted_from_segment']}, {s['resume_rechecked_segments']} re-checked)")),
        ("total time", f"{s['seconds']} s"),
    ]
    width = max(len(k) for k, _ in rows)
    print(file=out)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}", file=out)
    out.flush()


def main(argv: list[str] | None = None) -> int:
    """Command line entry: ``--size 512MiB [--json] [--repeats 5] [--segment-size 1MiB] [--dir PATH]``."""
    parser = argparse.ArgumentParser(prog="acb bench transfer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="512MiB", help="file size, e.g. 512MiB or 1GiB")
    parser.add_argument("--json", action="store_true", help="print the table to stderr and JSON last on stdout")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--segment-size", default=None, help="segment size, default 1MiB")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the temporary files")
    args = parser.parse_args(argv)
    try:
        size = parse_size(args.size)
        seg = parse_size(args.segment_size) if args.segment_size else None
    except ValueError as exc:
        parser.error(str(exc))
    run(size, args.json, repeats=args.repeats, segment_size=seg, workdir=args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Interrupted downloads resume from the first segment not yet verified and durable."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from peer.transfer import (
    ConnectionLost,
    DownloadResult,
    ProviderServer,
    TransferCancelled,
    TransferControl,
    decrypt_file,
)
from peer.transfer.journal import slot_size
from tests.support.market import SEG, Market, progress_hook
from tests.support.waiting import wait_for

_REC = struct.Struct(">BI")
HEADER, ENTRY, COMMIT, COMPLETE = 1, 2, 3, 4


def _records(path: Path) -> list[tuple[int, bytes, bytes]]:
    """(kind, payload, raw record) of every journal record."""
    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        kind, n = _REC.unpack_from(data, pos)
        end = pos + _REC.size + n + 4
        out.append((kind, data[pos + _REC.size : end - 4], data[pos:end]))
        pos = end
    return out


def _entry_index(payload: bytes) -> int:
    return int.from_bytes(payload[:8], "big")


def _record(kind: int, payload: bytes) -> bytes:
    head = _REC.pack(kind, len(payload))
    return head + payload + zlib.crc32(head + payload).to_bytes(4, "big")


def _keep(path: Path, keep: list[bytes], tail: bytes = b"") -> None:
    path.write_bytes(b"".join(keep) + tail)


def _check(market: Market, result: DownloadResult, key: bytes, out: Path) -> None:
    c = market.commitment
    decrypt_file(result, key, out, sha256_hex=c.sha256, merkle_root_hex=c.merkle_root)
    assert out.read_bytes() == market.doc.read_bytes()


def _sent(server_uploads: list, sale_id: str) -> int:  # type: ignore[type-arg]
    return sum(u.segments_sent for u in server_uploads if u.sale_id == sale_id)


def test_cancel_mid_way_then_resume(tmp_path: Path) -> None:
    market = Market(tmp_path, size=40 * SEG + 99)
    key = market.sell("s1")
    control = TransferControl()
    with market.server(rate_limit_bps=8_000_000) as server:
        hook = progress_hook(lambda done, total: done >= total // 3, control.cancel)
        with pytest.raises(TransferCancelled):
            market.download(server, "s1", tmp_path / "dl", control=control, progress=hook)
        assert wait_for(lambda: server.uploads()[-1].state in ("failed", "cancelled"))
        result = market.download(server, "s1", tmp_path / "dl")
        assert 0 < result.resumed_from < result.segment_count
        assert result.segments_received == result.segment_count - result.resumed_from
        assert wait_for(lambda: server.uploads()[-1].state == "done")
        # Only what was in flight when cancelled crosses the wire twice.
        assert _sent(server.uploads(), "s1") - result.segment_count <= 12
    _check(market, result, key, tmp_path / "out.bin")


def test_crash_where_the_journal_lags_the_data(market: Market, running: ProviderServer, tmp_path: Path) -> None:
    key = market.sell("s1")
    dest = tmp_path / "dl"
    full = market.download(running, "s1", dest)
    records = _records(full.journal_path)
    header = [r for k, _, r in records if k == HEADER]
    entries = {_entry_index(p): r for k, p, r in records if k == ENTRY}
    # Data of every segment is on disk, but the crash hit before the journal
    # said more than "segments 0-1 durable" and "2-3 written, pending".
    commit2 = _record(COMMIT, (2).to_bytes(8, "big"))
    _keep(full.journal_path, [*header, entries[0], entries[1], commit2, entries[2], entries[3]],
          tail=b"\x02\x00\x00")  # and a torn record at the end
    # Segment 3's bytes did not all reach the disk.
    with open(full.ct_path, "r+b") as fh:
        fh.seek(3 * slot_size(SEG) + 100)
        fh.write(b"\xff" * 50)
    result = market.download(running, "s1", dest)
    assert result.segments_rechecked == 1  # segment 2 only: 0-1 trusted, 3 failed its re-check
    assert result.resumed_from == 3
    assert result.segments_received == result.segment_count - 3
    _check(market, result, key, tmp_path / "out.bin")


def test_crash_with_only_the_header_journaled_refetches_everything(
    market: Market, running: ProviderServer, tmp_path: Path
) -> None:
    key = market.sell("s1")
    dest = tmp_path / "dl"
    full = market.download(running, "s1", dest)
    header = [r for k, _, r in _records(full.journal_path) if k == HEADER]
    _keep(full.journal_path, header)
    result = market.download(running, "s1", dest)
    assert (result.resumed_from, result.segments_received) == (0, result.segment_count)
    _check(market, result, key, tmp_path / "out.bin")


def test_provider_stopped_and_restarted(tmp_path: Path) -> None:
    market = Market(tmp_path, size=40 * SEG)
    key = market.sell("s1")
    first = market.server(rate_limit_bps=6_000_000)
    first.start()
    try:
        hook = progress_hook(lambda done, total: done >= total // 3, first.stop)
        with pytest.raises(ConnectionLost):
            market.download(first, "s1", tmp_path / "dl", progress=hook)
    finally:
        first.stop()
    assert first.uploads()[-1].state == "cancelled"
    with market.server() as second:
        result = market.download(second, "s1", tmp_path / "dl")
    assert 0 < result.resumed_from < result.segment_count
    _check(market, result, key, tmp_path / "out.bin")

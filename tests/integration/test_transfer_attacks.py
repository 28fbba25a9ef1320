"""Peers without the right key get nothing; a dishonest provider is caught and judged."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.content import (
    ManifestEntry,
    SegmentCipher,
    SignedEntry,
    ciphertext_hash,
    judge_dispute,
    sign_entry,
)
from peer.transfer import (
    AuthenticationFailed,
    ConnectionLost,
    ContentMismatch,
    ManifestInvalid,
    ProviderServer,
    SaleGrant,
    SegmentCorrupt,
    SegmentOutOfOrder,
    SegmentTruncated,
    TransferError,
    decrypt_file,
    protocol,
)
from peer.transfer.source import Frame, SegmentSource
from peer.transfer.tls import client_context
from tests.support.market import SEG, Market, User
from tests.support.waiting import wait_for


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    sock.settimeout(5)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


# ---------------------------------------------------------------------------- who may connect


def test_plain_tcp_client_gets_only_the_opening_reply(market: Market, running: ProviderServer) -> None:
    market.sell("s1")
    with socket.create_connection(("127.0.0.1", running.port)) as sock:
        protocol.send_hello(sock, "s1", 0)
        protocol.read_reply(sock)  # the sale exists, so the provider proceeds to TLS
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not a TLS ClientHello
        data = _read_all(sock)
    assert b"SEG1" not in data and len(data) < 100  # at most a TLS alert
    assert wait_for(lambda: running.uploads()[-1].state == "refused")
    assert "TLS handshake failed" in (running.uploads()[-1].error or "")


def test_client_not_speaking_acb_is_refused_at_once(market: Market, running: ProviderServer) -> None:
    market.sell("s1")
    with socket.create_connection(("127.0.0.1", running.port)) as sock:
        sock.sendall(b"hello there\n")
        data = _read_all(sock)
    assert data.startswith(b'ACB1 {"refused":') and b"ACB1" in data[5:]
    assert b"SEG1" not in data


def test_bare_tls_client_like_openssl_s_client_is_refused(market: Market, running: ProviderServer) -> None:
    market.sell("s1")
    stranger = User.make("mallory")
    ctx = client_context(stranger.key, stranger.cert, market.provider.cert)
    with (
        socket.create_connection(("127.0.0.1", running.port)) as raw,
        pytest.raises(ssl.SSLError),
        ctx.wrap_socket(raw) as tls,
    ):
        tls.recv(1)
    assert wait_for(lambda: running.uploads()[-1].state == "refused")
    assert "ACB1" in (running.uploads()[-1].error or "")


def test_tls_client_with_an_unregistered_key_is_refused(
    market: Market, running: ProviderServer, tmp_path: Path
) -> None:
    market.sell("s1")
    with pytest.raises(AuthenticationFailed, match="rejected our certificate"):
        market.download(running, "s1", tmp_path / "dl", as_user=User.make("bob"))  # same name, other key
    assert wait_for(lambda: running.uploads()[-1].state == "refused")
    assert "not bob" in (running.uploads()[-1].error or "")
    assert running.uploads()[-1].bytes_sent == 0
    assert not list((tmp_path / "dl").glob("*.ct")) or (tmp_path / "dl" / "s1.ct").stat().st_size == 0


def test_registered_user_who_is_not_the_buyer_is_refused(
    market: Market, running: ProviderServer, tmp_path: Path
) -> None:
    market.sell("s1", buyer=market.consumer)
    with pytest.raises(AuthenticationFailed):
        market.download(running, "s1", tmp_path / "dl", as_user=market.other)
    assert wait_for(lambda: running.uploads()[-1].state == "refused")
    assert running.uploads()[-1].segments_sent == 0


def test_an_opening_line_dribbled_byte_by_byte_is_cut_at_the_deadline(market: Market, tmp_path: Path) -> None:
    """Slowloris: one byte now and then keeps a per-read timeout happy forever; the deadline is for the whole line."""
    market.sell("s1")
    line = b'ACB1 {"sale_id": "s1", "min_seq": 0}\n'
    with market.server(handshake_timeout=1.0) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        start = time.monotonic()
        answer = b""
        pace = threading.Event()
        for byte in line[:-1]:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            if pace.wait(0.1):  # the attack's own pace, not a synchronisation
                break
            if time.monotonic() - start > 1.5:
                break
        sock.settimeout(3)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            answer = sock.recv(4096)
        took = time.monotonic() - start
        assert answer.startswith(b'ACB1 {"refused":') and b"in time" in answer, answer
        assert took < 2.0, took
        # The honest buyer is served as ever.
        assert market.download(server, "s1", tmp_path / "dl").complete


def test_idle_connections_from_the_buyers_own_address_do_not_lock_it_out(market: Market, tmp_path: Path) -> None:
    """Behind one address (a NAT, or here loopback) the oldest idle connections make room for a fresh one."""
    market.sell("s1")
    with market.server(max_waiting_per_address=8) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(100)]
        try:
            assert market.download(server, "s1", tmp_path / "dl").complete
            assert server.turned_away >= 92
            refused = [u for u in server.uploads() if u.state == "refused"]
            assert refused and all("too many connections from your address" in (u.error or "") for u in refused)
        finally:
            for sock in idle:
                sock.close()


def test_impostor_provider_is_refused_by_the_consumer(market: Market, tmp_path: Path) -> None:
    market.sell("s1")
    impostor = User.make("alice")  # right name, wrong key
    server = ProviderServer(impostor.key, "alice", impostor.cert, market.authorize)
    with server, pytest.raises(AuthenticationFailed, match="provider is not alice"):
        market.download(server, "s1", tmp_path / "dl")


# ---------------------------------------------------------------------------- dishonest provider

Tamper = Callable[[SegmentSource, Frame], list[Frame]]


class _TamperedSource:
    """Wraps the real frame producer and lets a test rewrite what goes on the wire."""

    def __init__(self, inner: SegmentSource, tamper: Tamper) -> None:
        self._inner = inner
        self._tamper = tamper
        self.count = inner.count

    def frames(self, start: int, depth: int, until: int | None = None) -> Iterator[Frame]:
        for frame in self._inner.frames(start, 1, until):
            yield from self._tamper(self._inner, frame)

    def close(self) -> None:
        self._inner.close()


class _DishonestServer(ProviderServer):
    tamper: Tamper

    def _open_source(self, grant: SaleGrant) -> SegmentSource:
        return _TamperedSource(super()._open_source(grant), self.tamper)  # type: ignore[return-value]


def _split(head: bytes) -> tuple[ManifestEntry, bytes]:
    _magic, _index, elen, _clen = protocol.FRAME.unpack_from(head)
    body = head[protocol.FRAME.size : protocol.FRAME.size + elen]
    return SignedEntry(body=body, signature=head[-64:]).entry, body


def _frame(index: int, signed: SignedEntry, ct: bytes | memoryview) -> Frame:
    head = protocol.pack_frame(protocol.MAGIC_SEGMENT, index, len(signed.body), len(ct))
    return index, head + signed.body + signed.signature, memoryview(ct)


def _dishonest(market: Market, tamper: Tamper) -> _DishonestServer:
    server = market.server(cls=_DishonestServer)
    assert isinstance(server, _DishonestServer)
    server.tamper = tamper
    return server


AT = 3


def _corrupt(src: SegmentSource, frame: Frame) -> list[Frame]:
    index, head, ct = frame
    if index == AT:
        ct = memoryview(bytearray(ct))
        ct[10] ^= 0x40
    return [(index, head, ct)]


def _truncate(src: SegmentSource, frame: Frame) -> list[Frame]:
    index, head, ct = frame
    if index != AT:
        return [frame]
    entry, _ = _split(head)
    short = bytes(ct[:-100])
    resigned = sign_entry(src._key, ManifestEntry(entry.sale_id, index, ciphertext_hash(short), len(short),
                                                  entry.proof))
    return [_frame(index, resigned, short)]


def _hang_up_mid_segment(src: SegmentSource, frame: Frame) -> list[Frame]:
    index, head, ct = frame
    if index == AT:
        return [(index, head, ct[: len(ct) // 2])]
    if index > AT:
        raise TransferError("provider process died")
    return [frame]


def _reorder(src: SegmentSource, frame: Frame) -> list[Frame]:
    index, _head, _ct = frame
    if index == AT:
        return []  # skip: the next segment arrives where this one was due
    return [frame]


def _foreign_signature(src: SegmentSource, frame: Frame) -> list[Frame]:
    index, head, ct = frame
    if index != AT:
        return [frame]
    entry, _ = _split(head)
    return [_frame(index, sign_entry(Ed25519PrivateKey.generate(), entry), ct)]


def _other_sale(src: SegmentSource, frame: Frame) -> list[Frame]:
    index, head, ct = frame
    if index != AT:
        return [frame]
    entry, _ = _split(head)
    moved = ManifestEntry("another-sale", index, entry.ct_hash, entry.ct_size, entry.proof)
    return [_frame(index, sign_entry(src._key, moved), ct)]


@pytest.mark.parametrize(
    ("tamper", "error", "message"),
    [
        (_corrupt, SegmentCorrupt, "does not match the signed hash"),
        (_truncate, SegmentTruncated, "the document needs"),
        (_hang_up_mid_segment, ConnectionLost, f"segment {AT}: connection closed"),
        (_reorder, SegmentOutOfOrder, f"expected segment {AT}, provider sent segment {AT + 1}"),
        (_foreign_signature, ManifestInvalid, "not signed by the provider"),
        (_other_sale, ManifestInvalid, "another-sale"),
    ],
)
def test_bad_segment_is_caught_and_good_ones_are_kept(
    market: Market, tmp_path: Path, tamper: Tamper, error: type[Exception], message: str
) -> None:
    key = market.sell("s1")
    with _dishonest(market, tamper) as bad, pytest.raises(error, match=message):
        market.download(bad, "s1", tmp_path / "dl")
    # The honest provider (same sale) completes the download from segment AT on.
    with market.server() as good:
        result = market.download(good, "s1", tmp_path / "dl")
    assert result.resumed_from == AT
    c = market.commitment
    decrypt_file(result, key, tmp_path / "out.bin", sha256_hex=c.sha256, merkle_root_hex=c.merkle_root)
    assert (tmp_path / "out.bin").read_bytes() == market.doc.read_bytes()


def _judge(market: Market, key: bytes, evidence: tuple[object, object, bytes]) -> tuple[bool, str]:
    header, entry, ciphertext = evidence
    verdict = judge_dispute(
        key=key, sale_id="s1", provider_public_key=market.provider.public, header=header,  # type: ignore[arg-type]
        entry=entry, ciphertext=ciphertext, published_root_hex=market.commitment.merkle_root,  # type: ignore[arg-type]
        segment_count=market.commitment.segment_count,
    )
    return verdict.provider_cheated, verdict.reason


def test_other_content_than_published_is_caught_at_decrypt_and_judged(
    market: Market, running: ProviderServer, tmp_path: Path
) -> None:
    key = market.sell("s1")
    served = bytearray(market.doc.read_bytes())
    served[4 * SEG + 7] ^= 1  # one bit differs in segment 4
    market.served_path = tmp_path / "swapped.bin"
    market.served_path.write_bytes(served)
    result = market.download(running, "s1", tmp_path / "dl")  # every signed hash matches: it is what was signed
    c = market.commitment
    with pytest.raises(ContentMismatch, match="segment 4 is not part of the published document") as info:
        decrypt_file(result, key, tmp_path / "out.bin", sha256_hex=c.sha256, merkle_root_hex=c.merkle_root)
    assert info.value.index == 4 and info.value.evidence is not None
    assert not (tmp_path / "out.bin").exists()
    cheated, reason = _judge(market, key, info.value.evidence)
    assert cheated, reason
    # A consumer disputing an honest segment of the same sale loses.
    cheated, reason = _judge(market, key, result.evidence_for(1))
    assert not cheated and "genuine" in reason


def test_garbage_encrypted_under_another_key_is_judged_cheating(market: Market, tmp_path: Path) -> None:
    key = market.sell("s1")
    wrong = SegmentCipher(os.urandom(32), "s1")

    def other_key(src: SegmentSource, frame: Frame) -> list[Frame]:
        index, head, ct = frame
        if index != 2:
            return [frame]
        entry, _ = _split(head)
        bad = wrong.encrypt(index, bytes(len(ct) - 16))
        return [_frame(index, sign_entry(src._key, ManifestEntry("s1", index, ciphertext_hash(bad), len(bad),
                                                                  entry.proof)), bad)]

    with _dishonest(market, other_key) as bad_server:
        result = market.download(bad_server, "s1", tmp_path / "dl")
    c = market.commitment
    with pytest.raises(ContentMismatch, match="segment 2 does not decrypt") as info:
        decrypt_file(result, key, tmp_path / "out.bin", sha256_hex=c.sha256, merkle_root_hex=c.merkle_root)
    assert info.value.evidence is not None
    cheated, reason = _judge(market, key, info.value.evidence)
    assert cheated and "does not decrypt" in reason

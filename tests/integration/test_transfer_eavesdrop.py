"""What an eavesdropper on the wire between two peers sees: nothing of the plaintext.

A relay between consumer and provider records every byte both ways. The
plaintext, its segment hashes (the Merkle leaves and the paths that reveal
them) and the key never cross in a form an observer can read; a relay that
flips a byte of a sealed manifest entry is caught.
"""
from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from peer.transfer import ManifestInvalid, ProviderServer, decrypt_file
from tests.support.market import SEG, Market


class Relay:
    """A TCP relay on 127.0.0.1 that records (and may alter) what passes."""

    def __init__(self, upstream: int, alter_at: int | None = None, drop_at: int | None = None) -> None:
        self.upstream = upstream
        self.alter_at = alter_at  # flip one byte at this offset of the provider-to-consumer stream
        self.drop_at = drop_at  # hang up both ways once this many provider-to-consumer bytes passed
        self.to_consumer = bytearray()
        self.to_provider = bytearray()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        server = socket.create_connection(("127.0.0.1", self.upstream))
        self._socks += [client, server]
        for src, dst, log, alter, drop in ((client, server, self.to_provider, None, None),
                                           (server, client, self.to_consumer, self.alter_at, self.drop_at)):
            t = threading.Thread(target=self._pipe, args=(src, dst, log, alter, drop), daemon=True)
            t.start()
            self._threads.append(t)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, log: bytearray, alter: int | None, drop: int | None) -> None:
        try:
            while chunk := src.recv(1 << 16):
                if alter is not None and len(log) <= alter < len(log) + len(chunk):
                    chunk = bytearray(chunk)
                    chunk[alter - len(log)] ^= 0x01
                    chunk = bytes(chunk)
                if drop is not None and len(log) + len(chunk) >= drop:
                    chunk = chunk[: drop - len(log)]
                    log += chunk
                    dst.sendall(chunk)
                    return  # the cable goes: both directions are shut below
                log += chunk
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()
        for t in self._threads:
            t.join(5)
        for s in self._socks:
            s.close()


def _relayed(server: ProviderServer, relay: Relay) -> ProviderServer:
    server.port = relay.port  # the consumer dials the relay
    return server


def test_the_wire_carries_no_plaintext_no_segment_hashes_and_no_key(
    market: Market, running: ProviderServer, tmp_path: Path
) -> None:
    key = market.sell("s-wire")
    relay = Relay(running.port)
    try:
        real = running.port
        result = market.download(_relayed(running, relay), "s-wire", tmp_path / "dl")
        running.port = real
    finally:
        relay.close()
    wire = bytes(relay.to_consumer) + bytes(relay.to_provider)
    assert len(relay.to_consumer) > market.size  # the whole document did pass, encrypted
    plain = market.doc.read_bytes()
    for i in range(0, len(plain), SEG):
        assert plain[i:i + 64] not in wire, f"plaintext of segment {i // SEG} is visible"
    for leaf in market.commitment.leaves:
        assert leaf not in wire and leaf.hex().encode() not in wire, "a plaintext segment hash is visible"
    assert key not in wire and key.hex().encode() not in wire
    out = decrypt_file(result, key, tmp_path / "out.bin", sha256_hex=market.commitment.sha256,
                       merkle_root_hex=market.commitment.merkle_root)
    assert out.read_bytes() == plain


def test_a_flipped_byte_in_a_sealed_entry_is_caught(market: Market, running: ProviderServer, tmp_path: Path) -> None:
    market.sell("s-flip")
    # Find where the first frame's sealed entry lies: record one clean transfer of another sale first.
    market.sell("s-probe")
    probe = Relay(running.port)
    real = running.port
    try:
        market.download(_relayed(running, probe), "s-probe", tmp_path / "probe")
    finally:
        running.port = real
        probe.close()
    first_frame = bytes(probe.to_consumer).find(b"SEG1")
    assert first_frame > 0
    relay = Relay(real, alter_at=first_frame + 24 + 5)  # a byte inside the sealed entry
    try:
        with pytest.raises(ManifestInvalid, match="does not open"):
            market.download(_relayed(running, relay), "s-flip", tmp_path / "dl")
    finally:
        running.port = real
        relay.close()


def test_the_real_openssl_s_client_gets_nothing(market: Market, running: ProviderServer) -> None:
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is part of the base system here"
    market.sell("s-probe2")
    out = subprocess.run([openssl, "s_client", "-connect", f"127.0.0.1:{running.port}", "-tls1_3"],
                         input=b"", capture_output=True, timeout=30)
    assert out.returncode != 0  # no handshake happened
    assert b"SEG1" not in out.stdout and b"BEGIN CERTIFICATE" not in out.stdout  # no content, not even our cert
    assert running.uploads()[-1].state == "refused"


@pytest.mark.parametrize("phase, drop_at", [
    ("opening reply", 8),
    ("TLS handshake", 200),
    ("manifest header", 1_500),
    ("first segment", 30_000),
    ("later segment", 3 * SEG + 5_000),
])
def test_a_connection_dropped_at_any_phase_loses_nothing(market: Market, running: ProviderServer, tmp_path: Path,
                                                         phase: str, drop_at: int) -> None:
    from peer.transfer import TransferError

    key = market.sell("s-drop")
    real = running.port
    relay = Relay(real, drop_at=drop_at)
    try:
        with pytest.raises(TransferError) as info:
            market.download(_relayed(running, relay), "s-drop", tmp_path / "dl")
    finally:
        running.port = real
        relay.close()
    assert str(info.value), f"a drop during the {phase} must say what happened"
    # The honest side's state is intact: a new connection finishes the same download with the right content.
    result = market.download(running, "s-drop", tmp_path / "dl")
    out = decrypt_file(result, key, tmp_path / "out.bin", sha256_hex=market.commitment.sha256,
                       merkle_root_hex=market.commitment.merkle_root)
    assert out.read_bytes() == market.doc.read_bytes()
    if drop_at > 3 * SEG:
        assert result.resumed_from >= 2  # what was stored before the drop was kept

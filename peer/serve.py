"""The provider's side of a sale: decide whom to serve, escrow the sale key, stream the file.

For each connecting consumer the provider asks the ledger about the sale
(waiting until the ledger has applied the consumer's ``open_sale``), checks
that it is its own open sale, makes (or reloads, on resume) the sale's fresh
key K, escrows K sealed to the ledger with its commitment, and only then lets
the transfer layer authenticate the consumer and send ciphertext.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from broker import commands as c
from broker import content
from broker.codec import b64e
from broker.errors import BrokerError
from broker.sealing import escrow_info, seal_to
from peer.client import Client, Shares
from peer.identity import Identity, Profile
from peer.transfer import ProviderServer, SaleGrant, TransferRefused

__all__ = ["ProviderService"]

log = logging.getLogger(__name__)


class ProviderService:
    """Serves this user's shared files to consumers with open sales."""

    def __init__(self, client: Client, identity: Identity, *, host: str = "127.0.0.1", port: int = 0,
                 rate_limit_bps: int | None = None) -> None:
        self.client = client
        self.identity = identity
        self.profile = Profile(client.home, identity.login)
        self._lock = threading.Lock()  # the ledger client is not thread-safe; consumers arrive in parallel
        self._commitments: dict[str, tuple[tuple[int, int], content.FileCommitment]] = {}
        self.server = ProviderServer(identity.sign_key, identity.login, identity.cert_pem, self.authorize,
                                     host=host, port=port, rate_limit_bps=rate_limit_bps)

    def start(self) -> int:
        self.server.start()
        return self.server.port

    def stop(self) -> None:
        self.server.stop()

    def _sale_key(self, sale_id: str) -> bytes:
        path = self.profile.subdir("sale-keys") / sale_id
        if path.exists():
            return path.read_bytes()
        key = os.urandom(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            os.fsync(f.fileno())
        return key

    def _commitment(self, doc_id: str, share: dict) -> content.FileCommitment:
        path = Path(share["path"])
        if not path.is_file():
            raise TransferRefused(f"the shared file of {doc_id} is gone: {path}")
        st = path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        cached = self._commitments.get(doc_id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        # Re-describe whenever the file's size or time changed: never serve other content than published.
        fresh = content.describe_file(path, share["segment_size"])
        if fresh.sha256 != share["sha256"] or fresh.merkle_root != share["merkle_root"]:
            raise TransferRefused(f"{path} changed since it was shared as {doc_id}; share it again")
        self._commitments[doc_id] = (stamp, fresh)
        return fresh

    def authorize(self, sale_id: str, min_seq: int) -> SaleGrant:
        with self._lock:
            try:
                self.client.last_seq = max(self.client.last_seq, min_seq)
                sale = self.client.sale(sale_id)
            except BrokerError as exc:
                raise TransferRefused(f"sale {sale_id}: {exc}") from exc
            if sale["provider"] != self.identity.login:
                raise TransferRefused(f"sale {sale_id} is not a sale of {self.identity.login}")
            if sale["status"] != "open":
                raise TransferRefused(f"sale {sale_id} is {sale['status']}")
            share = Shares(self.profile).load().get(sale["doc_id"])
            if share is None:
                raise TransferRefused(f"{self.identity.login} does not share {sale['doc_id']} on this machine")
            commitment = self._commitment(sale["doc_id"], share)
            key = self._sale_key(sale_id)
            commit = content.key_commitment(sale_id, key)
            if sale.get("key_commitment") is None:
                info = self.client.ledger_info()
                sealed = seal_to(bytes.fromhex(info["ledger_box_key"]), key, escrow_info(sale_id))
                try:
                    self.client.send(c.EscrowKey(sale_id=sale_id, sealed_key=b64e(sealed), key_commitment=commit))
                except BrokerError as exc:
                    raise TransferRefused(f"could not escrow the key of {sale_id}: {exc}") from exc
            elif sale["key_commitment"] != commit:
                raise TransferRefused(f"sale {sale_id} has another key escrowed than this machine holds")
        return SaleGrant(
            sale_id=sale_id, doc_id=sale["doc_id"], consumer_login=sale["consumer"],
            consumer_cert_pem=sale["consumer_cert_pem"].encode(),
            consumer_public_key=bytes.fromhex(sale["consumer_sign_key"]), path=Path(share["path"]),
            segment_size=share["segment_size"], key=key, key_commitment=commit, commitment=commitment,
        )

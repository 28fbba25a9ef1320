"""A market of peers for the transfer tests: users, one published document and its sales.

Real sockets on 127.0.0.1, real TLS, real files; the only stand-in is the
ledger, whose role here is just to say which user bought which sale. The
``market`` fixture of tests/integration/conftest.py builds one per test.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.content import FileCommitment, describe_file, key_commitment
from peer.transfer import (
    DownloadResult,
    ProviderServer,
    SaleGrant,
    TransferRefused,
    download,
    make_certificate,
)
from peer.transfer.tls import certificate_public_key

__all__ = ["SEG", "Market", "User", "progress_hook"]

SEG = 64 * 1024


@dataclass(frozen=True)
class User:
    """A registered user: identity key and the certificate the ledger holds."""

    login: str
    key: Ed25519PrivateKey
    cert: bytes

    @property
    def public(self) -> bytes:
        """The raw Ed25519 public key inside the certificate."""
        return certificate_public_key(self.cert)

    @classmethod
    def make(cls, login: str) -> User:
        """A fresh key and its self-signed certificate for ``login``."""
        key = Ed25519PrivateKey.generate()
        return cls(login, key, make_certificate(key, login))


@dataclass
class Market:
    """Users, one published document and its sales, as the ledger would know them."""

    root: Path
    provider: User = field(default_factory=lambda: User.make("alice"))
    consumer: User = field(default_factory=lambda: User.make("bob"))
    other: User = field(default_factory=lambda: User.make("carol"))
    size: int = 5 * SEG + 1234
    sales: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    served_path: Path | None = None

    def __post_init__(self) -> None:
        self.doc = self.root / "published.bin"
        self.doc.write_bytes(os.urandom(self.size))
        self.commitment: FileCommitment = describe_file(self.doc, SEG)

    def sell(self, sale_id: str, buyer: User | None = None) -> bytes:
        """Open a sale to ``buyer`` and return its per-sale key."""
        key = os.urandom(32)
        self.sales[sale_id] = ((buyer or self.consumer).login, key)
        return key

    def user(self, login: str) -> User:
        """The market's user called ``login``."""
        return next(u for u in (self.provider, self.consumer, self.other) if u.login == login)

    def authorize(self, sale_id: str, min_seq: int) -> SaleGrant:
        """What the ledger would grant the provider for ``sale_id`` (the provider's authorize hook)."""
        if sale_id not in self.sales:
            raise TransferRefused(f"sale {sale_id} is unknown to the ledger")
        buyer, key = self.sales[sale_id]
        user = self.user(buyer)
        return SaleGrant(
            sale_id=sale_id, doc_id="doc-1", consumer_login=buyer, consumer_cert_pem=user.cert,
            consumer_public_key=user.public, path=self.served_path or self.doc, segment_size=SEG,
            key=key, key_commitment=key_commitment(sale_id, key), commitment=self.commitment,
        )

    def server(self, cls: type[ProviderServer] = ProviderServer, **kw: Any) -> ProviderServer:
        """alice's provider server for the document; start it, or enter it as a context manager."""
        return cls(self.provider.key, self.provider.login, self.provider.cert, self.authorize, **kw)

    def download(self, server: ProviderServer, sale_id: str, dest: Path, *, as_user: User | None = None,
                 provider_cert: bytes | None = None, **kw: Any) -> DownloadResult:
        """Download ``sale_id`` from ``server`` as bob (or ``as_user``) into ``dest``."""
        me = as_user or self.consumer
        return download(
            host="127.0.0.1", port=server.port, identity_key=me.key, cert_pem=me.cert, sale_id=sale_id,
            min_seq=0, provider_login=self.provider.login, provider_cert_pem=provider_cert or self.provider.cert,
            provider_public_key=self.provider.public, size=self.commitment.size, segment_size=SEG,
            merkle_root_hex=self.commitment.merkle_root, dest_dir=dest, io_timeout=10.0, **kw,
        )


def progress_hook(when: Callable[[int, int], bool], action: Callable[[], None]) -> Callable[[int, int], None]:
    """A progress callback that runs ``action`` once, the first time ``when`` holds."""
    fired = False

    def hook(done: int, total: int) -> None:
        nonlocal fired
        if not fired and when(done, total):
            fired = True
            action()

    return hook


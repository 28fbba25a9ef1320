"""The client library: everything a user does, as calls. The CLI and the desktop app sit on top.

Commands go out signed through :class:`broker.client.BrokerClient`; reads go
to the backups. After a command the client remembers the sequence it got
back and passes it with its next reads, so it always sees its own writes.
"""
from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from broker import commands as c
from broker import queries as q
from broker.client import BrokerClient
from broker.codec import b64d
from broker.envelope import seal
from broker.replies import Reply
from broker.sealing import SealError, open_sealed, release_info
from peer.errors import NotLoggedIn, PeerError, VerificationFailed
from peer.identity import Identity, Profile, create_identity, open_keystore, seal_keystore

__all__ = ["Client", "BuyResult"]

log = logging.getLogger(__name__)


@dataclass
class BuyResult:
    doc_id: str
    sale_id: str
    path: Path | None
    price: int
    fee: int
    verified: bool
    dispute: dict[str, Any] | None = None
    resumed_from: int = 0  # the first segment this call downloaded (0: from the start)
    segments: int = 0


class Client:
    """One user's (or the operator's) connection to ACB."""

    def __init__(self, broker: BrokerClient, home: Path, identity: Identity | None = None,
                 *, on_wait: Callable[[float], None] | None = None, timeout: float = 60.0) -> None:
        self.broker = broker
        self.timeout = timeout
        self.home = home
        self.identity = identity
        self.on_wait = on_wait
        self.last_seq = 0

    # -- plumbing ----------------------------------------------------------------------------------
    def _me(self) -> Identity:
        if self.identity is None:
            raise NotLoggedIn("not logged in: run `acb login LOGIN` (or `acb register LOGIN`) first")
        return self.identity

    def send(self, payload: BaseModel, *, sender: str | None = None, key: Ed25519PrivateKey | None = None,
             command_id: str | None = None, timeout: float | None = None) -> Reply:
        """Sign and send a command; return its (successful) reply or raise its rejection."""
        if sender is None:
            me = self._me()
            sender, key = me.login, me.sign_key
        env = seal(payload, sender=sender, key=key, id=command_id)
        reply = self.broker.request(env, timeout=timeout or self.timeout, on_wait=self.on_wait).unwrap()
        if reply.seq:
            self.last_seq = max(self.last_seq, reply.seq)
        return reply

    def ask(self, payload: BaseModel, *, signed: bool = True, sender: str | None = None,
            key: Ed25519PrivateKey | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Send a read query (to a backup) and return its result."""
        if signed and sender is None:
            me = self._me()
            sender, key = me.login, me.sign_key
        env = seal(payload, sender=sender or "anonymous", key=key if signed else None, kind="query",
                   min_seq=self.last_seq)
        reply = self.broker.request(env, timeout=timeout or self.timeout, on_wait=self.on_wait).unwrap()
        return reply.result

    # -- identity ----------------------------------------------------------------------------------
    def register(self, login: str, password: str) -> Identity:
        """Create keys here, register the public half, keep the keystore locally and on the ledger."""
        identity = create_identity(login)
        keystore = seal_keystore(identity, password)
        self.send(c.RegisterUser(login=login, sign_key=identity.sign_public.hex(), box_key=identity.box_public.hex(),
                                 cert_pem=identity.cert_pem.decode(), keystore=keystore),
                  sender=login, key=identity.sign_key)
        profile = Profile(self.home, login)
        profile.save_keystore(keystore)
        profile.save_session(identity)
        profile.make_current()
        self.identity = identity
        return identity

    def login(self, login: str, password: str) -> dict[str, Any]:
        """Unlock the keystore with the password (here) and prove the key to the ledger."""
        challenge = self.ask(q.LoginChallenge(login=login), signed=False)
        profile = Profile(self.home, login)
        keystore = profile.keystore() or challenge["keystore"]
        identity = open_keystore(keystore, password)
        signature = identity.sign_key.sign(challenge["challenge"].encode()).hex()
        result = self.ask(q.Login(login=login, challenge=challenge["challenge"], signature=signature), signed=False)
        profile.save_keystore(keystore)
        profile.save_session(identity)
        profile.make_current()
        self.identity = identity
        return result

    # -- reads -------------------------------------------------------------------------------------
    def balance(self, account: str | None = None) -> dict[str, Any]:
        return self.ask(q.Balance(account=account or self._me().login))

    def flows(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.ask(q.Flows(account=self._me().login, limit=limit))["flows"]

    def search(self, text: str = "", *, topic: str | None = None, max_price: int | None = None,
               limit: int = 50) -> list[dict[str, Any]]:
        return self.ask(q.Search(text=text, topic=topic, max_price=max_price, limit=limit), signed=False)["hits"]

    def document(self, doc_id: str) -> dict[str, Any]:
        return self.ask(q.DocumentInfo(doc_id=doc_id), signed=False)

    def sale(self, sale_id: str) -> dict[str, Any]:
        return self.ask(q.SaleStatus(sale_id=sale_id))

    def sales(self) -> list[dict[str, Any]]:
        return self.ask(q.Sales(account=self._me().login))["sales"]

    def ledger_info(self) -> dict[str, Any]:
        return self.ask(q.LedgerInfo(), signed=False)

    # -- providing ---------------------------------------------------------------------------------
    def share(self, path: Path, *, price: int, topic: str, title: str, endpoint: str,
              description: str = "", doc_id: str | None = None, segment_size: int | None = None) -> dict[str, Any]:
        """Commit to a file's content (size, SHA-256, Merkle root) and publish it at a price."""
        from broker.content import choose_segment_size, describe_file

        me = self._me()
        path = path.resolve()
        if not path.is_file():
            raise PeerError(f"no such file: {path}")
        commitment = describe_file(path, segment_size or choose_segment_size(path.stat().st_size))
        doc_id = doc_id or uuid.uuid4().hex[:16]
        self.send(c.PublishDocument(
            doc_id=doc_id, title=title, topic=topic, description=description, price=price, size=commitment.size,
            sha256=commitment.sha256, merkle_root=commitment.merkle_root, segment_size=commitment.segment_size,
            endpoint=endpoint))
        shares = Shares(Profile(self.home, me.login))
        shares.add(doc_id, path, commitment.size, commitment.sha256, commitment.merkle_root, commitment.segment_size)
        return {"doc_id": doc_id, "size": commitment.size, "sha256": commitment.sha256,
                "merkle_root": commitment.merkle_root, "price": price}

    def unpublish(self, doc_id: str) -> None:
        self.send(c.Unpublish(doc_id=doc_id))

    def change_price(self, doc_id: str, price: int) -> None:
        self.send(c.ChangePrice(doc_id=doc_id, price=price))

    # -- buying ------------------------------------------------------------------------------------
    def buy(self, doc_id: str, dest: Path, *, progress: Callable[[int, int], None] | None = None,
            on_step: Callable[[str], None] | None = None, io_timeout: float = 60.0,
            control: Any = None) -> BuyResult:
        """Open the sale (hold), download from the provider, settle, receive the key, decrypt and verify.

        An interrupted purchase resumes: the same sale, from the first segment not yet stored.
        ``control`` (a :class:`peer.transfer.TransferControl`) pauses, resumes, cancels or throttles it.
        """
        from peer.transfer import decrypt_file, download

        me = self._me()
        step = on_step or (lambda _m: None)
        doc = self.document(doc_id)
        if not doc["published"]:
            raise PeerError(f"document {doc_id} is no longer published")
        pending = Purchases(Profile(self.home, me.login))
        sale_id = pending.open_sale_for(doc_id)
        if sale_id is not None:
            sale = self.sale(sale_id)
            if sale["status"] != "open":
                pending.forget(doc_id)
                sale_id = None
        if sale_id is None:
            sale_id = f"s-{uuid.uuid4().hex[:20]}"
            reply = self.send(c.OpenSale(sale_id=sale_id, doc_id=doc_id, price=doc["price"]))
            pending.remember(doc_id, sale_id)
            step(f"sale {sale_id} opened: {doc['price']} held from your balance (seq {reply.seq})")
        else:
            step(f"resuming sale {sale_id}")
        host, port = doc["endpoint"].rsplit(":", 1)
        work = Profile(self.home, me.login).subdir("downloads")
        result = download(
            host=host, port=int(port), identity_key=me.sign_key, cert_pem=me.cert_pem, sale_id=sale_id,
            min_seq=self.last_seq, provider_login=doc["provider"], provider_cert_pem=doc["provider_cert_pem"].encode(),
            provider_public_key=bytes.fromhex(doc["provider_sign_key"]), size=doc["size"],
            segment_size=doc["segment_size"], merkle_root_hex=doc["merkle_root"], dest_dir=work, progress=progress,
            io_timeout=io_timeout, control=control,
        )
        resumed = f", resumed at segment {result.resumed_from}" if result.resumed_from else ""
        step(f"all {result.segment_count} encrypted segments received and checked against the signed manifest"
             f"{resumed}")
        reply = self.send(c.SettleSale(sale_id=sale_id))
        step(f"sale settled at seq {reply.seq}: paid {reply.result['price']} "
             f"(provider {reply.result['provider_amount']}, commission {reply.result['fee']})")
        try:
            key = open_sealed(me.box_key, b64d(reply.result["consumer_sealed_key"]), release_info(sale_id))
        except (SealError, ValueError) as exc:
            raise VerificationFailed(f"released key does not open: {exc}") from exc
        pending.forget(doc_id)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            decrypt_file(result, key, dest, sha256_hex=doc["sha256"], merkle_root_hex=doc["merkle_root"])
        except Exception as exc:  # decrypt_file raises content/transfer errors carrying the bad segment
            index = getattr(exc, "index", None)
            step(f"content check failed ({exc}); filing a dispute with the evidence")
            dispute = self.dispute(sale_id, result, index if index is not None else 0)
            return BuyResult(doc_id, sale_id, None, reply.result["price"], reply.result["fee"], False, dispute,
                             result.resumed_from, result.segment_count)
        step(f"decrypted and verified against the published SHA-256 and Merkle root: {dest}")
        result.discard()
        return BuyResult(doc_id, sale_id, dest, reply.result["price"], reply.result["fee"], True, None,
                         result.resumed_from, result.segment_count)

    def dispute(self, sale_id: str, result: Any, index: int) -> dict[str, Any]:
        """File the evidence for one bad segment; the ledger judges it with the escrowed key."""
        from broker.codec import b64e

        header, entry, ciphertext = result.evidence_for(index)
        reply = self.send(c.FileDispute(sale_id=sale_id, index=index, header=header.to_wire(),
                                        entry=entry.to_wire(), ciphertext=b64e(ciphertext)))
        return reply.result

    def cancel(self, sale_id: str, reason: str = "cancelled") -> dict[str, Any]:
        return self.send(c.VoidSale(sale_id=sale_id, reason=reason)).result


class _JsonFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


class Shares(_JsonFile):
    """What this provider shares: doc id -> file and its commitment."""

    def __init__(self, profile: Profile) -> None:
        super().__init__(profile.dir / "shares.json")

    def add(self, doc_id: str, path: Path, size: int, sha256: str, merkle_root: str, segment_size: int) -> None:
        data = self.load()
        data[doc_id] = {"path": str(path), "size": size, "sha256": sha256, "merkle_root": merkle_root,
                        "segment_size": segment_size}
        self.save(data)


class Purchases(_JsonFile):
    """Sales this consumer opened and has not finished: doc id -> sale id (for resuming)."""

    def __init__(self, profile: Profile) -> None:
        super().__init__(profile.dir / "purchases.json")

    def open_sale_for(self, doc_id: str) -> str | None:
        return self.load().get(doc_id)

    def remember(self, doc_id: str, sale_id: str) -> None:
        data = self.load()
        data[doc_id] = sale_id
        self.save(data)

    def forget(self, doc_id: str) -> None:
        data = self.load()
        data.pop(doc_id, None)
        self.save(data)

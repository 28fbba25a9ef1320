"""The client library: everything a user does, as calls. The CLI and the desktop app sit on top.

Commands go out signed through :class:`broker.client.BrokerClient`; reads go
to the backups. After a command the client remembers the sequence it got
back and passes it with its next reads, so it always sees its own writes.

Every command and query carries its deadline (now plus the client's timeout), signed: the ledger
answers ``expired`` to, and never applies, what reached it too late for anyone to be listening.
A caller that stopped waiting (``ReplyTimeout``) asks :meth:`Client.command_status` what became
of the command; :attr:`Client.unanswered` keeps the id and deadline of the last one.

A purchase is opened at the price the person agreed to (:class:`Offer`), never at
one read again just before: when the provider changed it meanwhile, the ledger
refuses with ``price_changed`` and nothing is held; the caller shows the new
price (:meth:`Client.changed_offer`) and asks again.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from broker import commands as c
from broker import errors
from broker import queries as q
from broker.answers import Answer, CommandStatusAnswer, parse_answer
from broker.client import BrokerClient
from broker.codec import b64d, b64e
from broker.content import (
    choose_interval_segments,
    choose_segment_size,
    describe_file,
    interval_count,
    segment_count_for,
)
from broker.envelope import now_ms, seal
from broker.money import format_minor, interval_prices, parse_minor
from broker.replies import Reply
from broker.sealing import SealError, open_sealed, release_info
from broker.trust import tagged
from peer.errors import NotLoggedIn, PeerError, VerificationFailed
from peer.identity import Identity, Profile, create_identity, needs_rewrap, open_keystore, seal_keystore
from peer.transfer import ContentMismatch, check_interval, decrypt_file, download

__all__ = ["Client", "BuyResult", "Offer"]

log = logging.getLogger(__name__)
_CHALLENGE = re.compile(r"[a-z][a-z0-9_.-]{1,31}\.[0-9]{1,16}\.[0-9a-f]{32}\.[0-9a-f]{32}")


@dataclass(frozen=True)
class Offer:
    """A document at the price a person is shown, and may agree to.

    A split sale (a large file paid interval by interval) is shown with each
    interval's part too (:attr:`interval_prices`); both go in the ``OpenSale``.
    """

    doc_id: str
    title: str
    provider: str
    price: int
    size: int
    intervals: int = 1  # 1: paid whole

    @property
    def interval_prices(self) -> list[int] | None:
        """Each interval's part of the price, larger parts first (None when paid whole)."""
        return interval_prices(self.price, self.intervals) if self.intervals > 1 else None

    def at(self, price: int) -> Offer:
        """The same document at another price (the intervals split it the same way)."""
        return dataclasses.replace(self, price=price)

    def describe(self) -> str:
        """``2.00``, or ``3.00 in 3 intervals (1.00, 1.00, 1.00), each paid once it has arrived``."""
        parts = self.interval_prices
        if parts is None:
            return format_minor(self.price)
        shown = ", ".join(format_minor(p) for p in parts[:6]) + (", …" if len(parts) > 6 else "")
        return f"{format_minor(self.price)} in {len(parts)} intervals ({shown}), each paid once it has arrived"

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Offer:
        """The offer a :meth:`Client.document` answer makes."""
        n = interval_count(segment_count_for(doc["size"], doc["segment_size"]), doc.get("interval_segments", 0))
        return cls(doc["doc_id"], doc["title"], doc["provider"], int(doc["price"]), int(doc["size"]), n)


# The ledger's words for a changed price (broker.errors.PriceChanged): "now 3.00, you agreed to 2.00".
_NOW = re.compile(r"\bnow (-?[0-9]+\.[0-9]{2}), you agreed to -?[0-9]+\.[0-9]{2}\b")


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
        self.unanswered: tuple[str, int | None] | None = None  # (id, deadline ms) of the last command not answered

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
        patience = timeout or self.timeout
        env = seal(payload, sender=sender, key=key, id=command_id, deadline=now_ms() + int(patience * 1000))
        try:
            reply = self.broker.request(env, timeout=patience, on_wait=self.on_wait).unwrap()
        except errors.ReplyTimeout:
            self.unanswered = (env.id, env.deadline)
            raise
        if reply.seq:
            self.last_seq = max(self.last_seq, reply.seq)
        return reply

    def ask(self, payload: BaseModel, *, signed: bool = True, sender: str | None = None,
            key: Ed25519PrivateKey | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Send a read query (to a backup) and return its result, checked against the query's answer model."""
        return self.query(payload, signed=signed, sender=sender, key=key, timeout=timeout).to_result()

    def query(self, payload: BaseModel, *, signed: bool = True, sender: str | None = None,
              key: Ed25519PrivateKey | None = None, timeout: float | None = None) -> Answer:
        """Send a read query and return its typed answer (see :mod:`broker.answers`)."""
        if signed and sender is None:
            me = self._me()
            sender, key = me.login, me.sign_key
        patience = timeout or self.timeout
        env = seal(payload, sender=sender or "anonymous", key=key if signed else None, kind="query",
                   min_seq=self.last_seq, deadline=now_ms() + int(patience * 1000))
        reply = self.broker.request(env, timeout=patience, on_wait=self.on_wait).unwrap()
        return parse_answer(str(getattr(payload, "type", "")), reply.result)

    def command_status(self, command_id: str | None = None, deadline_ms: int | None = None) -> CommandStatusAnswer:
        """What became of a command whose answer this client did not get (by default the last such one):
        ``applied`` (with its seq and answer), ``expired`` (never applied, never will be) or ``unknown``.

        Asked of a backup, from its log; pass the command's deadline (the default does) so it can say expired.
        """
        if command_id is None:
            if self.unanswered is None:
                raise PeerError("no command of this session went unanswered; name the command id")
            command_id, deadline_ms = self.unanswered
        answer = self.query(q.CommandStatus(command_id=command_id, deadline_ms=deadline_ms))
        assert isinstance(answer, CommandStatusAnswer)
        return answer

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
        """Unlock the keystore with the password (here) and prove the key to the ledger.

        The keystore on this machine is used when there is one; only otherwise is it
        fetched from the ledger (which limits such fetches per login). A keystore of an
        older version, or wrapped with weaker settings, is wrapped anew with today's and
        stored on the ledger (``ChangeKeystore``) and here.
        """
        profile = Profile(self.home, login)
        local = profile.keystore()
        challenge = self.ask(q.LoginChallenge(login=login, want_keystore=local is None), signed=False)
        keystore = local or challenge.get("keystore")
        if not keystore:
            raise PeerError(f"the ledger sent no keystore for {login}; try again")
        identity = open_keystore(keystore, password)
        if identity.login != login:
            raise PeerError(f"the keystore for {login} holds the keys of {identity.login}")
        text = challenge["challenge"]
        if not isinstance(text, str) or not _CHALLENGE.fullmatch(text) or not text.startswith(f"{login}."):
            # Whatever the ledger asks to be signed must be a login challenge and nothing else.
            raise PeerError("the ledger's login challenge is not one; not signing it")
        signature = identity.sign_key.sign(tagged("login", text.encode())).hex()
        result = self.ask(q.Login(login=login, challenge=text, signature=signature), signed=False)
        self.identity = identity
        if needs_rewrap(keystore):
            keystore = self._rewrap(identity, password, keystore)
        profile.save_keystore(keystore)
        profile.save_session(identity)
        profile.make_current()
        return result

    def _rewrap(self, identity: Identity, password: str, old: str) -> str:
        """Wrap the keys with today's KDF and store that on the ledger; the old keystore if the ledger refuses."""
        new = seal_keystore(identity, password)
        try:
            self.send(c.ChangeKeystore(keystore=new))
        except errors.CommandRejected as exc:
            # Logging in matters more than the upgrade, which the next login tries again.
            log.warning("the keystore of %s stays as it was on the ledger: %s", identity.login, exc)
            return old
        return new

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

    def offer(self, doc_id: str) -> Offer:
        """The document at its current price, to show a person before they agree to it."""
        doc = self.document(doc_id)
        if not doc["published"]:
            raise PeerError(f"document {doc_id} is no longer published")
        return Offer.from_document(doc)

    def changed_offer(self, agreed: Offer, refusal: errors.CommandRejected) -> Offer:
        """The offer at the price the ledger named when it refused ``agreed`` with ``price_changed``.

        The refusal says ``now 3.00, you agreed to 2.00``; its price is the ledger's own,
        where a read could come from a backup that has not seen the change yet. A
        refusal that names no price falls back to reading the document.
        """
        found = _NOW.search(refusal.message)
        if found is not None:
            return agreed.at(parse_minor(found.group(1)))
        return self.offer(agreed.doc_id)

    def sale(self, sale_id: str) -> dict[str, Any]:
        return self.ask(q.SaleStatus(sale_id=sale_id))

    def sales(self) -> list[dict[str, Any]]:
        return self.ask(q.Sales(account=self._me().login))["sales"]

    def ledger_info(self) -> dict[str, Any]:
        return self.ask(q.LedgerInfo(), signed=False)

    # -- providing ---------------------------------------------------------------------------------
    def share(self, path: Path, *, price: int, topic: str, title: str, endpoint: str,
              description: str = "", doc_id: str | None = None, segment_size: int | None = None,
              interval_bytes: int | None = None) -> dict[str, Any]:
        """Commit to a file's content (size, SHA-256, Merkle root) and publish it at a price."""
        me = self._me()
        path = path.resolve()
        if not path.is_file():
            raise PeerError(f"no such file: {path}")
        commitment = describe_file(path, segment_size or choose_segment_size(path.stat().st_size))
        doc_id = doc_id or uuid.uuid4().hex[:16]
        every = choose_interval_segments(commitment.size, commitment.segment_size, interval_bytes)
        self.send(c.PublishDocument(
            doc_id=doc_id, title=title, topic=topic, description=description, price=price, size=commitment.size,
            sha256=commitment.sha256, merkle_root=commitment.merkle_root, segment_size=commitment.segment_size,
            endpoint=endpoint, interval_segments=every))
        shares = Shares(Profile(self.home, me.login))
        shares.add(doc_id, path, commitment.size, commitment.sha256, commitment.merkle_root, commitment.segment_size)
        return {"doc_id": doc_id, "size": commitment.size, "sha256": commitment.sha256,
                "merkle_root": commitment.merkle_root, "price": price, "segment_size": commitment.segment_size,
                "interval_segments": every}

    def unpublish(self, doc_id: str) -> None:
        self.send(c.Unpublish(doc_id=doc_id))

    def change_price(self, doc_id: str, price: int) -> None:
        self.send(c.ChangePrice(doc_id=doc_id, price=price))

    # -- buying ------------------------------------------------------------------------------------
    def buy(self, doc_id: str, dest: Path, *, agreed_price: int | None = None,
            agreed_interval_prices: list[int] | None = None,
            progress: Callable[[int, int], None] | None = None,
            on_step: Callable[[str], None] | None = None, io_timeout: float = 60.0,
            control: Any = None, again: bool = False) -> BuyResult:
        """Open the sale (hold), download from the provider, settle, receive the key, decrypt and verify.

        ``agreed_price`` is the price the person was shown and agreed to (for a split
        sale, ``agreed_interval_prices`` too; by default the split of ``agreed_price``).
        The sale is opened at exactly that; if the price is no longer that, the ledger
        refuses with :class:`broker.errors.PriceChanged` and nothing is held: show the new
        price (:meth:`changed_offer`) and ask again. Without ``agreed_price`` (callers that
        show nothing first) the price read at the start of this call is the one agreed
        to, and is reported through ``on_step`` before anything is held.

        An interrupted purchase resumes: the same sale, from the first segment not yet stored.
        A split sale (a large file) is downloaded and paid interval by interval; each
        interval is checked as soon as its key arrives, so a cheat costs at most one interval
        before the dispute refunds it. ``control`` (a :class:`peer.transfer.TransferControl`)
        pauses, resumes, cancels or throttles the download.
        """
        me = self._me()
        step = on_step or (lambda _m: None)
        doc = self.document(doc_id)
        if not doc["published"]:
            raise PeerError(f"document {doc_id} is no longer published")
        pending = Purchases(Profile(self.home, me.login))
        sale_id = pending.open_sale_for(doc_id)
        sale: dict[str, Any] | None = None
        if sale_id is not None:
            sale = self.sale(sale_id)
            if sale["status"] != "open":
                pending.forget(doc_id)
                sale_id, sale = None, None
        if sale_id is None and not again:
            bought = [s for s in self.sales() if s["doc_id"] == doc_id and s["consumer"] == me.login
                      and s["status"] == "settled"]
            if bought:
                raise PeerError(f"you bought {doc_id} already (sale {bought[-1]['sale_id']}); "
                                "buy it again only on purpose (--again)")
        if sale_id is None:
            offer = Offer.from_document(doc)
            if agreed_price is not None:
                offer = offer.at(agreed_price)
            parts = agreed_interval_prices if agreed_interval_prices is not None else offer.interval_prices
            step(f"price {offer.describe()}")
            sale_id = f"s-{uuid.uuid4().hex[:20]}"
            reply = self.send(c.OpenSale(sale_id=sale_id, doc_id=doc_id, price=offer.price, interval_prices=parts))
            pending.remember(doc_id, sale_id)
            step(f"sale {sale_id} opened: {format_minor(reply.result.get('price', offer.price))} held from your "
                 f"balance (seq {reply.seq})")
            sale = self.sale(sale_id)
        else:
            step(f"resuming sale {sale_id}")
        assert sale is not None
        fetch = self._fetcher(doc, sale_id, progress, io_timeout, control)
        if sale.get("intervals", 1) > 1:
            return self._buy_split(doc, sale, dest, fetch, step, pending)
        result = fetch(None)
        resumed = f", resumed at segment {result.resumed_from}" if result.resumed_from else ""
        step(f"all {result.segment_count} encrypted segments received and checked against the signed manifest"
             f"{resumed}")
        reply = self.send(c.SettleSale(sale_id=sale_id))
        step(f"sale settled at seq {reply.seq}: paid {reply.result['price']} "
             f"(provider {reply.result['provider_amount']}, commission {reply.result['fee']})")
        key = self._unseal(reply.result["consumer_sealed_key"], release_info(sale_id))
        pending.forget(doc_id)
        return self._finish(doc, sale_id, result, dest, step, reply.result["price"], reply.result["fee"], key=key)

    def _fetcher(self, doc: dict[str, Any], sale_id: str, progress: Any, io_timeout: float,
                 control: Any) -> Callable[[int | None], Any]:
        me = self._me()
        host, port = doc["endpoint"].rsplit(":", 1)
        work = Profile(self.home, me.login).subdir("downloads")

        def fetch(until: int | None) -> Any:
            return download(
                host=host, port=int(port), identity_key=me.sign_key, cert_pem=me.cert_pem, sale_id=sale_id,
                min_seq=self.last_seq, provider_login=doc["provider"],
                provider_cert_pem=doc["provider_cert_pem"].encode(),
                provider_public_key=bytes.fromhex(doc["provider_sign_key"]), size=doc["size"],
                segment_size=doc["segment_size"], merkle_root_hex=doc["merkle_root"], dest_dir=work,
                progress=progress, io_timeout=io_timeout, control=control, until=until,
            )

        return fetch

    def _unseal(self, sealed_b64: str, info: bytes) -> bytes:
        try:
            return open_sealed(self._me().box_key, b64d(sealed_b64), info)
        except (SealError, ValueError) as exc:
            raise VerificationFailed(f"released key does not open: {exc}") from exc

    def _buy_split(self, doc: dict[str, Any], sale: dict[str, Any], dest: Path, fetch: Callable[[int | None], Any],
                   step: Callable[[str], None], pending: Purchases) -> BuyResult:
        sale_id, n, every = sale["sale_id"], sale["intervals"], sale["interval_segments"]
        keys = {j: self._unseal(blob, release_info(sale_id, j)) for j, blob in enumerate(sale["interval_sealed_keys"])}
        paid, fees = sale["paid"], sale["fee_paid"]
        result = None
        for j in range(sale["settled_intervals"], n):
            result = fetch((j + 1) * every)
            reply = self.send(c.SettleInterval(sale_id=sale_id, interval=j))
            keys[j] = self._unseal(reply.result["consumer_sealed_key"], release_info(sale_id, j))
            paid, fees = paid + reply.result["price"], fees + reply.result["fee"]
            try:
                checked = check_interval(result, keys[j], j, every, merkle_root_hex=doc["merkle_root"])
            except ContentMismatch as exc:
                step(f"interval {j + 1}/{n} is not the published content ({exc}); disputing it")
                pending.forget(doc["doc_id"])
                dispute = self.dispute(sale_id, result, exc.index if exc.index is not None else j * every)
                return BuyResult(doc["doc_id"], sale_id, None, paid, fees, False, dispute, result.resumed_from,
                                 result.segment_count)
            step(f"interval {j + 1}/{n}: {checked} segments received, paid {reply.result['price']}, "
                 f"key released, content verified")
        if result is None:
            result = fetch(None)
        pending.forget(doc["doc_id"])
        return self._finish(doc, sale_id, result, dest, step, paid, fees, interval_keys=keys, every=every)

    def _finish(self, doc: dict[str, Any], sale_id: str, result: Any, dest: Path, step: Callable[[str], None],
                price: int, fee: int, *, key: bytes | None = None, interval_keys: dict[int, bytes] | None = None,
                every: int = 0) -> BuyResult:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            decrypt_file(result, key, dest, sha256_hex=doc["sha256"], merkle_root_hex=doc["merkle_root"],
                         interval_segments=every, interval_keys=interval_keys)
        except ContentMismatch as exc:
            if exc.index is None:
                # No single segment to show for it (the whole-file hash disagrees): nothing a judge can weigh.
                raise VerificationFailed(f"{doc['doc_id']} did not verify: {exc}") from exc
            step(f"content check failed ({exc}); filing a dispute with the evidence")
            dispute = self.dispute(sale_id, result, exc.index)
            return BuyResult(doc["doc_id"], sale_id, None, price, fee, False, dispute, result.resumed_from,
                             result.segment_count)
        step(f"decrypted and verified against the published SHA-256 and Merkle root: {dest}")
        result.discard()
        return BuyResult(doc["doc_id"], sale_id, dest, price, fee, True, None, result.resumed_from,
                         result.segment_count)

    def dispute(self, sale_id: str, result: Any, index: int) -> dict[str, Any]:
        """File the evidence for one bad segment; the ledger judges it with the escrowed key."""
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

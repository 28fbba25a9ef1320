"""The provider's side of a sale: decide whom to serve, escrow the sale key, stream the file.

For each connecting consumer the provider asks the ledger about the sale
(waiting briefly, for that connection only, if the consumer says the ledger has
just written it), believes only a verified answer about its own open sale of a
document it shares, lets the transfer layer authenticate the buyer named in
that answer over mutual TLS, and only then makes (or reloads, on resume) the
sale's fresh key K, escrows K sealed to the ledger with its commitment, and
sends ciphertext of that document's file. Nothing a stranger's connection says
outlives the connection.

While it runs it answers on ``<profile dir>/serve.sock`` (see
:mod:`peer.transfers`): the uploads it serves, pause, resume and cancel, the
global and per-upload rate limits and priorities. A timer shares the global
limit between the moving uploads by priority (:class:`BandwidthScheduler`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from broker import commands as c
from broker import content, errors
from broker import queries as q
from broker.codec import b64e
from broker.envelope import seal
from broker.errors import BrokerError
from broker.replies import Reply
from broker.sealing import escrow_info, seal_to
from peer.client import Client, Shares
from peer.identity import Identity, Profile
from peer.transfer import AuthenticationFailed, ProviderServer, SaleGrant, TransferRefused, UploadStatus
from peer.transfer.control import BandwidthScheduler, TransferControl
from peer.transfer.tls import certificate_login, certificate_public_key
from peer.transfers import ControlError, ControlServer, socket_path

__all__ = ["MAX_AHEAD", "ProviderService", "SaleFacts", "UploadManager", "check_sale"]

log = logging.getLogger(__name__)

_TICK = 0.5  # seconds between re-shares of the global limit and rate samples
_RATE_WINDOW = 2.0  # seconds of samples behind an upload's current rate
_LIVE = ("sending", "paused")
# How far past the ledger's head a buyer's claimed position may be and still be waited for (replicas lag the
# primary by a few entries; a client claiming more is wrong or lying, and is refused at once).
MAX_AHEAD = 1_000
_SALE_WAIT = 3.0  # longest wait, per connection, for a sale the buyer says was just written
_POLL = 0.2  # between two looks at the ledger during that wait
_QUERY_TIMEOUT = 5.0  # one question to the ledger; the client lock is held meanwhile
_IDENT = re.compile(r"[A-Za-z0-9_.:-]{1,80}")  # the ledger's ids (broker.commands.Ident)


class UploadManager:
    """The uploads of one :class:`ProviderServer` as a person steers them.

    Keeps per-sale settings in a :class:`BandwidthScheduler`, re-shares the
    global limit every half second (uploads start and end on their own), samples
    each upload's current rate, and answers the control channel's requests
    (:meth:`handle`). ``docs`` maps a sale id to its (doc id, segment count) as
    far as known.
    """

    def __init__(self, server: ProviderServer, *, endpoint: str = "", login: str = "",
                 docs: dict[str, tuple[str, int]] | None = None) -> None:
        self.server = server
        self.scheduler = BandwidthScheduler(server.rate.rate_limit_bps)
        self.endpoint = endpoint
        self.login = login
        self.docs = docs if docs is not None else {}
        self._samples: dict[str, list[tuple[float, int]]] = {}
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        """Start the timer that re-shares the global limit."""
        self._stopping.clear()
        self._ticker = threading.Thread(target=self._tick_loop, name="acb-upload-scheduler", daemon=True)
        self._ticker.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.join(2.0)
            self._ticker = None

    # -- steering -----------------------------------------------------------------------------------
    def set_limit(self, limit_bps: int | None, sale_id: str | None = None) -> None:
        """The global upload limit (no ``sale_id``) or one upload's; None or 0 lifts it."""
        if sale_id is None:
            self.scheduler.set_budget(limit_bps)
            # The shared bucket stays a hard cap on the sum; the scheduler splits it by priority.
            self.server.rate.set_rate_limit(limit_bps or None)
        else:
            self._control_of(sale_id)
            self.scheduler.set_limit(sale_id, limit_bps)
        self.rebalance()

    def set_priority(self, sale_id: str, priority: int) -> None:
        """Weight of an upload when the global limit is shared (2 gets twice what 1 gets)."""
        self._control_of(sale_id)
        try:
            self.scheduler.set_priority(sale_id, priority)
        except ValueError as exc:
            raise ControlError(str(exc)) from exc
        self.rebalance()

    def pause(self, sale_id: str) -> None:
        """Stop sending (within one chunk when limited, else at the next segment); the connection stays."""
        self._control_of(sale_id, live=True).pause()
        self.rebalance()

    def resume(self, sale_id: str) -> None:
        self._control_of(sale_id, live=True).resume()
        self.rebalance()

    def cancel(self, sale_id: str) -> None:
        """Cut the upload; the consumer keeps what it stored and may resume the sale later."""
        self._control_of(sale_id, live=True).cancel()
        self.rebalance()

    def rebalance(self) -> None:
        """Give every live upload its rate now (the timer also does it every half second)."""
        live = [(u.sale_id, ctl) for u in self._latest() if u.state in _LIVE
                if (ctl := self.server.control(u.sale_id)) is not None]
        self.scheduler.rebalance(live)

    # -- observing ----------------------------------------------------------------------------------
    def uploads(self) -> list[dict[str, Any]]:
        """One row per sale served since start (its latest connection), oldest first."""
        rows = []
        now = time.monotonic()
        for u in self._latest():
            doc, total = self.docs.get(u.sale_id, (None, None))
            limit = self.scheduler.limit(u.sale_id)
            ctl = self.server.control(u.sale_id)
            allotted = ctl.rate_limit_bps if ctl is not None and u.state in _LIVE else None
            rows.append({
                "sale": u.sale_id, "consumer": u.consumer, "doc": doc, "peer": u.peer, "state": u.state,
                "bytes_sent": u.bytes_sent, "segments_sent": u.segments_sent, "start_segment": u.start_index,
                "segments_total": total, "rate_mbps": round(self._current_rate(u, now) / 1e6, 3),
                "avg_mbps": round(u.rate / 1e6, 3), "priority": self.scheduler.priority(u.sale_id),
                "limit_mbps": None if limit is None else limit / 1e6,
                "allotted_mbps": None if allotted is None else round(allotted / 1e6, 3), "error": u.error,
            })
        return rows

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one request of the control channel (see :mod:`peer.transfers`)."""
        op = request.get("op")
        sale = request.get("sale")
        if sale is not None and not isinstance(sale, str):
            raise ControlError("sale must be a sale id")
        if op == "list":
            budget = self.scheduler.budget_bps
            return {"uploads": self.uploads(), "login": self.login, "endpoint": self.endpoint,
                    "limit_mbps": None if budget is None else budget / 1e6}
        if op in ("pause", "resume", "cancel"):
            if sale is None:
                raise ControlError(f"{op} needs a sale id")
            getattr(self, op)(sale)
            return {"sale": sale}
        if op == "limit":
            bps = request.get("bps")
            if bps is not None and (not isinstance(bps, int) or isinstance(bps, bool) or bps < 0):
                raise ControlError("a limit is a whole number of bytes per second, 0 or more")
            self.set_limit(bps or None, sale)
            return {"sale": sale, "bps": bps or None}
        if op == "priority":
            prio = request.get("priority")
            if sale is None or not isinstance(prio, int) or isinstance(prio, bool):
                raise ControlError("priority needs a sale id and a whole number")
            self.set_priority(sale, prio)
            return {"sale": sale, "priority": prio}
        raise ControlError(f"unknown request {op!r}")

    # -- helpers ------------------------------------------------------------------------------------
    def _latest(self) -> list[UploadStatus]:
        latest: dict[str, UploadStatus] = {}
        for u in self.server.uploads():
            if u.sale_id:
                latest.pop(u.sale_id, None)
                latest[u.sale_id] = u
        return list(latest.values())

    def _control_of(self, sale_id: str, *, live: bool = False) -> TransferControl:
        status = next((u for u in self._latest() if u.sale_id == sale_id), None)
        ctl = self.server.control(sale_id)
        if status is None or ctl is None:
            raise ControlError(f"no upload of sale {sale_id}")
        if live and status.state not in (*_LIVE, "handshake"):
            raise ControlError(f"the upload of sale {sale_id} is {status.state}")
        return ctl

    def _current_rate(self, u: UploadStatus, now: float) -> float:
        if u.state != "sending":
            return 0.0
        samples = self._samples.get(u.sale_id, [])
        if not samples or now - samples[0][0] < 0.2 or u.bytes_sent < samples[0][1]:
            return u.rate
        return (u.bytes_sent - samples[0][1]) / (now - samples[0][0])

    def _tick_loop(self) -> None:
        while not self._stopping.wait(_TICK):
            try:
                self.rebalance()
                self._sample()
            except Exception:  # the timer must outlive one bad pass
                log.exception("re-sharing the upload limit failed")

    def _sample(self) -> None:
        now = time.monotonic()
        samples: dict[str, list[tuple[float, int]]] = {}
        for u in self._latest():
            if u.state in _LIVE:
                kept = [(t, b) for t, b in self._samples.get(u.sale_id, [])
                        if now - t <= _RATE_WINDOW and b <= u.bytes_sent]
                samples[u.sale_id] = [*kept, (now, u.bytes_sent)]
        self._samples = samples


@dataclass(frozen=True)
class SaleFacts:
    """What the provider takes from the ledger's (verified) answer about one sale, checked by :func:`check_sale`."""

    sale_id: str
    doc_id: str
    consumer: str
    consumer_cert_pem: bytes
    consumer_public_key: bytes
    key_commitment: str | None
    intervals: int
    interval_segments: int
    settled_intervals: int


def _field(answer: Mapping[str, Any], name: str, kind: type) -> Any:
    value = answer.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TransferRefused(f"the ledger's answer about the sale has no valid {name}")
    return value


def check_sale(answer: Mapping[str, Any], *, sale_id: str, provider: str) -> SaleFacts:
    """The facts of a sale this provider may serve, from the ledger's answer; else :class:`TransferRefused`.

    The answer must be about ``sale_id``, a sale of ``provider``, still open, of
    a document named by a well-formed id, and its buyer's registered certificate
    must be made out to the buyer's login over the buyer's registered key (the
    key the TLS handshake is then pinned to). Whether this machine serves that
    document is the caller's check.
    """
    if _field(answer, "sale_id", str) != sale_id:
        raise TransferRefused(f"the ledger's answer is about another sale than {sale_id}")
    if _field(answer, "provider", str) != provider:
        raise TransferRefused(f"sale {sale_id} is not a sale of {provider}")
    status = _field(answer, "status", str)
    if status != "open":
        raise TransferRefused(f"sale {sale_id} is {status}")
    doc_id = _field(answer, "doc_id", str)
    if not _IDENT.fullmatch(doc_id) or not doc_id.strip("."):
        raise TransferRefused(f"sale {sale_id} names no valid document")
    consumer = _field(answer, "consumer", str)
    cert_pem = _field(answer, "consumer_cert_pem", str).encode()
    try:
        public_key = bytes.fromhex(_field(answer, "consumer_sign_key", str))
        cert_key, cert_login = certificate_public_key(cert_pem), certificate_login(cert_pem)
    except (ValueError, AuthenticationFailed) as exc:
        raise TransferRefused(f"the buyer of sale {sale_id} has no usable certificate on the ledger") from exc
    if cert_key != public_key or cert_login != consumer:
        raise TransferRefused(f"the certificate registered for {consumer} is not made out to {consumer}'s key")
    commitment = answer.get("key_commitment")
    if commitment is not None and not isinstance(commitment, str):
        raise TransferRefused("the ledger's answer about the sale has no valid key_commitment")
    intervals = _field(answer, "intervals", int) if "intervals" in answer else 1
    every = _field(answer, "interval_segments", int) if "interval_segments" in answer else 0
    settled = _field(answer, "settled_intervals", int) if "settled_intervals" in answer else 0
    if intervals < 1 or every < 0 or not 0 <= settled <= intervals:
        raise TransferRefused(f"the ledger's answer about sale {sale_id} does not add up")
    return SaleFacts(sale_id, doc_id, consumer, cert_pem, public_key, commitment, intervals, every, settled)


class ProviderService:
    """Serves this user's shared files to consumers with open sales, steerable from `acb transfers`.

    A consumer's hello is a stranger's word: its ``min_seq`` only bounds the
    ledger question asked for that one connection (never the shared client's
    position), and a sale is served only as the ledger's verified answer
    describes it (:func:`check_sale`), from the file this machine shares under
    that answer's document id. The sale key is made and escrowed only once the
    buyer has proved who it is over mutual TLS (:meth:`escrow`).
    """

    def __init__(self, client: Client, identity: Identity, *, host: str = "127.0.0.1", port: int = 0,
                 rate_limit_bps: int | None = None, control_socket: bool = True) -> None:
        self.client = client
        self.identity = identity
        self.profile = Profile(client.home, identity.login)
        self._lock = threading.Lock()  # the ledger client is not thread-safe; consumers arrive in parallel
        self._stopping = threading.Event()
        self._head = 0  # the highest ledger sequence seen in a verified answer
        self._ledger_box_key: bytes | None = None
        self._commitments: dict[str, tuple[tuple[int, int], content.FileCommitment]] = {}
        self._docs: dict[str, tuple[str, int]] = {}  # sale id -> (doc id, segment count), for the uploads view
        self.server = ProviderServer(identity.sign_key, identity.login, identity.cert_pem, self.authorize,
                                     host=host, port=port, rate_limit_bps=rate_limit_bps, authenticated=self.escrow)
        self.uploads = UploadManager(self.server, login=identity.login, docs=self._docs)
        self._host = host
        self._control_socket = control_socket
        self._control: ControlServer | None = None

    def start(self) -> int:
        """Listen for consumers, open the control socket and start sharing the limit; returns the port."""
        self._stopping.clear()
        self.server.start()
        self.uploads.endpoint = f"{self._host}:{self.server.port}"
        if self._control_socket:
            control = ControlServer(socket_path(self.profile), self.uploads.handle)
            try:
                control.start()
                self._control = control
            except ControlError as exc:
                # Serving matters more than being steerable: go on without the channel.
                log.warning("uploads cannot be steered from `acb transfers`: %s", exc)
        self.uploads.start()
        return self.server.port

    def stop(self) -> None:
        """Remove the control socket, stop the scheduler and every upload."""
        self._stopping.set()
        if self._control is not None:
            self._control.stop()
            self._control = None
        self.uploads.stop()
        self.server.stop()

    # -- what the ledger says ------------------------------------------------------------------------
    def _ask(self, payload: BaseModel, min_seq: int = 0, *, signed: bool = True) -> Reply:
        """One query, as :meth:`Client.ask` sends it, but at ``min_seq`` for this question only."""
        me = self.identity
        with self._lock:
            # The client's own position (its own writes) always holds; a caller's bound only adds to it.
            env = seal(payload, sender=me.login if signed else "anonymous", key=me.sign_key if signed else None,
                       kind="query", min_seq=max(self.client.last_seq, min_seq))
            reply = self.client.broker.request(env, timeout=_QUERY_TIMEOUT).unwrap()
        if reply.seq:
            self._head = max(self._head, reply.seq)
        return reply

    def _refresh_head(self) -> int:
        """The ledger's sequence now, as a verified answer gives it (and its box key, which never changes)."""
        try:
            info = self._ask(q.LedgerInfo(), signed=False).result
        except BrokerError as exc:
            raise TransferRefused(f"the ledger could not be asked about the sale: {exc}") from exc
        seq = info.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            self._head = max(self._head, seq)
        if self._ledger_box_key is None and isinstance(info.get("ledger_box_key"), str):
            self._ledger_box_key = bytes.fromhex(info["ledger_box_key"])
        return self._head

    def _find_sale(self, sale_id: str, min_seq: int) -> dict[str, Any]:
        """The ledger's answer about ``sale_id``, waiting (briefly, on this connection only) for a ``min_seq``
        the buyer claims to have seen, if it is plausibly just ahead of the ledger."""
        head = max(self._head, self.client.last_seq)
        if min_seq > head:
            head = self._refresh_head()
        if min_seq > head + MAX_AHEAD:
            raise TransferRefused(f"sale {sale_id} is not on the ledger, and your client claims to be far "
                                  f"ahead of it (entry {min_seq}, the ledger is at {head})")
        deadline = time.monotonic() + _SALE_WAIT
        while True:
            try:
                # Never more than a sequence some replica has reached: this question cannot be parked for long.
                return dict(self._ask(q.SaleStatus(sale_id=sale_id), min(min_seq, head)).result)
            except errors.UnknownSale as exc:
                if min_seq <= head:
                    raise TransferRefused(f"there is no sale {sale_id} on the ledger") from exc
            except errors.NotYourSale as exc:
                raise TransferRefused(f"sale {sale_id} is not a sale of {self.identity.login}") from exc
            except BrokerError as exc:
                raise TransferRefused(f"the ledger did not confirm sale {sale_id}: {exc}") from exc
            # The buyer says the sale is in an entry the ledger has not shown us yet: look again shortly,
            # without holding the client, so other buyers are checked meanwhile.
            if time.monotonic() >= deadline or self._stopping.wait(_POLL):
                raise TransferRefused(f"sale {sale_id} is not on the ledger yet; try again in a moment")
            head = self._refresh_head()

    # -- serving -------------------------------------------------------------------------------------
    def _sale_key(self, sale_id: str) -> bytes:
        if not _IDENT.fullmatch(sale_id) or not sale_id.strip("."):
            raise TransferRefused(f"{sale_id!r} is not a sale id")  # never a path outside sale-keys/
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
        """Decide, before any TLS, whether to serve ``sale_id`` and to whom; writes nothing anywhere.

        ``min_seq`` is the caller's unauthenticated claim; it only bounds this
        connection's own question to the ledger (see :meth:`_find_sale`).
        """
        sale = check_sale(self._find_sale(sale_id, min_seq), sale_id=sale_id, provider=self.identity.login)
        # The file served is the one this machine shares under the sale's document id, and nothing else.
        share = Shares(self.profile).load().get(sale.doc_id)
        if share is None:
            raise TransferRefused(f"{self.identity.login} does not share {sale.doc_id} on this machine")
        commitment = self._commitment(sale.doc_id, share)
        every = sale.interval_segments if sale.intervals > 1 else 0
        # A split sale gets at most the first interval not paid yet: an unpaid interval costs us one at most.
        limit = min((sale.settled_intervals + 1) * every, commitment.segment_count) if every else None
        # No key yet: it is made and escrowed in escrow(), once the buyer has proved who it is. Until then
        # key_commitment carries what the ledger already holds for the sale ("" when nothing is escrowed).
        return SaleGrant(
            sale_id=sale_id, doc_id=sale.doc_id, consumer_login=sale.consumer,
            consumer_cert_pem=sale.consumer_cert_pem, consumer_public_key=sale.consumer_public_key,
            path=Path(share["path"]), segment_size=share["segment_size"], key=b"",
            key_commitment=sale.key_commitment or "", commitment=commitment, interval_segments=every, limit=limit,
        )

    def escrow(self, grant: SaleGrant) -> SaleGrant:
        """The buyer is authenticated: make (or reload, on resume) the sale key and escrow it with the ledger.

        The key is bound to the sale by its commitment, and the escrow is for
        the document this grant streams (``grant.doc_id``, ``grant.commitment``).
        """
        sale_id = grant.sale_id
        with self._lock:
            key = self._sale_key(sale_id)
        commit = content.key_commitment(sale_id, key)
        if grant.key_commitment and grant.key_commitment != commit:
            raise TransferRefused(f"sale {sale_id} has another key escrowed than this machine holds")
        if not grant.key_commitment:
            if self._ledger_box_key is None:  # the ledger's key does not change: ask once
                self._refresh_head()
            if self._ledger_box_key is None:
                raise TransferRefused("the ledger did not say where to escrow the sale key")
            sealed = seal_to(self._ledger_box_key, key, escrow_info(sale_id))
            try:
                with self._lock:
                    reply = self.client.send(c.EscrowKey(sale_id=sale_id, sealed_key=b64e(sealed),
                                                         key_commitment=commit, doc_id=grant.doc_id,
                                                         merkle_root=grant.commitment.merkle_root))
            except BrokerError as exc:
                raise TransferRefused(f"could not escrow the key of {sale_id}: {exc}") from exc
            if reply.result.get("key_commitment", commit) != commit:
                raise TransferRefused(f"the ledger holds another key for {sale_id} than this machine made")
        self._docs[sale_id] = (grant.doc_id, grant.commitment.segment_count)
        return dataclasses.replace(grant, key=key, key_commitment=commit)

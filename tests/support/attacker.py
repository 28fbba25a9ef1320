"""An attacker who holds the broker's administrator account (a misconfigured broker), for the trust tests.

Everything here talks to RabbitMQ over its own raw pika connection with full
rights on the deployment's vhost (``Deployment.admin_url``), so the broker lets
every forgery through and only signatures stand in the way. The attacker has keys of its own (never certified by the operator)
and can read everything on the broker: the log, the snapshots, every request.

- :func:`entry` / :func:`sign_entry` / :func:`forged_roster` build log entries
  and rosters the way a replica or the operator would, signed with the wrong key
  or not at all;
- :class:`Attacker` publishes into the log, snapshot and status objects and
  reads the log back, so a test knows the stream offset of what it forged;
- :class:`ReadRacer`, :class:`CommandRacer` and :class:`QueueThief` answer
  other people's queries and commands before (or instead of) the replicas.

The module also holds the small waiting and measuring helpers the trust tests share.
"""
from __future__ import annotations

import hashlib
import json
import math
import threading
import time
import uuid
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.codec import canonical
from tests.conftest import Deployment, running_deployment
from tests.support.waiting import wait_for

__all__ = [
    "Attacker", "Forger", "ReadRacer", "CommandRacer", "QueueThief", "Picture", "entry", "sign_entry", "forged_roster",
    "forged_reply", "signed_dict", "raw_public_hex", "fresh_deployment", "picture",
    "ignored_total", "wait_folded", "certified_key", "percentile",
]

_REPLY_TO = "amq.rabbitmq.reply-to"
_MARK = "x-acb-attack"  # a header on what the attacker publishes, to find it again in the stream


def raw_public_hex(key: Ed25519PrivateKey) -> str:
    """The raw public half of ``key``, hex."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def signed_dict(key: Ed25519PrivateKey, signer: str, body: dict[str, Any], purpose: str) -> dict[str, Any]:
    """``body`` signed by ``key`` in ``signer``'s name for ``purpose`` exactly as replicas sign (broker.trust.signed)."""
    from broker.trust import signed

    return signed(key, signer, body, purpose)


# -- forging log entries ---------------------------------------------------------------------------

def entry(*, epoch: int, writer: str, expected_seq: int, prev_hash: str, events: list[dict[str, Any]],
          command_id: str | None = None, reply: dict[str, Any] | None = None,
          command: dict[str, Any] | None = None) -> dict[str, Any]:
    """An unsigned log entry as the wire carries it (no ``signature`` field at all)."""
    out: dict[str, Any] = {
        "entry_id": uuid.uuid4().hex, "epoch": epoch, "writer": writer, "expected_seq": expected_seq,
        "prev_hash": prev_hash, "at_ms": int(time.time() * 1000), "command_id": command_id, "reply": reply,
        "events": events,
    }
    if command is not None:
        out["command"] = command
    return out


def sign_entry(fields: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """``fields`` signed with ``key`` exactly as a replica signs an entry.

    The ledger's own :class:`ledger.log.LogEntry` makes the signing bytes when it knows how, so a
    signature by a key the roster does hold would verify, and the entry is judged on what it says.
    """
    from ledger.log import LogEntry

    try:
        model = LogEntry.model_validate(fields)
    except ValueError:  # an entry shape the ledger's model does not know: sign the dict as it is
        model = None
    if model is not None and hasattr(model, "signed_by"):
        return json.loads(model.signed_by(key).model_dump_json())
    out = {"command": None, **fields}
    out["signature"] = key.sign(canonical(out)).hex()
    return out


def forged_roster(key: Ed25519PrivateKey, replicas: dict[str, str], serial: int = 10**6) -> dict[str, Any]:
    """A roster that certifies ``replicas``, signed by ``key`` (which is not the operator's)."""
    body = {"serial": serial, "replicas": dict(sorted(replicas.items())), "issued_at": int(time.time() * 1000)}
    return {**body, "signature": key.sign(b"acb/roster/1\n" + canonical(body)).hex()}


class Forger:
    """Builds a chain of entries that continue a log from ``(seq, head_hash)``, as its writer would.

    Each entry starts at the next sequence with the hash the chain has after the entries before it
    (computed as every replica computes it), so an entry is judged by its signature and content,
    never thrown out merely for not fitting the chain.
    """

    def __init__(self, seq: int, head_hash: str) -> None:
        self.seq = seq
        self.head = head_hash

    def next(self, events: list[dict[str, Any]], *, epoch: int, writer: str, command_id: str | None = None,
             reply: dict[str, Any] | None = None, command: dict[str, Any] | None = None,
             key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
        """The next entry (signed with ``key`` when given); the chain moves on past it."""
        from ledger.chain import chain_hash

        fields = entry(epoch=epoch, writer=writer, expected_seq=self.seq + 1, prev_hash=self.head, events=events,
                       command_id=command_id, reply=reply, command=command)
        for i, payload in enumerate(events):
            self.seq += 1
            self.head = chain_hash(self.head, seq=self.seq, epoch=epoch, at_ms=fields["at_ms"], command_id=command_id,
                                   payload=payload, reply=reply if i == len(events) - 1 else None)
        return sign_entry(fields, key) if key is not None else fields


def forged_reply(request: bytes, correlation_id: str, result: dict[str, Any], *, seq: int = 0,
                 key: Ed25519PrivateKey | None = None, signer: str = "r1") -> bytes:
    """A reply claiming ``result``; with ``key``, signed by it in ``signer``'s name and bound to ``request``."""
    body: dict[str, Any] = {"type": "reply", "schema_version": 1, "id": correlation_id, "ok": True, "seq": seq,
                            "result": result, "error": None, "served_by": signer}
    if key is not None:
        from broker.replies import Reply

        reply = Reply.model_validate({k: v for k, v in body.items() if k != "served_by"} | {"served_by": signer})
        return reply.signed_by(key, signer, hashlib.sha256(request).hexdigest()).to_bytes()
    return canonical(body)


# -- the attacker's broker connection -------------------------------------------------------------

class Attacker:
    """Publishes into a deployment's log, snapshots and status, and reads its log, with full broker rights.

    ``url`` is the administrator's on the deployment's vhost: the broker refuses this attacker nothing.
    """

    def __init__(self, names: Any, url: str) -> None:
        self.names = names
        self.url = url
        self.key = Ed25519PrivateKey.generate()  # the attacker's own key: the operator never certified it
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()

    @property
    def public_hex(self) -> str:
        return raw_public_hex(self.key)

    def close(self) -> None:
        with suppress(pika.exceptions.AMQPError, OSError):
            self.conn.close()

    def __enter__(self) -> Attacker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def publish_log(self, entries: list[dict[str, Any]]) -> int:
        """Append one log batch of ``entries`` to the stream; its stream offset."""
        mark = uuid.uuid4().hex
        body = json.dumps({"type": "log_batch", "schema_version": 1, "entries": entries}).encode()
        self.publish_raw_log(body, mark)
        return self.offset_of(mark)

    def publish_raw_log(self, body: bytes, mark: str | None = None) -> None:
        headers = {_MARK: mark} if mark else None
        self.ch.basic_publish("", self.names.log, body, pika.BasicProperties(delivery_mode=2, headers=headers))

    def offset_of(self, mark: str, timeout: float = 10.0) -> int:
        """The stream offset of the message published with ``mark``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for offset, props, _body in self.read_stream(self.names.log):
                if (props.headers or {}).get(_MARK) == mark:
                    return offset
        raise AssertionError(f"the attacker's message {mark} never showed up in {self.names.log}")

    def read_stream(self, queue: str, start: Any = "first", idle: float = 0.3) -> list[tuple[int, Any, bytes]]:
        """Every message of a stream from ``start``: (offset, properties, body)."""
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        out: list[tuple[int, Any, bytes]] = []
        try:
            ch = conn.channel()
            ch.basic_qos(prefetch_count=1000)
            for method, props, body in ch.consume(queue, arguments={"x-stream-offset": start}, inactivity_timeout=idle):
                if method is None:
                    break
                ch.basic_ack(method.delivery_tag)
                out.append((int(props.headers["x-stream-offset"]), props, body))
        finally:
            with suppress(pika.exceptions.AMQPError, OSError):
                conn.close()  # a stream consumer closed with nothing buffered closes cleanly
        return out

    def log_batches(self) -> list[tuple[int, dict[str, Any]]]:
        """Every batch the log holds, parsed: what anyone with read rights sees."""
        return [(offset, json.loads(body)) for offset, _props, body in self.read_stream(self.names.log)]

    def publish_snapshot(self, record: dict[str, Any]) -> None:
        """A snapshot record on the snapshot stream, compressed as replicas share them."""
        self.ch.basic_publish("", self.names.snapshots, zlib.compress(canonical(record), 3),
                              pika.BasicProperties(delivery_mode=2))

    def publish_status(self, status: dict[str, Any]) -> None:
        self.ch.basic_publish(self.names.status, "", json.dumps(status).encode())


class _Racer(threading.Thread, ABC):
    """A thread with its own connection that answers other people's requests."""

    def __init__(self, names: Any, url: str, result: Callable[[dict[str, Any]], dict[str, Any]], *,
                 key: Ed25519PrivateKey | None = None) -> None:
        super().__init__(daemon=True, name=type(self).__name__)
        self.names = names
        self.result = result
        self.key = key
        self.url = url
        self.forged = 0
        self.first_forged_at: float | None = None  # time.monotonic() of the first forged reply sent
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def forge(self, ch: Any, props: Any, body: bytes) -> None:
        if not props.reply_to or props.type == "tick":
            return
        try:
            request = json.loads(body)["body"]
        except (ValueError, KeyError, TypeError):
            return
        reply = forged_reply(body, props.correlation_id, self.result(request), seq=int(request.get("min_seq", 0)),
                             key=self.key)
        ch.basic_publish("", props.reply_to, reply, pika.BasicProperties(correlation_id=props.correlation_id))
        self.forged += 1
        if self.first_forged_at is None:
            self.first_forged_at = time.monotonic()

    def run(self) -> None:
        try:
            conn = pika.BlockingConnection(pika.URLParameters(self.url))
        except BaseException as exc:
            self.error = exc
            self.ready.set()
            raise
        try:
            self.serve(conn)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.ready.set()
            with suppress(pika.exceptions.AMQPError, OSError):
                conn.close()

    @abstractmethod
    def serve(self, conn: Any) -> None:
        """What the racer does on its connection (each kind of racer says)."""

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)

    def __enter__(self) -> Any:
        self.start()
        assert self.ready.wait(10), f"{self.name} did not start"
        assert self.error is None, f"{self.name} failed: {self.error!r}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ReadRacer(_Racer):
    """A consumer on the reads queue at a priority above every replica's.

    It answers each query at once with a forged reply, waits ``delay`` seconds (long enough for the
    client to act on the first answer it gets), then puts the query back (same body and properties)
    while still holding its own copy unacknowledged, so RabbitMQ must hand the copy to a replica,
    which answers too. It lets go of its copy once the queue is empty again.
    """

    def __init__(self, names: Any, url: str, result: Callable[[dict[str, Any]], dict[str, Any]], *,
                 key: Ed25519PrivateKey | None = None, delay: float = 0.3, priority: int = 1000) -> None:
        super().__init__(names, url, result, key=key)
        self.delay = delay
        self.priority = priority

    def serve(self, conn: Any) -> None:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1)  # holding one query blocks this consumer: the copy goes to a replica
        side = conn.channel()
        held: list[tuple[Any, Any, bytes, float]] = []

        def on_query(_ch: Any, method: Any, props: Any, body: bytes) -> None:
            self.forge(ch, props, body)
            held.append((method, props, body, time.monotonic() + self.delay))

        ch.basic_consume(self.names.reads, on_query, arguments={"x-priority": self.priority})
        self.ready.set()
        while not self.stopping.is_set():
            conn.process_data_events(time_limit=0.02)
            if held and time.monotonic() >= held[0][3]:
                method, props, body, _due = held.pop(0)
                side.basic_publish(self.names.reads, "query", body, props)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    if side.queue_declare(self.names.reads, passive=True).method.message_count == 0:
                        break
                    conn.process_data_events(time_limit=0.01)
                ch.basic_ack(method.delivery_tag)


class CommandRacer(_Racer):
    """A queue of the attacker's own bound to the commands exchange: a copy of every command, answered at once."""

    def serve(self, conn: Any) -> None:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
        ch.queue_bind(queue, self.names.commands, routing_key="command")

        def on_command(_ch: Any, _method: Any, props: Any, body: bytes) -> None:
            self.forge(ch, props, body)

        ch.basic_consume(queue, on_command, auto_ack=True)
        self.ready.set()
        while not self.stopping.is_set():
            conn.process_data_events(time_limit=0.05)


class QueueThief(_Racer):
    """A foreign consumer on the commands queue itself: it answers "accepted" and swallows every command.

    The queue has a single active consumer: the thief receives only once it is first in line
    (started before any replica, or when the replica holding the queue dies).
    """

    def __init__(self, names: Any, url: str, result: Callable[[dict[str, Any]], dict[str, Any]], *,
                 key: Ed25519PrivateKey | None = None) -> None:
        super().__init__(names, url, result, key=key)
        self.swallowed = 0

    def serve(self, conn: Any) -> None:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=50)

        def on_command(_ch: Any, method: Any, props: Any, body: bytes) -> None:
            self.forge(ch, props, body)
            ch.basic_ack(method.delivery_tag)
            if props.type != "tick":
                self.swallowed += 1

        ch.basic_consume(self.names.commands, on_command)
        self.ready.set()
        while not self.stopping.is_set():
            conn.process_data_events(time_limit=0.05)


# -- deployments, waiting, measuring ---------------------------------------------------------------

@contextmanager
def fresh_deployment(tmp: Path) -> Iterator[Deployment]:
    """A deployment of a test's own, for attacks that may halt or stop the replica (it would take the rest of the
    module with it)."""
    with running_deployment(tmp / "acb-home") as dep:
        yield dep


@dataclass(frozen=True)
class Picture:
    """What an attack must not change: the log's head, the whole state's hash, and the balances."""

    seq: int
    head_hash: str
    state_hash: str
    balances: dict[str, int]
    epoch: int
    primary: str | None


def picture(dep: Deployment) -> Picture:
    from ledger.model import state_hash

    st = dep.state
    return Picture(st.seq, st.head_hash, state_hash(st), dict(st.balances), st.epoch, st.primary)


def ignored_total(dep: Deployment) -> int:
    """How many log entries the replica ignored (the follower counts them by reason)."""
    counter = getattr(dep.replica.follower, "ignored", None)
    return sum(counter.values()) if counter is not None else 0


def wait_folded(dep: Deployment, offset: int, timeout: float = 10.0) -> None:
    """Wait until the replica has folded the stream past ``offset`` (or halted: the caller checks that)."""
    follower = dep.replica.follower
    wait_for(lambda: follower.halted is not None or (follower.next_offset or 0) > offset, timeout,
             f"the replica to read the log past offset {offset}")


def certified_key(dep: Deployment, replica_id: str = "r1") -> Ed25519PrivateKey:
    """The signing key of one of the deployment's replicas, from its key file.

    Signing with it stands for a replica that is certified but writes what nobody asked for: the
    entry must then be refused for what it says, not only for who signed it.
    """
    from ledger.keys import replica_key_path

    path = replica_key_path(dep.home, replica_id)
    assert path.exists(), f"replica {replica_id} has no key at {path}"
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def percentile(samples: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``samples``."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]

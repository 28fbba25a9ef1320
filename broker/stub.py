"""An in-memory broker behind the seam of :mod:`broker.transport`, for unit tests.

It keeps what the ledger relies on from RabbitMQ: routing by exchange and key, prefetch limits,
manual acks, deliveries given back when their link closes, a single active consumer on the
commands queue, consumer priorities on the reads queue, and streams read from an offset with the
offset in each delivery's headers. A message published on the default exchange to a name no queue
has lands in a mailbox of that name (as a direct reply-to would reach its client).

Links may be used from several threads at once (one thread each); waiting is on a condition, so a
test waits for what it expects with :meth:`StubBroker.wait`, never with a sleep.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker import errors
from broker.topology import Names
from broker.transport import Delivery, OnMessage

__all__ = ["StubBroker", "StubLink"]


@dataclass(frozen=True)
class _Message:
    body: bytes
    props: Mapping[str, Any]


@dataclass
class _Consumer:
    link: StubLink
    queue: str
    on_message: OnMessage
    prefetch: int
    priority: int = 0
    position: int = 0  # streams: the next offset to hand over
    unacked: int = 0


@dataclass
class _Queue:
    stream: bool = False
    single_active: bool = False
    ready: deque[_Message] = field(default_factory=deque)  # queues
    log: list[_Message] = field(default_factory=list)  # streams keep everything
    consumers: list[_Consumer] = field(default_factory=list)


class StubBroker:
    """The broker: queues, streams and exchanges in memory, shared by every link opened on it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queues: dict[str, _Queue] = {}
        self._direct: dict[tuple[str, str], list[str]] = {}
        self._fanout: dict[str, list[str]] = {}
        self.published: dict[str, list[Delivery]] = {}  # exchange -> everything published to it, for tests

    def open(self, name: str, *, heartbeat: int = 10, background: bool = False) -> StubLink:
        """A new link (``heartbeat`` and ``background`` are accepted and ignored: nothing here times out)."""
        return StubLink(self, name)

    # -- what tests look at ------------------------------------------------------------------------
    def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Block until ``predicate()`` holds, looked at again whenever the broker changes; False on timeout."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def waiting(self, queue: str) -> list[Delivery]:
        """What waits in a queue (or a mailbox), not handed to a consumer; a stream's whole content."""
        with self._cond:
            q = self._queues.get(queue)
            if q is None:
                return []
            items = q.log if q.stream else list(q.ready)
            return [_delivery(0, m, i if q.stream else None) for i, m in enumerate(items)]

    def take(self, queue: str) -> list[Delivery]:
        """Remove and return what waits in a queue or mailbox."""
        with self._cond:
            q = self._queues.get(queue)
            if q is None or q.stream:
                return []
            out = [_delivery(0, m, None) for m in q.ready]
            q.ready.clear()
            return out

    # -- what links do ---------------------------------------------------------------------------
    def _declare(self, names: Names) -> None:
        with self._cond:
            self._queue(names.dlq)
            self._fanout.setdefault(names.dlx, [names.dlq])
            self._queue(names.commands).single_active = True
            self._direct.setdefault((names.commands, "command"), [names.commands])
            self._queue(names.log).stream = True
            self._queue(names.snapshots).stream = True
            self._queue(names.reads)
            self._direct.setdefault((names.reads, "query"), [names.reads])
            self._fanout.setdefault(names.status, [])

    def _queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = _Queue()
        return q

    def _route(self, exchange: str, routing_key: str, message: _Message) -> None:
        with self._cond:
            if exchange == "":
                targets = [routing_key]
            else:
                self.published.setdefault(exchange, []).append(_delivery(0, message, None))
                targets = self._direct.get((exchange, routing_key), []) + self._fanout.get(exchange, [])
            for name in targets:
                q = self._queue(name)
                (q.log if q.stream else q.ready).append(message)
            self._cond.notify_all()

    def _consume(self, consumer: _Consumer, offset: Any) -> None:
        with self._cond:
            q = self._queue(consumer.queue)
            if q.stream:
                consumer.position = len(q.log) - 1 if offset == "last" else 0 if offset in (None, "first") \
                    else max(0, min(int(offset), len(q.log)))
                consumer.position = max(consumer.position, 0)
            q.consumers.append(consumer)
            self._cond.notify_all()

    def _hand_over(self, consumer: _Consumer, link: StubLink) -> list[Delivery]:
        """Deliveries for ``consumer`` within its prefetch, when it is the one the queue hands them to."""
        q = self._queues[consumer.queue]
        out: list[Delivery] = []
        if q.stream:
            while consumer.unacked < consumer.prefetch and consumer.position < len(q.log):
                out.append(link._delivered(consumer, q.log[consumer.position], None, consumer.position))
                consumer.position += 1
            return out
        active = [c for c in q.consumers if c.unacked < c.prefetch] if not q.single_active else q.consumers[:1]
        if not active or consumer not in active or consumer.priority < max(c.priority for c in active):
            return out
        while consumer.unacked < consumer.prefetch and q.ready:
            out.append(link._delivered(consumer, q.ready.popleft(), consumer.queue, None))
        return out


def _delivery(tag: int, message: _Message, offset: int | None) -> Delivery:
    headers = dict(message.props.get("headers") or {})
    if offset is not None:
        headers["x-stream-offset"] = offset
    return Delivery(tag=tag, body=message.body, type=message.props.get("type"),
                    correlation_id=message.props.get("correlation_id"), reply_to=message.props.get("reply_to"),
                    headers=headers)


class StubLink:
    """One connection to a :class:`StubBroker`; see :class:`broker.transport.Link`."""

    def __init__(self, broker: StubBroker, name: str) -> None:
        self.broker = broker
        self.name = name
        self._consumer: _Consumer | None = None
        self._tags = itertools.count(1)
        # tag -> (consumer, message, queue it goes back to; None for a stream)
        self._unacked: dict[int, tuple[_Consumer, _Message, str | None]] = {}
        self._closed = False

    def _live(self) -> None:
        if self._closed:
            raise errors.BrokerUnavailable(f"link {self.name} is closed")

    def _delivered(self, consumer: _Consumer, message: _Message, queue: str | None, offset: int | None) -> Delivery:
        tag = next(self._tags)
        consumer.unacked += 1
        self._unacked[tag] = (consumer, message, queue)
        return _delivery(tag, message, offset)

    def declare(self, names: Names) -> None:
        """Declare the deployment's queues and exchanges."""
        self._live()
        self.broker._declare(names)

    def consume(self, queue: str, on_message: OnMessage, *, prefetch: int,
                arguments: Mapping[str, Any] | None = None) -> None:
        """Start consuming (one consumer per link)."""
        self._live()
        args = dict(arguments or {})
        self._consumer = _Consumer(self, queue, on_message, prefetch, int(args.get("x-priority", 0)))
        self.broker._consume(self._consumer, args.get("x-stream-offset"))

    def cancel(self) -> None:
        """Stop consuming; what was handed over stays unsettled until acked, requeued or the link closes."""
        with self.broker._cond:
            if self._consumer is not None:
                q = self.broker._queues[self._consumer.queue]
                q.consumers.remove(self._consumer)
                self._consumer = None
                self.broker._cond.notify_all()

    def process(self, time_limit: float) -> None:
        """Hand over what is there for this link's consumer, waiting up to ``time_limit`` for something."""
        self._live()
        deadline = time.monotonic() + time_limit
        with self.broker._cond:
            while True:
                consumer = self._consumer
                ready = self.broker._hand_over(consumer, self) if consumer is not None else []
                left = deadline - time.monotonic()
                if ready or left <= 0 or self._closed:
                    break
                self.broker._cond.wait(left)
        for delivery in ready:  # outside the lock: a consumer acks and publishes from here
            assert consumer is not None
            consumer.on_message(delivery)

    def ack(self, tag: int, *, multiple: bool = False) -> None:
        """Settle one delivery, or every one up to ``tag``."""
        self._live()
        with self.broker._cond:
            for t in [t for t in self._unacked if t <= tag] if multiple else [tag]:
                consumer, _message, _queue = self._unacked.pop(t)
                consumer.unacked -= 1
            self.broker._cond.notify_all()

    def requeue(self, tag: int) -> None:
        """Give a delivery back to the front of its queue."""
        self._live()
        with self.broker._cond:
            self._give_back([tag])

    def _give_back(self, tags: Sequence[int]) -> None:
        for t in sorted(tags, reverse=True):
            consumer, message, queue = self._unacked.pop(t)
            consumer.unacked -= 1
            if queue is not None:
                self.broker._queues[queue].ready.appendleft(message)
        self.broker._cond.notify_all()

    def publish(self, exchange: str, routing_key: str, body: bytes, *, persistent: bool = False,
                correlation_id: str | None = None, reply_to: str | None = None, type: str | None = None,
                headers: Mapping[str, Any] | None = None, expiration: str | None = None,
                content_type: str | None = None) -> None:
        """Route a message as RabbitMQ would (expiration is not modelled)."""
        self._live()
        props = {"persistent": persistent, "correlation_id": correlation_id, "reply_to": reply_to, "type": type,
                 "headers": dict(headers) if headers is not None else None, "content_type": content_type}
        self.broker._route(exchange, routing_key, _Message(body, props))

    def append(self, stream: str, bodies: Sequence[bytes]) -> None:
        """Append to a stream; in memory, every message is confirmed at once."""
        self._live()
        for body in bodies:
            self.broker._route("", stream, _Message(body, {"persistent": True}))

    def close(self) -> None:
        """Give back what is unsettled and stop consuming, as a closed connection does."""
        with self.broker._cond:
            if self._closed:
                return
            self._closed = True
            self._give_back(list(self._unacked))
        self.cancel()

"""The broker seam over pika: a :class:`~broker.transport.Link` is one ``BlockingConnection``.

A link has one channel for consuming, settling and unconfirmed publishes, and opens a second one
in confirm mode the first time it appends (the log needs confirms, the replies do not). An append
publishes all its messages, then waits once until the broker has confirmed every one: pika's own
confirm mode waits a round trip per message, which capped a stream at about a thousand a second.
pika's and the socket's errors leave this module as :class:`broker.errors.BrokerUnavailable`, with
the original as the cause.

``open(..., background=True)`` gives a :class:`BackgroundLink`: the same link served by a thread of
its own. pika's ``BlockingConnection`` sends heartbeats only while ``process_data_events`` runs,
so a caller busy deciding for longer than the heartbeat timeout would be dropped by RabbitMQ as
if dead. The background thread keeps the beats going however long the caller works; deliveries
still reach the caller's ``on_message`` on the caller's own thread, from within :meth:`process`.
"""
from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import pika
import pika.exceptions

from broker import errors
from broker.client import connect
from broker.topology import Names, declare
from broker.transport import Delivery, OnMessage, Transport

__all__ = ["RabbitMQ", "PikaLink", "BackgroundLink", "transport_for"]

P = ParamSpec("P")
R = TypeVar("R")
# How long the background thread waits in pika at a time when nothing happens: a wake-up (an
# operation, a delivery) ends the wait at once, so this only bounds how late a close is noticed.
_IO_SLICE = 0.25
_CLOSE_WAIT = 5.0  # seconds close() waits for the background thread to let the connection go


def _converted(method: Callable[P, R]) -> Callable[P, R]:
    """pika's errors (and the socket's) become ours at this boundary."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise errors.BrokerUnavailable(f"the broker connection failed: {exc!r}") from exc

    return wrapper


class PikaLink:
    """One blocking connection to RabbitMQ; see :class:`broker.transport.Link`."""

    def __init__(self, conn: pika.BlockingConnection) -> None:
        self._conn = conn
        self._channel: Any = conn.channel()
        self._confirming: Any = None  # the confirm channel, once the link appends
        self._published = 0  # messages published on it: the broker numbers its confirms the same way
        self._unconfirmed: set[int] = set()
        self._refused = 0  # of the current append, nacked by the broker
        self._consumer: str | None = None

    @_converted
    def declare(self, names: Names) -> None:
        declare(self._channel, names)

    @_converted
    def consume(self, queue: str, on_message: OnMessage, *, prefetch: int,
                arguments: Mapping[str, Any] | None = None) -> None:
        def deliver(_ch: Any, method: Any, props: Any, body: bytes) -> None:
            on_message(Delivery(tag=method.delivery_tag, body=body, type=props.type,
                                correlation_id=props.correlation_id, reply_to=props.reply_to,
                                headers=props.headers or {}))

        self._channel.basic_qos(prefetch_count=prefetch)
        self._consumer = self._channel.basic_consume(queue, deliver, arguments=dict(arguments or {}))

    @_converted
    def cancel(self) -> None:
        # pika rejects (with requeue) what arrived for this consumer and was not handed over yet.
        if self._consumer is not None:
            tag, self._consumer = self._consumer, None
            self._channel.basic_cancel(tag)

    @_converted
    def process(self, time_limit: float) -> None:
        self._conn.process_data_events(time_limit=time_limit)

    @_converted
    def ack(self, tag: int, *, multiple: bool = False) -> None:
        self._channel.basic_ack(tag, multiple=multiple)

    @_converted
    def requeue(self, tag: int) -> None:
        self._channel.basic_nack(tag, requeue=True)

    @_converted
    def publish(self, exchange: str, routing_key: str, body: bytes, *, persistent: bool = False,
                correlation_id: str | None = None, reply_to: str | None = None, type: str | None = None,
                headers: Mapping[str, Any] | None = None, expiration: str | None = None,
                content_type: str | None = None) -> None:
        props = pika.BasicProperties(
            delivery_mode=2 if persistent else None, correlation_id=correlation_id, reply_to=reply_to, type=type,
            headers=dict(headers) if headers is not None else None, expiration=expiration,
            content_type=content_type)
        self._channel.basic_publish(exchange, routing_key, body, props)

    @_converted
    def append(self, stream: str, bodies: Sequence[bytes]) -> None:
        channel = self._confirm_channel()
        props = pika.BasicProperties(delivery_mode=2)
        self._refused = 0
        for body in bodies:
            channel._impl.basic_publish("", stream, body, props)
            self._published += 1
            self._unconfirmed.add(self._published)
        # One wait for the lot (pika's BlockingChannel has no call for that: its _flush_output is what its own
        # confirmed publish waits with, and it raises when the broker closes the channel meanwhile).
        channel._flush_output(lambda: not self._unconfirmed)
        if self._refused:
            raise errors.BrokerUnavailable(f"the broker refused {self._refused} of {len(bodies)} messages to {stream}")
        if self._unconfirmed:
            raise errors.BrokerUnavailable(f"the broker closed the channel before confirming {len(self._unconfirmed)} "
                                           f"messages to {stream}")

    def _confirm_channel(self) -> Any:
        if self._confirming is None:
            channel = self._conn.channel()
            selected: list[bool] = []
            channel._impl.confirm_delivery(ack_nack_callback=self._on_confirm,
                                           callback=lambda _frame: selected.append(True))
            channel._flush_output(lambda: bool(selected))
            if not selected:
                raise errors.BrokerUnavailable("the broker did not put the channel in confirm mode")
            self._confirming = channel
        return self._confirming

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag, multiple = method.delivery_tag, method.multiple
        settled = {t for t in self._unconfirmed if t <= tag} if multiple else {tag} & self._unconfirmed
        self._unconfirmed -= settled
        if isinstance(method, pika.spec.Basic.Nack):
            self._refused += len(settled)

    def close(self) -> None:
        try:
            self._conn.close()
        except (pika.exceptions.AMQPError, OSError):
            pass  # a stream consumer closed with buffered messages ends this way; nothing is lost


class _Op:
    """One call handed to the background thread, and what came of it."""

    __slots__ = ("call", "done", "error", "result")

    def __init__(self, call: Callable[[], Any]) -> None:
        self.call = call
        self.done = threading.Event()
        self.result: Any = None
        self.error: errors.BrokerError | None = None

    def finish(self, result: Any = None, error: errors.BrokerError | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class BackgroundLink:
    """A :class:`PikaLink` whose connection a thread of its own serves; see :class:`broker.transport.Link`.

    Only the background thread touches pika. The caller's acks, requeues and publishes are queued
    to it and return at once (they go out in order; a failure shows on the next call); declare,
    consume, cancel and append wait for their outcome. Deliveries wait in a queue of their own
    until the caller's :meth:`process` hands them to its ``on_message``.
    """

    def __init__(self, conn: pika.BlockingConnection, name: str) -> None:
        self._conn = conn
        self._link = PikaLink(conn)  # built here, then used by the background thread alone
        self._cond = threading.Condition()
        self._ops: deque[_Op] = deque()
        self._woken = False  # a wake-up is on its way to the background thread
        self._deliveries: deque[Delivery] = deque()
        self._on_message: OnMessage | None = None
        self._failure: errors.BrokerError | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=f"{name}-io", daemon=True)
        self._thread.start()

    # -- the background thread ---------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            while not self._stopping:
                self._link.process(_IO_SLICE)  # heartbeats both ways, deliveries into _arrived
                self._run_ops()
        except errors.BrokerError as exc:
            self._fail(exc)
        finally:
            self._fail(errors.BrokerUnavailable("the link is closed"))
            self._link.close()

    def _run_ops(self) -> None:
        while True:
            with self._cond:
                if not self._ops:
                    self._woken = False
                    return
                op = self._ops.popleft()
            try:
                result = op.call()
            except errors.BrokerError as exc:
                op.finish(error=exc)
                raise  # a failed call leaves pika's channel unusable: the link ends
            except Exception as exc:  # the caller waiting for this call must hear of it, whatever it is
                failure = errors.BrokerUnavailable(f"a call on the broker connection failed: {exc!r}")
                op.finish(error=failure)
                raise failure from exc
            op.finish(result)

    def _arrived(self, delivery: Delivery) -> None:
        with self._cond:
            self._deliveries.append(delivery)
            self._cond.notify_all()

    def _fail(self, exc: errors.BrokerError) -> None:
        with self._cond:
            if self._failure is None:
                self._failure = exc
            pending, self._ops = list(self._ops), deque()
            self._deliveries.clear()  # their tags died with the connection; RabbitMQ delivers them again
            self._cond.notify_all()
        for op in pending:
            op.finish(error=exc)

    # -- the caller's side -------------------------------------------------------------------------
    def _raise_failure(self) -> None:
        failure = self._failure
        if failure is not None:
            raise errors.BrokerUnavailable(f"the broker connection failed: {failure}") from failure

    def _submit(self, call: Callable[[], Any]) -> _Op:
        op = _Op(call)
        with self._cond:
            self._raise_failure()
            self._ops.append(op)
            wake, self._woken = not self._woken, True
        if wake:
            try:
                self._conn.add_callback_threadsafe(_nothing)  # ends the background thread's wait in pika
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._fail(errors.BrokerUnavailable(f"the broker connection failed: {exc!r}"))
                self._raise_failure()
        return op

    def _call(self, call: Callable[[], R]) -> R:
        op = self._submit(call)
        while not op.done.wait(_IO_SLICE):
            if not self._thread.is_alive():
                self._raise_failure()
        if op.error is not None:
            raise errors.BrokerUnavailable(f"the broker connection failed: {op.error}") from op.error
        result: R = op.result
        return result

    def declare(self, names: Names) -> None:
        self._call(lambda: self._link.declare(names))

    def consume(self, queue: str, on_message: OnMessage, *, prefetch: int,
                arguments: Mapping[str, Any] | None = None) -> None:
        self._on_message = on_message
        self._call(lambda: self._link.consume(queue, self._arrived, prefetch=prefetch, arguments=arguments))

    def cancel(self) -> None:
        self._call(self._link.cancel)
        with self._cond:
            self._deliveries.clear()  # pika gives back what it had not handed over; these go back too

    def process(self, time_limit: float) -> None:
        with self._cond:
            if not self._deliveries and self._failure is None and time_limit > 0:
                self._cond.wait(time_limit)
            self._raise_failure()
            batch = list(self._deliveries)
            self._deliveries.clear()
        on_message = self._on_message
        for delivery in batch:
            assert on_message is not None  # deliveries come only after consume
            on_message(delivery)

    def ack(self, tag: int, *, multiple: bool = False) -> None:
        self._submit(lambda: self._link.ack(tag, multiple=multiple))

    def requeue(self, tag: int) -> None:
        self._submit(lambda: self._link.requeue(tag))

    def publish(self, exchange: str, routing_key: str, body: bytes, *, persistent: bool = False,
                correlation_id: str | None = None, reply_to: str | None = None, type: str | None = None,
                headers: Mapping[str, Any] | None = None, expiration: str | None = None,
                content_type: str | None = None) -> None:
        self._submit(lambda: self._link.publish(
            exchange, routing_key, body, persistent=persistent, correlation_id=correlation_id, reply_to=reply_to,
            type=type, headers=headers, expiration=expiration, content_type=content_type))

    def append(self, stream: str, bodies: Sequence[bytes]) -> None:
        self._call(lambda: self._link.append(stream, bodies))

    def close(self) -> None:
        with self._cond:
            self._stopping = True
        try:
            self._conn.add_callback_threadsafe(_nothing)
        except (pika.exceptions.AMQPError, OSError):
            pass  # already closed: the thread is on its way out
        if threading.current_thread() is not self._thread:
            # A thread stuck in a confirm that never comes is a daemon: it ends with the connection.
            self._thread.join(_CLOSE_WAIT)


def _nothing() -> None:
    """A wake-up for the background thread: its work is in the link's own queue."""


class RabbitMQ:
    """The broker at ``url``; see :class:`broker.transport.Transport`."""

    def __init__(self, url: str) -> None:
        self.url = url

    def open(self, name: str, *, heartbeat: int = 10, background: bool = False) -> PikaLink | BackgroundLink:
        """A new blocking connection (:func:`broker.client.connect` turns refusals into our errors);
        with ``background``, served by a thread of its own (:class:`BackgroundLink`)."""
        conn = connect(self.url, heartbeat=heartbeat, name=name)
        try:
            return BackgroundLink(conn, name) if background else PikaLink(conn)
        except (pika.exceptions.AMQPError, OSError) as exc:
            try:
                conn.close()
            except (pika.exceptions.AMQPError, OSError):
                pass
            raise errors.BrokerUnavailable(f"the broker connection failed: {exc!r}") from exc


def transport_for(broker: Transport | str) -> Transport:
    """``broker`` itself, or the RabbitMQ at that URL."""
    return RabbitMQ(broker) if isinstance(broker, str) else broker

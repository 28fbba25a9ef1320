"""The broker seam over pika: a :class:`~broker.transport.Link` is one ``BlockingConnection``.

A link has one channel for consuming, settling and unconfirmed publishes, and opens a second one
in confirm mode the first time it appends (a confirm channel makes every publish wait for its own
confirm, which the log needs and the replies do not). pika's and the socket's errors leave this
module as :class:`broker.errors.BrokerUnavailable`, with the original as the cause.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import pika
import pika.exceptions

from broker import errors
from broker.client import connect
from broker.topology import Names, declare
from broker.transport import Delivery, OnMessage, Transport

__all__ = ["RabbitMQ", "PikaLink", "transport_for"]

P = ParamSpec("P")
R = TypeVar("R")


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
        self._confirming: Any = None
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
        if self._confirming is None:
            self._confirming = self._conn.channel()
            self._confirming.confirm_delivery()
        for body in bodies:
            self._confirming.basic_publish("", stream, body, pika.BasicProperties(delivery_mode=2))

    def close(self) -> None:
        try:
            self._conn.close()
        except (pika.exceptions.AMQPError, OSError):
            pass  # a stream consumer closed with buffered messages ends this way; nothing is lost


class RabbitMQ:
    """The broker at ``url``; see :class:`broker.transport.Transport`."""

    def __init__(self, url: str) -> None:
        self.url = url

    def open(self, name: str, *, heartbeat: int = 10) -> PikaLink:
        """A new blocking connection (:func:`broker.client.connect` turns refusals into our errors)."""
        conn = connect(self.url, heartbeat=heartbeat, name=name)
        try:
            return PikaLink(conn)
        except (pika.exceptions.AMQPError, OSError) as exc:
            try:
                conn.close()
            except (pika.exceptions.AMQPError, OSError):
                pass
            raise errors.BrokerUnavailable(f"the broker connection failed: {exc!r}") from exc


def transport_for(broker: Transport | str) -> Transport:
    """``broker`` itself, or the RabbitMQ at that URL."""
    return RabbitMQ(broker) if isinstance(broker, str) else broker

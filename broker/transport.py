"""The broker seam: what a ledger replica needs from RabbitMQ, and nothing more.

    Transport.open(name, heartbeat, background) -> Link
                                                one connection (pika's BlockingConnection, or a stub); with
                                                background, its I/O and heartbeats run on a thread of its own
    Link.declare(names)                         the topology of :mod:`broker.topology`
    Link.consume(queue, on_message, prefetch)   deliveries, with manual acks; a stream from an offset
    Link.process(time_limit)                    dispatch deliveries and keep heartbeats going
    Link.ack / requeue / cancel                 settle deliveries; stop consuming (unsettled ones go back)
    Link.publish(exchange, key, body, ...)      replies, dead letters, ticks, status, snapshots
    Link.append(stream, bodies)                 persistent, each confirmed by the broker before it returns
    Link.close()                                never raises

Implementations: :class:`broker.rabbitmq.RabbitMQ` (pika, the real thing) and
:class:`broker.stub.StubBroker` (in memory, for unit tests). Whatever goes wrong with the broker
reaches the caller as :class:`broker.errors.BrokerError`, never as the library's own exception.
A link is used by one thread only, as pika's connections are.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker.topology import Names

__all__ = ["Delivery", "Link", "Transport", "OnMessage"]


@dataclass(frozen=True)
class Delivery:
    """One message handed to a consumer."""

    tag: int  # settles it with ack or requeue, on the link that received it
    body: bytes
    type: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)

    @property
    def offset(self) -> int:
        """Its place in a stream (only stream deliveries have one)."""
        return int(self.headers["x-stream-offset"])


OnMessage = Callable[[Delivery], None]


class Link(Protocol):
    """One connection to the broker, used by one thread."""

    def declare(self, names: Names) -> None:
        """Declare the deployment's exchanges and queues (idempotent)."""

    def consume(self, queue: str, on_message: OnMessage, *, prefetch: int,
                arguments: Mapping[str, Any] | None = None) -> None:
        """Start consuming ``queue``: at most ``prefetch`` unsettled deliveries, handed to ``on_message``
        from within :meth:`process`. ``arguments`` as RabbitMQ takes them (``x-stream-offset``,
        ``x-priority``). One consumer per link."""

    def cancel(self) -> None:
        """Stop consuming; deliveries not yet handed over go back to the queue."""

    def process(self, time_limit: float) -> None:
        """Hand over what has arrived, waiting at most ``time_limit`` seconds for something to arrive;
        keeps the connection's heartbeats going."""

    def ack(self, tag: int, *, multiple: bool = False) -> None:
        """Settle a delivery (with ``multiple``, every one up to it)."""

    def requeue(self, tag: int) -> None:
        """Give a delivery back to its queue, for another consumer (or this one) to take again."""

    def publish(self, exchange: str, routing_key: str, body: bytes, *, persistent: bool = False,
                correlation_id: str | None = None, reply_to: str | None = None, type: str | None = None,
                headers: Mapping[str, Any] | None = None, expiration: str | None = None,
                content_type: str | None = None) -> None:
        """Publish without waiting for the broker's confirm."""

    def append(self, stream: str, bodies: Sequence[bytes]) -> None:
        """Publish persistent messages to a stream (or queue), each confirmed before this returns;
        raises BrokerError when the broker refuses one."""

    def close(self) -> None:
        """Close the connection; never raises."""


class Transport(Protocol):
    """Where links come from: one broker (a URL), or a stub."""

    def open(self, name: str, *, heartbeat: int = 10, background: bool = False) -> Link:
        """A new connection named ``name`` (as the broker's management shows it).

        ``heartbeat`` is the AMQP heartbeat timeout in seconds: the broker drops a connection it heard
        nothing from for two to three times that. With ``background`` the connection's I/O runs on a
        thread of its own, so the heartbeats go on while the link's user is busy for longer than that
        (only a hung or cut-off process loses its connection); the link is still used by one thread."""

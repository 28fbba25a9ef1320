"""Request/reply over RabbitMQ: a command or query out, its reply back.

Replies come on direct reply-to (``amq.rabbitmq.reply-to``). Commands are
published persistent with publisher confirms and ``mandatory``, so a command
that no queue takes is an error, not a silent loss. A command is resent with
the same id until a reply arrives or the deadline passes: the ledger applies
an id once, so a retry after a failover costs a pause, never a double charge.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions

from broker import errors
from broker.envelope import Envelope
from broker.replies import Reply, parse_reply
from broker.topology import Names, declare

__all__ = ["BrokerClient", "DEFAULT_URL", "connect"]

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
log = logging.getLogger(__name__)
_REPLY_TO = "amq.rabbitmq.reply-to"


def connect(url: str, *, heartbeat: int = 10, name: str = "acb") -> pika.BlockingConnection:
    """Open a blocking connection, turning pika's errors into ours."""
    params = pika.URLParameters(url)
    params.heartbeat = heartbeat
    params.blocked_connection_timeout = 30
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.client_properties = {"connection_name": name}
    try:
        return pika.BlockingConnection(params)
    except pika.exceptions.AMQPError as exc:
        raise errors.BrokerUnavailable(f"cannot reach RabbitMQ at {_safe(url)}: {exc!r}") from exc


def _safe(url: str) -> str:
    # Never print the password part of a URL.
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


class BrokerClient:
    """One client connection. Not thread-safe: one per thread."""

    def __init__(self, url: str = DEFAULT_URL, names: Names | None = None, *, declare_topology: bool = True) -> None:
        self.url = url
        self.names = names or Names()
        self._declare = declare_topology
        self._conn: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._replies: dict[str, bytes] = {}

    # -- connection ----------------------------------------------------------------------------
    def _ensure(self) -> Any:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self.close()
        self._conn = connect(self.url, name="acb-client")
        ch = self._conn.channel()
        if self._declare:
            declare(ch, self.names)
            self._declare = False
        ch.confirm_delivery()
        ch.basic_consume(_REPLY_TO, self._on_reply, auto_ack=True)
        self._channel = ch
        return ch

    def _on_reply(self, _ch: Any, _method: Any, props: Any, body: bytes) -> None:
        if props.correlation_id:
            self._replies[props.correlation_id] = body

    def close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except pika.exceptions.AMQPError:
                pass

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------------
    def request(
        self,
        envelope: Envelope,
        *,
        timeout: float = 30.0,
        attempt_timeout: float = 2.0,
        on_wait: Callable[[float], None] | None = None,
    ) -> Reply:
        """Send an envelope and return its reply, resending the same bytes until one comes.

        ``on_wait(elapsed)`` is called while no reply has come, so a CLI can show a wait.
        Raises ReplyTimeout when ``timeout`` passes without an answer.
        """
        is_command = envelope.kind == "command"
        exchange = self.names.commands if is_command else self.names.reads
        routing_key = "command" if is_command else "query"
        body = envelope.to_bytes()
        start = time.monotonic()
        deadline = start + timeout
        while True:
            try:
                ch = self._ensure()
                ch.basic_publish(
                    exchange, routing_key, body,
                    pika.BasicProperties(
                        reply_to=_REPLY_TO, correlation_id=envelope.id, content_type="application/json",
                        delivery_mode=2 if is_command else 1, type=envelope.kind,
                    ),
                    mandatory=True,
                )
                reply = self._await(envelope.id, min(deadline, time.monotonic() + attempt_timeout))
                if reply is not None:
                    return reply
            except pika.exceptions.UnroutableError as exc:
                raise errors.BrokerUnavailable(f"no queue takes {exchange}: is a ledger set up?") from exc
            except (pika.exceptions.AMQPError, errors.BrokerUnavailable, OSError) as exc:
                log.info("broker connection lost (%r); retrying", exc)
                self.close()
                time.sleep(0.2)
            now = time.monotonic()
            if now >= deadline:
                raise errors.ReplyTimeout(f"no reply to {envelope.payload.type} {envelope.id} within {timeout:.0f} s")
            if on_wait is not None:
                on_wait(now - start)

    def _await(self, ident: str, until: float) -> Reply | None:
        assert self._conn is not None
        while ident not in self._replies:
            left = until - time.monotonic()
            if left <= 0:
                return None
            self._conn.process_data_events(time_limit=min(left, 0.25))
        return parse_reply(self._replies.pop(ident))

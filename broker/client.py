"""Request/reply over RabbitMQ: a command or query out, its reply back.

Replies come on direct reply-to (``amq.rabbitmq.reply-to``). Commands are
published persistent with publisher confirms and ``mandatory`` to a durable
quorum queue, so once the broker confirms a command it is not lost: if the
primary dies holding it, RabbitMQ hands it to the next, which answers it (from
the log, when it was applied). A request is therefore sent again only when
sending again can help, and never in step with every other client:

- the broker turned it away (a nack: the queue is full) or the ledger answered
  ``busy``: after a pause drawn from :class:`Backoff` (exponential, full jitter,
  capped). When the pause would outlast the caller's patience, the caller gets
  the ``busy`` (``errors.Busy``) instead of a timeout;
- the connection broke (the reply address goes with it): at once, on a new one;
- nothing came for a long while: after :data:`RESEND` (5 s, then 10 s, 20 s, each
  drawn between half and all of it), in case a copy was dropped on the way.

Resending costs the ledger little: the same bytes under the same id are answered
from the log, never applied twice.

Nothing that arrives is believed on its word: a reply counts only when a
replica the operator certified signed it, for exactly the request sent
(:mod:`broker.trust`). Anything else (unsigned, forged, answering another
request, from a removed replica) is dropped and counted, and the client goes
on waiting for the real answer.

``amqps://`` URLs are verified against the CA in ``ACB_BROKER_CA`` (else
``$ACB_HOME/system/tls/ca.pem`` or ``$ACB_HOME/broker-ca.pem``, else the
system's); ``ACB_BROKER_CERT`` and ``ACB_BROKER_KEY`` add a client certificate
(mutual TLS, for replicas).

Two more tools live here because they need pika itself, and pika stays in this module and
:mod:`broker.rabbitmq`: :func:`peek_dead_letters` (the operator's look at the dead-letter queue)
and :func:`pipeline` (commands published without waiting, for the ledger benchmark).
"""
from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from broker import errors
from broker import queries as q
from broker.envelope import Envelope, seal
from broker.replies import Reply, parse_reply
from broker.settings import load_environment
from broker.topology import Names, declare
from broker.trust import Trust, digest

__all__ = ["Backoff", "BUSY_BACKOFF", "RESEND", "BrokerClient", "DeadLetter", "DeadLetterPeek", "Pipelined",
           "PipelineRun", "connect", "listen", "peek_dead_letters", "pipeline", "tls_context"]

log = logging.getLogger(__name__)
_REPLY_TO = "amq.rabbitmq.reply-to"
_NO_LEDGER_PATIENCE = 10.0  # seconds to wait for a replica to create the ledger's queues


@dataclass(frozen=True)
class Backoff:
    """Pauses that grow exponentially, capped, with jitter so that clients do not come back in step.

    Pause ``n`` (from 0) is drawn uniformly between ``floor`` and 1 times ``min(cap, base * 2**n)``:
    ``floor=0`` is "full jitter" (clients turned away together spread over the whole window),
    a higher floor keeps a minimum wait. ``rng`` returns a float in [0, 1): inject one to test.
    """

    base: float
    cap: float
    floor: float = 0.0
    rng: Callable[[], float] = random.random

    def ceiling(self, attempt: int) -> float:
        """The largest pause ``attempt`` may draw."""
        return min(self.cap, self.base * 2.0 ** min(max(attempt, 0), 32))

    def delay(self, attempt: int) -> float:
        """The pause before attempt ``attempt + 1`` (seconds)."""
        return self.ceiling(attempt) * (self.floor + (1.0 - self.floor) * self.rng())


# After `busy` or a full queue: 0-0.25 s, 0-0.5 s, ... up to 0-5 s.
BUSY_BACKOFF = Backoff(base=0.25, cap=5.0)
# After a confirmed send with no answer: 2.5-5 s, 5-10 s, then 10-20 s (a copy lost on the way is rare).
RESEND = Backoff(base=5.0, cap=20.0, floor=0.5)


def tls_context(url: str) -> ssl.SSLContext:
    """The TLS context for an amqps:// URL: the broker's certificate verified, optionally ours presented."""
    env = load_environment()
    home = env.home
    cafile = str(env.broker_ca) if env.broker_ca else next(
        (str(p) for p in (home / "system" / "tls" / "ca.pem", home / "broker-ca.pem") if p.exists()), None)
    try:
        context = ssl.create_default_context(cafile=cafile)
        if env.broker_cert:
            context.load_cert_chain(env.broker_cert, env.broker_key or None)
    except (OSError, ssl.SSLError) as exc:
        raise errors.ConfigurationError(f"cannot load the broker's TLS certificates: {exc.strerror or exc}") from exc
    return context


def connect(url: str, *, heartbeat: int = 10, name: str = "acb") -> pika.BlockingConnection:
    """Open a blocking connection, turning pika's errors into ours."""
    try:
        params = pika.URLParameters(url)
    except (ValueError, TypeError, IndexError) as exc:  # what pika's URL parsing lets out
        raise errors.ConfigurationError(
            f"not a broker URL (amqp://USER:PASSWORD@HOST:PORT/VHOST): {_safe(url)}") from exc
    if url.startswith("amqps://"):
        params.ssl_options = pika.SSLOptions(tls_context(url), params.host)
    params.heartbeat = heartbeat
    params.blocked_connection_timeout = 30
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.client_properties = {"connection_name": name}
    try:
        return pika.BlockingConnection(params)
    except ssl.SSLCertVerificationError as exc:
        raise errors.BrokerRefused(f"the broker at {_safe(url)} did not present a certificate this machine trusts "
                                   f"(set ACB_BROKER_CA to the CA that signed it)") from exc
    except pika.exceptions.ProbableAuthenticationError as exc:
        raise errors.BrokerRefused(f"RabbitMQ at {_safe(url)} refused the user name or password") from exc
    except pika.exceptions.ProbableAccessDeniedError as exc:
        raise errors.BrokerRefused(f"RabbitMQ at {_safe(url)} refused access to its virtual host") from exc
    except pika.exceptions.AMQPError as exc:
        cause = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
        if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in repr(exc):
            raise errors.BrokerRefused(f"the broker at {_safe(url)} did not present a certificate this machine "
                                       f"trusts (set ACB_BROKER_CA to the CA that signed it)") from exc
        raise errors.BrokerUnavailable(f"cannot reach RabbitMQ at {_safe(url)}: {type(cause).__name__}") from exc
    except (ssl.SSLError, OSError) as exc:
        raise errors.BrokerUnavailable(f"cannot reach RabbitMQ at {_safe(url)}: {exc.strerror or exc}") from exc
    except AMQPConnectorException as exc:  # not an AMQPError: a handshake timeout of a broker too busy to answer
        raise errors.BrokerUnavailable(f"cannot reach RabbitMQ at {_safe(url)}: {type(exc).__name__}") from exc


def _safe(url: str) -> str:
    # Never print the password part of a URL.
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


class BrokerClient:
    """One client connection. Not thread-safe: one per thread.

    ``trust`` holds the operator's public key and the replica roster that replies are checked
    against (default: :meth:`Trust.from_env`). Peers may not declare broker objects: only a
    replica's (or a test's) client passes ``declare_topology=True``.
    """

    def __init__(self, url: str, names: Names | None = None, *, declare_topology: bool = False,
                 trust: Trust | None = None, backoff: Backoff = BUSY_BACKOFF, resend: Backoff = RESEND) -> None:
        self.url = url
        self.backoff = backoff
        self.resend = resend
        self.names = names or Names()
        self._declare = declare_topology
        self._trust = trust
        self._conn: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._replies: dict[str, list[bytes]] = {}
        self._waiting: set[str] = set()
        self.forged_replies = 0  # replies dropped: unsigned, forged, for another request, uncertified signer
        self.sends = 0  # requests published, first copies and resends (what this client cost the broker)
        self.busy_pauses = 0  # pauses taken after a `busy` answer or a broker nack
        self._refreshed_at = float("-inf")

    @property
    def trust(self) -> Trust:
        if self._trust is None:
            self._trust = Trust.from_env()
        return self._trust

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
        # Keep every candidate for a request we wait for (a forgery may arrive first); drop the rest.
        ident = props.correlation_id
        if ident in self._waiting and len(self._replies.setdefault(ident, [])) < 64:
            self._replies[ident].append(body)

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
        attempt_timeout: float | None = None,
        on_wait: Callable[[float], None] | None = None,
    ) -> Reply:
        """Send an envelope and return its reply, sending the same bytes again when that can help
        (see the module docstring); ``attempt_timeout`` fixes the wait before a resend instead.

        ``on_wait(elapsed)`` is called while no reply has come, so a CLI can show a wait.
        Raises ReplyTimeout when ``timeout`` passes without an answer, and Busy when the broker
        still turns the request away (its queue full) as the time runs out. A ``busy`` answer
        that comes as the time runs out is returned like any other.
        """
        is_command = envelope.kind == "command"
        exchange = self.names.commands if is_command else self.names.reads
        routing_key = "command" if is_command else "query"
        body = envelope.to_bytes()
        request = digest(body)
        start = time.monotonic()
        deadline = start + timeout
        trust = self.trust
        self._waiting.add(envelope.id)
        try:
            return self._request(envelope, body, request, exchange, routing_key, is_command, trust, start, deadline,
                                 timeout, attempt_timeout, on_wait)
        finally:
            self._waiting.discard(envelope.id)
            self._replies.pop(envelope.id, None)

    def _request(self, envelope: Envelope, body: bytes, request: str, exchange: str, routing_key: str,
                 is_command: bool, trust: Trust, start: float, deadline: float, timeout: float,
                 attempt_timeout: float | None, on_wait: Callable[[float], None] | None) -> Reply:
        resends = 0  # confirmed sends that went unanswered
        refused = 0  # `busy` answers and nacks since the last send the ledger took
        while True:
            try:
                ch = self._ensure()
                self.sends += 1
                ch.basic_publish(
                    exchange, routing_key, body,
                    pika.BasicProperties(
                        reply_to=_REPLY_TO, correlation_id=envelope.id, content_type="application/json",
                        delivery_mode=2 if is_command else 1, type=envelope.kind,
                    ),
                    mandatory=True,
                )
                wait = attempt_timeout if attempt_timeout is not None else self.resend.delay(resends)
                reply = self._await(envelope.id, request, trust, min(deadline, time.monotonic() + wait))
                if reply is None:
                    resends += 1
                elif not _is_busy(reply):
                    return reply
                elif not self._pause_after_refusal(refused, deadline, start, on_wait):
                    return reply
                else:
                    refused += 1
                    continue
            except pika.exceptions.NackError as exc:
                # The broker turned the message away (its queue is full): as `busy`, back off, then resend.
                if not self._pause_after_refusal(refused, deadline, start, on_wait):
                    raise errors.Busy(f"the broker turned {envelope.payload.type} {envelope.id} away: the "
                                      f"ledger's queue is full; try again later") from exc
                refused += 1
                continue
            except (pika.exceptions.UnroutableError, pika.exceptions.ChannelClosedByBroker) as exc:
                # No replica has declared the ledger's queues yet (peers may not declare them): one may be
                # starting, so wait a while, then say so plainly.
                if isinstance(exc, pika.exceptions.ChannelClosedByBroker) and exc.reply_code == 403:
                    raise errors.BrokerRefused(f"this account may not publish to {exchange}: is ACB_PREFIX "
                                               f"({self.names.prefix}) right?") from exc
                if isinstance(exc, pika.exceptions.ChannelClosedByBroker) and exc.reply_code != 404:
                    raise errors.BrokerRefused(f"the broker refused the message: {exc.reply_text}") from exc
                self.close()
                if time.monotonic() - start >= min(timeout, _NO_LEDGER_PATIENCE):
                    raise errors.BrokerUnavailable(f"no ledger answers on {exchange}: is a replica running?") from exc
                time.sleep(0.2)
            except errors.BrokerRefused:
                raise
            except (pika.exceptions.AMQPError, errors.BrokerUnavailable, OSError) as exc:
                log.info("broker connection lost (%r); retrying", exc)
                self.close()
                time.sleep(0.2)
            now = time.monotonic()
            if now >= deadline:
                raise errors.ReplyTimeout(f"no reply to {envelope.payload.type} {envelope.id} within {timeout:.0f} s")
            if on_wait is not None:
                on_wait(now - start)

    def _pause_after_refusal(self, refused: int, deadline: float, start: float,
                             on_wait: Callable[[float], None] | None) -> bool:
        """Back off after the ``refused``-th refusal in a row; False (no pause) when it would outlast ``deadline``."""
        pause = self.backoff.delay(refused)
        if time.monotonic() + pause >= deadline:
            return False
        self.busy_pauses += 1
        if on_wait is not None:
            on_wait(time.monotonic() - start)
        self._idle(pause)
        return True

    def _idle(self, seconds: float) -> None:
        """Pause, keeping the connection's heartbeats going (late replies are kept for the next look)."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            if self._conn is not None and self._conn.is_open:
                try:
                    self._conn.process_data_events(time_limit=min(left, 0.25))
                    continue
                except pika.exceptions.AMQPError:
                    self.close()
            time.sleep(left)

    def _await(self, ident: str, request: str, trust: Trust, until: float) -> Reply | None:
        assert self._conn is not None
        while True:
            for body in self._replies.pop(ident, []):
                reply = self._believe(body, ident, request, trust)
                if reply is not None:
                    return reply
            left = until - time.monotonic()
            if left <= 0:
                return None
            self._conn.process_data_events(time_limit=min(left, 0.25))

    def _believe(self, body: bytes, ident: str, request: str, trust: Trust) -> Reply | None:
        """The reply in ``body`` if a certified replica signed it for this very request; None otherwise."""
        try:
            reply = parse_reply(body)
        except errors.MalformedMessage:
            self._dropped("a reply that does not parse")
            return None
        if reply.id != ident or reply.request != request or reply.signature is None:
            self._dropped(f"a reply not bound to request {ident[:12]}")
            return None
        if trust.replica_key(reply.signer) is None:
            trust.reload()
        if trust.replica_key(reply.signer) is None:
            self._refresh_roster(trust)
        key = trust.replica_key(reply.signer)
        if key is None or not _verifies(key, reply):
            self._dropped(f"a reply not signed by a certified replica (claims {str(reply.signer)[:40]!r})")
            return None
        if reply.roster_serial is not None and reply.roster_serial > trust.serial:
            # The operator changed the roster since (a certified replica says so): learn it, a removal counts at once.
            self._refresh_roster(trust, asked_by_a_replica=True)
        return reply

    def _dropped(self, what: str) -> None:
        self.forged_replies += 1
        log.warning("dropped %s; still waiting for the real answer", what)

    def _refresh_roster(self, trust: Trust, *, asked_by_a_replica: bool = False) -> None:
        """Ask the ledger for its newest roster: it is signed by the operator, so any answer will do."""
        if not asked_by_a_replica and time.monotonic() - self._refreshed_at < 2.0:
            return  # at most one look every two seconds, however many strangers' replies arrive
        self._refreshed_at = time.monotonic()
        try:
            env = seal(q.LedgerInfo(), sender="anonymous", key=None, kind="query")
            body = env.to_bytes()
            self._waiting.add(env.id)
            try:
                self._ensure().basic_publish(
                    self.names.reads, "query", body,
                    pika.BasicProperties(reply_to=_REPLY_TO, correlation_id=env.id, type="query"), mandatory=True)
                until = time.monotonic() + 2.0
                assert self._conn is not None
                while time.monotonic() < until:
                    for raw in self._replies.pop(env.id, []):
                        if self._adopt_roster(raw, env.id, digest(body), trust):
                            return
                    self._conn.process_data_events(time_limit=0.1)
            finally:
                self._waiting.discard(env.id)
                self._replies.pop(env.id, None)
        except (pika.exceptions.AMQPError, errors.BrokerError, OSError) as exc:
            log.info("could not refresh the replica roster: %r", exc)

    def _adopt_roster(self, raw: bytes, ident: str, request: str, trust: Trust) -> bool:
        try:
            reply = parse_reply(raw)
            roster = reply.result.get("roster") if reply.ok and reply.id == ident else None
            if roster is None:
                return False
            trust.adopt(roster)  # checked against the operator's key: whoever relayed it does not matter
        except errors.BrokerError:
            return False
        key = trust.replica_key(reply.signer)
        return key is not None and reply.request == request and _verifies(key, reply)


def _is_busy(reply: Reply) -> bool:
    return not reply.ok and isinstance(reply.error, dict) and reply.error.get("code") == errors.Busy.code


def _verifies(key: bytes, reply: Reply) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(bytes.fromhex(reply.signature or ""), reply.signing_bytes())
    except (InvalidSignature, ValueError):
        return False
    return True


# -- listening to a fanout ------------------------------------------------------------------------


def listen(url: str, exchange: str, wait: float, *, name: str = "acb-listener") -> Iterator[bytes]:
    """Every message published to ``exchange`` during the next ``wait`` seconds, as it came (unverified).

    Yields nothing when the exchange does not exist (nobody has ever published there). Raises
    BrokerUnavailable when the broker refuses to let us listen, cannot be reached or drops us.
    """
    conn = connect(url, name=name)
    try:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
        try:
            ch.queue_bind(queue, exchange)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return
            raise errors.BrokerUnavailable(f"the broker refused to let us listen to {exchange}: "
                                           f"{exc.reply_text}") from exc
        deadline = time.monotonic() + wait
        for method, _props, body in ch.consume(queue, auto_ack=True, inactivity_timeout=0.1):
            if method is not None:
                yield body
            if time.monotonic() >= deadline:
                break
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise errors.BrokerUnavailable(f"lost the broker while listening to {exchange}: {exc!r}") from exc
    finally:
        try:
            conn.close()
        except (pika.exceptions.AMQPError, OSError):
            pass


# -- the dead-letter queue ---------------------------------------------------------------------

_PEEK_AT_MOST = 100  # messages taken (and put back) in one look


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered message as it lies in the queue: its bytes, and the primary's note on why.

    ``reason`` and ``replica`` are the ``x-acb-reason`` and ``x-acb-replica`` headers the primary
    puts on what it rejects ("" when absent); the body is as it arrived, unparsed and unverified.
    """

    body: bytes
    reason: str
    replica: str
    correlation_id: str


@dataclass(frozen=True)
class DeadLetterPeek:
    """What one look at the dead-letter queue saw."""

    count: int | None  # None: the queue does not exist (no ledger set up on this prefix)
    letters: tuple[DeadLetter, ...] = ()  # the last ``peek`` of the first 100, oldest first


def peek_dead_letters(url: str, names: Names, *, peek: int = 0, known_count: int | None = -1) -> DeadLetterPeek:
    """The dead-letter queue's length and, with ``peek``, its last ``peek`` messages of the first 100,
    unless the length is still ``known_count`` (then the caller keeps what it peeked before).

    Peeking takes messages without acknowledging them and puts them all back with one nack. That
    bumps their delivery count, so callers should peek only when the count changes, not on every look.
    Raises BrokerUnavailable (or BrokerRefused) when the broker cannot be reached or drops us.
    """
    conn = connect(url, name="acb-console-dlq")
    try:
        ch = conn.channel()
        try:
            count = ch.queue_declare(names.dlq, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker:
            return DeadLetterPeek(None)
        if count == known_count:
            peek = 0
        letters: list[DeadLetter] = []
        if peek and count:
            last_tag = None
            for _ in range(min(count, _PEEK_AT_MOST)):
                method, props, body = ch.basic_get(names.dlq, auto_ack=False)
                if method is None:
                    break
                last_tag = method.delivery_tag
                letters.append(_dead_letter(props, body))
            if last_tag is not None:
                ch.basic_nack(delivery_tag=last_tag, multiple=True, requeue=True)
        return DeadLetterPeek(count, tuple(letters[-peek:]) if letters else ())
    except (pika.exceptions.AMQPError, OSError) as exc:
        # Whatever was taken and not put back returns to the queue when the connection closes.
        raise errors.BrokerUnavailable(f"lost the broker while looking at {names.dlq}: {exc!r}") from exc
    finally:
        try:
            conn.close()
        except (pika.exceptions.AMQPError, OSError):
            pass


def _dead_letter(props: Any, body: bytes) -> DeadLetter:
    headers = props.headers or {}
    return DeadLetter(body, _text(headers.get("x-acb-reason", "")), _text(headers.get("x-acb-replica", "")),
                      str(props.correlation_id or ""))


def _text(value: Any) -> str:
    # pika hands header strings over as bytes or str depending on how they were sent.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


# -- pipelined commands ------------------------------------------------------------------------


@dataclass(frozen=True)
class Pipelined:
    """One command of :func:`pipeline` and its answer, with ``time.perf_counter()`` times."""

    id: str
    sent_at: float  # just before it was published
    answered_at: float  # when its answer was taken off the connection
    body: bytes  # the answer as it came: unparsed and unverified


@dataclass(frozen=True)
class PipelineRun:
    """Every answer of one :func:`pipeline`, in the order they came."""

    started: float  # perf_counter just before the first publish
    finished: float  # when the last answer came
    answers: tuple[Pipelined, ...]

    @property
    def seconds(self) -> float:
        """From the first publish to the last answer."""
        return self.finished - self.started


def pipeline(url: str, names: Names, envelopes: Sequence[Envelope], *, window: int = 200, timeout: float = 120.0,
             name: str = "acb-pipeline") -> PipelineRun:
    """Publish every command without waiting for its answer, at most ``window`` unanswered at once, and
    collect the answers on direct reply-to as they come; for measuring the ledger, not for trusting it.

    Each command is sent once (no resending, no publisher confirms, no ``mandatory``), and the first
    answer per id is taken as it came: the caller parses and checks the bodies. Raises ReplyTimeout
    when some command has no answer ``timeout`` seconds after the last was sent, BrokerUnavailable
    when the connection fails.
    """
    conn = connect(url, name=name)
    sent_at: dict[str, float] = {}
    answered: dict[str, tuple[float, bytes]] = {}

    def on_reply(_ch: Any, _method: Any, props: Any, body: bytes) -> None:
        if props.correlation_id in sent_at and props.correlation_id not in answered:
            answered[props.correlation_id] = (time.perf_counter(), body)

    try:
        ch = conn.channel()
        ch.basic_consume(_REPLY_TO, on_reply, auto_ack=True)
        started = time.perf_counter()
        for i, env in enumerate(envelopes):
            # At most a window in flight: the primary answers `busy` to a channel with more than its share waiting.
            while len(sent_at) - len(answered) >= window:
                conn.process_data_events(time_limit=0.01)
            sent_at[env.id] = time.perf_counter()
            ch.basic_publish(names.commands, "command", env.to_bytes(), pika.BasicProperties(
                reply_to=_REPLY_TO, correlation_id=env.id, content_type="application/json", delivery_mode=2,
                type="command"))
            if i % 64 == 63:  # take answers in as they come, so their times are true
                conn.process_data_events(time_limit=0)
        deadline = time.monotonic() + timeout
        while len(answered) < len(sent_at) and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.05)
        finished = max((at for at, _ in answered.values()), default=time.perf_counter())
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise errors.BrokerUnavailable(f"the broker connection failed mid-pipeline: {exc!r}") from exc
    finally:
        try:
            conn.close()
        except (pika.exceptions.AMQPError, OSError):
            pass
    missing = len(sent_at) - len(answered)
    if missing:
        raise errors.ReplyTimeout(f"{missing} of {len(sent_at)} pipelined commands got no answer within "
                                  f"{timeout:.0f} s")
    return PipelineRun(started, finished, tuple(Pipelined(i, sent_at[i], at, body)
                                                for i, (at, body) in answered.items()))

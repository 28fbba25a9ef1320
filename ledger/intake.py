"""The primary's intake rules: what becomes of each command of a batch, decided against the state.

Pure: no broker, no clock (the time comes in the :class:`~ledger.handlers.Context`), no I/O. The
primary's loop (:mod:`ledger.primary`) and the unit tests' ``Book`` both call :func:`decide_batch`
and only carry out what it says: write the entries, publish the dead letters, send the answers.

Each message of a batch, in order, gets one :class:`Verdict`:

    TICK        the first tick of a batch looks at the holds once and expires the overdue ones
    SKIPPED     any later tick of the same batch (every replica ticks; one look per batch is enough)
    REJECTED    it does not parse or does not authenticate: refused, never remembered (a stranger
                reusing an id must not plant a refusal for the id's owner)
    DUPLICATE   its id was applied already: answered from the log, or refused with ``id_in_use``
                when another command took that id
    REMEMBERED  the same command (id and digest) was refused before: the same answer again
    EXPIRED     it waited past its sender's deadline (``broker.envelope.expired``, on the batch's
                clock) and its id was never applied: answered ``expired``, never decided, never applied
    REFUSED     ``decide`` refused it: answered, and remembered so a retry gets the same answer
    FAILED      ``decide`` raised something unexpected (a bug): answered ``internal``, not applied
    DECIDED     decided: answered, and its entry (if it causes events) joins the batch's write

Any of REJECTED, REFUSED and FAILED may also go to the dead-letter queue (``Verdict.dead_letter``
says why): what no ledger could ever apply, and what broke the ledger. Business refusals
(insufficient funds, unknown user, ...) are answers, not dead letters.

Copies cost almost nothing. The exact bytes of every command that authenticated are remembered
(their SHA-256, up to :data:`COPIES_MEMORY` of them, with the command's id and digest): a copy of
those bytes (a client's resend, a redelivery after a failover) is answered from the log or the
refusals memory without being parsed or its signature checked again, which is safe because the
same bytes verified before. Anything else takes the full path.

Expiry is decided on the batch's one clock (``Context.now_ms``), which is also the time the batch's
entries carry: a command is either decided before its deadline and applied whole, or answered
``expired`` and never applied. An expired command whose id was never applied is answered before
its signature is checked (the answer says only what its own bytes say, and that the id is not in
the log); one whose id was applied gets the log's answer, as any copy does.
"""
from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from broker import errors
from broker.commands import OPERATOR
from broker.envelope import Envelope, expired, open_envelope
from broker.replies import Reply
from ledger.handlers import Context, Decision, authenticate, decide, expire_holds
from ledger.log import LogEntry, Outcome, command_digest, fold_entry
from ledger.model import State
from ledger.ratelimit import RateLimiter
from ledger.store import Row

__all__ = [
    "TICK", "SKIPPED", "REJECTED", "DUPLICATE", "REMEMBERED", "REFUSED", "FAILED", "DECIDED", "UNHANDLEABLE",
    "Incoming", "Writer", "Verdict", "Plan", "Refusals", "decide_batch", "make_entry", "dead_letter_reason",
    "turn_of", "STRANGER", "REJECTED_MEMORY", "EXPIRED", "COPIES_MEMORY", "shed_reply", "busy_budget",
    "BUSY_ANSWERS_PER_S", "BUSY_ANSWERS_BURST", "HOLD_LOOK_MS",
]

TICK, SKIPPED, REJECTED, DUPLICATE = "tick", "skipped", "rejected", "duplicate"
REMEMBERED, REFUSED, FAILED, DECIDED = "remembered", "refused", "failed", "decided"
EXPIRED = "expired"

# Refusals are not in the log; remember recent ones so a retry gets the same answer.
REJECTED_MEMORY = 50_000
# Exact bytes of recent authenticated commands (about 200 bytes each: 4 MB at most). A copy arriving
# later than this many commands after its original takes the full path, which answers it as rightly.
COPIES_MEMORY = 20_000
# `busy` answers per turn (see busy_budget): a burst of one share, then 100 a second. Each costs a signature
# and a publish (~0.2 ms): more than this slows the intake's drain of a flood, and so everyone behind it.
BUSY_ANSWERS_PER_S = 100
BUSY_ANSWERS_BURST = 256
# The primary looks at the holds itself when its last look is older than this by the ledger's clock: ticks wait
# behind a backlog in the commands queue (and expire there), so without it no sale is voided until a backlog
# drains. With it, a sale past its deadline is voided within this plus one batch while the primary is working.
HOLD_LOOK_MS = 500
# Messages no ledger could ever apply go to the dead-letter queue with the reason.
UNHANDLEABLE = (errors.Malformed, errors.UnknownType, errors.UnsupportedVersion, errors.BadSignature)
STRANGER = "stranger"  # the one turn shared by commands that name no registered sender

RefusalKey = tuple[str, str | None]  # (command id, command digest)
CopyKey = str  # SHA-256 of a command's bytes exactly as they arrived
Folded = tuple[State, tuple[Outcome, State, list[Row]]]  # (state folded onto, fold_entry's result)


@dataclass(frozen=True)
class Incoming:
    """One message taken off the commands queue, as the rules see it."""

    body: bytes
    correlation_id: str | None = None
    tick: bool = False


def _new_entry_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Writer:
    """Who writes the entries, and the keys every follower will check them with."""

    replica_id: str
    epoch: int
    key: Ed25519PrivateKey | None  # None only in tests that want unsigned entries
    operator_key: bytes
    ledger_key: X25519PrivateKey | None = None
    new_id: Callable[[], str] = _new_entry_id


@dataclass(frozen=True)
class Verdict:
    """What becomes of one message (see the module docstring for the kinds)."""

    kind: str
    reply: Reply | None = None  # None for ticks; a DECIDED reply with an entry gets its seq once written
    entry: LogEntry | None = None
    events: tuple[Any, ...] = ()
    decision: Decision | None = None
    dead_letter: str | None = None  # the reason, when the message goes to the dead-letter queue
    error: BaseException | None = None  # the refusal or failure behind a failed answer


@dataclass(frozen=True)
class Plan:
    """A batch decided: one verdict per message, the entries to write, what to remember."""

    verdicts: tuple[Verdict, ...]
    entries: tuple[LogEntry, ...]
    folds: dict[str, Folded]  # entry id -> the tentative fold, so the follower need not fold it again
    state: State  # the state once all the entries are applied
    refusals: tuple[tuple[RefusalKey, Reply], ...]  # new refusals to remember
    copies: tuple[tuple[CopyKey, RefusalKey], ...] = ()  # bytes that authenticated, for copies to come

    @property
    def answered(self) -> int:
        """How many messages of the batch get an answer (ticks do not)."""
        return sum(v.reply is not None for v in self.verdicts)


class Refusals:
    """The memory of refused answers (and of the bytes of commands that authenticated, so copies are
    answered cheaply), oldest forgotten first; read by the rules, written by their caller."""

    def __init__(self, limit: int = REJECTED_MEMORY, copies_limit: int = COPIES_MEMORY) -> None:
        self.limit = limit
        self.copies_limit = copies_limit
        self._replies: OrderedDict[RefusalKey, Reply] = OrderedDict()
        self._copies: OrderedDict[CopyKey, RefusalKey] = OrderedDict()

    def __len__(self) -> int:
        return len(self._replies)

    def get(self, key: RefusalKey) -> Reply | None:
        """The refusal remembered for this command id and digest, if any."""
        return self._replies.get(key)

    def copy_of(self, key: CopyKey) -> RefusalKey | None:
        """The id and digest of the command whose exact bytes hash to ``key``, if they authenticated lately."""
        return self._copies.get(key)

    def remember(self, items: Iterable[tuple[RefusalKey, Reply]],
                 copies: Iterable[tuple[CopyKey, RefusalKey]] = ()) -> None:
        """Keep these refusals (and authenticated bytes), forgetting the oldest beyond the limits."""
        for key, reply in items:
            self._replies[key] = reply
        while len(self._replies) > self.limit:
            self._replies.popitem(last=False)
        for raw, command in copies:
            self._copies[raw] = command
        while len(self._copies) > self.copies_limit:
            self._copies.popitem(last=False)


def dead_letter_reason(exc: BaseException) -> str | None:
    """Why a message refused with ``exc`` goes to the dead-letter queue, or None when it does not."""
    if isinstance(exc, UNHANDLEABLE):
        return str(exc)
    if isinstance(exc, errors.CommandRejected):
        return None
    return f"internal error: {exc!r}"


def make_entry(writer: Writer, state: State, events: Sequence[Any], at_ms: int, *, command_id: str | None = None,
               reply: dict[str, Any] | None = None, command: Envelope | None = None) -> LogEntry:
    """The next entry after ``state``, signed by the writer. ``at_ms`` is when it was decided, so deadlines
    it sets stay ahead of it."""
    entry = LogEntry(
        entry_id=writer.new_id(), epoch=writer.epoch, writer=writer.replica_id, expected_seq=state.seq + 1,
        prev_hash=state.head_hash, at_ms=at_ms, command_id=command_id, reply=reply,
        events=[e.model_dump(mode="json") for e in events],
        command=command.wire() if command is not None else None,
    )
    return entry.signed_by(writer.key) if writer.key is not None else entry


def turn_of(body: bytes, state: State) -> str:
    """Whose turn a command waits for: the registered user (or the operator) it claims to come from.

    Only claimed, and read without parsing the message, to keep the intake cheap under a flood (the
    signature is checked when the command is decided): a stranger may spend the share of a user it
    names, never anyone else's; commands naming nobody the ledger knows share one stranger's turn.
    """
    at = body.rfind(b'"sender":"')
    if at < 0:
        return STRANGER
    end = body.find(b'"', at + 10, at + 10 + 40)
    sender = body[at + 10:end].decode("ascii", "replace") if end > 0 else ""
    if not (sender == OPERATOR or sender in state.users):
        return STRANGER
    return f"user:{sender}"


def busy_budget() -> RateLimiter:
    """How many ``busy`` answers each turn may get (each costs the primary a signature): enough for every
    honest client over its share to hear it at once, few enough that a flood under one name costs little
    more than the acks. Past it, commands over their share are dropped unanswered, as before."""
    return RateLimiter(rate_per_s=BUSY_ANSWERS_PER_S, burst=BUSY_ANSWERS_BURST, max_keys=100_000)


def shed_reply(correlation_id: str | None, replica_id: str) -> Reply:
    """The answer to a command dropped unread because its sender has its share waiting: ``busy``, so the
    client backs off and sends the same bytes again later (nothing of it was decided)."""
    busy = errors.Busy("too many of this sender's commands are waiting; the command was not taken in: "
                       "send it again after a pause")
    return Reply.failure(correlation_id or "unknown", busy, replica_id)


@dataclass
class _Batch:
    """The batch being decided: the tentative state moves on with every entry."""

    writer: Writer
    ctx: Context
    refusals: Refusals
    state: State
    entries: list[LogEntry] = field(default_factory=list)
    folds: dict[str, Folded] = field(default_factory=dict)
    refused: dict[RefusalKey, Reply] = field(default_factory=dict)  # this batch's own, before the caller keeps them
    copies: dict[CopyKey, RefusalKey] = field(default_factory=dict)  # likewise
    ticked: bool = False
    applied: Callable[[str], dict[str, Any] | None] | None = None  # ids past the state's window (the store)

    def append(self, entry: LogEntry) -> None:
        before = self.state
        result = fold_entry(before, entry, self.writer.operator_key, self.writer.ledger_key)
        self.folds[entry.entry_id] = (before, result)
        self.entries.append(entry)
        self.state = result[1]

    def remembered(self, key: RefusalKey) -> Reply | None:
        return self.refused.get(key) or self.refusals.get(key)

    def copy_of(self, key: CopyKey) -> RefusalKey | None:
        return self.copies.get(key) or self.refusals.copy_of(key)

    def done(self, ident: str) -> dict[str, Any] | None:
        """The log's record of command ``ident`` (its seq, answer and digest), or None when never applied."""
        done = self.state.commands.get(ident)
        if done is None and self.applied is not None:
            # The state remembers ids for a window only (ledger.model.COMMAND_WINDOW); older ones are in the store.
            done = self.applied(ident)
        return done  # type: ignore[no-any-return]


def decide_batch(state: State, messages: Sequence[Incoming], ctx: Context, writer: Writer,
                 refusals: Refusals, applied: Callable[[str], dict[str, Any] | None] | None = None, *,
                 look_at_holds: bool = False) -> Plan:
    """Decide a batch of messages against ``state``, one after another, each seeing the entries before it.

    ``refusals`` is only read; the plan's ``refusals`` are the new ones for the caller to remember.
    ``look_at_holds`` expires overdue holds first, as a tick would (the primary's own look, see
    :data:`HOLD_LOOK_MS`); its entry has no verdict, and ticks of the batch are then skipped.
    """
    batch = _Batch(writer, ctx, refusals, state, applied=applied)
    if look_at_holds:
        _tick(batch)
    verdicts = tuple(_tick(batch) if m.tick else _command(batch, m) for m in messages)
    return Plan(verdicts=verdicts, entries=tuple(batch.entries), folds=batch.folds, state=batch.state,
                refusals=tuple(batch.refused.items()), copies=tuple(batch.copies.items()))


def _tick(batch: _Batch) -> Verdict:
    if batch.ticked:
        return Verdict(SKIPPED)
    batch.ticked = True
    events = expire_holds(batch.state, batch.ctx.now_ms)
    if not events:
        return Verdict(TICK)
    entry = make_entry(batch.writer, batch.state, events, batch.ctx.now_ms)
    batch.append(entry)
    return Verdict(TICK, entry=entry, events=tuple(events))


def _command(batch: _Batch, message: Incoming) -> Verdict:
    me = batch.writer.replica_id
    ident = message.correlation_id or "unknown"
    raw = hashlib.sha256(message.body).hexdigest()
    known = batch.copy_of(raw)
    if known is not None:
        copy = _answer_copy(batch, known)
        if copy is not None:
            return copy
    try:
        env = open_envelope(message.body)
        if env.kind != "command":
            raise errors.Malformed("a query was sent to the command queue")
        ident = env.id
        if expired(env, batch.ctx.now_ms) and batch.done(env.id) is None:
            return _expired(env, batch.ctx.now_ms, me)
        # Authenticate before answering from either memory: a stranger reusing an id learns nothing
        # and cannot plant a refusal for the owner of that id.
        authenticate(batch.state, env, batch.ctx)
    except errors.CommandRejected as exc:
        return Verdict(REJECTED, Reply.failure(ident, exc, me), dead_letter=dead_letter_reason(exc), error=exc)
    except Exception as exc:  # whatever the bytes do to a parser, the ledger goes on
        return Verdict(REJECTED, Reply.failure(ident, errors.Malformed(f"message does not parse: "
                                                                       f"{type(exc).__name__}"), me),
                       dead_letter=f"unparseable: {exc!r}", error=exc)
    mine = command_digest(env.wire())
    batch.copies[raw] = (env.id, mine)
    done = batch.done(env.id)
    if done is not None:
        if done.get("digest", mine) != mine:
            # Another command took this id first: its answer is not this one's to have.
            taken = errors.IdInUse(f"command id {env.id} was used by another command; send it again under a new id")
            return Verdict(DUPLICATE, Reply.failure(env.id, taken, me), error=taken)
        return Verdict(DUPLICATE, Reply(id=env.id, ok=True, seq=done["seq"], result=done["result"], served_by=me))
    remembered = batch.remembered((env.id, mine))
    if remembered is not None:
        return Verdict(REMEMBERED, remembered)
    if expired(env, batch.ctx.now_ms):  # checked again: it might have been a copy of an id applied meanwhile
        return _expired(env, batch.ctx.now_ms, me)
    try:
        decision = decide(batch.state, env, batch.ctx, authenticated=True)
    except errors.CommandRejected as exc:
        reply = Reply.failure(env.id, exc, me)
        batch.refused[(env.id, mine)] = reply
        return Verdict(REFUSED, reply, dead_letter=dead_letter_reason(exc), error=exc)
    except Exception as exc:  # a bug must not stop the ledger: dead-letter the command, answer, go on
        internal = errors.RemoteError("internal error; the command was not applied", code="internal")
        return Verdict(FAILED, Reply.failure(env.id, internal, me), dead_letter=dead_letter_reason(exc), error=exc)
    if not decision.events:
        return Verdict(DECIDED, Reply(id=env.id, ok=True, seq=batch.state.seq, result=decision.result, served_by=me),
                       decision=decision)
    entry = make_entry(batch.writer, batch.state, decision.events, batch.ctx.now_ms, command_id=env.id,
                       reply=decision.result, command=env)
    batch.append(entry)
    return Verdict(DECIDED, Reply(id=env.id, ok=True, result=decision.result, served_by=me), entry=entry,
                   events=tuple(decision.events), decision=decision)


def _answer_copy(batch: _Batch, known: RefusalKey) -> Verdict | None:
    """A copy of bytes that authenticated before: the log's answer or the remembered refusal, if either has
    it; None sends the copy down the full path (its original was not answered yet, or is forgotten)."""
    ident, mine = known
    done = batch.done(ident)
    if done is not None and done.get("digest", mine) == mine:
        return Verdict(DUPLICATE, Reply(id=ident, ok=True, seq=done["seq"], result=done["result"],
                                        served_by=batch.writer.replica_id))
    remembered = batch.remembered(known)
    return Verdict(REMEMBERED, remembered) if remembered is not None else None


def _expired(env: Envelope, now_ms: int, me: str) -> Verdict:
    late = (now_ms - (env.deadline or now_ms)) / 1000
    exc = errors.Expired(f"{env.payload.type} {env.id} reached the ledger {late:.1f} s after its sender's deadline "
                         f"and was not applied (if this machine's clock is behind the ledger's, set it right)")
    return Verdict(EXPIRED, Reply.failure(env.id, exc, me), error=exc)

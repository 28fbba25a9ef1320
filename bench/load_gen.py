"""One load generator process of ``acb bench load``: its share of the users, open loop.

Each user acts at exponentially distributed intervals (mean ``mean_interval``), whether or not
its earlier requests were answered. A scheduler thread hands each request, at its scheduled
time, to a pool of sender threads, each with its own broker connection; the pool grows when
every sender is busy (up to ``max_senders``), so a slow ledger does not slow the arrivals down.
Latency is measured from the scheduled time, so time spent waiting for a free sender counts
(no coordinated omission).

A user told ``busy`` (the ledger's answer ``busy``, or the broker turning the request away at a full
queue, recorded as ``queue_full``) takes that as this request's answer and comes back at its next
arrival, as a person would: the open-loop schedule is its backoff, with jitter. The client library's
own backoff would keep the request, and its sender, for up to the whole patience (30 s); past twice
the capacity every sender would be held so, and the generator, not the ledger, would be what binds.

The process reports to its parent over a multiprocessing queue: ``("ready", i)`` once its senders
are connected, ``("records", i, [...])`` about once a second, and ``("done", i, cpu_seconds,
senders, problem)`` at the end. A record is ``(kind, scheduled, sent, answered, code, command_id,
heard)`` with ``time.monotonic()`` times (one clock for every process of the machine); ``code`` is
``ok``, the ledger's error code, or ``timeout``/``unavailable`` when no answer came; ``command_id``
is set on acknowledged writes only. ``heard`` is when the user first heard anything: the answer, or
the first ``busy`` (an answer, or the broker's nack at a full queue) after which the client backed
off and tried again; under overload that is the "clear busy" a user sees long before giving up.
"""
from __future__ import annotations

import heapq
import os
import queue
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.load_mix import Account, Action, UserState, answered, choose
from broker import queries as q
from broker.client import Backoff, BrokerClient
from broker.envelope import now_ms, seal
from broker.errors import BrokerError, BrokerUnavailable, Busy, ReplyTimeout
from broker.topology import Names
from broker.trust import Trust

__all__ = ["GenSpec", "Record", "run_generator"]

Record = tuple[str, float, float, float, str, str, float]
_FLUSH_EVERY = 1.0  # seconds between record batches sent to the parent
# A pause no patience covers: the client returns the first `busy` (or raises at the first nack) at once.
_TAKE_BUSY = Backoff(base=1e9, cap=1e9, floor=1.0)


@dataclass(frozen=True)
class GenSpec:
    """Everything one generator process needs; picklable (it crosses a spawn)."""

    index: int
    url: str
    prefix: str
    home: str  # holds the operator's trust (key and roster) that replies are checked against
    users: tuple[Account, ...]
    shops: tuple[Account, ...]
    ledger_box_key: bytes
    duration: float
    mean_interval: float
    seed: int
    timeout: float = 30.0  # a client's patience: past this a request counts as unanswered
    senders: int = 8  # connected before the start
    max_senders: int = 128


class _Generator:
    def __init__(self, spec: GenSpec, out: Any) -> None:
        self.spec = spec
        self.out = out
        self.names = Names(spec.prefix)
        self.work: queue.Queue[tuple[Action, float] | None] = queue.Queue()
        self.lock = threading.Lock()
        self.idle = 0
        self.senders: list[threading.Thread] = []
        self.records: list[Record] = []
        self.states = [UserState() for _ in spec.users]
        self.ready = threading.Semaphore(0)
        self.problem = ""

    # -- senders ---------------------------------------------------------------------------------
    def add_sender(self) -> None:
        t = threading.Thread(target=self._sender, name=f"load-sender-{len(self.senders)}", daemon=True)
        self.senders.append(t)
        t.start()

    def _sender(self) -> None:
        client = BrokerClient(self.spec.url, self.names, trust=Trust.load(Path(self.spec.home)), backoff=_TAKE_BUSY)
        try:
            try:  # connect (and learn the roster) before the clock starts
                client.request(seal(q.LedgerInfo(), sender="anonymous", key=None, kind="query"), timeout=30)
            except BrokerError as exc:
                self.problem = self.problem or f"a sender could not reach the ledger: {exc}"
            with self.lock:
                self.idle += 1
            self.ready.release()
            while True:
                item = self.work.get()
                if item is None:
                    return
                with self.lock:
                    self.idle -= 1
                self._send(client, *item)
                with self.lock:
                    self.idle += 1
        finally:
            client.close()

    def _send(self, client: BrokerClient, action: Action, scheduled: float) -> None:
        spec = self.spec
        sent = time.monotonic()
        if sent - scheduled >= spec.timeout:
            # The user gave up while the request waited for a sender: the generator fell behind, not the ledger.
            # Sending it anyway would cost a sender half a second for an answer nobody waits for, and so put
            # the generator further behind with every request.
            with self.lock:
                answered(self.states[action.user], action.kind, False)
                self.records.append((action.kind, scheduled, sent, sent, "generator_late", "", sent))
            return
        left = max(0.5, scheduled + spec.timeout - sent)
        key = action.signer.sign_key() if action.signer is not None else None
        env = seal(action.payload, sender=action.signer.login if action.signer else "anonymous", key=key,
                   kind="query" if action.query else "command", deadline=now_ms() + int(left * 1000))
        cid = ""
        before = client.busy_pauses
        heard: list[float] = []

        def on_wait(_elapsed: float) -> None:
            # Called before each pause; a new busy pause means a `busy` (or a nack) was just heard.
            if not heard and client.busy_pauses > before:
                heard.append(time.monotonic())

        try:
            reply = client.request(env, timeout=left, on_wait=on_wait)
            code = "ok" if reply.ok else str((reply.error or {}).get("code", "rejected"))
            if reply.ok and not action.query:
                cid = env.id
        except ReplyTimeout:
            code = "timeout"
        except BrokerUnavailable:
            code = "unavailable"
        except Busy:
            code = "queue_full"  # the broker's nack: the queue was at its bound
        except BrokerError as exc:
            code = type(exc).__name__
        except Exception as exc:  # a sender that died of a surprise would shrink the pool unseen: record it, go on
            code = type(exc).__name__
        done = time.monotonic()
        with self.lock:
            answered(self.states[action.user], action.kind, code == "ok")
            self.records.append((action.kind, scheduled, sent, done, code, cid, heard[0] if heard else done))

    # -- the schedule ----------------------------------------------------------------------------
    def schedule(self, start: float) -> None:
        """Hand every arrival before ``start + duration`` to the senders at its time."""
        spec = self.spec
        rng = random.Random(spec.seed)
        rate = 1.0 / spec.mean_interval
        arrivals = [(start + rng.expovariate(rate), i) for i in range(len(spec.users))]
        heapq.heapify(arrivals)
        end = start + spec.duration
        while arrivals and arrivals[0][0] < end:
            at, i = heapq.heappop(arrivals)
            wait = at - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # the schedule itself: arrivals are due at fixed times
            with self.lock:
                action = choose(rng, i, spec.users[i], self.states[i], spec.shops, spec.ledger_box_key)
                grow = self.idle <= self.work.qsize() and len(self.senders) < spec.max_senders
            self.work.put((action, at))
            if grow:
                self.add_sender()
            heapq.heappush(arrivals, (at + rng.expovariate(rate), i))

    def flush(self) -> None:
        with self.lock:
            batch, self.records = self.records, []
        if batch:
            self.out.put(("records", self.spec.index, batch))


def run_generator(spec: GenSpec, out: Any, go: Any, start: Any) -> None:
    """The generator process: connect, say ready, wait for ``go``, run the schedule from ``start.value``."""
    gen = _Generator(spec, out)
    for _ in range(spec.senders):
        gen.add_sender()
    for _ in range(spec.senders):
        gen.ready.acquire()
    out.put(("ready", spec.index))
    if not go.wait(300):  # the parent gave up (or died) before the start: nothing to do
        return
    stop = threading.Event()

    def flusher() -> None:
        while not stop.wait(_FLUSH_EVERY):
            gen.flush()

    f = threading.Thread(target=flusher, name="load-flusher", daemon=True)
    f.start()
    try:
        gen.schedule(float(start.value))
    except BaseException as exc:  # reported to the parent, which decides
        gen.problem = gen.problem or f"generator {spec.index} failed: {exc!r}"
    for _ in gen.senders:
        gen.work.put(None)
    for t in gen.senders:
        t.join()
    stop.set()
    f.join()
    gen.flush()
    times = os.times()
    out.put(("done", spec.index, times.user + times.system, len(gen.senders), gen.problem))

"""The bare loop: the least work any ledger must do per command, measured on the same machine and broker.

Read a signed command from a quorum queue, verify its signature, append it to a SQLite store
(:class:`ledger.store.Store`, as the replicas' own), append the event to a stream and wait for the
broker's confirm, then acknowledge the command. Group commit: whatever arrived together (at most
``batch``) is verified one by one, written in one transaction, appended to the stream together and
acknowledged with one ``multiple`` ack. No state, no rules, no replies, no backups: this is the
ceiling the ledger's own rate (``ledger_cps``) is compared with.

It runs over the broker seam (:mod:`broker.transport`, so it pays what the ledger pays for its
stream appends) in objects of its own (prefix ``bare``) in the run's vhost, with the vhost's
administrator account (the role accounts may not make objects outside the deployment's prefix).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import commands as c
from broker.codec import canonical
from broker.envelope import open_envelope, seal, verify
from broker.rabbitmq import RabbitMQ
from broker.topology import Names
from broker.transport import Delivery
from ledger.store import Row, Store

__all__ = ["BareResult", "bare_loop"]


@dataclass(frozen=True)
class BareResult:
    """``commands`` went through the loop in ``seconds`` (first delivery to last acknowledgement)."""

    commands: int
    seconds: float

    @property
    def cps(self) -> float:
        return self.commands / self.seconds if self.seconds > 0 else 0.0


def bare_loop(url: str, work: Path, key: Ed25519PrivateKey, *, commands: int = 3000, batch: int = 500,
              timeout: float = 120.0) -> BareResult:
    """Send ``commands`` operator-signed deposits to a queue of our own, then time the loop over them."""
    names = Names("bare")
    public = key.public_key().public_bytes_raw()
    bodies = [seal(c.Deposit(account="bare", amount=1), sender=c.OPERATOR, key=key).to_bytes()
              for _ in range(commands)]
    store = Store(f"sqlite:///{work / 'bare.db'}")
    transport = RabbitMQ(url)
    producer = transport.open("acb-bench-bare-producer")
    link = transport.open("acb-bench-bare-loop")
    try:
        producer.declare(names)
        for body in bodies:
            producer.publish(names.commands, "command", body, persistent=True, type="command")
        producer.process(0)  # push the last publishes out before the clock starts
        arrived: list[Delivery] = []
        link.consume(names.commands, arrived.append, prefetch=batch)
        done, seq, prev = 0, 0, "0" * 64
        started: float | None = None
        deadline = time.monotonic() + timeout
        while done < commands and time.monotonic() < deadline:
            link.process(0.05)
            if not arrived:
                continue
            started = started or time.perf_counter()
            taken, arrived[:] = list(arrived), []
            rows, events = [], []
            for d in taken:
                env = open_envelope(d.body)
                verify(env, public)
                seq += 1
                payload = {"type": "deposited", "account": "bare", "amount": 1, "command": env.id}
                digest = hashlib.sha256(prev.encode() + canonical(payload)).hexdigest()
                rows.append(Row(seq, 1, env.issued_at, env.id, "deposited", 1, payload, {"ok": True}, prev, digest))
                events.append(canonical({"seq": seq, "hash": digest, "event": payload}))
                prev = digest
            store.append(rows, {"bare_head": str(seq)})
            link.append(names.log, events)
            link.ack(taken[-1].tag, multiple=True)
            done += len(taken)
        seconds = time.perf_counter() - (started or time.perf_counter())
    finally:
        link.close()
        producer.close()
        store.close()
    return BareResult(done, seconds)

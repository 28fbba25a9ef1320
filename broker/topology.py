"""Every exchange and queue ACB uses, declared in one place.

    clients --(command)--> {p}.commands exchange --> {p}.commands   quorum queue, single active consumer:
                                                                    whoever holds it is the primary
    primary --(log batch)--> {p}.log                                stream: the replicated event log
    clients --(query)-->  {p}.reads exchange --> {p}.reads          classic queue shared by replicas;
                                                                    backups consume at higher priority
    primary --(snapshot)--> {p}.snapshots                          stream: verified state snapshots, so a
                                                                    replica with an empty store joins fast
    replicas --(status)--> {p}.status                               fanout, read by `acb status` and the console
    unhandleable messages --> {p}.dlx --> {p}.dlq                   with the reason in a header

The prefix isolates one deployment (or one test) from another on the same vhost.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Names", "declare", "delete", "BACKUP_PRIORITY", "PRIMARY_PRIORITY"]

BACKUP_PRIORITY = 10
PRIMARY_PRIORITY = 0


@dataclass(frozen=True)
class Names:
    """Names of one deployment's broker objects, all under one prefix."""

    prefix: str = "acb"

    @property
    def commands(self) -> str:
        return f"{self.prefix}.commands"

    @property
    def log(self) -> str:
        return f"{self.prefix}.log"

    @property
    def snapshots(self) -> str:
        return f"{self.prefix}.snapshots"

    @property
    def reads(self) -> str:
        return f"{self.prefix}.reads"

    @property
    def status(self) -> str:
        return f"{self.prefix}.status"

    @property
    def dlx(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq"


def declare(channel: Any, names: Names) -> None:
    """Declare the whole topology (idempotent; arguments must match existing objects)."""
    channel.exchange_declare(names.dlx, exchange_type="fanout", durable=True)
    channel.queue_declare(names.dlq, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(names.dlq, names.dlx)

    channel.exchange_declare(names.commands, exchange_type="direct", durable=True)
    channel.queue_declare(
        names.commands,
        durable=True,
        # No x-dead-letter-exchange: the primary dead-letters by hand, with the reason, and
        # expired ticks (see ledger.replica) must vanish rather than fill the dead-letter queue.
        arguments={"x-queue-type": "quorum", "x-single-active-consumer": True},
    )
    channel.queue_bind(names.commands, names.commands, routing_key="command")

    channel.queue_declare(names.log, durable=True, arguments={"x-queue-type": "stream"})
    # Only the newest snapshots matter: keep the stream small.
    channel.queue_declare(names.snapshots, durable=True, arguments={
        "x-queue-type": "stream",
        "x-max-length-bytes": 512 * 1024 * 1024,
        "x-stream-max-segment-size-bytes": 16 * 1024 * 1024,
    })

    channel.exchange_declare(names.reads, exchange_type="direct", durable=True)
    # Reads are cheap to repeat and useless when old: drop them after a while rather than pile up.
    channel.queue_declare(names.reads, durable=True, arguments={"x-message-ttl": 30_000})
    channel.queue_bind(names.reads, names.reads, routing_key="query")

    channel.exchange_declare(names.status, exchange_type="fanout", durable=False, auto_delete=False)


def delete(channel: Any, names: Names) -> None:
    """Remove a deployment's objects (tests and the demo clean up with this)."""
    for queue in (names.commands, names.log, names.snapshots, names.reads, names.dlq):
        channel.queue_delete(queue)
    for exchange in (names.commands, names.reads, names.status, names.dlx):
        channel.exchange_delete(exchange)

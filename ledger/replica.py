"""One ledger replica process: follower, command processor, read server and status, wired together.

``acb ledger run`` started N times gives one primary and N-1 backups. Each
replica publishes its status once a second, and with it a *tick* into the
commands queue: whoever holds the queue receives the ticks, learns it is the
primary even with no client about, and expires holds on its own clock.
Ticks live at most three tick intervals in the queue, so behind a backlog they
vanish unseen; the primary then looks at the holds itself, every
:data:`ledger.intake.HOLD_LOOK_MS` of its clock while it decides commands.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from broker import commands as c
from broker.client import BrokerClient
from broker.codec import canonical
from broker.envelope import seal
from broker.errors import BrokerError
from broker.rabbitmq import RabbitMQ
from broker.topology import Names
from broker.transport import Transport
from broker.trust import raw_public, signed
from catalog import Catalog
from ledger.follower import Follower
from ledger.handlers import Context
from ledger.keys import SystemKeys
from ledger.primary import TICK, CommandProcessor
from ledger.reads import ReadServer
from ledger.store import Store

__all__ = ["Replica", "ReplicaConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaConfig:
    replica_id: str
    broker_url: str
    store_url: str
    names: Names
    hold_ttl_ms: int = 15 * 60 * 1000
    snapshot_every: int = 5000
    status_interval: float = 1.0
    tick_interval: float = 0.5
    # The commands connection's AMQP heartbeat timeout, in whole seconds: the failure detector of a hung or
    # cut-off primary. RabbitMQ checks every timeout for bytes received and drops the connection after two
    # silent checks, so 2 to 3 timeouts after the primary stopped (measured: 2.0 to 3.0 s at 1), and only
    # then hands the commands queue on. 1, the smallest the protocol allows, is the only value that keeps
    # a hung primary's replacement near 3 s; 2 would mean 4 to 6 s. A slow primary is not at risk from so
    # short a timeout: its heartbeats go out from the link's own thread (every half second), so it would
    # have to get no CPU at all for two whole seconds to be dropped. A killed primary is not waited for:
    # its socket closes at once and the queue moves within milliseconds.
    heartbeat: int = 1


class Replica:
    """The composition root of a ledger process."""

    def __init__(self, config: ReplicaConfig, keys: SystemKeys, transport: Transport | None = None) -> None:
        self.config = config
        # The broker seam: RabbitMQ at the configured URL unless a test hands in another.
        self.transport = transport if transport is not None else RabbitMQ(config.broker_url)
        self.keys = keys
        self.key = keys.replica_key(config.replica_id)  # refuses to start uncertified
        self.trust = keys.trust()
        self.store = Store(config.store_url)
        self.catalog = Catalog()
        self.follower = Follower(self.store, self.transport, config.names, config.replica_id, self.trust,
                                 self.key, snapshot_every=config.snapshot_every, ledger_key=keys.ledger_key)
        self.follower.listeners.append(self.catalog.on_rows)
        self.commands = CommandProcessor(self.follower, self.transport, config.names, config.replica_id,
                                         self._context, self.key, self.trust, heartbeat=config.heartbeat)
        self.reads = ReadServer(self.follower, self.transport, config.names, config.replica_id, keys,
                                self.catalog, lambda: self.commands.is_primary, self.key, self.trust)
        self.commands.on_role_change = self.reads.role_changed
        self.follower.publish_snapshots = lambda: self.commands.is_primary
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = time.monotonic()

    def _context(self) -> Context:
        return Context(operator_key=self.keys.operator_public, ledger_key=self.keys.ledger_key,
                       now_ms=int(time.time() * 1000), hold_ttl_ms=self.config.hold_ttl_ms,
                       retired_sale=self.store.retired_sale)

    def start(self) -> None:
        self.follower.recover()
        self.follower.join_from_snapshot()
        state = self.follower.state
        self.catalog.rebuild(state.documents)
        log.info("replica %s recovered seq %d from %s", self.config.replica_id, state.seq, self.store.safe_url)
        for name, target in (("follower", self.follower.run), ("commands", self.commands.run),
                             ("reads", self.reads.run), ("status", self._status_loop)):
            t = threading.Thread(target=target, args=(self.stop_event,), name=f"{self.config.replica_id}-{name}",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        # Not among the watched threads: it ends once the log knows this replica's key.
        threading.Thread(target=self._announce_roster, name=f"{self.config.replica_id}-roster", daemon=True).start()

    def _announce_roster(self) -> None:
        """Tell the log about a roster newer than its own (this replica was just certified), when the operator's
        key is on this machine; otherwise the operator's `acb operator replica add` has sent it already."""
        operator_key = self.keys.operator_key()
        if operator_key is None:
            return
        while not self.stop_event.is_set():
            roster, mine = self.follower.state.roster, self.trust.roster
            if mine is None or (roster is not None and roster.serial >= mine.serial):
                return
            if self.follower.state.primary is not None:
                try:
                    env = seal(c.SetRoster(roster=mine.to_wire()), sender=c.OPERATOR, key=operator_key)
                    with BrokerClient(self.config.broker_url, self.config.names, trust=self.trust) as client:
                        client.request(env, timeout=10)
                except BrokerError as exc:
                    log.info("roster %d not announced yet: %s", mine.serial, exc)
            self.stop_event.wait(1.0)

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join(timeout)
        self.follower.wait_for_snapshot()
        self.store.close()

    def removed(self) -> bool:
        """True once the log's roster no longer certifies this replica's key: the operator removed it."""
        roster = self.follower.state.roster
        return roster is not None and roster.key_of(self.config.replica_id) != raw_public(self.key) and (
            self.trust.roster is None or roster.serial >= self.trust.serial)

    def run_forever(self) -> int:
        """Run until SIGTERM/SIGINT; exit code 3 if the replica halted on a broken log, 5 if it was removed."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        self.start()
        died: list[str] = []
        removed = False
        while not self.stop_event.wait(0.5):
            if self.follower.halted is not None:
                break
            if self.removed():
                removed = True
                log.critical("replica %s was removed from the operator's roster; stopping", self.config.replica_id)
                break
            died = [t.name for t in self._threads if not t.is_alive()]
            if died:
                # A replica missing a part must not pretend to be whole: exit so a supervisor restarts it.
                log.critical("replica %s lost its %s thread; exiting", self.config.replica_id, ", ".join(died))
                break
        halted = self.follower.halted
        self.stop()
        return 3 if halted else 4 if died else 5 if removed else 0

    # -- status ------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        st = self.follower.state
        role = "halted" if self.follower.halted else ("primary" if self.commands.is_primary else "backup")
        return {
            "type": "replica_status", "replica": self.config.replica_id, "role": role, "epoch": st.epoch,
            "primary": st.primary, "seq": st.seq, "head_hash": st.head_hash,
            "applied_events": self.follower.applied_events,
            "commands_handled": self.commands.commands_handled, "reads_served": self.reads.served,
            "store": self.store.safe_url, "host": socket.gethostname(), "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self._started, 1), "halted": self.follower.halted,
            "joined_from_snapshot": self.follower.joined_from_snapshot,
            "ignored": dict(self.follower.ignored),
            "at_ms": int(time.time() * 1000),
        }

    def _status_loop(self, stop: threading.Event) -> None:
        last_status = 0.0
        last_counts = (0, 0.0)
        while not stop.is_set():
            try:
                link = self.transport.open(f"acb-status-{self.config.replica_id}", heartbeat=5)
            except (OSError, BrokerError) as exc:
                if stop.is_set():
                    return
                log.warning("status publisher cannot reach the broker (%r); trying again", exc)
                time.sleep(0.5)
                continue
            try:
                link.declare(self.config.names)
                while not stop.is_set():
                    now = time.monotonic()
                    if self.follower.halted is None:
                        # Ticks only matter to whoever holds the commands queue; stale ones vanish.
                        link.publish(self.config.names.commands, "command", b"{}", type=TICK,
                                     expiration=str(int(self.config.tick_interval * 3000)))
                    if now - last_status >= self.config.status_interval:
                        status = self.status()
                        handled, then = last_counts
                        rate = (status["commands_handled"] - handled) / max(now - then, 1e-3)
                        status["commands_per_s"] = round(rate, 1)
                        last_counts = (status["commands_handled"], now)
                        body = canonical(signed(self.key, self.config.replica_id, status, "status"))
                        link.publish(self.config.names.status, "", body)
                        last_status = now
                    link.process(self.config.tick_interval)
            except (OSError, BrokerError) as exc:
                if stop.is_set():
                    return
                log.warning("status publisher lost the broker (%r); reconnecting", exc)
                time.sleep(0.5)
            finally:
                link.close()

"""The broker is a trust boundary: each role can do what it needs and nothing else.

Every attempt below is made as an attacker would, with raw pika and the peer role's credentials (what
every peer holds), against a real replica running on the replica role's credentials. The broker itself
refuses (403 ACCESS_REFUSED, or 406 for an oversized message), and afterwards the replica still answers
with its log unchanged. The queue bounds are checked by publishing past them.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import stat
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pika
import pika.exceptions
import pytest

from broker import commands as c
from broker import queries as q
from broker.admin import (
    MAX_MESSAGE_SIZE,
    ROLES,
    BrokerRoles,
    Limits,
    broker_json_path,
    cmd_broker_setup,
    peer_url_path,
    permissions,
    read_roles,
    remove_roles,
    write_roles,
)
from broker.client import BrokerClient
from broker.envelope import seal
from broker.errors import Busy, ConfigurationError
from broker.settings import Settings
from tests.support.broker_roles import RoleVhost, admin_api, role_vhost
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

Action = Callable[[Any], Any]


@dataclass
class Running:
    """A role vhost with one replica (r1) on the replica role, and a peer client on the peer role."""

    rv: RoleVhost
    home: Path
    replica: Any
    peer: Any  # peer.client.Client over the peer role

    @property
    def names(self) -> Any:
        return self.rv.names

    def head(self) -> int:
        return int(self.replica.store.head()[0])

    def answers(self) -> dict[str, Any]:
        """The ledger still answers a peer's query over direct reply-to."""
        return dict(self.peer.ask(q.LedgerInfo(), signed=False, timeout=20))


@pytest.fixture(scope="module")
def replica_on_roles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """r1 primary on a role vhost of the module's own, and a peer client (not the transfer tests' ``running``)."""
    from ledger.keys import init_system, load_system
    from ledger.replica import Replica, ReplicaConfig
    from peer.client import Client

    home = tmp_path_factory.mktemp("acb-roles")
    init_system(home)
    with role_vhost() as rv:
        config = ReplicaConfig("r1", rv.replica_url, f"sqlite:///{home / 'r1.db'}", rv.names, status_interval=0.5)
        replica = Replica(config, load_system(home))
        replica.start()
        broker = BrokerClient(rv.peer_url, rv.names, trust=load_system(home).trust())
        try:
            peer = Client(broker, home)
            ready = Running(rv, home, replica, peer)
            # The first answers may come before r1 takes the queue.
            wait_for(lambda: ready.answers()["primary"] == "r1", 30, "r1 to become primary", interval=0.05)
            yield ready
        finally:
            broker.close()
            replica.stop()


def _channel(url: str) -> tuple[pika.BlockingConnection, Any]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()  # a publish waits for the broker's verdict, so a refusal surfaces here
    return conn, ch


def refused(url: str, action: Action) -> pika.exceptions.ChannelClosedByBroker:
    """Run ``action`` on a fresh channel as the holder of ``url``; return the broker's refusal."""
    conn, ch = _channel(url)
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            action(ch)
        return info.value
    finally:
        if conn.is_open:
            conn.close()


def assert_access_refused(url: str, action: Action) -> None:
    err = refused(url, action)
    assert err.reply_code == 403, err
    assert err.reply_text.startswith("ACCESS_REFUSED"), err


def allowed(url: str, action: Action) -> Any:
    conn, ch = _channel(url)
    try:
        return action(ch)
    finally:
        if conn.is_open:
            conn.close()


def queues(rv: RoleVhost) -> set[str]:
    return {item["name"] for item in rv.api.request("GET", f"/queues/{urllib.parse.quote(rv.vhost, safe='')}")}


def exchanges(rv: RoleVhost) -> set[str]:
    return {item["name"] for item in rv.api.request("GET", f"/exchanges/{urllib.parse.quote(rv.vhost, safe='')}")}


def bindings(rv: RoleVhost) -> list[tuple[str, str, str]]:
    found = rv.api.request("GET", f"/bindings/{urllib.parse.quote(rv.vhost, safe='')}")
    return sorted((b["source"], b["destination"], b["routing_key"]) for b in found)


def topology_of(rv: RoleVhost) -> tuple[set[str], set[str], list[tuple[str, str, str]]]:
    return queues(rv), exchanges(rv), bindings(rv)


def _get(queue: str) -> Action:
    return lambda ch: ch.basic_get(queue)


def consume(queue: str, **arguments: Any) -> Action:
    def action(ch: Any) -> None:
        ch.basic_qos(prefetch_count=10)
        ch.basic_consume(queue, lambda *_: None, arguments=arguments or None)
    return action


# -- what a peer can no longer do -------------------------------------------------------------------

def test_the_peer_can_still_send_commands_and_queries_and_get_replies(replica_on_roles: Running) -> None:
    info = replica_on_roles.answers()
    assert info["primary"] == "r1"
    before = replica_on_roles.head()
    replica_on_roles.peer.register("alice", "alice-password-1")  # a command, answered once its entry is in the log
    assert replica_on_roles.head() > before
    assert replica_on_roles.peer.balance()["available"] == 0  # a signed private query


def test_a_peer_cannot_declare_bind_or_delete_anything(replica_on_roles: Running) -> None:
    rv, n = replica_on_roles.rv, replica_on_roles.names
    replica_on_roles.answers()  # the replica has declared everything
    before = topology_of(rv)
    assert {n.commands, n.log, n.snapshots, n.reads, n.dlq} <= before[0]
    assert {n.commands, n.reads, n.status, n.dlx} <= before[1]

    attempts: dict[str, Action] = {
        "declare a queue": lambda ch: ch.queue_declare(f"{n.prefix}.evil", durable=True),
        "declare a server-named queue": lambda ch: ch.queue_declare("", exclusive=True),
        "declare a stream": lambda ch: ch.queue_declare(f"{n.prefix}.log2", durable=True,
                                                        arguments={"x-queue-type": "stream"}),
        "declare an exchange": lambda ch: ch.exchange_declare(f"{n.prefix}.evil", exchange_type="fanout"),
        "re-declare the commands exchange": lambda ch: ch.exchange_declare(n.commands, exchange_type="direct",
                                                                          durable=True),
        "bind the commands queue to the reads exchange": lambda ch: ch.queue_bind(n.commands, n.reads, "query"),
        "bind the reads queue to the status fanout": lambda ch: ch.queue_bind(n.reads, n.status),
        "bind exchanges": lambda ch: ch.exchange_bind(n.commands, n.reads, "query"),
        "unbind the commands queue": lambda ch: ch.queue_unbind(n.commands, n.commands, "command"),
        "delete the commands queue": lambda ch: ch.queue_delete(n.commands),
        "delete the log stream": lambda ch: ch.queue_delete(n.log),
        "delete the snapshots stream": lambda ch: ch.queue_delete(n.snapshots),
        "purge the commands queue": lambda ch: ch.queue_purge(n.commands),
        "delete the commands exchange": lambda ch: ch.exchange_delete(n.commands),
        "delete the status exchange": lambda ch: ch.exchange_delete(n.status),
    }
    for what, action in attempts.items():
        err = refused(rv.peer_url, action)
        assert (err.reply_code, err.reply_text.split(" ")[0]) == (403, "ACCESS_REFUSED"), what

    assert topology_of(rv) == before
    assert replica_on_roles.answers()["primary"] == "r1"


def test_a_peer_cannot_consume_or_read_any_queue_or_stream(replica_on_roles: Running) -> None:
    n = replica_on_roles.names
    head = replica_on_roles.head()
    for queue, extra in [(n.commands, {}), (n.reads, {}), (n.dlq, {}), (n.log, {"x-stream-offset": "first"}),
                         (n.snapshots, {"x-stream-offset": "first"})]:
        assert_access_refused(replica_on_roles.rv.peer_url, consume(queue, **extra))
    for queue in (n.commands, n.reads, n.dlq):
        assert_access_refused(replica_on_roles.rv.peer_url, _get(queue))
    # The primary still holds the commands queue: a command is answered by r1, and nothing was taken.
    replica_on_roles.peer.register("bob", "bob-password-12")
    assert replica_on_roles.head() > head
    assert replica_on_roles.answers()["primary"] == "r1"


def test_a_peer_cannot_write_into_the_log_or_fake_a_status(replica_on_roles: Running) -> None:
    rv, n = replica_on_roles.rv, replica_on_roles.names
    replica_on_roles.answers()
    head = replica_on_roles.head()
    forged_status = json.dumps({"replica": "r1", "role": "primary", "seq": 10**9, "epoch": 99}).encode()

    reader, reader_ch = _channel(rv.operator_url)
    try:
        status_queue = reader_ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
        reader_ch.queue_bind(status_queue, n.status)

        assert_access_refused(rv.peer_url, lambda ch: ch.basic_publish(
            "", n.log, b'{"entry_id": "forged", "epoch": 99, "writer": "r1", "events": []}'))
        assert_access_refused(rv.peer_url, lambda ch: ch.basic_publish("", n.snapshots, b"{}"))
        assert_access_refused(rv.peer_url, lambda ch: ch.basic_publish("", n.commands, b"{}"))
        assert_access_refused(rv.peer_url, lambda ch: ch.basic_publish(n.status, "", forged_status))
        assert_access_refused(rv.peer_url, lambda ch: ch.basic_publish(n.dlx, "command", b"junk"))
        # Replies go to reply-to queues through the default exchange: a peer cannot answer for a replica.
        assert_access_refused(rv.peer_url, lambda ch: ch.basic_publish("", "amq.rabbitmq.reply-to.forged", b"{}"))

        # What reaches the status fanout after the attempts is r1's own status, never the forgery.
        seen: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(seen) < 2:
            assert time.monotonic() < deadline, "no status from r1"
            method, _props, body = reader_ch.basic_get(status_queue, auto_ack=True)
            if method is None:
                reader.process_data_events(time_limit=0.05)
                continue
            seen.append(body)
        assert forged_status not in seen
    finally:
        reader.close()
    assert replica_on_roles.head() == head
    assert replica_on_roles.answers()["primary"] == "r1"


def test_a_message_above_the_maximum_size_is_refused_by_the_broker(replica_on_roles: Running) -> None:
    n = replica_on_roles.names
    head = replica_on_roles.head()
    err = refused(replica_on_roles.rv.peer_url, lambda ch: ch.basic_publish(n.commands, "command", b"x" * (MAX_MESSAGE_SIZE + 1)))
    assert err.reply_code == 406 and "larger than configured max size" in err.reply_text, err
    assert replica_on_roles.head() == head
    assert replica_on_roles.answers()["primary"] == "r1"


def test_the_largest_legitimate_command_fits_the_message_size_limit() -> None:
    # A dispute carries one whole segment (at most 4 MiB, base64) with its manifest entry.
    from broker.segments import LARGE_SEGMENT_SIZE, TAG_SIZE

    ciphertext_b64 = 4 * ((LARGE_SEGMENT_SIZE + TAG_SIZE + 2) // 3)
    proof = 64 * 40  # a Merkle path of 40 hex hashes covers any file
    envelope = ciphertext_b64 + proof + 4096
    # Even when a log entry carries that command again, base64 inside JSON, it is under the limit.
    assert 4 * (envelope + 2) // 3 + 64 * 1024 < MAX_MESSAGE_SIZE


# -- the other roles -------------------------------------------------------------------------------

def test_the_operator_reads_status_and_dead_letters_but_cannot_take_commands(replica_on_roles: Running) -> None:
    from console.gui.operator import read_dead_letters
    from console.status import collect_status
    from ledger.keys import load_system

    rv, n = replica_on_roles.rv, replica_on_roles.names
    rows = collect_status(rv.operator_url, n, wait=3.0, trust=load_system(replica_on_roles.home).trust())
    assert [r["replica"] for r in rows] == ["r1"]
    letters = read_dead_letters(rv.operator_url, n, peek=5)
    assert letters.count is not None and letters.count >= 0
    allowed(rv.operator_url, lambda ch: ch.queue_purge(n.dlq))

    head = replica_on_roles.head()
    assert_access_refused(rv.operator_url, consume(n.commands))
    assert_access_refused(rv.operator_url, consume(n.reads))
    assert_access_refused(rv.operator_url, consume(n.log, **{"x-stream-offset": "first"}))
    assert_access_refused(rv.operator_url, lambda ch: ch.basic_publish("", n.log, b"{}"))
    assert_access_refused(rv.operator_url, lambda ch: ch.basic_publish(n.status, "", b"{}"))
    assert_access_refused(rv.operator_url, lambda ch: ch.queue_delete(n.dlq))
    assert_access_refused(rv.operator_url, lambda ch: ch.exchange_declare(f"{n.prefix}.evil"))
    assert replica_on_roles.head() == head
    assert replica_on_roles.answers()["primary"] == "r1"


def test_a_replica_cannot_touch_another_vhost_or_objects_outside_its_prefix() -> None:
    with role_vhost(declare=True) as mine, role_vhost(declare=True) as theirs:
        elsewhere = _on_vhost(mine.replica_url, theirs.vhost)
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
            pika.BlockingConnection(pika.URLParameters(elsewhere))
        # Its own vhost, but not its deployment's objects: refused as well.
        assert_access_refused(mine.replica_url, lambda ch: ch.queue_declare("other.commands", durable=True))
        assert_access_refused(mine.replica_url, lambda ch: ch.exchange_declare("other.status", exchange_type="fanout"))
        # Nor do the other roles reach the other vhost.
        for url in (mine.peer_url, mine.operator_url):
            with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
                pika.BlockingConnection(pika.URLParameters(_on_vhost(url, theirs.vhost)))
        assert queues(theirs) == {theirs.names.commands, theirs.names.log, theirs.names.snapshots,
                                  theirs.names.reads, theirs.names.dlq}


def _on_vhost(url: str, vhost: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(vhost, safe="")))


def test_reply_to_works_for_the_peer_with_a_raw_consumer_on_the_replica_role() -> None:
    # Independent of the ledger: a bare echo on the replica role answers a peer over direct reply-to.
    with role_vhost(declare=True) as rv:
        n = rv.names
        echo_conn, echo = _channel(rv.replica_url)
        try:
            def answer(ch: Any, method: Any, props: Any, body: bytes) -> None:
                ch.basic_publish("", props.reply_to, b"echo:" + body,
                                 pika.BasicProperties(correlation_id=props.correlation_id))
                ch.basic_ack(method.delivery_tag)

            echo.basic_consume(n.reads, answer)
            peer_conn, peer = _channel(rv.peer_url)
            try:
                got: list[bytes] = []
                peer.basic_consume("amq.rabbitmq.reply-to", lambda _c, _m, _p, body: got.append(body), auto_ack=True)
                peer.basic_publish(n.reads, "query", b"ping", pika.BasicProperties(
                    reply_to="amq.rabbitmq.reply-to", correlation_id="1"), mandatory=True)
                deadline = time.monotonic() + 10
                while not got and time.monotonic() < deadline:
                    echo_conn.process_data_events(time_limit=0.02)
                    peer_conn.process_data_events(time_limit=0.02)
                assert got == [b"echo:ping"]
            finally:
                peer_conn.close()
        finally:
            echo_conn.close()


# -- bounds ----------------------------------------------------------------------------------------

def test_the_reads_queue_refuses_queries_past_its_bound() -> None:
    # No replica consumes here, so every query stays: the bound is the broker's alone.
    with role_vhost(declare=True, limits=Limits(reads_length=50)) as rv:
        n = rv.names
        conn, ch = _channel(rv.peer_url)
        accepted = nacked = 0
        try:
            for i in range(80):
                try:
                    ch.basic_publish(n.reads, "query", b'{"flood": %d}' % i)
                    accepted += 1
                except pika.exceptions.NackError:
                    nacked += 1
        finally:
            conn.close()
        assert (accepted, nacked) == (50, 30)
        depth = allowed(rv.admin_url, lambda ch: ch.queue_declare(n.reads, passive=True).method.message_count)
        assert depth == 50


def test_the_commands_queue_turns_commands_away_at_its_bound_and_the_client_hears_busy() -> None:
    # No replica consumes here: the bound is the broker's alone. Past it a publish is nacked at once.
    with role_vhost(declare=True, limits=Limits(commands_length=40)) as rv:
        n = rv.names
        conn, ch = _channel(rv.peer_url)
        accepted = nacked = 0
        try:
            for i in range(70):
                try:
                    ch.basic_publish(n.commands, "command", b'{"flood": %d}' % i,
                                     pika.BasicProperties(delivery_mode=2))
                    accepted += 1
                except pika.exceptions.NackError:
                    nacked += 1
        finally:
            conn.close()
        # A quorum queue sees it is full once past the bound, so it takes one more than the bound.
        assert accepted in (40, 41) and accepted + nacked == 70
        # The client library takes the nack as `busy`: it backs off, tries again, and says so when time is up.
        client = BrokerClient(rv.peer_url, n)
        try:
            start = time.monotonic()
            with pytest.raises(Busy, match="queue is full"):
                client.request(seal(c.Deposit(account="bob", amount=1), sender="bob", key=None), timeout=3)
            assert time.monotonic() - start < 4 and client.busy_pauses >= 1
        finally:
            client.close()


def test_the_dead_letter_queue_keeps_only_the_newest_within_its_bounds() -> None:
    with role_vhost(declare=True, limits=Limits(dlq_length=20, dlq_bytes=1_000_000)) as rv:
        n = rv.names

        def flood(ch: Any) -> None:
            for i in range(60):
                ch.basic_publish(n.dlx, "command", b"%06d" % i + b"." * 100)

        allowed(rv.replica_url, flood)  # the replicas dead-letter by hand, through the dlx

        def drain(ch: Any) -> list[bytes]:
            out: list[bytes] = []
            while True:
                method, _props, body = ch.basic_get(n.dlq, auto_ack=True)
                if method is None:
                    return out
                out.append(body[:6])

        kept = allowed(rv.operator_url, drain)
        assert kept == [b"%06d" % i for i in range(40, 60)]  # drop-head: the oldest went first

    with role_vhost(declare=True, limits=Limits(dlq_length=10_000, dlq_bytes=10_000)) as rv:
        n = rv.names
        allowed(rv.replica_url, lambda ch: [ch.basic_publish(n.dlx, "command", b"y" * 1000) for _ in range(50)])
        depth = allowed(rv.admin_url, lambda ch: ch.queue_declare(n.dlq, passive=True).method.message_count)
        assert depth == 10


def test_the_permissions_are_the_documented_ones() -> None:
    # docs/broker-roles.md shows these; a change here is a change to the trust boundary.
    from broker.topology import Names

    perms = permissions(Names("acb"))
    assert (perms["peer"].configure, perms["peer"].write, perms["peer"].read) == (
        "^$", r"^(acb\.commands|acb\.reads)$", "^$")
    assert perms["replica"].write == r"^(acb\.[A-Za-z0-9_-]+|amq\.default)$"
    assert perms["operator"].read == r"^(amq\.gen-.*|acb\.status|acb\.dlq)$"


def test_role_vhost_is_quick_and_leaves_nothing_behind() -> None:
    start = time.monotonic()
    with role_vhost() as rv:
        made = time.monotonic() - start
        users = {item["name"] for item in rv.api.request("GET", "/users")}
        assert {f"{rv.vhost}-peer", f"{rv.vhost}-replica", f"{rv.vhost}-operator"} <= users
    assert made < 2.0
    vhosts = {item["name"] for item in rv.api.request("GET", "/vhosts")}
    users = {item["name"] for item in rv.api.request("GET", "/users")}
    assert rv.vhost not in vhosts
    assert not {u for u in users if u.startswith(rv.vhost)}


def test_role_vhost_cleans_up_when_the_test_fails() -> None:
    with pytest.raises(RuntimeError), role_vhost() as rv:
        raise RuntimeError("the test failed")
    assert rv.vhost not in {item["name"] for item in rv.api.request("GET", "/vhosts")}


# -- the set-up itself -----------------------------------------------------------------------------

def test_broker_setup_is_idempotent_keeps_its_passwords_and_writes_private_files(tmp_path: Path) -> None:
    api = admin_api()
    vhost = f"acb-t-{secrets.token_hex(5)}"
    env = {**os.environ, "ACB_HOME": str(tmp_path), "ACB_BROKER_ADMIN_URL": api.url}
    try:
        first = subprocess.run([sys.executable, "-m", "broker.admin", "broker-setup", "--vhost", vhost, "--json"],
                               env=env, capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["users"] == {role: f"{vhost}-{role}" for role in ROLES}
        made = broker_json_path(tmp_path).read_text()
        args = argparse.Namespace(admin_url=api.url, vhost=vhost, prefix=None, amqp_url=None, json=False)
        assert cmd_broker_setup(args, SimpleNamespace(home=tmp_path, names=None)) == 0
        assert broker_json_path(tmp_path).read_text() == made  # the same users, passwords and URLs
        for path in (broker_json_path(tmp_path), peer_url_path(tmp_path)):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        roles = read_roles(tmp_path)
        assert roles is not None and peer_url_path(tmp_path).read_text().strip() == roles.peer_url
        for url in roles.urls.values():  # every role logs in with the password that was kept
            pika.BlockingConnection(pika.URLParameters(url)).close()
        policies = {p["name"] for p in api.request("GET", f"/policies/{urllib.parse.quote(vhost, safe='')}")}
        assert policies == {"acb.dlq-bounds", "acb.reads-bounds", "acb.commands-bounds"}
        limits = {item["user"]: item["value"] for item in api.request("GET", "/user-limits")
                  if item["user"].startswith(vhost)}
        assert limits[f"{vhost}-peer"] == {"max-connections": 1000, "max-channels": 4000}
    finally:
        roles = read_roles(tmp_path)
        if roles is not None:
            remove_roles(api, roles)


def test_settings_find_each_role_and_say_how_to_set_one_up_when_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ACB_BROKER_URL", "ACB_REPLICA_BROKER_URL", "ACB_OPERATOR_BROKER_URL", "ACB_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("ACB_HOME", str(empty))
    nothing = Settings.from_env()
    for role in ("broker_url", "replica_broker_url", "operator_broker_url"):
        with pytest.raises(ConfigurationError) as info:
            getattr(nothing, role)
        assert ".ci/setup.sh" in str(info.value) and "acb admin broker-setup" in str(info.value)
    # A person sees it as one line, not a traceback, and nothing connects anywhere.
    env = {k: v for k, v in os.environ.items() if not k.endswith("BROKER_URL")}
    out = subprocess.run([sys.executable, "-m", "peer.cli", "search", "anything"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("acb: no broker URL: set ACB_BROKER_URL")

    home = tmp_path / "home"
    urls = {role: f"amqp://acb-{role}:pw-{role}@broker.example:5672/acb" for role in ("peer", "replica", "operator")}
    write_roles(home, BrokerRoles("acb", "acb", urls))
    monkeypatch.setenv("ACB_HOME", str(home))
    found = Settings.from_env()
    assert (found.broker_url, found.replica_broker_url, found.operator_broker_url) == (
        urls["peer"], urls["replica"], urls["operator"])
    assert "pw-" not in repr(found)  # settings get logged: no password in their repr
    monkeypatch.setenv("ACB_BROKER_URL", "amqps://other-peer:x@h:5671/acb")
    monkeypatch.setenv("ACB_REPLICA_BROKER_URL", "amqps://other-replica:x@h:5671/acb")
    monkeypatch.setenv("ACB_OPERATOR_BROKER_URL", "amqps://other-operator:x@h:5671/acb")
    given = Settings.from_env()
    assert (given.broker_url, given.replica_broker_url, given.operator_broker_url) == (
        "amqps://other-peer:x@h:5671/acb", "amqps://other-replica:x@h:5671/acb", "amqps://other-operator:x@h:5671/acb")

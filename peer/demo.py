"""``acb demo``: one paid download, end to end, on this machine's RabbitMQ.

Starts a ledger replica (SQLite store) and alice's provider process as real
processes, registers alice and bob, credits bob, has alice share a generated
file, and has bob search, buy, download over TLS, settle, receive the key,
decrypt and verify. It cleans up everything it started and exits 0 only if
the money moved exactly as the rules say and the content verified.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from broker import commands as c
from broker import queries as q
from broker.admin import AdminApi, BrokerRoles, amqp_base, read_admin_url, scratch_roles
from broker.client import BrokerClient
from broker.errors import BrokerError
from broker.money import fee as commission
from broker.money import format_minor
from broker.settings import Settings
from broker.trust import Trust
from ledger.keys import init_system, load_operator_key
from ledger.launch import ACB_COMMAND, Replicas, deployment_env
from peer.client import Client

__all__ = ["run_demo"]

PRICE = 1250  # 12.50: its 1% commission is 12.5, which rounds half up to 13
DEPOSIT = 10_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _make_document(path: Path, size: int) -> None:
    head = b"ACB demo document: a report on access control and billing for peer-to-peer sharing.\n"
    with path.open("wb") as f:
        f.write(head)
        f.write(os.urandom(size - len(head)))


class _Narrator:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, text: str) -> None:
        self.n += 1
        print(f"[{self.n:2d}] {text}", flush=True)

    def detail(self, text: str) -> None:
        print(f"       {text}", flush=True)


def _wait_ready(client: Client, replicas: Replicas, timeout: float = 30.0) -> dict[str, Any]:
    # The ledger's own answer is the readiness wanted here (the demo prints its commission), so ask it.
    deadline = time.monotonic() + timeout
    while True:
        replicas.check()
        try:
            return client.ask(q.LedgerInfo(), signed=False, timeout=2.0)
        except BrokerError:
            if time.monotonic() > deadline:
                raise


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Run the demo in a throwaway RabbitMQ vhost with ACB's three roles, removed afterwards."""
    api = AdminApi(read_admin_url(settings.home))
    base = amqp_base(settings.peer_url) if settings.peer_url else None
    keep = bool(getattr(args, "keep", False))
    with scratch_roles(api, prefix="demo", label="demo", amqp=base, keep=keep) as roles:
        return _run(args, roles)


def _run(args: argparse.Namespace, roles: BrokerRoles) -> int:
    say = _Narrator()
    work = Path(tempfile.mkdtemp(prefix="acb-demo-"))
    names = roles.names
    env = deployment_env(os.environ, home=work, prefix=names.prefix, peer_url=roles.peer_url,
                         replica_url=roles.replica_url, operator_url=roles.operator_url)
    replicas = Replicas(work, env, operator_url=roles.operator_url, names=names, stop_timeout=10)
    server: subprocess.Popen[bytes] | None = None
    try:
        say(f"setting up in {work} on RabbitMQ vhost {roles.vhost} (private, with its own peer and replica "
            "accounts; removed afterwards)")
        init_system(work)
        store = f"sqlite:///{work / 'ledger.db'}"
        replicas.start("demo-ledger", store=store, log=work / "ledger.log")
        brokers: list[BrokerClient] = []

        trust = Trust.load(work)

        def client() -> Client:
            b = BrokerClient(roles.peer_url, names, trust=trust)
            brokers.append(b)
            return Client(b, work)

        operator, alice, bob = client(), client(), client()
        info = _wait_ready(operator, replicas)
        say(f"ledger replica running (event store {store}); commission {info['fee_bps']} basis points")

        alice.register("alice", "alice-password-1")
        bob.register("bob", "bob-password-12")
        say("registered alice (provider) and bob (consumer): keys made on the client, only public keys sent")

        op_key = load_operator_key(work)
        operator.send(c.Deposit(account="bob", amount=DEPOSIT, memo="demo credit"), sender=c.OPERATOR, key=op_key)
        say(f"operator credited bob {format_minor(DEPOSIT)}")

        doc_path = work / "report.bin"
        _make_document(doc_path, 3 * (1 << 20) + 12345)
        port = _free_port()
        shared = alice.share(doc_path, price=PRICE, topic="reports", title="Access control and billing report",
                             description="peer-to-peer sharing, billing, replication", endpoint=f"127.0.0.1:{port}",
                             segment_size=1 << 20)
        say(f"alice shared {doc_path.name} ({shared['size']} bytes) as {shared['doc_id']} at {format_minor(PRICE)}")
        say.detail(f"committed to sha256 {shared['sha256'][:24]}… and Merkle root {shared['merkle_root'][:24]}…")

        serve_env = {**env, "ACB_USER": "alice"}
        with (work / "serve.log").open("wb") as log:
            server = subprocess.Popen([*ACB_COMMAND, "serve", "--listen", f"127.0.0.1:{port}"], env=serve_env,
                                      stdout=subprocess.PIPE, stderr=log)
        assert server.stdout is not None
        line = server.stdout.readline().decode().strip()
        if not line.startswith("serving"):
            raise RuntimeError(f"alice's provider did not start: {line or (work / 'serve.log').read_text()[-300:]}")
        say(f"alice's provider process is {line}")

        def balances() -> dict[str, int]:
            return {name: operator.ask(q.Balance(account=name), sender=c.OPERATOR, key=op_key)["available"]
                    for name in ("alice", "bob", "owner")}

        operator.last_seq = max(alice.last_seq, bob.last_seq)
        before = balances()
        say("balances before: " + ", ".join(f"{k} {format_minor(v)}" for k, v in before.items()))

        hits = bob.search("billing report")
        say(f"bob searched 'billing report': {len(hits)} hit(s)")
        for h in hits:
            say.detail(f"{h['doc_id']}  {h['title']}  by {h['provider']}  at {format_minor(h['price'])}")
        if not hits:
            raise RuntimeError("search found nothing")

        out = work / "bob" / "report.bin"
        result = bob.buy(hits[0]["doc_id"], out, on_step=say.detail, agreed_price=hits[0]["price"])
        say(f"bob bought {hits[0]['doc_id']}: downloaded over TLS, settled, received the key, decrypted")

        operator.last_seq = max(bob.last_seq, alice.last_seq)
        after = balances()
        say("balances after:  " + ", ".join(f"{k} {format_minor(v)}" for k, v in after.items()))
        fee = commission(PRICE, info["fee_bps"])
        verified = result.verified and out.exists() and (
            hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(doc_path.read_bytes()).hexdigest())
        say(f"content verified byte for byte: {verified}")
        ok = (verified and after["bob"] == before["bob"] - PRICE and after["alice"] == before["alice"] + PRICE - fee
              and after["owner"] == before["owner"] + fee)
        say(f"bob paid {format_minor(PRICE)}; alice got {format_minor(PRICE - fee)}; owner got the commission "
            f"{format_minor(fee)} (1% of {format_minor(PRICE)} = 0.125, half up to {format_minor(fee)})")
        say("all checks hold" if ok else "CHECKS FAILED")
        report = {"price": PRICE, "fee": fee, "balances_before": before, "balances_after": after,
                  "content_verified": verified, "sale_id": result.sale_id, "doc_id": result.doc_id}
        if args.json:
            print(json.dumps(report, sort_keys=True))
        for b in brokers:
            b.close()
        return 0 if ok else 1
    finally:
        if server is not None:
            if server.poll() is None:
                server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            if server.stdout is not None:
                server.stdout.close()
        replicas.close()
        if not getattr(args, "keep", False):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work} and broker vhost {roles.vhost}", file=sys.stderr)

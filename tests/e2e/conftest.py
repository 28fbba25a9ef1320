"""End-to-end fixtures: replicas and CLI commands as separate processes, as a user starts them.

Each cluster lives in a throwaway RabbitMQ vhost with ACB's three roles (tests/support/broker_roles.py):
replicas run on the replica account, the CLI and the test's clients on the peer account, status on the
operator's, as in production. Only the test harness (and the attacker in attack tests) uses the
administrator's URL.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker.topology import Names
from console.status import collect_status
from ledger.keys import init_system
from tests.support.broker_roles import RoleVhost, role_vhost

AMQP_URL = os.environ.get("ACB_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
ACB = [sys.executable, "-m", "peer.cli"]


@dataclass
class Cluster:
    """A private ACB installation: its own ACB_HOME, broker prefix and replica processes."""

    home: Path
    roles: RoleVhost
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def names(self) -> Names:
        return self.roles.names

    @property
    def peer_url(self) -> str:
        return self.roles.peer_url

    @property
    def admin_url(self) -> str:
        # The administrator on this cluster's vhost: all rights (the harness, and attackers in attack tests).
        return self.roles.admin_url

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, "ACB_HOME": str(self.home), **self.roles.env()}
        env.pop("ACB_STORE_URL", None)
        env.pop("ACB_USER", None)
        env.pop("ACB_OPERATOR_KEY", None)
        return env

    def store(self, rid: str) -> str:
        return f"sqlite:///{self.home / (rid + '.db')}"

    def start(self, rid: str, *extra: str) -> subprocess.Popen[bytes]:
        log = (self.home / f"{rid}.log").open("ab")
        proc = subprocess.Popen(ACB + ["ledger", "run", "--replica-id", rid, "--store", self.store(rid), *extra],
                                env=self.env, stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        self.procs[rid] = proc
        return proc

    def stop(self, rid: str, sig: int = signal.SIGTERM) -> int:
        proc = self.procs.pop(rid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(sig)
        try:
            return proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def acb(self, *args: str, env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(ACB + list(args), env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, input=input)

    def acb_json(self, *args: str, **kw: Any) -> dict[str, Any]:
        out = self.acb(*args, "--json", **kw)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    def status(self, wait: float = 1.5) -> list[dict[str, Any]]:
        return collect_status(self.roles.operator_url, self.names, wait, home=self.home)

    def wait_for(self, predicate: Any, timeout: float = 30.0, what: str = "condition") -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = self.status(1.2)
            if predicate(rows):
                return rows
        raise AssertionError(f"timed out waiting for {what}; last status: {rows}")

    def audit(self, rid: str, *extra: str) -> dict[str, Any]:
        out = self.acb("audit", "verify", "--store", self.store(rid), "--json", *extra)
        return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    home = tmp_path / "acb"
    init_system(home)
    monkeypatch.setenv("ACB_HOME", str(home))  # the test's own clients trust this cluster's operator
    with role_vhost(prefix=f"e2e-{uuid.uuid4().hex[:8]}") as roles:
        c = Cluster(home, roles)
        try:
            yield c
        finally:
            for rid in list(c.procs):
                c.stop(rid, signal.SIGKILL)

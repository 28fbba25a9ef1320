"""A private ACB installation whose replicas and CLI commands run as separate processes, as a user starts them.

Each cluster lives in a throwaway RabbitMQ vhost with ACB's three roles (tests/support/broker_roles.py):
replicas run on the replica account, the CLI and the test's clients on the peer account, status on the
operator's, as in production. Only the test harness (and the attacker in attack tests) uses the
administrator's URL. The replica processes are started by :class:`ledger.launch.Replicas`, as the demo,
the drill and the benchmarks start theirs.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.topology import Names
from ledger.launch import ACB_COMMAND, Replicas, deployment_env
from tests.support.broker_roles import RoleVhost

__all__ = ["ACB", "Cluster"]

ACB = list(ACB_COMMAND)


@dataclass
class Cluster:
    """A private ACB installation: its own ACB_HOME, broker prefix and replica processes."""

    home: Path
    roles: RoleVhost
    replicas: Replicas = field(init=False)

    def __post_init__(self) -> None:
        self.replicas = Replicas(self.home, self.env, operator_url=self.roles.operator_url, names=self.names,
                                 command=ACB, stop_timeout=20)

    @property
    def procs(self) -> dict[str, subprocess.Popen[bytes]]:
        """The replica processes started and not yet stopped (a test may drop one that exited by itself)."""
        return self.replicas.procs

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
        """The environment of this cluster's processes, with no user chosen."""
        return deployment_env(os.environ, home=self.home, prefix=self.roles.prefix, peer_url=self.roles.peer_url,
                              replica_url=self.roles.replica_url, operator_url=self.roles.operator_url)

    def store(self, rid: str) -> str:
        return self.replicas.store(rid)

    def start(self, rid: str, *extra: str) -> subprocess.Popen[bytes]:
        """Start replica ``rid`` (``acb ledger run``) with ``extra`` arguments."""
        return self.replicas.start(rid, *extra)

    def stop(self, rid: str, sig: int = signal.SIGTERM) -> int:
        """Stop replica ``rid`` and return its exit code."""
        return self.replicas.stop(rid, sig)

    def acb(self, *args: str, env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run one ``acb`` command in this cluster and return what it did."""
        return subprocess.run(ACB + list(args), env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, input=input)

    def acb_json(self, *args: str, **kw: Any) -> dict[str, Any]:
        """Run ``acb ... --json``, require success and return its last line parsed."""
        out = self.acb(*args, "--json", **kw)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    def status(self, wait: float = 1.5) -> list[dict[str, Any]]:
        """The replicas' verified status, as ``acb status`` reads it."""
        return self.replicas.status(wait)

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0,
                 what: str = "condition") -> list[dict[str, Any]]:
        """Read the status until ``predicate`` holds; fail early if a running replica exits."""
        return self.replicas.wait_for(predicate, timeout, what)

    def audit(self, rid: str, *extra: str) -> dict[str, Any]:
        """``acb audit verify --json`` of ``rid``'s store."""
        out = self.acb("audit", "verify", "--store", self.store(rid), "--json", *extra)
        return json.loads(out.stdout.strip().splitlines()[-1])

"""The replica launcher: what it starts, how it stops, and real replicas awaited by their signed status.

The first tests run a stand-in for ``acb`` (a Python one-liner that writes its arguments to its log and
lives as long as told), so they need no broker: they pin the command line, the environment, the logs
and the clean-up. The last one runs real replicas in a throwaway vhost.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker.topology import Names
from ledger.keys import init_system
from ledger.launch import LaunchError, Replicas, deployment_env
from tests.support.broker_roles import role_vhost

# Stands in for `acb`: says what it was given, then lives for $LIVE seconds (default: exits at once).
_STAND_IN = ("import json, os, sys, time; "
             "print(json.dumps({'argv': sys.argv[1:], 'mark': os.environ.get('MARK'), "
             "'user': os.environ.get('ACB_USER')}), file=sys.stderr, flush=True); "
             "time.sleep(float(os.environ.get('LIVE', '0'))); sys.exit(int(os.environ.get('CODE', '0')))")


def _stand_in(home: Path, **env: str) -> Replicas:
    # Nothing here reads status, so the broker URL is never contacted.
    return Replicas(home, {"PATH": "/usr/bin:/bin", **env}, operator_url="amqp://127.0.0.1:1/", names=Names("x"),
                    command=(sys.executable, "-c", _STAND_IN), stop_timeout=10)


def _said(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def _state(pid: int) -> str:
    # The third field of /proc/<pid>/stat (after the parenthesised name) is the run state: T when stopped.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)  # polling a kernel state that has no notification


def test_deployment_env_sets_the_deployment_and_drops_another_installations_settings(tmp_path: Path) -> None:
    base = {"PATH": "/bin", "ACB_STORE_URL": "sqlite:///other.db", "ACB_OPERATOR_KEY": "/k", "ACB_USER": "bob",
            "ACB_HOME": "/elsewhere"}
    env = deployment_env(base, home=tmp_path, prefix="p1", peer_url="amqp://peer", replica_url="amqp://replica",
                         operator_url="amqp://operator")
    assert env == {"PATH": "/bin", "ACB_HOME": str(tmp_path), "ACB_PREFIX": "p1", "ACB_BROKER_URL": "amqp://peer",
                   "ACB_REPLICA_BROKER_URL": "amqp://replica", "ACB_OPERATOR_BROKER_URL": "amqp://operator"}
    assert base["ACB_USER"] == "bob"  # the caller's mapping is left alone


def test_a_replica_gets_its_id_store_arguments_and_environment_and_logs_beside_its_store(tmp_path: Path) -> None:
    replicas = _stand_in(tmp_path, MARK="base", ACB_USER="nobody")
    assert replicas.start("r1", "--hold-ttl", "600").wait(10) == 0
    assert replicas.start("r2", env={"MARK": "own"}, store="sqlite:///elsewhere.db",
                          log=tmp_path / "other.log").wait(10) == 0
    assert _said(tmp_path / "r1.log") == [{"argv": ["ledger", "run", "--replica-id", "r1", "--store",
                                                    f"sqlite:///{tmp_path / 'r1.db'}", "--hold-ttl", "600"],
                                           "mark": "base", "user": "nobody"}]
    assert _said(tmp_path / "other.log")[0]["mark"] == "own"
    assert replicas.store("r1") == f"sqlite:///{tmp_path / 'r1.db'}"
    assert replicas.store("r2") == "sqlite:///elsewhere.db"
    assert replicas.ids == ["r1", "r2"]


def test_restart_runs_the_same_command_again_and_appends_to_the_log(tmp_path: Path) -> None:
    replicas = _stand_in(tmp_path, LIVE="60")
    log = tmp_path / "r1.log"
    first = replicas.start("r1", "--snapshot-every", "5", env={"MARK": "m"})
    _until(lambda: len(_said(log)) == 1)  # it has said what it was given
    assert replicas.kill("r1") == -signal.SIGKILL
    assert first.returncode == -signal.SIGKILL and "r1" not in replicas.procs
    second = replicas.restart("r1")
    assert second.pid != first.pid
    with pytest.raises(LaunchError, match="already running"):
        replicas.start("r1")
    _until(lambda: len(_said(log)) == 2)
    replicas.close()
    said = _said(log)
    assert len(said) == 2 and said[0] == said[1] and said[0]["mark"] == "m"
    assert said[0]["argv"][-2:] == ["--snapshot-every", "5"]


def test_a_paused_replica_is_frozen_resumes_and_still_stops(tmp_path: Path) -> None:
    replicas = _stand_in(tmp_path, LIVE="60")
    proc = replicas.start("r1")
    replicas.pause("r1")
    _until(lambda: _state(proc.pid) == "T")
    replicas.resume("r1")
    _until(lambda: _state(proc.pid) != "T")
    replicas.pause("r1")
    _until(lambda: _state(proc.pid) == "T")
    # A stopped process would hold SIGTERM until woken: stop wakes it first, so this returns promptly.
    assert replicas.stop("r1") == -signal.SIGTERM
    assert replicas.procs == {}


def test_a_replica_that_exits_fails_the_wait_at_once_with_its_code_and_log(tmp_path: Path) -> None:
    replicas = _stand_in(tmp_path, CODE="3")
    replicas.start("r1").wait(10)
    with pytest.raises(LaunchError, match=r"'r1': 3.*r1: \{") as caught:
        replicas.wait_ready(1, timeout=30)  # fails before it reads any status: the broker is never asked
    assert str(tmp_path) in str(caught.value)
    replicas.procs.pop("r1")  # a caller that expected the exit forgets the process
    replicas.check()


def test_everything_still_running_is_stopped_when_the_block_fails(tmp_path: Path) -> None:
    procs = []
    with pytest.raises(RuntimeError, match="the caller failed"), _stand_in(tmp_path, LIVE="60") as replicas:
        procs = [replicas.start("r1"), replicas.start("r2")]
        replicas.pause("r2")
        raise RuntimeError("the caller failed")
    assert [p.returncode for p in procs] == [-signal.SIGTERM, -signal.SIGTERM]


def test_real_replicas_are_awaited_by_their_status_through_a_kill_and_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "acb"
    init_system(home)
    with role_vhost(prefix=f"launch-{uuid.uuid4().hex[:8]}") as roles:
        env = deployment_env(os.environ, home=home, prefix=roles.prefix, peer_url=roles.peer_url,
                             replica_url=roles.replica_url, operator_url=roles.operator_url)
        with Replicas(home, env, operator_url=roles.operator_url, names=roles.names) as replicas:
            replicas.start("r1")
            replicas.start("r2")
            first = replicas.wait_ready()
            assert first["replica"] in ("r1", "r2") and first["pid"] == replicas.procs[first["replica"]].pid
            replicas.kill(first["replica"])
            second = replicas.wait_primary(other_than=first["replica"], after_epoch=first["epoch"])
            assert second["replica"] != first["replica"] and second["epoch"] > first["epoch"]
            replicas.restart(first["replica"])
            rows = replicas.wait_caught_up(2)
            assert {r["replica"]: r["role"] for r in rows} == {second["replica"]: "primary",
                                                                first["replica"]: "backup"}
            assert replicas.stop_all() == {"r1": 0, "r2": 0}

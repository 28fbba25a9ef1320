"""Starting ledger replicas as processes (``acb ledger run``), watching them by their status, stopping them.

One launcher serves everything that runs replicas on this machine: ``acb demo``, ``acb drill``, the
benchmarks and the end-to-end tests::

    env = deployment_env(os.environ, home=work, prefix=..., peer_url=..., replica_url=..., operator_url=...)
    with Replicas(work, env, operator_url=operator_url, names=names) as replicas:
        replicas.start("r1")
        replicas.start("r2", "--hold-ttl", "600")
        primary = replicas.wait_ready()        # both report, one of them primary
        replicas.kill(primary["replica"])      # SIGKILL; the other takes over
        replicas.wait_primary(other_than=primary["replica"], after_epoch=primary["epoch"])
        replicas.restart(primary["replica"])   # the same command again: it rejoins as a backup
    # every process still running is stopped here, also when the block raised

Each replica keeps its store (``sqlite:///<home>/<id>.db``) and its log (``<home>/<id>.log``, stderr
appended) under the deployment's home unless told otherwise. Waiting is done by reading the replicas'
signed status (:mod:`ledger.status`), never by sleeping; a replica that exited while it was awaited is
reported at once with its exit code and the end of its log.

The launcher reads no environment of its own: the caller passes the children's environment
(:func:`deployment_env` builds the usual one from explicit values).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from broker.topology import Names
from ledger.errors import LedgerError
from ledger.status import collect_status

__all__ = ["ACB_COMMAND", "LaunchError", "Replicas", "deployment_env"]

# How a child process runs ``acb``: this interpreter, so a virtualenv's replicas run its code.
ACB_COMMAND: tuple[str, ...] = (sys.executable, "-m", "peer.cli")

Rows = list[dict[str, Any]]


class LaunchError(LedgerError):
    """A replica process exited while it was needed, or the replicas did not reach the awaited state in time."""


def deployment_env(base: Mapping[str, str], *, home: Path, prefix: str, peer_url: str, replica_url: str,
                   operator_url: str) -> dict[str, str]:
    """The environment of ACB processes in one private deployment: ``base`` with its home, prefix and URLs.

    A store URL, operator key or user set in ``base`` belongs to another installation and is dropped:
    the replicas would otherwise share a store or trust another operator.
    """
    env = {**base, "ACB_HOME": str(home), "ACB_PREFIX": prefix, "ACB_BROKER_URL": peer_url,
           "ACB_REPLICA_BROKER_URL": replica_url, "ACB_OPERATOR_BROKER_URL": operator_url}
    for var in ("ACB_STORE_URL", "ACB_OPERATOR_KEY", "ACB_USER"):
        env.pop(var, None)
    return env


@dataclass(frozen=True)
class _Spec:
    """How one replica was last started, so that it can be started again the same way."""

    args: tuple[str, ...]
    store: str
    log: Path
    env: dict[str, str]
    wrap: tuple[str, ...]


class Replicas:
    """The replica processes of one deployment: started, awaited by their status, paused, killed, stopped.

    ``home`` holds the stores and logs and the operator's trust (key and roster) by which statuses are
    checked; ``env`` is every child's environment; ``operator_url`` and ``names`` say where the status
    is read. ``procs`` holds the processes started and not yet stopped through the launcher.
    """

    def __init__(self, home: Path, env: Mapping[str, str], *, operator_url: str, names: Names,
                 command: Sequence[str] = ACB_COMMAND, stop_timeout: float = 15.0) -> None:
        self.home = home
        self.env = dict(env)
        self.operator_url = operator_url
        self.names = names
        self.command = tuple(command)
        self.stop_timeout = stop_timeout
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._specs: dict[str, _Spec] = {}

    # -- where things are ------------------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        """Every replica started at least once, in the order first started."""
        return list(self._specs)

    def store(self, rid: str) -> str:
        """The store URL of ``rid``: the one it was started with, else ``sqlite:///<home>/<rid>.db``."""
        spec = self._specs.get(rid)
        return spec.store if spec else f"sqlite:///{self.home / (rid + '.db')}"

    def log(self, rid: str) -> Path:
        """The file ``rid``'s stderr is appended to."""
        spec = self._specs.get(rid)
        return spec.log if spec else self.home / f"{rid}.log"

    # -- starting --------------------------------------------------------------------------------
    def start(self, rid: str, *args: str, store: str | None = None, log: Path | None = None,
              env: Mapping[str, str] | None = None, wrap: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """Start ``acb ledger run --replica-id rid --store ... *args``; return its process.

        ``env`` is laid over the launcher's environment for this replica only; ``wrap`` goes before
        the command (``ip netns exec <ns>`` runs it in a network namespace).
        """
        if rid in self.procs and self.procs[rid].poll() is None:
            raise LaunchError(f"replica {rid} is already running (pid {self.procs[rid].pid})")
        spec = _Spec(tuple(args), store or f"sqlite:///{self.home / (rid + '.db')}",
                     log or self.home / f"{rid}.log", {**self.env, **(env or {})}, tuple(wrap))
        self._specs[rid] = spec
        return self._spawn(rid, spec)

    def restart(self, rid: str) -> subprocess.Popen[bytes]:
        """Start ``rid`` again exactly as it was last started (after it was killed or stopped)."""
        if rid in self.procs and self.procs[rid].poll() is None:
            raise LaunchError(f"replica {rid} is already running (pid {self.procs[rid].pid})")
        return self._spawn(rid, self._specs[rid])

    def _spawn(self, rid: str, spec: _Spec) -> subprocess.Popen[bytes]:
        cmd = [*spec.wrap, *self.command, "ledger", "run", "--replica-id", rid, "--store", spec.store, *spec.args]
        with spec.log.open("ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(cmd, env=spec.env, stdout=subprocess.DEVNULL, stderr=log)
        self.procs[rid] = proc
        return proc

    # -- faults and stopping ---------------------------------------------------------------------
    def send_signal(self, rid: str, sig: int) -> None:
        """Send ``sig`` to ``rid`` if it is running."""
        proc = self.procs.get(rid)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, sig)

    def pause(self, rid: str) -> None:
        """Freeze ``rid`` (SIGSTOP): alive, holding its connections, doing nothing."""
        self.send_signal(rid, signal.SIGSTOP)

    def resume(self, rid: str) -> None:
        """Let a paused ``rid`` go on (SIGCONT)."""
        self.send_signal(rid, signal.SIGCONT)

    def kill(self, rid: str) -> int:
        """SIGKILL ``rid`` and wait for it; it leaves ``procs`` (``restart`` brings it back)."""
        return self.stop(rid, signal.SIGKILL)

    def stop(self, rid: str, sig: int = signal.SIGTERM, timeout: float | None = None) -> int:
        """Stop ``rid`` with ``sig`` (SIGKILL after ``timeout``); return its exit code. It leaves ``procs``."""
        proc = self.procs.pop(rid)
        self._signal_stop(proc, sig)
        return self._reap(proc, self.stop_timeout if timeout is None else timeout)

    def stop_all(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> dict[str, int]:
        """Stop every running replica, all signalled first so they shut down together; their exit codes."""
        procs, self.procs = self.procs, {}
        for proc in procs.values():
            self._signal_stop(proc, sig)
        return {rid: self._reap(proc, self.stop_timeout if timeout is None else timeout)
                for rid, proc in procs.items()}

    def close(self, sig: int = signal.SIGTERM) -> None:
        """Stop whatever still runs (see :meth:`stop_all`)."""
        self.stop_all(sig)

    def __enter__(self) -> Replicas:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @staticmethod
    def _signal_stop(proc: subprocess.Popen[bytes], sig: int) -> None:
        if proc.poll() is None:
            if sig != signal.SIGKILL:
                proc.send_signal(signal.SIGCONT)  # a paused process would hold the signal and never exit
            proc.send_signal(sig)

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes], timeout: float) -> int:
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    # -- watching --------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`LaunchError` if a replica in ``procs`` has exited, naming its code and last log lines."""
        dead = {rid: p.returncode for rid, p in self.procs.items() if p.poll() is not None}
        if dead:
            tails = "; ".join(f"{rid}: {_tail(self.log(rid))}" for rid in dead)
            raise LaunchError(f"replica(s) exited: {dead}; logs in {self.home} ({tails})")

    def status(self, wait: float = 1.2) -> Rows:
        """The verified status of every replica heard from within ``wait`` seconds (see ``collect_status``)."""
        return collect_status(self.operator_url, self.names, wait, home=self.home)

    def wait_for(self, predicate: Callable[[Rows], bool], timeout: float = 30.0, what: str = "condition", *,
                 wait: float = 1.2, check: bool = True) -> Rows:
        """Read the status until ``predicate(rows)`` holds and return those rows.

        With ``check`` a replica in ``procs`` that exits meanwhile fails the wait at once. Raises
        :class:`LaunchError` after ``timeout`` seconds, with the last status seen.
        """
        deadline = time.monotonic() + timeout
        rows: Rows = []
        while True:
            if check:
                self.check()
            rows = self.status(wait)
            if predicate(rows):
                return rows
            if time.monotonic() >= deadline:
                raise LaunchError(f"timed out after {timeout:.0f} s waiting for {what}; last status: {rows}")

    def primary(self, rows: Rows) -> dict[str, Any] | None:
        """Among ``rows``, the status of this launcher's primary with the highest epoch, if any."""
        mine = [r for r in rows if r["role"] == "primary" and r["replica"] in self._specs]
        return max(mine, key=lambda r: r["epoch"]) if mine else None

    def wait_primary(self, timeout: float = 30.0, *, other_than: str | None = None, after_epoch: int = -1,
                     wait: float = 1.2, check: bool = True) -> dict[str, Any]:
        """Wait until one of these replicas other than ``other_than`` is primary in an epoch above
        ``after_epoch`` (a takeover); return its status."""
        def taken(rows: Rows) -> bool:
            p = self.primary(rows)
            return p is not None and p["replica"] != other_than and p["epoch"] > after_epoch

        what = f"a primary other than {other_than}" if other_than else "a primary"
        found = self.primary(self.wait_for(taken, timeout, what, wait=wait, check=check))
        assert found is not None  # the predicate held
        return found

    def wait_ready(self, count: int | None = None, timeout: float = 60.0, *, wait: float = 1.2) -> dict[str, Any]:
        """Wait until ``count`` replicas (default: all running) report and exactly one is primary; its status."""
        need = len(self.procs) if count is None else count
        rows = self.wait_for(lambda rs: len(rs) >= need and sum(r["role"] == "primary" for r in rs) == 1,
                             timeout, f"{need} replica(s) with one primary", wait=wait)
        return next(r for r in rows if r["role"] == "primary")

    def wait_caught_up(self, count: int | None = None, timeout: float = 60.0, *, wait: float = 1.2,
                       check: bool = True) -> Rows:
        """Wait until ``count`` replicas (default: all running) report the same sequence; their status."""
        need = len(self.procs) if count is None else count
        return self.wait_for(lambda rs: len(rs) == need and len({r["seq"] for r in rs}) == 1, timeout,
                             f"{need} replica(s) at one sequence", wait=wait, check=check)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "no log"
    return " | ".join(text.strip().splitlines()[-lines:]) or "empty log"

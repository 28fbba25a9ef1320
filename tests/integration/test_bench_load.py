"""``acb bench load``: a small real run with a primary kill leaves nothing behind and loses nothing, and its
checks find a deleted or a doubled event in one replica's store."""
from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.load import LoadOptions, run
from bench.load_check import check_stores
from bench.load_report import RunFacts, failover_pause, format_table, heard, percentile, stats, summary_json
from ledger.launch import ACB_COMMAND
from tests.support.broker_roles import admin_api

AMQP_URL = os.environ.get("ACB_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def test_stats_measure_from_the_scheduled_time() -> None:
    records = [("search", 10.0, 10.5, 10.6, "ok", ""), ("open_sale", 10.0, 10.0, 10.2, "ok", "c1"),
               ("open_sale", 11.0, 11.0, 41.0, "timeout", "")]
    rows = stats(records)
    assert rows["search"].latencies == [pytest.approx(0.6)]  # 0.5 s waiting for a sender counts
    assert rows["open_sale"].codes == {"ok": 1, "timeout": 1} and rows["open_sale"].errors == 1
    assert rows["all"].count == 3 and percentile(rows["all"].latencies, 99) == pytest.approx(30.0)


def test_failover_pause_is_the_longest_stretch_without_a_write_answered() -> None:
    records = [("settle", 0, 0, t, "ok", f"c{t}") for t in (9.5, 9.9, 11.4, 11.5)]
    records.append(("balance", 0, 0, 10.5, "ok", ""))  # reads do not end a failover pause
    assert failover_pause(records, kill_at=10.0) == pytest.approx(1.5)


def test_the_first_word_is_the_answer_or_the_first_busy_whichever_came_first() -> None:
    records = [("settle", 0.0, 0.0, 0.3, "ok", "c1", 0.3),  # answered at once
               ("settle", 0.0, 0.0, 9.0, "ok", "c2", 0.2),  # told busy at 0.2 s, applied after backing off
               ("balance", 0.0, 0.0, 30.0, "Busy", "", 0.1),  # busy at once, still turned away when time ran out
               ("balance", 0.0, 0.0, 30.0, "timeout", "", 30.0),  # heard nothing at all
               ("search", 0.0, 0.0, 0.4, "ok", "")]  # a record of six fields: the answer is the first word
    assert [heard(r) for r in records] == [0.3, 0.2, 0.1, 30.0, 0.4]
    facts = RunFacts(users=1, duration=10, start=0.0, start_wall=0.0, generators=1, generator_cpu_s=0.0, senders=1,
                     ceiling_cps=0.0, ledger_cps=0.0)
    assert "1 requests heard nothing for over 5 s" in format_table(records, facts)
    summary = summary_json(records, facts, {})
    assert summary["heard_late"] == 1 and summary["heard_max_ms"] == 30_000.0


def _processes_with(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if text.encode() in fh.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict, Path, list[str]]]:
    """50 users for 8 s with the primary killed at 4 s; the stores are kept for the tampering tests."""
    work = tmp_path_factory.mktemp("load")
    said: list[str] = []
    opts = LoadOptions(users=50, duration=8, kill_primary_at=4, generators=2, ledger_commands=200,
                       bare_commands=300, run_dir=work, keep=True, url=AMQP_URL)
    summary, table, _check = run(opts, said.append)
    said.append(table)
    yield summary, work, said


@pytest.mark.timeout(240)
def test_a_small_run_with_a_kill_loses_nothing_and_leaves_nothing_behind(small_run: tuple[dict, Path, list[str]]) -> None:
    summary, work, said = small_run
    assert summary["users"] == 50 and summary["duration_s"] == 8
    assert summary["lost"] == 0 and summary["duplicated"] == 0
    assert summary["money_conserved"] and summary["replicas_identical"]
    assert summary["requests"] > 10 and summary["acknowledged"] > 0
    assert [f["what"] for f in summary["faults"]][0].startswith("kill primary")
    assert summary["failover_pause_ms"] is not None and summary["ceiling_cps"] > 0 and summary["ledger_cps"] > 0
    assert summary["rss_mb_max"] > 0
    assert Path(summary["plot"]).read_bytes().startswith(b"\x89PNG")
    json.dumps(summary)
    assert any("answered" in line for line in said)  # progress lines while it ran
    vhost = next(w for line in said for w in line.split() if w.startswith("acb-load-"))
    assert vhost not in {v["name"] for v in admin_api().request("GET", "/vhosts")}
    assert all(vhost.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
               for pid in _processes_with("ACB_PREFIX=load"))


def _tampered(work: Path, tmp_path: Path, sql: str) -> dict[str, str]:
    """The run's stores, r2's changed by ``sql`` (copied first, so each test tampers with its own)."""
    stores = {}
    for rid in ("r1", "r2", "r3", "r4"):
        src = work / "home" / f"{rid}.db"
        dst = tmp_path / f"{rid}.db"
        with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
            a.backup(b)
        stores[rid] = f"sqlite:///{dst}"
    with sqlite3.connect(tmp_path / "r2.db") as db:
        db.execute(sql)
    return stores


def _check(work: Path, stores: dict[str, str]):
    acked = (work / "acknowledged.txt").read_text().split()
    env = {**os.environ, "ACB_HOME": str(work / "home")}
    return check_stores(stores, acked, work / "home", command=ACB_COMMAND, env=env)


@pytest.mark.timeout(240)
def test_the_checks_find_a_deleted_event(small_run: tuple[dict, Path, list[str]], tmp_path: Path) -> None:
    _summary, work, _said = small_run
    acked = (work / "acknowledged.txt").read_text().split()
    victim = acked[len(acked) // 2]
    stores = _tampered(work, tmp_path, f"DELETE FROM events WHERE command_id = '{victim}'")
    result = _check(work, stores)
    assert result.lost >= 1 and result.missing["r2"] >= 1 and result.missing["r1"] == 0
    assert not result.ok and result.findings["r2"]


@pytest.mark.timeout(240)
def test_the_checks_find_a_doubled_event(small_run: tuple[dict, Path, list[str]], tmp_path: Path) -> None:
    _summary, work, _said = small_run
    acked = (work / "acknowledged.txt").read_text().split()
    victim = acked[0]
    copy = ("INSERT INTO events (seq, epoch, at_ms, command_id, type, version, payload, reply, prev_hash, hash, entry) "
            "SELECT (SELECT MAX(seq) FROM events) + 1, epoch, at_ms, command_id, type, version, payload, reply, "
            f"prev_hash, hash, entry FROM events WHERE command_id = '{victim}' AND reply IS NOT NULL")
    stores = _tampered(work, tmp_path, copy)
    result = _check(work, stores)
    assert result.duplicated >= 1 and not result.ok

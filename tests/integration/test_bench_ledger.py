"""The ledger benchmark: its table and JSON, and one tiny real run against the local broker."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from bench import ledger as bench
from bench.ledger import _percentile, _Sample, _summarize, _Tally, format_table, summary_json
from broker.replies import Reply
from tests.support.broker_roles import admin_api

AMQP_URL = os.environ.get("ACB_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _summary() -> dict:
    samples = {
        "baseline": [_Sample(1.0, 100, [0.004] * 99 + [0.010]), _Sample(0.5, 100, [0.003] * 100),
                     _Sample(2.0, 100, [0.005] * 100)],
        "pipelined": [_Sample(1.0, 1000, [0.2] * 1000)] * 3,
        "concurrent": [_Sample(2.0, 1000, [0.02] * 1000)] * 3,
    }
    return _summarize(samples, replicas=3, commands=1000, sequential=100, repeats=3, seconds=12.34)


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert _percentile(values, 50) == 50
    assert _percentile(values, 99) == 99
    assert _percentile([7.0], 99) == 7.0
    assert _percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_summary_takes_medians_and_ratios_to_the_baseline() -> None:
    rows = _summary()["rows"]
    assert rows["baseline"]["cps"] == 100.0  # median of 100, 200, 50
    assert rows["baseline"]["p50_ms"] == pytest.approx(4.0)
    assert rows["pipelined"]["ratio"] == pytest.approx(10.0)
    assert rows["concurrent"]["ratio"] == pytest.approx(5.0)


def test_json_has_exactly_the_agreed_keys() -> None:
    out = summary_json(_summary())
    assert list(out) == ["baseline_cps", "pipelined_cps", "concurrent_cps", "ratio_pipelined", "ratio_concurrent",
                         "p50_ms", "p99_ms", "replicas", "commands"]
    assert out["baseline_cps"] == 100.0 and out["pipelined_cps"] == 1000.0 and out["concurrent_cps"] == 500.0
    assert out["ratio_pipelined"] == 10.0 and out["ratio_concurrent"] == 5.0
    assert out["p50_ms"] == 4.0 and out["replicas"] == 3 and out["commands"] == 1000
    assert all(isinstance(out[k], float) for k in list(out)[:7])
    json.dumps(out)


def test_table_has_a_row_per_way_of_sending() -> None:
    table = format_table(_summary())
    lines = table.splitlines()
    assert "3 replica(s)" in lines[0] and "median of 3 runs" in lines[0]
    assert all(col in lines[1] for col in ("commands/s", "p50 ms", "p99 ms", "x baseline"))
    baseline, pipelined, clients = lines[2].split(), lines[3].split(), lines[4].split()
    assert baseline == ["baseline", "100", "100", "4.00", "4.00", "1.00"]
    assert pipelined[0] == "pipelined" and pipelined[-1] == "10.00"
    assert clients[:2] == ["16", "clients"] and clients[-1] == "5.00"


def test_tally_refuses_a_refusal_and_a_doubled_sequence() -> None:
    tally = _Tally()
    tally.answer(Reply(id="a", ok=True, seq=5))
    tally.check()
    tally.answer(Reply(id="b", ok=True, seq=5))
    tally.answer(Reply(id="c", ok=False, error={"code": "insufficient_funds", "message": "no"}))
    with pytest.raises(bench.BenchFailed, match="2 command"):
        tally.check()


def _processes_with(text: str) -> list[int]:
    """Processes whose environment mentions ``text`` (a replica of the run has its vhost in its broker URLs)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if text.encode() in fh.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.timeout(60)
def test_a_tiny_real_run_leaves_nothing_behind(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert bench.main(["--commands", "48", "--sequential", "10", "--repeats", "1", "--url", AMQP_URL, "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["replicas"] == 1 and result["commands"] == 48
    assert result["baseline_cps"] > 0 and result["pipelined_cps"] > 0 and result["concurrent_cps"] > 0
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert "checked: " in err and "16 clients" in err
    # Nothing of the run is left: no replica process, no files, no vhost (with its queues and accounts).
    vhost = next(w for w in err.split() if w.startswith("acb-bench-"))
    assert _processes_with("ACB_PREFIX=bench") == [] or all(
        vhost.encode() not in Path(f"/proc/{pid}/environ").read_bytes() for pid in _processes_with("ACB_PREFIX=bench"))
    assert list(tmp_path.iterdir()) == []
    assert vhost not in {v["name"] for v in admin_api().request("GET", "/vhosts")}

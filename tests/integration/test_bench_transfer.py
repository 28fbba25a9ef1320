"""The transfer benchmark: one tiny real run, its table and its JSON line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import transfer as bench


def test_a_small_run_reports_both_ratios_and_a_verified_resume(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    summary = bench.run(8 << 20, json_out=True, repeats=1, segment_size=1 << 20, workdir=tmp_path)
    out, err = capsys.readouterr()
    last = json.loads(out.strip().splitlines()[-1])
    assert last == summary
    for key in ("plain_MBps", "acb_MBps", "plain_nofsync_MBps"):
        assert summary[key] > 0
    assert summary["ratio"] == pytest.approx(summary["acb_MBps"] / summary["plain_MBps"], rel=0.01)
    assert summary["ratio_vs_nofsync"] == pytest.approx(summary["acb_MBps"] / summary["plain_nofsync_MBps"], rel=0.01)
    assert summary["resume_verified"] is True
    assert summary["resume_restarted_from_segment"] >= summary["resume_killed_at_segment"] - 1
    assert "ratio ACB / plain" in err and "no fsync" in err
    assert list(tmp_path.iterdir()) == []  # the temporary files are gone


@pytest.mark.parametrize(("text", "size"), [("512MiB", 512 << 20), ("1GiB", 1 << 30), ("100MB", 10**8), ("4096", 4096)])
def test_sizes_parse_in_both_unit_systems(text: str, size: int) -> None:
    assert bench.parse_size(text) == size


def test_a_size_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError, match="not a size"):
        bench.parse_size("lots")

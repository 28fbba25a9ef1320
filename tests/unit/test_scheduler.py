"""Sharing a global transfer budget by priority, and a paused transfer waiting inside its rate limit."""
from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peer.transfer import TransferCancelled, TransferControl
from peer.transfer.control import BandwidthScheduler, share_bandwidth


def test_budget_is_split_in_proportion_to_weight() -> None:
    assert share_bandwidth(900, [(2, None), (1, None)]) == pytest.approx([600, 300])
    assert share_bandwidth(1000, [(1, None), (1, None), (3, None), (5, None)]) == pytest.approx([100, 100, 300, 500])


def test_what_a_capped_transfer_leaves_goes_to_the_others_by_weight() -> None:
    # The first would get half (500) but may use only 100; the other 900 goes to the two others equally.
    assert share_bandwidth(1000, [(2, 100), (1, None), (1, None)]) == pytest.approx([100, 450, 450])
    # Everyone capped below the budget: the rest stays unused.
    assert share_bandwidth(1000, [(1, 100), (1, 200)]) == pytest.approx([100, 200])


def test_nothing_to_share_with_no_transfers() -> None:
    assert share_bandwidth(1000, []) == []


@given(budget=st.integers(1, 10**9),
       demands=st.lists(st.tuples(st.integers(1, 10), st.one_of(st.none(), st.integers(1, 10**9))), max_size=8))
def test_a_share_never_exceeds_the_budget_nor_a_cap(budget: int, demands: list[tuple[int, int | None]]) -> None:
    shares = share_bandwidth(budget, [(float(w), None if c is None else float(c)) for w, c in demands])
    assert sum(shares) <= budget * (1 + 1e-9)
    for (_w, cap), share in zip(demands, shares, strict=True):
        assert share >= 0
        if cap is not None:
            assert share <= cap * (1 + 1e-9)
    # Work-conserving: the budget is used up unless every transfer is at its cap.
    if any(c is None for _w, c in demands) and demands:
        assert sum(shares) == pytest.approx(budget)


def test_rebalance_sets_each_control_and_skips_paused_ones() -> None:
    sched = BandwidthScheduler(900_000)
    a, b, c = TransferControl(), TransferControl(), TransferControl()
    sched.set_priority("a", 2)
    sched.rebalance([("a", a), ("b", b), ("c", c)])
    assert (a.rate_limit_bps, b.rate_limit_bps, c.rate_limit_bps) == (450_000, 225_000, 225_000)
    assert a.priority == 2 and b.priority == 1
    c.pause()
    sched.rebalance([("a", a), ("b", b), ("c", c)])
    assert (a.rate_limit_bps, b.rate_limit_bps) == (600_000, 300_000)
    assert c.rate_limit_bps == 225_000  # a paused transfer keeps its rate, so it does not burst on resume
    sched.set_limit("a", 100_000)
    sched.rebalance([("a", a), ("b", b)])
    assert (a.rate_limit_bps, b.rate_limit_bps) == (100_000, 800_000)


def test_without_a_budget_each_transfer_has_only_its_own_limit() -> None:
    sched = BandwidthScheduler()
    a, b = TransferControl(), TransferControl(rate_limit_bps=5)
    sched.set_limit("a", 300_000)
    sched.rebalance([("a", a), ("b", b)])
    assert (a.rate_limit_bps, b.rate_limit_bps) == (300_000, None)
    sched.set_limit("a", 0)
    sched.rebalance([("a", a)])
    assert a.rate_limit_bps is None


def test_bad_settings_are_refused() -> None:
    sched = BandwidthScheduler()
    with pytest.raises(ValueError):
        sched.set_priority("a", 0)
    with pytest.raises(ValueError):
        sched.set_budget(-1)


def test_a_limited_transfer_paused_mid_chunk_waits_in_throttle_and_resumes() -> None:
    control = TransferControl(rate_limit_bps=10_000_000)
    control.pause()
    done = threading.Event()
    t = threading.Thread(target=lambda: (control.throttle(1000), done.set()))
    t.start()
    assert not done.wait(0.3)
    control.resume()
    assert done.wait(2)
    t.join()


def test_cancel_wakes_a_paused_throttle() -> None:
    control = TransferControl(rate_limit_bps=10_000_000)
    control.pause()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            control.throttle(1000)
        except TransferCancelled as exc:
            failed.append(exc)

    t = threading.Thread(target=run)
    t.start()
    # Not a wait for anything: a head start, so cancel usually finds the thread asleep in the pause.
    # Had it not got there, throttle would see the flag on entry and raise just the same.
    time.sleep(0.1)
    control.cancel()
    t.join(2)
    assert failed and not t.is_alive()

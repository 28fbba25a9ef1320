"""The commission and its rounding, and amounts as people write them."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.money import MAX_FEE_BPS, fee, format_minor, interval_fee, interval_fees, interval_prices, parse_minor


@pytest.mark.parametrize(
    ("price", "bps", "expected"),
    [
        (50, 100, 1),  # exactly 0.5: rounds up
        (49, 100, 0),  # 0.49: rounds down
        (51, 100, 1),
        (150, 100, 2),  # 1.5: rounds up
        (149, 100, 1),
        (1250, 100, 13),  # 12.5: rounds up
        (1249, 100, 12),  # 12.49: rounds down
        (1000, 100, 10),  # exact, no rounding
        (1, 5000, 1),  # 0.5 at 50%: up
        (3, 5000, 2),  # 1.5 at 50%: up
        (0, 100, 0),
    ],
)
def test_fee_rounds_half_up(price: int, bps: int, expected: int) -> None:
    assert fee(price, bps) == expected


def test_zero_bps_takes_nothing_and_full_bps_takes_everything() -> None:
    assert fee(1234, 0) == 0
    assert fee(1234, MAX_FEE_BPS) == 1234


# -- interval sales: one cumulative rule ---------------------------------------------------------

def test_each_interval_pays_the_fee_on_all_paid_so_far_less_what_was_charged() -> None:
    # 1250 at 1% in 3 parts: 417, 417, 416; fees on 417, 834, 1250 are 4, 8, 13.
    assert interval_fee(1250, 3, 0, 100, charged=0) == 4
    assert interval_fee(1250, 3, 1, 100, charged=4) == 4
    assert interval_fee(1250, 3, 2, 100, charged=8) == 5


def test_the_last_interval_brings_the_fees_to_the_total_fixed_at_opening() -> None:
    # A sale whose rate was not recorded (0) still owes the fee it was opened with: the last part carries it.
    assert interval_fee(1250, 3, 0, 0, charged=0, total=13) == 0
    assert interval_fee(1250, 3, 2, 0, charged=0, total=13) == 13


@pytest.mark.parametrize("j", [-1, 3])
def test_an_interval_outside_the_sale_is_refused(j: int) -> None:
    with pytest.raises(ValueError):
        interval_fee(1250, 3, j, 100, charged=0)


@given(price=st.integers(1, 10**9), n=st.integers(1, 64), bps=st.integers(0, MAX_FEE_BPS))
def test_paying_interval_by_interval_costs_exactly_the_whole_fee(price: int, n: int, bps: int) -> None:
    charged, fees = 0, []
    for j in range(n):
        fees.append(interval_fee(price, n, j, bps, charged=charged))
        charged += fees[-1]
    assert fees == interval_fees(price, n, bps)
    assert charged == fee(price, bps)
    assert all(0 <= f <= p for f, p in zip(fees, interval_prices(price, n)))


@pytest.mark.parametrize(("price", "bps"), [(-1, 100), (100, -1), (100, MAX_FEE_BPS + 1)])
def test_fee_refuses_out_of_range(price: int, bps: int) -> None:
    with pytest.raises(ValueError, match="price must be >= 0 and bps within 0..10000"):
        fee(price, bps)


@pytest.mark.parametrize(("price", "bps"), [(10.0, 100), (100, 1.5), (True, 100), (100, True), ("100", 100)])
def test_fee_refuses_non_integers(price: object, bps: object) -> None:
    with pytest.raises(TypeError):
        fee(price, bps)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("amount", "text"),
    [(0, "0.00"), (5, "0.05"), (50, "0.50"), (1234, "12.34"), (100, "1.00"), (-5, "-0.05"), (-1234, "-12.34")],
)
def test_format_minor(amount: int, text: str) -> None:
    assert format_minor(amount) == text
    assert parse_minor(text) == amount


@pytest.mark.parametrize(
    ("text", "amount"),
    [("12.34", 1234), ("12", 1200), ("0.5", 50), (".5", 50), ("  7.10 ", 710), ("-3", -300), ("1.", 100)],
)
def test_parse_minor(text: str, amount: int) -> None:
    assert parse_minor(text) == amount


@pytest.mark.parametrize("amount", [-100_001, -1, 0, 1, 99, 100, 101, 123_456_789])
def test_format_then_parse_round_trips(amount: int) -> None:
    assert parse_minor(format_minor(amount)) == amount


def test_parse_refuses_three_decimals() -> None:
    with pytest.raises(ValueError, match="at most two decimals"):
        parse_minor("1.234")


@pytest.mark.parametrize("text", ["", "-", ".", "abc", "1,5", "1.x", "x.10", "+5", "1e3", "--1", "1.2.3", "1 000"])
def test_parse_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_minor(text)

"""The commission and its rounding, and amounts as people write them."""
from __future__ import annotations

import pytest

from broker.money import MAX_FEE_BPS, fee, format_minor, parse_minor, split


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


@pytest.mark.parametrize("price", [0, 1, 49, 50, 99, 1250, 10_001, 987_654_321])
@pytest.mark.parametrize("bps", [0, 1, 100, 250, 9_999, MAX_FEE_BPS])
def test_split_adds_back_to_the_price(price: int, bps: int) -> None:
    provider, commission = split(price, bps)
    assert provider + commission == price
    assert commission == fee(price, bps)
    assert 0 <= commission <= price


def test_zero_bps_takes_nothing_and_full_bps_takes_everything() -> None:
    assert split(1234, 0) == (1234, 0)
    assert split(1234, MAX_FEE_BPS) == (0, 1234)


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

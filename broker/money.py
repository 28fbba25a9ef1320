"""Money: whole minor units (cents), and the one rounding rule ACB has.

Commission rule: ``fee = price * bps / 10000`` rounded half up to a whole minor
unit, where ``bps`` is basis points (100 = 1%). Prices are positive, so "half
up" and "half away from zero" agree. The provider receives ``price - fee``;
the owner receives ``fee``; nothing is lost to rounding because the two parts
always add back to the price.

Interval sales (large files paid as they arrive): the price is split into
``n`` whole parts, the first ``price % n`` parts one unit larger
(:func:`interval_prices`); the fee of interval ``j`` is the fee of everything
paid up to and including ``j`` less the fees already charged, and the last
interval brings them to the fee fixed when the sale opened
(:func:`interval_fee`, the one place this rule lives), so the fees of all
intervals add up to exactly ``fee(price, bps)``: paying in parts never costs
anyone a rounding unit.
"""
from __future__ import annotations

__all__ = ["fee", "interval_prices", "interval_fee", "interval_fees", "format_minor", "parse_minor",
           "DEFAULT_FEE_BPS", "MAX_FEE_BPS"]

DEFAULT_FEE_BPS = 100
MAX_FEE_BPS = 10_000


def fee(price: int, bps: int) -> int:
    """The commission on ``price`` at ``bps`` basis points, rounded half up."""
    if not isinstance(price, int) or not isinstance(bps, int) or isinstance(price, bool) or isinstance(bps, bool):
        raise TypeError("price and bps are integers of minor units / basis points")
    if price < 0 or not 0 <= bps <= MAX_FEE_BPS:
        raise ValueError(f"price must be >= 0 and bps within 0..{MAX_FEE_BPS}")
    return (price * bps + 5_000) // 10_000


def interval_prices(price: int, n: int) -> list[int]:
    """``price`` split into ``n`` whole parts that add up to it, larger parts first."""
    if n < 1:
        raise ValueError("an interval sale has at least one interval")
    base, extra = divmod(price, n)
    return [base + (1 if j < extra else 0) for j in range(n)]


def interval_fee(price: int, n: int, j: int, bps: int, *, charged: int, total: int | None = None) -> int:
    """The fee of interval ``j`` (from 0) of ``n``: the fee on all paid through ``j`` less ``charged``.

    ``charged`` is what the earlier intervals were charged. The last interval brings the fees to ``total``,
    the fee fixed when the sale opened (default ``fee(price, bps)``), whatever rate was recorded.
    """
    if not 0 <= j < n:
        raise ValueError(f"interval {j} is not one of the sale's {n}")
    if j == n - 1:
        return (fee(price, bps) if total is None else total) - charged
    return fee(sum(interval_prices(price, n)[:j + 1]), bps) - charged


def interval_fees(price: int, n: int, bps: int) -> list[int]:
    """The fee of each interval: cumulative rounding, so they add up to ``fee(price, bps)``."""
    fees: list[int] = []
    for j in range(n):
        fees.append(interval_fee(price, n, j, bps, charged=sum(fees)))
    return fees


def format_minor(amount: int) -> str:
    """1234 -> '12.34', -5 -> '-0.05' (two decimals, for people)."""
    sign = "-" if amount < 0 else ""
    whole, cents = divmod(abs(amount), 100)
    return f"{sign}{whole}.{cents:02d}"


def parse_minor(text: str) -> int:
    """'12.34' -> 1234, '12' -> 1200, '0.5' -> 50. Refuses more than two decimals."""
    text = text.strip()
    neg = text.startswith("-")
    if neg:
        text = text[1:]
    whole, _, frac = text.partition(".")
    if not whole.isdigit() and not (whole == "" and frac):
        raise ValueError(f"not an amount: {text!r}")
    if frac and (not frac.isdigit() or len(frac) > 2):
        raise ValueError(f"an amount has at most two decimals: {text!r}")
    value = int(whole or "0") * 100 + int((frac + "00")[:2])
    return -value if neg else value

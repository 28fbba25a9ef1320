"""Voiding a sale answers with what it really gave back to the consumer."""
from __future__ import annotations

from broker import commands as c
from tests.conftest import SEGMENT, Book


def _split_sale(book: Book) -> Book:
    """bob opens a 1250 sale of alice's document in four intervals (313, 313, 312, 312), key escrowed."""
    for who in ("alice", "bob"):
        book.register(who)
    book.deposit("bob", 5000)
    cmd = book.publish_command("big", price=1250, size=7 * SEGMENT).model_copy(update={"interval_segments": 2})
    book.submit(cmd, "alice")
    book.open_sale("bob", "s-1", "big")
    book.escrow("s-1")
    return book


def test_voiding_a_part_paid_split_sale_reports_only_the_unpaid_rest(book: Book) -> None:
    _split_sale(book)
    book.submit(c.SettleInterval(sale_id="s-1", interval=0), "bob")
    book.submit(c.SettleInterval(sale_id="s-1", interval=1), "bob")
    before = book.state.balance("bob")
    result = book.submit(c.VoidSale(sale_id="s-1", reason="provider vanished"), "bob").result
    assert result == {"sale_id": "s-1", "released": 1250 - 313 - 313}
    assert book.state.balance("bob") - before == result["released"]


def test_voiding_an_unpaid_sale_reports_the_whole_price(book: Book) -> None:
    _split_sale(book)
    result = book.submit(c.VoidSale(sale_id="s-1"), "alice").result
    assert result == {"sale_id": "s-1", "released": 1250}
    assert book.state.holds("bob") == 0

"""Split sales: a large file paid interval by interval, each payment releasing only that interval's key."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker import commands as c
from broker import content
from broker.codec import b64d, b64e
from broker.money import fee, interval_fees, interval_prices
from broker.sealing import open_sealed, release_info
from ledger.model import OPEN, REFUNDED, SETTLED, VOIDED, invariant_violations
from tests.conftest import SEGMENT, Book
from tests.support.refusals import refused

# -- the money rule ------------------------------------------------------------------------------

def test_interval_prices_add_up_larger_parts_first() -> None:
    assert interval_prices(1000, 3) == [334, 333, 333]
    assert interval_prices(999, 3) == [333, 333, 333]
    assert interval_prices(2, 3) == [1, 1, 0]
    with pytest.raises(ValueError):
        interval_prices(10, 0)


def test_interval_fees_round_cumulatively_to_the_whole_fee() -> None:
    # 1250 at 1% in 3 parts: 417, 417, 416; fees of 417, 834, 1250 are 4, 8, 13 -> 4, 4, 5.
    assert interval_fees(1250, 3, 100) == [4, 4, 5]
    assert sum(interval_fees(1250, 3, 100)) == fee(1250, 100) == 13


@given(price=st.integers(1, 10**9), n=st.integers(1, 64), bps=st.integers(0, 10_000))
def test_split_never_costs_a_rounding_unit(price: int, n: int, bps: int) -> None:
    parts = interval_prices(price, n)
    assert sum(parts) == price and max(parts) - min(parts) <= 1
    fees = interval_fees(price, n, bps)
    assert sum(fees) == fee(price, bps) and all(0 <= f <= p for f, p in zip(fees, parts))


# -- the ledger ----------------------------------------------------------------------------------

def _split_market(book: Book, *, size: int = 7 * SEGMENT, every: int = 2, price: int = 1250) -> Book:
    for who in ("alice", "bob"):
        book.register(who)
    book.deposit("bob", 5000)
    cmd = book.publish_command("big", price=price, size=size).model_copy(update={"interval_segments": every})
    book.submit(cmd, "alice")
    return book


def test_opening_a_split_sale_shows_every_part(book: Book) -> None:
    _split_market(book)
    result = book.open_sale("bob", "s-1", "big").result
    assert result["intervals"] == 4 and result["interval_prices"] == [313, 313, 312, 312]
    sale = book.state.sales["s-1"]
    assert (sale.intervals, sale.interval_segments, sale.fee_bps) == (4, 2, 100)
    assert book.state.holds("bob") == 1250


def test_intervals_are_paid_in_order_each_releasing_its_own_key(book: Book) -> None:
    _split_market(book)
    book.open_sale("bob", "s-1", "big")
    key = book.escrow("s-1")
    refused(book, c.SettleInterval(sale_id="s-1", interval=1), "bob", "sale_closed", "the next to settle is 1 of 4")
    paid_fees = []
    for j in range(4):
        r = book.submit(c.SettleInterval(sale_id="s-1", interval=j), "bob").result
        k = open_sealed(book.members["bob"].box, b64d(r["consumer_sealed_key"]), release_info("s-1", j))
        assert k == content.interval_key(key, "s-1", j)
        # That key opens its own interval's segments and not the next one's.
        cipher = content.SegmentCipher(None, "s-1", 2, {j: k})
        seg = book.contents["big"][2 * j * SEGMENT:(2 * j + 1) * SEGMENT]
        full = content.SegmentCipher(key, "s-1", 2)
        assert cipher.decrypt(2 * j, full.encrypt(2 * j, seg)) == seg
        if j < 3:
            with pytest.raises(content.DecryptionFailed):
                cipher.decrypt(2 * j + 2, full.encrypt(2 * j + 2, seg))
        paid_fees.append(r["fee"])
        sale = book.state.sales["s-1"]
        assert sale.status == (SETTLED if j == 3 else OPEN)
        assert book.state.holds("bob") == 1250 - sale.paid
        assert invariant_violations(book.state) == []
    assert paid_fees == interval_fees(1250, 4, 100) and sum(paid_fees) == 13
    assert (book.state.balance("bob"), book.state.balance("alice"), book.state.balance("owner")) == (3750, 1237, 13)
    refused(book, c.SettleInterval(sale_id="s-1", interval=4), "bob", "sale_closed")


def test_voiding_mid_way_keeps_what_was_paid_and_releases_the_rest(book: Book) -> None:
    _split_market(book)
    book.open_sale("bob", "s-1", "big")
    book.escrow("s-1")
    book.submit(c.SettleInterval(sale_id="s-1", interval=0), "bob")
    book.submit(c.VoidSale(sale_id="s-1", reason="provider vanished"), "bob")
    sale = book.state.sales["s-1"]
    assert sale.status == VOIDED and sale.paid == 313
    assert (book.state.balance("bob"), book.state.holds("bob")) == (5000 - 313, 0)
    assert invariant_violations(book.state) == []


def test_settling_the_rest_at_once_pays_exactly_the_remainder(book: Book) -> None:
    _split_market(book)
    book.open_sale("bob", "s-1", "big")
    key = book.escrow("s-1")
    book.submit(c.SettleInterval(sale_id="s-1", interval=0), "bob")
    r = book.settle("bob", "s-1").result
    assert (r["price"], r["fee"]) == (1250 - 313, 13 - 3)
    assert open_sealed(book.members["bob"].box, b64d(r["consumer_sealed_key"]), release_info("s-1")) == key
    assert (book.state.balance("alice"), book.state.balance("owner")) == (1237, 13)
    assert invariant_violations(book.state) == []


def _split_evidence(book: Book, index: int, *, cheat: bool) -> c.FileDispute:
    sale = book.state.sales["s-1"]
    key = book.sale_keys["s-1"]
    data = book.contents["big"]
    segments = [data[i:i + SEGMENT] for i in range(0, len(data), SEGMENT)]
    plaintext = bytes(b ^ 0xFF for b in segments[index]) if cheat else segments[index]
    ct = content.SegmentCipher(key, "s-1", 2).encrypt(index, plaintext)
    tree = content.MerkleTree([content.leaf_hash(s) for s in segments])
    signer = book.members["alice"].sign
    doc = book.state.documents["big"]
    header = content.sign_header(signer, content.ManifestHeader(
        sale_id="s-1", doc_id="big", provider="alice", consumer="bob", key_commitment=content.key_commitment("s-1", key),
        size=doc.size, segment_size=doc.segment_size, segment_count=len(segments), merkle_root=doc.merkle_root))
    entry = content.sign_entry(signer, content.ManifestEntry(
        sale_id="s-1", index=index, ct_hash=content.ciphertext_hash(ct), ct_size=len(ct), proof=tuple(tree.proof(index))))
    assert sale.interval_segments == 2
    return c.FileDispute(sale_id="s-1", index=index, header=header.to_wire(), entry=entry.to_wire(), ciphertext=b64e(ct))


def test_a_cheat_caught_mid_way_refunds_what_was_paid_and_releases_the_rest(book: Book) -> None:
    _split_market(book)
    book.open_sale("bob", "s-1", "big")
    book.escrow("s-1")
    book.submit(c.SettleInterval(sale_id="s-1", interval=0), "bob")
    book.submit(c.SettleInterval(sale_id="s-1", interval=1), "bob")
    # A segment of an interval not paid yet cannot be disputed: its key was never released.
    refused(book, _split_evidence(book, 5, cheat=True), "bob", "sale_closed", "not yet settled")
    verdict = book.submit(_split_evidence(book, 3, cheat=True), "bob").result
    assert verdict["provider_cheated"] is True and verdict["refund"] == 626
    sale = book.state.sales["s-1"]
    assert sale.status == REFUNDED
    assert (book.state.balance("bob"), book.state.holds("bob")) == (5000, 0)
    assert (book.state.balance("alice"), book.state.balance("owner")) == (0, 0)
    assert invariant_violations(book.state) == []


def test_a_split_sale_cannot_be_settled_by_interval_when_it_is_whole(book: Book) -> None:
    _split_market(book, every=0)
    book.open_sale("bob", "s-1", "big")
    book.escrow("s-1")
    refused(book, c.SettleInterval(sale_id="s-1", interval=0), "bob", "not_authorized", "not split")

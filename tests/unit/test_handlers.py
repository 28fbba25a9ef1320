"""Deciding commands: what each one causes, and every refusal, with no broker and no database."""
from __future__ import annotations

import dataclasses
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from broker import commands as c
from broker import content, errors
from broker.codec import b64d, b64e
from broker.sealing import SealError, escrow_info, open_sealed, release_info, seal_to, x25519_public_raw
from ledger.handlers import expire_holds
from ledger.model import OPEN, REFUNDED, SETTLED, VOIDED, invariant_violations
from tests.conftest import Book, Member
from tests.support.refusals import refused


def open_and_escrow(book: Book, sale_id: str = "s-1", consumer: str = "bob") -> bytes:
    book.open_sale(consumer, sale_id, "doc-1")
    return book.escrow(sale_id)


# -- what commands cause ---------------------------------------------------------------------------

def test_register_creates_the_user_with_its_keys(book: Book) -> None:
    member = book.register("alice")
    user = book.state.users["alice"]
    assert (user.sign_key, user.box_key, user.cert_pem) == (member.sign_public, member.box_public, member.cert_pem)
    assert book.state.balance("alice") == 0
    assert book.state.commands[book.rows[-1].command_id]["result"] == {"login": "alice"}


def test_operator_deposit_credits_the_account(stocked_book: Book) -> None:
    decision = stocked_book.deposit("bob", 250)
    assert decision.result == {"account": "bob", "balance": 5250}
    assert stocked_book.state.balance("bob") == 5250
    assert stocked_book.state.deposited == 5300 + 250


def test_publish_records_the_document_for_its_provider(stocked_book: Book) -> None:
    doc = stocked_book.state.documents["doc-1"]
    assert (doc.provider, doc.price, doc.published, doc.topic) == ("alice", 1000, True, "physics")


def test_opening_a_sale_holds_the_price_and_fixes_the_fee(stocked_book: Book) -> None:
    decision = stocked_book.open_sale("bob", "s-1", "doc-1")
    assert decision.result == {"sale_id": "s-1", "price": 1000, "fee": 10, "deadline_ms": stocked_book.now_ms + 60_000,
                               "intervals": 1}
    assert (stocked_book.state.balance("bob"), stocked_book.state.holds("bob")) == (4000, 1000)
    stocked_book.submit(c.SetFee(bps=500), c.OPERATOR)
    key = stocked_book.escrow("s-1")
    stocked_book.settle("bob", "s-1")
    # The rate of the moment the sale opened applies, not the one of settlement.
    assert stocked_book.state.balance("owner") == 10
    assert stocked_book.state.balance("alice") == 990
    assert key == stocked_book.sale_keys["s-1"]


def test_escrow_records_the_commitment_and_is_idempotent(stocked_book: Book) -> None:
    stocked_book.open_sale("bob", "s-1", "doc-1")
    key = stocked_book.escrow("s-1")
    sale = stocked_book.state.sales["s-1"]
    assert sale.key_commitment == content.key_commitment("s-1", key)
    rows = len(stocked_book.rows)
    again = stocked_book.submit(stocked_book.escrow_command("s-1", key), "alice")
    assert again.events == [] and len(stocked_book.rows) == rows


def test_settle_pays_everyone_and_releases_the_key_to_the_consumer_only(stocked_book: Book) -> None:
    key = open_and_escrow(stocked_book)
    decision = stocked_book.settle("bob", "s-1")
    assert decision.result["price"] == 1000
    assert decision.result["fee"] == 10
    assert decision.result["provider_amount"] == 990
    state = stocked_book.state
    assert (state.balance("bob"), state.holds("bob")) == (4000, 0)
    assert state.balance("alice") == 990
    assert state.balance("owner") == 10
    assert state.sales["s-1"].status == SETTLED
    sealed = b64d(decision.result["consumer_sealed_key"])
    assert state.sales["s-1"].consumer_sealed_key == decision.result["consumer_sealed_key"]
    assert open_sealed(stocked_book.members["bob"].box, sealed, release_info("s-1")) == key
    with pytest.raises(SealError):
        open_sealed(stocked_book.members["carol"].box, sealed, release_info("s-1"))
    with pytest.raises(SealError):
        open_sealed(stocked_book.members["bob"].box, sealed, release_info("s-2"))
    assert invariant_violations(state) == []


@pytest.mark.parametrize("who", ["bob", "alice", c.OPERATOR])
def test_void_releases_the_hold(stocked_book: Book, who: str) -> None:
    stocked_book.open_sale("bob", "s-1", "doc-1")
    decision = stocked_book.submit(c.VoidSale(sale_id="s-1", reason="changed my mind"), who)
    assert decision.result == {"sale_id": "s-1", "released": 1000}
    assert (stocked_book.state.balance("bob"), stocked_book.state.holds("bob")) == (5000, 0)
    assert stocked_book.state.sales["s-1"].status == VOIDED
    assert stocked_book.state.sales["s-1"].reason == f"changed my mind by {who}"


def test_holds_expire_at_their_deadline(stocked_book: Book) -> None:
    stocked_book.open_sale("bob", "s-1", "doc-1")
    deadline = stocked_book.state.sales["s-1"].deadline_ms
    assert expire_holds(stocked_book.state, deadline - 1) == []
    stocked_book.now_ms = deadline
    [void] = stocked_book.tick()
    assert (void.sale_id, void.reason) == ("s-1", "expired")
    assert stocked_book.state.sales["s-1"].status == VOIDED
    assert stocked_book.state.balance("bob") == 5000
    assert stocked_book.tick() == []  # a voided sale does not expire again


def test_a_dispute_the_provider_loses_refunds_the_consumer(stocked_book: Book) -> None:
    open_and_escrow(stocked_book)
    stocked_book.settle("bob", "s-1")
    decision = stocked_book.submit(stocked_book.evidence("s-1", 1, cheat=True), "bob")
    assert decision.result["provider_cheated"] is True
    assert decision.result["refund"] == 1000 and decision.result["penalty"] == 0
    assert "not in the published document" in decision.result["reason"]
    state = stocked_book.state
    assert state.balance("bob") == 5000
    assert state.balance("alice") == 0
    assert state.balance("owner") == 0
    assert state.users["alice"].strikes == 1
    assert state.sales["s-1"].status == REFUNDED
    assert invariant_violations(state) == []


def test_a_dispute_over_genuine_content_costs_a_penalty(stocked_book: Book) -> None:
    open_and_escrow(stocked_book)
    stocked_book.settle("bob", "s-1")
    decision = stocked_book.submit(stocked_book.evidence("s-1", 2, cheat=False), "bob")
    assert decision.result["provider_cheated"] is False
    assert decision.result["refund"] == 0 and decision.result["penalty"] == 10
    state = stocked_book.state
    assert state.balance("bob") == 3990
    assert state.balance("owner") == 20
    assert state.balance("alice") == 990
    assert state.users["alice"].strikes == 0
    assert state.sales["s-1"].status == SETTLED and state.sales["s-1"].disputed
    assert invariant_violations(state) == []
    # One dispute per sale.
    refused(stocked_book, stocked_book.evidence("s-1", 0, cheat=True), "bob", "sale_closed", "already disputed")


def test_the_penalty_never_exceeds_what_the_consumer_has(stocked_book: Book) -> None:
    stocked_book.publish("alice", "doc-2", price=300)
    stocked_book.open_sale("carol", "s-2", "doc-2")
    stocked_book.escrow("s-2")
    stocked_book.settle("carol", "s-2")
    assert stocked_book.state.balance("carol") == 0
    decision = stocked_book.submit(stocked_book.evidence("s-2", 0, cheat=False), "carol")
    assert decision.result["penalty"] == 0
    assert stocked_book.state.balance("carol") == 0


def test_an_open_sale_cannot_be_disputed(stocked_book: Book) -> None:
    open_and_escrow(stocked_book)
    refused(stocked_book, stocked_book.evidence("s-1", 0, cheat=True), "bob", "sale_closed", "only what was paid for can be disputed")


def test_dispute_evidence_must_name_its_segment(stocked_book: Book) -> None:
    open_and_escrow(stocked_book)
    stocked_book.settle("bob", "s-1")
    evidence = stocked_book.evidence("s-1", 1, cheat=True).model_copy(update={"index": 0})
    refused(stocked_book, evidence, "bob", "malformed", "names segment 0")


# -- refusals --------------------------------------------------------------------------------------

def test_bad_signature_wrong_key(stocked_book: Book) -> None:
    refused(stocked_book, c.Deposit(account="bob", amount=10), c.OPERATOR, "bad_signature",
            key=Ed25519PrivateKey.generate())
    refused(stocked_book, c.OpenSale(sale_id="s-1", doc_id="doc-1", price=1000), "bob", "bad_signature",
            "signature of bob does not verify", key=stocked_book.members["carol"].sign)


def test_missing_signature(stocked_book: Book) -> None:
    refused(stocked_book, c.OpenSale(sale_id="s-1", doc_id="doc-1", price=1000), "bob", "bad_signature",
            "is not signed", key=None)


def test_a_fresh_id_under_an_old_signature_does_not_verify(stocked_book: Book) -> None:
    env = stocked_book.envelope(c.Deposit(account="bob", amount=10), c.OPERATOR)
    stocked_book.submit_envelope(env)
    replay = dataclasses.replace(env, id="replayed-0001", body={**env.body, "id": "replayed-0001"})
    before = stocked_book.state
    with pytest.raises(errors.BadSignature):
        stocked_book.submit_envelope(replay)
    assert stocked_book.state is before


@pytest.mark.parametrize("skew", [-2 * 3600 * 1000, 2 * 3600 * 1000])
def test_stale_command(stocked_book: Book, skew: int) -> None:
    refused(stocked_book, c.Deposit(account="bob", amount=10), c.OPERATOR, "stale_command",
            issued_at=stocked_book.now_ms + skew)


def test_unknown_user(stocked_book: Book) -> None:
    stranger = Member.create("dave")
    refused(stocked_book, c.OpenSale(sale_id="s-1", doc_id="doc-1", price=1000), "dave", "unknown_user", "no user 'dave'",
            key=stranger.sign)


def test_duplicate_registration(stocked_book: Book) -> None:
    impostor = Member.create("alice")
    refused(stocked_book, impostor.registration(), "alice", "duplicate_registration", "login 'alice' is taken",
            key=impostor.sign)


@pytest.mark.parametrize("login", ["operator", "owner", "ledger", "admin", "system"])
def test_reserved_logins(book: Book, login: str) -> None:
    member = Member.create(login)
    refused(book, member.registration(), login, "bad_login", "is reserved", key=member.sign)


def test_registration_is_signed_by_the_new_key_itself(book: Book) -> None:
    member = Member.create("erin")
    refused(book, member.registration(), "erin", "bad_signature", key=Ed25519PrivateKey.generate())
    refused(book, member.registration(), "frank", "not_authorized", key=member.sign)


def test_registration_certificate_must_cover_the_sign_key(book: Book) -> None:
    member = Member.create("erin")
    other = Member.create("erin")
    payload = member.registration().model_copy(update={"cert_pem": other.cert_pem})
    refused(book, payload, "erin", "malformed", "not a certificate of sign_key", key=member.sign)
    payload = member.registration().model_copy(update={"cert_pem": "not a certificate"})
    refused(book, payload, "erin", "malformed", "cert_pem is not a PEM certificate", key=member.sign)


def test_only_the_operator_deposits_or_sets_the_fee(stocked_book: Book) -> None:
    refused(stocked_book, c.Deposit(account="bob", amount=5000), "bob", "not_authorized", "only the operator may deposit")
    refused(stocked_book, c.SetFee(bps=0), "alice", "not_authorized")
    refused(stocked_book, c.Deposit(account="bob", amount=1), c.LEDGER, "not_authorized", key=stocked_book.operator)


def test_deposit_amount_and_account(stocked_book: Book) -> None:
    refused(stocked_book, c.Deposit(account="bob", amount=0), c.OPERATOR, "bad_amount")
    refused(stocked_book, c.Deposit(account="bob", amount=-5), c.OPERATOR, "bad_amount")
    refused(stocked_book, c.Deposit(account="nobody", amount=5), c.OPERATOR, "unknown_user")
    refused(stocked_book, c.SetFee(bps=10_001), c.OPERATOR, "bad_amount")


@pytest.mark.parametrize("price", [0, -1, -1000])
def test_bad_price(stocked_book: Book, price: int) -> None:
    refused(stocked_book, stocked_book.publish_command("doc-9", price=price), "alice", "bad_price")
    refused(stocked_book, c.ChangePrice(doc_id="doc-1", price=price), "alice", "bad_price")


def test_only_the_provider_changes_or_withdraws_a_document(stocked_book: Book) -> None:
    refused(stocked_book, c.ChangePrice(doc_id="doc-1", price=5), "bob", "not_authorized", "belongs to alice")
    refused(stocked_book, c.Unpublish(doc_id="doc-1"), "bob", "not_authorized")
    refused(stocked_book, stocked_book.publish_command("doc-1", price=5), "bob", "duplicate_document")


def test_own_document(stocked_book: Book) -> None:
    stocked_book.deposit("alice", 5000)
    refused(stocked_book, c.OpenSale(sale_id="s-1", doc_id="doc-1", price=1000), "alice", "own_document")


def test_price_changed(stocked_book: Book) -> None:
    stocked_book.submit(c.ChangePrice(doc_id="doc-1", price=1200), "alice")
    refused(stocked_book, c.OpenSale(sale_id="s-1", doc_id="doc-1", price=1000), "bob", "price_changed",
            "now 12.00, you agreed to 10.00")


def test_split_sale_interval_prices_must_be_the_ones_shown(stocked_book: Book) -> None:
    refused(stocked_book, c.OpenSale(sale_id="s-1", doc_id="doc-1", price=1000, interval_prices=[500, 500]), "bob",
            "price_changed", "now 10.00 in 1 intervals, you agreed to 5.00, 5.00")


def test_insufficient_funds(stocked_book: Book) -> None:
    message = refused(stocked_book, c.OpenSale(sale_id="s-1", doc_id="doc-1", price=1000), "carol", "insufficient_funds")
    assert message == "balance 300, price 1000"


def test_held_money_cannot_be_spent_twice(stocked_book: Book) -> None:
    for i in range(5):
        stocked_book.open_sale("bob", f"s-{i}", "doc-1")
    assert stocked_book.state.balance("bob") == 0
    refused(stocked_book, c.OpenSale(sale_id="s-5", doc_id="doc-1", price=1000), "bob", "insufficient_funds",
            "balance 0, price 1000")


def test_unknown_or_withdrawn_document(stocked_book: Book) -> None:
    refused(stocked_book, c.OpenSale(sale_id="s-1", doc_id="nope", price=1000), "bob", "unknown_document")
    stocked_book.submit(c.Unpublish(doc_id="doc-1"), "alice")
    refused(stocked_book, c.OpenSale(sale_id="s-1", doc_id="doc-1", price=1000), "bob", "unknown_document")


def test_duplicate_sale(stocked_book: Book) -> None:
    stocked_book.open_sale("bob", "s-1", "doc-1")
    refused(stocked_book, c.OpenSale(sale_id="s-1", doc_id="doc-1", price=1000), "bob", "duplicate_sale")


def test_not_your_sale(stocked_book: Book) -> None:
    open_and_escrow(stocked_book)
    refused(stocked_book, c.SettleSale(sale_id="s-1"), "carol", "not_your_sale", "between bob and alice")
    refused(stocked_book, c.SettleSale(sale_id="s-1"), "alice", "not_your_sale")
    refused(stocked_book, c.VoidSale(sale_id="s-1"), "carol", "not_your_sale")
    refused(stocked_book, stocked_book.escrow_command("s-1", os.urandom(32)), "bob", "not_your_sale")
    refused(stocked_book, c.SettleSale(sale_id="s-404"), "bob", "unknown_sale")


def test_sale_closed_when_settling_twice(stocked_book: Book) -> None:
    open_and_escrow(stocked_book)
    stocked_book.settle("bob", "s-1")
    refused(stocked_book, c.SettleSale(sale_id="s-1"), "bob", "sale_closed", "already settled")
    refused(stocked_book, c.VoidSale(sale_id="s-1"), "bob", "sale_closed")
    refused(stocked_book, stocked_book.escrow_command("s-1", os.urandom(32)), "alice", "sale_closed")


def test_a_voided_sale_cannot_be_settled(stocked_book: Book) -> None:
    open_and_escrow(stocked_book)
    stocked_book.submit(c.VoidSale(sale_id="s-1"), "bob")
    refused(stocked_book, c.SettleSale(sale_id="s-1"), "bob", "sale_closed", "already voided")


def test_key_not_escrowed(stocked_book: Book) -> None:
    stocked_book.open_sale("bob", "s-1", "doc-1")
    refused(stocked_book, c.SettleSale(sale_id="s-1"), "bob", "key_not_escrowed", "alice has not escrowed")


def test_bad_escrow_key_does_not_match_commitment(stocked_book: Book) -> None:
    stocked_book.open_sale("bob", "s-1", "doc-1")
    wrong = stocked_book.escrow_command("s-1", os.urandom(32), commitment=content.key_commitment("s-1", os.urandom(32)))
    refused(stocked_book, wrong, "alice", "bad_escrow", "does not match its commitment")


def test_bad_escrow_key_sealed_for_another_sale(stocked_book: Book) -> None:
    stocked_book.open_sale("bob", "s-1", "doc-1")
    stocked_book.open_sale("bob", "s-2", "doc-1")
    key = os.urandom(32)
    refused(stocked_book, stocked_book.escrow_command("s-1", key, sealed_for="s-2"), "alice", "bad_escrow", "does not open")


def test_bad_escrow_key_sealed_to_someone_else(stocked_book: Book) -> None:
    stocked_book.open_sale("bob", "s-1", "doc-1")
    honest = stocked_book.escrow_command("s-1", os.urandom(32))
    stranger = Book()
    stranger.ledger_key = X25519PrivateKey.generate()
    other = seal_to(x25519_public_raw(stranger.ledger_key), os.urandom(32), escrow_info("s-1"))
    sealed = honest.model_copy(update={"sealed_key": b64e(other)})
    refused(stocked_book, sealed, "alice", "bad_escrow", "does not open")
    refused(stocked_book, sealed.model_copy(update={"sealed_key": "not base64!"}), "alice", "bad_escrow")


def test_an_escrow_for_another_document_than_the_sales_is_refused(stocked_book: Book) -> None:
    stocked_book.publish("alice", "doc-2", price=5)
    stocked_book.open_sale("bob", "s-1", "doc-1")
    honest = stocked_book.escrow_command("s-1", os.urandom(32))
    other = stocked_book.state.documents["doc-2"]
    refused(stocked_book, honest.model_copy(update={"doc_id": "doc-2", "merkle_root": other.merkle_root}), "alice",
            "bad_escrow", "another document")
    refused(stocked_book, honest.model_copy(update={"merkle_root": other.merkle_root}), "alice", "bad_escrow",
            "another document")
    assert stocked_book.state.sales["s-1"].key_commitment is None


def test_bad_escrow_a_second_different_key(stocked_book: Book) -> None:
    open_and_escrow(stocked_book)
    refused(stocked_book, stocked_book.escrow_command("s-1", os.urandom(32)), "alice", "bad_escrow", "different key")
    assert stocked_book.state.sales["s-1"].status == OPEN


def test_the_sealed_escrow_is_for_the_ledger_only(stocked_book: Book) -> None:
    key = open_and_escrow(stocked_book)
    sealed = b64d(stocked_book.state.sales["s-1"].sealed_key)
    assert open_sealed(stocked_book.ledger_key, sealed, escrow_info("s-1")) == key
    with pytest.raises(SealError):
        open_sealed(stocked_book.members["bob"].box, sealed, escrow_info("s-1"))


def test_republishing_keeps_the_content_a_sale_was_judged_against(stocked_book: Book) -> None:
    # The dispute of a sale is judged against the document's published Merkle root. A provider who could
    # republish the same id with another root after selling would turn its cheating into "genuine".
    open_and_escrow(stocked_book)
    stocked_book.settle("bob", "s-1")
    stocked_book.submit(c.Unpublish(doc_id="doc-1"), "alice")
    forged = stocked_book.publish_command("doc-1", price=1000).model_copy(update={"merkle_root": "ee" * 32})
    refused(stocked_book, forged, "alice", "duplicate_document", "other content")
    # Republishing the same content (at a new price) is fine.
    stocked_book.submit(stocked_book.publish_command("doc-1", price=1100), "alice")
    assert stocked_book.state.documents["doc-1"].published
    assert stocked_book.state.documents["doc-1"].price == 1100
    decision = stocked_book.submit(stocked_book.evidence("s-1", 0, cheat=True), "bob")
    assert decision.result["provider_cheated"] is True


def test_a_lost_dispute_never_pays_a_consumer_who_owes(book: Book) -> None:
    # bob buys from alice, then sells to carol, spends his takings, and loses carol's dispute: he owes.
    for login in ("alice", "bob", "carol"):
        book.register(login)
    book.deposit("bob", 1000)
    book.deposit("carol", 1000)
    book.publish("alice", "doc-1", price=1000)
    book.open_sale("bob", "s-1", "doc-1")
    book.escrow("s-1")
    book.settle("bob", "s-1")
    book.publish("bob", "doc-b", price=500)
    book.open_sale("carol", "s-2", "doc-b")
    book.escrow("s-2")
    book.settle("carol", "s-2")
    book.publish("alice", "doc-2", price=495)
    book.open_sale("bob", "s-3", "doc-2")
    book.submit(book.evidence("s-2", 0, cheat=True), "carol")
    assert book.state.balance("bob") == -495
    owner = book.state.balance("owner")
    # Now bob files a false dispute about alice's genuine document.
    decision = book.submit(book.evidence("s-1", 0, cheat=False), "bob")
    assert decision.result["provider_cheated"] is False
    assert decision.result["penalty"] == 0
    assert book.state.balance("bob") == -495
    assert book.state.balance("owner") == owner
    assert invariant_violations(book.state) == []

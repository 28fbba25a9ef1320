"""The signed log, attacked: nothing applies unless a certified replica wrote it for someone entitled to ask.

Each forgery is ignored (the state is the same object as before, no row is stored), counted by kind,
and never halts: only a validly signed entry of the current primary that does not continue the chain does.
"""
from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import commands as c
from broker.errors import NotAuthorized
from broker.trust import raw_public, sign_roster
from ledger import events as ev
from ledger.log import ACCEPTED, HALT, IGNORED
from ledger.model import State
from tests.conftest import Book, Member


@pytest.fixture
def funded_with_mallory(book: Book) -> Book:
    book.register("bob")
    book.register("mallory")
    book.deposit("bob", 1000)
    return book


def ignored(book: Book, entry, kind: str) -> None:  # type: ignore[no-untyped-def]
    before, rows = book.state, len(book.rows)
    outcome = book.fold(entry)
    assert (outcome.verdict, outcome.kind) == (IGNORED, kind), outcome.reason
    assert book.state is before and len(book.rows) == rows


def test_an_unsigned_entry_is_ignored(funded_with_mallory: Book) -> None:
    env = funded_with_mallory.envelope(c.Deposit(account="mallory", amount=10**8), c.OPERATOR)
    entry = funded_with_mallory.entry([ev.Deposited(account="mallory", amount=10**8)], command_id=env.id, command=env,
                         sign_with=None)
    ignored(funded_with_mallory, entry, "unsigned")


def test_an_entry_signed_by_a_stranger_is_ignored(funded_with_mallory: Book) -> None:
    env = funded_with_mallory.envelope(c.Deposit(account="mallory", amount=10**8), c.OPERATOR)
    entry = funded_with_mallory.entry([ev.Deposited(account="mallory", amount=10**8)], command_id=env.id, command=env,
                         sign_with=Ed25519PrivateKey.generate())
    ignored(funded_with_mallory, entry, "bad_signature")


def test_an_entry_altered_after_signing_is_ignored(funded_with_mallory: Book) -> None:
    env = funded_with_mallory.envelope(c.Deposit(account="bob", amount=1), c.OPERATOR)
    entry = funded_with_mallory.entry([ev.Deposited(account="bob", amount=1)], command_id=env.id, command=env)
    forged = entry.model_copy(update={"events": [ev.Deposited(account="bob", amount=10**8).model_dump(mode="json")]})
    ignored(funded_with_mallory, forged, "bad_signature")


def test_a_new_epoch_by_an_uncertified_writer_is_ignored(funded_with_mallory: Book) -> None:
    mallory = Ed25519PrivateKey.generate()
    entry = funded_with_mallory.entry([ev.EpochStarted(epoch=9, replica="evil")], epoch=9, writer="evil", sign_with=mallory)
    ignored(funded_with_mallory, entry, "uncertified")
    assert funded_with_mallory.state.primary == "r1"


def test_a_new_epoch_with_a_roster_not_signed_by_the_operator_is_ignored(funded_with_mallory: Book) -> None:
    mallory = Ed25519PrivateKey.generate()
    roster = sign_roster(mallory, 99, {"evil": raw_public(mallory).hex()}, funded_with_mallory.now_ms)
    entry = funded_with_mallory.entry([ev.EpochStarted(epoch=9, replica="evil", roster=roster.to_wire())], epoch=9,
                         writer="evil", sign_with=mallory)
    ignored(funded_with_mallory, entry, "uncertified")


def test_writing_as_the_current_primary_without_its_key_is_ignored(funded_with_mallory: Book) -> None:
    env = funded_with_mallory.envelope(c.Deposit(account="mallory", amount=10**8), c.OPERATOR)
    entry = funded_with_mallory.entry([ev.Deposited(account="mallory", amount=10**8)], command_id=env.id, command=env,
                         writer="r1", sign_with=Ed25519PrivateKey.generate())
    ignored(funded_with_mallory, entry, "bad_signature")
    assert funded_with_mallory.state.balance("mallory") == 0


def test_a_forged_far_ahead_entry_does_not_halt(funded_with_mallory: Book) -> None:
    env = funded_with_mallory.envelope(c.Deposit(account="bob", amount=1), c.OPERATOR)
    entry = funded_with_mallory.entry([ev.Deposited(account="bob", amount=1)], command_id=env.id, command=env,
                         expected_seq=funded_with_mallory.state.seq + 10**6, sign_with=None)
    ignored(funded_with_mallory, entry, "unsigned")


def test_a_validly_signed_gap_still_halts(funded_with_mallory: Book) -> None:
    env = funded_with_mallory.envelope(c.Deposit(account="bob", amount=1), c.OPERATOR)
    entry = funded_with_mallory.entry([ev.Deposited(account="bob", amount=1)], command_id=env.id, command=env,
                         expected_seq=funded_with_mallory.state.seq + 5)
    assert funded_with_mallory.fold(entry).verdict == HALT


def test_a_deposit_without_the_operators_signature_is_ignored(funded_with_mallory: Book) -> None:
    # mallory signs an operator deposit with her own key; the primary signs the entry (a compromised primary).
    env = funded_with_mallory.envelope(c.Deposit(account="mallory", amount=10**8), c.OPERATOR, key=funded_with_mallory.members["mallory"].sign)
    entry = funded_with_mallory.entry([ev.Deposited(account="mallory", amount=10**8)], command_id=env.id, command=env)
    ignored(funded_with_mallory, entry, "unauthorized")


def test_an_event_with_no_command_behind_it_is_ignored(funded_with_mallory: Book) -> None:
    ignored(funded_with_mallory, funded_with_mallory.entry([ev.Deposited(account="mallory", amount=10**8)]), "unauthorized")
    ignored(funded_with_mallory, funded_with_mallory.entry([ev.Deposited(account="mallory", amount=5)], command_id="made-up-0001"),
            "unauthorized")


def test_an_event_other_than_the_one_signed_for_is_ignored(funded_with_mallory: Book) -> None:
    env = funded_with_mallory.envelope(c.Deposit(account="bob", amount=1), c.OPERATOR)
    entry = funded_with_mallory.entry([ev.Deposited(account="mallory", amount=10**8)], command_id=env.id, command=env)
    ignored(funded_with_mallory, entry, "unauthorized")


def test_re_registering_an_existing_user_is_ignored_even_from_the_primary(funded_with_mallory: Book) -> None:
    thief = Member.create("bob")
    env = funded_with_mallory.envelope(thief.registration(), "bob", key=thief.sign)
    payload = thief.registration()
    event = ev.UserRegistered(login="bob", sign_key=payload.sign_key, box_key=payload.box_key,
                              cert_pem=payload.cert_pem, keystore=payload.keystore)
    ignored(funded_with_mallory, funded_with_mallory.entry([event], command_id=env.id, command=env), "unauthorized")
    assert funded_with_mallory.state.users["bob"].sign_key == funded_with_mallory.members["bob"].sign_public


def test_spending_another_users_money_needs_that_users_signature(funded_with_mallory: Book) -> None:
    funded_with_mallory.publish("mallory", "doc-m", price=900)
    env = funded_with_mallory.envelope(c.OpenSale(sale_id="s-1", doc_id="doc-m", price=900), "bob",
                          key=funded_with_mallory.members["mallory"].sign)
    event = ev.SaleOpened(sale_id="s-1", doc_id="doc-m", consumer="bob", provider="mallory", price=900, fee=9,
                          deadline_ms=funded_with_mallory.now_ms + 1, intervals=1, interval_segments=0, fee_bps=100)
    ignored(funded_with_mallory, funded_with_mallory.entry([event], command_id=env.id, command=env), "unauthorized")


def test_a_hold_expires_only_after_its_deadline(funded_with_mallory: Book) -> None:
    funded_with_mallory.publish("mallory", "doc-m", price=100)
    funded_with_mallory.open_sale("bob", "s-1", "doc-m")
    ignored(funded_with_mallory, funded_with_mallory.entry([ev.SaleVoided(sale_id="s-1", reason="expired")]), "unauthorized")
    funded_with_mallory.now_ms += funded_with_mallory.hold_ttl_ms
    assert funded_with_mallory.fold(funded_with_mallory.entry([ev.SaleVoided(sale_id="s-1", reason="expired")])).verdict == ACCEPTED


def test_an_old_signed_entry_published_again_is_a_duplicate(funded_with_mallory: Book) -> None:
    for entry in list(funded_with_mallory.log):
        outcome = funded_with_mallory.fold(entry)
        assert outcome.verdict == IGNORED and outcome.kind in ("duplicate", "fenced"), outcome.reason


def test_a_removed_replicas_entries_are_ignored(funded_with_mallory: Book) -> None:
    funded_with_mallory.certify("r2")
    assert funded_with_mallory.announce(2, "r2").verdict == ACCEPTED
    roster = funded_with_mallory.certify(remove=("r2",))
    env = funded_with_mallory.envelope(c.SetRoster(roster=roster.to_wire()), c.OPERATOR)
    funded_with_mallory.writer = "r2"
    funded_with_mallory.submit_envelope(env)  # r2 itself writes the roster that removes it
    assert funded_with_mallory.state.roster is not None and funded_with_mallory.state.roster.key_of("r2") is None
    deposit = funded_with_mallory.envelope(c.Deposit(account="bob", amount=1), c.OPERATOR)
    entry = funded_with_mallory.entry([ev.Deposited(account="bob", amount=1)], command_id=deposit.id, command=deposit)
    ignored(funded_with_mallory, entry, "uncertified")
    # r1, still certified, takes over.
    funded_with_mallory.writer = "r1"
    assert funded_with_mallory.announce(3, "r1").verdict == ACCEPTED


def test_a_roster_only_moves_forward(funded_with_mallory: Book) -> None:
    old = funded_with_mallory.roster
    assert old is not None
    funded_with_mallory.certify("r2")
    funded_with_mallory.announce(2, "r2")
    serial = funded_with_mallory.state.roster.serial if funded_with_mallory.state.roster else 0
    funded_with_mallory.writer = "r2"
    with pytest.raises(NotAuthorized, match="not newer"):
        funded_with_mallory.submit(c.SetRoster(roster=old.to_wire()), c.OPERATOR)
    # Even a certified primary that writes it anyway cannot take the roster back.
    env = funded_with_mallory.envelope(c.SetRoster(roster=old.to_wire()), c.OPERATOR)
    assert funded_with_mallory.fold(funded_with_mallory.entry([ev.RosterChanged(roster=old.to_wire())], command_id=env.id, command=env,
                                    reply={})).verdict == ACCEPTED
    assert funded_with_mallory.state.roster is not None and funded_with_mallory.state.roster.serial == serial


def test_nothing_applies_before_a_roster_is_in_force() -> None:
    book = Book()
    fresh = State()
    entry = book.log[0]  # the first announcement, but with its roster stripped
    stripped = entry.model_copy(update={"events": [{**entry.events[0], "roster": None}]})
    from ledger.log import fold_entry

    outcome, state, rows = fold_entry(fresh, stripped, book.operator_public)
    assert (outcome.verdict, outcome.kind, state, rows) == (IGNORED, "uncertified", fresh, [])


# -- a certified primary may still not write what nobody signed for ------------------------------------

@pytest.fixture
def sale(funded_with_mallory: Book) -> Book:
    funded_with_mallory.publish("mallory", "doc-m", price=1000)
    funded_with_mallory.register("alice")
    funded_with_mallory.publish("alice", "doc-a", price=1000)
    funded_with_mallory.open_sale("bob", "s-1", "doc-a")
    funded_with_mallory.escrow("s-1")
    return funded_with_mallory


def test_a_sale_opened_for_another_provider_than_the_documents_is_ignored(funded_with_mallory: Book) -> None:
    funded_with_mallory.register("alice")
    funded_with_mallory.publish("alice", "doc-a", price=1000)
    env = funded_with_mallory.envelope(c.OpenSale(sale_id="s-9", doc_id="doc-a", price=1000), "bob")
    event = ev.SaleOpened(sale_id="s-9", doc_id="doc-a", consumer="bob", provider="mallory", price=1000, fee=10,
                          deadline_ms=funded_with_mallory.now_ms + 60_000, intervals=1, interval_segments=0, fee_bps=100)
    ignored(funded_with_mallory, funded_with_mallory.entry([event], command_id=env.id, command=env, reply={}), "unauthorized")


@pytest.mark.parametrize("change", [{"fee": 0}, {"deadline_ms": 0}, {"price": 1}, {"fee_bps": 0}])
def test_a_sale_opened_with_other_terms_than_the_ledgers_is_ignored(funded_with_mallory: Book, change: dict) -> None:
    funded_with_mallory.register("alice")
    funded_with_mallory.publish("alice", "doc-a", price=1000)
    env = funded_with_mallory.envelope(c.OpenSale(sale_id="s-9", doc_id="doc-a", price=1000), "bob")
    honest = funded_with_mallory.decide(c.OpenSale(sale_id="s-9", doc_id="doc-a", price=1000), "bob").events[0]
    event = honest.model_copy(update=change)
    ignored(funded_with_mallory, funded_with_mallory.entry([event], command_id=env.id, command=env, reply={}), "unauthorized")


def test_a_settle_paying_other_amounts_than_the_sales_is_ignored(sale: Book) -> None:
    env = sale.envelope(c.SettleSale(sale_id="s-1"), "bob")
    honest = sale.decide(c.SettleSale(sale_id="s-1"), "bob").events[0]
    for change in ({"provider_amount": honest.provider_amount + 500}, {"fee": 0}, {"price": 1}):
        forged = honest.model_copy(update=change)
        ignored(sale, sale.entry([forged], command_id=env.id, command=env, reply={}), "unauthorized")


def test_a_false_dispute_cannot_be_written_as_won(sale: Book) -> None:
    sale.settle("bob", "s-1")
    evidence = sale.evidence("s-1", 0, cheat=False)
    env = sale.envelope(evidence, "bob")
    honest = sale.decide(evidence, "bob").events[0]
    assert not honest.provider_cheated
    won = honest.model_copy(update={"provider_cheated": True, "refund": 10_980, "penalty": 0})
    ignored(sale, sale.entry([won], command_id=env.id, command=env, reply={}), "unauthorized")


def test_a_replica_judges_a_dispute_again_and_a_false_win_with_consistent_amounts_is_ignored(sale: Book) -> None:
    sale.settle("bob", "s-1")
    evidence = sale.evidence("s-1", 0, cheat=False)
    env = sale.envelope(evidence, "bob")
    s1 = sale.state.sales["s-1"]
    won = ev.DisputeResolved(sale_id="s-1", index=0, provider_cheated=True, reason="forged", refund=s1.paid,
                             penalty=0, fee_returned=s1.fee_paid, released=s1.held)
    ignored(sale, sale.entry([won], command_id=env.id, command=env, reply={}), "unauthorized")
    # The honest verdict, written as the ledger judged it, applies.
    assert sale.submit(evidence, "bob").events[0].provider_cheated is False


def test_an_epoch_announcement_riding_behind_another_event_is_ignored(sale: Book) -> None:
    sale.now_ms += sale.hold_ttl_ms
    mallory = Ed25519PrivateKey.generate()
    forged = {"serial": 10**18, "replicas": {"evil": raw_public(mallory).hex()}, "issued_at": 0, "signature": ""}
    entry = sale.entry([ev.SaleVoided(sale_id="s-1", reason="expired"),
                        ev.EpochStarted(epoch=sale.state.epoch, replica="r1", roster=forged)])
    ignored(sale, entry, "unauthorized")


def test_one_hold_cannot_be_released_twice_in_one_entry(sale: Book) -> None:
    sale.now_ms += sale.hold_ttl_ms
    twice = [ev.SaleVoided(sale_id="s-1", reason="expired")] * 2
    ignored(sale, sale.entry(twice), "unauthorized")


def test_a_reserved_login_cannot_be_registered_even_by_the_primary(funded_with_mallory: Book) -> None:
    owner = Member.create("owner")
    env = funded_with_mallory.envelope(owner.registration(), "owner", key=owner.sign)
    reg = owner.registration()
    event = ev.UserRegistered(login="owner", sign_key=reg.sign_key, box_key=reg.box_key, cert_pem=reg.cert_pem,
                              keystore=reg.keystore)
    ignored(funded_with_mallory, funded_with_mallory.entry([event], command_id=env.id, command=env, reply={}), "unauthorized")


def test_a_sale_the_buyer_cannot_pay_for_is_ignored_even_from_the_primary(funded_with_mallory: Book) -> None:
    funded_with_mallory.register("alice")
    funded_with_mallory.publish("alice", "doc-a", price=1000)
    env = funded_with_mallory.envelope(c.OpenSale(sale_id="s-9", doc_id="doc-a", price=1000), "mallory")
    event = ev.SaleOpened(sale_id="s-9", doc_id="doc-a", consumer="mallory", provider="alice", price=1000, fee=10,
                          deadline_ms=funded_with_mallory.now_ms + 60_000, intervals=1, interval_segments=0, fee_bps=100)
    ignored(funded_with_mallory, funded_with_mallory.entry([event], command_id=env.id, command=env, reply={}), "unauthorized")


def test_entries_that_would_not_apply_are_ignored_not_fatal(funded_with_mallory: Book) -> None:
    env = funded_with_mallory.envelope(c.VoidSale(sale_id="no-such-sale"), c.OPERATOR)
    event = ev.SaleVoided(sale_id="no-such-sale", reason="cancelled by operator")
    ignored(funded_with_mallory, funded_with_mallory.entry([event], command_id=env.id, command=env, reply={}), "unauthorized")
    env = funded_with_mallory.envelope(c.ChangeKeystore(keystore="eA=="), c.OPERATOR)
    event = ev.KeystoreChanged(login="operator", keystore="eA==")
    ignored(funded_with_mallory, funded_with_mallory.entry([event], command_id=env.id, command=env, reply={}), "unauthorized")


def test_numbers_that_do_not_survive_a_round_trip_are_not_json() -> None:
    from broker.codec import loads_object

    for bad in (b'{"x": NaN}', b'{"x": 1e400}', b'{"x": -Infinity}'):
        with pytest.raises(ValueError):
            loads_object(bad)

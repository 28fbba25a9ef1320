"""The state and the pure function that changes it: ``apply(state, record)``, no broker, no database."""
from __future__ import annotations

import dataclasses

import pytest

from ledger import events as ev
from ledger.model import (
    OPEN,
    REFUNDED,
    SETTLED,
    VOIDED,
    Record,
    State,
    apply,
    invariant_violations,
    state_from_dict,
    state_hash,
    state_to_dict,
)

AT = 1_800_000_000_000


def run(state: State, *events: object, command_id: str | None = None, reply: dict | None = None) -> State:
    """Apply events one after another as consecutive records (hashes are placeholders here)."""
    for i, event in enumerate(events):
        last = i == len(events) - 1
        state = apply(state, Record(state.seq + 1, 1, AT, event, f"{state.seq + 1:064x}",
                                    command_id, reply if last else None))
    return state


def user(login: str) -> ev.UserRegistered:
    return ev.UserRegistered(login=login, sign_key="11" * 32, box_key="22" * 32, cert_pem="pem", keystore="ks")


def doc(doc_id: str = "doc-1", provider: str = "alice", price: int = 1000) -> ev.DocumentPublished:
    return ev.DocumentPublished(doc_id=doc_id, provider=provider, title="Notes", topic="physics", description="",
                                price=price, size=2500, sha256="aa" * 32, merkle_root="bb" * 32,
                                segment_size=1024, endpoint="127.0.0.1:9000")


def opened(sale_id: str = "s-1", price: int = 1000, fee: int = 10) -> ev.SaleOpened:
    return ev.SaleOpened(sale_id=sale_id, doc_id="doc-1", consumer="bob", provider="alice", price=price, fee=fee,
                         deadline_ms=AT + 60_000)


@pytest.fixture
def with_sale() -> State:
    """alice sells doc-1 at 1000; bob deposited 5000 and has opened sale s-1 (fee 10)."""
    state = run(State(), ev.EpochStarted(epoch=1, replica="r1"), user("alice"), user("bob"),
                ev.Deposited(account="bob", amount=5000), doc(), opened())
    assert invariant_violations(state) == []
    return state


def test_apply_leaves_the_old_state_untouched() -> None:
    before = run(State(), user("bob"))
    digest = state_hash(before)
    after = run(before, ev.Deposited(account="bob", amount=700))
    assert before.balance("bob") == 0 and state_hash(before) == digest
    assert after.balance("bob") == 700 and after.deposited == 700
    assert after.seq == before.seq + 1


def test_deposit_credits_and_records_a_flow() -> None:
    state = run(State(), user("bob"), ev.Deposited(account="bob", amount=5000, memo="top-up"))
    assert state.balance("bob") == 5000
    assert state.deposited == 5000
    [(account, flow)] = state.last_flows  # the store keeps the history; the state says what the last event caused
    assert account == "bob"
    assert (flow.kind, flow.amount, flow.memo, flow.seq) == ("deposit", 5000, "top-up", 2)
    assert invariant_violations(state) == []


def test_opening_a_sale_moves_the_price_into_a_hold(with_sale: State) -> None:
    assert with_sale.balance("bob") == 4000
    assert with_sale.holds("bob") == 1000
    sale = with_sale.sales["s-1"]
    assert (sale.status, sale.price, sale.fee, sale.opened_seq) == (OPEN, 1000, 10, with_sale.seq)


def test_settling_pays_provider_and_owner_from_the_hold(with_sale: State) -> None:
    state = run(with_sale, ev.KeyEscrowed(sale_id="s-1", key_commitment="cc" * 32, sealed_key="c2VhbGVk"),
                ev.SaleSettled(sale_id="s-1", price=1000, fee=10, provider_amount=990, consumer_sealed_key="a2V5"))
    assert state.balance("bob") == 4000 and state.holds("bob") == 0
    assert state.balance("alice") == 990
    assert state.balance("owner") == 10
    sale = state.sales["s-1"]
    assert (sale.status, sale.consumer_sealed_key, sale.closed_seq) == (SETTLED, "a2V5", state.seq)
    assert invariant_violations(state) == []


def test_voiding_gives_the_hold_back(with_sale: State) -> None:
    state = run(with_sale, ev.SaleVoided(sale_id="s-1", reason="expired"))
    assert state.balance("bob") == 5000 and state.holds("bob") == 0
    assert state.sales["s-1"].status == VOIDED
    assert state.sales["s-1"].reason == "expired"
    assert invariant_violations(state) == []


def _settled(with_sale: State) -> State:
    return run(with_sale, ev.KeyEscrowed(sale_id="s-1", key_commitment="cc" * 32, sealed_key="c2VhbGVk"),
               ev.SaleSettled(sale_id="s-1", price=1000, fee=10, provider_amount=990, consumer_sealed_key="a2V5"))


def test_a_won_dispute_refunds_the_consumer_and_strikes_the_provider(with_sale: State) -> None:
    state = run(_settled(with_sale), ev.DisputeResolved(sale_id="s-1", index=1, provider_cheated=True,
                                                        reason="bad segment", refund=1000, penalty=0, fee_returned=10))
    assert state.balance("bob") == 5000
    assert state.balance("alice") == 0
    assert state.balance("owner") == 0
    assert state.users["alice"].strikes == 1
    assert (state.sales["s-1"].status, state.sales["s-1"].disputed) == (REFUNDED, True)
    assert invariant_violations(state) == []


def test_a_clawback_may_leave_a_struck_provider_owing(with_sale: State) -> None:
    # alice spent her takings on a sale of her own before the dispute came in.
    state = _settled(with_sale)
    state = run(state, doc("doc-2", provider="bob", price=990),
                ev.SaleOpened(sale_id="s-2", doc_id="doc-2", consumer="alice", provider="bob", price=990, fee=10,
                              deadline_ms=AT + 60_000),
                ev.DisputeResolved(sale_id="s-1", index=0, provider_cheated=True, reason="bad", refund=1000,
                                   penalty=0, fee_returned=10))
    assert state.balance("alice") == -990
    assert invariant_violations(state) == []


def test_a_lost_dispute_costs_the_consumer_a_penalty(with_sale: State) -> None:
    state = run(_settled(with_sale), ev.DisputeResolved(sale_id="s-1", index=0, provider_cheated=False,
                                                        reason="genuine", refund=0, penalty=10))
    assert state.balance("bob") == 3990
    assert state.balance("owner") == 20
    assert state.balance("alice") == 990
    assert (state.sales["s-1"].status, state.sales["s-1"].disputed) == (SETTLED, True)
    assert state.users["alice"].strikes == 0
    assert invariant_violations(state) == []


def test_document_lifecycle() -> None:
    state = run(State(), user("alice"), doc(price=1000), ev.PriceChanged(doc_id="doc-1", price=1500))
    assert state.documents["doc-1"].price == 1500 and state.documents["doc-1"].published
    state = run(state, ev.DocumentUnpublished(doc_id="doc-1"))
    assert not state.documents["doc-1"].published


def test_fee_and_epoch_changes() -> None:
    state = run(State(), ev.FeeSet(bps=250), ev.EpochStarted(epoch=3, replica="r2"))
    assert (state.fee_bps, state.epoch, state.primary) == (250, 3, "r2")


def test_the_reply_of_a_command_is_remembered_under_its_id() -> None:
    state = run(State(), user("bob"), command_id="cmd-000001", reply={"login": "bob"})
    assert state.commands["cmd-000001"] == {"seq": 1, "result": {"login": "bob"}}


def test_an_unknown_event_has_no_rule() -> None:
    with pytest.raises(TypeError, match="no apply rule for str"):
        apply(State(), Record(1, 1, AT, "not an event", "00" * 32))


def test_state_survives_a_round_trip_through_a_dict(with_sale: State) -> None:
    state = _settled(with_sale)
    again = state_from_dict(state_to_dict(state))
    assert state_hash(again) == state_hash(state)
    assert again == state


def test_state_hash_changes_with_any_balance(with_sale: State) -> None:
    tampered = dataclasses.replace(with_sale, balances=with_sale.balances.set("bob", 4001))
    assert state_hash(tampered) != state_hash(with_sale)


def test_invariants_catch_money_from_nowhere(with_sale: State) -> None:
    tampered = dataclasses.replace(with_sale, balances=with_sale.balances.set("bob", 4001))
    assert any("money not conserved" in p for p in invariant_violations(tampered))


def test_invariants_catch_a_hold_without_an_open_sale(with_sale: State) -> None:
    closed = dataclasses.replace(with_sale.sales["s-1"], status=VOIDED)
    tampered = dataclasses.replace(with_sale, sales=with_sale.sales.set("s-1", closed))
    assert any("holds of bob are 1000" in p for p in invariant_violations(tampered))


def test_invariants_catch_a_negative_balance_of_an_honest_user() -> None:
    state = run(State(), user("bob"), ev.Deposited(account="bob", amount=10))
    tampered = dataclasses.replace(state, balances=state.balances.set("bob", -5), deposited=-5)
    assert invariant_violations(tampered) == ["balance of bob is negative (-5)"]


def test_invariants_catch_a_key_released_without_settling(with_sale: State) -> None:
    leaked = dataclasses.replace(with_sale.sales["s-1"], consumer_sealed_key="a2V5")
    tampered = dataclasses.replace(with_sale, sales=with_sale.sales.set("s-1", leaked))
    assert invariant_violations(tampered) == ["sale s-1 released its key without settling"]

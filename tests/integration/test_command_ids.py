"""A command id belongs to the command that was signed with it: nobody else's answer is handed over under it.

With full broker rights an attacker sees a victim's command id in the queue before it is decided. Sending a
command of its own under that id first must neither earn the victim a false "ok" nor plant a refusal for it.
"""
from __future__ import annotations

import pytest

from broker import commands as c
from broker.envelope import new_id
from broker.errors import IdInUse, UnknownDocument
from tests.conftest import Deployment


@pytest.fixture(scope="module")
def mallory_and_bob(deployment: Deployment) -> dict[str, object]:
    mallory, bob = deployment.client(), deployment.client()
    mallory.register("mallory", "mallory-secret-1")
    bob.register("bob", "bob-secret-12")
    mallory.send(c.PublishDocument(doc_id="m-doc", title="m", topic="t", price=100, size=2048, sha256="ab" * 32,
                                   merkle_root="cd" * 32, segment_size=1024, endpoint="127.0.0.1:9000"))
    return {"mallory": mallory, "bob": bob}


def test_an_id_taken_first_by_another_command_is_refused_not_answered_ok(deployment: Deployment,
                                                                         mallory_and_bob: dict[str, object]) -> None:
    mallory, bob = mallory_and_bob["mallory"], mallory_and_bob["bob"]
    stolen = new_id()
    mallory.send(c.ChangePrice(doc_id="m-doc", price=101), command_id=stolen)  # type: ignore[attr-defined]
    operator = deployment.client()
    with pytest.raises(IdInUse, match="used by another command"):
        operator.send(c.Deposit(account="bob", amount=5000), sender=c.OPERATOR, key=deployment.operator_key(),
                      command_id=stolen)
    assert bob.balance()["available"] == 0  # type: ignore[attr-defined]
    # Sent again under a new id, the deposit applies.
    operator.send(c.Deposit(account="bob", amount=5000), sender=c.OPERATOR, key=deployment.operator_key())
    assert bob.balance()["available"] == 5000  # type: ignore[attr-defined]


def test_a_refusal_planted_under_someone_elses_id_is_not_theirs(deployment: Deployment,
                                                                mallory_and_bob: dict[str, object]) -> None:
    mallory, bob = mallory_and_bob["mallory"], mallory_and_bob["bob"]
    planted = new_id()
    with pytest.raises(UnknownDocument):
        mallory.send(c.ChangePrice(doc_id="ghost", price=1), command_id=planted)  # type: ignore[attr-defined]
    before = bob.balance()["available"]  # type: ignore[attr-defined]
    deployment.client().send(c.Deposit(account="bob", amount=7), sender=c.OPERATOR, key=deployment.operator_key(),
                             command_id=planted)
    assert bob.balance()["available"] == before + 7  # type: ignore[attr-defined]

"""Every query has a typed answer, and an answer that does not fit its model is malformed, not a KeyError later."""
from __future__ import annotations

import pytest

from broker import errors
from broker.answers import ANSWERS, BalanceAnswer, parse_answer
from broker.envelope import _known_types
from broker.queries import QUERY_ADAPTER


def test_every_query_has_an_answer_model() -> None:
    assert set(ANSWERS) == set(_known_types(QUERY_ADAPTER))


def test_a_fitting_answer_parses_to_its_model() -> None:
    answer = parse_answer("balance", {"account": "bob", "available": 10, "held": 2, "seq": 7})
    assert isinstance(answer, BalanceAnswer) and (answer.available, answer.held) == (10, 2)
    assert answer.to_result() == {"account": "bob", "available": 10, "held": 2, "seq": 7}


@pytest.mark.parametrize("result", [
    {"account": "bob", "available": "a lot", "held": 0, "seq": 1},  # wrong type
    {"account": "bob", "held": 0, "seq": 1},  # missing
    {"account": "bob", "available": 1, "held": 0, "seq": 1, "note": "trust me"},  # added
    [1, 2, 3],
])
def test_an_answer_that_does_not_fit_is_malformed(result: object) -> None:
    with pytest.raises(errors.MalformedMessage, match="the answer to balance does not fit"):
        parse_answer("balance", result)


def test_an_answer_to_an_unknown_query_is_malformed() -> None:
    with pytest.raises(errors.MalformedMessage):
        parse_answer("print_money", {})

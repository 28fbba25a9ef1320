"""Answers to queries: one typed model per query, checked on both ends.

A replica builds the answer as its model (so it cannot send a shape the
client does not know), and the client validates what arrives against the
model of the query it asked (so a field missing, mistyped or added is a
malformed answer, never a silent ``KeyError`` later). On the wire an answer
is the model's JSON object inside a signed :class:`broker.replies.Reply`.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from broker import errors

__all__ = [
    "Answer", "BalanceAnswer", "FlowLine", "FlowsAnswer", "SaleAnswer", "SalesAnswer", "UserAnswer",
    "DocumentAnswer", "SearchHit", "SearchAnswer", "LedgerInfoAnswer", "LoginChallengeAnswer", "LoginAnswer",
    "CommandStatusAnswer", "APPLIED", "UNKNOWN", "EXPIRED", "ANSWERS", "parse_answer",
]


class Answer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_result(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class BalanceAnswer(Answer):
    account: str
    available: int
    held: int
    seq: int


class FlowLine(Answer):
    seq: int
    at_ms: int
    kind: str
    amount: int
    counterparty: str = ""
    doc_id: str = ""
    sale_id: str = ""
    memo: str = ""


class FlowsAnswer(Answer):
    account: str
    flows: list[FlowLine]
    seq: int


class _SaleFields(Answer):
    sale_id: str
    doc_id: str
    consumer: str
    provider: str
    price: int
    fee: int
    deadline_ms: int
    status: str
    opened_seq: int
    key_commitment: str | None = None
    consumer_sealed_key: str | None = None  # only in the consumer's own answers
    closed_seq: int | None = None
    reason: str = ""
    disputed: bool = False
    fee_bps: int = 0
    intervals: int = 1
    interval_segments: int = 0
    settled_intervals: int = 0
    paid: int = 0
    fee_paid: int = 0
    interval_sealed_keys: list[str] | None = None  # only in the consumer's own answers


class SaleAnswer(_SaleFields):
    """One sale, to one of its parties (or the operator), with the consumer's certificate for the provider."""

    consumer_cert_pem: str
    consumer_sign_key: str
    seq: int


class SalesAnswer(Answer):
    account: str
    sales: list[_SaleFields]
    seq: int


class UserAnswer(Answer):
    login: str
    sign_key: str
    box_key: str
    cert_pem: str
    strikes: int
    registered_seq: int


class DocumentAnswer(Answer):
    doc_id: str
    provider: str
    title: str
    topic: str
    description: str
    price: int
    size: int
    sha256: str
    merkle_root: str
    segment_size: int
    endpoint: str
    published: bool
    published_seq: int
    interval_segments: int = 0
    provider_sign_key: str
    provider_cert_pem: str
    provider_strikes: int
    seq: int


class SearchHit(Answer):
    doc_id: str
    title: str
    topic: str
    description: str
    price: int
    size: int
    provider: str
    endpoint: str
    sha256: str
    merkle_root: str
    segment_size: int
    score: int


class SearchAnswer(Answer):
    hits: list[SearchHit]
    seq: int


class LedgerInfoAnswer(Answer):
    ledger_box_key: str
    fee_bps: int
    seq: int
    epoch: int
    primary: str | None
    owner: str
    roster: dict[str, Any] | None = None  # operator-signed: see broker.trust.Roster


class LoginChallengeAnswer(Answer):
    challenge: str
    keystore: str | None = None  # only when asked for, and rate-limited per login


class LoginAnswer(Answer):
    login: str
    available: int
    held: int


APPLIED, UNKNOWN, EXPIRED = "applied", "unknown", "expired"


class CommandStatusAnswer(Answer):
    """What became of a command, as the answering replica's log says at ``seq``.

    ``applied``: at ``applied_seq``, answered ``result`` (``digest`` is the SHA-256 of the applied command's
    signed body: compare it with yours, another command may have taken the id). ``expired``: not applied,
    and past its deadline by more than any primary still applies it: it never will be. ``unknown``: not
    applied as of ``seq``; it may be still (ask again later), or was refused (refusals are not logged).
    """

    command_id: str
    status: str
    seq: int
    applied_seq: int | None = None
    result: dict[str, Any] | None = None
    digest: str | None = None


ANSWERS: dict[str, type[Answer]] = {
    "balance": BalanceAnswer, "flows": FlowsAnswer, "sale": SaleAnswer, "sales": SalesAnswer, "user": UserAnswer,
    "document": DocumentAnswer, "search": SearchAnswer, "ledger_info": LedgerInfoAnswer,
    "login_challenge": LoginChallengeAnswer, "login": LoginAnswer, "command_status": CommandStatusAnswer,
}


def parse_answer(query_type: str, result: Any) -> Answer:
    """The typed answer to a query of ``query_type``; raise MalformedMessage when ``result`` does not fit."""
    model = ANSWERS.get(query_type)
    if model is None:
        raise errors.MalformedMessage(f"no answer is known for a {query_type!r} query")
    try:
        return model.model_validate(result)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "answer"
        raise errors.MalformedMessage(f"the answer to {query_type} does not fit: {where}: {first['msg']}") from exc

"""Events: what happened, as the log records it.

Frozen pydantic models with a ``type`` discriminator and a ``schema_version``.
An older version is upcast on read by a named function in ``UPCASTERS``; the
stored row shape (see :mod:`ledger.store`) never changes for a new event shape.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

__all__ = [
    "Event", "EVENT_ADAPTER", "parse_event", "UPCASTERS", "EpochStarted", "UserRegistered", "Deposited",
    "FeeSet", "DocumentPublished", "DocumentUnpublished", "PriceChanged", "SaleOpened", "KeyEscrowed",
    "SaleSettled", "IntervalSettled", "SaleVoided", "DisputeResolved", "RosterChanged", "KeystoreChanged",
]


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_version: Literal[1] = 1


class EpochStarted(_Event):
    """A replica became primary; events of older epochs that follow are ignored."""

    type: Literal["epoch_started"] = "epoch_started"
    epoch: int
    replica: str
    # The operator-signed roster the new primary knows, when newer than the log's (see broker.trust).
    roster: dict[str, Any] | None = None


class RosterChanged(_Event):
    """The operator certified a new set of replica keys (a replica added or removed)."""

    type: Literal["roster_changed"] = "roster_changed"
    roster: dict[str, Any]


class KeystoreChanged(_Event):
    """A user stored a re-wrapped keystore (same keys)."""

    type: Literal["keystore_changed"] = "keystore_changed"
    login: str
    keystore: str


class UserRegistered(_Event):
    type: Literal["user_registered"] = "user_registered"
    login: str
    sign_key: str
    box_key: str
    cert_pem: str
    keystore: str


class Deposited(_Event):
    type: Literal["deposited"] = "deposited"
    account: str
    amount: int
    memo: str = ""


class FeeSet(_Event):
    type: Literal["fee_set"] = "fee_set"
    bps: int


class DocumentPublished(_Event):
    type: Literal["document_published"] = "document_published"
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
    interval_segments: int = 0


class DocumentUnpublished(_Event):
    type: Literal["document_unpublished"] = "document_unpublished"
    doc_id: str


class PriceChanged(_Event):
    type: Literal["price_changed"] = "price_changed"
    doc_id: str
    price: int


class SaleOpened(_Event):
    """The price is held from the consumer; the fee is fixed at the rate of this moment."""

    type: Literal["sale_opened"] = "sale_opened"
    sale_id: str
    doc_id: str
    consumer: str
    provider: str
    price: int
    fee: int
    deadline_ms: int
    intervals: int = 1  # >1: paid interval by interval, each releasing its own key
    interval_segments: int = 0
    fee_bps: int = 0  # the rate the fee was fixed at (interval fees are computed from it)


class KeyEscrowed(_Event):
    type: Literal["key_escrowed"] = "key_escrowed"
    sale_id: str
    key_commitment: str
    sealed_key: str  # HPKE to the ledger's key; opened only to check it and to release it
    doc_id: str | None = None  # the document the key was escrowed for (absent in entries before it was named)


class SaleSettled(_Event):
    """Consumer pays, provider and owner are credited, and the key goes to the consumer only."""

    type: Literal["sale_settled"] = "sale_settled"
    sale_id: str
    price: int
    fee: int
    provider_amount: int
    consumer_sealed_key: str  # HPKE of K to the consumer's box key


class IntervalSettled(_Event):
    """One interval of a split sale is paid for, and its key goes to the consumer only."""

    type: Literal["interval_settled"] = "interval_settled"
    sale_id: str
    interval: int
    price: int
    fee: int
    provider_amount: int
    consumer_sealed_key: str  # HPKE of the interval's key to the consumer's box key
    deadline_ms: int  # the sale's new deadline: the next interval may take as long again


class SaleVoided(_Event):
    type: Literal["sale_voided"] = "sale_voided"
    sale_id: str
    reason: str


class DisputeResolved(_Event):
    """A dispute judged with the escrowed key: a refund if the provider cheated, else a penalty."""

    type: Literal["dispute_resolved"] = "dispute_resolved"
    sale_id: str
    index: int
    provider_cheated: bool
    reason: str
    refund: int  # to the consumer: all it paid; the provider returns refund - fee_returned
    penalty: int  # a false dispute costs the disputer this, paid to the owner
    fee_returned: int = 0  # the owner returns the commission it took on the refunded payments
    released: int = 0  # what was still held for unpaid intervals goes back to the consumer


Event = Annotated[
    Union[
        EpochStarted, UserRegistered, Deposited, FeeSet, DocumentPublished, DocumentUnpublished,
        PriceChanged, SaleOpened, KeyEscrowed, SaleSettled, IntervalSettled, SaleVoided, DisputeResolved,
        RosterChanged, KeystoreChanged,
    ],
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

# (type, version) -> function lifting a stored payload to a later version. None yet: version 1 is current.
# Fields added since version 1 have defaults instead (an older payload reads as the field's default); every
# upcaster comes with an old payload in tests/unit/test_upcasters.py.
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}


def parse_event(payload: dict[str, Any]) -> Event:
    """Typed event from a stored or received payload, upcasting old versions first (ValueError if it does not
    parse)."""
    version = payload.get("schema_version", 1)
    while (payload.get("type"), version) in UPCASTERS:
        payload = UPCASTERS[(payload["type"], version)](payload)
        lifted = payload.get("schema_version")
        if not isinstance(lifted, int) or lifted <= version:
            # Without this an upcaster that forgot to say its version would loop forever on every read.
            raise ValueError(f"the upcaster of {payload.get('type')} version {version} does not raise the version")
        version = lifted
    return EVENT_ADAPTER.validate_python(payload)

"""Old event payloads read by today's code: every upcaster, and every field added since the first version.

An event is stored as its writer wrote it (see test_stored_bytes.py) and brought up to date only when read,
by :func:`ledger.events.parse_event`. Each upcaster in ``ledger.events.UPCASTERS`` must have an old payload
in ``OLD_VERSIONS`` below, and each field added to a version later must read as its default when absent.
(Commands have no upcasters: an envelope of another version is refused, see test_envelope.py.)
"""
from __future__ import annotations

from typing import Any

import pytest

from ledger import events as ev

# (type, version) -> (a payload of that version, the event it reads as today)
OLD_VERSIONS: dict[tuple[str, int], tuple[dict[str, Any], Any]] = {}


def test_every_upcaster_has_an_old_payload_tested_here() -> None:
    assert set(ev.UPCASTERS) == set(OLD_VERSIONS)


def test_each_old_version_reads_as_the_current_event() -> None:
    for old, current in OLD_VERSIONS.values():
        assert ev.parse_event(old) == current


# Fields added after the first entries were written: an entry without them still reads, with the default.
WRITTEN_BEFORE: list[tuple[dict[str, Any], Any]] = [
    ({"type": "deposited", "account": "bob", "amount": 5},
     ev.Deposited(account="bob", amount=5, memo="")),
    ({"type": "epoch_started", "epoch": 2, "replica": "r2"},
     ev.EpochStarted(epoch=2, replica="r2", roster=None)),
    ({"type": "document_published", "doc_id": "d", "provider": "alice", "title": "t", "topic": "x",
      "description": "", "price": 10, "size": 1, "sha256": "0" * 64, "merkle_root": "0" * 64, "segment_size": 1,
      "endpoint": "127.0.0.1:9"},
     ev.DocumentPublished(doc_id="d", provider="alice", title="t", topic="x", description="", price=10, size=1,
                          sha256="0" * 64, merkle_root="0" * 64, segment_size=1, endpoint="127.0.0.1:9",
                          interval_segments=0)),
    ({"type": "sale_opened", "sale_id": "s", "doc_id": "d", "consumer": "bob", "provider": "alice", "price": 10,
      "fee": 0, "deadline_ms": 1},
     ev.SaleOpened(sale_id="s", doc_id="d", consumer="bob", provider="alice", price=10, fee=0, deadline_ms=1,
                   intervals=1, interval_segments=0, fee_bps=0)),
    ({"type": "key_escrowed", "sale_id": "s", "key_commitment": "c", "sealed_key": "k"},
     ev.KeyEscrowed(sale_id="s", key_commitment="c", sealed_key="k", doc_id=None)),
    ({"type": "dispute_resolved", "sale_id": "s", "index": 0, "provider_cheated": True, "reason": "r", "refund": 10,
      "penalty": 0},
     ev.DisputeResolved(sale_id="s", index=0, provider_cheated=True, reason="r", refund=10, penalty=0,
                        fee_returned=0, released=0)),
]


@pytest.mark.parametrize(("old", "current"), WRITTEN_BEFORE, ids=[p["type"] for p, _ in WRITTEN_BEFORE])
def test_an_event_written_before_a_field_was_added_reads_with_its_default(old: dict[str, Any], current: Any) -> None:
    assert ev.parse_event(old) == current
    assert ev.parse_event({**old, "schema_version": 1}) == current


def test_upcasters_are_applied_one_version_after_another(monkeypatch: pytest.MonkeyPatch) -> None:
    # A made-up history of fee_set: version -1 said "percent", version 0 "basis_points", version 1 "bps".
    monkeypatch.setitem(ev.UPCASTERS, ("fee_set", -1), lambda p: {"type": "fee_set", "schema_version": 0,
                                                                  "basis_points": p["percent"] * 100})
    monkeypatch.setitem(ev.UPCASTERS, ("fee_set", 0), lambda p: {"type": "fee_set", "schema_version": 1,
                                                                 "bps": p["basis_points"]})
    assert ev.parse_event({"type": "fee_set", "schema_version": -1, "percent": 2}) == ev.FeeSet(bps=200)
    assert ev.parse_event({"type": "fee_set", "schema_version": 0, "basis_points": 150}) == ev.FeeSet(bps=150)


def test_an_upcaster_that_does_not_move_the_version_up_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ev.UPCASTERS, ("fee_set", 0), lambda p: {**p, "bps": 1})
    with pytest.raises(ValueError, match="does not raise the version"):
        ev.parse_event({"type": "fee_set", "schema_version": 0})


@pytest.mark.parametrize("version", [0, 2, "1"])
def test_a_version_nobody_upcasts_is_refused(version: object) -> None:
    with pytest.raises(ValueError):
        ev.parse_event({"type": "fee_set", "schema_version": version, "bps": 100})

"""Turns between channels: a flood waits its turn, a lone command goes next."""
from __future__ import annotations

from ledger.fairness import FairInbox


def test_a_lone_command_goes_in_the_next_batch_behind_a_flood() -> None:
    inbox: FairInbox[str] = FairInbox(per_channel=10_000)
    for i in range(5000):
        inbox.add("flood", f"f{i}")
    inbox.add("honest", "h0")
    first = inbox.take(8)
    assert "h0" in first and len(first) == 8
    assert len(inbox) == 5000 - 7


def test_turns_keep_each_channels_order() -> None:
    inbox: FairInbox[str] = FairInbox()
    for i in range(3):
        inbox.add("a", f"a{i}")
        inbox.add("b", f"b{i}")
    taken = inbox.take(100)
    assert [t for t in taken if t[0] == "a"] == ["a0", "a1", "a2"]
    assert [t for t in taken if t[0] == "b"] == ["b0", "b1", "b2"]
    assert len(inbox) == 0 and inbox.take(5) == []


def test_a_channel_over_its_share_is_refused_others_are_not() -> None:
    inbox: FairInbox[int] = FairInbox(per_channel=3)
    assert [inbox.add("flood", i) for i in range(5)] == [True, True, True, False, False]
    assert inbox.add("honest", 1)
    assert len(inbox) == 4
    inbox.take(2)  # one of each
    assert inbox.add("flood", 99)  # room again once its commands were taken


def test_drain_hands_everything_back() -> None:
    inbox: FairInbox[int] = FairInbox()
    for i in range(4):
        inbox.add(str(i % 2), i)
    assert sorted(inbox.drain()) == [0, 1, 2, 3] and len(inbox) == 0


def test_a_batch_of_large_entries_is_cut_into_messages_below_the_limit() -> None:
    from ledger.log import LogBatch, LogEntry
    from ledger.primary import log_messages

    def entry(i: int, size: int) -> LogEntry:
        return LogEntry(entry_id=f"e{i}", epoch=1, writer="r1", expected_seq=i + 1, prev_hash="0" * 64, at_ms=0,
                        events=[{"type": "deposited", "pad": "x" * size}])

    entries = [entry(i, 3000 if i % 3 else 100) for i in range(30)]
    messages = log_messages(entries, limit=10_000)
    assert all(len(m) <= 10_000 + 500 for m in messages) and len(messages) > 1
    again = [e for m in messages for e in LogBatch.model_validate_json(m).entries]
    assert again == entries  # nothing lost, nothing reordered
    assert log_messages([entry(0, 50_000)], limit=10_000) and len(log_messages([entry(0, 50_000)], limit=10)) == 1

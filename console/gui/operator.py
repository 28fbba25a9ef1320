"""The operator's calls, without Qt: balances, deposits, the fee, and a look at the dead letters.

Everything goes through broker contracts: signed envelopes with the operator
key, answered by the ledger. Each :class:`Operator` owns one broker
connection, so a worker thread makes its own.
"""
from __future__ import annotations

import json
from typing import Any, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import client
from broker import commands as c
from broker import queries as q
from broker.client import BrokerClient, peek_dead_letters
from broker.envelope import seal
from broker.topology import Names
from console.gui.state import DeadLetter, DeadLetters

__all__ = ["Operator", "read_dead_letters"]


class Operator:
    """Operator commands and queries on one broker connection (one thread only)."""

    def __init__(self, url: str, names: Names, key: Ed25519PrivateKey | None, *, min_seq: int = 0) -> None:
        self.broker = BrokerClient(url, names)
        self.key = key
        self.last_seq = min_seq

    def close(self) -> None:
        self.broker.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _command(self, payload: Any) -> dict[str, Any]:
        reply = self.broker.request(seal(payload, sender=c.OPERATOR, key=self._key()), timeout=30.0).unwrap()
        if reply.seq:
            self.last_seq = max(self.last_seq, reply.seq)
        return reply.result

    def _query(self, payload: Any, *, signed: bool = True) -> dict[str, Any]:
        env = seal(payload, sender=c.OPERATOR if signed else "anonymous", key=self._key() if signed else None,
                   kind="query", min_seq=self.last_seq)
        return self.broker.request(env, timeout=15.0).unwrap().result

    def _key(self) -> Ed25519PrivateKey:
        if self.key is None:
            raise PermissionError("no operator key on this machine: run `acb init` where the ledger was set up")
        return self.key

    def balance(self, account: str) -> dict[str, Any]:
        """``{account, available, held, seq}`` of any account (``owner`` is the commission account)."""
        return self._query(q.Balance(account=account))

    def deposit(self, account: str, amount: int, memo: str = "") -> dict[str, Any]:
        """Credit ``amount`` minor units to ``account``; returns ``{account, balance}``."""
        return self._command(c.Deposit(account=account, amount=amount, memo=memo))

    def set_fee(self, bps: int) -> dict[str, Any]:
        """Set the commission in basis points (100 = 1%)."""
        return self._command(c.SetFee(bps=bps))

    def ledger_info(self) -> dict[str, Any]:
        """Public facts: ``fee_bps``, ``seq``, ``epoch``, ``primary``."""
        return self._query(q.LedgerInfo(), signed=False)


def read_dead_letters(url: str, names: Names, *, peek: int = 0, known_count: int | None = -1) -> DeadLetters:
    """The dead-letter queue's length and, with ``peek``, the reasons of its last ``peek`` messages (of the
    first 100), unless the length is still ``known_count`` (then the caller keeps what it peeked before).

    Peeking takes messages without acknowledging them and puts them all back
    (:func:`broker.client.peek_dead_letters`). That bumps their delivery count, so the console peeks
    only when the count changes, not on every refresh.
    """
    seen = peek_dead_letters(url, names, peek=peek, known_count=known_count)
    return DeadLetters(seen.count, tuple(_letter(letter) for letter in seen.letters))


def _letter(letter: client.DeadLetter) -> DeadLetter:
    # Shown as found: a dead letter is often not a valid envelope, so this reads what it can and no more.
    sender = kind = ident = ""
    try:
        envelope = json.loads(letter.body).get("body", {})
        sender, ident = str(envelope.get("sender", "")), str(envelope.get("id", ""))
        kind = str(envelope.get("payload", {}).get("type", ""))
    except (ValueError, AttributeError):
        kind = "unparseable"
    return DeadLetter(letter.reason, letter.replica, sender, kind, ident or letter.correlation_id)

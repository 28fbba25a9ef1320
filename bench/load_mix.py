"""The workload of ``acb bench load``: who the simulated users are, and what each of their requests is.

The seed's mix, per arrival of a user who is not in the middle of a purchase:

==============  ======  ==================================================================
what            share   request
==============  ======  ==================================================================
search          30 %    public ``search`` query for a word of the catalog's titles (a backup)
balance         25 %    signed ``balance`` query (a backup)
flows           15 %    signed ``flows`` query, the user's cash flows (a backup)
change_price     7 %    ``change_price`` of the user's own document
publish          3 %    ``publish`` of a new document of the user's
purchase        20 %    ``open_sale`` of a shop document; the user's next two arrivals are
                        the shop's ``escrow_key`` and the user's ``settle``
==============  ======  ==================================================================

A purchase takes three arrivals, so of all requests about half are reads, as in the seed. An
arrival that comes while the user's previous purchase step is still unanswered (open loop: it
comes anyway) is a read instead, since the next step depends on that answer.

Documents that are bought belong to a few shop accounts and never change price, so a purchase
is refused only when something is wrong; price changes go to each user's own document.
"""
from __future__ import annotations

import os
import random
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from broker import commands as c
from broker import queries as q
from broker.codec import b64e
from broker.content import key_commitment
from broker.sealing import escrow_info, seal_to

__all__ = ["MIX", "KINDS", "READS", "SHOP_PRICE", "DEPOSIT", "Account", "Action", "Population", "UserState",
           "answered", "choose", "document", "shop_count"]

MIX: tuple[tuple[str, float], ...] = (
    ("search", 0.30), ("balance", 0.25), ("flows", 0.15), ("change_price", 0.07), ("publish", 0.03),
    ("open_sale", 0.20),
)
KINDS = ("search", "balance", "flows", "change_price", "publish", "open_sale", "escrow_key", "settle")
READS = frozenset({"search", "balance", "flows"})
SHOP_PRICE = 100  # minor units; every shop document costs this
DEPOSIT = 10_000_000  # each user's starting money: far more than 60 s of purchases can spend
_ROOT = "0" * 64  # the fake content commitment of every benchmark document (nothing is transferred)
_WORDS = ("atlas", "river", "quantum", "harvest", "ledger", "orbit", "cipher", "meadow", "signal", "granite",
          "lantern", "delta", "ember", "falcon", "glacier", "horizon", "island", "jasmine", "kernel", "lumen")
_TOPICS = ("maps", "music", "papers", "photos", "code", "video", "books", "data")


def shop_count(users: int) -> int:
    """How many shop accounts sell to ``users`` users: one per fifty, at least two."""
    return max(2, users // 50)


@dataclass(frozen=True)
class Account:
    """A benchmark account: its login, its raw Ed25519 private key, and its own document."""

    login: str
    key: bytes  # raw private key: accounts cross process boundaries as bytes
    doc_id: str

    def sign_key(self) -> Ed25519PrivateKey:
        """The private key as an object (each process makes its own)."""
        return Ed25519PrivateKey.from_private_bytes(self.key)

    @staticmethod
    def raw(key: Ed25519PrivateKey) -> bytes:
        """``key`` as the 32 bytes :class:`Account` keeps."""
        return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())


@dataclass(frozen=True)
class Population:
    """Everyone of one run: the simulated users and the shops they buy from."""

    users: tuple[Account, ...]
    shops: tuple[Account, ...]

    def share(self, part: int, parts: int) -> tuple[Account, ...]:
        """The users generator ``part`` of ``parts`` simulates."""
        return self.users[part::parts]


def document(login: str, doc_id: str, price: int, rng: random.Random) -> c.PublishDocument:
    """A catalog entry with a searchable title; its content commitment is a placeholder."""
    title = " ".join(rng.sample(_WORDS, 3))
    return c.PublishDocument(doc_id=doc_id, title=f"{title} by {login}", topic=rng.choice(_TOPICS), price=price,
                             size=1, sha256=_ROOT, merkle_root=_ROOT, segment_size=1 << 20, endpoint="127.0.0.1:9")


@dataclass
class UserState:
    """Where one simulated user is in its purchase: ``step`` is the next request of it ("" when none)."""

    step: str = ""
    sale_id: str = ""
    shop: int = 0
    waiting: bool = False  # a request of the purchase is unanswered: the next step must wait for it


@dataclass(frozen=True)
class Action:
    """One request to send: its kind, its payload, who signs it (None: unsigned) and whether it is a query."""

    kind: str
    payload: BaseModel
    signer: Account | None
    query: bool
    user: int  # index of the simulated user in its generator


def choose(rng: random.Random, index: int, user: Account, state: UserState, shops: tuple[Account, ...],
           ledger_box_key: bytes) -> Action:
    """The request user ``index`` sends at this arrival (see the module docstring); updates ``state``."""
    if state.step and not state.waiting:
        shop = shops[state.shop]
        if state.step == "escrow_key":
            k = os.urandom(32)
            sealed = b64e(seal_to(ledger_box_key, k, escrow_info(state.sale_id)))
            payload: Any = c.EscrowKey(sale_id=state.sale_id, sealed_key=sealed,
                                       key_commitment=key_commitment(state.sale_id, k), doc_id=shop.doc_id,
                                       merkle_root=_ROOT)
            state.waiting = True
            return Action("escrow_key", payload, shop, False, index)
        state.waiting = True
        return Action("settle", c.SettleSale(sale_id=state.sale_id), user, False, index)
    kind = rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX])[0]
    if state.step and kind not in READS:
        kind = "balance"  # the purchase under way decides what this user may write next
    if kind == "search":
        return Action(kind, q.Search(text=rng.choice(_WORDS), limit=20), None, True, index)
    if kind == "balance":
        return Action(kind, q.Balance(account=user.login), user, True, index)
    if kind == "flows":
        return Action(kind, q.Flows(account=user.login, limit=20), user, True, index)
    if kind == "change_price":
        return Action(kind, c.ChangePrice(doc_id=user.doc_id, price=rng.randint(50, 500)), user, False, index)
    if kind == "publish":
        return Action(kind, document(user.login, f"n-{uuid.uuid4().hex[:16]}", rng.randint(50, 500), rng), user,
                      False, index)
    state.step, state.sale_id, state.shop, state.waiting = "open_sale", f"s-{uuid.uuid4().hex[:20]}", \
        rng.randrange(len(shops)), True
    shop = shops[state.shop]
    return Action("open_sale", c.OpenSale(sale_id=state.sale_id, doc_id=shop.doc_id, price=SHOP_PRICE), user, False,
                  index)


def answered(state: UserState, kind: str, ok: bool) -> None:
    """Move ``state`` on after the answer to a purchase step (a refusal or no answer ends the purchase)."""
    if kind not in ("open_sale", "escrow_key", "settle"):
        return
    state.waiting = False
    if not ok or kind == "settle":
        state.step = ""
    elif kind == "open_sale":
        state.step = "escrow_key"
    else:
        state.step = "settle"

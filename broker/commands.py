"""Commands: what a client asks the ledger to do.

Each command is a frozen pydantic model with a ``type`` discriminator and a
``schema_version``. Money is an integer of minor units. Keys and hashes travel
as hex, blobs as base64 (see :mod:`broker.codec`).

Every string, list and dict field has a maximum size, enforced by the model, so
an oversized field is refused as ``malformed`` when the envelope is opened
(:func:`broker.envelope.open_envelope`), before it reaches a handler, the log or
a store. The limits, and why each leaves room for legitimate use:

=====================  ===========================  ====================================================
field                  maximum                      legitimate size
=====================  ===========================  ====================================================
login, account         32 characters (pattern)      registration's own rule: nothing longer exists
doc_id, sale_id        80 characters (pattern)      16-hex doc ids, ``s-`` + 20 hex sale ids
keystore               8,192 characters             ~1,900 (Argon2id-wrapped keys and certificate)
cert_pem               4,096 characters             ~700 (self-signed Ed25519 certificate)
title                  200 characters               a document's title
topic                  80 characters                one word or two
description            2,000 characters             a paragraph
memo (deposit)         200 characters               a line of text
reason (void)          200 characters               a line of text
endpoint               260 characters               a DNS name (253) + ``:`` + port
sealed_key (escrow)    512 characters               108 (HPKE: 32-byte encapsulation + 48-byte ciphertext)
dispute header         body 4,096, signature 128    ~600 (a signed manifest header, hex signature)
dispute entry          body 8,192, signature 128    ~250 + 68 per Merkle level (64 levels fit)
dispute ciphertext     5,592,428 characters         base64 of one segment of 4 MiB with its 16-byte tag
interval_prices        4,096 prices                 what a document may be split into (checked on publish)
money amounts          within +-10^15 minor units   10 trillion currency units
document size          1 PiB                        the largest file anyone shares
segment_size           1 KiB .. 4 MiB               what ``acb share`` picks (1 or 4 MiB); a dispute
                                                    carries one segment, so none may be larger
=====================  ===========================  ====================================================

Queries have limits of their own (:mod:`broker.queries`). The envelope around
a command (id, sender) and the whole message are bounded by
:mod:`broker.envelope` and by RabbitMQ.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

__all__ = [
    "Command", "COMMAND_ADAPTER", "RegisterUser", "Deposit", "SetFee", "PublishDocument",
    "Unpublish", "ChangePrice", "OpenSale", "EscrowKey", "SettleSale", "SettleInterval", "VoidSale",
    "FileDispute", "ChangeKeystore", "OPERATOR", "LEDGER", "OWNER",
    "LOGIN_MAX", "IDENT_MAX", "KEYSTORE_MAX", "CERT_PEM_MAX", "TITLE_MAX", "TOPIC_MAX", "DESCRIPTION_MAX",
    "MEMO_MAX", "REASON_MAX", "ENDPOINT_MAX", "SEALED_KEY_MAX", "HEADER_BODY_MAX", "ENTRY_BODY_MAX",
    "SIGNATURE_HEX_MAX", "SEGMENT_MAX", "CIPHERTEXT_MAX", "INTERVALS_MAX", "MONEY_MAX", "DOCUMENT_SIZE_MAX",
]

OPERATOR = "operator"  # sender name of commands signed with the operator key
LEDGER = "ledger"  # sender name of commands the primary issues itself (hold expiry)
OWNER = "owner"  # the account that receives the commission

LOGIN_MAX = 32
IDENT_MAX = 80
KEYSTORE_MAX = 8 * 1024
CERT_PEM_MAX = 4 * 1024
TITLE_MAX = 200
TOPIC_MAX = 80
DESCRIPTION_MAX = 2000
MEMO_MAX = 200
REASON_MAX = 200
ENDPOINT_MAX = 260
SEALED_KEY_MAX = 512
HEADER_BODY_MAX = 4 * 1024
ENTRY_BODY_MAX = 8 * 1024
SIGNATURE_HEX_MAX = 128  # an Ed25519 signature as hex
SEGMENT_MAX = 4 << 20  # the largest segment a document may declare (broker.segments.LARGE_SEGMENT_SIZE)
_TAG = 16  # the AES-GCM tag every encrypted segment carries
CIPHERTEXT_MAX = 4 * math.ceil((SEGMENT_MAX + _TAG) / 3)  # base64 of the largest encrypted segment
INTERVALS_MAX = 4096
MONEY_MAX = 10**15
DOCUMENT_SIZE_MAX = 1 << 50

Login = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{1,31}$")]
Hex32 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Ident = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,80}$")]
# Negative amounts stay representable so that the handlers refuse them with bad_amount / bad_price.
Minor = Annotated[int, Field(strict=True, ge=-MONEY_MAX, le=MONEY_MAX)]


Keystore = Annotated[str, Field(max_length=KEYSTORE_MAX)]
CertPem = Annotated[str, Field(max_length=CERT_PEM_MAX)]
Title = Annotated[str, Field(min_length=1, max_length=TITLE_MAX)]
Topic = Annotated[str, Field(min_length=1, max_length=TOPIC_MAX)]
Description = Annotated[str, Field(max_length=DESCRIPTION_MAX)]
Memo = Annotated[str, Field(max_length=MEMO_MAX)]
Reason = Annotated[str, Field(max_length=REASON_MAX)]
SealedKey = Annotated[str, Field(max_length=SEALED_KEY_MAX)]
Ciphertext = Annotated[str, Field(max_length=CIPHERTEXT_MAX)]


def _signed_part(body_max: int) -> Callable[[dict[str, str]], dict[str, str]]:
    def check(part: dict[str, str]) -> dict[str, str]:
        if set(part) != {"body", "signature"}:
            raise ValueError(f"has keys {sorted(part)}, expected body and signature")
        if len(part["body"]) > body_max:
            raise ValueError(f"body has {len(part['body'])} characters, at most {body_max} allowed")
        if len(part["signature"]) > SIGNATURE_HEX_MAX:
            raise ValueError(f"signature has {len(part['signature'])} characters, at most {SIGNATURE_HEX_MAX} allowed")
        return part

    return check


# A provider-signed manifest part as :meth:`broker.content.SignedHeader.to_wire` gives it (a plain dict).
SignedHeaderWire = Annotated[dict[str, str], AfterValidator(_signed_part(HEADER_BODY_MAX))]
SignedEntryWire = Annotated[dict[str, str], AfterValidator(_signed_part(ENTRY_BODY_MAX))]


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_version: Literal[1] = 1


class RegisterUser(_Command):
    """Create an account. Signed by the new key itself: proof of possession."""

    type: Literal["register"] = "register"
    login: Login
    sign_key: Hex32  # Ed25519 public key (raw, hex)
    box_key: Hex32  # X25519 public key the ledger seals released keys to
    cert_pem: CertPem  # self-signed TLS certificate over sign_key, pinned by peers
    keystore: Keystore  # password-encrypted private keys (base64), for login elsewhere


class Deposit(_Command):
    """Operator credits an account (money enters the system)."""

    type: Literal["deposit"] = "deposit"
    account: Login
    amount: Minor
    memo: Memo = ""


class SetFee(_Command):
    """Operator sets the commission in basis points (100 = 1%)."""

    type: Literal["set_fee"] = "set_fee"
    bps: Minor


class PublishDocument(_Command):
    """Provider offers a document: price, topic and a commitment to its content."""

    type: Literal["publish"] = "publish"
    doc_id: Ident
    title: Title
    topic: Topic
    description: Description = ""
    price: Minor
    size: Annotated[int, Field(ge=0, le=DOCUMENT_SIZE_MAX)]
    sha256: Hex32
    merkle_root: Hex32
    segment_size: Annotated[int, Field(ge=1024, le=SEGMENT_MAX)]
    endpoint: Annotated[str, Field(max_length=ENDPOINT_MAX, pattern=r"^[A-Za-z0-9_.:-]+:[0-9]{1,5}$")]
    # Large files may be sold in intervals of this many segments, each paid as it arrives (0: whole).
    interval_segments: Annotated[int, Field(ge=0, le=DOCUMENT_SIZE_MAX)] = 0

    @model_validator(mode="after")
    def _intervals_fit(self) -> PublishDocument:
        # A buyer sends the interval prices it agreed to (OpenSale), so their count must fit that list.
        segments = -(-self.size // self.segment_size)
        if self.interval_segments and self.interval_segments < segments:
            intervals = -(-segments // self.interval_segments)
            if intervals > INTERVALS_MAX:
                raise ValueError(f"{intervals} intervals; a document is split into at most {INTERVALS_MAX}")
        return self


class Unpublish(_Command):
    type: Literal["unpublish"] = "unpublish"
    doc_id: Ident


class ChangePrice(_Command):
    type: Literal["change_price"] = "change_price"
    doc_id: Ident
    price: Minor


class OpenSale(_Command):
    """Consumer starts a purchase: the agreed price is held from its balance."""

    type: Literal["open_sale"] = "open_sale"
    sale_id: Ident
    doc_id: Ident
    price: Minor  # the price the consumer saw; refused if it changed since
    # A split sale's interval prices as the consumer was shown them; refused if they differ.
    interval_prices: Annotated[list[Minor], Field(max_length=INTERVALS_MAX)] | None = None


class EscrowKey(_Command):
    """Provider deposits the sale's key, sealed to the ledger, with its commitment."""

    type: Literal["escrow_key"] = "escrow_key"
    sale_id: Ident
    sealed_key: SealedKey  # base64 HPKE ciphertext of K to the ledger's X25519 key
    key_commitment: Hex32
    # The document whose file this key encrypts, as the provider streams it: a provider fooled into
    # streaming another document than the sale's cannot escrow, so the buyer is never charged for it.
    doc_id: Ident
    merkle_root: Hex32


class SettleSale(_Command):
    """Consumer confirms it holds every segment: pay, and release the key to it."""

    type: Literal["settle"] = "settle"
    sale_id: Ident


class SettleInterval(_Command):
    """Consumer holds every segment of one interval of a split sale: pay for it, get its key."""

    type: Literal["settle_interval"] = "settle_interval"
    sale_id: Ident
    interval: Annotated[int, Field(ge=0)]


class VoidSale(_Command):
    """Cancel an unsettled sale: the hold goes back to the consumer."""

    type: Literal["void"] = "void"
    sale_id: Ident
    reason: Reason = "cancelled"


class FileDispute(_Command):
    """Consumer shows that a segment does not decrypt or does not match the published root."""

    type: Literal["dispute"] = "dispute"
    sale_id: Ident
    index: Annotated[int, Field(ge=0)]
    header: SignedHeaderWire  # the provider-signed manifest header
    entry: SignedEntryWire  # the provider-signed manifest entry of that segment
    ciphertext: Ciphertext  # base64 of the segment as received


class ChangeKeystore(_Command):
    """A user stores a re-wrapped keystore (same keys, stronger or new password wrapping)."""

    type: Literal["change_keystore"] = "change_keystore"
    keystore: Keystore


class SetRoster(_Command):
    """Operator certifies a new set of replica keys (see broker.trust.Roster): add or remove a replica."""

    type: Literal["set_roster"] = "set_roster"
    roster: dict


Command = Annotated[
    Union[
        RegisterUser, Deposit, SetFee, PublishDocument, Unpublish, ChangePrice, OpenSale,
        EscrowKey, SettleSale, SettleInterval, VoidSale, FileDispute, ChangeKeystore, SetRoster,
    ],
    Field(discriminator="type"),
]
COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)

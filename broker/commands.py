"""Commands: what a client asks the ledger to do.

Each command is a frozen pydantic model with a ``type`` discriminator and a
``schema_version``. Money is an integer of minor units. Keys and hashes travel
as hex, blobs as base64 (see :mod:`broker.codec`).
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

__all__ = [
    "Command", "COMMAND_ADAPTER", "RegisterUser", "Deposit", "SetFee", "PublishDocument",
    "Unpublish", "ChangePrice", "OpenSale", "EscrowKey", "SettleSale", "SettleInterval", "VoidSale",
    "FileDispute", "OPERATOR", "LEDGER", "OWNER",
]

OPERATOR = "operator"  # sender name of commands signed with the operator key
LEDGER = "ledger"  # sender name of commands the primary issues itself (hold expiry)
OWNER = "owner"  # the account that receives the commission

Login = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{1,31}$")]
Hex32 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Ident = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,80}$")]
Minor = Annotated[int, Field(strict=True)]


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_version: Literal[1] = 1


class RegisterUser(_Command):
    """Create an account. Signed by the new key itself: proof of possession."""

    type: Literal["register"] = "register"
    login: Login
    sign_key: Hex32  # Ed25519 public key (raw, hex)
    box_key: Hex32  # X25519 public key the ledger seals released keys to
    cert_pem: str  # self-signed TLS certificate over sign_key, pinned by peers
    keystore: str  # password-encrypted private keys (base64), for login elsewhere


class Deposit(_Command):
    """Operator credits an account (money enters the system)."""

    type: Literal["deposit"] = "deposit"
    account: Login
    amount: Minor
    memo: str = ""


class SetFee(_Command):
    """Operator sets the commission in basis points (100 = 1%)."""

    type: Literal["set_fee"] = "set_fee"
    bps: Minor


class PublishDocument(_Command):
    """Provider offers a document: price, topic and a commitment to its content."""

    type: Literal["publish"] = "publish"
    doc_id: Ident
    title: Annotated[str, Field(min_length=1, max_length=200)]
    topic: Annotated[str, Field(min_length=1, max_length=80)]
    description: Annotated[str, Field(max_length=2000)] = ""
    price: Minor
    size: Annotated[int, Field(ge=0)]
    sha256: Hex32
    merkle_root: Hex32
    segment_size: Annotated[int, Field(ge=1024, le=1 << 26)]
    endpoint: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]+:[0-9]{1,5}$")]
    # Large files may be sold in intervals of this many segments, each paid as it arrives (0: whole).
    interval_segments: Annotated[int, Field(ge=0)] = 0


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


class EscrowKey(_Command):
    """Provider deposits the sale's key, sealed to the ledger, with its commitment."""

    type: Literal["escrow_key"] = "escrow_key"
    sale_id: Ident
    sealed_key: str  # base64 HPKE ciphertext of K to the ledger's X25519 key
    key_commitment: Hex32


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
    reason: Annotated[str, Field(max_length=200)] = "cancelled"


class FileDispute(_Command):
    """Consumer shows that a segment does not decrypt or does not match the published root."""

    type: Literal["dispute"] = "dispute"
    sale_id: Ident
    index: Annotated[int, Field(ge=0)]
    header: dict  # the provider-signed manifest header
    entry: dict  # the provider-signed manifest entry of that segment
    ciphertext: str  # base64 of the segment as received


Command = Annotated[
    Union[
        RegisterUser, Deposit, SetFee, PublishDocument, Unpublish, ChangePrice, OpenSale,
        EscrowKey, SettleSale, SettleInterval, VoidSale, FileDispute,
    ],
    Field(discriminator="type"),
]
COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)

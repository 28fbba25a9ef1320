"""Read queries: served by backups from projections of the log, never by the command path.

Every string field has a maximum size, enforced by the model, so an oversized
query is refused as ``malformed`` when its envelope is opened:

==================  =================  ===============================================
field               maximum            legitimate size
==================  =================  ===============================================
login, account      32 characters      registration's own rule: nothing longer exists
sale_id, doc_id     80 characters      the command models' ids (``broker.commands``)
search text         200 characters     a few words typed into a search box
topic               80 characters      as published
challenge           256 characters     ~130 (login, time, nonce and MAC, as issued)
signature           128 characters     an Ed25519 signature as hex
==================  =================  ===============================================
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from broker.commands import IDENT_MAX, LOGIN_MAX, MONEY_MAX, SIGNATURE_HEX_MAX, TOPIC_MAX

__all__ = [
    "Query", "QUERY_ADAPTER", "Balance", "Flows", "SaleStatus", "UserInfo", "DocumentInfo",
    "Search", "LedgerInfo", "LoginChallenge", "Login", "Sales", "CommandStatus", "PUBLIC_QUERIES", "SEARCH_TEXT_MAX",
    "CHALLENGE_MAX",
]

SEARCH_TEXT_MAX = 200
CHALLENGE_MAX = 256

# Lengths only, not the registration pattern: a query for a name that cannot exist is answered unknown_user.
Account = Annotated[str, Field(max_length=LOGIN_MAX)]
Id = Annotated[str, Field(max_length=IDENT_MAX)]


class _Query(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_version: Literal[1] = 1


class Balance(_Query):
    type: Literal["balance"] = "balance"
    account: Account


class Flows(_Query):
    type: Literal["flows"] = "flows"
    account: Account
    limit: Annotated[int, Field(ge=1, le=10_000)] = 100


class SaleStatus(_Query):
    type: Literal["sale"] = "sale"
    sale_id: Id


class Sales(_Query):
    """Sales where the sender is consumer or provider."""

    type: Literal["sales"] = "sales"
    account: Account
    limit: Annotated[int, Field(ge=1, le=10_000)] = 100


class UserInfo(_Query):
    type: Literal["user"] = "user"
    login: Account


class DocumentInfo(_Query):
    type: Literal["document"] = "document"
    doc_id: Id


class Search(_Query):
    type: Literal["search"] = "search"
    text: Annotated[str, Field(max_length=SEARCH_TEXT_MAX)] = ""
    topic: Annotated[str, Field(max_length=TOPIC_MAX)] | None = None
    max_price: Annotated[int, Field(ge=-MONEY_MAX, le=MONEY_MAX)] | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 50


class LedgerInfo(_Query):
    type: Literal["ledger_info"] = "ledger_info"


class LoginChallenge(_Query):
    """Ask for a challenge to sign; ``want_keystore`` also asks for the encrypted keystore (rate-limited per login).

    A client asks for the keystore only when it has none on this machine.
    """

    type: Literal["login_challenge"] = "login_challenge"
    login: Account
    want_keystore: bool = False


class Login(_Query):
    """Proof of possession: the challenge signed with the user's key."""

    type: Literal["login"] = "login"
    login: Account
    challenge: Annotated[str, Field(max_length=CHALLENGE_MAX)]
    signature: Annotated[str, Field(max_length=SIGNATURE_HEX_MAX)]


class CommandStatus(_Query):
    """What became of a command, by its id: for a client that stopped waiting for the answer.

    ``deadline_ms`` is the deadline the command carried (``broker.envelope``), if any: with it, a replica
    can say the command expired (will never be applied) rather than only that it is not applied yet.
    Signed by a registered user or the operator; the id itself (128 random bits) is what entitles one
    to the answer, as only its sender knows it.
    """

    type: Literal["command_status"] = "command_status"
    command_id: Id
    deadline_ms: int | None = None


Query = Annotated[
    Union[Balance, Flows, SaleStatus, Sales, UserInfo, DocumentInfo, Search, LedgerInfo, LoginChallenge, Login,
          CommandStatus],
    Field(discriminator="type"),
]
QUERY_ADAPTER: TypeAdapter[Query] = TypeAdapter(Query)

# Queries anyone may send unsigned: public catalog and directory data, and the login handshake.
PUBLIC_QUERIES = frozenset({"search", "document", "user", "ledger_info", "login_challenge", "login"})

"""Read queries: served by backups from projections of the log, never by the command path."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

__all__ = [
    "Query", "QUERY_ADAPTER", "Balance", "Flows", "SaleStatus", "UserInfo", "DocumentInfo",
    "Search", "LedgerInfo", "LoginChallenge", "Login", "Sales", "PUBLIC_QUERIES",
]


class _Query(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_version: Literal[1] = 1


class Balance(_Query):
    type: Literal["balance"] = "balance"
    account: str


class Flows(_Query):
    type: Literal["flows"] = "flows"
    account: str
    limit: Annotated[int, Field(ge=1, le=10_000)] = 100


class SaleStatus(_Query):
    type: Literal["sale"] = "sale"
    sale_id: str


class Sales(_Query):
    """Sales where the sender is consumer or provider."""

    type: Literal["sales"] = "sales"
    account: str
    limit: Annotated[int, Field(ge=1, le=10_000)] = 100


class UserInfo(_Query):
    type: Literal["user"] = "user"
    login: str


class DocumentInfo(_Query):
    type: Literal["document"] = "document"
    doc_id: str


class Search(_Query):
    type: Literal["search"] = "search"
    text: str = ""
    topic: str | None = None
    max_price: int | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 50


class LedgerInfo(_Query):
    type: Literal["ledger_info"] = "ledger_info"


class LoginChallenge(_Query):
    type: Literal["login_challenge"] = "login_challenge"
    login: str


class Login(_Query):
    """Proof of possession: the challenge signed with the user's key."""

    type: Literal["login"] = "login"
    login: str
    challenge: str
    signature: str


Query = Annotated[
    Union[Balance, Flows, SaleStatus, Sales, UserInfo, DocumentInfo, Search, LedgerInfo, LoginChallenge, Login],
    Field(discriminator="type"),
]
QUERY_ADAPTER: TypeAdapter[Query] = TypeAdapter(Query)

# Queries anyone may send unsigned: public catalog and directory data, and the login handshake.
PUBLIC_QUERIES = frozenset({"search", "document", "user", "ledger_info", "login_challenge", "login"})

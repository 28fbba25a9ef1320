"""The catalog's search on PostgreSQL: the generated ``tsvector`` column ``search`` with its GIN index, ranked
by ``ts_rank``."""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from catalog.store import DOCUMENTS, SqlSearchIndex

__all__ = ["PostgresFtsIndex"]

_SEARCH: sa.ColumnElement[Any] = sa.literal_column("catalog_documents.search")


class PostgresFtsIndex(SqlSearchIndex):
    """tsvector and GIN; ``-ts_rank`` so that lower is better, as :meth:`_match` wants."""

    def _match(self, words: list[str]) -> tuple[sa.FromClause, sa.ColumnElement[bool], sa.ColumnElement[Any]]:
        if not words:
            return DOCUMENTS, sa.true(), sa.literal(0.0)
        # Each word a quoted prefix lexeme: words are letters and digits only, so no quote to escape.
        expression = " & ".join(f"'{w}':*" for w in words)
        tsquery = sa.func.to_tsquery(sa.literal_column("'simple'::regconfig"), sa.bindparam("tsquery", expression))
        # As double precision: a real comes back as a rounded decimal, and a cursor holding that rounded
        # rank would not match the rank it was taken from, so a page of ties would repeat for ever.
        rank = sa.cast(-sa.func.ts_rank(_SEARCH, tsquery), postgresql.DOUBLE_PRECISION)
        return DOCUMENTS, _SEARCH.op("@@")(tsquery), rank

    def _online_clause(self, providers: frozenset[str]) -> sa.ColumnElement[bool]:
        # One array parameter however many are online.
        online = sa.bindparam("online", sorted(providers), type_=postgresql.ARRAY(sa.String))
        return DOCUMENTS.c.provider == sa.func.any(online)

"""The catalog's search on SQLite: the FTS5 table ``catalog_fts`` over ``catalog_documents``, ranked by BM25."""
from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from catalog.store import DOCUMENTS, SqlSearchIndex

__all__ = ["SqliteFtsIndex"]

_FTS = sa.table("catalog_fts", sa.column("rowid", sa.Integer))
# Title counts most, then description, then tags and metadata.
_WEIGHTS = (10.0, 4.0, 1.0)


class SqliteFtsIndex(SqlSearchIndex):
    """FTS5 with BM25 (lower is better, as :meth:`_match` wants)."""

    explain_prefix = "EXPLAIN QUERY PLAN "

    def _match(self, words: list[str]) -> tuple[sa.FromClause, sa.ColumnElement[bool], sa.ColumnElement[Any]]:
        if not words:
            return DOCUMENTS, sa.true(), sa.literal(0.0)
        # Each word a quoted prefix term: inside quotes FTS5 reads no operator, and words hold no quote.
        expression = " ".join(f'"{w}"*' for w in words)
        fts: sa.ColumnElement[Any] = sa.literal_column("catalog_fts")
        # The matches first, on their own: bm25() may only run where the MATCH is evaluated, and left to
        # itself the planner may walk a filter's index and run the MATCH once per document it finds.
        matched = (sa.select(_FTS.c.rowid, sa.func.bm25(fts, *_WEIGHTS).label("rank")).select_from(_FTS)
                   .where(fts.op("MATCH")(sa.bindparam("fts_match", expression)))
                   .cte("matched").prefix_with("MATERIALIZED"))
        return matched.join(DOCUMENTS, DOCUMENTS.c.id == matched.c.rowid), sa.true(), matched.c.rank

    def _online_clause(self, providers: frozenset[str]) -> sa.ColumnElement[bool]:
        # One JSON parameter however many are online, where an IN list would hit SQLite's variable limit.
        online = sa.select(sa.literal_column("value")).select_from(
            sa.func.json_each(sa.bindparam("online", json.dumps(sorted(providers))))).scalar_subquery()
        return DOCUMENTS.c.provider.in_(online)

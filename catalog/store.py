"""The catalog projection's tables and the SQL both engines share: writing in log order, grouping, paging.

The tables are made by alembic (``migrations/versions/0005_catalog.py``); this module only describes
them. What differs between engines is how words match and rank (:meth:`SqlSearchIndex._match`) and how
"online only" is said (:meth:`SqlSearchIndex._online_clause`); everything else is written once here.
Every value a person typed reaches the database as a bound parameter.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from catalog.errors import CatalogStoreError
from catalog.model import CatalogDocument
from catalog.query import CursorCodec, SearchQuery, Sort
from catalog.search import PROJECTION_VERSION, Offer, Online, Page, Result

__all__ = ["DOCUMENTS", "POSITION", "SqlSearchIndex"]

_metadata = sa.MetaData()
DOCUMENTS = sa.Table(
    "catalog_documents", _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("doc_id", sa.String(80), nullable=False, unique=True),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("topic", sa.String(120), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("language", sa.String(16), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("commitment", sa.String(128), nullable=False),
    sa.Column("price", sa.BigInteger, nullable=False),
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("sales", sa.BigInteger, nullable=False),
    sa.Column("first_seq", sa.BigInteger, nullable=False),
    sa.Column("first_at_ms", sa.BigInteger, nullable=False),
)
POSITION = sa.Table(
    "catalog_position", _metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
)
_NAME = "catalog"
_SHOWN = ("doc_id", "title", "description", "topic", "type", "metadata", "tags", "language", "size",
          "commitment", "price", "provider", "sales", "first_seq", "first_at_ms")


class SqlSearchIndex(ABC):
    """The catalog projection in a SQL store; subclassed per engine for matching and ranking."""

    explain_prefix = "EXPLAIN "

    def __init__(self, engine: sa.Engine, *, cursor_key: bytes, online: Online = frozenset) -> None:
        self._engine = engine
        self._cursors = CursorCodec(cursor_key)
        self._online = online

    # -- engine specifics ------------------------------------------------------------------------
    @abstractmethod
    def _match(self, words: list[str]) -> tuple[sa.FromClause, sa.ColumnElement[bool], sa.ColumnElement[Any]]:
        """``(from, where, rank)`` for documents holding every word as a prefix; rank lower is better."""

    @abstractmethod
    def _online_clause(self, providers: frozenset[str]) -> sa.ColumnElement[bool]:
        """The condition that a row's provider is among ``providers`` (those online now)."""

    # -- writing ---------------------------------------------------------------------------------
    @contextmanager
    def _db(self, what: str, *, write: bool = False) -> Iterator[sa.Connection]:
        try:
            with (self._engine.begin() if write else self._engine.connect()) as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise CatalogStoreError(f"catalog {what} failed: {exc}") from exc

    def write(self, seq: int, *, upserts: Sequence[CatalogDocument] = (), deletes: Sequence[str] = (),
              sales: Sequence[str] = ()) -> bool:
        """Apply what log event ``seq`` changed, with the position, in one transaction; False if already applied.

        A document published again keeps its first-published time and its sales; ``sales`` names documents
        sold once more (a document named twice was sold twice).
        """
        with self._db("write", write=True) as conn:
            applied = conn.execute(sa.select(POSITION.c.seq).where(POSITION.c.name == _NAME)).scalar()
            if applied is not None and seq <= applied:
                return False  # a replay after a crash: the rows are already in
            for doc in upserts:
                _upsert(conn, doc)
            if deletes:
                conn.execute(DOCUMENTS.delete().where(DOCUMENTS.c.doc_id.in_(list(deletes))))
            for doc_id in sales:
                conn.execute(DOCUMENTS.update().where(DOCUMENTS.c.doc_id == doc_id)
                             .values(sales=DOCUMENTS.c.sales + 1))
            if applied is None:
                conn.execute(POSITION.insert().values(name=_NAME, seq=seq, version=PROJECTION_VERSION))
            else:
                conn.execute(POSITION.update().where(POSITION.c.name == _NAME).values(seq=seq))
        return True

    def position(self) -> tuple[int, int] | None:
        """``(seq, version)`` of the projection as stored, None if it was never written."""
        with self._db("read") as conn:
            row = conn.execute(sa.select(POSITION.c.seq, POSITION.c.version).where(POSITION.c.name == _NAME)).first()
        return (row.seq, row.version) if row else None

    def reset(self) -> None:
        """Empty the projection and forget its position, to rebuild it from the log."""
        with self._db("reset", write=True) as conn:
            conn.execute(DOCUMENTS.delete())
            conn.execute(POSITION.delete().where(POSITION.c.name == _NAME))

    # -- searching -------------------------------------------------------------------------------
    def _hits(self, query: SearchQuery, online: frozenset[str]) -> sa.CTE:
        source, matched, rank = self._match(query.words)
        where: list[sa.ColumnElement[bool]] = [matched]
        if query.topic is not None:
            # The subtree by a range, which the topic index answers: every "t/..." sorts in ["t/", "t0").
            t, topic = query.topic, DOCUMENTS.c.topic
            where.append(sa.or_(topic == t, sa.and_(topic >= t + "/", topic < t + "0")))
        if query.type is not None:
            where.append(DOCUMENTS.c.type == query.type)
        for name, value in query.metadata:
            field = DOCUMENTS.c.metadata[name]
            where.append(field.as_integer() == value if isinstance(value, int) else field.as_string() == value)
        if query.min_price is not None:
            where.append(DOCUMENTS.c.price >= query.min_price)
        if query.max_price is not None:
            where.append(DOCUMENTS.c.price <= query.max_price)
        if query.provider is not None:
            where.append(DOCUMENTS.c.provider == query.provider)
        if query.online_only:
            where.append(self._online_clause(online))
        columns = [DOCUMENTS.c[name] for name in _SHOWN]
        return sa.select(*columns, rank.label("rank")).select_from(source).where(*where).cte("hits")

    @staticmethod
    def _group_key(hits: sa.CTE, sort: Sort) -> sa.ColumnElement[Any]:
        """Per content, the value it is ordered by, lower first."""
        if sort is Sort.RELEVANCE:
            return sa.func.min(hits.c.rank)
        if sort is Sort.PRICE:
            return sa.func.min(hits.c.price)
        if sort is Sort.POPULARITY:
            return sa.cast(-sa.func.sum(hits.c.sales), sa.BigInteger)  # PostgreSQL sums bigints as numeric
        return -sa.func.max(hits.c.first_seq)

    def _groups(self, query: SearchQuery, online: frozenset[str]) -> tuple[sa.CTE, sa.Select[Any]]:
        hits = self._hits(query, online)
        key = self._group_key(hits, query.effective_sort).label("sort_key")
        groups = sa.select(hits.c.commitment, key).group_by(hits.c.commitment)
        after = self._cursors.decode(query)
        if after is not None:
            after_key, after_commitment = after
            groups = groups.having(sa.or_(key > after_key,
                                          sa.and_(key == after_key, hits.c.commitment > after_commitment)))
        groups = groups.order_by(key, hits.c.commitment).limit(query.page_size + 1)
        return hits, groups

    def search(self, query: SearchQuery) -> Page:
        """One page of the contents matching ``query``; :class:`~catalog.errors.BadCursor` on a forged cursor."""
        online = frozenset(self._online())
        if query.online_only and not online:
            return Page(results=(), next_cursor=None)
        hits, groups = self._groups(query, online)
        with self._db("search") as conn:
            page = conn.execute(groups).all()
            shown = page[:query.page_size]
            offers = conn.execute(
                sa.select(hits).where(hits.c.commitment.in_([g.commitment for g in shown]))
                .order_by(hits.c.commitment, hits.c.rank, hits.c.price, hits.c.doc_id)).all() if shown else []
        by_commitment: dict[str, list[Any]] = {}
        for row in offers:
            by_commitment.setdefault(row.commitment, []).append(row)
        results = tuple(_result(by_commitment[g.commitment], online, bool(query.words)) for g in shown)
        cursor = None
        if len(page) > query.page_size:
            last = shown[-1]
            cursor = self._cursors.encode(query, last.sort_key, last.commitment)
        return Page(results=results, next_cursor=cursor)

    def explain(self, query: SearchQuery) -> str:
        """The engine's plan for the grouping step of ``query``, one line per step."""
        _hits, groups = self._groups(query, frozenset(self._online()))
        compiled = groups.compile(dialect=self._engine.dialect)
        params = compiled.construct_params()
        args: Any = tuple(params[k] for k in compiled.positiontup or ()) if compiled.positional else params
        with self._db("explain") as conn:
            rows = conn.exec_driver_sql(self.explain_prefix + str(compiled), args).all()
        return "\n".join(" ".join(str(c) for c in row) for row in rows)


def _upsert(conn: sa.Connection, doc: CatalogDocument) -> None:
    fields = doc.model_dump(exclude={"first_seq", "first_at_ms"})
    fields["tags"] = list(doc.tags)
    fields["body"] = doc.search_body()
    done = conn.execute(DOCUMENTS.update().where(DOCUMENTS.c.doc_id == doc.doc_id).values(**fields)).rowcount
    if not done:
        conn.execute(DOCUMENTS.insert().values(**fields, sales=0, first_seq=doc.first_seq, first_at_ms=doc.first_at_ms))


def _result(rows: list[Any], online: frozenset[str], ranked: bool) -> Result:
    best = rows[0]
    offers = sorted((Offer(doc_id=r.doc_id, provider=r.provider, price=r.price, online=r.provider in online,
                           sales=r.sales) for r in rows), key=lambda o: (o.price, o.provider, o.doc_id))
    return Result(
        commitment=best.commitment, title=best.title, description=best.description, topic=best.topic,
        type=best.type, metadata=best.metadata, tags=tuple(best.tags), language=best.language, size=best.size,
        sales=sum(r.sales for r in rows), first_seq=min(r.first_seq for r in rows),
        first_at_ms=min(r.first_at_ms for r in rows), score=-float(best.rank) if ranked else 0.0, offers=tuple(offers))

"""The catalog's search, as the rest of ACB sees it: one interface, whichever engine is under it.

A search answers a :class:`~catalog.query.SearchQuery` with a :class:`Page` of :class:`Result`, one per
content (the documents sharing a content commitment), each listing the :class:`Offer` of every provider
whose document matched, its price and whether the provider is online now. Who is online is not the
catalog's to know: an :data:`Online` callable supplied by its host answers it at each search.

The engines are :mod:`catalog.sqlite_fts` (FTS5, BM25) and :mod:`catalog.postgres_fts` (tsvector, GIN,
ts_rank); :func:`catalog.index.open_index` picks the one that fits a store's engine.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from catalog.model import CatalogDocument
from catalog.query import SearchQuery

__all__ = ["Offer", "Result", "Page", "Online", "SearchIndex", "PROJECTION_VERSION"]

# The projection's rules: a store whose catalog was built under another version is rebuilt from the log.
PROJECTION_VERSION = 1

# The providers online now; called once per search.
Online = Callable[[], Collection[str]]


class Offer(BaseModel):
    """One provider's document of a content: what a buyer picks between."""

    model_config = ConfigDict(frozen=True)

    doc_id: str
    provider: str
    price: int
    online: bool
    sales: int


class Result(BaseModel):
    """One content, shown once however many providers offer it; described by its best-matching document."""

    model_config = ConfigDict(frozen=True)

    commitment: str
    title: str
    description: str
    topic: str
    type: str
    metadata: dict[str, Any]
    tags: tuple[str, ...]
    language: str
    size: int
    sales: int  # over every matching offer
    first_seq: int
    first_at_ms: int
    score: float  # relevance, higher is better; 0 when the search had no words
    offers: tuple[Offer, ...]  # cheapest first


class Page(BaseModel):
    """A page of results and the cursor of the next, None on the last."""

    model_config = ConfigDict(frozen=True)

    results: tuple[Result, ...]
    next_cursor: str | None


class SearchIndex(Protocol):
    """The catalog projection in a store: written from the log in order, searched by many readers."""

    def write(self, seq: int, *, upserts: Sequence[CatalogDocument] = (), deletes: Sequence[str] = (),
              sales: Sequence[str] = ()) -> bool:
        """Apply what log event ``seq`` changed, with the position, in one transaction; False if already applied."""
        ...

    def position(self) -> tuple[int, int] | None:
        """``(seq, version)`` of the projection as stored, None if it was never written."""
        ...

    def reset(self) -> None:
        """Empty the projection and forget its position, to rebuild it from the log."""
        ...

    def search(self, query: SearchQuery) -> Page:
        """One page of the contents matching ``query``; :class:`~catalog.errors.BadCursor` on a forged cursor."""
        ...

    def explain(self, query: SearchQuery) -> str:
        """The engine's plan for ``query``, to show that a simple search does not scan every document."""
        ...

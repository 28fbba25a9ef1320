"""Open the catalog's search over a store's engine, with the engine that fits it."""
from __future__ import annotations

import sqlalchemy as sa

from catalog.errors import CatalogStoreError
from catalog.postgres_fts import PostgresFtsIndex
from catalog.search import Online, SearchIndex
from catalog.sqlite_fts import SqliteFtsIndex

__all__ = ["open_index"]


def open_index(engine: sa.Engine, *, cursor_key: bytes, online: Online = frozenset) -> SearchIndex:
    """The search over ``engine``'s catalog tables (migrated to 0005 or later by the store).

    ``cursor_key`` signs page cursors; replicas that share it accept each other's cursors.
    ``online`` answers who is online now, at each search.
    """
    if engine.dialect.name == "sqlite":
        return SqliteFtsIndex(engine, cursor_key=cursor_key, online=online)
    if engine.dialect.name == "postgresql":
        return PostgresFtsIndex(engine, cursor_key=cursor_key, online=online)
    raise CatalogStoreError(f"the catalog has no search engine for {engine.dialect.name} stores")

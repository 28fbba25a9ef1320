"""The catalog's errors: a search that cannot be answered as asked, or a store that failed under it::

    AcbError                 broker/errors.py
    └── CatalogError         catalog/: search and its projection
        ├── BadQuery         a search a person asked for is not one we answer (the message says why)
        │   └── BadCursor    a page cursor this catalog did not issue, or issued for another search
        ├── BadDocument      a document the projection refuses (oversized metadata, a malformed topic)
        └── CatalogStoreError  the database refused or failed (SQLAlchemy errors are wrapped)
"""
from __future__ import annotations

from broker.errors import AcbError

__all__ = ["CatalogError", "BadQuery", "BadCursor", "BadDocument", "CatalogStoreError"]


class CatalogError(AcbError):
    """Anything the catalog raises on purpose."""


class BadQuery(CatalogError):
    """A search that is not one we answer; the message says what to change."""

    exit_code = 2  # the person's input, like a refused command


class BadCursor(BadQuery):
    """A page cursor that was forged, altered, or issued for another search."""


class BadDocument(CatalogError):
    """A document the projection will not hold as it is."""


class CatalogStoreError(CatalogError):
    """The catalog's database refused or failed."""

"""The search projection: published documents indexed by the words of their title, topic and description.

Built from the log's events, like every other view; it never touches the
command path. Each replica keeps one, and backups answer searches from it.
"""
from __future__ import annotations

import re
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

__all__ = ["Catalog", "Hit", "tokens"]

_WORD = re.compile(r"[\w]+", re.UNICODE)


def tokens(text: str) -> set[str]:
    """Lower-cased words of ``text`` (the unit of search)."""
    return {w.lower() for w in _WORD.findall(text)}


@dataclass(frozen=True)
class Hit:
    doc_id: str
    title: str
    topic: str
    description: str
    price: int
    size: int
    provider: str
    endpoint: str
    sha256: str
    merkle_root: str
    segment_size: int
    score: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Catalog:
    """Word index over published documents; updated from applied rows, read by many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._docs: dict[str, dict[str, Any]] = {}
        self._index: dict[str, set[str]] = defaultdict(set)

    def rebuild(self, documents: Any) -> None:
        """Start over from a state's documents (after recovery)."""
        with self._lock:
            self._docs.clear()
            self._index.clear()
            for doc in documents.values():
                if doc.published:
                    self._add({**doc.__dict__})

    def on_rows(self, _state: Any, rows: list[Any]) -> None:
        """Follower listener: fold the catalog-relevant events of newly applied rows."""
        relevant = [r for r in rows if r.type in ("document_published", "document_unpublished", "price_changed")]
        if not relevant:
            return
        with self._lock:
            for row in relevant:
                p = row.payload
                if row.type == "document_published":
                    self._add(dict(p))
                elif row.type == "document_unpublished":
                    self._remove(p["doc_id"])
                elif p["doc_id"] in self._docs:
                    self._docs[p["doc_id"]]["price"] = p["price"]

    def _words(self, doc: dict[str, Any]) -> set[str]:
        return tokens(f"{doc['title']} {doc['topic']} {doc.get('description', '')} {doc['provider']} {doc['doc_id']}")

    def _add(self, doc: dict[str, Any]) -> None:
        self._remove(doc["doc_id"])
        self._docs[doc["doc_id"]] = doc
        for w in self._words(doc):
            self._index[w].add(doc["doc_id"])

    def _remove(self, doc_id: str) -> None:
        old = self._docs.pop(doc_id, None)
        if old is not None:
            for w in self._words(old):
                self._index[w].discard(doc_id)

    def search(self, text: str = "", *, topic: str | None = None, max_price: int | None = None,
               limit: int = 50) -> list[Hit]:
        """Documents matching every word of ``text`` (as a prefix), best matches and cheapest first."""
        words = tokens(text)
        with self._lock:
            if words:
                candidates: set[str] | None = None
                for w in words:
                    match = set().union(*(ids for key, ids in self._index.items() if key.startswith(w)))
                    candidates = match if candidates is None else candidates & match
                ids = candidates or set()
            else:
                ids = set(self._docs)
            docs = [self._docs[i] for i in ids]
        hits = []
        for d in docs:
            if topic is not None and d["topic"].lower() != topic.lower():
                continue
            if max_price is not None and d["price"] > max_price:
                continue
            title = tokens(d["title"])
            # Scored by the same prefix rule that matched, so "quant" ranks a "Quantum" title first.
            score = sum(1 for w in words if any(t.startswith(w) for t in title))
            hits.append(Hit(d["doc_id"], d["title"], d["topic"], d.get("description", ""), d["price"], d["size"],
                            d["provider"], d["endpoint"], d["sha256"], d["merkle_root"], d["segment_size"], score))
        hits.sort(key=lambda h: (-h.score, h.price, h.title, h.doc_id))
        return hits[:limit]

"""The search projection, fed the rows the log produces."""
from __future__ import annotations

import pytest

from broker import commands as c
from catalog import Catalog, tokens
from tests.conftest import Book


@pytest.fixture
def shelf(book: Book) -> Book:
    book.register("alice")
    book.register("bob")
    book.publish("alice", "qft", price=1200, title="Quantum field theory notes", topic="Physics",
                 description="Lectures on renormalisation")
    book.publish("alice", "qc", price=800, title="Quantum computing primer", topic="Computing")
    book.publish("bob", "bread", price=300, title="Sourdough bread", topic="Cooking",
                 description="A quantum of patience")
    book.publish("bob", "stat", price=800, title="Statistical mechanics", topic="physics")
    return book


def fed(book: Book, start: int = 0) -> Catalog:
    catalog = Catalog()
    catalog.on_rows(book.state, book.rows[start:])
    return catalog


def ids(hits) -> list[str]:  # type: ignore[no-untyped-def]
    return [h.doc_id for h in hits]


def test_tokens_are_lower_case_words() -> None:
    assert tokens("Quantum-Field, THEORY! v2") == {"quantum", "field", "theory", "v2"}


def test_search_matches_word_prefixes(shelf: Book) -> None:
    catalog = fed(shelf)
    assert set(ids(catalog.search("quant"))) == {"qft", "qc", "bread"}
    assert ids(catalog.search("sourd")) == ["bread"]
    assert catalog.search("antum") == []


def test_every_word_must_match(shelf: Book) -> None:
    catalog = fed(shelf)
    assert ids(catalog.search("quantum notes")) == ["qft"]
    assert ids(catalog.search("QUANTUM Renorm")) == ["qft"]
    assert catalog.search("quantum bread notes") == []


def test_description_provider_and_id_are_searchable(shelf: Book) -> None:
    catalog = fed(shelf)
    assert ids(catalog.search("patience")) == ["bread"]
    assert set(ids(catalog.search("bob"))) == {"bread", "stat"}
    assert ids(catalog.search("qft")) == ["qft"]


def test_topic_filter_is_exact_and_case_insensitive(shelf: Book) -> None:
    catalog = fed(shelf)
    assert set(ids(catalog.search(topic="physics"))) == {"qft", "stat"}
    assert ids(catalog.search("quantum", topic="PHYSICS")) == ["qft"]
    assert catalog.search(topic="phys") == []


def test_max_price(shelf: Book) -> None:
    catalog = fed(shelf)
    assert set(ids(catalog.search(max_price=800))) == {"qc", "bread", "stat"}
    assert ids(catalog.search("quantum", max_price=799)) == ["bread"]
    assert catalog.search(max_price=0) == []


def test_title_matches_come_first_then_the_cheapest(shelf: Book) -> None:
    catalog = fed(shelf)
    # bread only mentions quantum in its description: it is cheapest but the weakest match.
    assert ids(catalog.search("quantum")) == ["qc", "qft", "bread"]
    # With no words, cheapest first; equal prices by title.
    assert ids(catalog.search()) == ["bread", "qc", "stat", "qft"]


def test_a_prefix_of_a_title_word_counts_as_a_title_match(shelf: Book) -> None:
    catalog = fed(shelf)
    assert ids(catalog.search("quant")) == ["qc", "qft", "bread"]


def test_limit(shelf: Book) -> None:
    catalog = fed(shelf)
    assert ids(catalog.search(limit=2)) == ["bread", "qc"]


def test_unpublish_removes_and_republish_restores(shelf: Book) -> None:
    catalog = fed(shelf)
    mark = len(shelf.rows)
    shelf.submit(c.Unpublish(doc_id="qft"), "alice")
    catalog.on_rows(shelf.state, shelf.rows[mark:])
    assert "qft" not in ids(catalog.search("quantum"))
    assert catalog.search("renormalisation") == []
    mark = len(shelf.rows)
    shelf.publish("alice", "qft", price=1500, title="Quantum field theory, second edition", topic="Physics")
    catalog.on_rows(shelf.state, shelf.rows[mark:])
    [hit] = catalog.search("second")
    assert (hit.doc_id, hit.price) == ("qft", 1500)
    assert catalog.search("renormalisation") == []  # the old description's words are gone


def test_price_change_is_reflected(shelf: Book) -> None:
    catalog = fed(shelf)
    mark = len(shelf.rows)
    shelf.submit(c.ChangePrice(doc_id="qft", price=100), "alice")
    catalog.on_rows(shelf.state, shelf.rows[mark:])
    [hit] = catalog.search("notes")
    assert hit.price == 100
    assert ids(catalog.search(max_price=100)) == ["qft"]
    assert ids(catalog.search("quantum")) == ["qft", "qc", "bread"]


def test_hits_carry_what_a_buyer_needs(shelf: Book) -> None:
    [hit] = fed(shelf).search("sourdough")
    doc = shelf.state.documents["bread"]
    assert hit.as_dict() | {"score": 0} == {
        "doc_id": "bread", "title": doc.title, "topic": doc.topic, "description": doc.description,
        "price": doc.price, "size": doc.size, "provider": "bob", "endpoint": doc.endpoint, "sha256": doc.sha256,
        "merkle_root": doc.merkle_root, "segment_size": doc.segment_size, "score": 0,
    }


def test_rebuild_from_state_matches_folding_the_rows(shelf: Book) -> None:
    mark = len(shelf.rows)
    shelf.submit(c.Unpublish(doc_id="stat"), "bob")
    shelf.submit(c.ChangePrice(doc_id="qc", price=50), "alice")
    folded = fed(shelf)
    rebuilt = Catalog()
    rebuilt.rebuild(shelf.state.documents)
    for query in ("", "quantum", "quant", "physics", "bob"):
        assert [h.as_dict() for h in rebuilt.search(query)] == [h.as_dict() for h in folded.search(query)], query
    assert mark < len(shelf.rows)
    assert "stat" not in ids(rebuilt.search())


def test_rows_of_other_events_are_ignored(shelf: Book) -> None:
    catalog = fed(shelf)
    before = [h.as_dict() for h in catalog.search()]
    mark = len(shelf.rows)
    shelf.deposit("bob", 100)
    catalog.on_rows(shelf.state, shelf.rows[mark:])
    assert [h.as_dict() for h in catalog.search()] == before

"""The catalog's query model: what a person may ask, the plain refusals, and page cursors that cannot be forged."""
from __future__ import annotations

import pytest

from catalog.errors import BadCursor, BadDocument, BadQuery
from catalog.model import METADATA_MAX_BYTES, catalog_document
from catalog.query import PAGE_MAX, CursorCodec, Sort, parse_query, terms

KEY = b"k" * 32


def test_words_are_letters_and_digits_and_everything_else_separates_them() -> None:
    assert terms('Quantum "theory" OR x* NEAR(a b) title:c') == ["quantum", "theory", "or", "x", "near", "a", "b", "title", "c"]
    assert terms("'; DROP TABLE catalog_documents; --") == ["drop", "table", "catalog", "documents"]
    assert terms("Ünïcode ünïcode 2024") == ["ünïcode", "2024"]


def test_a_search_holds_its_filters_normalised() -> None:
    q = parse_query({"text": "Quantum", "topic": "/Datasets/Archive/", "type": "Book", "metadata": {"year": 1999, "artist": "X"},
                     "min_price": 0, "max_price": 500, "provider": "zoe", "online_only": True, "sort": "price", "page_size": 5})
    assert (q.topic, q.type, q.metadata, q.sort, q.words) == ("datasets/archive", "book", (("artist", "X"), ("year", 1999)), Sort.PRICE, ["quantum"])


@pytest.mark.parametrize(("fields", "says"), [
    ({}, "say what to look for"),
    ({"text": "   "}, "say what to look for"),
    ({"text": '"*"() -- ;'}, "no words in it"),
    ({"text": "x" * 257}, "too long"),
    ({"text": " ".join(f"w{i}" for i in range(17))}, "too many words"),
    ({"text": "a\x00b"}, "control characters"),
    ({"text": "x", "page_size": 0}, f"1 to {PAGE_MAX}"),
    ({"text": "x", "page_size": -5}, f"1 to {PAGE_MAX}"),
    ({"text": "x", "page_size": 10**9}, f"1 to {PAGE_MAX}"),
    ({"text": "x", "page_size": "10"}, "page_size: should be a valid integer"),
    ({"text": "x", "max_price": -1}, "minor units"),
    ({"text": "x", "max_price": 1.5}, "max_price"),
    ({"text": "x", "min_price": 10, "max_price": 5}, "lowest price asked is above the highest"),
    ({"text": "x", "online_only": "yes"}, "online_only"),
    ({"text": 42}, "text: should be a valid string"),
    ({"text": "x", "sort": "random"}, "sort"),
    ({"text": "x", "colour": "red"}, "colour: is not something a search can filter on"),
    ({"text": "x", "topic": "a//b"}, "a topic is words separated by '/'"),
    ({"text": "x", "topic": "a'; --"}, "a topic is words separated by '/'"),
    ({"text": "x", "type": "book; drop"}, "one short word"),
    ({"text": "x", "metadata": {"Year'": 1}}, "not a metadata field name"),
    ({"text": "x", "metadata": {"year": [1, 2]}}, "text or whole-number value"),
    ({"text": "x", "metadata": {"year": True}}, "text or whole-number value"),
    ({"text": "x", "metadata": {"artist": "y" * 129}}, "too long"),
    ({"text": "x", "metadata": {f"f{i}": 1 for i in range(9)}}, "too many metadata filters"),
    ({"text": "x", "cursor": "c" * 513}, "cursor"),
])
def test_bad_searches_are_refused_in_plain_words(fields: dict, says: str) -> None:
    with pytest.raises(BadQuery) as caught:
        parse_query(fields)
    assert says in str(caught.value)
    assert caught.value.exit_code == 2


def test_a_search_by_filter_alone_shows_the_newest_first() -> None:
    q = parse_query({"topic": "datasets"})
    assert q.sort is Sort.RELEVANCE and q.effective_sort is Sort.NEWEST


def test_a_cursor_round_trips_for_its_own_search_only() -> None:
    codec = CursorCodec(KEY)
    q = parse_query({"text": "quantum theory", "topic": "science"})
    cursor = codec.encode(q, -1.25, "c-17")
    # The same search, another page size or the words written differently: the cursor still applies.
    for same in (q, parse_query({"text": "Quantum, THEORY!", "topic": "Science", "page_size": 3})):
        assert codec.decode(same.model_copy(update={"cursor": cursor})) == (-1.25, "c-17")
    assert codec.decode(q) is None
    with pytest.raises(BadCursor, match="another search"):
        codec.decode(parse_query({"text": "quantum theory", "topic": "science", "max_price": 9, "cursor": cursor}))
    with pytest.raises(BadCursor, match="another search"):
        codec.decode(parse_query({"text": "quantum theory", "topic": "science", "sort": "price", "cursor": cursor}))


@pytest.mark.parametrize("forge", [
    lambda c: c[:-2] + ("AA" if not c.endswith("AA") else "BB"),  # the MAC altered
    lambda c: "W1wiZmFrZVwiLDAsXCJ4XCJd" + c[c.index("."):],  # the body replaced
    lambda c: c.replace(".", ""),  # no separator
    lambda c: "%%%.%%%",  # not base64
    lambda c: CursorCodec(b"another key 0123456789").encode(parse_query({"text": "quantum theory"}), 0, "x"),
])
def test_a_forged_cursor_is_refused(forge) -> None:  # type: ignore[no-untyped-def]
    codec = CursorCodec(KEY)
    q = parse_query({"text": "quantum theory"})
    forged = forge(codec.encode(q, 0, "x"))
    with pytest.raises(BadCursor, match="start the search again|start this one"):
        codec.decode(q.model_copy(update={"cursor": forged}))


def test_a_document_with_oversized_metadata_is_refused() -> None:
    fields = {"doc_id": "d", "title": "t", "commitment": "c", "price": 1, "provider": "p"}
    assert catalog_document(fields).topic == "misc"
    with pytest.raises(BadDocument, match="metadata is too large"):
        catalog_document({**fields, "metadata": {"notes": "x" * METADATA_MAX_BYTES}})
    with pytest.raises(BadDocument, match="too many fields"):
        catalog_document({**fields, "metadata": {f"f{i}": i for i in range(33)}})
    with pytest.raises(BadDocument, match="not a metadata field name"):
        catalog_document({**fields, "metadata": {"Bad Name": 1}})
    with pytest.raises(BadDocument, match="price"):
        catalog_document({**fields, "price": -1})

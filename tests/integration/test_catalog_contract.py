"""One contract for the catalog's search on every store: SQLite (FTS5) and PostgreSQL (tsvector), same answers."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from catalog.errors import BadCursor, BadQuery
from catalog.index import open_index
from catalog.model import catalog_document
from catalog.query import parse_query
from catalog.search import PROJECTION_VERSION, Page, SearchIndex
from ledger.store import Store

KEY = b"catalog contract cursor key!"


def _drop_everything(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        meta.drop_all(engine)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Store]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'store.db'}")
        yield s
        s.close()
        return
    url = request.getfixturevalue("pg_url")
    _drop_everything(url)  # each test starts from an empty database, migrations included
    s = Store(url)
    yield s
    s.close()
    _drop_everything(url)


ONLINE: set[str] = set()


@pytest.fixture
def index(store: Store) -> SearchIndex:
    ONLINE.clear()
    return open_index(store.engine, cursor_key=KEY, online=lambda: ONLINE)


def doc(doc_id: str, title: str, **fields: Any) -> Any:
    base = {"doc_id": doc_id, "title": title, "commitment": f"c-{doc_id}", "price": 100, "provider": "zoe"}
    return catalog_document({**base, **fields})


def search(index: SearchIndex, **fields: Any) -> Page:
    return index.search(parse_query(fields))


def ids(page: Page) -> list[str]:
    """The first offer's document of each result, in order."""
    return [r.offers[0].doc_id for r in page.results]


def every_page(index: SearchIndex, cursor: str | None = None, **fields: Any) -> list[list[str]]:
    pages = []
    for _ in range(100):  # a cursor that fails to advance would otherwise loop for ever
        page = search(index, **fields, cursor=cursor) if cursor else search(index, **fields)
        pages.append(ids(page))
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor
    raise AssertionError(f"pages never ended: {pages[-3:]}")


class TestCatalogContract:
    def test_relevance_ranks_title_over_description_over_metadata(self, index: SearchIndex) -> None:
        index.write(1, upserts=[
            doc("in-tags", "Cooking at home", tags=["quantum"]),
            doc("in-title", "Quantum mechanics"),
            doc("in-description", "Lecture notes", description="an introduction to quantum ideas"),
            doc("unrelated", "Gardening"),
        ])
        assert ids(search(index, text="quantum")) == ["in-title", "in-description", "in-tags"]
        assert ids(search(index, text="QUANT")) == ["in-title", "in-description", "in-tags"]  # prefixes, any case
        assert ids(search(index, text="quantum mechanics")) == ["in-title"]  # every word must match
        scores = [r.score for r in search(index, text="quantum").results]
        assert scores == sorted(scores, reverse=True) and scores[-1] > 0

    def test_metadata_values_and_diacritics_are_searched_alike_on_both_engines(self, index: SearchIndex) -> None:
        index.write(1, upserts=[doc("b", "A novel", type="book", metadata={"authors": ["Zoë Ünïcode"], "year": 1999}),
                                doc("f", "A film", type="film", metadata={"director": "Ann Lee"})])
        assert ids(search(index, text="ünïcode")) == ["b"]
        assert ids(search(index, text="zoë 1999")) == ["b"]
        assert ids(search(index, text="lee")) == ["f"]

    def test_every_filter(self, index: SearchIndex) -> None:
        index.write(1, upserts=[
            doc("root", "Data one", topic="datasets", type="table", price=10, provider="ann",
                metadata={"format": "csv", "year": 2020}),
            doc("child", "Data two", topic="datasets/archive", type="table", price=20, provider="bob",
                metadata={"format": "parquet", "year": 2021}),
            doc("deep", "Data three", topic="datasets/archive/old", type="book", price=30, provider="ann"),
            doc("sibling", "Data four", topic="datasetsx", price=40, provider="bob"),
            doc("other", "Data five", topic="data", price=50, provider="cid"),
        ])
        assert set(ids(search(index, text="data", topic="datasets"))) == {"root", "child", "deep"}
        assert set(ids(search(index, text="data", topic="datasets/archive"))) == {"child", "deep"}
        assert set(ids(search(index, topic="Datasets/Archive/"))) == {"child", "deep"}  # a filter alone is a search
        assert set(ids(search(index, text="data", type="table"))) == {"root", "child"}
        assert ids(search(index, text="data", metadata={"format": "parquet"})) == ["child"]
        assert ids(search(index, text="data", metadata={"year": 2020})) == ["root"]
        assert ids(search(index, text="data", metadata={"year": 2020, "format": "parquet"})) == []
        assert set(ids(search(index, text="data", min_price=20, max_price=40))) == {"child", "deep", "sibling"}
        assert set(ids(search(index, text="data", provider="ann"))) == {"root", "deep"}
        assert set(ids(search(index, provider="bob"))) == {"child", "sibling"}
        assert ids(search(index, text="data", online_only=True)) == []  # nobody online
        ONLINE.update({"cid", "ann"})
        assert set(ids(search(index, text="data", online_only=True))) == {"root", "deep", "other"}

    def test_every_sort(self, index: SearchIndex) -> None:
        index.write(1, upserts=[doc("old", "Atlas old", price=30, first_seq=1),
                                doc("mid", "Atlas mid", price=10, first_seq=2),
                                doc("new", "Atlas new", price=20, first_seq=3)])
        index.write(2, sales=["mid", "old", "old"])
        assert ids(search(index, text="atlas", sort="price")) == ["mid", "new", "old"]
        assert ids(search(index, text="atlas", sort="popularity")) == ["old", "mid", "new"]
        assert ids(search(index, text="atlas", sort="newest")) == ["new", "mid", "old"]
        assert ids(search(index, text="atlas")) == ids(search(index, text="atlas", sort="relevance"))

    def test_one_content_from_several_providers_appears_once(self, index: SearchIndex) -> None:
        index.write(1, upserts=[
            doc("zoe-copy", "Rare atlas", commitment="same", price=300, provider="zoe"),
            doc("bob-copy", "Rare atlas", commitment="same", price=100, provider="bob"),
            doc("ann-copy", "Rare atlas", commitment="same", price=200, provider="ann"),
            doc("other", "Rare atlas, other edition", commitment="different", price=50, provider="zoe"),
        ])
        index.write(2, sales=["zoe-copy", "ann-copy"])
        ONLINE.add("ann")
        page = search(index, text="atlas", sort="price")
        assert [r.commitment for r in page.results] == ["different", "same"]
        same = page.results[1]
        assert [(o.provider, o.price, o.online) for o in same.offers] == [("bob", 100, False), ("ann", 200, True), ("zoe", 300, False)]
        assert same.sales == 2
        # Offer filters narrow the offers listed, not only the contents.
        only = search(index, text="atlas", online_only=True).results
        assert [(r.commitment, [o.provider for o in r.offers]) for r in only] == [("same", ["ann"])]
        assert ids(search(index, text="atlas", sort="popularity"))[0] == "bob-copy"  # "same" sold most

    def test_cursor_pages_are_stable_and_complete(self, index: SearchIndex) -> None:
        index.write(1, upserts=[doc(f"d{i:02}", f"Volume {i} of the series", price=(i * 37) % 11, first_seq=i,
                                    commitment=f"c{i % 23:02}") for i in range(30)])
        for sort in ("relevance", "price", "popularity", "newest"):
            whole = ids(search(index, text="series", sort=sort, page_size=100))
            pages = every_page(index, text="series", sort=sort, page_size=4)
            assert [d for p in pages for d in p] == whole and len(whole) == 23
            assert all(len(p) == 4 for p in pages[:-1]) and pages[-1]
        # A document published between two pages neither repeats nor hides what was already there.
        first = search(index, text="series", sort="newest", page_size=5)
        index.write(2, upserts=[doc("late", "Volume late of the series", first_seq=99)])
        rest = every_page(index, text="series", sort="newest", page_size=5, cursor=first.next_cursor)
        seen = ids(first) + [d for p in rest for d in p]
        assert len(seen) == len(set(seen)) == 23 and "late" not in seen

    def test_bad_input_is_refused_or_harmless(self, index: SearchIndex) -> None:
        index.write(1, upserts=[doc("d", "Drop table of elements", description="OR NOT NEAR quotes")])
        assert ids(search(index, text="'; DROP TABLE catalog_documents; --")) == []  # "catalog" is not in it
        assert ids(search(index, text="drop table\"); --")) == ["d"]
        assert ids(search(index, text='NEAR(or not) "quotes" * ^ -')) == ["d"]  # operators are plain words
        with pytest.raises(BadQuery, match="a topic is words"):
            search(index, text="elem*", topic="misc' OR '1'='1")
        assert ids(search(index, text="elem*", topic="misc")) == ["d"]
        with pytest.raises(BadCursor):
            search(index, text="drop", cursor="eyJmYWtlIjogMX0.AAAAAAAAAAAAAAAAAAAAAA")
        page = search(index, text="drop", page_size=1)
        index.write(2, upserts=[doc("e", "Drop two")])
        cursor = search(index, text="drop", page_size=1).next_cursor
        assert page.next_cursor is None and cursor is not None
        with pytest.raises(BadCursor, match="another search"):
            search(index, text="drop", type="book", cursor=cursor)
        assert set(ids(search(index, text="drop", page_size=5))) == {"d", "e"}

    def test_writes_apply_once_in_log_order_with_the_position(self, index: SearchIndex) -> None:
        assert index.position() is None
        assert index.write(5, upserts=[doc("d", "Atlas", price=10, first_seq=5, first_at_ms=500)])
        assert index.position() == (5, PROJECTION_VERSION)
        assert not index.write(5, upserts=[doc("x", "Atlas copy")])  # a replay: already applied
        assert not index.write(4, deletes=["d"])
        assert ids(search(index, text="atlas")) == ["d"]
        index.write(6, sales=["d"])
        index.write(7, upserts=[doc("d", "Atlas revised", price=12, first_seq=7, first_at_ms=700)])  # a price change
        [result] = search(index, text="revised").results
        assert (result.offers[0].price, result.sales, result.first_seq, result.first_at_ms) == (12, 1, 5, 500)
        assert ids(search(index, text="atlas")) == ["d"]
        index.write(8, deletes=["d"])
        assert ids(search(index, text="atlas")) == [] and index.position() == (8, PROJECTION_VERSION)
        index.write(9, upserts=[doc("d", "Atlas")])
        index.reset()
        assert index.position() is None and ids(search(index, text="atlas")) == []

    def test_a_word_search_uses_the_full_text_index(self, store: Store) -> None:
        engine = store.engine
        if engine.dialect.name == "postgresql":
            # A handful of rows is cheapest to scan; forbid it to see that the GIN index can answer.
            engine = sa.create_engine(store.url, connect_args={"options": "-c enable_seqscan=off"})
        try:
            index = open_index(engine, cursor_key=KEY)
            index.write(1, upserts=[doc(f"d{i}", f"Title {i}", topic="a/b") for i in range(50)])
            plan = index.explain(parse_query({"text": "title"}))
            filtered_plan = index.explain(parse_query({"text": "title", "type": "other", "max_price": 500}))
            topic_plan = index.explain(parse_query({"topic": "a"}))
        finally:
            if engine is not store.engine:
                engine.dispose()
        if store.engine.dialect.name == "sqlite":
            assert "VIRTUAL TABLE INDEX" in plan and "SCAN catalog_documents" not in plan, plan
            assert "SCAN catalog_documents" not in filtered_plan, filtered_plan
            assert "ix_catalog_documents_topic" in topic_plan and "SCAN catalog_documents" not in topic_plan, topic_plan
        else:
            assert "ix_catalog_documents_search" in plan and "Seq Scan" not in plan, plan
            assert "Seq Scan" not in filtered_plan, filtered_plan  # the planner may pick the type index instead
            assert "ix_catalog_documents_topic" in topic_plan and "Seq Scan" not in topic_plan, topic_plan

"""One contract for every event store backend: SQLite (a temporary file) and PostgreSQL (a fresh database)."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from ledger.errors import StoreError
from ledger.log import replay_row
from ledger.model import State, state_hash, state_to_dict
from ledger.store import Row, Store
from tests.conftest import Book


def make_rows(n_deposits: int = 20) -> tuple[Book, list[Row]]:
    """Real, chained rows: an epoch, two users, a document and deposits."""
    book = Book()
    book.register("bob")
    book.register("zoe")
    book.publish("zoe", "doc-u", price=999, title="Ünïcode & “quotes”")
    for i in range(n_deposits):
        book.deposit("bob", i + 1)
    return book, list(book.rows)


def _drop_everything(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        meta.drop_all(engine)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    url = request.getfixturevalue("pg_url")
    _drop_everything(url)  # each test starts from an empty database, migrations included
    yield url
    _drop_everything(url)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    yield s
    s.close()


class TestStoreContract:
    def test_migrations_create_the_schema(self, store: Store) -> None:
        tables = set(sa.inspect(store.engine).get_table_names())
        assert {"events", "replica_meta", "snapshots", "flows", "sales", "alembic_version"} <= tables
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0005"
        indexes = {ix["name"] for ix in sa.inspect(store.engine).get_indexes("events")}
        assert "ix_events_command_id" in indexes

    def test_migrating_again_is_harmless(self, store: Store, store_url: str) -> None:
        _book, rows = make_rows(2)
        store.append(rows, {"stream_offset": "3"})
        again = Store(store_url)
        try:
            assert again.head() == (rows[-1].seq, rows[-1].hash)
            assert again.get_meta("stream_offset") == "3"
        finally:
            again.close()

    def test_an_empty_store(self, store: Store) -> None:
        assert store.head() == (0, None)
        assert list(store.rows()) == []
        assert store.get_meta("stream_offset") is None
        assert store.latest_snapshot() is None

    def test_append_stores_rows_and_bookkeeping_together(self, store: Store) -> None:
        _book, rows = make_rows()
        store.append(rows[:10], {"stream_offset": "10", "replica": "r1"})
        store.append(rows[10:], {"stream_offset": "11"})
        assert store.head() == (rows[-1].seq, rows[-1].hash)
        assert list(store.rows()) == rows
        assert store.get_meta("stream_offset") == "11"
        assert store.get_meta("replica") == "r1"

    def test_rows_come_back_exactly(self, store: Store) -> None:
        _book, rows = make_rows(1)
        store.append(rows)
        back = list(store.rows())
        assert back == rows
        assert back[0].reply is None  # the epoch announcement answers nobody
        assert any(r.reply is not None for r in back)
        assert any("Ünïcode" in str(r.payload) for r in back)

    @pytest.mark.parametrize(("after", "upto", "batch"), [(0, None, 5000), (0, None, 4), (3, 20, 4), (3, 19, 4),
                                                           (5, 6, 1), (24, None, 2), (0, 0, 3), (30, None, 3)])
    def test_rows_in_ranges_and_batches(self, store: Store, after: int, upto: int | None, batch: int) -> None:
        _book, rows = make_rows()  # 24 rows
        store.append(rows)
        last = len(rows) if upto is None else upto
        assert [r.seq for r in store.rows(after=after, upto=upto, batch=batch)] == list(range(after + 1, last + 1))

    def test_meta_is_upserted(self, store: Store) -> None:
        store.set_meta("stream_offset", "1")
        store.set_meta("stream_offset", "2")
        store.append([], {"stream_offset": "3", "other": "x"})
        assert store.get_meta("stream_offset") == "3"
        assert store.get_meta("other") == "x"

    def test_snapshots(self, store: Store) -> None:
        book, _rows = make_rows(2)
        state = book.state
        store.save_snapshot(10, "a" * 64, 11, {"seq": 10}, 1)
        store.save_snapshot(20, state_hash(state), 21, state_to_dict(state), 2)
        seq, digest, offset, data = store.latest_snapshot()  # type: ignore[misc]
        assert (seq, digest, offset) == (20, state_hash(state), 21)
        assert data == state_to_dict(state)
        assert store.latest_snapshot(at_most=15) == (10, "a" * 64, 11, {"seq": 10})
        assert store.latest_snapshot(at_most=9) is None
        store.save_snapshot(10, "b" * 64, 12, {"seq": 10, "again": True}, 3)
        assert store.latest_snapshot(at_most=10) == (10, "b" * 64, 12, {"seq": 10, "again": True})

    def test_a_failed_append_leaves_nothing_half_written(self, store: Store) -> None:
        _book, rows = make_rows()
        store.append(rows[:5], {"stream_offset": "5"})
        clash = dataclasses.replace(rows[4], hash="f" * 64)
        with pytest.raises(StoreError, match="append to .* failed"):
            store.append([rows[5], rows[6], clash], {"stream_offset": "99", "new_key": "x"})
        assert store.head() == (rows[4].seq, rows[4].hash)
        assert list(store.rows()) == rows[:5]
        assert store.get_meta("stream_offset") == "5"
        assert store.get_meta("new_key") is None
        # The store is still usable, and the next good append lands.
        store.append(rows[5:], {"stream_offset": "6"})
        assert list(store.rows()) == rows

    def test_flows_and_old_answers_are_kept_beside_the_events(self, store: Store) -> None:
        _book, rows = make_rows(3)
        store.append(rows[:-1])
        clash = dataclasses.replace(rows[0], hash="f" * 64)
        with pytest.raises(StoreError):
            store.append([rows[-1], clash])  # its flows go with it
        assert [f["amount"] for f in store.flows("bob", 10**9, 10)] == [1, 2]
        store.append(rows[-1:])
        last = rows[-1]
        assert [(f["kind"], f["amount"], f["seq"]) for f in store.flows("bob", last.seq, 2)] == [
            ("deposit", 2, last.seq - 1), ("deposit", 3, last.seq)]
        assert [f["amount"] for f in store.flows("bob", last.seq - 1, 10)] == [1, 2]
        assert store.flows("nobody", last.seq, 10) == []
        assert last.command_id is not None
        assert store.command_row(last.command_id) == last
        assert store.command_row(last.command_id, upto=last.seq - 1) is None
        assert store.command_row("no-such-command") is None

    def test_sales_past_their_dispute_window_are_kept_beside_the_events(self, store: Store) -> None:
        _book, rows = make_rows(3)

        def sale(sale_id: str, consumer: str, opened_seq: int) -> dict[str, object]:
            return {"sale_id": sale_id, "consumer": consumer, "provider": "zoe", "opened_seq": opened_seq,
                    "status": "settled", "interval_sealed_keys": ["k1", "k2"]}

        store.append(rows[:-2])
        retiring = dataclasses.replace(rows[-2], retired=(sale("s-1", "bob", 1), sale("s-2", "ann", 2)))
        clash = dataclasses.replace(rows[0], hash="f" * 64)
        with pytest.raises(StoreError):
            store.append([retiring, clash])  # the retired sales go with it
        assert store.retired_sale("s-1") is None
        store.append([retiring, dataclasses.replace(rows[-1], retired=(sale("s-3", "zoe", 3),))])
        at = rows[-2].seq
        assert store.retired_sale("s-1") == sale("s-1", "bob", 1)
        assert store.retired_sale("s-3", upto=at) is None and store.retired_sale("s-3", upto=at + 1) is not None
        assert [s["sale_id"] for s in store.retired_sales("zoe", at + 1, 10)] == ["s-1", "s-2", "s-3"]
        assert [s["sale_id"] for s in store.retired_sales("zoe", at + 1, 2)] == ["s-2", "s-3"]
        assert [s["sale_id"] for s in store.retired_sales("bob", at, 10)] == ["s-1"]
        assert store.retired_sales("nobody", at + 1, 10) == []

    def test_a_failing_read_is_a_store_error(self, store: Store) -> None:
        with store.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE events"))
            conn.execute(sa.text("DROP TABLE snapshots"))
            conn.execute(sa.text("DROP TABLE replica_meta"))
        for read in (store.head, lambda: list(store.rows()), store.latest_snapshot,
                     lambda: store.get_meta("stream_offset")):
            with pytest.raises(StoreError, match="read from .* failed"):
                read()

    def test_a_store_replays_to_the_state_that_wrote_it(self, store: Store) -> None:
        book, rows = make_rows()
        for start in range(0, len(rows), 7):
            store.append(rows[start:start + 7], {"stream_offset": str(start)})
        state = State()
        for row in store.rows(batch=5):
            state = replay_row(state, row)
        assert state_hash(state) == state_hash(book.state)


def test_an_unreachable_database_is_a_store_error_without_the_password() -> None:
    with pytest.raises(StoreError) as info:
        Store("postgresql+psycopg://acb:hunter2@127.0.0.1:1/acb")
    assert "hunter2" not in str(info.value)
    assert "***" in str(info.value)

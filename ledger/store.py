"""The event store: the log as rows, with the replica's bookkeeping beside it.

One neutral row per event (seq, epoch, time, command id, type, version,
payload bytes, reply, previous hash, hash), so event shapes evolve by
upcasters and the schema only by alembic migrations (``migrations/``).
SQLite by default (one file per replica), PostgreSQL when the URL says so.
What a replica has applied and how far it has read the broker's log are
written in the same transaction, so a crash neither skips nor repeats.

History that no command needs to be decided lives here rather than in the
replicated state: the cash flows each event caused (``flows``, a projection
written in the same transaction as its events), the answers of commands
older than the state's window (found in ``events`` by the command id index),
and the sales past their dispute window (``sales``, written by the event at
which they left the state; see :data:`ledger.model.DISPUTE_WINDOW`).
"""
from __future__ import annotations

import json
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.exc import SQLAlchemyError

import migrations
from broker.codec import canonical
from broker.settings import load_environment
from ledger.errors import StoreError

__all__ = ["Store", "Row", "default_store_url", "migrate", "EVENTS", "META", "SNAPSHOTS", "FLOWS", "FLOW_FIELDS",
           "SALES"]

_metadata = sa.MetaData()
EVENTS = sa.Table(
    "events", _metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("at_ms", sa.BigInteger, nullable=False),
    sa.Column("command_id", sa.String(80)),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("reply", sa.LargeBinary),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("entry", sa.LargeBinary),  # on an entry's last row: the whole entry as its writer signed it
)
META = sa.Table(
    "replica_meta", _metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
SNAPSHOTS = sa.Table(
    "snapshots", _metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("state_hash", sa.String(64), nullable=False),
    sa.Column("stream_offset", sa.BigInteger, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)

FLOWS = sa.Table(
    "flows", _metadata,
    sa.Column("account", sa.String(64), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=False),  # an event may move one account twice
    sa.Column("at_ms", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("counterparty", sa.String(80), nullable=False),
    sa.Column("doc_id", sa.String(80), nullable=False),
    sa.Column("sale_id", sa.String(80), nullable=False),
    sa.Column("memo", sa.Text, nullable=False),
)
# A flow as a read answers it (the fields of ledger.model.Flow, in its order).
SALES = sa.Table(
    "sales", _metadata,
    sa.Column("sale_id", sa.String(80), primary_key=True),
    sa.Column("consumer", sa.String(64), nullable=False, index=True),
    sa.Column("provider", sa.String(64), nullable=False, index=True),
    sa.Column("opened_seq", sa.BigInteger, nullable=False),
    sa.Column("retired_seq", sa.BigInteger, nullable=False),  # the event at which it left the state
    sa.Column("sale", sa.LargeBinary, nullable=False),  # the ledger.model.Sale as the state last held it
)
FLOW_FIELDS = ("seq", "at_ms", "kind", "amount", "counterparty", "doc_id", "sale_id", "memo")


def default_store_url(name: str = "ledger") -> str:
    """``ACB_STORE_URL``, else a SQLite file under ``ACB_HOME`` (default ``~/.acb``)."""
    env = load_environment()
    if env.store_url:
        return env.store_url
    home = env.home
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / (name + '.db')}"


@dataclass(frozen=True)
class Row:
    """One stored event, as bytes and scalars."""

    seq: int
    epoch: int
    at_ms: int
    command_id: str | None
    type: str
    version: int
    # The event as its writer wrote it; stored canonically, which are the very bytes its hash and the writer's
    # signature cover, and parsed (upcast) only when read, so stored bytes never depend on the code version.
    payload: dict[str, Any]
    reply: dict[str, Any] | None
    prev_hash: str
    hash: str
    entry: dict[str, Any] | None = None  # the signed log entry, on the last row it produced
    # The cash flows the event caused, each with its "account" and the FLOW_FIELDS: the store's projection,
    # not part of the event (nor of its hash); empty for rows read back from the store.
    flows: tuple[dict[str, Any], ...] = field(default=(), compare=False)
    # The sales the event took out of the state (past their dispute window), each the fields of a
    # ledger.model.Sale: the store's projection again; empty for rows read back from the store.
    retired: tuple[dict[str, Any], ...] = field(default=(), compare=False)


def _engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa_event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest alembic revision."""
    # lazy: alembic takes a fifth of a second to import; an audit opens its store (create=False) without it
    from alembic import command
    from alembic.config import Config

    here = Path(__file__).resolve().parent.parent / "migrations"
    if not here.exists():  # installed as a package rather than from the repository
        here = Path(migrations.__file__).parent
    cfg = Config(str(here / "alembic.ini"))
    cfg.set_main_option("script_location", str(here))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Store:
    """A replica's event store."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        try:
            self.engine = _engine(url)
            if create:
                migrate(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open store {self.safe_url}: {exc}") from exc

    @property
    def safe_url(self) -> str:
        try:
            return sa.engine.make_url(self.url).render_as_string(hide_password=True)
        except sa.exc.ArgumentError:
            return "(a store URL that does not parse)"  # it may hold a password: not shown

    def close(self) -> None:
        self.engine.dispose()

    # -- writing ---------------------------------------------------------------------------------
    def append(self, rows: Sequence[Row], meta: dict[str, str] | None = None) -> None:
        """Append rows and update bookkeeping in one transaction."""
        try:
            with self.engine.begin() as conn:
                if rows:
                    conn.execute(EVENTS.insert(), [_to_db(r) for r in rows])
                    flows = [{**f, "n": n} for r in rows for n, f in enumerate(r.flows)]
                    if flows:
                        conn.execute(FLOWS.insert(), flows)
                    retired = [_sale_row(r.seq, sale) for r in rows for sale in r.retired]
                    if retired:
                        conn.execute(SALES.insert(), retired)
                for key, value in (meta or {}).items():
                    _upsert_meta(conn, key, value)
        except SQLAlchemyError as exc:
            raise StoreError(f"append to {self.safe_url} failed: {exc}") from exc

    def set_meta(self, key: str, value: str) -> None:
        self.append([], {key: value})

    def save_snapshot(self, seq: int, state_hash: str, stream_offset: int, state: dict[str, Any] | None, now_ms: int,
                      *, blob: bytes | None = None) -> None:
        """Keep a snapshot: the state's picture, or ``blob``, its canonical bytes compressed already."""
        if blob is None:
            blob = zlib.compress(canonical(state), 3)
        try:
            with self.engine.begin() as conn:
                conn.execute(SNAPSHOTS.delete().where(SNAPSHOTS.c.seq == seq))
                conn.execute(SNAPSHOTS.insert().values(seq=seq, state_hash=state_hash, stream_offset=stream_offset,
                                                       payload=blob, created_ms=now_ms))
        except SQLAlchemyError as exc:
            raise StoreError(f"snapshot to {self.safe_url} failed: {exc}") from exc

    # -- reading ---------------------------------------------------------------------------------
    @contextmanager
    def _reading(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"read from {self.safe_url} failed: {exc}") from exc

    def get_meta(self, key: str) -> str | None:
        with self._reading() as conn:
            return conn.execute(sa.select(META.c.value).where(META.c.key == key)).scalar()

    def head(self) -> tuple[int, str | None]:
        with self._reading() as conn:
            row = conn.execute(sa.select(EVENTS.c.seq, EVENTS.c.hash).order_by(EVENTS.c.seq.desc()).limit(1)).first()
        return (row[0], row[1]) if row else (0, None)

    def rows(self, after: int = 0, upto: int | None = None, batch: int = 5000) -> Iterator[Row]:
        """Stored events with ``after < seq <= upto``, in order, fetched in batches."""
        last = after
        while True:
            query = sa.select(EVENTS).where(EVENTS.c.seq > last).order_by(EVENTS.c.seq).limit(batch)
            if upto is not None:
                query = query.where(EVENTS.c.seq <= upto)
            with self._reading() as conn:
                got = conn.execute(query).all()
            for r in got:
                yield _from_db(r)
            if len(got) < batch:
                return
            last = got[-1].seq

    def flows(self, account: str, upto: int, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` cash flows of ``account`` up to event ``upto``, oldest first."""
        query = (sa.select(*(FLOWS.c[f] for f in FLOW_FIELDS))
                 .where(FLOWS.c.account == account, FLOWS.c.seq <= upto)
                 .order_by(FLOWS.c.seq.desc(), FLOWS.c.n.desc()).limit(limit))
        with self._reading() as conn:
            got = conn.execute(query).all()
        return [dict(zip(FLOW_FIELDS, r, strict=True)) for r in reversed(got)]

    def retired_sale(self, sale_id: str, upto: int | None = None) -> dict[str, Any] | None:
        """The sale ``sale_id`` as it left the state (the fields of a ``ledger.model.Sale``), if it did by ``upto``."""
        query = sa.select(SALES.c.sale).where(SALES.c.sale_id == sale_id)
        if upto is not None:
            query = query.where(SALES.c.retired_seq <= upto)
        with self._reading() as conn:
            blob = conn.execute(query).scalar()
        return json.loads(blob) if blob is not None else None

    def retired_sales(self, account: str, upto: int, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` sales of ``account`` (as consumer or provider) that left the state by ``upto``,
        oldest first."""
        query = (sa.select(SALES.c.sale)
                 .where(sa.or_(SALES.c.consumer == account, SALES.c.provider == account), SALES.c.retired_seq <= upto)
                 .order_by(SALES.c.opened_seq.desc()).limit(limit))
        with self._reading() as conn:
            got = conn.execute(query).scalars().all()
        return [json.loads(blob) for blob in reversed(got)]

    def command_row(self, command_id: str, upto: int | None = None) -> Row | None:
        """The row that answered ``command_id`` (its first, the one with the reply), if it is stored."""
        query = (sa.select(EVENTS).where(EVENTS.c.command_id == command_id, EVENTS.c.reply.is_not(None))
                 .order_by(EVENTS.c.seq).limit(1))
        if upto is not None:
            query = query.where(EVENTS.c.seq <= upto)
        with self._reading() as conn:
            row = conn.execute(query).first()
        return _from_db(row) if row is not None else None

    def latest_snapshot(self, at_most: int | None = None) -> tuple[int, str, int, dict[str, Any]] | None:
        """``(seq, state_hash, stream_offset, state_dict)`` of the newest snapshot, if any."""
        query = sa.select(SNAPSHOTS).order_by(SNAPSHOTS.c.seq.desc()).limit(1)
        if at_most is not None:
            query = query.where(SNAPSHOTS.c.seq <= at_most)
        with self._reading() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return row.seq, row.state_hash, row.stream_offset, json.loads(zlib.decompress(row.payload))


def _upsert_meta(conn: sa.Connection, key: str, value: str) -> None:
    updated = conn.execute(META.update().where(META.c.key == key).values(value=value)).rowcount
    if not updated:
        conn.execute(META.insert().values(key=key, value=value))


def _sale_row(seq: int, sale: dict[str, Any]) -> dict[str, Any]:
    return {"sale_id": sale["sale_id"], "consumer": sale["consumer"], "provider": sale["provider"],
            "opened_seq": sale["opened_seq"], "retired_seq": seq, "sale": canonical(sale)}


def _to_db(r: Row) -> dict[str, Any]:
    return {
        "seq": r.seq, "epoch": r.epoch, "at_ms": r.at_ms, "command_id": r.command_id, "type": r.type,
        "version": r.version, "payload": canonical(r.payload),
        "reply": canonical(r.reply) if r.reply is not None else None,
        "prev_hash": r.prev_hash, "hash": r.hash,
        "entry": canonical(r.entry) if r.entry is not None else None,
    }


def _from_db(r: Any) -> Row:
    return Row(
        seq=r.seq, epoch=r.epoch, at_ms=r.at_ms, command_id=r.command_id, type=r.type, version=r.version,
        payload=json.loads(r.payload), reply=json.loads(r.reply) if r.reply is not None else None,
        prev_hash=r.prev_hash, hash=r.hash, entry=json.loads(r.entry) if r.entry is not None else None,
    )

"""One store setting gives every replica a store of its own (the compose deployment relies on it)."""
from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from ledger.cli import resolve_store_url
from ledger.errors import StoreError
from ledger.store import Store
from tests.conftest import PG_URL


def test_sqlite_template_is_filled_with_a_safe_replica_name(tmp_path: object) -> None:
    url = resolve_store_url(f"sqlite:///{tmp_path}/ledger-{{replica}}.db", "Host-7.a")
    assert url == f"sqlite:///{tmp_path}/ledger-host_7_a.db"


@pytest.mark.postgres
def test_postgres_database_of_a_replica_is_created_once() -> None:
    replica = f"t{uuid.uuid4().hex[:8]}"
    template = PG_URL.rsplit("/", 1)[0] + "/acb_{replica}"
    url = resolve_store_url(template, replica)
    try:
        assert url.endswith(f"/acb_{replica}")
        assert resolve_store_url(template, replica) == url  # idempotent: exists already
        store = Store(url)
        assert store.head() == (0, None)
        store.close()
    finally:
        admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "acb_{replica}" WITH (FORCE)'))
        admin.dispose()


def test_unreachable_postgres_is_one_clear_error() -> None:
    with pytest.raises(StoreError, match="cannot prepare the store postgresql"):
        resolve_store_url("postgresql+psycopg://nobody:secret@127.0.0.1:1/acb_{replica}", "r1")

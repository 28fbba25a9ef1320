"""The catalog projection: one row per published document, its full-text index, and the position applied.

The full-text index is the engine's own: an FTS5 table over the documents on SQLite (external content,
kept in step by triggers, so a document and its index entry change in one transaction), a generated
``tsvector`` column with a GIN index on PostgreSQL. Both tokenise letters and digits, fold case and keep
diacritics, so the two stores find the same documents for the same words. The projection is built from
the log (``catalog_position`` says how far): a store upgraded in place starts empty and is filled by
replaying the log.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_SQLITE_FTS = [
    # Title, description and body (tags, metadata values, topic words) are the indexed columns, read from
    # catalog_documents itself; prefix indexes make "quant" find "quantum" without scanning the vocabulary.
    """CREATE VIRTUAL TABLE catalog_fts USING fts5(
           title, description, body,
           content='catalog_documents', content_rowid='id',
           tokenize='unicode61 remove_diacritics 0', prefix='2 3')""",
    """CREATE TRIGGER catalog_documents_ai AFTER INSERT ON catalog_documents BEGIN
           INSERT INTO catalog_fts(rowid, title, description, body)
           VALUES (new.id, new.title, new.description, new.body);
       END""",
    """CREATE TRIGGER catalog_documents_ad AFTER DELETE ON catalog_documents BEGIN
           INSERT INTO catalog_fts(catalog_fts, rowid, title, description, body)
           VALUES ('delete', old.id, old.title, old.description, old.body);
       END""",
    # Only a change of indexed text touches the index: a sale or a price change does not.
    """CREATE TRIGGER catalog_documents_au AFTER UPDATE OF title, description, body ON catalog_documents BEGIN
           INSERT INTO catalog_fts(catalog_fts, rowid, title, description, body)
           VALUES ('delete', old.id, old.title, old.description, old.body);
           INSERT INTO catalog_fts(rowid, title, description, body)
           VALUES (new.id, new.title, new.description, new.body);
       END""",
]
_POSTGRES_FTS = [
    # 'simple': no stemming and no stop words, as FTS5's unicode61; weights rank title over description over body.
    """ALTER TABLE catalog_documents ADD COLUMN search tsvector GENERATED ALWAYS AS (
           setweight(to_tsvector('simple'::regconfig, title), 'A') ||
           setweight(to_tsvector('simple'::regconfig, description), 'B') ||
           setweight(to_tsvector('simple'::regconfig, body), 'C')) STORED""",
    "CREATE INDEX ix_catalog_documents_search ON catalog_documents USING gin (search)",
]


def upgrade() -> None:
    # Keys compared by range (a topic's subtree: 'a/' <= t < 'a0') or by keyset (page cursors) must sort
    # bytewise; SQLite's default does, PostgreSQL's follows the database's locale unless told "C".
    bytewise = "C" if op.get_bind().dialect.name == "postgresql" else None
    op.create_table(
        "catalog_documents",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),  # FTS5's rowid
        sa.Column("doc_id", sa.String(80, collation=bytewise), nullable=False, unique=True),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("topic", sa.String(120, collation=bytewise), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("commitment", sa.String(128, collation=bytewise), nullable=False),
        sa.Column("price", sa.BigInteger, nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("sales", sa.BigInteger, nullable=False),
        sa.Column("first_seq", sa.BigInteger, nullable=False),
        sa.Column("first_at_ms", sa.BigInteger, nullable=False),
    )
    for column in ("commitment", "topic", "type", "provider", "price", "sales", "first_seq"):
        op.create_index(f"ix_catalog_documents_{column}", "catalog_documents", [column])
    op.create_table(
        "catalog_position",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),  # the last log event applied
        sa.Column("version", sa.Integer, nullable=False),  # of the projection's rules: a change means rebuild
    )
    statements = {"sqlite": _SQLITE_FTS, "postgresql": _POSTGRES_FTS}.get(op.get_bind().dialect.name, [])
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("ai", "ad", "au"):
            op.execute(f"DROP TRIGGER IF EXISTS catalog_documents_{trigger}")
        op.execute("DROP TABLE IF EXISTS catalog_fts")
    op.drop_table("catalog_position")
    for column in ("commitment", "topic", "type", "provider", "price", "sales", "first_seq"):
        op.drop_index(f"ix_catalog_documents_{column}", table_name="catalog_documents")
    op.drop_table("catalog_documents")

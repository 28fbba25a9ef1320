"""Cash-flow history leaves the replicated state: a projection table written with the events.

Existing stores are filled from nothing here: their flows appear as their events are replayed into a
new store; a store upgraded in place answers flows from this revision on (recovery does not refill it).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flows",
        sa.Column("account", sa.String(64), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("n", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("counterparty", sa.String(80), nullable=False),
        sa.Column("doc_id", sa.String(80), nullable=False),
        sa.Column("sale_id", sa.String(80), nullable=False),
        sa.Column("memo", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("flows")

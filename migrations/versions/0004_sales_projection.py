"""Sales past their dispute window leave the replicated state: a projection table written with the events.

A sale leaves the state DISPUTE_WINDOW events after it closed (ledger.model), and its row is written in the
same transaction as the event at which it left. A store upgraded in place starts with an empty table, and
the sales its replica drops while recovering (replaying events it stored before) are not written here: the
events table still holds their whole history, and replaying the log into a new store fills the projection.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sales",
        sa.Column("sale_id", sa.String(80), primary_key=True),
        sa.Column("consumer", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("opened_seq", sa.BigInteger, nullable=False),
        sa.Column("retired_seq", sa.BigInteger, nullable=False),
        sa.Column("sale", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_sales_consumer", "sales", ["consumer"])
    op.create_index("ix_sales_provider", "sales", ["provider"])


def downgrade() -> None:
    op.drop_index("ix_sales_provider", table_name="sales")
    op.drop_index("ix_sales_consumer", table_name="sales")
    op.drop_table("sales")

"""The transactional outbox: every business event, written in the transaction of its change.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 06:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("relayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_outbox_event_id")),
    )
    op.create_index("ix_outbox_type_id", "outbox", ["type", "id"], unique=False)
    op.create_index(
        "ix_outbox_unrelayed",
        "outbox",
        ["id"],
        unique=False,
        sqlite_where=sa.text("relayed_at IS NULL"),
        postgresql_where=sa.text("relayed_at IS NULL"),
    )


def downgrade():
    op.drop_index("ix_outbox_unrelayed", table_name="outbox")
    op.drop_index("ix_outbox_type_id", table_name="outbox")
    op.drop_table("outbox")

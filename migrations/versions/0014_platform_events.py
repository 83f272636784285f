"""Events from the shop's platforms: one row per Stripe or Shopify event, its dedupe and its log.

`platform_events` holds each event received (unique per platform and event id), whether it was
mapped onto the ledger or ignored, and why; no payload is kept.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "platform_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("platform", sa.String(length=16), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=10), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("message", sa.String(length=500), nullable=True),
        sa.Column("order_id", sa.String(length=128), nullable=True),
        sa.Column("customer_external_id", sa.String(length=128), nullable=True),
        sa.CheckConstraint(
            "platform IN ('stripe', 'shopify')", name=op.f("ck_platform_events_platform")
        ),
        sa.CheckConstraint(
            "outcome IN ('mapped', 'ignored')", name=op.f("ck_platform_events_outcome")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_platform_events")),
        sa.UniqueConstraint("platform", "event_id", name="uq_platform_events_platform_event_id"),
    )
    op.create_index(
        "ix_platform_events_platform_id", "platform_events", ["platform", "id"], unique=False
    )


def downgrade():
    op.drop_index("ix_platform_events_platform_id", table_name="platform_events")
    op.drop_table("platform_events")

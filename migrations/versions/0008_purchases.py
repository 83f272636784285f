"""Purchases by the date they were placed: an index on `purchases.occurred_at`, which the
funnel's rewards are counted by (the date of the order that earned them), as conversions are.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 00:00:00
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("purchases", schema=None) as batch_op:
        batch_op.create_index("ix_purchases_occurred_at", ["occurred_at"], unique=False)


def downgrade():
    with op.batch_alter_table("purchases", schema=None) as batch_op:
        batch_op.drop_index("ix_purchases_occurred_at")

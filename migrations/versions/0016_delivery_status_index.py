"""Webhook deliveries by status: an index, so that `/metrics` counts them without a table scan.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30 11:00:00
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("ix_webhook_deliveries_status", "webhook_deliveries", ["status"], unique=False)


def downgrade():
    op.drop_index("ix_webhook_deliveries_status", table_name="webhook_deliveries")

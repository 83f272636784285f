"""Clicks: link-preview bots are not counted; a visitor counts once an hour.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 00:00:00
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("clicks", schema=None) as batch_op:
        batch_op.create_index(
            "ix_clicks_visitor", ["code_id", "ip_hash", "ua_hash", "occurred_at"], unique=False
        )


def downgrade():
    with op.batch_alter_table("clicks", schema=None) as batch_op:
        batch_op.drop_index("ix_clicks_visitor")

"""The customer's share page and the friend's welcome: landing mode, default language and the
share message per language.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 01:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("program", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "landing_mode", sa.String(length=10), nullable=False, server_default="redirect"
            )
        )
        batch_op.add_column(
            sa.Column("default_locale", sa.String(length=5), nullable=False, server_default="en")
        )
        batch_op.add_column(
            sa.Column("share_messages", sa.JSON(), nullable=False, server_default="{}")
        )
        batch_op.create_check_constraint("landing_mode", "landing_mode IN ('redirect', 'welcome')")


def downgrade():
    with op.batch_alter_table("program", schema=None) as batch_op:
        batch_op.drop_constraint("landing_mode", type_="check")
        batch_op.drop_column("share_messages")
        batch_op.drop_column("default_locale")
        batch_op.drop_column("landing_mode")

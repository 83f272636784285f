"""Console sessions that end on the server, and the sign-in throttle per client address.

`admins.session_generation` (0 for every existing admin) is part of each console session's
check: raising it ends that admin's sessions. `admin_sign_in_failures.address` holds the client
address of a refused sign-in (NULL for the failures recorded before, which age out within the
throttle's 15 minutes), indexed with the time as the email is.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("admins", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("session_generation", sa.Integer(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("admin_sign_in_failures", schema=None) as batch_op:
        batch_op.add_column(sa.Column("address", sa.String(length=64), nullable=True))
        batch_op.create_index(
            "ix_admin_sign_in_failures_address_at", ["address", "at"], unique=False
        )


def downgrade():
    with op.batch_alter_table("admin_sign_in_failures", schema=None) as batch_op:
        batch_op.drop_index("ix_admin_sign_in_failures_address_at")
        batch_op.drop_column("address")
    with op.batch_alter_table("admins", schema=None) as batch_op:
        batch_op.drop_column("session_generation")

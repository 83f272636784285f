"""Four eyes on payouts: who approved a batch, and when (never its creator).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("approved_by", sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_check_constraint(
            "approver_not_creator", "approved_by IS NULL OR approved_by <> created_by"
        )


def downgrade():
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        batch_op.drop_constraint("approver_not_creator", type_="check")
        batch_op.drop_column("approved_at")
        batch_op.drop_column("approved_by")

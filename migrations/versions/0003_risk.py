"""Fraud defences: risk evidence on sign-ups and clicks (keyed hashes), velocity and coupon-site
settings, the retention period of the evidence.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 23:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("signups", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ip_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("ua_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("device_hash", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_signups_device_hash", ["device_hash"], unique=False)
        batch_op.create_index("ix_signups_ip_hash", ["ip_hash"], unique=False)
        batch_op.create_index("ix_signups_occurred_at", ["occurred_at"], unique=False)

    with op.batch_alter_table("clicks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("referer_host", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("ip_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("ua_hash", sa.String(length=64), nullable=True))

    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.create_index(
            "ix_referrals_referrer_attributed", ["referrer_id", "attributed_at"], unique=False
        )

    with op.batch_alter_table("program", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("velocity_max_signups", sa.Integer(), nullable=False, server_default="10")
        )
        batch_op.add_column(
            sa.Column("velocity_window_hours", sa.Integer(), nullable=False, server_default="24")
        )
        batch_op.add_column(
            sa.Column("coupon_sites", sa.JSON(), nullable=False, server_default="[]")
        )
        batch_op.add_column(
            sa.Column("risk_retention_days", sa.Integer(), nullable=False, server_default="90")
        )


def downgrade():
    with op.batch_alter_table("program", schema=None) as batch_op:
        batch_op.drop_column("risk_retention_days")
        batch_op.drop_column("coupon_sites")
        batch_op.drop_column("velocity_window_hours")
        batch_op.drop_column("velocity_max_signups")

    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.drop_index("ix_referrals_referrer_attributed")

    with op.batch_alter_table("clicks", schema=None) as batch_op:
        batch_op.drop_column("ua_hash")
        batch_op.drop_column("ip_hash")
        batch_op.drop_column("referer_host")

    with op.batch_alter_table("signups", schema=None) as batch_op:
        batch_op.drop_index("ix_signups_occurred_at")
        batch_op.drop_index("ix_signups_ip_hash")
        batch_op.drop_index("ix_signups_device_hash")
        batch_op.drop_column("device_hash")
        batch_op.drop_column("ua_hash")
        batch_op.drop_column("ip_hash")

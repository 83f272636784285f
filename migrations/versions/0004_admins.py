"""Admin console: admins (scrypt password hashes, roles) and failed sign-ins for the throttle.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 23:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "admins",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=10), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_sign_in_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("role IN ('viewer', 'approver', 'owner')", name=op.f("ck_admins_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admins")),
        sa.UniqueConstraint("email", name=op.f("uq_admins_email")),
    )
    op.create_table(
        "admin_sign_in_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_sign_in_failures")),
    )
    with op.batch_alter_table("admin_sign_in_failures", schema=None) as batch_op:
        batch_op.create_index("ix_admin_sign_in_failures_email_at", ["email", "at"], unique=False)


def downgrade():
    with op.batch_alter_table("admin_sign_in_failures", schema=None) as batch_op:
        batch_op.drop_index("ix_admin_sign_in_failures_email_at")
    op.drop_table("admin_sign_in_failures")
    op.drop_table("admins")

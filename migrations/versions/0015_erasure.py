"""Data rights: a customer can be erased.

`customers.email` and `customers.email_key` may be NULL (an erased person keeps no address), and
`customers.erased_at` says when the person was erased. A downgrade gives erased customers a
placeholder address that names no one (`erased-<id>@invalid`, RFC 2606's reserved domain).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

PLACEHOLDER = sa.text(
    "UPDATE customers SET email = 'erased-' || id || '@invalid', "
    "email_key = 'erased-' || id || '@invalid' WHERE email IS NULL OR email_key IS NULL"
)


def upgrade():
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.alter_column("email", existing_type=sa.String(length=320), nullable=True)
        batch_op.alter_column("email_key", existing_type=sa.String(length=320), nullable=True)


def downgrade():
    op.get_bind().execute(PLACEHOLDER)
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.alter_column("email_key", existing_type=sa.String(length=320), nullable=False)
        batch_op.alter_column("email", existing_type=sa.String(length=320), nullable=False)
        batch_op.drop_column("erased_at")

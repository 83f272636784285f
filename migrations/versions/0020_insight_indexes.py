"""Customers by creation time: insight counts the customers known before the period and before
each of its months through an index (a count of the older entries, a range of the period's),
not by reading every customer.

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-30 17:30:00
"""

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("ix_customers_created_at", "customers", ["created_at"], unique=False)


def downgrade():
    op.drop_index("ix_customers_created_at", table_name="customers")

"""Each customer's first order per currency with their orders of the 90 days from it
(`customer_first_orders`), backfilled from the orders recorded so far: insight's cohorts read
one index range of it instead of grouping a year's orders by customer.

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-30 18:00:00
"""

from datetime import UTC, timedelta

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

REPEAT_WINDOW_DAYS = 90  # domain/cohorts.py's, frozen here as this step computed it
BATCH = 5000


def _utc(value):
    """A stored time as an aware UTC datetime (SQLite returns it naive)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _summarize(orders):
    """(first, orders_90d, revenue_90d_minor) of one customer's orders in one currency, in
    ascending time, counting those not fully refunded; None when none is counted."""
    first = horizon = None
    count = revenue = 0
    for occurred_at, amount_minor, refunded_minor in orders:
        if refunded_minor >= amount_minor:
            continue
        if first is None:
            first, horizon = occurred_at, occurred_at + timedelta(days=REPEAT_WINDOW_DAYS)
        if occurred_at >= horizon:
            break
        count += 1
        revenue += amount_minor - refunded_minor
    return None if first is None else (first, count, revenue)


def upgrade():
    op.create_table(
        "customer_first_orders",
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("first_order_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("orders_90d", sa.Integer(), nullable=False),
        sa.Column("revenue_90d_minor", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("orders_90d >= 1", name=op.f("ck_customer_first_orders_orders")),
        sa.CheckConstraint("revenue_90d_minor >= 0", name=op.f("ck_customer_first_orders_revenue")),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_customer_first_orders_customer_id_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("customer_id", "currency", name=op.f("pk_customer_first_orders")),
    )
    op.create_index(
        "ix_customer_first_orders_currency",
        "customer_first_orders",
        ["currency", "first_order_at"],
        unique=False,
    )
    _backfill()


def _backfill():
    """Stream the orders by customer, currency and time, one batch at a time, and insert each
    (customer, currency)'s summary."""
    connection = op.get_bind()
    table = sa.table(
        "customer_first_orders",
        sa.column("customer_id", sa.Integer),
        sa.column("currency", sa.String),
        sa.column("first_order_at", sa.DateTime(timezone=True)),
        sa.column("orders_90d", sa.Integer),
        sa.column("revenue_90d_minor", sa.BigInteger),
    )
    purchases = sa.table(
        "purchases",
        sa.column("id", sa.Integer),
        sa.column("customer_id", sa.Integer),
        sa.column("currency", sa.String),
        sa.column("occurred_at", sa.DateTime),
        sa.column("amount_minor", sa.BigInteger),
        sa.column("refunded_minor", sa.BigInteger),
    )
    query = sa.select(
        purchases.c.customer_id,
        purchases.c.currency,
        purchases.c.occurred_at,
        purchases.c.amount_minor,
        purchases.c.refunded_minor,
    ).order_by(
        purchases.c.customer_id, purchases.c.currency, purchases.c.occurred_at, purchases.c.id
    )
    rows = []
    key, orders = None, []

    def close():
        summary = _summarize(orders) if key is not None else None
        if summary is not None:
            first, count, revenue = summary
            rows.append(
                {
                    "customer_id": key[0],
                    "currency": key[1],
                    "first_order_at": first,
                    "orders_90d": count,
                    "revenue_90d_minor": revenue,
                }
            )

    # a server-side cursor on PostgreSQL, BATCH rows at a time (an option of this statement only)
    result = connection.execute(query.execution_options(stream_results=True, yield_per=BATCH))
    for customer_id, currency, occurred_at, amount, refunded in result:
        if (customer_id, currency) != key:
            close()
            key, orders = (customer_id, currency), []
            if len(rows) >= BATCH:
                _insert(table, rows)
                rows = []
        orders.append((_utc(occurred_at), amount, refunded))
    close()
    if rows:
        _insert(table, rows)


def _insert(table, rows):
    connection = op.get_bind()
    if connection.dialect.name == "sqlite":  # UTC times kept naive there (UTCDateTime)
        rows = [
            {**row, "first_order_at": row["first_order_at"].replace(tzinfo=None)} for row in rows
        ]
    connection.execute(table.insert(), rows)


def downgrade():
    op.drop_index("ix_customer_first_orders_currency", table_name="customer_first_orders")
    op.drop_table("customer_first_orders")

"""The summary of each customer's first order per currency (`customer_first_orders`), kept up to
date in the unit of work that changes their orders, so that insight's cohorts read one index
range instead of grouping a year's orders by customer.

For a customer and a currency, the counted orders are those not fully refunded
(`refunded_minor < amount_minor`); `first_order_at` is the earliest counted order's time, and
`orders_90d` / `revenue_90d_minor` (net of refunds, in minor units) are over the counted orders
with `first_order_at <= occurred_at < first_order_at + REPEAT_WINDOW_DAYS`. A customer with no
counted order in a currency has no row in it.

`refresh` recomputes one row from that customer's orders (the index on the customer and the
time): a purchase (domain/rewards.py) and a refund (domain/refunds.py) call it. Writes of one
customer's orders are serialized by a lock on the customer's row on PostgreSQL, and by SQLite's
write lock, so that the last refresh reads every order committed before it.
"""

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from referral_service.models import CustomerFirstOrder, Purchase

REPEAT_WINDOW_DAYS = 90

_purchases = Purchase.__table__
_summary = CustomerFirstOrder.__table__
_ORDERS = (
    select(_purchases.c.occurred_at, _purchases.c.amount_minor, _purchases.c.refunded_minor)
    .where(
        _purchases.c.customer_id == bindparam("customer_id"),
        _purchases.c.currency == bindparam("currency"),
    )
    .order_by(_purchases.c.occurred_at)
)
_DELETE = delete(_summary).where(
    _summary.c.customer_id == bindparam("customer_id"),
    _summary.c.currency == bindparam("currency"),
)


def summarize(orders: Iterable[tuple[datetime, int, int]]) -> tuple[datetime, int, int] | None:
    """`(first_order_at, orders_90d, revenue_90d_minor)` of one customer's orders in one
    currency, given as `(occurred_at, amount_minor, refunded_minor)` in ascending time; None when
    none is counted (each fully refunded, or none at all)."""
    first = None
    count = revenue = 0
    for occurred_at, amount_minor, refunded_minor in orders:
        if refunded_minor >= amount_minor:
            continue
        if first is None:
            first = occurred_at
            horizon = first + timedelta(days=REPEAT_WINDOW_DAYS)
        if occurred_at >= horizon:
            break
        count += 1
        revenue += amount_minor - refunded_minor
    return None if first is None else (first, count, revenue)


def _upsert(connection):
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(_summary)
    return statement.on_conflict_do_update(
        index_elements=[_summary.c.customer_id, _summary.c.currency],
        set_={
            "first_order_at": statement.excluded.first_order_at,
            "orders_90d": statement.excluded.orders_90d,
            "revenue_90d_minor": statement.excluded.revenue_90d_minor,
        },
    )


def refresh(connection, customer_id: int, currency: str) -> None:
    """Recompute the customer's row for `currency` from their orders in it (one read of them and
    one upsert, or a delete when none is counted), in the caller's transaction. The caller holds
    the customer's writes (the customer's row locked on PostgreSQL)."""
    key = {"customer_id": customer_id, "currency": currency}
    summary = summarize(connection.execute(_ORDERS, key).all())
    if summary is None:
        connection.execute(_DELETE, key)
        return
    first, count, revenue = summary
    connection.execute(
        _upsert(connection),
        {**key, "first_order_at": first, "orders_90d": count, "revenue_90d_minor": revenue},
    )

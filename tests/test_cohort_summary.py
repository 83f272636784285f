"""The first-order summary insight's cohorts read (`customer_first_orders`, domain/cohorts.py):
the row after a purchase, a late order dated before the first, full and partial refunds, another
currency, purchases and refunds of one customer at once, and the migration's backfill."""

import importlib.util
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from referral_service.domain import cohorts, refunds, rewards
from referral_service.extensions import db
from referral_service.models import Customer, CustomerFirstOrder, Purchase, utcnow
from tests import factories
from tests.journey_helpers import together

T0 = (utcnow() - timedelta(days=200)).replace(microsecond=0)


def at(days: float) -> object:
    return T0 + timedelta(days=days)


def buy(order_id: str, amount: str, days: float, currency: str = "EUR", who: str = "c-1"):
    rewards.record_purchase(order_id, who, amount, currency, at(days), now=at(days))


def row(customer: str = "c-1", currency: str = "EUR"):
    """`(first_order_at, orders_90d, revenue_90d_minor)` of the customer's row, or None."""
    found = db.session.execute(
        select(
            CustomerFirstOrder.first_order_at,
            CustomerFirstOrder.orders_90d,
            CustomerFirstOrder.revenue_90d_minor,
        )
        .join(Customer, Customer.id == CustomerFirstOrder.customer_id)
        .where(Customer.external_id == customer, CustomerFirstOrder.currency == currency)
    ).first()
    db.session.commit()
    return None if found is None else tuple(found)


def recomputed(customer: str = "c-1", currency: str = "EUR"):
    """The row as computed from scratch from the customer's orders."""
    orders = db.session.execute(
        select(Purchase.occurred_at, Purchase.amount_minor, Purchase.refunded_minor)
        .join(Customer, Customer.id == Purchase.customer_id)
        .where(Customer.external_id == customer, Purchase.currency == currency)
        .order_by(Purchase.occurred_at)
    ).all()
    db.session.commit()
    return cohorts.summarize(orders)


def test_a_purchase_writes_the_row_and_the_next_ones_within_90_days_add_to_it(app):
    with app.app_context():
        factories.customer("c-1")
        buy("o-1", "10.00", 0)
        assert row() == (at(0), 1, 1000)
        buy("o-2", "5.50", 30)
        buy("o-3", "7.00", 90)  # 90 days after the first: outside the window
        assert row() == (at(0), 2, 1550)


def test_a_late_order_dated_before_the_first_becomes_the_first(app):
    with app.app_context():
        factories.customer("c-1")
        buy("o-1", "10.00", 50)
        buy("o-2", "20.00", 150)
        assert row() == (at(50), 1, 1000)
        buy("o-0", "3.00", 20)  # reported late: 30 and 130 days before the others
        assert row() == (at(20), 2, 1300)


def test_a_full_refund_of_the_first_order_moves_the_first_to_the_next(app):
    with app.app_context():
        factories.customer("c-1")
        buy("o-1", "10.00", 0)
        buy("o-2", "20.00", 60)
        buy("o-3", "30.00", 120)
        assert row() == (at(0), 2, 3000)
        refunds.refund("o-1", now=at(130))
        assert row() == (at(60), 2, 5000)
        refunds.refund("o-2", now=at(131))
        refunds.refund("o-3", now=at(132))
        assert row() is None  # no order counted any more


def test_a_partial_refund_takes_its_amount_off_the_revenue(app):
    with app.app_context():
        factories.customer("c-1")
        buy("o-1", "10.00", 0)
        buy("o-2", "20.00", 10)
        refunds.refund("o-2", amount="4.50", refund_id="r-1", now=at(11))
        assert row() == (at(0), 2, 2550)
        refunds.refund("o-2", refunded_total="20.00", now=at(12))
        assert row() == (at(0), 1, 1000)


def test_an_order_in_another_currency_has_its_own_row(app):
    with app.app_context():
        factories.customer("c-1")
        buy("o-1", "10.00", 5)
        buy("o-2", "99.00", 0, currency="USD")
        assert row() == (at(5), 1, 1000)
        assert row(currency="USD") == (at(0), 1, 9900)


def test_purchases_and_refunds_of_one_customer_at_once_leave_the_row_right(app):
    """8 threads at once: 4 new orders (one dated before every other) and 4 refunds (two full,
    two partial) of the customer's orders; the row ends equal to a recomputation."""
    with app.app_context():
        factories.customer("c-1")
        for n in range(4):
            buy(f"old-{n}", "10.00", 10 + n)

    def work(i):
        with app.app_context():
            try:
                if i < 4:
                    buy(f"new-{i}", f"{i + 1}.00", 5 + i * 3)
                elif i < 6:
                    refunds.refund(f"old-{i - 4}", now=at(150))
                else:
                    refunds.refund(f"old-{i - 4}", amount="2.00", refund_id=f"r-{i}", now=at(150))
            finally:
                db.session.remove()

    together(8, work)
    with app.app_context():
        assert row() == recomputed() == (at(5), 6, 1000 + 1600)


def _migration():
    path = Path(__file__).parent.parent / "migrations/versions/0021_customer_first_orders.py"
    spec = importlib.util.spec_from_file_location("migration_0021", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_backfill_equals_refresh_for_every_customer(app):
    """The migration's backfill, run over orders recorded without the summary, writes for
    every customer and currency the row `refresh` writes."""
    with app.app_context():
        for n in range(7):
            factories.customer(f"c-{n}")
        for n in range(7):
            for k in range(n):
                buy(f"o-{n}-{k}", f"{k + 1}.25", 40 * k - n, who=f"c-{n}")
        buy("usd-1", "8.00", 3, currency="USD", who="c-3")
        refunds.refund("o-2-0", now=at(200))
        refunds.refund("o-4-1", amount="1.00", refund_id="r", now=at(200))
        refunds.refund("o-6-0", now=at(200))
        written = _rows()
        db.session.execute(CustomerFirstOrder.__table__.delete())
        db.session.commit()

        migration = _migration()
        connection = db.session.connection()
        migration.op = _Op(connection)
        migration._backfill()
        db.session.commit()
        assert _rows() == written
        assert len(written) == 7  # c-0 ordered nothing; c-3 in two currencies
        for customer_id, currency, *_ in written:
            cohorts.refresh(db.session.connection(), customer_id, currency)
        db.session.commit()
        assert _rows() == written


class _Op:
    """The one `alembic.op` call the backfill makes, on the test's connection."""

    def __init__(self, connection):
        self.connection = connection

    def get_bind(self):
        return self.connection


def _rows() -> list[tuple]:
    rows = db.session.execute(
        select(
            CustomerFirstOrder.customer_id,
            CustomerFirstOrder.currency,
            CustomerFirstOrder.first_order_at,
            CustomerFirstOrder.orders_90d,
            CustomerFirstOrder.revenue_90d_minor,
        ).order_by(CustomerFirstOrder.customer_id, CustomerFirstOrder.currency)
    ).all()
    db.session.commit()
    return [tuple(r) for r in rows]

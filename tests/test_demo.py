"""`referral-service demo`: a year of fake data that fills every page, made through the service's
own rules; refused beside real customers unless forced; bad arguments are usage errors."""

import concurrent.futures
import re
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from referral_service.cli import main
from referral_service.domain import demo, program
from referral_service.errors import Conflict
from referral_service.extensions import db
from referral_service.models import (
    Clawback,
    Click,
    ClickDay,
    Customer,
    Payout,
    Purchase,
    Referral,
    ReferralCode,
    Reward,
    Signup,
    utcnow,
)
from tests.factories import customer

SMALL = ["demo", "--customers", "150"]
RESERVED_DOMAIN = re.compile(r"@(example\.(com|org|net)|[a-z0-9-]+\.example)$")
GREEK = re.compile(r"[\u0370-\u03ff]")
CYRILLIC = re.compile(r"[\u0400-\u04ff]")


def count(*where) -> int:
    return db.session.scalar(select(func.count()).where(*where))


def test_demo_fills_every_table_the_console_reads(app, runner, client, admin):
    result = runner.invoke(main, SMALL)
    assert result.exit_code == 0, result.output
    assert "150 customers" in result.stdout
    assert "/admin" in result.stdout and "admins create" in result.stdout
    with app.app_context():
        people = db.session.scalars(select(Customer)).all()
        assert len(people) == 150
        assert all(re.fullmatch(r"demo-\d{6}", p.external_id) for p in people)
        assert all(RESERVED_DOMAIN.search(p.email) for p in people), [p.email for p in people]
        assert {p.locale for p in people} == {"en", "pl", "hu", "el", "bg"}
        names = [p.name for p in people]
        assert any(GREEK.search(n) for n in names) and any(CYRILLIC.search(n) for n in names)
        assert any("ł" in n or "ą" in n or "ę" in n or "ó" in n for n in names)
        assert count(ReferralCode.revoked_at.is_(None)) == 150  # every customer can share
        assert {p.origin for p in people} == {"enrolled", "signup"}
        # share visits, rolled up as the worker does
        assert count(Click.id.is_not(None)) > 1000
        assert count(ClickDay.day.is_not(None)) > 100
        assert count(Click.rolled_up_at.is_(None)) == count(
            Click.occurred_at >= utcnow().replace(minute=0, second=0, microsecond=0)
        )
        # friends through clicks and typed codes; converted and still attributed
        channels = set(db.session.scalars(select(Referral.channel).distinct()))
        assert "code" in channels and len(channels) >= 4
        assert count(Referral.status == "converted") > 10
        assert count(Referral.status == "attributed") > 0
        assert count(Referral.risk_score > 0) >= 2
        assert count(Signup.attributed.is_(False)) > 30  # the shop's own new customers
        # rewards in every status, clawbacks, payouts paid
        statuses = dict(
            db.session.execute(select(Reward.status, func.count()).group_by(Reward.status)).all()
        )
        for status in ("pending", "awaiting_approval", "approved", "paid", "rejected", "reversed"):
            assert statuses.get(status, 0) > 0, statuses
        assert count(Clawback.id.is_not(None)) > 0
        assert count(Payout.status == "paid") >= 3
        # purchases of customers never referred, and repeat purchases of both kinds
        referred = select(Referral.friend_id)
        assert count(Purchase.customer_id.not_in(referred)) > 50
        repeaters = (
            select(Purchase.customer_id)
            .group_by(Purchase.customer_id)
            .having(func.count() > 1)
            .subquery()
        )
        assert count(repeaters.c.customer_id.in_(referred)) > 0
        assert count(repeaters.c.customer_id.not_in(referred)) > 0
        # the program set to something sensible, from its defaults
        settings = program.settings()
        assert settings["currency"] == "EUR"
        assert settings["referrer_reward"] == {"type": "fixed", "value": "10.00"}
        if "milestones" in settings:
            assert [m["friends"] for m in settings["milestones"]] == [3, 10]
        clicks_by_channel = dict(
            db.session.execute(select(Click.channel, func.count()).group_by(Click.channel)).all()
        )
        first = db.session.scalar(select(func.min(Click.occurred_at)))
    # the funnel the API serves is the rows' own
    start = (first - timedelta(days=1)).isoformat()
    end = (utcnow() + timedelta(hours=1)).isoformat()
    answer = client.get("/api/v1/stats", query_string={"from": start, "to": end}, headers=admin)
    assert answer.status_code == 200, answer.json
    by_channel = answer.json["by_channel"]
    served = {name: row["clicks"] for name, row in by_channel.items() if row["clicks"]}
    assert served == clicks_by_channel
    assert len(served) >= 6
    assert answer.json["conversions"] > 10


def test_the_same_seed_makes_the_same_people(app):
    with app.app_context():
        demo.fill(demo.MIN_CUSTOMERS, seed=7)
        first = db.session.execute(select(Customer.name, Customer.email).order_by(Customer.id))
        first = first.all()
        assert count(Purchase.id.is_not(None)) > 0
        db.session.rollback()
        from tests.conftest import empty_tables

        empty_tables()
        demo.fill(demo.MIN_CUSTOMERS, seed=7)
        again = db.session.execute(select(Customer.name, Customer.email).order_by(Customer.id))
        assert again.all() == first


def test_refuses_a_database_with_real_customers_and_writes_nothing(app, runner):
    with app.app_context():
        customer("shop-1", "ana@example.com", name="Ana")
        before = program.settings()
    result = runner.invoke(main, SMALL)
    assert result.exit_code == 1
    assert "has 1 customer that is not demo data" in result.output
    assert "--force" in result.output and "Traceback" not in result.output
    with app.app_context():
        assert count(Customer.id.is_not(None)) == 1
        assert count(Click.id.is_not(None)) == 0
        assert program.settings() == before


def test_force_adds_the_demo_beside_real_customers_and_leaves_theirs(app, runner):
    with app.app_context():
        customer("shop-1", "ana@example.com", name="Ana")
        program.update({"currency": "PLN", "referrer_reward": {"type": "fixed", "value": "20"}})
        real = db.session.scalar(select(Customer).where(Customer.external_id == "shop-1"))
        kept = (real.email, real.name, real.updated_at, real.created_at)
        db.session.rollback()
    result = runner.invoke(main, [*SMALL, "--force"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        real = db.session.scalar(select(Customer).where(Customer.external_id == "shop-1"))
        assert (real.email, real.name, real.updated_at, real.created_at) == kept
        assert count(Referral.referrer_id == real.id) == 0
        assert count(Purchase.customer_id == real.id) == 0
        assert count(Customer.external_id.startswith("demo-")) == 150
        settings = program.settings()  # settings a shop chose are kept, and used
        assert settings["currency"] == "PLN"
        assert set(db.session.scalars(select(Purchase.currency).distinct())) == {"PLN"}


def test_a_second_run_is_refused_unless_forced_then_adds_beside(app, runner):
    assert runner.invoke(main, ["demo", "--customers", "50"]).exit_code == 0
    again = runner.invoke(main, ["demo", "--customers", "50"])
    assert again.exit_code == 1
    assert "already holds demo data" in again.output
    with app.app_context():
        made = count(Customer.id.is_not(None))
        orders = count(Purchase.id.is_not(None))
    forced = runner.invoke(main, ["demo", "--customers", "50", "--force"])
    assert forced.exit_code == 0, forced.output
    with app.app_context():
        assert count(Customer.id.is_not(None)) > made
        assert count(Purchase.id.is_not(None)) > orders
        ids = db.session.scalars(select(Customer.external_id)).all()
        assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    "args",
    [
        ["--customers", "0"],
        ["--customers", "-5"],
        ["--customers", "10"],
        ["--customers", "1000000000"],
        ["--customers", "many"],
        ["--customers", "\uff11\uff10\uff10"],  # full-width digits
        ["--seed", "x"],
        ["--seed", "-1"],
        ["--seed", "1.5"],
    ],
)
def test_bad_arguments_are_usage_errors(app, runner, args):
    result = runner.invoke(main, ["demo", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is not None
    with app.app_context():
        assert count(Customer.id.is_not(None)) == 0


def test_two_demos_at_once_make_one_set_of_customers(app):
    """Both pass the empty-database check; the unique external ids let one run on, and the
    other stops with a Conflict before writing any customer."""
    barrier = threading.Barrier(2)

    def run():
        with app.app_context():
            barrier.wait()
            try:
                demo.fill(demo.MIN_CUSTOMERS, seed=3)
            except Conflict as error:
                return str(error)
            finally:
                db.session.remove()
            return "done"

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(lambda _: run(), range(2)))
    assert outcomes[1] == "done", outcomes
    assert "demo" in outcomes[0] and outcomes[0] != "done"
    with app.app_context():
        assert count(Customer.id.is_not(None)) == demo.MIN_CUSTOMERS


@pytest.mark.parametrize(
    ("currency", "minimum", "rule"),
    [
        ("JPY", "2000", {"type": "fixed", "value": "1000"}),
        ("KWD", "5.000", {"type": "percent", "value": "10"}),
    ],
)
def test_a_shops_own_currency_is_kept_and_counted_in_its_minor_unit(
    app, runner, currency, minimum, rule
):
    """A program set to a currency of 0 or 3 decimals (ISO 4217): the demo's orders, refunds and
    rewards are in that currency's minor unit, and orders are scaled to its minimum order."""
    with app.app_context():
        program.update({"currency": currency, "min_order_amount": minimum, "referrer_reward": rule})
    result = runner.invoke(main, ["demo", "--customers", "100"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert program.settings()["currency"] == currency
        orders = db.session.execute(
            select(Purchase.amount_minor, Purchase.refunded_minor, Purchase.currency)
        ).all()
        assert orders and {c for _, _, c in orders} == {currency}
        assert count(Reward.currency == currency) > 0
        assert count(Reward.currency != currency) == 0

"""The migrations build exactly the schema the models describe, on every backend."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import text

from referral_service import create_app
from referral_service.extensions import db
from referral_service.models import Base, utcnow
from tests.conftest import app_config


def test_models_and_migrations_agree(app):
    with app.app_context(), db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


# A row in every table that refers to another, at the schema before the ledger fixes (0006).
ROWS_AT_0006 = {
    "customers": [
        {"id": n, "external_id": f"c-{n}", "email": f"c{n}@example.com"}
        | {"email_key": f"c{n}@example.com", "created_at": "NOW", "updated_at": "NOW"}
        for n in (1, 2)
    ],
    "purchases": [
        {"id": 1, "order_id": "o-1", "customer_id": 2, "amount_minor": 10000}
        | {"refunded_minor": 0, "currency": "EUR", "occurred_at": "NOW", "response": "{}"}
        | {"created_at": "NOW"}
    ],
    "referrals": [
        {"id": 1, "referrer_id": 1, "friend_id": 2, "channel": "code", "status": "converted"}
        | {"attributed_at": "NOW", "risk_score": 0, "risk_reasons": "[]"}
    ],
    "signups": [
        {"id": 1, "customer_id": 2, "attributed": True, "referral_id": 1, "occurred_at": "NOW"}
    ],
    "payouts": [{"id": 1, "status": "paid", "created_by": "admin:a", "created_at": "NOW"}],
    "rewards": [
        {"id": 1, "referral_id": 1, "purchase_id": 1, "customer_id": 1, "payout_id": 1}
        | {"beneficiary": "referrer", "rule_type": "fixed", "rule_value": "10.00"}
        | {"amount_minor": 1000, "currency": "EUR", "status": "paid", "available_at": "NOW"}
        | {"created_at": "NOW", "updated_at": "NOW"}
    ],
    "clawbacks": [
        {"id": 1, "customer_id": 1, "reward_id": 1, "amount_minor": 300, "currency": "EUR"}
        | {"created_at": "NOW"}
    ],
}


def _counts(connection) -> dict:
    return {
        table: connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar()
        for table in ROWS_AT_0006
    }


def test_every_row_survives_the_migrations_up_and_down(fresh_database_url):
    """A migration that rebuilds a table (SQLite's way to change one) keeps the rows that refer
    to it: a referral's sign-up and rewards, a reward's clawbacks."""
    app = create_app(app_config(fresh_database_url))
    now = utcnow()
    with app.app_context():
        upgrade(revision="0006")
        with db.engine.begin() as connection:
            for table, items in ROWS_AT_0006.items():
                for item in items:
                    values = {k: now if v == "NOW" else v for k, v in item.items()}
                    names = ", ".join(values)
                    marks = ", ".join(f":{name}" for name in values)
                    connection.execute(
                        text(f"INSERT INTO {table} ({names}) VALUES ({marks})"), values
                    )
        expected = dict.fromkeys(ROWS_AT_0006, 1) | {"customers": 2}
        upgrade()
        with db.engine.connect() as connection:
            assert _counts(connection) == expected
            assert connection.execute(text("SELECT friend_email_key FROM referrals")).scalar() == (
                "c2@example.com"
            )
        downgrade(revision="0006")
        with db.engine.connect() as connection:
            assert _counts(connection) == expected
        upgrade()
        with db.engine.connect() as connection:
            assert _counts(connection) == expected
            if db.engine.dialect.name == "sqlite":  # the keys are back on for the app
                assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        db.engine.dispose()


MILESTONE_REWARD = (
    "INSERT INTO rewards (id, referral_id, purchase_id, customer_id, beneficiary, kind, "
    "milestone_friends, rule_type, rule_value, amount_minor, currency, status, available_at, "
    "created_at, updated_at) VALUES (:id, 1, 1, 1, 'referrer', 'milestone', :friends, 'fixed', "
    "'20.00', 2000, 'EUR', :status, :now, :now, :now)"
)


def test_milestones_migrate_up_and_down(fresh_database_url):
    """0019: every reward so far is of kind `referral`; a milestone reward shares its
    referral's; one live milestone reward per referrer and milestone; a downgrade is refused
    while milestone rewards exist, and works once they are gone."""
    from sqlalchemy.exc import IntegrityError

    app = create_app(app_config(fresh_database_url))
    now = utcnow()
    with app.app_context():
        upgrade(revision="0018")
        with db.engine.begin() as connection:
            for table, items in ROWS_AT_0006.items():
                for item in items:
                    if table == "clawbacks":  # settled in parts since 0007
                        item = item | {"settled_minor": 0}
                    values = {k: now if v == "NOW" else v for k, v in item.items()}
                    names = ", ".join(values)
                    marks = ", ".join(f":{name}" for name in values)
                    connection.execute(
                        text(f"INSERT INTO {table} ({names}) VALUES ({marks})"), values
                    )
        upgrade()
        with db.engine.begin() as connection:
            assert connection.execute(
                text("SELECT kind, milestone_friends FROM rewards")
            ).all() == [("referral", None)]
            assert connection.execute(text("SELECT milestones FROM program")).scalar() in (
                [],
                "[]",
            )
            connection.execute(
                text(MILESTONE_REWARD), {"id": 2, "friends": 5, "status": "paid", "now": now}
            )
        for status in ("pending", "reversed"):  # a second live one is refused, a reversed not
            try:
                with db.engine.begin() as connection:
                    connection.execute(
                        text(MILESTONE_REWARD),
                        {"id": 3, "friends": 5, "status": status, "now": now},
                    )
            except IntegrityError:
                assert status == "pending"
            else:
                assert status == "reversed"
        with pytest.raises(SystemExit):  # flask-migrate logs the reason and exits
            downgrade(revision="0018")
        with db.engine.begin() as connection:
            connection.execute(text("DELETE FROM rewards WHERE kind = 'milestone'"))
        downgrade(revision="0018")
        with db.engine.connect() as connection:
            assert _counts(connection) == dict.fromkeys(ROWS_AT_0006, 1) | {"customers": 2}
        upgrade()
        db.engine.dispose()

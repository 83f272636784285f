"""First purchases and their rewards: amounts, windows, the monthly cap, the hold and maturing.

Also property tests of the money helpers against an independent computation with fractions.
"""

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from referral_service.cli import main
from referral_service.domain import rewards
from referral_service.domain.money import from_minor, percent_of, to_minor
from referral_service.extensions import db
from referral_service.models import Purchase, Referral, Reward, utcnow
from tests.journey_helpers import (
    at,
    buy,
    converted_friend,
    count,
    enrol,
    mature,
    referred_friend,
    rewards_by_beneficiary,
    set_program,
    sign_up,
)


def whole_second(when: datetime) -> datetime:
    return when.replace(microsecond=0)


# --- first purchases -----------------------------------------------------------------------------


def test_first_purchase_converts_with_the_default_reward(client, shop):
    referred = referred_friend(client, shop, occurred_at=at(utcnow() - timedelta(days=1)))
    bought_at = whole_second(utcnow() - timedelta(hours=1))
    response = buy(client, shop, "o-1", "friend-1", "50.00", occurred_at=at(bought_at))
    assert response.status_code == 201
    body = response.json
    assert body["order_id"] == "o-1"
    assert body["first_purchase"] is True
    assert body["referral"] == {
        "id": referred["referral"]["id"],
        "referrer_external_id": "ref-1",
        "status": "converted",
    }
    assert len(body["rewards"]) == 1
    reward = body["rewards"][0]
    assert reward["beneficiary"] == "referrer"
    assert (reward["amount"], reward["currency"], reward["status"]) == ("10.00", "EUR", "pending")
    assert reward["available_at"] == (bought_at + timedelta(days=14)).isoformat()


def test_available_at_converts_a_zone_offset(client, shop):
    referred_friend(client, shop, occurred_at=at(utcnow() - timedelta(days=2)))
    warsaw = timezone(timedelta(hours=2))
    bought_at = whole_second(utcnow() - timedelta(days=1)).astimezone(warsaw)
    body = buy(client, shop, "o-1", "friend-1", "50.00", occurred_at=bought_at.isoformat()).json
    expected = (bought_at + timedelta(days=14)).astimezone(UTC)
    assert body["rewards"][0]["available_at"] == expected.isoformat()
    assert body["rewards"][0]["available_at"].endswith("+00:00")


@pytest.mark.parametrize(
    ("percent", "amount", "expected"),
    [
        ("10", "49.95", "5.00"),  # 4.995 -> 5.00
        ("7.5", "33.33", "2.50"),  # 2.49975
        ("2.5", "0.20", "0.01"),  # 0.005: half-up, not half-even
        ("2.5", "1.00", "0.03"),  # 0.025: half-up, not half-even
        ("33.33", "10.00", "3.33"),  # 3.333
        ("0.01", "99.99", "0.01"),  # 0.009999
        ("100", "12.34", "12.34"),
        ("12.5", "0.04", "0.01"),  # 0.005
    ],
)
def test_percent_reward_is_exact_and_rounded_half_up(
    client, shop, admin, percent, amount, expected
):
    set_program(client, admin, referrer_reward={"type": "percent", "value": percent})
    body = converted_friend(client, shop, amount=amount)
    assert rewards_by_beneficiary(body) == {"referrer": (expected, "pending")}


def test_a_reward_that_rounds_to_zero_is_not_granted(app, client, shop, admin):
    set_program(client, admin, referrer_reward={"type": "percent", "value": "10"})
    body = converted_friend(client, shop, amount="0.04")  # 0.004 -> 0.00
    assert body["rewards"] == []
    assert count(app, Reward) == 0


def test_referrer_and_friend_rewards(client, shop, admin):
    set_program(
        client,
        admin,
        referrer_reward={"type": "percent", "value": "12.5"},
        friend_reward={"type": "fixed", "value": "4.99"},
    )
    body = converted_friend(client, shop, amount="80.04")  # 10.005 -> 10.01
    assert rewards_by_beneficiary(body) == {
        "referrer": ("10.01", "pending"),
        "friend": ("4.99", "pending"),
    }


def test_friend_only_reward(client, shop, admin):
    set_program(
        client,
        admin,
        referrer_reward={"type": "none"},
        friend_reward={"type": "percent", "value": "5"},
    )
    body = converted_friend(client, shop, amount="19.90")  # 0.995 -> 1.00
    assert rewards_by_beneficiary(body) == {"friend": ("1.00", "pending")}


@pytest.mark.parametrize(
    ("currency", "reward", "amount", "expected"),
    [
        ("JPY", {"type": "percent", "value": "10"}, "1005", "101"),
        ("JPY", {"type": "fixed", "value": "500"}, "3000", "500"),
        ("KWD", {"type": "fixed", "value": "1.250"}, "20.000", "1.250"),
        ("KWD", {"type": "percent", "value": "2.5"}, "0.100", "0.003"),  # 0.0025
    ],
)
def test_rewards_use_the_currency_minor_unit(
    client, shop, admin, currency, reward, amount, expected
):
    set_program(client, admin, currency=currency, referrer_reward=reward)
    body = converted_friend(client, shop, amount=amount, currency=currency)
    assert body["rewards"][0]["amount"] == expected
    assert body["rewards"][0]["currency"] == currency


def test_purchase_in_another_currency_does_not_convert(client, shop):
    referred_friend(client, shop)
    body = buy(client, shop, "o-usd", "friend-1", "500.00", currency="USD").json
    assert body["referral"]["status"] == "attributed" and body["rewards"] == []
    later = buy(client, shop, "o-eur", "friend-1", "5.00").json
    assert later["first_purchase"] is False
    assert later["referral"]["status"] == "converted"
    assert rewards_by_beneficiary(later) == {"referrer": ("10.00", "pending")}


def test_later_purchases_earn_nothing(app, client, shop):
    converted_friend(client, shop)
    second = buy(client, shop, "o-2", "friend-1", "500.00")
    assert second.status_code == 201
    assert second.json["first_purchase"] is False
    assert second.json["referral"]["status"] == "converted"
    assert second.json["rewards"] == []
    assert count(app, Reward) == 1


def test_too_small_first_purchase_does_not_convert_but_a_later_one_does(app, client, shop, admin):
    set_program(client, admin, min_order_amount="20.00")
    referred_friend(client, shop)
    small = buy(client, shop, "o-1", "friend-1", "19.99").json
    assert small["first_purchase"] is True
    assert small["referral"]["status"] == "attributed"
    assert small["rewards"] == []
    enough = buy(client, shop, "o-2", "friend-1", "20.00").json
    assert enough["first_purchase"] is False
    assert enough["referral"]["status"] == "converted"
    assert rewards_by_beneficiary(enough) == {"referrer": ("10.00", "pending")}
    with app.app_context():
        referral = db.session.scalar(select(Referral))
        assert referral.order_id == "o-2"


def test_conversion_window(client, shop, admin):
    set_program(client, admin, conversion_window_days=5)
    signed_up = whole_second(utcnow() - timedelta(days=20))
    referred_friend(client, shop, "late", occurred_at=at(signed_up))
    late = buy(
        client, shop, "o-late", "late", "50.00", occurred_at=at(signed_up + timedelta(days=6))
    )
    assert late.json["referral"]["status"] == "attributed" and late.json["rewards"] == []
    edge = buy(
        client, shop, "o-edge", "late", "50.00", occurred_at=at(signed_up + timedelta(days=5))
    )
    assert edge.json["referral"]["status"] == "converted"  # the window's last instant counts

    referred_friend(client, shop, "early", occurred_at=at(signed_up))
    before = buy(
        client, shop, "o-before", "early", "50.00", occurred_at=at(signed_up - timedelta(hours=1))
    )
    assert before.json["rewards"] == []  # bought before signing up: not through the referral
    skewed = buy(
        client,
        shop,
        "o-skew",
        "early",
        "50.00",
        occurred_at=at(signed_up - timedelta(minutes=2)),
    )
    assert skewed.json["referral"]["status"] == "converted"  # clocks a little apart: allowed


def test_an_order_of_zero_does_not_convert(client, shop):
    referred_friend(client, shop, "free", occurred_at=at(whole_second(utcnow())))
    free = buy(client, shop, "o-free", "free", "0.00")
    assert free.json["referral"]["status"] == "attributed" and free.json["rewards"] == []
    paid = buy(client, shop, "o-paid", "free", "0.01")
    assert paid.json["referral"]["status"] == "converted"


def test_purchase_without_referral_has_referral_null(client, shop):
    enrol(client, shop, "plain")
    first = buy(client, shop, "o-1", "plain", "10.00")
    assert first.status_code == 201
    assert first.json == {
        "order_id": "o-1",
        "first_purchase": True,
        "referral": None,
        "rewards": [],
        "reason": "not_referred",
    }
    assert buy(client, shop, "o-2", "plain", "10.00").json["first_purchase"] is False
    signed_up = sign_up(client, shop, "unreferred").json
    assert signed_up["reason"] == "no_referral"
    assert buy(client, shop, "o-3", "unreferred", "10.00").json["referral"] is None


def test_unknown_customer_is_404_and_records_nothing(app, client, shop):
    response = buy(client, shop, "o-1", "nobody", "10.00")
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"
    assert count(app, Purchase) == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": 10.5}, "amount"),
        ({"amount": "10.001"}, "amount"),
        ({"amount": "-1.00"}, "amount"),
        ({"amount": "NaN"}, "amount"),
        ({"amount": "1e400"}, "amount"),
        ({"currency": "XYZ"}, "currency"),
        ({"currency": "EURO"}, "currency"),
        ({"order_id": ""}, "order_id"),
        ({"occurred_at": "2026-01-01T10:00:00"}, "occurred_at"),
        ({"occurred_at": "1999-12-31T10:00:00Z"}, "occurred_at"),
        ({"occurred_at": "0001-01-01T00:00:00+01:00"}, "occurred_at"),
        ({"occurred_at": "9999-12-31T23:59:59-05:00"}, "occurred_at"),
    ],
)
def test_bad_purchases_are_422(app, client, shop, change, field):
    referred_friend(client, shop)
    body = {
        "order_id": "o-1",
        "customer_external_id": "friend-1",
        "amount": "10.00",
        "currency": "EUR",
        **change,
    }
    response = client.post("/api/v1/purchases", json=body, headers=shop)
    assert response.status_code == 422, response.json
    assert field in response.json["error"]["fields"]
    assert count(app, Purchase) == 0


# --- the monthly cap -----------------------------------------------------------------------------


def test_monthly_cap_per_referrer(client, shop, admin):
    set_program(
        client,
        admin,
        max_rewards_per_referrer_per_month=2,
        friend_reward={"type": "fixed", "value": "3.00"},
    )
    for n in (1, 2):
        body = converted_friend(client, shop, f"friend-{n}")
        assert rewards_by_beneficiary(body) == {
            "referrer": ("10.00", "pending"),
            "friend": ("3.00", "pending"),
        }
    capped = converted_friend(client, shop, "friend-3")
    # the friend still gets theirs; the referral converts
    assert rewards_by_beneficiary(capped) == {"friend": ("3.00", "pending")}
    other = converted_friend(client, shop, "friend-4", referrer="ref-2")
    assert rewards_by_beneficiary(other)["referrer"] == ("10.00", "pending")


def test_rejected_rewards_do_not_count_against_the_cap(client, shop, admin):
    set_program(client, admin, max_rewards_per_referrer_per_month=1, hold_days=0)
    first = converted_friend(client, shop, "friend-1")
    rejected = client.post(
        f"/api/v1/rewards/{first['rewards'][0]['id']}/reject",
        json={"reason": "fraud"},
        headers=admin,
    )
    assert rejected.status_code == 200
    again = converted_friend(client, shop, "friend-2")
    assert rewards_by_beneficiary(again) == {"referrer": ("10.00", "awaiting_approval")}


def test_cap_zero_grants_no_referrer_reward(client, shop, admin):
    set_program(client, admin, max_rewards_per_referrer_per_month=0)
    assert converted_friend(client, shop)["rewards"] == []


# --- the hold and maturing -----------------------------------------------------------------------


def statuses(app) -> dict:
    with app.app_context():
        return {
            (r.customer.external_id, r.beneficiary): r.status
            for r in db.session.scalars(select(Reward))
        }


def test_pending_until_the_hold_passes(app, client, shop):
    bought_at = whole_second(utcnow())
    converted_friend(client, shop, occurred_at=at(bought_at))
    available = bought_at + timedelta(days=14)
    assert mature(app, available - timedelta(seconds=1)) == {
        "awaiting_approval": 0,
        "approved": 0,
    }
    assert statuses(app) == {("ref-1", "referrer"): "pending"}
    assert mature(app, available) == {"awaiting_approval": 1, "approved": 0}
    assert statuses(app) == {("ref-1", "referrer"): "awaiting_approval"}
    assert mature(app, available + timedelta(days=1)) == {"awaiting_approval": 0, "approved": 0}


def test_hold_days_zero_awaits_approval_at_once(client, shop, admin):
    set_program(client, admin, hold_days=0)
    body = converted_friend(client, shop)
    assert rewards_by_beneficiary(body) == {"referrer": ("10.00", "awaiting_approval")}


def test_a_purchase_reported_after_its_hold_is_matured_at_once(client, shop):
    signed_up = utcnow() - timedelta(days=30)
    body = converted_friend(
        client, shop, signed_up_at=at(signed_up), occurred_at=at(signed_up + timedelta(days=15))
    )  # 15 days ago: the 14-day hold is over
    assert rewards_by_beneficiary(body) == {"referrer": ("10.00", "awaiting_approval")}


def test_auto_approve_at_once_with_no_hold(client, shop, admin):
    set_program(
        client,
        admin,
        hold_days=0,
        auto_approve_max_amount="10.00",
        friend_reward={"type": "fixed", "value": "10.01"},
    )
    body = converted_friend(client, shop)
    assert rewards_by_beneficiary(body) == {
        "referrer": ("10.00", "approved"),
        "friend": ("10.01", "awaiting_approval"),
    }


def test_mature_auto_approves_small_rewards_of_clean_referrals(app, client, shop, admin):
    set_program(client, admin, auto_approve_max_amount="10.00")
    converted_friend(client, shop, "clean")
    converted_friend(client, shop, "risky", referrer="ref-2")
    set_program(client, admin, referrer_reward={"type": "fixed", "value": "10.50"})
    converted_friend(client, shop, "big", referrer="ref-3")
    with app.app_context():
        db.session.execute(
            update(Referral)
            .where(Referral.friend_id.in_(select_friend("risky")))
            .values(risk_score=40, risk_reasons=["same_device"])
        )
        db.session.commit()
    assert mature(app, utcnow() + timedelta(days=15)) == {"awaiting_approval": 2, "approved": 1}
    assert statuses(app) == {
        ("ref-1", "referrer"): "approved",
        ("ref-2", "referrer"): "awaiting_approval",
        ("ref-3", "referrer"): "awaiting_approval",
    }


def select_friend(external_id: str):
    from referral_service.models import Customer

    return select(Customer.id).where(Customer.external_id == external_id)


def test_mature_leaves_decided_rewards_alone(app, client, shop, admin):
    first = converted_friend(client, shop, "friend-1")
    converted_friend(client, shop, "friend-2")
    reject = client.post(
        f"/api/v1/rewards/{first['rewards'][0]['id']}/reject",
        json={"reason": "duplicate account"},
        headers=admin,
    )
    assert reject.status_code == 200 and reject.json["status"] == "rejected"
    assert mature(app, utcnow() + timedelta(days=15)) == {"awaiting_approval": 1, "approved": 0}
    with app.app_context():
        assert sorted(db.session.scalars(select(Reward.status))) == [
            "awaiting_approval",
            "rejected",
        ]


def test_cli_rewards_mature(app, client, shop, runner, monkeypatch):
    converted_friend(client, shop, "friend-1")
    converted_friend(client, shop, "friend-2")
    result = runner.invoke(main, ["rewards", "mature"])
    assert result.exit_code == 0, result.output
    assert "0 now awaiting approval, 0 auto-approved." in result.output
    later = utcnow() + timedelta(days=15)
    monkeypatch.setattr(rewards, "utcnow", lambda: later)
    result = runner.invoke(main, ["rewards", "mature"])
    assert result.exit_code == 0, result.output
    assert "2 now awaiting approval, 0 auto-approved." in result.output
    assert set(statuses(app).values()) == {"awaiting_approval"}
    again = runner.invoke(main, ["rewards", "mature"])
    assert "0 now awaiting approval, 0 auto-approved." in again.output


# --- money ---------------------------------------------------------------------------------------

MINOR_DIGITS = {"EUR": 2, "PLN": 2, "HUF": 2, "BGN": 2, "JPY": 0, "ISK": 0, "KWD": 3, "BHD": 3}
currencies = st.sampled_from(sorted(MINOR_DIGITS))


def half_up(value: Fraction) -> int:
    """Round a non-negative fraction to an integer, halves up."""
    floor = value.numerator // value.denominator
    return floor + (1 if value - floor >= Fraction(1, 2) else 0)


@settings(max_examples=200, deadline=None)
@given(
    minor=st.integers(min_value=0, max_value=10**15),
    percent_hundredths=st.integers(min_value=1, max_value=10_000),
)
def test_percent_of_is_exact_half_up(minor, percent_hundredths):
    percent = Decimal(percent_hundredths).scaleb(-2)  # 0.01 .. 100.00
    expected = half_up(Fraction(minor) * Fraction(percent_hundredths, 100) / 100)
    assert percent_of(minor, percent) == expected
    assert percent_of(minor, percent.normalize()) == expected  # "12.50" and "12.5" agree


@settings(max_examples=200, deadline=None)
@given(
    currency=currencies, units=st.integers(min_value=0, max_value=10**17), places=st.integers(0, 5)
)
def test_to_minor_is_exact_half_up(currency, units, places):
    amount = Decimal(units).scaleb(-places)  # any amount with up to 5 decimals
    digits = MINOR_DIGITS[currency]
    expected = half_up(Fraction(units, 10**places) * 10**digits)
    assert to_minor(amount, currency) == expected


@settings(max_examples=200, deadline=None)
@given(currency=currencies, minor=st.integers(min_value=0, max_value=10**15))
def test_from_minor_round_trips(currency, minor):
    digits = MINOR_DIGITS[currency]
    text = from_minor(minor, currency)
    whole, _, fraction = text.partition(".")
    assert whole.isdigit() and "E" not in text
    assert len(fraction) == digits
    assert Fraction(text) == Fraction(minor, 10**digits)
    assert to_minor(Decimal(text), currency) == minor


def test_money_examples():
    assert from_minor(1250, "EUR") == "12.50"
    assert from_minor(0, "EUR") == "0.00"
    assert from_minor(5, "JPY") == "5"
    assert from_minor(1, "KWD") == "0.001"
    assert to_minor(Decimal("12.50"), "EUR") == 1250
    assert to_minor(Decimal("0.005"), "EUR") == 1
    assert to_minor(Decimal("0.015"), "EUR") == 2
    assert to_minor(Decimal("2.5"), "JPY") == 3
    assert percent_of(20, Decimal("2.5")) == 1
    assert percent_of(100, Decimal("2.5")) == 3

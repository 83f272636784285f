"""Business time, not processing time: rules count by when an order or a sign-up happened
(`occurred_at`), whenever the shop reports it: the monthly cap by the order's UTC month, velocity
windows up to the event's own date. The hold is in tests/test_rewards.py."""

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from referral_service.domain.clock import CLOCK_SKEW, utc_month
from referral_service.extensions import db
from referral_service.models import Customer, Referral, Reward, utcnow
from tests.journey_helpers import (
    at,
    buy,
    enrol,
    referred_friend,
    rewards_by_beneficiary,
    set_program,
    sign_up,
    together,
)


def month_before(when: datetime) -> datetime:
    """The first instant of the UTC month before `when`'s."""
    start, _ = utc_month(when)
    return utc_month(start - timedelta(days=1))[0]


# two months back, so that every time in it is in the past whatever day the tests run
BOUNDARY = month_before(month_before(utcnow()))  # 00:00 UTC on the first of a month
SIGNED_UP = BOUNDARY - timedelta(days=20)


def referred(client, shop, *friends: str) -> None:
    for friend in friends:
        referred_friend(client, shop, friend, occurred_at=at(SIGNED_UP))


def first_purchase(client, shop, friend: str, when: datetime) -> dict:
    response = buy(client, shop, f"o-{friend}", friend, "50.00", occurred_at=at(when))
    assert response.status_code == 201, response.json
    assert response.json["referral"]["status"] == "converted", response.json
    return response.json


def referrer_rewards(app) -> list[datetime]:
    """The months of the orders that earned ref-1 a reward."""
    from referral_service.models import Purchase

    with app.app_context():
        dates = db.session.scalars(
            select(Purchase.occurred_at)
            .join(Reward, Reward.purchase_id == Purchase.id)
            .where(Reward.beneficiary == "referrer")
        ).all()
    return sorted(utc_month(d)[0] for d in dates)


# --- the monthly cap -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (timedelta(minutes=-30), timedelta(minutes=30)),  # 23:30 on the last day, 00:30 on the 1st
        (timedelta(microseconds=-1), timedelta(0)),  # the month's last and first instants
    ],
)
def test_cap_counts_by_the_month_of_the_order(app, client, shop, admin, before, after):
    set_program(client, admin, max_rewards_per_referrer_per_month=1)
    referred(client, shop, "friend-1", "friend-2")
    # both reported now, long after the orders were placed
    late = first_purchase(client, shop, "friend-1", BOUNDARY + before)
    early = first_purchase(client, shop, "friend-2", BOUNDARY + after)
    assert (late["reason"], early["reason"]) == (None, None)
    # (dated months ago, their hold is over: they await approval at once)
    assert (
        rewards_by_beneficiary(late)
        == rewards_by_beneficiary(early)
        == {"referrer": ("10.00", "awaiting_approval")}
    )
    assert referrer_rewards(app) == [month_before(BOUNDARY), BOUNDARY]


def test_cap_is_reached_within_one_month_of_orders(client, shop, admin):
    set_program(client, admin, max_rewards_per_referrer_per_month=1)
    referred(client, shop, "friend-1", "friend-2")
    first_purchase(client, shop, "friend-1", BOUNDARY + timedelta(minutes=30))
    capped = first_purchase(client, shop, "friend-2", BOUNDARY + timedelta(days=27))
    assert (capped["rewards"], capped["reason"]) == ([], "monthly_cap_reached")


def test_the_month_is_utc_not_the_shops_zone(client, shop, admin):
    """01:30 at +02:00 on the 1st is 23:30 UTC on the last day of the month before."""
    set_program(client, admin, max_rewards_per_referrer_per_month=1)
    referred(client, shop, "friend-1", "friend-2")
    first_purchase(client, shop, "friend-1", BOUNDARY - timedelta(days=3))
    warsaw = timezone(timedelta(hours=2))
    local = (BOUNDARY - timedelta(minutes=30)).astimezone(warsaw)
    assert local.day == 1  # the 1st in the shop's zone
    capped = first_purchase(client, shop, "friend-2", local)
    assert capped["reason"] == "monthly_cap_reached"


def test_an_order_reported_late_counts_in_its_own_month(app, client, shop, admin):
    """A month's cap is not used up by rewards of later months' orders, nor the reverse."""
    set_program(client, admin, max_rewards_per_referrer_per_month=1)
    referred(client, shop, "friend-1", "friend-2", "friend-3")
    later = first_purchase(client, shop, "friend-1", BOUNDARY + timedelta(days=2))
    earlier = first_purchase(client, shop, "friend-2", BOUNDARY - timedelta(days=2))
    assert later["reason"] is None and earlier["reason"] is None
    again = first_purchase(client, shop, "friend-3", BOUNDARY - timedelta(days=10))
    assert again["reason"] == "monthly_cap_reached"
    assert referrer_rewards(app) == [month_before(BOUNDARY), BOUNDARY]


def test_concurrent_conversions_in_two_months_get_one_reward_each(app, client, shop, admin):
    set_program(client, admin, max_rewards_per_referrer_per_month=1)
    friends = [f"friend-{n}" for n in range(8)]
    referred(client, shop, *friends)

    def post(i):
        when = BOUNDARY + (timedelta(hours=i) if i % 2 else -timedelta(hours=i + 1))
        body = {
            "order_id": f"o-{i}",
            "customer_external_id": friends[i],
            "amount": "50.00",
            "currency": "EUR",
            "occurred_at": at(when),
        }
        response = app.test_client().post("/api/v1/purchases", json=body, headers=shop)
        return response.status_code, json.loads(response.get_data())

    results = together(8, post)
    assert [status for status, _ in results] == [201] * 8
    reasons = sorted(str(body["reason"]) for _, body in results)
    assert reasons == ["None", "None"] + ["monthly_cap_reached"] * 6
    assert referrer_rewards(app) == [month_before(BOUNDARY), BOUNDARY]


# --- velocity windows ----------------------------------------------------------------------------


def risk(app, friend: str) -> list[str]:
    with app.app_context():
        return db.session.scalar(
            select(Referral.risk_reasons)
            .join(Customer, Customer.id == Referral.friend_id)
            .where(Customer.external_id == friend)
        )


def test_a_signup_reported_late_is_not_judged_by_later_ones(app, client, shop, admin):
    set_program(client, admin, velocity_max_signups=2, velocity_window_hours=1)
    code = enrol(client, shop, "ref-1")
    now = utcnow()
    for n in (1, 2, 3):
        assert sign_up(client, shop, f"f-{n}", referral_code=code).status_code == 201
    assert risk(app, "f-3") == ["velocity"]  # the burst itself is flagged
    three_hours_before = at(now - timedelta(hours=3))
    late = sign_up(client, shop, "f-old", referral_code=code, occurred_at=three_hours_before)
    assert late.json["attributed"] is True
    assert risk(app, "f-old") == []  # three hours before the burst: not part of it


def test_signups_within_the_clock_skew_after_count(app, client, shop, admin):
    set_program(client, admin, velocity_max_signups=2, velocity_window_hours=1)
    code = enrol(client, shop, "ref-1")
    now = utcnow()
    for n in (1, 2):
        sign_up(client, shop, f"f-{n}", referral_code=code, occurred_at=at(now))
    skewed = now - CLOCK_SKEW + timedelta(seconds=30)  # a shop clock a little behind ours
    sign_up(client, shop, "f-3", referral_code=code, occurred_at=at(skewed))
    assert risk(app, "f-3") == ["velocity"]
    before = now - CLOCK_SKEW - timedelta(seconds=30)
    sign_up(client, shop, "f-4", referral_code=code, occurred_at=at(before))
    assert risk(app, "f-4") == []


def test_an_order_reported_late_is_not_judged_by_later_conversions(app, client, shop, admin):
    set_program(client, admin, velocity_max_signups=2, velocity_window_hours=24)
    now = utcnow()
    for n in range(1, 5):  # sign-ups days apart: no sign-up velocity
        referred_friend(client, shop, f"friend-{n}", occurred_at=at(now - timedelta(days=30 + n)))
    for friend in ("friend-1", "friend-2"):
        first_purchase(client, shop, friend, now - timedelta(hours=1))
    late = now - timedelta(days=10)
    first_purchase(client, shop, "friend-3", late)
    assert risk(app, "friend-3") == []  # ten days before the others
    first_purchase(client, shop, "friend-4", now)
    assert risk(app, "friend-4") == ["conversion_velocity"]  # within 24 hours of two others


# --- stats periods -------------------------------------------------------------------------------


def reward_count(funnel: dict) -> int:
    return sum(totals["count"] for totals in funnel["rewards"].values())


def test_the_funnel_counts_rewards_with_their_conversions(client, shop, admin):
    """A reward belongs to the period of the order that earned it, as its conversion does."""
    referred(client, shop, "friend-1")
    first_purchase(client, shop, "friend-1", BOUNDARY + timedelta(days=2))  # reported now
    month = dict(zip(("from", "to"), map(at, utc_month(BOUNDARY)), strict=True))
    then = client.get("/api/v1/stats", query_string=month, headers=admin).json
    assert (then["conversions"], reward_count(then)) == (1, 1)
    assert then["rewards"]["awaiting_approval"] == {"count": 1, "amounts": {"EUR": "10.00"}}
    recent = client.get("/api/v1/stats", headers=admin).json  # the last 30 days
    assert (recent["conversions"], reward_count(recent)) == (0, 0)


# --- the clock ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "start", "end"),
    [
        (datetime(2026, 1, 31, 23, 30, tzinfo=UTC), datetime(2026, 1, 1), datetime(2026, 2, 1)),
        (datetime(2026, 12, 1, 0, 0, tzinfo=UTC), datetime(2026, 12, 1), datetime(2027, 1, 1)),
        (datetime(2028, 2, 29, 12, tzinfo=UTC), datetime(2028, 2, 1), datetime(2028, 3, 1)),
        (
            datetime(2026, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),
            datetime(2026, 2, 1),
            datetime(2026, 3, 1),
        ),
    ],
)
def test_utc_month(when, start, end):
    assert utc_month(when) == (start.replace(tzinfo=UTC), end.replace(tzinfo=UTC))

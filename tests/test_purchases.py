"""Purchases that answer plainly: a reused `order_id` is a conflict, and a purchase that earns
nothing says why (`reason`), on every backend and under races."""

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from referral_service.domain.rewards import PURCHASE_REASONS
from referral_service.extensions import db
from referral_service.models import Purchase, Referral, Reward, utcnow
from tests.journey_helpers import (
    at,
    buy,
    converted_friend,
    count,
    enrol,
    referred_friend,
    rewards_by_beneficiary,
    set_program,
    together,
)

ORDER = {
    "order_id": "o-1",
    "customer_external_id": "friend-1",
    "amount": "49.90",
    "currency": "EUR",
}


def ledger(app) -> dict:
    """What a purchase may change: orders, referrals and rewards."""
    with app.app_context():
        return {
            "purchases": db.session.execute(
                select(
                    Purchase.order_id,
                    Purchase.customer_id,
                    Purchase.amount_minor,
                    Purchase.currency,
                    Purchase.response,
                )
            ).all(),
            "referrals": db.session.execute(
                select(Referral.id, Referral.status, Referral.order_id, Referral.converted_at)
            ).all(),
            "rewards": db.session.execute(
                select(Reward.id, Reward.beneficiary, Reward.amount_minor, Reward.status)
            ).all(),
        }


@pytest.fixture
def friend(client, shop):
    referred_friend(client, shop)
    enrol(client, shop, "someone-else")


# --- one order id, one order ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"customer_external_id": "someone-else"}, "customer_external_id"),
        ({"customer_external_id": "nobody-known"}, "customer_external_id"),
        ({"amount": "49.91"}, "amount"),
        ({"amount": "4990"}, "amount"),
        ({"currency": "PLN"}, "currency"),
        ({"currency": "JPY", "amount": "50"}, "currency"),
    ],
)
def test_a_reused_order_id_with_another_order_is_409(app, client, shop, friend, change, named):
    first = client.post("/api/v1/purchases", json=ORDER, headers=shop)
    assert first.status_code == 201
    before = ledger(app)
    other = client.post("/api/v1/purchases", json={**ORDER, **change}, headers=shop)
    assert other.status_code == 409, other.json
    error = other.json["error"]
    assert error["code"] == "order_conflict"
    assert named in error["message"] and "order_id" in error["message"]
    assert "fields" not in error
    assert ledger(app) == before
    # the first order still answers as it did
    replay = client.post("/api/v1/purchases", json=ORDER, headers=shop)
    assert (replay.status_code, replay.get_data()) == (200, first.get_data())


def test_the_same_amount_written_otherwise_is_the_same_order(app, client, shop, friend):
    first = client.post("/api/v1/purchases", json=ORDER, headers=shop)
    before = ledger(app)
    for amount in ("49.9", "49.90"):
        replay = client.post("/api/v1/purchases", json={**ORDER, "amount": amount}, headers=shop)
        assert (replay.status_code, replay.get_data()) == (200, first.get_data())
    assert ledger(app) == before


def test_conflicting_orders_with_one_id_at_once_record_one(app, shop, friend):
    """Eight different orders sent at once under one order id: one 201, seven 409s."""

    def post(i):
        body = {**ORDER, "amount": f"{50 + i}.00"}
        response = app.test_client().post("/api/v1/purchases", json=body, headers=shop)
        return response.status_code, json.loads(response.get_data())

    results = together(8, post)
    statuses = [status for status, _ in results]
    assert sorted(statuses) == [201] + [409] * 7, statuses
    assert {body["error"]["code"] for status, body in results if status == 409} == {
        "order_conflict"
    }
    winner = statuses.index(201)
    assert rewards_by_beneficiary(results[winner][1]) == {"referrer": ("10.00", "pending")}
    # the order recorded is the one answered 201, and it earned once
    with app.app_context():
        assert db.session.scalars(select(Purchase.amount_minor)).all() == [5000 + 100 * winner]
    assert count(app, Reward) == 1


def test_replays_and_conflicts_at_once(app, shop, friend):
    """Replays of an order racing a conflicting one: replays are 201/200, the other is 409."""
    bodies = [ORDER] * 5 + [{**ORDER, "customer_external_id": "someone-else"}] * 3

    def post(i):
        response = app.test_client().post("/api/v1/purchases", json=bodies[i], headers=shop)
        return response.status_code

    statuses = together(len(bodies), post)
    if statuses[0] in (200, 201):  # the friend's order won
        assert sorted(statuses[:5]) == [200] * 4 + [201] and statuses[5:] == [409] * 3
    else:  # someone-else's order won
        assert statuses[:5] == [409] * 5 and sorted(statuses[5:]) == [200, 200, 201]
    assert count(app, Purchase) == 1


# --- with an Idempotency-Key ---------------------------------------------------------------------


def test_a_conflict_under_a_new_key_is_409_every_time(app, client, shop, friend):
    """A key does not turn a conflicting order into a new one: the order id decides."""
    client.post("/api/v1/purchases", json=ORDER, headers={**shop, "Idempotency-Key": "k-1"})
    headers = {**shop, "Idempotency-Key": "k-2"}
    conflicting = {**ORDER, "amount": "1.00"}
    first = client.post("/api/v1/purchases", json=conflicting, headers=headers)
    assert first.status_code == 409 and first.json["error"]["code"] == "order_conflict"
    again = client.post("/api/v1/purchases", json=conflicting, headers=headers)
    assert again.status_code == 409  # the same answer, but for its own request_id
    assert {**again.json["error"], "request_id": None} == {
        **first.json["error"],
        "request_id": None,
    }
    assert count(app, Purchase) == 1


def test_the_same_order_under_a_new_key_is_a_replay_of_the_order(client, shop, friend):
    first = client.post("/api/v1/purchases", json=ORDER, headers={**shop, "Idempotency-Key": "a"})
    later = client.post("/api/v1/purchases", json=ORDER, headers={**shop, "Idempotency-Key": "b"})
    assert (later.status_code, later.get_data()) == (200, first.get_data())
    assert "Idempotent-Replayed" not in later.headers


# --- why a purchase earns nothing ----------------------------------------------------------------


def test_a_converting_purchase_has_reason_null(client, shop):
    body = converted_friend(client, shop)
    assert body["reason"] is None


def test_not_referred(client, shop):
    enrol(client, shop, "plain")
    body = buy(client, shop, "o-1", "plain", "10.00").json
    assert (body["referral"], body["rewards"], body["reason"]) == (None, [], "not_referred")


def test_already_converted(client, shop):
    converted_friend(client, shop)
    body = buy(client, shop, "o-2", "friend-1", "500.00").json
    assert body["referral"]["status"] == "converted" and body["rewards"] == []
    assert body["reason"] == "already_converted"


def test_currency_mismatch(client, shop):
    referred_friend(client, shop)
    body = buy(client, shop, "o-usd", "friend-1", "500.00", currency="USD").json
    assert (body["referral"]["status"], body["reason"]) == ("attributed", "currency_mismatch")


@pytest.mark.parametrize("amount", ["19.99", "0.00"])
def test_below_minimum(client, shop, admin, amount):
    set_program(client, admin, min_order_amount="20.00")
    referred_friend(client, shop)
    body = buy(client, shop, "o-1", "friend-1", amount).json
    assert (body["referral"]["status"], body["reason"]) == ("attributed", "below_minimum")
    assert buy(client, shop, "o-2", "friend-1", "20.00").json["reason"] is None


def test_zero_is_below_a_zero_minimum(client, shop):
    referred_friend(client, shop)
    assert buy(client, shop, "o-1", "friend-1", "0.00").json["reason"] == "below_minimum"


@pytest.mark.parametrize(
    "offset", [timedelta(days=5, seconds=1), -timedelta(minutes=5, seconds=1), -timedelta(days=1)]
)
def test_outside_conversion_window(client, shop, admin, offset):
    set_program(client, admin, conversion_window_days=5)
    signed_up = (utcnow() - timedelta(days=20)).replace(microsecond=0)
    referred_friend(client, shop, occurred_at=at(signed_up))
    body = buy(client, shop, "o-1", "friend-1", "50.00", occurred_at=at(signed_up + offset)).json
    assert (body["referral"]["status"], body["rewards"]) == ("attributed", [])
    assert body["reason"] == "outside_conversion_window"


def test_program_paused_converts_nothing_and_the_referral_waits(app, client, shop, admin):
    referred_friend(client, shop)
    set_program(client, admin, paused=True)
    paused = buy(client, shop, "o-1", "friend-1", "50.00").json
    assert paused["referral"]["status"] == "attributed" and paused["rewards"] == []
    assert paused["reason"] == "program_paused"
    assert count(app, Reward) == 0
    set_program(client, admin, paused=False)
    resumed = buy(client, shop, "o-2", "friend-1", "50.00").json
    assert resumed["reason"] is None and resumed["referral"]["status"] == "converted"
    # the paused order's saved answer stands
    replay = buy(client, shop, "o-1", "friend-1", "50.00")
    assert (replay.status_code, replay.json) == (200, paused)


def test_monthly_cap_reached_converts_and_grants_the_friend_reward(app, client, shop, admin):
    set_program(
        client,
        admin,
        max_rewards_per_referrer_per_month=1,
        friend_reward={"type": "fixed", "value": "3.00"},
    )
    first = converted_friend(client, shop, "friend-1")
    assert first["reason"] is None
    capped = converted_friend(client, shop, "friend-2")
    assert capped["referral"]["status"] == "converted"
    assert rewards_by_beneficiary(capped) == {"friend": ("3.00", "pending")}
    assert capped["reason"] == "monthly_cap_reached"


def test_no_referrer_reward_rule_is_not_a_cap(client, shop, admin):
    set_program(
        client,
        admin,
        max_rewards_per_referrer_per_month=0,
        referrer_reward={"type": "none"},
        friend_reward={"type": "fixed", "value": "3.00"},
    )
    body = converted_friend(client, shop)
    assert rewards_by_beneficiary(body) == {"friend": ("3.00", "pending")}
    assert body["reason"] is None


@pytest.mark.parametrize(
    ("setup", "purchase", "expected"),
    [
        # a converted referral says so, even while the program is paused
        ("converted+paused", {"currency": "USD"}, "already_converted"),
        # the pause comes before anything about the order
        ("paused", {"currency": "USD", "amount": "1.00"}, "program_paused"),
        # a date outside the window before the order's currency or amount
        ("window", {"currency": "USD", "amount": "1.00"}, "outside_conversion_window"),
        # the currency before the amount (a minimum in EUR says nothing of USD)
        ("minimum", {"currency": "USD", "amount": "1.00"}, "currency_mismatch"),
    ],
)
def test_reason_precedence(client, shop, admin, setup, purchase, expected):
    set_program(client, admin, min_order_amount="20.00", conversion_window_days=5)
    signed_up = (utcnow() - timedelta(days=20)).replace(microsecond=0)
    referred_friend(client, shop, occurred_at=at(signed_up))
    fields = {"amount": "50.00", "currency": "EUR", **purchase}
    if setup.startswith("converted"):
        buy(client, shop, "o-0", "friend-1", "50.00", occurred_at=at(signed_up))
    if "paused" in setup:
        set_program(client, admin, paused=True)
    if setup != "window":
        fields["occurred_at"] = at(signed_up + timedelta(days=1))
    body = buy(client, shop, "o-1", "friend-1", **fields).json
    assert body["reason"] == expected
    assert body["rewards"] == []


def test_the_reason_is_saved_with_the_answer(client, shop, admin):
    referred_friend(client, shop)
    first = buy(client, shop, "o-usd", "friend-1", "50.00", currency="USD")
    set_program(client, admin, currency="USD")  # the answer was given; it stays as given
    replay = buy(client, shop, "o-usd", "friend-1", "50.00", currency="USD")
    assert (replay.status_code, replay.get_data()) == (200, first.get_data())
    assert replay.json["reason"] == "currency_mismatch"


def test_the_openapi_spec_lists_the_reasons_and_the_conflict(client):
    spec = client.get("/api/openapi.json").json
    reason = spec["components"]["schemas"]["PurchaseOut"]["properties"]["reason"]
    assert [r for r in reason["enum"] if r is not None] == list(PURCHASE_REASONS)
    assert "reason" in spec["components"]["schemas"]["PurchaseOut"]["required"]
    responses = spec["paths"]["/api/v1/purchases"]["post"]["responses"]
    assert "order_conflict" in responses["409"]["description"]


# --- the checkout's cost -------------------------------------------------------------------------


def statements_of(app, call) -> list[str]:
    """The SQL statements `call()` sends (the program settings are read once beforehand)."""
    from sqlalchemy import event

    with app.app_context():
        engine = db.engine
    statements: list[str] = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return [s for s in statements if not s.lstrip().upper().startswith(("SAVEPOINT", "RELEASE"))]


def test_a_replay_and_a_conflict_read_the_order_once(app, client, shop, friend):
    client.post("/api/v1/purchases", json=ORDER, headers=shop)
    replay = statements_of(app, lambda: client.post("/api/v1/purchases", json=ORDER, headers=shop))
    conflict = statements_of(
        app,
        lambda: client.post("/api/v1/purchases", json={**ORDER, "amount": "1.00"}, headers=shop),
    )
    on_purchases = [s for s in replay if "purchases" in s]
    assert len(on_purchases) == 1 and "customers" in on_purchases[0]  # one joined read
    assert [s for s in conflict if "purchases" in s] == on_purchases
    assert not [s for s in replay + conflict if s.lstrip().upper().startswith(("INSERT", "UPDATE"))]

"""Retries and races: order replays, `Idempotency-Key`, and concurrent calls the database guards."""

import concurrent.futures
import json
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from referral_service.api.idempotency import _request_hash
from referral_service.domain import idempotency, rewards
from referral_service.extensions import db
from referral_service.models import (
    ApiKey,
    Customer,
    IdempotencyKey,
    Payout,
    Purchase,
    Referral,
    Reward,
    Signup,
    utcnow,
)
from tests.factories import api_key, auth
from tests.journey_helpers import (
    approve,
    buy,
    converted_friend,
    count,
    enrol,
    referred_friend,
    refund,
    set_program,
    together,
)

ORDER = {
    "order_id": "o-1",
    "customer_external_id": "friend-1",
    "amount": "49.95",
    "currency": "EUR",
}


def snapshot(app) -> dict:
    """Everything a replay must leave alone."""
    with app.app_context():
        return {
            "purchases": db.session.execute(
                select(Purchase.order_id, Purchase.amount_minor, Purchase.refunded_minor)
            ).all(),
            "rewards": db.session.execute(
                select(Reward.id, Reward.amount_minor, Reward.status, Reward.updated_at)
            ).all(),
            "referrals": db.session.execute(
                select(Referral.id, Referral.status, Referral.order_id, Referral.converted_at)
            ).all(),
        }


@pytest.fixture
def friend(client, shop, admin):
    set_program(
        client,
        admin,
        referrer_reward={"type": "percent", "value": "10"},
        friend_reward={"type": "fixed", "value": "2.50"},
    )
    referred_friend(client, shop)


def shop_key_id(app) -> int:
    with app.app_context():
        return db.session.scalar(select(ApiKey.id).where(ApiKey.scope == "shop"))


def key_header(shop, key: str) -> dict:
    return {**shop, "Idempotency-Key": key}


# --- replays of an order -------------------------------------------------------------------------


def test_replay_of_an_order_is_200_with_the_same_bytes_and_changes_nothing(
    app, client, shop, friend
):
    first = client.post("/api/v1/purchases", json=ORDER, headers=shop)
    assert first.status_code == 201
    before = snapshot(app)
    replay = client.post("/api/v1/purchases", json=ORDER, headers=shop)
    assert replay.status_code == 200
    assert replay.get_data() == first.get_data()
    assert "Idempotent-Replayed" not in replay.headers
    # occurred_at is not part of the order's identity: a retry may date it anew
    redated = client.post(
        "/api/v1/purchases", json={**ORDER, "occurred_at": "2026-01-01T00:00:00Z"}, headers=shop
    )
    assert (redated.status_code, redated.get_data()) == (200, first.get_data())
    assert snapshot(app) == before


def test_replay_of_a_later_order_is_also_the_same(app, client, shop, friend):
    client.post("/api/v1/purchases", json=ORDER, headers=shop)
    second = {**ORDER, "order_id": "o-2", "amount": "10.00"}
    first = client.post("/api/v1/purchases", json=second, headers=shop)
    replay = client.post("/api/v1/purchases", json=second, headers=shop)
    assert first.json["first_purchase"] is False
    assert (replay.status_code, replay.get_data()) == (200, first.get_data())


# --- Idempotency-Key -----------------------------------------------------------------------------


def test_same_key_and_body_gets_the_saved_answer(app, client, shop, friend):
    headers = key_header(shop, "k-1")
    first = client.post("/api/v1/purchases", json=ORDER, headers=headers)
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    before = snapshot(app)
    # the same JSON with other key order is the same request
    reordered = dict(reversed(list(ORDER.items())))
    replay = client.post("/api/v1/purchases", json=reordered, headers=headers)
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.mimetype == "application/json"
    assert replay.get_data() == first.get_data()
    assert snapshot(app) == before


def test_same_key_with_another_body_is_422(app, client, shop, friend):
    headers = key_header(shop, "k-1")
    client.post("/api/v1/purchases", json=ORDER, headers=headers)
    before = snapshot(app)
    other = client.post("/api/v1/purchases", json={**ORDER, "order_id": "o-2"}, headers=headers)
    assert other.status_code == 422
    assert other.json["error"]["code"] == "validation_error"
    assert "Idempotency-Key" in other.json["error"]["fields"]
    assert snapshot(app) == before


def test_same_key_on_another_path_is_422(client, shop, friend):
    headers = key_header(shop, "k-1")
    client.post("/api/v1/purchases", json=ORDER, headers=headers)
    response = client.post("/api/v1/refunds", json={"order_id": "o-1"}, headers=headers)
    assert response.status_code == 422


def test_key_in_flight_is_409(app, client, shop, friend):
    with app.test_request_context("/api/v1/purchases", method="POST", json=ORDER):
        request_hash = _request_hash()
    with app.app_context():
        assert idempotency.claim(f"key:{shop_key_id(app)}", "k-busy", request_hash) is None
    busy = client.post("/api/v1/purchases", json=ORDER, headers=key_header(shop, "k-busy"))
    assert busy.status_code == 409
    assert busy.json["error"]["code"] == "conflict"
    assert count(app, Purchase) == 0


def test_row_in_flight_is_409_and_an_abandoned_one_is_taken_over(app, client, shop, friend):
    with app.test_request_context("/api/v1/purchases", method="POST", json=ORDER):
        request_hash = _request_hash()
    owner = f"key:{shop_key_id(app)}"
    with app.app_context():
        db.session.add(
            IdempotencyKey(owner=owner, key="k-row", request_hash=request_hash, created_at=utcnow())
        )
        db.session.add(
            IdempotencyKey(
                owner=owner,
                key="k-old",
                request_hash=request_hash,
                created_at=utcnow() - timedelta(minutes=6),
            )
        )
        db.session.commit()
    busy = client.post("/api/v1/purchases", json=ORDER, headers=key_header(shop, "k-row"))
    assert busy.status_code == 409
    taken = client.post("/api/v1/purchases", json=ORDER, headers=key_header(shop, "k-old"))
    assert taken.status_code == 201
    replay = client.post("/api/v1/purchases", json=ORDER, headers=key_header(shop, "k-old"))
    assert replay.headers["Idempotent-Replayed"] == "true"


def test_keys_belong_to_one_api_key(app, client, shop, friend):
    with app.app_context():
        other = auth(api_key("shop", name="second-shop-key"))
    first = client.post("/api/v1/purchases", json=ORDER, headers=key_header(shop, "k-1"))
    mine = client.post("/api/v1/purchases", json=ORDER, headers=key_header(other, "k-1"))
    # not a replay of the other key's request, but still the same order
    assert "Idempotent-Replayed" not in mine.headers
    assert (mine.status_code, mine.get_data()) == (200, first.get_data())


def test_a_failed_request_gives_its_key_back(app, client, shop):
    body = {**ORDER, "customer_external_id": "later"}
    missing = client.post("/api/v1/purchases", json=body, headers=key_header(shop, "k-1"))
    assert missing.status_code == 404
    enrol(client, shop, "later")
    retried = client.post("/api/v1/purchases", json=body, headers=key_header(shop, "k-1"))
    assert retried.status_code == 201
    assert "Idempotent-Replayed" not in retried.headers


@pytest.mark.parametrize("key", ["", "x" * 256, "kéy", "a\tb"])
def test_bad_keys_are_422(app, client, shop, friend, key):
    response = client.post("/api/v1/purchases", json=ORDER, headers=key_header(shop, key))
    assert response.status_code == 422, response.json
    assert "Idempotency-Key" in response.json["error"]["fields"]
    assert count(app, Purchase) == 0


def test_refund_with_a_key_refunds_once(app, client, shop, friend):
    client.post("/api/v1/purchases", json=ORDER, headers=shop)
    headers = key_header(shop, "refund-1")
    first = client.post(
        "/api/v1/refunds",
        json={"order_id": "o-1", "refund_id": "r-1", "amount": "9.95"},
        headers=headers,
    )
    again = client.post(
        "/api/v1/refunds",
        json={"order_id": "o-1", "refund_id": "r-1", "amount": "9.95"},
        headers=headers,
    )
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_data() == first.get_data()
    assert first.json["remaining"] == "40.00"
    with app.app_context():
        assert db.session.scalar(select(Purchase.refunded_minor)) == 995


def test_signup_with_a_key_replays(app, client, shop):
    code = enrol(client, shop, "ref-1")
    body = {"external_id": "f", "email": "f@example.org", "referral_code": code}
    first = client.post("/api/v1/signups", json=body, headers=key_header(shop, "s-1"))
    again = client.post("/api/v1/signups", json=body, headers=key_header(shop, "s-1"))
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_data() == first.get_data()


# --- races ---------------------------------------------------------------------------------------


def post_from_thread(app, path: str, body: dict, headers: dict):
    response = app.test_client().post(path, json=body, headers=headers)
    return response.status_code, response.get_data()


def reward_rows(app) -> list[tuple]:
    with app.app_context():
        return sorted(db.session.execute(select(Reward.beneficiary, Reward.amount_minor)).all())


def test_concurrent_first_purchases_of_one_friend_reward_once(app, shop, friend):
    results = together(
        16,
        lambda i: post_from_thread(app, "/api/v1/purchases", {**ORDER, "order_id": f"o-{i}"}, shop),
    )
    assert [status for status, _ in results] == [201] * 16
    bodies = [json.loads(raw) for _, raw in results]
    rewarded = [b for b in bodies if b["rewards"]]
    assert len(rewarded) == 1
    assert sorted((r["beneficiary"], r["amount"]) for r in rewarded[0]["rewards"]) == [
        ("friend", "2.50"),
        ("referrer", "5.00"),
    ]
    assert sum(b["first_purchase"] for b in bodies) == 1
    assert reward_rows(app) == [("friend", 250), ("referrer", 500)]
    assert count(app, Purchase) == 16


def test_concurrent_replays_of_one_order_reward_once(app, shop, friend):
    results = together(16, lambda i: post_from_thread(app, "/api/v1/purchases", ORDER, shop))
    assert sorted(status for status, _ in results) == [200] * 15 + [201]
    assert len({raw for _, raw in results}) == 1  # every answer is the same, byte for byte
    assert reward_rows(app) == [("friend", 250), ("referrer", 500)]
    assert count(app, Purchase) == 1


def test_concurrent_requests_with_one_key_run_once(app, shop, friend):
    headers = key_header(shop, "k-race")
    results = together(8, lambda i: post_from_thread(app, "/api/v1/purchases", ORDER, headers))
    statuses = sorted(status for status, _ in results)
    assert set(statuses) <= {201, 409}, statuses
    assert statuses.count(201) >= 1
    assert len({raw for status, raw in results if status == 201}) == 1
    assert reward_rows(app) == [("friend", 250), ("referrer", 500)]
    assert count(app, Purchase) == 1


def test_concurrent_signups_of_one_friend_refer_once(app, client, shop):
    code = enrol(client, shop, "ref-1")
    body = {"external_id": "friend-1", "email": "f@example.org", "referral_code": code}
    results = together(16, lambda i: post_from_thread(app, "/api/v1/signups", body, shop))
    assert sorted(status for status, _ in results) == [200] * 15 + [201]
    assert len({raw for _, raw in results}) == 1
    assert count(app, Referral) == 1
    assert count(app, Signup) == 1
    assert count(app, Customer) == 2


def test_concurrent_conversions_respect_the_monthly_cap(app, client, shop, admin):
    set_program(client, admin, max_rewards_per_referrer_per_month=1)
    for n in range(8):
        referred_friend(client, shop, f"friend-{n}")
    results = together(
        8,
        lambda i: post_from_thread(
            app,
            "/api/v1/purchases",
            {**ORDER, "order_id": f"o-{i}", "customer_external_id": f"friend-{i}"},
            shop,
        ),
    )
    assert [status for status, _ in results] == [201] * 8
    assert reward_rows(app) == [("referrer", 1000)]
    assert count(app, Referral, Referral.status == "converted") == 8


def test_concurrent_mature_moves_each_reward_once(app, client, shop, admin):
    set_program(client, admin, auto_approve_max_amount="10.00")
    for n in range(6):
        converted_friend(client, shop, f"small-{n}", referrer=f"ref-{n}")
    set_program(client, admin, referrer_reward={"type": "fixed", "value": "20.00"})
    for n in range(6):
        converted_friend(client, shop, f"big-{n}", referrer=f"ref-{n}")
    later = utcnow() + timedelta(days=15)

    def run(i):
        with app.app_context():
            return rewards.mature(now=later)

    results = together(12, run)
    assert sum(r["approved"] for r in results) == 6
    assert sum(r["awaiting_approval"] for r in results) == 6
    with app.app_context():
        by_status = dict(
            db.session.execute(select(Reward.status, func.count()).group_by(Reward.status)).all()
        )
    assert by_status == {"approved": 6, "awaiting_approval": 6}


def test_mature_waiting_on_a_decision_does_not_undo_it(app, client, shop, admin):
    """A mature run blocked by an admin's rejection in progress must not approve the reward."""
    set_program(client, admin, auto_approve_max_amount="10.00")
    reward_id = converted_friend(client, shop)["rewards"][0]["id"]
    later = utcnow() + timedelta(days=15)
    started = threading.Event()
    with app.app_context():
        decision = db.engine.connect()
        decision.execute(
            update(Reward).where(Reward.id == reward_id).values(status="rejected", note="fraud")
        )  # holds the row (or SQLite's write lock) until commit

        def run(i):
            with app.app_context():
                started.set()
                return rewards.mature(now=later)

        worker = concurrent.futures.ThreadPoolExecutor(1)
        result = worker.submit(run, 0)
        started.wait(5)
        time.sleep(0.5)  # let mature reach the locked row
        decision.commit()
        decision.close()
        assert result.result(timeout=60) == {"awaiting_approval": 0, "approved": 0}
        worker.shutdown()
        assert db.session.get(Reward, reward_id).status == "rejected"


def test_concurrent_payouts_batch_each_reward_once(app, client, shop, admin):
    set_program(client, admin, hold_days=0)
    for n in range(6):
        reward_id = converted_friend(client, shop, f"friend-{n}")["rewards"][0]["id"]
        assert approve(client, admin, reward_id).status_code == 200
    results = together(
        6, lambda i: post_from_thread(app, "/api/v1/payouts", {"all_approved": True}, admin)
    )
    statuses = sorted(status for status, _ in results)
    assert statuses.count(201) >= 1 and set(statuses) <= {201, 409}, statuses
    with app.app_context():
        batched = db.session.execute(select(Reward.payout_id)).scalars().all()
        assert None not in batched
        assert db.session.scalar(select(func.count()).select_from(Payout)) == statuses.count(201)


def test_concurrent_refunds_never_refund_more_than_the_order(app, client, shop, friend):
    client.post("/api/v1/purchases", json=ORDER, headers=shop)
    results = together(
        8,
        lambda i: post_from_thread(
            app,
            "/api/v1/refunds",
            {"order_id": "o-1", "refund_id": f"r-{i}", "amount": "10.00"},
            shop,
        ),
    )
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 4 + [422] * 4
    with app.app_context():
        assert db.session.scalar(select(Purchase.refunded_minor)) == 4000
    assert refund(client, shop, "o-1").json["refunded_total"] == "49.95"
    assert buy(client, shop, "o-1", "friend-1", "49.95").status_code == 200

"""The ledger's holes closed: refunds applied once, clawbacks netted in part, empty batches,
stats net of clawbacks, and a referral requalified after its qualifying order was refunded."""

from datetime import timedelta

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from referral_service.extensions import db
from referral_service.models import (
    AuditRecord,
    Clawback,
    ClawbackSettlement,
    Purchase,
    Referral,
    Refund,
    Reward,
    utcnow,
)
from tests.journey_helpers import (
    ago,
    buy,
    converted_friend,
    count,
    pay,
    ready_for_payout,
    referred_friend,
    refund,
    set_program,
    together,
)


def post(client, shop, **body):
    return client.post("/api/v1/refunds", json=body, headers=shop)


def ledger(app) -> dict:
    """What the refunds left in the database: the order's refunded amount, refund rows,
    rewards `(amount, status)`, clawback amounts."""
    with app.app_context():
        return {
            "refunded": db.session.scalar(
                select(Purchase.refunded_minor).where(Purchase.order_id == "o-friend-1")
            ),
            "refunds": db.session.execute(
                select(Refund.refund_id, Refund.amount_minor).order_by(Refund.id)
            ).all(),
            "rewards": db.session.execute(
                select(Reward.amount_minor, Reward.status).order_by(Reward.id)
            ).all(),
            "clawbacks": db.session.scalars(
                select(Clawback.amount_minor).order_by(Clawback.id)
            ).all(),
        }


@pytest.fixture
def ten_percent(client, admin):
    set_program(client, admin, referrer_reward={"type": "percent", "value": "10"})


@pytest.fixture
def order(client, shop, ten_percent):
    """friend-1's first order o-friend-1 of 100.00: ref-1 earns 10.00 (pending)."""
    return converted_friend(client, shop, "friend-1", amount="100.00")


# --- point 2: refunds once -----------------------------------------------------------------------


def test_the_same_partial_refund_twice_is_applied_once(app, client, shop, order):
    body = {"order_id": "o-friend-1", "refund_id": "re_1", "amount": "30.00"}
    first = post(client, shop, **body)
    again = post(client, shop, **body)
    assert first.status_code == again.status_code == 200
    assert first.json == again.json
    answer = first.json
    assert (answer["order_id"], answer["refunded_total"], answer["remaining"]) == (
        "o-friend-1",
        "30.00",
        "70.00",
    )
    assert [(r["beneficiary"], r["amount"], r["status"]) for r in answer["rewards"]] == [
        ("referrer", "7.00", "pending")
    ]
    assert ledger(app) == {
        "refunded": 3000,
        "refunds": [("re_1", 3000)],
        "rewards": [(700, "pending")],
        "clawbacks": [],
    }


def test_a_refund_id_is_remembered_for_ever_not_by_an_idempotency_key(app, client, shop, order):
    body = {"order_id": "o-friend-1", "refund_id": "re_1", "amount": "30.00"}
    for n in range(3):  # a platform retrying days later, each time with a fresh key
        headers = {**shop, "Idempotency-Key": f"retry-{n}"}
        response = client.post("/api/v1/refunds", json=body, headers=headers)
        assert response.status_code == 200
        assert response.json["remaining"] == "70.00"
    second = post(client, shop, order_id="o-friend-1", refund_id="re_2", amount="20.00")
    assert (second.json["refunded_total"], second.json["remaining"]) == ("50.00", "50.00")
    assert second.json["rewards"][0]["amount"] == "5.00"
    assert ledger(app)["refunds"] == [("re_1", 3000), ("re_2", 2000)]


def test_an_amount_without_refund_id_is_422_saying_how_to_send_it(app, client, shop, order):
    response = post(client, shop, order_id="o-friend-1", amount="30.00")
    assert response.status_code == 422
    error = response.json["error"]
    assert error["code"] == "validation_error"
    message = " ".join(error["fields"]["amount"])
    assert "`refund_id`" in message and "`refunded_total`" in message
    assert "full refund needs neither" in message
    assert ledger(app) == {
        "refunded": 0,
        "refunds": [],
        "rewards": [(1000, "pending")],
        "clawbacks": [],
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"refund_id": "re_1"}, "amount"),  # an id without its amount
        ({"refund_id": "re_1", "amount": "1.00", "refunded_total": "1.00"}, "refunded_total"),
        ({"amount": "1.00", "refunded_total": "1.00"}, "refunded_total"),
        ({"refunded_total": "100.01"}, "refunded_total"),  # beyond the order
        ({"refunded_total": "-1.00"}, "refunded_total"),
        ({"refunded_total": "1.001"}, "refunded_total"),
        ({"refunded_total": 5}, "refunded_total"),
        ({"refund_id": "", "amount": "1.00"}, "refund_id"),
        ({"refund_id": "x" * 129, "amount": "1.00"}, "refund_id"),
        ({"refund_id": "re\u0000", "amount": "1.00"}, "refund_id"),
        ({"refund_id": 12, "amount": "1.00"}, "refund_id"),
        ({"refund_id": "re_1", "amount": "0.00"}, "amount"),
        ({"refund_id": "re_1", "amount": "100.01"}, "amount"),
    ],
)
def test_bad_refunds_are_422_and_change_nothing(app, client, shop, order, body, field):
    response = post(client, shop, order_id="o-friend-1", **body)
    assert response.status_code == 422, response.json
    assert field in response.json["error"]["fields"], response.json
    assert ledger(app)["refunded"] == 0 and ledger(app)["refunds"] == []


def test_a_refund_id_replayed_with_another_amount_is_409(app, client, shop, order):
    assert refund(client, shop, "o-friend-1", "30.00", refund_id="re_1").status_code == 200
    response = refund(client, shop, "o-friend-1", "31.00", refund_id="re_1")
    assert response.status_code == 409
    error = response.json["error"]
    assert error["code"] == "refund_conflict"
    assert "30.00 EUR" in error["message"] and "new `refund_id`" in error["message"]
    assert ledger(app)["refunds"] == [("re_1", 3000)]
    # the same refund id on another order is another refund
    converted_friend(client, shop, "friend-2", amount="50.00")
    other = refund(client, shop, "o-friend-2", "31.00", refund_id="re_1")
    assert (other.status_code, other.json["remaining"]) == (200, "19.00")


def test_refunded_total_is_cumulative_and_late_figures_change_nothing(app, client, shop, order):
    def total(value):
        response = post(client, shop, order_id="o-friend-1", refunded_total=value)
        assert response.status_code == 200, response.json
        body = response.json
        return body["refunded_total"], body["remaining"], body["rewards"][0]["amount"]

    assert total("30.00") == ("30.00", "70.00", "7.00")
    assert total("30.00") == ("30.00", "70.00", "7.00")  # a retry
    assert total("20.00") == ("30.00", "70.00", "7.00")  # an older figure arriving late
    assert total("0") == ("30.00", "70.00", "7.00")
    assert total("50.00") == ("50.00", "50.00", "5.00")
    assert ledger(app)["refunds"] == [(None, 3000), (None, 2000)]
    # refund ids and totals mix: a total counts every refund of the order
    assert refund(client, shop, "o-friend-1", "10.00", refund_id="re_9").status_code == 200
    assert total("55.00") == ("60.00", "40.00", "4.00")
    assert total("100.00") == ("100.00", "0.00", "4.00")  # reversed at its last amount
    assert ledger(app)["rewards"] == [(400, "reversed")]


def test_a_full_refund_replayed_changes_nothing(app, client, shop, order):
    first = refund(client, shop, "o-friend-1")
    again = refund(client, shop, "o-friend-1")
    assert first.status_code == again.status_code == 200
    assert first.json == again.json
    assert (first.json["refunded_total"], first.json["remaining"]) == ("100.00", "0.00")
    assert ledger(app)["refunds"] == [(None, 10000)]
    late = refund(client, shop, "o-friend-1", "30.00", refund_id="re_late")
    assert late.status_code == 422  # a new refund beyond what is left


@pytest.mark.parametrize(
    "body",
    [
        {"order_id": "o-friend-1", "refund_id": "re_1", "amount": "30.00"},
        {"order_id": "o-friend-1", "refunded_total": "30.00"},
    ],
    ids=["refund_id", "refunded_total"],
)
def test_the_same_refund_sent_at_once_is_applied_once(app, shop, order, body):
    def send(_):
        response = app.test_client().post("/api/v1/refunds", json=body, headers=shop)
        return response.status_code, response.json

    results = together(6, send)
    assert [status for status, _ in results] == [200] * 6
    assert {answer["remaining"] for _, answer in results} == {"70.00"}
    assert ledger(app) == {
        "refunded": 3000,
        "refunds": [(body.get("refund_id"), 3000)],
        "rewards": [(700, "pending")],
        "clawbacks": [],
    }


def test_a_full_refund_of_a_paid_order_sent_at_once_claws_back_once(app, client, shop, admin):
    set_program(client, admin, referrer_reward={"type": "percent", "value": "10"})
    body = converted_friend(client, shop, "friend-1", amount="100.00")
    pay(client, admin, ready_for_payout(app, client, admin, body))

    def send(_):
        response = app.test_client().post(
            "/api/v1/refunds", json={"order_id": "o-friend-1"}, headers=shop
        )
        return response.status_code

    assert together(6, send) == [200] * 6
    assert ledger(app) == {
        "refunded": 10000,
        "refunds": [(None, 10000)],
        "rewards": [(1000, "paid")],
        "clawbacks": [1000],
    }


def test_a_refund_id_is_unique_per_order_in_the_database(app, order):
    with app.app_context():
        purchase_id = db.session.scalar(select(Purchase.id))
        row = {
            "purchase_id": purchase_id,
            "refund_id": "re_1",
            "amount_minor": 100,
            "refunded_total_minor": 100,
            "created_at": utcnow(),
        }
        db.session.execute(insert(Refund).values(row))
        db.session.commit()
        with pytest.raises(IntegrityError):
            db.session.execute(insert(Refund).values({**row, "refunded_total_minor": 200}))
            db.session.commit()
        db.session.rollback()


# --- point 3: clawbacks netted in part -----------------------------------------------------------


def lines(batch: dict) -> list[tuple]:
    return [(line["gross"], line["clawbacks"], line["net"]) for line in batch["lines"]]


def batch_of(app, client, admin, purchase_body: dict) -> dict:
    ids = ready_for_payout(app, client, admin, purchase_body)
    created = client.post("/api/v1/payouts", json={"reward_ids": ids}, headers=admin)
    assert created.status_code == 201, created.json
    return created.json


def mark_paid(client, admin, batch: dict, reference: str = "SEPA"):
    return client.post(
        f"/api/v1/payouts/{batch['id']}/mark-paid", json={"reference": reference}, headers=admin
    )


@pytest.fixture
def clawback_of_ten(app, client, shop, admin, ten_percent):
    """ref-1 was paid 10.00 for friend-1's order of 100.00, then it was refunded in full."""
    body = converted_friend(client, shop, "friend-1", amount="100.00")
    pay(client, admin, ready_for_payout(app, client, admin, body))
    answer = refund(client, shop, "o-friend-1").json
    assert [c["amount"] for c in answer["clawbacks"]] == ["10.00"]


def test_a_clawback_takes_what_each_payout_can_give_and_carries_the_rest(
    app, client, shop, admin, clawback_of_ten
):
    six = batch_of(app, client, admin, converted_friend(client, shop, "friend-2", amount="60.00"))
    assert lines(six) == [("6.00", "6.00", "0.00")]
    assert six["totals"] == [{"currency": "EUR", "amount": "0.00"}]
    assert mark_paid(client, admin, six).status_code == 200  # settles the reward and the part
    twenty = converted_friend(client, shop, "friend-3", amount="200.00")
    following = batch_of(app, client, admin, twenty)
    assert lines(following) == [("20.00", "4.00", "16.00")]
    assert mark_paid(client, admin, following).status_code == 200
    with app.app_context():
        assert db.session.execute(
            select(ClawbackSettlement.payout_id, ClawbackSettlement.amount_minor).order_by(
                ClawbackSettlement.id
            )
        ).all() == [(six["id"], 600), (following["id"], 400)]
        assert db.session.scalar(select(Clawback.settled_minor)) == 1000
    # settled in full: the next payout nets nothing
    later = batch_of(app, client, admin, converted_friend(client, shop, "friend-4", amount="30.00"))
    assert lines(later) == [("3.00", "0.00", "3.00")]


def test_a_clawback_nets_per_currency_line_and_only_its_beneficiary(
    app, client, shop, admin, clawback_of_ten
):
    mine = converted_friend(client, shop, "friend-2", amount="30.00")  # ref-1: 3.00
    theirs = converted_friend(client, shop, "friend-3", referrer="ref-2", amount="90.00")
    ids = ready_for_payout(app, client, admin, mine) + ready_for_payout(app, client, admin, theirs)
    batch = client.post("/api/v1/payouts", json={"reward_ids": ids}, headers=admin).json
    by_customer = {line["customer_external_id"]: line for line in batch["lines"]}
    assert (by_customer["ref-1"]["clawbacks"], by_customer["ref-1"]["net"]) == ("3.00", "0.00")
    assert (by_customer["ref-2"]["clawbacks"], by_customer["ref-2"]["net"]) == ("0.00", "9.00")
    assert batch["totals"] == [{"currency": "EUR", "amount": "9.00"}]


def test_a_reward_leaving_an_unpaid_batch_gives_its_part_back_to_the_next_batch(
    app, client, shop, admin, clawback_of_ten
):
    first = batch_of(app, client, admin, converted_friend(client, shop, "friend-2", amount="60.00"))
    second = batch_of(
        app, client, admin, converted_friend(client, shop, "friend-3", amount="200.00")
    )
    assert (lines(first), lines(second)) == (
        [("6.00", "6.00", "0.00")],
        [("20.00", "4.00", "16.00")],
    )
    refund(client, shop, "o-friend-2")  # the first batch's reward is reversed
    emptied = client.get(f"/api/v1/payouts/{first['id']}", headers=admin).json
    assert (emptied["reward_ids"], emptied["lines"], emptied["totals"]) == ([], [], [])
    shown = client.get(f"/api/v1/payouts/{second['id']}", headers=admin).json
    assert lines(shown) == [("20.00", "4.00", "16.00")]  # a made batch does not grow its take
    third = batch_of(app, client, admin, converted_friend(client, shop, "friend-4", amount="80.00"))
    assert lines(third) == [("8.00", "6.00", "2.00")]
    with app.app_context():
        assert db.session.scalar(select(Clawback.settled_minor)) == 1000


# --- point 6: batches left empty, stats net of clawbacks ----------------------------------------


@pytest.fixture
def batch_of_one(app, client, shop, admin, ten_percent) -> dict:
    body = converted_friend(client, shop, "friend-1", amount="100.00")
    return batch_of(app, client, admin, body)


@pytest.mark.parametrize("how", ["refund", "reject"])
def test_a_batch_whose_rewards_all_left_cannot_be_marked_paid(
    app, client, shop, admin, batch_of_one, how
):
    if how == "refund":
        assert refund(client, shop, "o-friend-1").status_code == 200
    else:
        reward_id = batch_of_one["reward_ids"][0]
        rejected = client.post(
            f"/api/v1/rewards/{reward_id}/reject", json={"reason": "fraud"}, headers=admin
        )
        assert rejected.status_code == 200
    response = mark_paid(client, admin, batch_of_one)
    assert response.status_code == 409
    assert response.json["error"]["code"] == "conflict"
    message = response.json["error"]["message"]
    assert "holds no rewards any more" in message and "nothing to pay" in message
    second_key = {"Authorization": f"Bearer {second_admin_key(app)}"}
    approval = client.post(f"/api/v1/payouts/{batch_of_one['id']}/approve", headers=second_key)
    assert approval.status_code == 409
    assert "nothing to approve" in approval.json["error"]["message"]
    shown = client.get(f"/api/v1/payouts/{batch_of_one['id']}", headers=admin).json
    assert (shown["status"], shown["paid_at"], shown["reward_count"]) == ("created", None, 0)
    assert count(app, AuditRecord, AuditRecord.action == "payout.mark_paid") == 0


def second_admin_key(app) -> str:
    from tests.factories import api_key

    with app.app_context():
        return api_key("admin", "second-approver")


def test_a_batch_netted_to_zero_is_still_paid(app, client, shop, admin, clawback_of_ten):
    batch = batch_of(app, client, admin, converted_friend(client, shop, "friend-2", amount="50.00"))
    assert batch["totals"] == [{"currency": "EUR", "amount": "0.00"}]
    paid = mark_paid(client, admin, batch)
    assert paid.status_code == 200 and paid.json["status"] == "paid"


def test_stats_count_paid_net_of_clawbacks_and_show_them(app, client, shop, admin, ten_percent):
    first = converted_friend(client, shop, "friend-1", amount="100.00")
    second = converted_friend(client, shop, "friend-2", amount="50.00")
    pay(client, admin, ready_for_payout(app, client, admin, first))
    pay(client, admin, ready_for_payout(app, client, admin, second), reference="SEPA-2")
    refund(client, shop, "o-friend-1", "40.00", refund_id="re_1")  # clawback 4.00
    stats = client.get("/api/v1/customers/ref-1", headers=shop).json["stats"]
    assert (stats["rewards"]["paid"], stats["rewards"]["clawed_back"]) == (2, 1)
    assert (stats["amounts"]["paid"], stats["amounts"]["clawed_back"]) == (
        {"EUR": "11.00"},
        {"EUR": "4.00"},
    )
    funnel = client.get("/api/v1/stats", headers=admin).json["rewards"]
    assert funnel["paid"] == {"count": 2, "amounts": {"EUR": "11.00"}}
    assert funnel["clawed_back"] == {"count": 1, "amounts": {"EUR": "4.00"}}
    refund(client, shop, "o-friend-1")  # the rest: 6.00 more
    stats = client.get("/api/v1/customers/ref-1", headers=shop).json["stats"]
    assert (stats["amounts"]["paid"], stats["amounts"]["clawed_back"]) == (
        {"EUR": "5.00"},
        {"EUR": "10.00"},
    )
    assert stats["rewards"]["clawed_back"] == 1  # one reward, two clawbacks
    funnel = client.get("/api/v1/stats", headers=admin).json["rewards"]
    assert funnel["paid"] == {"count": 2, "amounts": {"EUR": "5.00"}}
    assert funnel["clawed_back"] == {"count": 1, "amounts": {"EUR": "10.00"}}
    friend = client.get("/api/v1/customers/friend-1", headers=shop).json["stats"]
    assert friend["amounts"]["clawed_back"] == {}


# --- point 7: a refunded first order requalifies the referral ------------------------------------


def referral_of(client, shop, friend: str) -> dict:
    items = client.get("/api/v1/referrals?referrer=ref-1", headers=shop).json["items"]
    return next(item for item in items if item["friend_external_id"] == friend)


def test_a_refunded_first_order_requalifies_the_referral(app, client, shop, admin, ten_percent):
    referred_friend(client, shop, "friend-1", occurred_at=ago(days=10))
    first = buy(client, shop, "o-1", "friend-1", "100.00", occurred_at=ago(days=9))
    assert first.json["referral"]["status"] == "converted"
    assert refund(client, shop, "o-1").json["rewards"][0]["status"] == "reversed"
    referral = referral_of(client, shop, "friend-1")
    assert (referral["status"], referral["order_id"], referral["converted_at"]) == (
        "attributed",
        None,
        None,
    )
    with app.app_context():
        record = db.session.scalar(
            select(AuditRecord).where(AuditRecord.action == "referral.requalified")
        )
        assert (record.subject_type, record.subject_id) == ("referral", str(referral["id"]))
        assert record.before["order_id"] == "o-1" and record.after["status"] == "attributed"
        assert record.actor.startswith("api-key:")
    again = buy(client, shop, "o-2", "friend-1", "80.00")
    assert again.status_code == 201
    assert again.json["referral"]["status"] == "converted"
    assert [(r["beneficiary"], r["amount"], r["status"]) for r in again.json["rewards"]] == [
        ("referrer", "8.00", "pending")
    ]
    referral = referral_of(client, shop, "friend-1")
    assert (referral["status"], referral["order_id"]) == ("converted", "o-2")
    with app.app_context():
        assert db.session.execute(
            select(Reward.amount_minor, Reward.status).order_by(Reward.id)
        ).all() == [(1000, "reversed"), (800, "pending")]
    # the timeline tells both conversions and the requalification
    from tests.test_admin_console import signed_in_as
    from tests.test_admin_customers import html

    signed_in_as(app, client, "viewer")
    page = html(client, f"/admin/referrals/{referral['id']}")
    assert "Referral back to attributed" in page and "Refunded order: o-1" in page
    assert "Converted the referral, until it was refunded" in page
    assert "The qualifying purchase: the referral converted" in page
    assert 'data-kind="referral"' in page and 'data-kind="refund"' in page
    # a second full refund requalifies it again, and a third order converts it again
    refund(client, shop, "o-2")
    assert referral_of(client, shop, "friend-1")["status"] == "attributed"
    third = buy(client, shop, "o-3", "friend-1", "50.00")
    assert third.json["rewards"][0]["amount"] == "5.00"
    assert count(app, Reward, Reward.status != "reversed") == 1


def test_a_requalified_referral_outside_the_conversion_window_earns_nothing(
    app, client, shop, admin, ten_percent
):
    referred_friend(client, shop, "friend-1", occurred_at=ago(days=20))
    buy(client, shop, "o-1", "friend-1", "100.00", occurred_at=ago(days=19))
    refund(client, shop, "o-1")
    set_program(client, admin, conversion_window_days=10)
    late = buy(client, shop, "o-2", "friend-1", "80.00")
    assert late.status_code == 201
    assert (late.json["referral"]["status"], late.json["rewards"]) == ("attributed", [])
    assert referral_of(client, shop, "friend-1")["status"] == "attributed"
    assert count(app, Reward, Reward.status != "reversed") == 0


def test_a_partial_refund_keeps_the_referral_converted(app, client, shop, order):
    refund(client, shop, "o-friend-1", "99.00", refund_id="re_1")
    assert referral_of(client, shop, "friend-1")["status"] == "converted"
    later = buy(client, shop, "o-later", "friend-1", "80.00")
    assert (later.json["referral"]["status"], later.json["rewards"]) == ("converted", [])


def test_a_refund_after_payout_keeps_the_referral_converted(app, client, shop, admin, order):
    pay(client, admin, ready_for_payout(app, client, admin, order))
    answer = refund(client, shop, "o-friend-1").json
    assert [c["amount"] for c in answer["clawbacks"]] == ["10.00"]
    assert referral_of(client, shop, "friend-1")["status"] == "converted"
    later = buy(client, shop, "o-later", "friend-1", "80.00")
    assert later.json["rewards"] == []
    assert count(app, AuditRecord, AuditRecord.action == "referral.requalified") == 0


def test_a_rejected_reward_keeps_the_referral_converted(app, client, shop, admin, order):
    reward_id = order["rewards"][0]["id"]
    client.post(f"/api/v1/rewards/{reward_id}/reject", json={"reason": "fraud"}, headers=admin)
    refund(client, shop, "o-friend-1")
    assert referral_of(client, shop, "friend-1")["status"] == "converted"
    assert buy(client, shop, "o-later", "friend-1", "80.00").json["rewards"] == []


def test_two_live_rewards_for_one_friend_and_beneficiary_are_impossible(app, order):
    with app.app_context():
        reward = db.session.scalar(select(Reward))
        row = {
            column.name: getattr(reward, column.key)
            for column in Reward.__table__.columns
            if column.name != "id"
        }
        with pytest.raises(IntegrityError):
            db.session.execute(insert(Reward).values(row))
            db.session.commit()
        db.session.rollback()
        db.session.execute(insert(Reward).values({**row, "status": "reversed"}))
        db.session.commit()  # a reversed one beside a live one is allowed
        assert count(app, Reward) == 2


def test_a_requalified_referral_converts_once_under_concurrent_orders(
    app, client, shop, ten_percent
):
    referred_friend(client, shop, "friend-1", occurred_at=ago(days=10))
    buy(client, shop, "o-1", "friend-1", "100.00", occurred_at=ago(days=9))
    refund(client, shop, "o-1")

    def order(i):
        body = {
            "order_id": f"o-new-{i}",
            "customer_external_id": "friend-1",
            "amount": "80.00",
            "currency": "EUR",
        }
        return app.test_client().post("/api/v1/purchases", json=body, headers=shop).status_code

    assert together(6, order) == [201] * 6
    assert count(app, Reward, Reward.status != "reversed") == 1
    with app.app_context():
        referral = db.session.scalar(select(Referral))
        assert referral.status == "converted" and referral.order_id.startswith("o-new-")
        assert referral.converted_at > utcnow() - timedelta(minutes=5)


# --- races between refunds and payouts -----------------------------------------------------------


def test_mark_paid_and_a_full_refund_at_once_leave_one_consistent_outcome(
    app, client, shop, admin, ten_percent
):
    for round_ in range(3):
        friend = f"friend-race-{round_}"
        made = batch_of(app, client, admin, converted_friend(client, shop, friend, amount="100.00"))

        def act(i, payout_id=made["id"], order_id=f"o-{friend}"):
            browser = app.test_client()
            if i == 0:
                path, body, headers = (
                    f"/api/v1/payouts/{payout_id}/mark-paid",
                    {"reference": "R"},
                    admin,
                )
            else:
                path, body, headers = "/api/v1/refunds", {"order_id": order_id}, shop
            return browser.post(path, json=body, headers=headers).status_code

        paid, refunded = together(2, act)
        assert refunded == 200
        with app.app_context():
            reward = db.session.scalar(select(Reward).where(Reward.id == made["reward_ids"][0]))
            clawed = db.session.scalars(
                select(Clawback.amount_minor).where(Clawback.reward_id == reward.id)
            ).all()
            if paid == 200:  # paid first: the refund claws it back
                assert (reward.status, clawed) == ("paid", [1000])
            else:  # refunded first: the batch is empty and cannot be paid
                assert paid == 409
                assert (reward.status, reward.payout_id, clawed) == ("reversed", None, [])


def test_two_batches_made_at_once_never_take_one_clawback_twice(
    app, client, shop, admin, clawback_of_ten
):
    ids = [
        ready_for_payout(
            app, client, admin, converted_friend(client, shop, f"friend-{n}", amount="60.00")
        )[0]
        for n in (2, 3)
    ]

    def make(i):
        return (
            app.test_client()
            .post("/api/v1/payouts", json={"reward_ids": [ids[i]]}, headers=admin)
            .json
        )

    made = together(2, make)
    taken = sorted(batch["lines"][0]["clawbacks"] for batch in made)
    assert taken == ["4.00", "6.00"]
    with app.app_context():
        assert db.session.scalar(select(Clawback.settled_minor)) == 1000


# --- migration 0007 keeps what payouts netted ----------------------------------------------------


def test_migration_0007_turns_netted_clawbacks_into_settlements_and_back(fresh_database_url):
    from flask_migrate import downgrade, upgrade
    from sqlalchemy import text

    from referral_service import create_app
    from tests.conftest import app_config

    app = create_app(app_config(fresh_database_url))
    now = utcnow()
    rows = {
        "customers": [
            {"id": n, "external_id": f"c-{n}", "email": f"c{n}@example.com", "updated_at": now}
            | {"email_key": f"c{n}@example.com"}
            for n in (1, 2)
        ],
        "purchases": [
            {"id": 1, "order_id": "o-1", "customer_id": 2, "amount_minor": 10000}
            | {"refunded_minor": 10000, "currency": "EUR", "occurred_at": now, "response": "{}"}
        ],
        "referrals": [
            {"id": 1, "referrer_id": 1, "friend_id": 2, "channel": "code", "status": "converted"}
            | {"attributed_at": now, "risk_score": 0, "risk_reasons": "[]"}
        ],
        "payouts": [{"id": n, "status": "paid", "created_by": "admin:a"} for n in (1, 2)],
        "rewards": [
            {"id": 1, "referral_id": 1, "purchase_id": 1, "customer_id": 1, "payout_id": 1}
            | {"beneficiary": "referrer", "rule_type": "fixed", "rule_value": "10.00"}
            | {"amount_minor": 1000, "currency": "EUR", "status": "paid", "available_at": now}
            | {"updated_at": now}
        ],
        "clawbacks": [
            {"id": 1, "customer_id": 1, "reward_id": 1, "amount_minor": 300, "payout_id": 2}
            | {"currency": "EUR"},
            {"id": 2, "customer_id": 1, "reward_id": 1, "amount_minor": 700, "payout_id": None}
            | {"currency": "EUR"},
        ],
    }
    with app.app_context():
        upgrade(revision="0006")
        with db.engine.begin() as connection:
            for table, items in rows.items():
                for item in items:
                    values = {**({} if table == "referrals" else {"created_at": now}), **item}
                    names = ", ".join(values)
                    marks = ", ".join(f":{name}" for name in values)
                    connection.execute(
                        text(f"INSERT INTO {table} ({names}) VALUES ({marks})"), values
                    )
        upgrade(revision="0007")
        with db.engine.connect() as connection:
            assert connection.execute(text("SELECT id, status FROM rewards")).all() == [(1, "paid")]
            assert connection.execute(
                text("SELECT clawback_id, payout_id, amount_minor FROM clawback_settlements")
            ).all() == [(1, 2, 300)]
            assert connection.execute(
                text("SELECT id, settled_minor FROM clawbacks ORDER BY id")
            ).all() == [(1, 300), (2, 0)]
        downgrade(revision="0006")
        with db.engine.connect() as connection:
            assert connection.execute(
                text("SELECT id, payout_id FROM clawbacks ORDER BY id")
            ).all() == [(1, 2), (2, None)]
            assert connection.execute(text("SELECT id, status FROM rewards")).all() == [(1, "paid")]
        upgrade(revision="0007")  # and up again
        with db.engine.connect() as connection:
            assert connection.execute(
                text("SELECT clawback_id, amount_minor FROM clawback_settlements")
            ).all() == [(1, 300)]
        db.engine.dispose()

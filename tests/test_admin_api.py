"""The admin API: the rewards queue, decisions and their audit trail, stats, and key scopes."""

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from referral_service.extensions import db
from referral_service.models import ApiKey, AuditRecord, Customer, Referral, Reward, utcnow
from tests.journey_helpers import (
    ago,
    approve,
    at,
    buy,
    click,
    converted_friend,
    enrol,
    mature,
    pay,
    referred_friend,
    refund,
    set_program,
    sign_up,
)


def audit_log(app) -> list[tuple]:
    with app.app_context():
        return [
            (r.actor, r.action, r.subject_type, r.subject_id, r.before, r.after)
            for r in db.session.scalars(select(AuditRecord).order_by(AuditRecord.id))
        ]


def admin_actor(app) -> str:
    with app.app_context():
        key = db.session.scalar(select(ApiKey).where(ApiKey.scope == "admin"))
        return f"api-key:{key.id}:{key.name}"


@pytest.fixture
def queue(app, client, shop, admin):
    """Five rewards of three referrers: ref-1 x3 (one risky), ref-2 x1, ref-3 x1 (pending)."""
    signed_up = utcnow() - timedelta(days=40)
    ids = {}
    for friend, referrer in (
        ("f-1", "ref-1"),
        ("f-2", "ref-1"),
        ("f-3", "ref-2"),
        ("f-4", "ref-1"),
    ):
        body = converted_friend(
            client,
            shop,
            friend,
            referrer=referrer,
            signed_up_at=at(signed_up),
            occurred_at=at(signed_up + timedelta(days=1)),  # hold long over
        )
        ids[friend] = body["rewards"][0]["id"]
    ids["f-5"] = converted_friend(client, shop, "f-5", referrer="ref-3")["rewards"][0]["id"]
    with app.app_context():
        db.session.execute(
            update(Referral)
            .where(
                Referral.friend_id
                == select(Customer.id).where(Customer.external_id == "f-4").scalar_subquery()
            )
            .values(risk_score=70, risk_reasons=["same_ip", "disposable_email"])
        )
        db.session.commit()
    return ids


# --- the rewards list ----------------------------------------------------------------------------


def test_rewards_list_shows_referral_and_risk(app, client, admin, queue):
    response = client.get("/api/v1/rewards", headers=admin)
    assert response.status_code == 200
    items = response.json["items"]
    assert [i["id"] for i in items] == sorted(queue.values(), reverse=True)
    assert response.json["next_cursor"] is None
    risky = next(i for i in items if i["id"] == queue["f-4"])
    assert risky["risk"] == {"score": 70, "reasons": ["same_ip", "disposable_email"]}
    assert risky["customer_external_id"] == "ref-1"
    assert risky["order_id"] == "o-f-4"
    assert (risky["beneficiary"], risky["amount"], risky["currency"]) == (
        "referrer",
        "10.00",
        "EUR",
    )
    assert risky["status"] == "awaiting_approval"
    assert risky["note"] is None and risky["payout_id"] is None
    referral = risky["referral"]
    assert set(referral) == {
        "id",
        "referrer_external_id",
        "friend_external_id",
        "status",
        "channel",
        "attributed_at",
        "converted_at",
    }
    assert (referral["referrer_external_id"], referral["friend_external_id"]) == ("ref-1", "f-4")
    assert (referral["status"], referral["channel"]) == ("converted", "code")
    clean = next(i for i in items if i["id"] == queue["f-1"])
    assert clean["risk"] == {"score": 0, "reasons": []}


def test_rewards_list_filters(client, admin, queue):
    def ids(query):
        response = client.get(f"/api/v1/rewards?{query}", headers=admin)
        assert response.status_code == 200, response.json
        return [item["id"] for item in response.json["items"]]

    assert ids("referrer=ref-1") == [queue["f-4"], queue["f-2"], queue["f-1"]]
    assert ids("status=pending") == [queue["f-5"]]
    assert ids("status=awaiting_approval&referrer=ref-2") == [queue["f-3"]]
    assert ids("status=paid") == []
    assert ids("referrer=nobody") == []


def test_rewards_list_pages_with_a_cursor(client, admin, queue):
    seen, cursor, pages = [], None, 0
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/api/v1/rewards?{query}", headers=admin).json
        pages += 1
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == sorted(queue.values(), reverse=True)
    exact = client.get("/api/v1/rewards?limit=5", headers=admin).json
    assert len(exact["items"]) == 5 and exact["next_cursor"] is None


@pytest.mark.parametrize(
    "query",
    [
        "cursor=not-a-cursor!",
        "cursor=MA",  # "0"
        "cursor=LTU",  # "-5"
        "cursor=eHl6",  # "xyz"
        "cursor=MjE0NzQ4MzY0OA",  # "2147483648": beyond any id
        "limit=0",
        "limit=201",
        "limit=ten",
        "status=lost",
    ],
)
def test_rewards_list_bad_query_is_422(client, admin, query):
    response = client.get(f"/api/v1/rewards?{query}", headers=admin)
    assert response.status_code == 422, response.json
    assert response.json["error"]["code"] == "validation_error"


# --- decisions and the audit trail ---------------------------------------------------------------


def test_approve_with_a_note_is_audited(app, client, admin, queue):
    reward_id = queue["f-1"]
    response = approve(client, admin, reward_id, note="checked the order")
    assert response.status_code == 200
    assert (response.json["status"], response.json["note"]) == ("approved", "checked the order")
    assert response.json["referral"]["friend_external_id"] == "f-1"
    assert audit_log(app) == [
        (
            admin_actor(app),
            "reward.approve",
            "reward",
            str(reward_id),
            {"status": "awaiting_approval", "note": None},
            {"status": "approved", "note": "checked the order"},
        )
    ]


def test_approve_without_a_note(client, admin, queue):
    response = approve(client, admin, queue["f-2"])
    assert (response.status_code, response.json["note"]) == (200, None)


def test_approve_is_409_unless_awaiting_approval(app, client, admin, queue):
    pending = approve(client, admin, queue["f-5"])
    assert pending.status_code == 409
    assert pending.json["error"]["code"] == "conflict"
    assert approve(client, admin, queue["f-1"]).status_code == 200
    assert approve(client, admin, queue["f-1"]).status_code == 409
    assert approve(client, admin, 999_999).status_code == 404
    assert [entry[1] for entry in audit_log(app)] == ["reward.approve"]  # refusals leave no trace


def test_reject_needs_a_reason(app, client, admin, queue):
    for body in ({}, {"reason": ""}, {"reason": "   "}, {"reason": None}):
        response = client.post(f"/api/v1/rewards/{queue['f-1']}/reject", json=body, headers=admin)
        assert response.status_code == 422, body
        assert "reason" in response.json["error"]["fields"]
    with app.app_context():
        assert db.session.get(Reward, queue["f-1"]).status == "awaiting_approval"
    assert audit_log(app) == []


@pytest.mark.parametrize("friend", ["f-1", "f-5"])  # awaiting approval, pending
def test_reject_with_a_reason_is_audited(app, client, admin, queue, friend):
    reward_id = queue[friend]
    with app.app_context():
        status = db.session.get(Reward, reward_id).status
    response = client.post(
        f"/api/v1/rewards/{reward_id}/reject",
        json={"reason": " same card as referrer "},
        headers=admin,
    )
    assert response.status_code == 200
    assert (response.json["status"], response.json["note"]) == ("rejected", "same card as referrer")
    assert audit_log(app) == [
        (
            admin_actor(app),
            "reward.reject",
            "reward",
            str(reward_id),
            {"status": status, "note": None},
            {"status": "rejected", "note": "same card as referrer"},
        )
    ]
    again = client.post(f"/api/v1/rewards/{reward_id}/reject", json={"reason": "x"}, headers=admin)
    assert again.status_code == 409
    assert approve(client, admin, reward_id).status_code == 409


def test_reject_an_approved_reward_and_unknown_ones(client, admin, queue):
    approve(client, admin, queue["f-3"])
    rejected = client.post(
        f"/api/v1/rewards/{queue['f-3']}/reject", json={"reason": "changed mind"}, headers=admin
    )
    assert (rejected.status_code, rejected.json["status"]) == (200, "rejected")
    missing = client.post("/api/v1/rewards/999999/reject", json={"reason": "x"}, headers=admin)
    assert missing.status_code == 404


def test_program_changes_are_audited(app, client, admin):
    set_program(client, admin, hold_days=3, paused=True)
    log = audit_log(app)
    assert len(log) == 1
    actor, action, subject_type, subject_id, before, after = log[0]
    assert (actor, action, subject_type, subject_id) == (
        admin_actor(app),
        "program.update",
        "program",
        "1",
    )
    assert before == {"hold_days": 14, "paused": False}
    assert after == {"hold_days": 3, "paused": True}
    refused = client.patch("/api/v1/program", json={"hold_days": -1}, headers=admin)
    assert refused.status_code == 422
    assert len(audit_log(app)) == 1


# --- stats ---------------------------------------------------------------------------------------


def test_stats_funnel_by_channel(app, client, shop, admin):
    set_program(client, admin, hold_days=0)
    code_1 = enrol(client, shop, "ref-1")
    code_2 = enrol(client, shop, "ref-2")
    qr = [click(client, code_1, via="qr") for _ in range(3)]
    mail = click(client, code_2, via="email")
    click(client, code_2)  # plain link, never used
    sign_up(client, shop, "f-qr-1", click_id=qr[0])
    sign_up(client, shop, "f-qr-2", click_id=qr[1])
    sign_up(client, shop, "f-mail", click_id=mail)
    sign_up(client, shop, "f-code", referral_code=code_1)
    sign_up(client, shop, "f-none")
    for n, friend in enumerate(("f-qr-1", "f-mail", "f-code")):
        assert buy(client, shop, f"o-{n}", friend, "25.00").json["rewards"]
    buy(client, shop, "o-none", "f-none", "25.00")
    rewards = client.get("/api/v1/rewards?referrer=ref-1", headers=admin).json["items"]
    approve(client, admin, rewards[0]["id"])
    start, end = ago(hours=1), ago(hours=-1)
    response = client.get("/api/v1/stats", query_string={"from": start, "to": end}, headers=admin)
    assert response.status_code == 200, response.json
    body = response.json
    assert (body["clicks"], body["signups"], body["conversions"]) == (5, 4, 3)
    assert body["by_channel"] == {
        "code": {"clicks": 0, "signups": 1, "conversions": 1},
        "email": {"clicks": 1, "signups": 1, "conversions": 1},
        "link": {"clicks": 1, "signups": 0, "conversions": 0},
        "qr": {"clicks": 3, "signups": 2, "conversions": 1},
    }
    assert body["rewards"] == {
        "pending": {"count": 0, "amounts": {}},
        "awaiting_approval": {"count": 2, "amounts": {"EUR": "20.00"}},
        "approved": {"count": 1, "amounts": {"EUR": "10.00"}},
        "paid": {"count": 0, "amounts": {}},
        "rejected": {"count": 0, "amounts": {}},
        "reversed": {"count": 0, "amounts": {}},
        "clawed_back": {"count": 0, "amounts": {}},
    }
    # before everything: empty
    empty = client.get(
        "/api/v1/stats",
        query_string={"from": ago(days=3), "to": ago(days=2)},
        headers=admin,
    ).json
    assert (empty["clicks"], empty["signups"], empty["conversions"], empty["by_channel"]) == (
        0,
        0,
        0,
        {},
    )
    # the default range (the last 30 days) holds it all
    default = client.get("/api/v1/stats", headers=admin).json
    assert (default["clicks"], default["signups"], default["conversions"]) == (5, 4, 3)


def test_stats_times_follow_the_reported_times(client, shop, admin):
    signed_up = utcnow() - timedelta(days=10)
    referred_friend(client, shop, "f-1", occurred_at=at(signed_up))
    buy(client, shop, "o-1", "f-1", "30.00", occurred_at=at(signed_up + timedelta(days=2)))
    window = {"from": at(signed_up - timedelta(hours=1)), "to": at(signed_up + timedelta(days=1))}
    first_day = client.get("/api/v1/stats", query_string=window, headers=admin).json
    assert (first_day["signups"], first_day["conversions"]) == (1, 0)


def test_stats_amounts_sum_per_status(app, client, shop, admin):
    set_program(client, admin, referrer_reward={"type": "percent", "value": "10"})
    converted_friend(client, shop, "f-1", amount="12.34")  # 1.23
    converted_friend(client, shop, "f-2", amount="45.66")  # 4.57
    converted_friend(client, shop, "f-3", amount="20.00")  # 2.00
    refund(client, shop, "o-f-3")
    body = client.get("/api/v1/stats", headers=admin).json
    assert body["rewards"]["pending"] == {"count": 2, "amounts": {"EUR": "5.80"}}
    assert body["rewards"]["reversed"] == {"count": 1, "amounts": {"EUR": "2.00"}}


@pytest.mark.parametrize(
    "query",
    [
        {"from": "2026-01-01T00:00:00"},  # no zone
        {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        {"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        {"from": "yesterday"},
        {"from": "0001-01-01T00:00:00+01:00"},  # before year 1 in UTC
        {"to": "9999-12-31T23:59:59-05:00"},  # after year 9999 in UTC
    ],
)
def test_stats_bad_range_is_422(client, admin, query):
    response = client.get("/api/v1/stats", query_string=query, headers=admin)
    assert response.status_code == 422, response.json


def test_stats_at_the_edge_of_time_is_empty(client, admin):
    response = client.get(
        "/api/v1/stats", query_string={"to": "0001-01-05T00:00:00Z"}, headers=admin
    )
    assert response.status_code == 200
    assert (response.json["from"], response.json["clicks"]) == ("0001-01-01T00:00:00+00:00", 0)


def test_customer_stats_are_filled_in(app, client, shop, admin):
    set_program(client, admin, hold_days=0)
    code = enrol(client, shop, "ref-1")
    click(client, code, via="sms")
    click(client, code, via="sms")
    paid = converted_friend(client, shop, "f-1")
    converted_friend(client, shop, "f-2")
    pending_friend = converted_friend(client, shop, "f-3", occurred_at=ago(days=-0.5))
    referred_friend(client, shop, "f-4")
    assert approve(client, admin, paid["rewards"][0]["id"]).status_code == 200
    pay(client, admin, [paid["rewards"][0]["id"]])
    assert pending_friend["rewards"][0]["status"] == "pending"
    stats = client.get("/api/v1/customers/ref-1", headers=shop).json["stats"]
    assert stats == {
        "clicks": 2,
        "signups": 4,
        "conversions": 3,
        "rewards": {
            "pending": 1,
            "awaiting_approval": 1,
            "approved": 0,
            "paid": 1,
            "clawed_back": 0,
        },
        "amounts": {
            "pending": {"EUR": "10.00"},
            "awaiting_approval": {"EUR": "10.00"},
            "approved": {},
            "paid": {"EUR": "10.00"},
            "clawed_back": {},
        },
    }
    mature(app, utcnow() + timedelta(days=1))
    after = client.get("/api/v1/customers/ref-1", headers=shop).json["stats"]["rewards"]
    assert after == {
        "pending": 0,
        "awaiting_approval": 2,
        "approved": 0,
        "paid": 1,
        "clawed_back": 0,
    }


# --- scopes --------------------------------------------------------------------------------------

SHOP_ENDPOINTS = [
    ("post", "/api/v1/signups", {"external_id": "s-1", "email": "s@example.org"}),
    (
        "post",
        "/api/v1/purchases",
        {"order_id": "o", "customer_external_id": "x", "amount": "1.00", "currency": "EUR"},
    ),
    ("post", "/api/v1/refunds", {"order_id": "o"}),
    ("get", "/api/v1/referrals", None),
]
ADMIN_ENDPOINTS = [
    ("get", "/api/v1/rewards", None),
    ("post", "/api/v1/rewards/1/approve", {}),
    ("post", "/api/v1/rewards/1/reject", {"reason": "x"}),
    ("post", "/api/v1/payouts", {"all_approved": True}),
    ("get", "/api/v1/payouts/1", None),
    ("get", "/api/v1/payouts/1.csv", None),
    ("post", "/api/v1/payouts/1/mark-paid", {"reference": "R"}),
    ("get", "/api/v1/stats", None),
    ("get", "/api/v1/insights", None),
]


def call(client, method, path, body, headers):
    if body is None:
        return getattr(client, method)(path, headers=headers)
    return getattr(client, method)(path, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body"), SHOP_ENDPOINTS)
def test_shop_key_may_call_checkout_endpoints(client, shop, admin, method, path, body):
    assert call(client, method, path, body, shop).status_code not in (401, 403)
    assert call(client, method, path, body, admin).status_code not in (401, 403)


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ENDPOINTS)
def test_admin_endpoints_refuse_a_shop_key(app, client, shop, admin, method, path, body):
    refused = call(client, method, path, body, shop)
    assert refused.status_code == 403
    assert refused.json["error"]["code"] == "forbidden"
    assert call(client, method, path, body, admin).status_code not in (401, 403)
    assert audit_log(app) == []


@pytest.mark.parametrize(("method", "path", "body"), SHOP_ENDPOINTS + ADMIN_ENDPOINTS)
def test_no_key_or_a_bad_key_is_401(client, method, path, body):
    for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": "Basic abc"}):
        response = call(client, method, path, body, headers)
        assert response.status_code == 401, (headers, response.status_code)
        assert response.json["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("reward_id", [0, 2**31, 2**40, 10**20])
def test_ids_beyond_any_row_are_404_not_500(client, admin, reward_id):
    for method, path, body in ADMIN_ENDPOINTS[1:-1]:
        if "/1" not in path:
            continue
        response = call(client, method, path.replace("/1", f"/{reward_id}", 1), body, admin)
        assert response.status_code == 404, (path, response.json)
        assert response.json["error"]["code"] == "not_found"
    named = client.post("/api/v1/payouts", json={"reward_ids": [reward_id]}, headers=admin)
    assert named.status_code == 422


@pytest.mark.parametrize(
    "path",
    ["/api/v1/stats?since=2026-01-01", "/api/v1/rewards?state=paid", "/api/v1/referrals?page=2"],
)
def test_unknown_query_parameters_are_422(client, admin, path):
    response = client.get(path, headers=admin)
    assert response.status_code == 422
    assert response.json["error"]["code"] == "validation_error"

"""Business events: each step writes its events once, in its own transaction; GET /api/v1/events."""

from datetime import timedelta

import pytest
from sqlalchemy import select

from referral_service.cli import main
from referral_service.domain import events, idempotency, refunds, rewards
from referral_service.domain.unit import Unit
from referral_service.extensions import db
from referral_service.models import (
    Customer,
    IdempotencyKey,
    OutboxEvent,
    Purchase,
    Referral,
    Reward,
    utcnow,
)
from tests.factories import api_key, auth
from tests.journey_helpers import (
    approve,
    buy,
    converted_friend,
    count,
    enrol,
    mature,
    pay,
    ready_for_payout,
    referred_friend,
    refund,
    set_program,
    sign_up,
    together,
)

ORDER = {
    "order_id": "o-1",
    "customer_external_id": "friend-1",
    "amount": "49.95",
    "currency": "EUR",
}


def written(app, type: str | None = None) -> list[dict]:
    """The events in the outbox, oldest first, as the API shows them (`type` alone, if given)."""
    with app.app_context():
        query = select(OutboxEvent).order_by(OutboxEvent.id)
        if type:
            query = query.where(OutboxEvent.type == type)
        return [events.jsonable(events.as_dict(e)) for e in db.session.scalars(query)]


def types(app) -> list[str]:
    return [event["type"] for event in written(app)]


def reward_item(client, admin, reward_id: int) -> dict:
    """A reward as GET /api/v1/rewards shows it."""
    page = client.get("/api/v1/rewards?limit=200", headers=admin).json
    return next(item for item in page["items"] if item["id"] == reward_id)


def referral_item(client, shop, referral_id: int) -> dict:
    """A referral as GET /api/v1/referrals shows it."""
    page = client.get("/api/v1/referrals?limit=200", headers=shop).json
    return next(item for item in page["items"] if item["id"] == referral_id)


@pytest.fixture
def program(client, admin):
    set_program(
        client,
        admin,
        referrer_reward={"type": "percent", "value": "10"},
        friend_reward={"type": "fixed", "value": "2.50"},
    )


# --- customers -----------------------------------------------------------------------------------


def test_enrolling_a_customer_writes_customer_enrolled_once(app, client, shop):
    created = client.put("/api/v1/customers/ref-1", json={"email": "r@example.com"}, headers=shop)
    assert created.status_code == 201
    [event] = written(app)
    assert event["type"] == "customer.enrolled"
    assert event["id"].startswith("evt_")
    assert event["data"] == created.json  # the customer as the API shows it
    assert "stats" not in event["data"]
    updated = client.put(
        "/api/v1/customers/ref-1", json={"email": "r@example.com", "name": "Ren"}, headers=shop
    )
    assert updated.status_code == 200
    again = client.put("/api/v1/customers/ref-1", json={"email": "r@example.com"}, headers=shop)
    assert again.status_code == 200
    assert types(app) == ["customer.enrolled"]  # updates enrol nobody


def test_import_writes_one_customer_enrolled_per_created_customer(
    app, client, runner, shop, tmp_path
):
    enrol(client, shop, "c-1", "one@example.com")
    path = tmp_path / "customers.csv"
    path.write_text(
        "external_id,email,name,locale\n"
        "c-1,one@example.com,Anna,pl\n"
        "c-2,two@example.com,Bea,hu\n"
        "c-3,three@example.com,,\n"
        "c-4,not-an-email,,\n"
    )
    result = runner.invoke(main, ["customers", "import", str(path)])
    assert result.exit_code == 0, result.output
    enrolled = written(app, "customer.enrolled")
    assert [e["data"]["external_id"] for e in enrolled] == ["c-1", "c-2", "c-3"]
    for event in enrolled[1:]:
        shown = client.get(f"/api/v1/customers/{event['data']['external_id']}", headers=shop).json
        shown.pop("stats")
        assert event["data"] == shown
    assert enrolled[1]["data"]["name"] == "Bea" and enrolled[1]["data"]["locale"] == "hu"
    # the same file again creates nobody
    assert runner.invoke(main, ["customers", "import", str(path)]).exit_code == 0
    assert len(written(app, "customer.enrolled")) == 3


# --- sign-ups ------------------------------------------------------------------------------------


def test_attributed_signup_writes_referral_attributed_once(app, client, shop):
    code = enrol(client, shop, "ref-1")
    first = sign_up(client, shop, "friend-1", referral_code=code)
    assert first.status_code == 201
    [event] = written(app, "referral.attributed")
    assert event["data"] == referral_item(client, shop, first.json["referral"]["id"])
    assert event["data"]["status"] == "attributed"
    replay = sign_up(client, shop, "friend-1", referral_code=code)
    assert (replay.status_code, replay.json) == (200, first.json)
    assert len(written(app, "referral.attributed")) == 1


def test_unattributed_signup_writes_no_event_and_a_late_code_attributes_once(app, client, shop):
    code = enrol(client, shop, "ref-1")
    plain = sign_up(client, shop, "friend-1")
    assert plain.json["attributed"] is False
    assert types(app) == ["customer.enrolled"]  # the referrer's; a sign-up enrols nobody
    late = sign_up(client, shop, "friend-1", referral_code=code)  # typed at checkout
    assert late.json["attributed"] is True
    [event] = written(app, "referral.attributed")
    assert event["data"] == referral_item(client, shop, late.json["referral"]["id"])
    sign_up(client, shop, "friend-1", referral_code=code)
    assert len(written(app, "referral.attributed")) == 1


# --- purchases -----------------------------------------------------------------------------------


def test_first_purchase_writes_converted_and_one_reward_created_each(
    app, client, shop, admin, program
):
    referred_friend(client, shop)
    first = client.post("/api/v1/purchases", json=ORDER, headers=shop)
    assert first.status_code == 201
    after = types(app)
    assert after.count("referral.converted") == 1
    assert after.count("reward.created") == 2
    assert "reward.approved" not in after
    [converted] = written(app, "referral.converted")
    assert converted["data"] == referral_item(client, shop, first.json["referral"]["id"])
    assert converted["data"]["status"] == "converted"
    created = written(app, "reward.created")
    assert sorted(e["data"]["beneficiary"] for e in created) == ["friend", "referrer"]
    for event in created:
        assert event["data"] == reward_item(client, admin, event["data"]["id"])
    # a replay of the order, and a later order, tell nothing new
    assert client.post("/api/v1/purchases", json=ORDER, headers=shop).status_code == 200
    later = {**ORDER, "order_id": "o-2", "amount": "80.00"}
    assert client.post("/api/v1/purchases", json=later, headers=shop).status_code == 201
    with_key = {**shop, "Idempotency-Key": "k-1"}
    assert client.post("/api/v1/purchases", json=ORDER, headers=with_key).status_code == 200
    assert types(app) == after


def test_a_reward_approved_at_once_is_also_told_approved(app, client, shop, admin, program):
    set_program(client, admin, hold_days=0, auto_approve_max_amount="10.00")
    body = converted_friend(client, shop)
    assert {r["status"] for r in body["rewards"]} == {"approved"}
    approved = written(app, "reward.approved")
    assert sorted(e["data"]["id"] for e in approved) == sorted(r["id"] for r in body["rewards"])
    assert [e["data"] for e in approved] == [e["data"] for e in written(app, "reward.created")]


def test_concurrent_first_purchases_convert_and_reward_once(app, shop, program, client):
    referred_friend(client, shop)

    def post(i):
        order = {**ORDER, "order_id": f"o-{i % 4}"}  # replays and other orders at once
        return app.test_client().post("/api/v1/purchases", json=order, headers=shop).status_code

    statuses = together(16, post)
    assert set(statuses) <= {200, 201}, statuses
    assert count(app, Purchase) == 4
    assert len(written(app, "referral.converted")) == 1
    created = written(app, "reward.created")
    assert sorted(e["data"]["beneficiary"] for e in created) == ["friend", "referrer"]
    with app.app_context():
        assert sorted(db.session.scalars(select(Reward.id))) == sorted(
            e["data"]["id"] for e in created
        )


# --- the hold and admin decisions ----------------------------------------------------------------


def test_mature_tells_each_reward_it_moved_once(app, client, shop, admin, program):
    set_program(client, admin, auto_approve_max_amount="3.00")
    body = converted_friend(client, shop)  # referrer 5.00 (waits), friend 2.50 (auto-approved)
    by_beneficiary = {r["beneficiary"]: r["id"] for r in body["rewards"]}
    assert mature(app, utcnow() + timedelta(days=15)) == {"awaiting_approval": 1, "approved": 1}
    matured = {e["data"]["id"]: e["data"] for e in written(app, "reward.matured")}
    assert matured[by_beneficiary["referrer"]]["status"] == "awaiting_approval"
    assert matured[by_beneficiary["friend"]]["status"] == "approved"
    for reward_id, data in matured.items():
        assert data == reward_item(client, admin, reward_id)
    [approved] = written(app, "reward.approved")
    assert approved["data"]["id"] == by_beneficiary["friend"]
    assert mature(app, utcnow() + timedelta(days=16)) == {"awaiting_approval": 0, "approved": 0}
    assert len(written(app, "reward.matured")) == 2


def test_concurrent_mature_runs_tell_each_reward_once(app, client, shop, admin, program):
    for n in range(4):
        converted_friend(client, shop, f"friend-{n}", referrer=f"ref-{n}")
    later = utcnow() + timedelta(days=15)
    results = together(6, lambda i: mature(app, later))
    assert sum(r["awaiting_approval"] for r in results) == 8
    matured = written(app, "reward.matured")
    with app.app_context():
        assert sorted(e["data"]["id"] for e in matured) == sorted(
            db.session.scalars(select(Reward.id))
        )


def test_approval_and_rejection_are_told(app, client, shop, admin, program):
    body = converted_friend(client, shop)
    first, second = (r["id"] for r in body["rewards"])
    mature(app, utcnow() + timedelta(days=15))
    approved = approve(client, admin, first, note="fine")
    assert approved.status_code == 200
    [event] = written(app, "reward.approved")
    assert event["data"] == approved.json == reward_item(client, admin, first)
    rejected = client.post(f"/api/v1/rewards/{second}/reject", json={"reason": "x"}, headers=admin)
    assert rejected.status_code == 200
    [event] = written(app, "reward.rejected")
    assert event["data"] == rejected.json
    assert event["data"]["status"] == "rejected" and event["data"]["note"] == "x"
    # refused decisions tell nothing
    assert approve(client, admin, first).status_code == 409
    assert len(written(app, "reward.approved")) == 1


# --- refunds -------------------------------------------------------------------------------------


def test_full_refund_reverses_rewards_and_requalifies_the_referral(
    app, client, shop, admin, program
):
    body = converted_friend(client, shop)
    done = refund(client, shop, "o-friend-1")
    assert done.status_code == 200
    reversed_ = written(app, "reward.reversed")
    assert sorted(e["data"]["id"] for e in reversed_) == sorted(r["id"] for r in body["rewards"])
    for event in reversed_:
        assert event["data"]["status"] == "reversed"
        assert event["data"] == reward_item(client, admin, event["data"]["id"])
    [requalified] = written(app, "referral.requalified")
    assert requalified["data"] == referral_item(client, shop, body["referral"]["id"])
    assert requalified["data"]["status"] == "attributed"
    assert requalified["data"]["order_id"] is None
    before = types(app)
    assert refund(client, shop, "o-friend-1").status_code == 200  # a replay
    assert types(app) == before
    # a later qualifying order converts it again: told again
    assert buy(client, shop, "o-again", "friend-1", "60.00").status_code == 201
    assert len(written(app, "referral.converted")) == 2


def test_partial_refund_replays_tell_nothing(app, client, shop, admin, program):
    converted_friend(client, shop)
    before = types(app)
    for _ in range(2):
        assert refund(client, shop, "o-friend-1", "5.00", refund_id="r-1").status_code == 200
    assert types(app) == before  # recomputed, not reversed: no event type for that


def test_refund_after_payout_tells_the_clawback(app, client, shop, admin, program):
    body = converted_friend(client, shop, amount="100.00")
    ids = ready_for_payout(app, client, admin, body)
    pay(client, admin, ids)
    answer = refund(client, shop, "o-friend-1", "40.00", refund_id="r-1").json
    clawbacks = written(app, "clawback.created")
    assert [(e["data"]["reward_id"], e["data"]["amount"]) for e in clawbacks] == [
        (c["reward_id"], c["amount"]) for c in answer["clawbacks"]
    ]
    data = clawbacks[0]["data"]
    assert data["currency"] == "EUR" and data["settled"] == "0.00"
    assert data["customer_external_id"] in ("ref-1", "friend-1")
    assert refund(client, shop, "o-friend-1", "40.00", refund_id="r-1").status_code == 200
    assert len(written(app, "clawback.created")) == len(clawbacks)
    assert "reward.reversed" not in types(app)  # paid rewards are clawed back, never reversed


# --- no ghost events -----------------------------------------------------------------------------


class Broken(Exception):
    """Raised inside a step after its writes."""


def fail(*args, **kwargs):
    raise Broken


def crashed(call) -> bool:
    """Whether a request broke (an unexpected error answers 500, or is raised in testing)."""
    try:
        return call().status_code == 500
    except Broken:
        return True


def test_a_purchase_that_fails_after_its_writes_leaves_no_event(
    app, client, shop, program, monkeypatch
):
    referred_friend(client, shop)
    before = types(app)
    monkeypatch.setattr(rewards, "_jsonable", fail)  # after the purchase, conversion, rewards
    assert crashed(lambda: client.post("/api/v1/purchases", json=ORDER, headers=shop))
    assert types(app) == before
    assert count(app, Purchase) == 0
    assert count(app, Reward) == 0
    assert count(app, Referral, Referral.status == "attributed") == 1
    monkeypatch.undo()
    assert client.post("/api/v1/purchases", json=ORDER, headers=shop).status_code == 201
    assert len(written(app, "referral.converted")) == 1


def test_a_refund_that_fails_after_its_writes_leaves_no_event(
    app, client, shop, program, monkeypatch
):
    converted_friend(client, shop)
    before = types(app)
    monkeypatch.setattr(refunds, "_answer", fail)  # after reversals and the requalification
    assert crashed(lambda: refund(client, shop, "o-friend-1"))
    assert types(app) == before
    assert count(app, Reward, Reward.status == "reversed") == 0
    assert count(app, Referral, Referral.status == "converted") == 1


def test_a_decision_that_fails_at_its_audit_leaves_no_event(
    app, client, shop, admin, program, monkeypatch
):
    reward_id = converted_friend(client, shop)["rewards"][0]["id"]
    mature(app, utcnow() + timedelta(days=15))
    before = types(app)
    monkeypatch.setattr(Unit, "audit", fail)  # after the reward's change
    assert crashed(lambda: approve(client, admin, reward_id))
    assert types(app) == before
    with app.app_context():
        assert db.session.get(Reward, reward_id).status == "awaiting_approval"


def test_an_enrolment_whose_event_cannot_be_shaped_is_not_written(app, client, shop, monkeypatch):
    monkeypatch.setattr(events, "shaped", fail)  # at commit, after every write of the step
    assert crashed(
        lambda: client.put("/api/v1/customers/ref-1", json={"email": "r@example.com"}, headers=shop)
    )
    assert types(app) == []
    assert client.get("/api/v1/customers/ref-1", headers=shop).status_code == 404


# --- GET /api/v1/events --------------------------------------------------------------------------


def test_events_are_for_admins(app, client, shop, admin):
    assert client.get("/api/v1/events").status_code == 401
    assert client.get("/api/v1/events", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/api/v1/events", headers=shop).status_code == 403
    assert client.get("/api/v1/events", headers=admin).status_code == 200
    enrol(client, shop, "ref-1")
    event_id = written(app)[0]["id"]
    assert client.get(f"/api/v1/events/{event_id}").status_code == 401
    assert client.get(f"/api/v1/events/{event_id}", headers=shop).status_code == 403
    assert client.get(f"/api/v1/events/{event_id}", headers=admin).status_code == 200


def test_events_page_newest_first_by_type(app, client, shop, admin, program):
    for n in range(3):
        enrol(client, shop, f"ref-{n}")
    converted_friend(client, shop)
    everything = written(app)
    assert len(everything) == 7  # 3 enrolled, attributed, converted, 2 rewards created
    seen, cursor = [], None
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/events", query_string=query, headers=admin)
        assert page.status_code == 200
        assert len(page.json["items"]) <= 2
        seen += page.json["items"]
        cursor = page.json["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(everything))  # newest first, each once, as the outbox holds it
    enrolled = client.get("/api/v1/events?type=customer.enrolled", headers=admin).json
    assert [e["data"]["external_id"] for e in enrolled["items"]] == ["ref-2", "ref-1", "ref-0"]
    assert {e["type"] for e in enrolled["items"]} == {"customer.enrolled"}
    assert enrolled["next_cursor"] is None
    one = everything[-1]
    assert client.get(f"/api/v1/events/{one['id']}", headers=admin).json == one
    nothing = client.get("/api/v1/events?type=payout.paid", headers=admin).json
    assert nothing == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    "query",
    [
        "type=reward.eaten",
        "type=",
        "type=reward.created%00",
        "limit=0",
        "limit=201",
        "limit=x",
        "cursor=not-a-cursor",
        "cursor=%00",
        "colour=blue",
    ],
)
def test_bad_event_queries_are_422(client, admin, query):
    response = client.get(f"/api/v1/events?{query}", headers=admin)
    assert response.status_code in (400, 422), (query, response.json)
    assert response.json["error"]["code"]


def test_an_unknown_type_lists_the_valid_ones(client, admin):
    response = client.get("/api/v1/events?type=reward.eaten", headers=admin)
    assert response.status_code == 422
    message = " ".join(response.json["error"]["fields"]["type"])
    assert all(kind in message for kind in events.EVENT_TYPES)


@pytest.mark.parametrize(
    "event_id",
    ["evt_00000000000000000000000000", "nope", "evt_%00", "x" * 300, "evt_" + "Z" * 26],
)
def test_an_unknown_event_is_404(client, admin, event_id):
    response = client.get(f"/api/v1/events/{event_id}", headers=admin)
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"


def test_events_are_in_the_openapi_spec(client):
    spec = client.get("/api/openapi.json").json
    assert "/api/v1/events" in spec["paths"]
    assert "/api/v1/events/{event_id}" in spec["paths"]
    parameters = spec["paths"]["/api/v1/events"]["get"]["parameters"]
    kinds = next(p for p in parameters if p["name"] == "type")["schema"]["enum"]
    assert kinds == list(events.EVENT_TYPES)


def test_a_second_admin_key_reads_the_same_events(app, client, shop):
    enrol(client, shop, "ref-1")
    with app.app_context():
        other = auth(api_key("admin", name="second-admin"))
    assert len(client.get("/api/v1/events", headers=other).json["items"]) == 1


# --- Idempotency-Key: the answer is saved in the step's transaction ------------------------------


def test_a_purchase_whose_answer_cannot_be_saved_is_not_recorded(
    app, client, shop, program, monkeypatch
):
    referred_friend(client, shop)
    before = types(app)
    headers = {**shop, "Idempotency-Key": "k-1"}
    monkeypatch.setattr(idempotency, "save", fail)  # after the step, in its transaction
    assert crashed(lambda: client.post("/api/v1/purchases", json=ORDER, headers=headers))
    assert types(app) == before
    assert count(app, Purchase) == 0
    with app.app_context():
        assert db.session.scalar(select(IdempotencyKey.key)) is None  # given back
    monkeypatch.undo()
    first = client.post("/api/v1/purchases", json=ORDER, headers=headers)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    replay = client.post("/api/v1/purchases", json=ORDER, headers=headers)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert len(written(app, "referral.converted")) == 1


def test_concurrent_keys_for_one_order_record_it_once(app, client, shop, program):
    referred_friend(client, shop)

    def post(i):
        headers = {**shop, "Idempotency-Key": f"k-{i}"}
        response = app.test_client().post("/api/v1/purchases", json=ORDER, headers=headers)
        return response.status_code, response.get_data()

    results = together(16, post)
    assert sorted(status for status, _ in results) == [200] * 15 + [201]
    assert len({body for _, body in results}) == 1
    assert count(app, Purchase) == 1
    assert len(written(app, "referral.converted")) == 1
    assert len(written(app, "reward.created")) == 2
    with app.app_context():  # every key holds the answer it gave
        saved = db.session.execute(select(IdempotencyKey.status_code, IdempotencyKey.body)).all()
    assert sorted(status for status, _ in saved) == [200] * 15 + [201]


# --- the shapes of objects other steps tell about ------------------------------------------------


def test_payout_events_show_the_payout_as_the_api_does(app, client, shop, admin, program):
    ids = ready_for_payout(app, client, admin, converted_friend(client, shop))
    created = client.post("/api/v1/payouts", json={"reward_ids": ids}, headers=admin)
    assert created.status_code == 201
    [event] = written(app, "payout.created")
    assert event["data"] == created.json
    paid = client.post(
        f"/api/v1/payouts/{created.json['id']}/mark-paid", json={"reference": "R"}, headers=admin
    )
    assert paid.status_code == 200
    [event] = written(app, "payout.paid")
    assert (
        event["data"]
        == paid.json
        == client.get(f"/api/v1/payouts/{created.json['id']}", headers=admin).json
    )


def test_a_customer_model_is_shown_as_the_api_shows_the_customer(app, client, shop):
    enrol(client, shop, "ref-1")
    shown = client.get("/api/v1/customers/ref-1", headers=shop).json
    shown.pop("stats")
    with app.test_request_context(), app.app_context():
        customer = db.session.scalar(select(Customer))
        assert events.jsonable(events.shaped(customer)) == shown

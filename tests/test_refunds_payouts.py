"""Refunds (reversal, recomputation, clawbacks) and payout batches (create, CSV, mark paid)."""

import csv
import io

import pytest
from sqlalchemy import select

from referral_service.extensions import db
from referral_service.models import AuditRecord, Clawback, Payout, Purchase, Reward
from tests.journey_helpers import (
    approve,
    buy,
    converted_friend,
    count,
    pay,
    ready_for_payout,
    refund,
    rewards_by_beneficiary,
    set_program,
)


def reward_states(app) -> dict:
    """`{(beneficiary external id, beneficiary): (amount, status)}` of every reward."""
    from referral_service.domain.money import from_minor

    with app.app_context():
        return {
            (r.customer.external_id, r.beneficiary): (
                from_minor(r.amount_minor, r.currency),
                r.status,
            )
            for r in db.session.scalars(select(Reward))
        }


def csv_rows(client, admin, payout_id: int) -> list[list[str]]:
    response = client.get(f"/api/v1/payouts/{payout_id}.csv", headers=admin)
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    return list(csv.reader(io.StringIO(response.get_data(as_text=True))))


@pytest.fixture
def both_rewards(client, admin):
    set_program(
        client,
        admin,
        referrer_reward={"type": "percent", "value": "10"},
        friend_reward={"type": "fixed", "value": "5.00"},
    )


# --- refunds before payout -----------------------------------------------------------------------


def test_full_refund_reverses_unpaid_rewards(app, client, shop, both_rewards):
    converted_friend(client, shop, amount="49.95")
    response = refund(client, shop, "o-friend-1")
    assert response.status_code == 200
    body = response.json
    assert (body["order_id"], body["refunded_total"], body["remaining"], body["currency"]) == (
        "o-friend-1",
        "49.95",
        "0.00",
        "EUR",
    )
    assert body["clawbacks"] == []
    assert sorted((r["beneficiary"], r["amount"], r["status"]) for r in body["rewards"]) == [
        ("friend", "5.00", "reversed"),
        ("referrer", "5.00", "reversed"),
    ]
    assert reward_states(app) == {
        ("ref-1", "referrer"): ("5.00", "reversed"),
        ("friend-1", "friend"): ("5.00", "reversed"),
    }


@pytest.mark.parametrize("status", ["awaiting_approval", "approved"])
def test_full_refund_reverses_rewards_awaiting_or_approved(app, client, shop, admin, status):
    set_program(client, admin, hold_days=0)
    body = converted_friend(client, shop)
    if status == "approved":
        assert approve(client, admin, body["rewards"][0]["id"]).status_code == 200
    reversed_rewards = refund(client, shop, "o-friend-1").json["rewards"]
    assert [(r["amount"], r["status"]) for r in reversed_rewards] == [("10.00", "reversed")]
    assert approve(client, admin, body["rewards"][0]["id"]).status_code == 409


def test_partial_refund_leaving_less_than_the_minimum_reverses(app, client, shop, admin):
    set_program(client, admin, min_order_amount="20.00")
    converted_friend(client, shop, amount="30.00")
    kept = refund(client, shop, "o-friend-1", "10.00").json
    assert (kept["refunded_total"], kept["remaining"]) == ("10.00", "20.00")
    assert [(r["amount"], r["status"]) for r in kept["rewards"]] == [("10.00", "pending")]
    assert reward_states(app) == {("ref-1", "referrer"): ("10.00", "pending")}
    under = refund(client, shop, "o-friend-1", "0.01").json
    assert under["remaining"] == "19.99"
    assert (under["refunded_total"], [r["status"] for r in under["rewards"]]) == (
        "10.01",
        ["reversed"],
    )
    assert reward_states(app) == {("ref-1", "referrer"): ("10.00", "reversed")}


def test_partial_refund_recomputes_percent_rewards_on_what_remains(
    app, client, shop, admin, both_rewards
):
    body = converted_friend(client, shop, amount="49.95")
    assert rewards_by_beneficiary(body) == {
        "referrer": ("5.00", "pending"),
        "friend": ("5.00", "pending"),
    }
    first = refund(client, shop, "o-friend-1", "10.00").json
    assert (first["remaining"], first["clawbacks"]) == ("39.95", [])
    assert sorted((r["beneficiary"], r["amount"]) for r in first["rewards"]) == [
        ("friend", "5.00"),
        ("referrer", "4.00"),
    ]
    # 10% of 39.95 = 3.995 -> 4.00; the fixed friend reward stays
    assert reward_states(app) == {
        ("ref-1", "referrer"): ("4.00", "pending"),
        ("friend-1", "friend"): ("5.00", "pending"),
    }
    refund(client, shop, "o-friend-1", "17.50")  # 22.45 left: 2.245 -> 2.25
    assert reward_states(app)[("ref-1", "referrer")] == ("2.25", "pending")
    listed = client.get("/api/v1/rewards?referrer=ref-1", headers=admin).json["items"]
    mine = [(r["amount"], r["status"]) for r in listed if r["beneficiary"] == "referrer"]
    assert mine == [("2.25", "pending")]


def test_refund_errors(app, client, shop):
    converted_friend(client, shop, amount="30.00")
    unknown = refund(client, shop, "no-such-order")
    assert unknown.status_code == 404
    assert unknown.json["error"]["code"] == "not_found"
    too_much = refund(client, shop, "o-friend-1", "30.01")
    assert too_much.status_code == 422
    assert "amount" in too_much.json["error"]["fields"]
    for bad in ("0", "0.00", "-1.00", "1.001", 2.5, "abc"):
        response = refund(client, shop, "o-friend-1", bad)
        assert response.status_code == 422, (bad, response.json)
    with app.app_context():
        purchase = db.session.scalar(select(Purchase))
        assert purchase.refunded_minor == 0
    assert reward_states(app) == {("ref-1", "referrer"): ("10.00", "pending")}
    assert refund(client, shop, "o-friend-1", "12.00").json["remaining"] == "18.00"
    after = refund(client, shop, "o-friend-1", "18.01")
    assert after.status_code == 422
    assert refund(client, shop, "o-friend-1", "18.00").json["remaining"] == "0.00"
    assert refund(client, shop, "o-friend-1", "0.01").status_code == 422


def test_refund_of_an_order_without_rewards(client, shop):
    from tests.journey_helpers import enrol

    enrol(client, shop, "plain")
    buy(client, shop, "o-plain", "plain", "12.00")
    body = refund(client, shop, "o-plain", "2.00").json
    assert body == {
        "order_id": "o-plain",
        "refunded_total": "2.00",
        "remaining": "10.00",
        "currency": "EUR",
        "rewards": [],
        "clawbacks": [],
    }


def test_refund_of_a_reward_in_an_unpaid_batch_takes_it_out(app, client, shop, admin):
    set_program(client, admin, hold_days=0)
    first = converted_friend(client, shop, "friend-1")
    second = converted_friend(client, shop, "friend-2", referrer="ref-2")
    ids = [first["rewards"][0]["id"], second["rewards"][0]["id"]]
    for reward_id in ids:
        approve(client, admin, reward_id)
    batch = client.post("/api/v1/payouts", json={"all_approved": True}, headers=admin).json
    assert batch["reward_ids"] == sorted(ids)
    refund(client, shop, "o-friend-1")
    shown = client.get(f"/api/v1/payouts/{batch['id']}", headers=admin).json
    assert shown["reward_ids"] == [ids[1]]
    assert shown["totals"] == [{"currency": "EUR", "amount": "10.00"}]
    paid = client.post(
        f"/api/v1/payouts/{batch['id']}/mark-paid", json={"reference": "R-1"}, headers=admin
    ).json
    assert paid["reward_count"] == 1
    assert reward_states(app) == {
        ("ref-1", "referrer"): ("10.00", "reversed"),
        ("ref-2", "referrer"): ("10.00", "paid"),
    }


# --- refunds after payout: clawbacks -------------------------------------------------------------


@pytest.fixture
def paid_referrer(app, client, shop, admin):
    """ref-1 was paid 10.00 (10% of friend-1's order o-friend-1 of 100.00)."""
    set_program(client, admin, referrer_reward={"type": "percent", "value": "10"})
    body = converted_friend(client, shop, "friend-1", amount="100.00")
    ids = ready_for_payout(app, client, admin, body)
    pay(client, admin, ids, reference="SEPA-PAID")
    assert reward_states(app) == {("ref-1", "referrer"): ("10.00", "paid")}
    return ids[0]


def batch_of(app, client, admin, purchase_body: dict) -> dict:
    """A payout batch of a purchase's rewards, matured and approved for it."""
    ids = ready_for_payout(app, client, admin, purchase_body)
    return client.post("/api/v1/payouts", json={"reward_ids": ids}, headers=admin).json


def nets(batch: dict) -> list[tuple[str, str, str]]:
    """`(gross, clawbacks, net)` of each line of a batch."""
    return [(line["gross"], line["clawbacks"], line["net"]) for line in batch["lines"]]


def test_refund_after_payout_records_a_clawback(app, client, shop, paid_referrer):
    partial = refund(client, shop, "o-friend-1", "40.00").json
    assert [(r["amount"], r["status"]) for r in partial["rewards"]] == [("10.00", "paid")]
    assert partial["clawbacks"] == [
        {"reward_id": paid_referrer, "amount": "4.00", "currency": "EUR"}
    ]
    rest = refund(client, shop, "o-friend-1").json
    assert rest["clawbacks"] == [  # every clawback of the order, the earlier one too
        {"reward_id": paid_referrer, "amount": "4.00", "currency": "EUR"},
        {"reward_id": paid_referrer, "amount": "6.00", "currency": "EUR"},
    ]
    assert reward_states(app) == {("ref-1", "referrer"): ("10.00", "paid")}  # paid stays paid
    with app.app_context():
        amounts = sorted(db.session.scalars(select(Clawback.amount_minor)))
        assert amounts == [400, 600]


def test_next_payout_nets_the_clawback(app, client, shop, admin, paid_referrer):
    refund(client, shop, "o-friend-1", "40.00")  # clawback 4.00
    body = converted_friend(client, shop, "friend-2", amount="150.00")  # 15.00
    other = converted_friend(client, shop, "friend-3", referrer="ref-2", amount="20.00")  # 2.00
    ids = ready_for_payout(app, client, admin, body) + ready_for_payout(app, client, admin, other)
    created = client.post("/api/v1/payouts", json={"reward_ids": ids}, headers=admin)
    assert created.status_code == 201
    lines = {line["customer_external_id"]: line for line in created.json["lines"]}
    assert lines["ref-1"] == {
        "customer_external_id": "ref-1",
        "email": "ref-1@example.com",
        "name": None,
        "rewards": 1,
        "currency": "EUR",
        "gross": "15.00",
        "clawbacks": "4.00",
        "net": "11.00",
    }
    assert (lines["ref-2"]["gross"], lines["ref-2"]["clawbacks"], lines["ref-2"]["net"]) == (
        "2.00",
        "0.00",
        "2.00",
    )
    assert created.json["totals"] == [{"currency": "EUR", "amount": "13.00"}]
    rows = csv_rows(client, admin, created.json["id"])
    assert rows == [
        [
            "customer_external_id",
            "email",
            "name",
            "rewards",
            "currency",
            "gross",
            "clawbacks",
            "net",
        ],
        ["ref-1", "ref-1@example.com", "", "1", "EUR", "15.00", "4.00", "11.00"],
        ["ref-2", "ref-2@example.com", "", "1", "EUR", "2.00", "0.00", "2.00"],
        ["TOTAL", "", "", "2", "EUR", "", "", "13.00"],
    ]
    # a clawback is netted once
    refund(client, shop, "o-friend-3")
    later = converted_friend(client, shop, "friend-4", amount="30.00")
    ids = ready_for_payout(app, client, admin, later)
    again = client.post("/api/v1/payouts", json={"reward_ids": ids}, headers=admin).json
    assert nets(again) == [("3.00", "0.00", "3.00")]


def test_clawback_larger_than_the_next_payout_takes_what_it_can(
    app, client, shop, admin, paid_referrer
):
    refund(client, shop, "o-friend-1")  # clawback 10.00
    small = converted_friend(client, shop, "friend-2", amount="50.00")  # 5.00
    first = batch_of(app, client, admin, small)
    assert nets(first) == [("5.00", "5.00", "0.00")]
    big = converted_friend(client, shop, "friend-3", amount="120.00")  # 12.00
    second = batch_of(app, client, admin, big)
    assert nets(second) == [("12.00", "5.00", "7.00")]


def test_rejecting_a_batched_reward_gives_its_clawback_back(
    app, client, shop, admin, paid_referrer
):
    refund(client, shop, "o-friend-1", "40.00")  # clawback 4.00
    body = converted_friend(client, shop, "friend-2", amount="150.00")
    ids = ready_for_payout(app, client, admin, body)
    batch = client.post("/api/v1/payouts", json={"reward_ids": ids}, headers=admin).json
    assert batch["lines"][0]["clawbacks"] == "4.00"
    rejected = client.post(
        f"/api/v1/rewards/{ids[0]}/reject", json={"reason": "order was fraudulent"}, headers=admin
    )
    assert rejected.status_code == 200 and rejected.json["payout_id"] is None
    shown = client.get(f"/api/v1/payouts/{batch['id']}", headers=admin)
    assert shown.status_code == 200, shown.json
    assert (shown.json["reward_ids"], shown.json["lines"], shown.json["totals"]) == ([], [], [])
    # the clawback is open again, and the next payout nets it
    later = converted_friend(client, shop, "friend-3", amount="60.00")
    again = batch_of(app, client, admin, later)
    assert nets(again) == [("6.00", "4.00", "2.00")]


def test_refund_shrinking_a_batched_reward_keeps_the_batch_net_non_negative(
    app, client, shop, admin, paid_referrer
):
    refund(client, shop, "o-friend-1", "50.00")  # clawback 5.00
    body = converted_friend(client, shop, "friend-2", amount="60.00")  # 6.00
    ids = ready_for_payout(app, client, admin, body)
    batch = client.post("/api/v1/payouts", json={"reward_ids": ids}, headers=admin).json
    assert nets(batch) == [("6.00", "5.00", "1.00")]
    refund(client, shop, "o-friend-2", "20.00")  # the batched reward becomes 4.00
    shown = client.get(f"/api/v1/payouts/{batch['id']}", headers=admin).json
    assert nets(shown) == [("4.00", "4.00", "0.00")]
    # the 1.00 it no longer covers waits for the next batch
    later = converted_friend(client, shop, "friend-3", amount="30.00")  # 3.00
    again = batch_of(app, client, admin, later)
    assert nets(again) == [("3.00", "1.00", "2.00")]


# --- payouts -------------------------------------------------------------------------------------


@pytest.fixture
def approved_three(app, client, shop, admin):
    """Three approved rewards: ref-1 10.00 and 12.50, ref-2 7.25 (and one awaiting, ref-3)."""
    set_program(client, admin, hold_days=0, referrer_reward={"type": "percent", "value": "10"})
    ids = []
    for friend, referrer, amount in (
        ("f-1", "ref-1", "100.00"),
        ("f-2", "ref-1", "125.00"),
        ("f-3", "ref-2", "72.50"),
    ):
        body = converted_friend(client, shop, friend, referrer=referrer, amount=amount)
        ids.append(body["rewards"][0]["id"])
        assert approve(client, admin, ids[-1]).status_code == 200
    waiting = converted_friend(client, shop, "f-4", referrer="ref-3")["rewards"][0]["id"]
    return ids, waiting


def test_payout_of_all_approved(app, client, shop, admin, approved_three):
    ids, waiting = approved_three
    response = client.post("/api/v1/payouts", json={"all_approved": True}, headers=admin)
    assert response.status_code == 201
    batch = response.json
    assert batch["status"] == "created" and batch["paid_at"] is None and batch["reference"] is None
    assert batch["reward_ids"] == sorted(ids) and waiting not in batch["reward_ids"]
    assert batch["reward_count"] == 3
    assert batch["totals"] == [{"currency": "EUR", "amount": "29.75"}]
    assert [(ln["customer_external_id"], ln["rewards"], ln["net"]) for ln in batch["lines"]] == [
        ("ref-1", 2, "22.50"),
        ("ref-2", 1, "7.25"),
    ]
    assert batch["created_by"].startswith("api-key:")
    assert client.get(f"/api/v1/payouts/{batch['id']}", headers=admin).json == batch
    rows = csv_rows(client, admin, batch["id"])
    assert rows[1:] == [
        ["ref-1", "ref-1@example.com", "", "2", "EUR", "22.50", "0.00", "22.50"],
        ["ref-2", "ref-2@example.com", "", "1", "EUR", "7.25", "0.00", "7.25"],
        ["TOTAL", "", "", "3", "EUR", "", "", "29.75"],
    ]
    # nothing left to batch
    empty = client.post("/api/v1/payouts", json={"all_approved": True}, headers=admin)
    assert empty.status_code == 409


def test_payout_of_chosen_rewards(client, admin, approved_three):
    ids, _ = approved_three
    batch = client.post("/api/v1/payouts", json={"reward_ids": [ids[2]]}, headers=admin)
    assert batch.status_code == 201
    assert batch.json["reward_ids"] == [ids[2]]
    assert batch.json["totals"] == [{"currency": "EUR", "amount": "7.25"}]
    already = client.post("/api/v1/payouts", json={"reward_ids": [ids[2]]}, headers=admin)
    assert already.status_code == 409
    rest = client.post("/api/v1/payouts", json={"all_approved": True}, headers=admin).json
    assert rest["reward_ids"] == sorted(ids[:2])


def test_payout_naming_a_reward_that_is_not_approved_is_409_and_batches_nothing(
    app, client, admin, approved_three
):
    ids, waiting = approved_three
    for chosen in ([ids[0], waiting], [ids[0], 999_999]):
        response = client.post("/api/v1/payouts", json={"reward_ids": chosen}, headers=admin)
        assert response.status_code == 409
        assert response.json["error"]["code"] == "conflict"
    assert count(app, Payout) == 0
    assert count(app, Reward, Reward.payout_id.is_not(None)) == 0


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"all_approved": False},
        {"reward_ids": []},
        {"reward_ids": [1], "all_approved": True},
        {"reward_ids": ["1"]},
        {"reward_ids": [0]},
    ],
)
def test_payout_bad_requests_are_422(client, admin, body):
    assert client.post("/api/v1/payouts", json=body, headers=admin).status_code == 422


def test_mark_paid(app, client, admin, approved_three):
    ids, _ = approved_three
    batch = client.post("/api/v1/payouts", json={"all_approved": True}, headers=admin).json
    missing = client.post(f"/api/v1/payouts/{batch['id']}/mark-paid", json={}, headers=admin)
    assert missing.status_code == 422
    blank = client.post(
        f"/api/v1/payouts/{batch['id']}/mark-paid", json={"reference": "  "}, headers=admin
    )
    assert blank.status_code == 422
    paid = client.post(
        f"/api/v1/payouts/{batch['id']}/mark-paid",
        json={"reference": " SEPA-2026-11 "},
        headers=admin,
    )
    assert paid.status_code == 200
    assert (paid.json["status"], paid.json["reference"]) == ("paid", "SEPA-2026-11")
    assert paid.json["paid_at"] is not None
    with app.app_context():
        statuses = dict(db.session.execute(select(Reward.id, Reward.status)).all())
    assert [statuses[i] for i in ids] == ["paid", "paid", "paid"]
    again = client.post(
        f"/api/v1/payouts/{batch['id']}/mark-paid", json={"reference": "SEPA-X"}, headers=admin
    )
    assert again.status_code == 409
    shown = client.get(f"/api/v1/payouts/{batch['id']}", headers=admin).json
    assert shown["reference"] == "SEPA-2026-11"
    reject = client.post(f"/api/v1/rewards/{ids[0]}/reject", json={"reason": "x"}, headers=admin)
    assert reject.status_code == 409  # a paid reward cannot be rejected


def test_unknown_payout_is_404(client, admin):
    assert client.get("/api/v1/payouts/999", headers=admin).status_code == 404
    assert client.get("/api/v1/payouts/999.csv", headers=admin).status_code == 404
    missing = client.post("/api/v1/payouts/999/mark-paid", json={"reference": "R"}, headers=admin)
    assert missing.status_code == 404


def test_csv_defuses_formulas_in_names(app, client, shop, admin):
    set_program(client, admin, hold_days=0)
    body = converted_friend(client, shop, "f-1", referrer="=cmd")
    client.put(
        "/api/v1/customers/=cmd",
        json={"email": "evil@example.com", "name": '=HYPERLINK("x")'},
        headers=shop,
    )
    approve(client, admin, body["rewards"][0]["id"])
    batch = client.post("/api/v1/payouts", json={"all_approved": True}, headers=admin).json
    rows = csv_rows(client, admin, batch["id"])
    assert rows[1][:3] == ["'=cmd", "evil@example.com", '\'=HYPERLINK("x")']


def test_payout_actions_are_audited(app, client, admin, approved_three):
    batch = client.post("/api/v1/payouts", json={"all_approved": True}, headers=admin).json
    client.post(
        f"/api/v1/payouts/{batch['id']}/mark-paid", json={"reference": "R-9"}, headers=admin
    )
    with app.app_context():
        records = db.session.scalars(
            select(AuditRecord).where(AuditRecord.subject_type == "payout")
        ).all()
        assert [(r.action, r.subject_id) for r in records] == [
            ("payout.create", str(batch["id"])),
            ("payout.mark_paid", str(batch["id"])),
        ]
        assert records[0].actor == batch["created_by"]
        assert records[0].before is None
        assert records[0].after == {
            "rewards": 3,
            "totals": [{"currency": "EUR", "amount": "29.75"}],
        }
        assert records[1].before == {"status": "created"}
        assert records[1].after == {
            "status": "paid",
            "reference": "R-9",
            "reward_ids": batch["reward_ids"],
        }

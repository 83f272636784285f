"""The whole journey through the API: enrol, click, sign up, buy, mature, approve, pay out."""

import csv
import io
from urllib.parse import parse_qs, urlsplit

from referral_service.domain import rewards
from referral_service.models import utcnow


def test_journey(app, client, shop, admin):
    client.patch(
        "/api/v1/program",
        json={"hold_days": 14, "friend_reward": {"type": "percent", "value": "10"}},
        headers=admin,
    )
    ref = client.put("/api/v1/customers/ref-1", json={"email": "ref@example.com"}, headers=shop)
    code = ref.json["referral"]["code"]
    location = client.get(f"/r/{code}?via=email").headers["Location"]
    click_id = parse_qs(urlsplit(location).query)["click_id"][0]

    signup = client.post(
        "/api/v1/signups",
        json={"external_id": "friend-1", "email": "friend@example.com", "click_id": click_id},
        headers=shop,
    )
    assert signup.status_code == 201, signup.json
    assert signup.json["attributed"] is True
    assert signup.json["referral"]["referrer_external_id"] == "ref-1"

    purchase = client.post(
        "/api/v1/purchases",
        json={
            "order_id": "o-1",
            "customer_external_id": "friend-1",
            "amount": "49.95",
            "currency": "EUR",
        },
        headers=shop,
    )
    assert purchase.status_code == 201, purchase.json
    body = purchase.json
    assert body["first_purchase"] is True
    assert body["referral"]["status"] == "converted"
    amounts = {r["beneficiary"]: (r["amount"], r["status"]) for r in body["rewards"]}
    assert amounts == {"referrer": ("10.00", "pending"), "friend": ("5.00", "pending")}
    replay = client.post(
        "/api/v1/purchases",
        json={
            "order_id": "o-1",
            "customer_external_id": "friend-1",
            "amount": "49.95",
            "currency": "EUR",
        },
        headers=shop,
    )
    assert replay.status_code == 200 and replay.json == body

    with app.app_context():
        from datetime import timedelta

        assert rewards.mature(now=utcnow() + timedelta(days=15)) == {
            "awaiting_approval": 2,
            "approved": 0,
        }
    listing = client.get("/api/v1/rewards?status=awaiting_approval", headers=admin).json
    assert len(listing["items"]) == 2
    for item in listing["items"]:
        approved = client.post(f"/api/v1/rewards/{item['id']}/approve", json={}, headers=admin)
        assert approved.status_code == 200 and approved.json["status"] == "approved"
    again = client.post(f"/api/v1/rewards/{item['id']}/approve", json={}, headers=admin)
    assert again.status_code == 409

    payout = client.post("/api/v1/payouts", json={"all_approved": True}, headers=admin)
    assert payout.status_code == 201, payout.json
    pid = payout.json["id"]
    rows = list(
        csv.reader(
            io.StringIO(
                client.get(f"/api/v1/payouts/{pid}.csv", headers=admin).get_data(as_text=True)
            )
        )
    )
    assert rows[0][0] == "customer_external_id" and len(rows) == 4
    paid = client.post(
        f"/api/v1/payouts/{pid}/mark-paid", json={"reference": "SEPA-1"}, headers=admin
    )
    assert paid.status_code == 200 and paid.json["status"] == "paid"
    stats = client.get("/api/v1/customers/ref-1", headers=shop).json["stats"]
    assert stats == {
        "clicks": 1,
        "signups": 1,
        "conversions": 1,
        "rewards": {
            "pending": 0,
            "awaiting_approval": 0,
            "approved": 0,
            "paid": 1,
            "clawed_back": 0,
        },
        "amounts": {
            "pending": {},
            "awaiting_approval": {},
            "approved": {},
            "paid": {"EUR": "10.00"},
            "clawed_back": {},
        },
    }
    funnel = client.get("/api/v1/stats", headers=admin).json
    assert funnel["by_channel"]["email"] == {"clicks": 1, "signups": 1, "conversions": 1}

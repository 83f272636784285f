"""Program settings: defaults, changes by an admin, and validation as a whole."""

import pytest

from referral_service import create_app
from referral_service.extensions import db
from tests.conftest import app_config
from tests.journey_helpers import converted_friend, set_program

DEFAULTS = {
    "landing_url": None,
    "currency": "EUR",
    "referrer_reward": {"type": "fixed", "value": "10.00"},
    "friend_reward": {"type": "none", "value": None},
    "friend_offer": None,
    "min_order_amount": "0.00",
    "attribution_window_days": 30,
    "conversion_window_days": 90,
    "hold_days": 14,
    "auto_approve_max_amount": None,
    "max_rewards_per_referrer_per_month": None,
    "paused": False,
    "milestones": [],
    "velocity_max_signups": 10,
    "velocity_window_hours": 24,
    "coupon_sites": [],
    "risk_retention_days": 90,
    "landing_mode": "redirect",
    "default_locale": "en",
    "share_messages": {},
    "notifications": {"reward_earned": False, "reward_approved": False, "reward_paid": False},
}


def test_defaults(client, shop):
    response = client.get("/api/v1/program", headers=shop)
    assert response.status_code == 200
    assert response.json == DEFAULTS


def test_patch_changes_only_what_is_sent(client, admin):
    response = client.patch(
        "/api/v1/program",
        json={
            "landing_url": "https://shop.example/welcome?x=1",
            "referrer_reward": {"type": "percent", "value": "12.5"},
            "friend_reward": {"type": "fixed", "value": "5"},
            "friend_offer": {"type": "percent", "value": "10", "description": "10% off"},
            "min_order_amount": "20",
            "hold_days": 0,
            "auto_approve_max_amount": "15.00",
            "max_rewards_per_referrer_per_month": 5,
            "paused": True,
        },
        headers=admin,
    )
    assert response.status_code == 200, response.json
    body = response.json
    assert body["referrer_reward"] == {"type": "percent", "value": "12.5"}
    assert body["friend_reward"] == {"type": "fixed", "value": "5.00"}
    assert body["friend_offer"] == {"type": "percent", "value": "10", "description": "10% off"}
    assert body["min_order_amount"] == "20.00"
    assert body["hold_days"] == 0
    assert body["attribution_window_days"] == 30
    assert body["paused"] is True
    assert client.get("/api/v1/program", headers=admin).json == body


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"attribution_window_days": -1}, "attribution_window_days"),
        ({"hold_days": 1.5}, "hold_days"),
        ({"hold_days": "3"}, "hold_days"),
        ({"referrer_reward": {"type": "points", "value": "3"}}, "referrer_reward.type"),
        ({"referrer_reward": {"type": "fixed", "value": "-1"}}, "referrer_reward.value"),
        ({"referrer_reward": {"type": "fixed", "value": "1.001"}}, "referrer_reward.value"),
        ({"referrer_reward": {"type": "fixed", "value": "NaN"}}, "referrer_reward.value"),
        ({"referrer_reward": {"type": "fixed", "value": 10.5}}, "referrer_reward.value"),
        ({"referrer_reward": {"type": "percent", "value": "101"}}, "referrer_reward.value"),
        ({"friend_reward": {"type": "none", "value": "5"}}, "friend_reward.value"),
        ({"currency": "XYZ"}, "currency"),
        ({"landing_url": "javascript:alert(1)"}, "landing_url"),
        ({"min_order_amount": "ten"}, "min_order_amount"),
        ({"friend_offer": {"type": "gift"}}, "friend_offer.type"),
        ({"max_rewards_per_referrer_per_month": -2}, "max_rewards_per_referrer_per_month"),
        ({"paused": "maybe"}, "paused"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_settings_are_422_and_change_nothing(client, admin, change, field):
    response = client.patch("/api/v1/program", json=change, headers=admin)
    assert response.status_code == 422, response.json
    error = response.json["error"]
    assert error["code"] == "validation_error"
    assert field in error["fields"], error
    assert client.get("/api/v1/program", headers=admin).json == DEFAULTS


def test_currency_change_checks_amounts_against_it(client, admin):
    client.patch(
        "/api/v1/program",
        json={"referrer_reward": {"type": "fixed", "value": "10.50"}},
        headers=admin,
    )
    response = client.patch("/api/v1/program", json={"currency": "JPY"}, headers=admin)
    assert response.status_code == 422
    assert "referrer_reward.value" in response.json["error"]["fields"]
    response = client.patch(
        "/api/v1/program",
        json={
            "currency": "JPY",
            "referrer_reward": {"type": "fixed", "value": "1000"},
            "min_order_amount": "0",
        },
        headers=admin,
    )
    assert response.status_code == 200, response.json
    assert response.json["referrer_reward"]["value"] == "1000"


def test_empty_patch_is_422(client, admin):
    response = client.patch("/api/v1/program", json={}, headers=admin)
    assert response.status_code == 422


def test_landing_url_is_used_by_share_links(client, admin, shop):
    client.patch(
        "/api/v1/program", json={"landing_url": "https://shop.example/hi?src=a"}, headers=admin
    )
    code = client.put("/api/v1/customers/c1", json={"email": "a@example.com"}, headers=shop).json[
        "referral"
    ]["code"]
    location = client.get(f"/r/{code}").headers["Location"]
    assert location.startswith(f"https://shop.example/hi?src=a&ref={code}&click_id=")


def test_a_fixed_friend_offer_does_not_block_later_changes(client, admin):
    """The stored offer carries its `currency`; changing another setting must still work."""
    offer = {"type": "fixed", "value": "5.00"}
    assert client.patch("/api/v1/program", json={"friend_offer": offer}, headers=admin).json[
        "friend_offer"
    ] == {**offer, "currency": "EUR"}
    response = client.patch("/api/v1/program", json={"paused": True}, headers=admin)
    assert response.status_code == 200, response.json
    assert response.json["friend_offer"] == {**offer, "currency": "EUR"}
    sent = client.patch(
        "/api/v1/program", json={"friend_offer": {**offer, "currency": "EUR"}}, headers=admin
    )
    assert sent.status_code == 422  # a client does not send it: it follows the program's


def test_a_change_made_by_another_process_decides_the_next_purchase_at_once(
    app, client, shop, admin, database_url
):
    """Each gunicorn worker and the worker process has its own cache: business steps read the
    settings in their own transaction, so a reward changed on one process is paid on the next
    purchase served by any other (a public page may show the old copy for CACHE_SECONDS)."""
    other = create_app(app_config(database_url, DATABASE_CONNECT_TIMEOUT=15.0))
    other_client = other.test_client()
    first = converted_friend(other_client, shop, "friend-1")  # the other process reads 10.00
    assert first["rewards"][0]["amount"] == "10.00"
    set_program(client, admin, referrer_reward={"type": "fixed", "value": "25.00"})
    second = converted_friend(other_client, shop, "friend-2", referrer="ref-2")
    assert second["rewards"][0]["amount"] == "25.00"
    assert other_client.get("/api/v1/program", headers=admin).json["referrer_reward"] == {
        "type": "fixed",
        "value": "25.00",
    }
    with other.app_context():
        db.engine.dispose()

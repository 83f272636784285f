"""The customers API: enrol, replace, read with stats, rotate the code."""

import threading

from referral_service.domain.codes import normalize
from tests.conftest import BASE_URL


def put(client, headers, external_id="c1", **body):
    body.setdefault("email", "ada@example.com")
    return client.put(f"/api/v1/customers/{external_id}", json=body, headers=headers)


def test_enrol_new_customer_is_201_with_referral_block(client, shop):
    response = put(client, shop, name="Ada Kowalska", locale="pl")
    assert response.status_code == 201
    body = response.json
    assert body["external_id"] == "c1"
    assert body["email"] == "ada@example.com"
    assert body["name"] == "Ada Kowalska"
    assert body["locale"] == "pl"
    referral = body["referral"]
    code = referral["code"]
    assert normalize(code) == code and len(code) == 16
    assert referral["display_code"].replace("-", "") == code
    assert referral["share_url"] == f"{BASE_URL}/r/{code}"
    assert referral["qr_png_url"] == f"{BASE_URL}/r/{code}/qr.png"
    assert referral["qr_svg_url"] == f"{BASE_URL}/r/{code}/qr.svg"
    assert body["created_at"].endswith("+00:00")


def test_put_again_updates_and_keeps_code(client, shop):
    first = put(client, shop, name="Ada").json
    second = put(client, shop, email="ada.k@example.com", locale="en-GB")
    assert second.status_code == 200
    assert second.json["email"] == "ada.k@example.com"
    assert second.json["locale"] == "en_GB"
    assert second.json["name"] is None  # PUT replaces: a field left out is cleared
    assert second.json["referral"]["code"] == first["referral"]["code"]
    assert second.json["created_at"] == first["created_at"]


def test_get_has_stats_with_zero_counters(client, shop):
    put(client, shop)
    body = client.get("/api/v1/customers/c1", headers=shop).json
    assert body["stats"] == {
        "clicks": 0,
        "signups": 0,
        "conversions": 0,
        "rewards": {
            "pending": 0,
            "awaiting_approval": 0,
            "approved": 0,
            "paid": 0,
            "clawed_back": 0,
        },
        "amounts": {
            "pending": {},
            "awaiting_approval": {},
            "approved": {},
            "paid": {},
            "clawed_back": {},
        },
    }


def test_clicks_are_counted(client, shop):
    """Three friends' visits are three clicks; the same friend again within the hour is not."""
    code = put(client, shop).json["referral"]["code"]
    for i, via in enumerate(("link", "qr", "whatsapp", "whatsapp")):
        friend = {"REMOTE_ADDR": f"2001:db8::{min(i, 2)}"}
        assert client.get(f"/r/{code}?via={via}", environ_base=friend).status_code == 302
    client.application.extensions["clicks"].flush()
    assert client.get("/api/v1/customers/c1", headers=shop).json["stats"]["clicks"] == 3


def test_unknown_customer_is_404(client, shop):
    response = client.get("/api/v1/customers/nobody", headers=shop)
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"


def test_rotate_revokes_old_code(client, shop):
    old = put(client, shop).json["referral"]["code"]
    response = client.post("/api/v1/customers/c1/referral-code/rotate", headers=shop)
    assert response.status_code == 200
    new = response.json["code"]
    assert new != old
    assert response.json["share_url"] == f"{BASE_URL}/r/{new}"
    assert client.get("/api/v1/customers/c1", headers=shop).json["referral"]["code"] == new
    assert "ref=" not in client.get(f"/r/{old}").headers["Location"]
    assert f"ref={new}" in client.get(f"/r/{new}").headers["Location"]


def test_rotate_unknown_customer_is_404(client, shop):
    response = client.post("/api/v1/customers/ghost/referral-code/rotate", headers=shop)
    assert response.status_code == 404


def test_external_id_with_odd_but_valid_characters(client, shop):
    response = put(client, shop, external_id="shop:42 Ünïcødé")
    assert response.status_code == 201
    assert response.json["external_id"] == "shop:42 Ünïcødé"


def test_concurrent_enrolment_of_one_customer_creates_one(app, shop):
    """16 simultaneous PUTs of the same new customer: one 201, the rest 200, one code."""
    results = []

    def enrol():
        client = app.test_client()
        results.append(put(client, shop, external_id="race").status_code)

    threads = [threading.Thread(target=enrol) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [200] * 15 + [201]
    from sqlalchemy import func, select

    from referral_service.extensions import db
    from referral_service.models import Customer, ReferralCode

    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Customer)) == 1
        assert db.session.scalar(select(func.count()).select_from(ReferralCode)) == 1

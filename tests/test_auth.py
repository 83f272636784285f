"""Bearer keys and scopes: an allow/deny matrix over every API endpoint."""

import pytest

from referral_service.domain import api_keys

ENDPOINTS = [
    # (method, path, body, scope needed)
    ("PUT", "/api/v1/customers/m1", {"email": "m1@example.com"}, "shop"),
    ("GET", "/api/v1/customers/m0", None, "shop"),
    ("POST", "/api/v1/customers/m0/referral-code/rotate", None, "shop"),
    ("GET", "/api/v1/program", None, "shop"),
    ("PATCH", "/api/v1/program", {"hold_days": 7}, "admin"),
]
OK = {200, 201}


@pytest.fixture
def keys(app, client, admin):
    client.put("/api/v1/customers/m0", json={"email": "m0@example.com"}, headers=admin)
    with app.app_context():
        revoked = api_keys.create("old", "admin")
        api_keys.revoke(str(revoked.id))
        return {
            "shop": api_keys.create("shop", "shop").secret,
            "admin": api_keys.create("admin", "admin").secret,
            "revoked": revoked.secret,
        }


@pytest.mark.parametrize(("method", "path", "body", "needed"), ENDPOINTS)
@pytest.mark.parametrize("caller", ["none", "garbage", "revoked", "basic", "shop", "admin"])
def test_matrix(client, keys, method, path, body, needed, caller):
    headers = {
        "none": {},
        "garbage": {"Authorization": "Bearer rsk_not-a-real-key"},
        "revoked": {"Authorization": f"Bearer {keys['revoked']}"},
        "basic": {"Authorization": f"Basic {keys['admin']}"},
        "shop": {"Authorization": f"Bearer {keys['shop']}"},
        "admin": {"Authorization": f"Bearer {keys['admin']}"},
    }[caller]
    response = client.open(path, method=method, json=body, headers=headers)
    if caller in ("none", "garbage", "revoked", "basic"):
        assert response.status_code == 401
        assert response.json["error"]["code"] == "unauthorized"
    elif caller == "shop" and needed == "admin":
        assert response.status_code == 403
        assert response.json["error"]["code"] == "forbidden"
    else:
        assert response.status_code in OK, response.json


def test_auth_is_checked_before_the_body(client):
    response = client.put("/api/v1/customers/x", data="{broken", content_type="application/json")
    assert response.status_code == 401


def test_keys_are_stored_hashed(app):
    with app.app_context():
        new = api_keys.create("k", "shop")
        stored = api_keys.all_keys()[-1]
        assert new.secret not in (stored.key_hash, stored.prefix, stored.name)
        assert stored.key_hash == api_keys.digest(new.secret)


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({}, "send 'Authorization: Bearer <key>'"),
        ({"Authorization": "Bearer "}, "send 'Authorization: Bearer <key>'"),
        ({"Authorization": "Bearer rsk_made-up"}, "unknown or has been revoked"),
    ],
)
def test_a_missing_key_and_an_unknown_one_are_told_apart(client, headers, says):
    response = client.get("/api/v1/program", headers=headers)
    assert response.status_code == 401
    assert says in response.json["error"]["message"]

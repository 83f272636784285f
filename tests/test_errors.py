"""Every error answers with the envelope; bad input is a 4xx and writes nothing."""

import pytest
from sqlalchemy import func, select

from referral_service.extensions import db
from referral_service.models import Customer


def envelope(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    error = response.json["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return error


def customers_count(app):
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Customer))


def test_unknown_route(client):
    envelope(client.get("/api/v1/nothing-here"), 404, "not_found")


def test_wrong_method_lists_allowed(client, shop):
    response = client.delete("/api/v1/program", headers=shop)
    envelope(response, 405, "method_not_allowed")
    assert "PATCH" in response.headers["Allow"]


def test_malformed_json(client, shop):
    response = client.put(
        "/api/v1/customers/c1",
        data='{"email": ',
        content_type="application/json",
        headers=shop,
    )
    envelope(response, 400, "invalid_json")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "email"),
        ({"email": "not-an-email"}, "email"),
        ({"email": "a@example.com", "nickname": "x"}, "nickname"),
        ({"email": "a@example.com", "name": "x" * 201}, "name"),
        ({"email": "a@example.com", "name": "nul\u0000byte"}, "name"),
        ({"email": "a@example.com", "locale": "xx-QQ-nonsense"}, "locale"),
        ({"email": 12}, "email"),
        ({"email": None}, "email"),
        (["a@example.com"], "_schema"),
    ],
)
def test_bad_customer_bodies(app, client, shop, body, field):
    error = envelope(
        client.put("/api/v1/customers/c1", json=body, headers=shop), 422, "validation_error"
    )
    assert field in error["fields"]
    assert customers_count(app) == 0


def test_external_id_too_long(app, client, shop):
    response = client.put(
        f"/api/v1/customers/{'x' * 129}", json={"email": "a@example.com"}, headers=shop
    )
    assert "external_id" in envelope(response, 422, "validation_error")["fields"]
    assert customers_count(app) == 0


def test_external_id_with_control_character(app, client, shop):
    response = client.put("/api/v1/customers/a%00b", json={"email": "a@example.com"}, headers=shop)
    envelope(response, 422, "validation_error")
    assert customers_count(app) == 0


def test_body_too_large(client, shop):
    response = client.put(
        "/api/v1/customers/c1",
        data="x" * (2 * 1024 * 1024),
        content_type="application/json",
        headers=shop,
    )
    envelope(response, 413, "payload_too_large")


def test_unexpected_exception_is_500_envelope_without_details(app):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    response = app.test_client().get("/boom")
    error = envelope(response, 500, "internal_error")
    assert "secret" not in response.get_data(as_text=True)
    assert "fields" not in error


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/v1/customers/%FF%FE"),
        ("PUT", "/api/v1/customers/%FE%FF"),
        ("GET", "/api/v1/customers/%C0%AF"),
        ("GET", "/api/v1/customers/ok%E9"),
        ("GET", "/api/v1/referrals?referrer=%FF"),
        ("GET", "/api/v1/referrals?status=%C3"),
    ],
)
def test_an_address_that_is_not_utf8_is_400_and_names_no_one(app, client, shop, method, path):
    """Decoded with replacement characters, `%FF%FE` and `%FE%FF` would be one customer."""
    response = client.open(path, method=method, json={"email": "a@example.com"}, headers=shop)
    envelope(response, 400, "bad_url")
    assert customers_count(app) == 0


def test_a_utf8_address_is_read(client, shop):
    body = {"email": "z@example.com"}
    response = client.put("/api/v1/customers/Zo%C3%AB", json=body, headers=shop)
    assert response.status_code == 201
    assert response.json["external_id"] == "Zoë"


def test_a_share_link_with_a_stray_byte_still_lands(client):
    assert client.get("/r/ABC%FF").status_code == 302

"""Security headers on every response, body size limits, and no stack trace ever sent."""

import base64
import hashlib
import io
import json
import re

import pytest

from referral_service.security import HEADERS, NOTHING

ALWAYS = {**HEADERS, "Content-Security-Policy": None}  # None: present, value checked apart


def assert_security_headers(response, policy: str | None = NOTHING):
    for name, value in ALWAYS.items():
        assert name in response.headers, name
        if value is not None and name != "Referrer-Policy":
            assert response.headers[name] == value, name
    if policy is not None:
        assert response.headers["Content-Security-Policy"] == policy
    assert "Strict-Transport-Security" not in response.headers  # plain HTTP


def inline_hash(html: str, tag: str) -> str:
    block = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL).group(1)
    return "'sha256-" + base64.b64encode(hashlib.sha256(block.encode()).digest()).decode() + "'"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("get", "/healthz", 200),
        ("get", "/readyz", 200),
        ("get", "/api/openapi.json", 200),
        ("get", "/api/v1/program", 200),
        ("get", "/api/v1/program?nothing=1", 200),
        ("get", "/api/v1/nowhere", 404),
        ("delete", "/api/v1/program", 405),
        ("get", "/r/NOT-A-REAL-CODE", 302),
        ("get", "/r/NOT-A-REAL-CODE/qr.png", 404),
    ],
)
def test_every_answer_has_the_headers(client, shop, method, path, status):
    response = getattr(client, method)(path, headers=shop)
    assert response.status_code == status
    assert_security_headers(response)


def test_unauthorized_and_validation_errors_have_them_too(client, shop):
    assert_security_headers(client.get("/api/v1/program"))
    response = client.put("/api/v1/customers/c-1", json={"email": 1}, headers=shop)
    assert response.status_code == 422
    assert_security_headers(response)


def test_a_header_the_view_set_is_kept(client):
    response = client.get("/r/NOT-A-REAL-CODE")
    assert response.headers["Referrer-Policy"] == "no-referrer"  # the share link's own
    assert client.get("/healthz").headers["Referrer-Policy"] == "strict-origin-when-cross-origin"


def test_docs_page_may_run_its_own_script_and_assets_only(client):
    response = client.get("/api/docs")
    html = response.get_data(as_text=True)
    policy = response.headers["Content-Security-Policy"]
    assert f"script-src 'self' {inline_hash(html, 'script')};" in policy
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "connect-src 'self'" in policy  # it fetches /api/openapi.json
    assert_security_headers(response, policy=None)
    assets = client.get("/api/docs/assets/swagger-ui-bundle.js")
    assert assets.status_code == 200
    assert_security_headers(assets)


def test_landing_page_may_use_its_own_style_only(client):
    response = client.get("/landing?ref=ABCD")
    html = response.get_data(as_text=True)
    policy = response.headers["Content-Security-Policy"]
    assert f"style-src 'self' {inline_hash(html, 'style')};" in policy
    assert "script-src 'self';" in policy  # no inline script on this page


def test_hsts_only_over_https(client):
    assert "Strict-Transport-Security" not in client.get("/healthz").headers
    secure = client.get("/healthz", base_url="https://shop.test")
    assert secure.headers["Strict-Transport-Security"].startswith("max-age=")


# --- body size -----------------------------------------------------------------------------------


def big_body(size: int) -> bytes:
    return json.dumps({"email": "a@example.com", "name": "x" * size}).encode()


def test_declared_body_over_the_limit_is_413(app, client, shop):
    app.config["MAX_CONTENT_LENGTH"] = 4096
    response = client.put(
        "/api/v1/customers/c-1", data=big_body(5000), content_type="application/json", headers=shop
    )
    assert response.status_code == 413
    assert response.json["error"]["code"] == "payload_too_large"
    assert_security_headers(response)


@pytest.mark.parametrize(("size", "status"), [(5000, 413), (300, 422)])
def test_chunked_body_is_held_to_the_same_limit(app, client, shop, size, status):
    """A chunked body has no Content-Length; Werkzeug alone would cut it at the limit quietly."""
    app.config["MAX_CONTENT_LENGTH"] = 4096
    response = client.put(
        "/api/v1/customers/c-1",
        input_stream=io.BytesIO(big_body(size)),
        content_type="application/json",
        headers={**shop, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},  # as gunicorn sets it
    )
    assert response.status_code == status, response.json
    if status == 422:  # read whole: the name is too long for a customer, not for the service
        assert "name" in response.json["error"]["fields"]


def test_chunked_body_within_the_limit_is_read_whole(client, shop):
    body = json.dumps({"email": "a@example.com", "name": "Ada"}).encode()
    response = client.put(
        "/api/v1/customers/c-1",
        input_stream=io.BytesIO(body),
        content_type="application/json",
        headers={**shop, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 201, response.json
    assert response.json["name"] == "Ada"


# --- no stack trace ------------------------------------------------------------------------------


def test_an_unexpected_error_is_the_envelope_and_nothing_else(app):
    app.debug = False
    app.testing = False  # as in production: nothing propagates to the server either

    @app.get("/test-only/boom")
    def boom():
        raise RuntimeError("secret internals at /srv/app/secret.py line 42")

    response = app.test_client().get("/test-only/boom")
    assert response.status_code == 500
    assert response.json == {
        "error": {"code": "internal_error", "message": "Something went wrong on our side."}
    }
    body = response.get_data(as_text=True)
    for leak in ("Traceback", "RuntimeError", "secret", "File ", ".py"):
        assert leak not in body
    assert_security_headers(response)

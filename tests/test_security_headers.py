"""Security headers on every response, body size limits, and no stack trace ever sent."""

import base64
import hashlib
import io
import json
import re
from urllib.parse import urlsplit

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
        "error": {
            "code": "internal_error",
            "message": "Something went wrong on our side.",
            "request_id": response.headers["Request-Id"],
        }
    }
    body = response.get_data(as_text=True)
    for leak in ("Traceback", "RuntimeError", "secret", "File ", ".py"):
        assert leak not in body
    assert_security_headers(response)


# --- inline blocks: the templates' own, never what reached a page through its data ---------------

INJECTED = "<script>alert(1)</script><style>body{display:none}</style>"


def page_blocks(html: str) -> list[tuple[str, str]]:
    return re.findall(r"<(script|style)>(.*?)</\1>", html, re.DOTALL)


def block_hash(block: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(block.encode()).digest()).decode() + "'"


def policy_sources(policy: str, directive: str) -> list[str]:
    [sources] = [d.split()[1:] for d in policy.split("; ") if d.split()[0] == directive]
    return sources


@pytest.mark.parametrize("template", ["admin/error.html", "test-only/public.html"])
def test_a_script_that_reached_the_page_through_its_data_is_not_allowed(app, template):
    """An escape missed somewhere (here `Markup` on purpose): the page carries the injected
    blocks, the policy allows the template's own blocks and not those."""
    from flask import render_template
    from jinja2 import ChoiceLoader, DictLoader
    from markupsafe import Markup

    app.jinja_env.loader = ChoiceLoader(
        [
            DictLoader(
                {
                    "test-only/public.html": '{% extends "public/base.html" %}'
                    "{% block main %}{{ message }}{% endblock %}"
                }
            ),
            app.jinja_env.loader,
        ]
    )

    @app.get("/test-only/missed-escape")
    def missed_escape():
        return render_template(template, title="Probe", message=Markup(INJECTED))

    response = app.test_client().get("/test-only/missed-escape")
    html = response.get_data(as_text=True)
    policy = response.headers["Content-Security-Policy"]
    assert INJECTED in html
    scripts, styles = policy_sources(policy, "script-src"), policy_sources(policy, "style-src")
    assert block_hash("alert(1)") not in scripts and scripts == ["'self'"]
    assert block_hash("body{display:none}") not in styles
    own = [b for tag, b in page_blocks(html) if tag == "style" and b != "body{display:none}"]
    assert styles == ["'self'", *(block_hash(b) for b in own)]  # public/base.html's own style


def test_every_inline_block_of_the_templates_is_hashed_from_its_source(app):
    """No template holds an inline block with a Jinja expression (it could not be allowed)."""
    blocks = app.extensions["inline_blocks"]
    assert blocks.dynamic == {}
    assert blocks.hashes("public/share.html")["script"]  # its copy and share buttons
    assert blocks.hashes("public/landing.html")["style"]  # public/base.html's stylesheet
    assert blocks.hashes("swagger_ui.html")["script"]  # ours, not flask-smorest's


def test_every_page_allows_exactly_its_own_inline_blocks(app, client, admin, shop):
    """The landing, share, welcome and error pages, the API docs and the console."""
    from tests.journey_helpers import enrol, set_program
    from tests.test_admin_console import signed_in_as

    code = enrol(client, shop, "ref-1")
    share = client.post("/api/v1/customers/ref-1/portal-link", json={}, headers=admin)
    pages = [
        "/landing?ref=ABCD",
        urlsplit(share.json["url"]).path,
        "/api/docs",
        "/nowhere",
    ]
    set_program(client, admin, landing_mode="welcome")
    pages.append(f"/r/{code}")
    signed_in_as(app, client)
    pages += ["/admin", "/admin/rewards", "/admin/customers/ref-1", "/admin/settings", "/admin/x"]
    for path in pages:
        response = client.get(path, headers={"Accept": "text/html"})
        html = response.get_data(as_text=True)
        assert response.mimetype == "text/html", path
        policy = response.headers["Content-Security-Policy"]
        for tag in ("script", "style"):
            own = sorted({block_hash(b) for t, b in page_blocks(html) if t == tag})
            assert sorted(policy_sources(policy, f"{tag}-src")[1:]) == own, (path, tag)

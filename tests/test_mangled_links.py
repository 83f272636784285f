"""Share links mangled on the way still attribute; public pages answer browsers with HTML.

Every door a code arrives by reads it the same way (domain/codes.py `normalize`): the share
link, its trailing-slash form, its QR images, the welcome page and the sign-up's `referral_code`.
"""

import re
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from sqlalchemy import select

from referral_service import create_app
from referral_service.domain import codes
from referral_service.domain.codes import display
from referral_service.extensions import db
from referral_service.models import Click
from tests.conftest import BASE_URL, app_config
from tests.factories import click_row
from tests.journey_helpers import enrol, set_program, sign_up
from tests.test_admin_console import signed_in_as

BROWSER = {
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
}

# The path segment as it arrives (percent-encoded as a browser sends it).
MANGLED = {
    "trailing slash": lambda c: c + "/",
    "closing parenthesis": lambda c: c + ")",
    "comma": lambda c: c + ",",
    "exclamation mark": lambda c: c + "!",
    "question mark, encoded": lambda c: c + "%3F",
    "full stop": lambda c: c + ".",
    "zero-width space": lambda c: c + "%E2%80%8B",
    "en dash groups": lambda c: quote(display(c).replace("-", "\u2013")),
    "em dash groups, lower case": lambda c: quote(display(c).lower().replace("-", "\u2014")),
    "minus sign groups": lambda c: quote(display(c).replace("-", "\u2212")),
    "closing parenthesis and a slash": lambda c: c + ")/",
    "byte order mark first": lambda c: "%EF%BB%BF" + c,
}


@pytest.fixture
def code(client, shop):
    return enrol(client, shop, "ref-1")


def clicks(app) -> list:
    app.extensions["clicks"].flush()
    with app.app_context():
        return list(db.session.scalars(select(Click)))


def query_of(response) -> dict:
    return parse_qs(urlsplit(response.headers["Location"]).query)


@pytest.mark.parametrize("mangle", MANGLED.values(), ids=MANGLED.keys())
def test_a_mangled_share_link_attributes(app, client, code, mangle):
    response = client.get(f"/r/{mangle(code)}", headers=BROWSER)
    assert response.status_code == 302
    query = query_of(response)
    assert query["ref"] == [code]
    [click] = clicks(app)
    assert [click_row(query["click_id"][0])] == [click.id]


@pytest.mark.parametrize("mangle", MANGLED.values(), ids=MANGLED.keys())
@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_a_mangled_code_has_its_qr_image(client, code, mangle, fmt):
    canonical = client.get(f"/r/{code}/qr.{fmt}")
    mangled = client.get(f"/r/{mangle(code).rstrip('/')}/qr.{fmt}")
    assert mangled.status_code == 200
    assert mangled.headers["ETag"] == canonical.headers["ETag"]
    assert mangled.data == canonical.data


@pytest.mark.parametrize("path", ["/r/{code}/qr.png/", "/r/{code}/qr.svg/"])
def test_qr_images_with_a_trailing_slash(client, code, path):
    assert client.get(path.format(code=code)).status_code == 200


@pytest.mark.parametrize("mangle", MANGLED.values(), ids=MANGLED.keys())
def test_a_mangled_code_has_its_welcome_page(client, code, mangle):
    response = client.get(f"/r/{mangle(code).rstrip('/')}/welcome", headers=BROWSER)
    assert response.status_code == 200
    assert f"ref={code}" in response.get_data(as_text=True)
    assert client.get(f"/r/{code}/welcome/", headers=BROWSER).status_code == 200


@pytest.mark.parametrize(
    "typed",
    [
        lambda c: display(c).replace("-", "\u2013"),  # en dash
        lambda c: display(c).replace("-", "\u2014"),  # em dash
        lambda c: display(c).replace("-", "\u2212"),  # minus sign
        lambda c: display(c).lower().replace("-", " "),
        lambda c: "\ufeff" + c + "\u200b",
        lambda c: c + ".",
        lambda c: "".join(chr(ord(x) + 0xFEE0) for x in c),  # full-width keyboard
    ],
    ids=["en dash", "em dash", "minus sign", "spaces", "invisible", "full stop", "full width"],
)
def test_a_typed_code_with_look_alikes_attributes_at_sign_up(client, shop, code, typed):
    response = sign_up(client, shop, "friend-1", referral_code=typed(code))
    assert response.status_code == 201, response.json
    assert response.json["attributed"] is True, response.json
    assert response.json["reason"] is None


@pytest.mark.parametrize("suffix", ["", "/", ")", ".", "%E2%80%8B"])
def test_a_forged_code_lands_without_attribution_however_mangled(app, client, code, suffix):
    forged = code[:-1] + codes.ALPHABET[(codes.ALPHABET.index(code[-1]) + 1) % 32]
    for path in (f"/r/{forged}{suffix}", "/r/not-a-code" + suffix):
        response = client.get(path, headers=BROWSER)
        assert response.status_code == 302
        assert response.headers["Location"] == f"{BASE_URL}/landing"
    assert clicks(app) == []


# --- public pages answer browsers with HTML -------------------------------------------------


def assert_html_page(response, status: int, words: str):
    assert response.status_code == status
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert page.startswith("<!doctype html>") and words in page
    assert f"{BASE_URL}/landing" in page  # a way on to the shop
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "path",
    ["/r/{code}/nonsense", "/r/{code}/qr.gif", "/r", "/r/", "/landing/x", "/nowhere", "/share"],
)
def test_a_browser_gets_an_html_404_off_the_api(client, code, path):
    response = client.get(path.format(code=code), headers=BROWSER)
    assert_html_page(response, 404, "This link does not work")


def test_the_html_404_speaks_the_browsers_language(client):
    response = client.get("/no-such-page", headers={**BROWSER, "Accept-Language": "pl"})
    assert_html_page(response, 404, "Ten link nie działa")
    assert '<html lang="pl">' in response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/r/NOT-A-CODE/qr.png", "/r/NOT-A-CODE/qr.svg"])
def test_the_qr_image_of_a_forged_code_is_an_html_404_for_a_browser(client, path):
    assert_html_page(client.get(path, headers=BROWSER), 404, "This link does not work")
    assert client.get(path).json["error"]["code"] == "not_found"  # an image fetcher: JSON


def test_a_browser_gets_an_html_405(client, code):
    response = client.post(f"/r/{code}", headers=BROWSER)
    assert_html_page(response, 405, "This link does not work")
    assert "GET" in response.headers["Allow"]


def test_a_browser_gets_an_html_500_and_the_api_its_json(app, client, shop, code, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(codes, "lookup", broken)
    assert_html_page(client.get(f"/r/{code}", headers=BROWSER), 500, "Something went wrong")
    api = client.get("/api/v1/customers/ref-1", headers={**shop, **BROWSER})
    assert api.status_code == 200  # the API does not look codes up here: still JSON
    response = client.get(f"/r/{code}", headers={"Accept": "application/json"})
    assert response.status_code == 500
    assert response.json["error"]["code"] == "internal_error"


@pytest.mark.parametrize(
    "path", ["/api/v1/nothing-here", "/api/v1/customers/nobody", "/integrations/none"]
)
def test_the_api_answers_json_even_to_a_browser(client, shop, path):
    response = client.get(path, headers={**shop, **BROWSER})
    assert response.status_code == 404
    assert response.mimetype == "application/json"
    assert response.json["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "accept", [None, "*/*", "application/json", "application/json, text/html;q=0.5"]
)
def test_clients_that_prefer_json_keep_the_envelope(client, accept):
    headers = {"Accept": accept} if accept else {}
    response = client.get("/no-such-page", headers=headers)
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"


def test_admin_with_a_trailing_slash_is_the_console(app, client):
    response = client.get("/admin/", headers=BROWSER)
    assert response.status_code == 302
    assert urlsplit(response.headers["Location"]).path == "/admin/login"
    signed_in_as(app, client)
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin").status_code == 200


def test_welcome_mode_reads_a_mangled_link_too(app, client, admin, code):
    set_program(client, admin, landing_mode="welcome")
    response = client.get(f"/r/{code})", headers=BROWSER)
    assert response.status_code == 200
    [click] = clicks(app)
    [shown] = set(re.findall(r"click_id=([A-Za-z0-9_-]+)", response.get_data(as_text=True)))
    assert click_row(shown) == click.id


def test_a_browser_over_the_rate_limit_gets_an_html_429(database_url, shop):
    limited = create_app(
        app_config(
            database_url,
            RATELIMIT_ENABLED=True,
            RATELIMIT_PUBLIC="2/minute",
            RATELIMIT_STORAGE_URI="memory://",
        )
    )
    try:
        client = limited.test_client()
        code = enrol(client, shop, "ref-1")
        for _ in range(2):
            assert client.get(f"/r/{code}", headers=BROWSER).status_code == 302
        response = client.get(f"/r/{code}", headers=BROWSER)
        assert_html_page(response, 429, "Too many visits at once")
        assert int(response.headers["Retry-After"]) > 0
        response = client.get(f"/r/{code}/qr.png")  # an image fetcher: the envelope
        assert response.status_code == 429
        assert response.json["error"]["code"] == "rate_limited"
    finally:
        with limited.app_context():
            limited.extensions["clicks"].flush()
            db.session.remove()
            db.engine.dispose()


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (404, "This link does not work"),
        (405, "This link does not work"),
        (410, "This link has expired"),
        (429, "Too many visits at once"),
        (500, "Something went wrong on our side"),
        (503, "Something went wrong on our side"),
    ],
)
def test_the_error_page_says_what_happened(app, status, words):
    from referral_service.public.views import error_page

    with app.test_request_context("/somewhere", headers=BROWSER):
        assert_html_page(error_page(status), status, words)

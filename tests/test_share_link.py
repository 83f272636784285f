"""`GET /r/<code>`: a click recorded with its channel, the redirect, and the signed cookie."""

from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from referral_service.extensions import db
from referral_service.models import Click
from referral_service.public.views import CLICK_COOKIE, click_cookie_signer
from tests.conftest import BASE_URL
from tests.factories import click_row


@pytest.fixture
def code(client, shop):
    return client.put("/api/v1/customers/c1", json={"email": "a@example.com"}, headers=shop).json[
        "referral"
    ]["code"]


def clicks(app):
    app.extensions["clicks"].flush()
    with app.app_context():
        return list(db.session.scalars(select(Click).order_by(Click.occurred_at)))


def test_redirect_carries_ref_and_click_id(app, client, code):
    response = client.get(f"/r/{code}?via=whatsapp")
    assert response.status_code == 302
    assert response.headers["Cache-Control"] == "no-store"
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}" == BASE_URL
    assert location.path == "/landing"
    query = parse_qs(location.query)
    assert query["ref"] == [code]
    [click] = clicks(app)
    assert [click_row(query["click_id"][0])] == [click.id]
    assert click.channel == "whatsapp"
    assert click.occurred_at.tzinfo is not None


def test_cookie_holds_the_signed_click(app, client, code):
    response = client.get(f"/r/{code}")
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{CLICK_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Max-Age=2592000" in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    click_id = parse_qs(urlsplit(response.headers["Location"]).query)["click_id"][0]
    with app.test_request_context():
        assert click_cookie_signer().unsign(value, max_age=30 * 86400).decode() == click_id


@pytest.mark.parametrize(
    ("via", "channel"),
    [
        (None, "link"),
        ("QR", "qr"),
        ("email", "email"),
        ("x", "x"),
        ("<script>", "other"),
        ("a" * 40, "other"),
    ],
)
def test_channel(app, client, code, via, channel):
    client.get(f"/r/{code}" + (f"?via={via}" if via else ""))
    assert [c.channel for c in clicks(app)] == [channel]


def test_code_in_any_case_and_grouped(app, client, code):
    grouped = "-".join(code[i : i + 4] for i in range(0, 16, 4)).lower()
    location = client.get(f"/r/{grouped}").headers["Location"]
    assert f"ref={code}" in location
    assert len(clicks(app)) == 1


@pytest.mark.parametrize("bad", ["AAAAAAAAAAAAAAAA", "short", "%00", "x" * 300])
def test_forged_code_lands_without_attribution(app, client, code, bad):
    response = client.get(f"/r/{bad}")
    assert response.status_code == 302
    assert response.headers["Location"] == f"{BASE_URL}/landing"
    assert "Set-Cookie" not in response.headers
    assert clicks(app) == []


def test_revoked_code_lands_without_attribution(app, client, shop, code):
    client.post("/api/v1/customers/c1/referral-code/rotate", headers=shop)
    response = client.get(f"/r/{code}")
    assert response.headers["Location"] == f"{BASE_URL}/landing"
    assert clicks(app) == []


def test_other_query_parameters_are_ignored(client, code):
    assert client.get(f"/r/{code}?utm_source=news&via=email").status_code == 302


def test_builtin_landing_page(client, code):
    page = client.get(f"/landing?ref={code}")
    assert page.status_code == 200
    assert code in page.get_data(as_text=True)


def test_share_url_uses_public_base_url(client, shop, code):
    body = client.get("/api/v1/customers/c1", headers=shop).json
    assert body["referral"]["share_url"].startswith(BASE_URL)


@pytest.mark.parametrize(
    "landing",
    [
        "https://shop.example:99999/",
        "https://shop.example:65536/",
        "https://shop.example:abc/",
        "https://:443/",
        "https://[::1/",
    ],
)
def test_a_landing_url_that_cannot_be_redirected_to_is_refused(client, admin, landing):
    response = client.patch("/api/v1/program", json={"landing_url": landing}, headers=admin)
    assert response.status_code == 422, response.json
    assert "landing_url" in response.json["error"]["fields"]


def test_a_broken_landing_url_saved_earlier_lands_on_the_builtin_page(app, client, code):
    """Saved before ports were checked, it sends the friend to the built-in page, never a 500."""
    from referral_service.models import Program

    with app.app_context():
        db.session.execute(db.update(Program).values(landing_url="https://shop.example:99999/"))
        db.session.commit()
    for path in (f"/r/{code}", f"/r/{code}?via=qr", "/r/FORGED-CODE"):
        response = client.get(path)
        assert response.status_code == 302
        assert response.headers["Location"].startswith(f"{BASE_URL}/landing")


def test_the_shops_own_query_is_kept_byte_for_byte(client, admin, code):
    landing = "https://shop.example/welcome?a=%ff&ref=old&b=x+y&click_id=old2"
    response = client.patch("/api/v1/program", json={"landing_url": landing}, headers=admin)
    assert response.status_code == 200, response.json
    location = client.get(f"/r/{code}").headers["Location"]
    assert location.startswith(f"https://shop.example/welcome?a=%ff&b=x+y&ref={code}&click_id=")


def test_links_outside_a_request_without_a_public_address_say_so_once(app, caplog):
    """The command line and the worker have no request to take the address from."""
    from referral_service import links

    app.config["PUBLIC_BASE_URL"] = None
    with app.app_context(), caplog.at_level("WARNING", logger="referral_service.links"):
        assert links.share_url("ABC") == f"{links.LOCAL_BASE_URL}/r/ABC"
        assert links.share_url("DEF", via="qr") == f"{links.LOCAL_BASE_URL}/r/DEF?via=qr"
    warnings = [r.getMessage() for r in caplog.records if r.name == "referral_service.links"]
    assert len(warnings) == 1 and warnings[0].startswith("PUBLIC_BASE_URL is not set")
    assert links.LOCAL_BASE_URL in warnings[0]  # the service's own address is not masked
    with app.test_request_context("/", base_url="https://refer.shop.example"):
        assert links.share_url("ABC") == "https://refer.shop.example/r/ABC"

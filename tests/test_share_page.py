"""The customer's share page (`portal-link` and `/share/<token>`), the friend's welcome page, and
the language each is shown in."""

import re
from datetime import timedelta
from html import unescape
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from itsdangerous import URLSafeSerializer

from referral_service.domain import portal
from referral_service.models import Click, utcnow
from tests.conftest import BASE_URL, SECRET
from tests.journey_helpers import (
    ago,
    buy,
    click,
    converted_friend,
    count,
    enrol,
    pay,
    ready_for_payout,
    referred_friend,
    refund,
    set_program,
    sign_up,
)


def put_customer(client, shop, external_id="ref-1", name="Anna Kowalska", locale=None):
    body = {"email": f"{external_id}@example.com", "name": name}
    if locale is not None:
        body["locale"] = locale
    response = client.put(f"/api/v1/customers/{external_id}", json=body, headers=shop)
    assert response.status_code in (200, 201), response.json
    return response.json["referral"]


def portal_path(client, shop, external_id="ref-1", **body) -> str:
    response = client.post(
        f"/api/v1/customers/{external_id}/portal-link", json=body or None, headers=shop
    )
    assert response.status_code == 200, response.json
    url = response.json["url"]
    assert url.startswith(f"{BASE_URL}/share/")
    return url[len(BASE_URL) :]


def text_of(response) -> str:
    """The page's visible text, roughly: tags dropped, entities decoded, spaces collapsed."""
    html = response.get_data(as_text=True)
    html = re.sub(r"<(script|style)>.*?</\1>", " ", html, flags=re.DOTALL)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def html_lang(response) -> str:
    return re.search(r'<html lang="([^"]+)"', response.get_data(as_text=True)).group(1)


# --- the portal link -----------------------------------------------------------------------------


def test_portal_link_is_signed_and_expires_in_30_days_by_default(client, shop):
    put_customer(client, shop)
    response = client.post("/api/v1/customers/ref-1/portal-link", headers=shop)
    assert response.status_code == 200, response.json
    assert set(response.json) == {"url", "expires_at"}
    expires = response.json["expires_at"]
    assert expires.endswith("+00:00")
    from datetime import datetime

    left = datetime.fromisoformat(expires) - utcnow()
    assert timedelta(days=30) - timedelta(minutes=1) < left <= timedelta(days=30)


def test_portal_link_takes_expires_in(client, shop):
    put_customer(client, shop)
    response = client.post(
        "/api/v1/customers/ref-1/portal-link", json={"expires_in": 3600}, headers=shop
    )
    from datetime import datetime

    left = datetime.fromisoformat(response.json["expires_at"]) - utcnow()
    assert timedelta(minutes=59) < left <= timedelta(hours=1)


@pytest.mark.parametrize(
    "body",
    [
        {"expires_in": 59},
        {"expires_in": 31536001},
        {"expires_in": "3600"},
        {"expires_in": 3600.5},
        {"expires_in": True},
        {"expires_in": -1},
        {"expires_in": 10**30},
        {"expires": 3600},
    ],
)
def test_portal_link_refuses_bad_expiry(client, shop, body):
    put_customer(client, shop)
    response = client.post("/api/v1/customers/ref-1/portal-link", json=body, headers=shop)
    assert response.status_code == 422, response.json
    assert response.json["error"]["code"] == "validation_error"
    assert set(response.json["error"]["fields"]) <= {"expires_in", "expires"}


def test_portal_link_of_an_unknown_customer_is_404(client, shop):
    response = client.post("/api/v1/customers/nobody/portal-link", headers=shop)
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"


def test_portal_link_needs_a_key(client):
    response = client.post("/api/v1/customers/ref-1/portal-link")
    assert response.status_code == 401


# --- opening the page ----------------------------------------------------------------------------


def test_share_page_shows_code_link_qr_and_share_buttons(client, shop):
    referral = put_customer(client, shop)
    response = client.get(portal_path(client, shop))
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "noindex" in response.headers["X-Robots-Tag"]
    policy = response.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in policy and "'sha256-" in policy
    html = response.get_data(as_text=True)
    assert html_lang(response) == "en"
    assert referral["display_code"] in html
    assert f'value="{referral["share_url"]}"' in html
    assert referral["qr_svg_url"] in html and referral["qr_png_url"] in html
    assert "Hi Anna, invite your friends" in text_of(response)
    hrefs = dict(re.findall(r'href="([^"]+)"[^>]*data-via="([a-z]+)"', html))
    channels = {via: unescape(href) for href, via in hrefs.items()}
    assert set(channels) == {"whatsapp", "email", "sms", "facebook", "x"}
    for via, href in channels.items():
        assert f"{referral['share_url']}?via={via}" in unquote(href), href
    assert f'data-copy="{referral["share_url"]}?via=copy"' in html
    assert f'data-url="{referral["share_url"]}?via=share"' in html
    assert re.findall(r"<link[^>]*>", html) == ['<link rel="icon" href="data:,">']  # no fetch
    assert [src for src in re.findall(r'src="([^"]+)"', html)] == [referral["qr_svg_url"]]


def test_share_buttons_say_the_share_message(client, shop, admin):
    put_customer(client, shop, locale="pl")
    set_program(client, admin, share_messages={"pl": "Kupuję tu & polecam!"})
    page = client.get(portal_path(client, shop)).get_data(as_text=True)
    whatsapp = unescape(re.search(r'href="(https://wa.me/[^"]+)"', page).group(1))
    text = parse_qs(urlsplit(whatsapp).query)["text"][0]
    assert text.startswith("Kupuję tu & polecam! http://shop.test/r/")
    assert text.endswith("?via=whatsapp")
    english = client.get(portal_path(client, shop) + "?lang=en").get_data(as_text=True)
    assert "I%20shop%20here" in english  # the built-in message of the page's language


def test_friends_are_masked_and_rewards_totalled(client, shop, admin, app):
    put_customer(client, shop)
    set_program(client, admin, hold_days=0)
    for friend, name in (("f-1", "Jan Maria Rokita"), ("f-2", "zoë"), ("f-3", None)):
        body = {"email": f"{friend}x@example.org"}
        if name:
            body["name"] = name
        client.put(f"/api/v1/customers/{friend}-tmp", json=body, headers=shop)
    code = put_customer(client, shop)["code"]
    for friend, name in (("f-1", "Jan Maria Rokita"), ("f-2", "zoë"), ("f-3", None)):
        response = sign_up(
            client, shop, friend, email=f"{friend}@example.org", referral_code=code,
            occurred_at=ago(days=5),
        )  # fmt: skip
        assert response.status_code == 201, response.json
        if name:
            with app.app_context():
                from referral_service.domain import customers

                customers.enrol(friend, f"{friend}@example.org", name)
    assert buy(client, shop, "o-1", "f-1", "50.00").status_code == 201
    response = client.get(portal_path(client, shop))
    text = text_of(response)
    assert "3 friends have joined through you." in text
    assert "J*** R." in text and "Z***" in text and "f***" in text
    assert "Rokita" not in text and "zoë" not in text and "f-3@" not in text
    assert "For inviting J*** R." in text
    assert "Awaiting approval" in text  # hold 0: the reward waits for an admin at once
    in_progress = re.search(r'id="total-in_progress"><dt>[^<]+</dt><dd>([^<]+)</dd>', response.text)
    assert in_progress.group(1) == "€10.00"
    assert "Signed up, no purchase yet" in text


def test_paid_out_is_net_of_clawbacks(client, shop, admin, app):
    """A paid 10.00 reward whose order is then refunded by 40 % shows 6.00 paid out."""
    set_program(
        client,
        admin,
        referrer_reward={"type": "percent", "value": "10"},
        friend_reward={"type": "none"},
        min_order_amount="0",
    )
    purchase = converted_friend(client, shop, "f-1", "ref-1", amount="100.00")
    pay(client, admin, ready_for_payout(app, client, admin, purchase))
    assert refund(client, shop, "o-f-1", "40.00").status_code == 200
    put_customer(client, shop)
    response = client.get(portal_path(client, shop))
    paid = re.search(r'id="total-paid"><dt>[^<]+</dt><dd>([^<]+)</dd>', response.text)
    assert paid.group(1) == "€6.00"


def test_money_and_dates_follow_the_language(client, shop, admin):
    converted_friend(client, shop, "f-1", "ref-1")
    put_customer(client, shop, locale="pl")
    page = client.get(portal_path(client, shop))
    assert html_lang(page) == "pl"
    assert "10,00\xa0€" in text_of(page) or "10,00 €" in text_of(page)
    english = client.get(portal_path(client, shop) + "?lang=en")
    assert "€10.00" in text_of(english)


def test_lists_are_cut_and_say_how_many_more(client, shop, monkeypatch):
    monkeypatch.setattr(portal, "LIST_LIMIT", 2)
    put_customer(client, shop)
    for n in range(5):
        referred_friend(client, shop, f"f-{n}", "ref-1")
    text = text_of(client.get(portal_path(client, shop)))
    assert "5 friends have joined through you." in text
    assert "and 3 more" in text
    assert text.count("Signed up, no purchase yet") == 2


# --- links that do not work ----------------------------------------------------------------------


def test_an_expired_link_gets_a_friendly_410(client, shop, monkeypatch):
    put_customer(client, shop, locale="hu")
    path = portal_path(client, shop, expires_in=60)
    assert client.get(path).status_code == 200
    later = utcnow() + timedelta(seconds=61)
    monkeypatch.setattr(portal, "utcnow", lambda: later)
    response = client.get(path, headers={"Accept-Language": "pl"})
    assert response.status_code == 410
    assert response.mimetype == "text/html"
    assert html_lang(response) == "hu"  # still the customer's language, not the browser's
    assert "Traceback" not in response.text and "ref-1" not in response.text


@pytest.mark.parametrize(
    "damage",
    [
        lambda token: token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:],
        lambda token: token[:10],
        lambda token: "x" * 5000,
        lambda token: "%00%ff%2e%2e",
        lambda token: "WzEsOTk5OTk5OTk5OV0.forged",
        lambda token: "Żółć✓",
    ],
)
def test_a_forged_or_damaged_link_gets_a_friendly_404(client, shop, damage):
    put_customer(client, shop)
    token = portal_path(client, shop).removeprefix("/share/")
    response = client.get(f"/share/{damage(token)}")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "This link does not work" in text_of(response)


def test_a_token_signed_for_something_else_is_refused(client, shop, app):
    put_customer(client, shop)
    future = int((utcnow() + timedelta(days=1)).timestamp())
    other_salt = URLSafeSerializer(SECRET, salt="referral-service.click-cookie").dumps([1, future])
    other_key = URLSafeSerializer("another-key", salt=portal.SALT).dumps([1, future])
    for token in (other_salt, other_key):
        assert client.get(f"/share/{token}").status_code == 404


def test_a_customer_gone_makes_the_link_invalid(client, shop, app):
    put_customer(client, shop)
    path = portal_path(client, shop)
    from referral_service.extensions import db
    from referral_service.models import Customer

    with app.app_context():
        db.session.query(Customer).delete()
        db.session.commit()
    assert client.get(path).status_code == 404


def test_links_survive_a_key_rotation(database_url, client, shop):
    from referral_service import create_app
    from tests.conftest import app_config

    put_customer(client, shop)
    path = portal_path(client, shop)
    rotated = create_app(
        app_config(database_url, SECRET_KEY="new-key-" + "n" * 32, SECRET_KEY_FALLBACKS=[SECRET])
    )
    assert rotated.test_client().get(path).status_code == 200
    forgotten = create_app(app_config(database_url, SECRET_KEY="new-key-" + "n" * 32))
    assert forgotten.test_client().get(path).status_code == 404


# --- the language --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("locale", "query", "accept", "default", "expected"),
    [
        ("pl", "", "", "en", "pl"),  # the customer's locale
        ("pl_PL", "", "hu", "en", "pl"),  # ... before the browser's
        ("pl", "?lang=el", "hu", "en", "el"),  # ?lang= first of all
        ("de", "", "bg,en;q=0.5", "en", "bg"),  # a locale the pages lack: the browser's
        (None, "", "hu-HU,hu;q=0.9", "en", "hu"),
        (None, "", "fr, de;q=0.8", "el", "el"),  # neither: the program's default
        (None, "?lang=xx", "", "bg", "bg"),  # an unknown ?lang= is ignored
        (None, "?lang=" + "p" * 300, "pl;q=nonsense", "en", "en"),
        (None, "?lang=PL", "", "en", "pl"),
    ],
)
def test_the_language_is_chosen_in_order(
    client, shop, admin, locale, query, accept, default, expected
):
    put_customer(client, shop, locale=locale)
    set_program(client, admin, default_locale=default)
    headers = {"Accept-Language": accept} if accept else {}
    response = client.get(portal_path(client, shop) + query, headers=headers)
    assert response.status_code == 200
    assert html_lang(response) == expected


def test_the_language_switcher_links_every_language(client, shop):
    put_customer(client, shop, locale="pl")
    path = portal_path(client, shop)
    html = client.get(path).get_data(as_text=True)
    links = re.findall(r'<a href="([^"]+)" hreflang="([a-z]+)"', html)
    assert [lang for _, lang in links] == ["en", "pl", "hu", "el", "bg"]
    assert all(unescape(href) == f"{path}?lang={lang}" for href, lang in links)
    assert 'lang="pl" aria-current="true"' in html


@pytest.mark.parametrize(("friends", "form"), [(1, 0), (2, 1), (4, 1), (5, 2), (12, 2), (22, 1)])
def test_polish_counts_take_the_right_plural_form(client, shop, friends, form, monkeypatch):
    from babel.messages.pofile import read_po

    from tests.test_translations import TRANSLATIONS

    with open(TRANSLATIONS / "pl" / "LC_MESSAGES" / "messages.po", "rb") as po:
        catalog = read_po(po, locale="pl")
    forms = catalog["%(num)d friend has joined through you."].string
    monkeypatch.setattr(portal, "LIST_LIMIT", 1)
    for n in range(friends):
        referred_friend(client, shop, f"f-{n}", "ref-1")
    put_customer(client, shop, locale="pl")
    text = text_of(client.get(portal_path(client, shop)))
    assert forms[form] % {"num": friends} in text


# --- the friend's welcome ------------------------------------------------------------------------


def test_redirect_mode_is_the_default(client, shop):
    code = enrol(client, shop)
    assert client.get(f"/r/{code}").status_code == 302


def test_welcome_mode_greets_the_friend_by_the_referrers_first_name(client, shop, admin, app):
    code = put_customer(client, shop)["code"]
    set_program(
        client,
        admin,
        landing_mode="welcome",
        landing_url="https://shop.example/start?src=ref",
        friend_offer={"type": "fixed", "value": "5.00", "description": "On orders over €30."},
    )
    response = client.get(f"/r/{code}?via=whatsapp", headers={"Accept-Language": "en"})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    text = text_of(response)
    assert "Anna invited you!" in text and "Kowalska" not in text
    assert "Get €5.00 off your first order." in text
    assert "On orders over €30." in text
    assert "Your invitation is kept on this device for 30 days." in text
    shop_link = unescape(re.search(r'id="to-shop" href="([^"]+)"', response.text).group(1))
    query = parse_qs(urlsplit(shop_link).query)
    assert shop_link.startswith("https://shop.example/start?src=ref&")
    assert query["ref"] == [code]
    assert "rs_click=" in response.headers["Set-Cookie"]
    app.extensions["clicks"].flush()
    assert count(app, Click) == 1
    assert count(app, Click, Click.channel == "whatsapp") == 1
    # the switcher shows the page again in another language, for the same click
    switch = re.search(r'<a href="([^"]+)" hreflang="pl"', response.text).group(1)
    again = client.get(unescape(switch))
    assert again.status_code == 200 and html_lang(again) == "pl"
    again_link = unescape(re.search(r'id="to-shop" href="([^"]+)"', again.text).group(1))
    assert parse_qs(urlsplit(again_link).query)["click_id"] == query["click_id"]
    app.extensions["clicks"].flush()
    assert count(app, Click) == 1


def test_welcome_mode_without_a_name_or_offer(client, shop, admin):
    code = put_customer(client, shop, name=None)["code"]
    set_program(client, admin, landing_mode="welcome", attribution_window_days=1)
    text = text_of(client.get(f"/r/{code}"))
    assert "A friend invited you!" in text
    assert "Welcome! Have a look around the shop." in text
    assert "kept on this device for 1 day." in text


def test_welcome_mode_still_redirects_forged_codes(client, admin):
    set_program(client, admin, landing_mode="welcome")
    response = client.get("/r/AAAAAAAAAAAAAAAA")
    assert response.status_code == 302
    assert "ref=" not in response.headers["Location"]
    response = client.get("/r/AAAAAAAAAAAAAAAA/welcome?lang=pl")
    assert response.status_code == 302


def test_the_welcome_switcher_refuses_a_malformed_click_id(client, shop, admin):
    code = put_customer(client, shop)["code"]
    set_program(client, admin, landing_mode="welcome")
    response = client.get(f"/r/{code}/welcome?click_id=<script>&lang=el")
    assert response.status_code == 200 and html_lang(response) == "el"
    shop_link = unescape(re.search(r'id="to-shop" href="([^"]+)"', response.text).group(1))
    assert "click_id" not in shop_link and f"ref={code}" in shop_link


def test_welcome_then_signup_attributes_through_the_click(client, shop, admin):
    code = put_customer(client, shop)["code"]
    set_program(client, admin, landing_mode="welcome")
    page = client.get(f"/r/{code}")
    shop_link = unescape(re.search(r'id="to-shop" href="([^"]+)"', page.text).group(1))
    click_id = parse_qs(urlsplit(shop_link).query)["click_id"][0]
    response = sign_up(client, shop, "friend-1", click_id=click_id)
    assert response.status_code == 201 and response.json["attributed"] is True


def test_redirect_mode_is_unchanged_by_the_pages(client, shop):
    code = enrol(client, shop)
    assert click(client, code, "qr")


# --- the settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"landing_mode": "popup"}, "landing_mode"),
        ({"landing_mode": None}, "landing_mode"),
        ({"default_locale": "de"}, "default_locale"),
        ({"default_locale": "PL"}, "default_locale"),
        ({"share_messages": {"de": "Hallo"}}, "share_messages.de"),
        ({"share_messages": {"pl": "x" * 281}}, "share_messages.pl"),
        ({"share_messages": {"pl": "tab\there"}}, "share_messages.pl"),
        ({"share_messages": {"pl": "\u202eevil"}}, "share_messages.pl"),
        ({"share_messages": {"pl": 5}}, "share_messages.pl"),
        ({"share_messages": ["pl"]}, "share_messages"),
    ],
)
def test_page_settings_are_validated(client, admin, changes, field):
    response = client.patch("/api/v1/program", json=changes, headers=admin)
    assert response.status_code == 422, response.json
    assert any(name.startswith(field) for name in response.json["error"]["fields"]), response.json
    assert client.get("/api/v1/program", headers=admin).json["share_messages"] == {}


def test_share_messages_merge_by_language(client, admin):
    body = set_program(client, admin, share_messages={"pl": "Polecam!", "hu": "Ajánlom!"})
    assert body["share_messages"] == {"hu": "Ajánlom!", "pl": "Polecam!"}
    body = set_program(client, admin, share_messages={"el": "Σας το προτείνω!\nΔείτε το"})
    assert body["share_messages"] == {
        "el": "Σας το προτείνω!\nΔείτε το",
        "hu": "Ajánlom!",
        "pl": "Polecam!",
    }
    body = set_program(client, admin, share_messages={"pl": None, "hu": "  "})
    assert body["share_messages"] == {"el": "Σας το προτείνω!\nΔείτε το"}


# --- domain helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "email", "masked"),
    [
        ("Anna Kowalska", "a@x.org", "A*** K."),
        ("anna", "a@x.org", "A***"),
        ("Jan Maria Rokita", "j@x.org", "J*** R."),
        ("  Łukasz   żółw ", "l@x.org", "Ł*** Ż."),
        ("Ελένη Παπαδοπούλου", "e@x.org", "\u0395*** \u03a0."),  # Greek capitals
        (None, "Zed@x.org", "z***"),
        ("", "q@x.org", "q***"),
    ],
)
def test_mask_name(name, email, masked):
    assert portal.mask_name(name, email) == masked


def test_names_and_shop_texts_are_escaped(client, shop, admin):
    evil = '<script>alert(1)</script>"'
    code = put_customer(client, shop, name=f"{evil} Smith")["code"]
    set_program(
        client,
        admin,
        landing_mode="welcome",
        friend_offer={"type": "free_shipping", "description": evil},
        share_messages={"en": f"Look {evil}"},
    )
    for response in (client.get(f"/r/{code}"), client.get(portal_path(client, shop))):
        assert response.status_code == 200
        html = response.get_data(as_text=True)
        assert "<script>alert(1)" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;" in html


def test_the_built_in_landing_page_speaks_the_friends_language(client):
    response = client.get("/landing?ref=ABCD-EFGH", headers={"Accept-Language": "bg"})
    assert response.status_code == 200 and html_lang(response) == "bg"
    assert "<code>ABCD-EFGH</code>" in response.text and "You were invited" not in response.text
    switch = re.search(r'<a href="([^"]+)" hreflang="pl"', response.text).group(1)
    assert unescape(switch) == "/landing?ref=ABCD-EFGH&lang=pl"  # the referral is kept
    assert html_lang(client.get(unescape(switch))) == "pl"
    plain = client.get("/landing")
    assert "You were invited" in text_of(plain) and "no longer valid" in text_of(plain)


def test_a_friend_refunded_then_buying_again_is_listed_once(client, shop):
    """The friends list shows each friend once, in the state of their latest reward: after a
    full refund (reward reversed) and a new qualifying order (a new reward), "on hold"."""
    put_customer(client, shop)
    converted_friend(client, shop, "again-1", "ref-1")
    assert refund(client, shop, "o-again-1").status_code == 200
    assert client.get(portal_path(client, shop)).text.count('class="friend-name"') == 1
    assert buy(client, shop, "o-again-1-b", "again-1", "50.00").status_code == 201
    page = client.get(portal_path(client, shop))
    text = text_of(page)
    assert "Order refunded: no reward" not in text
    assert text.count("Bought: reward on hold") == 1
    assert page.text.count('class="friend-name"') == 1

"""The customer's share page and the friend's welcome page in a real browser: each language at
phone width, the copy buttons, share buttons that carry their channel, the page without
JavaScript, the language switcher and the browser's language, expired and forged links, the
welcome mode, and friends and rewards in the customer's language.

Data comes in through the live server's HTTP API, as a shop and an admin would send it; each
test starts from empty tables (the `api` fixture) and puts back the program settings it changed.
Expected words come from the catalogs the live server uses, so a missing translation shows up as
English where another language was asked for.
"""

import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from flask_babel import force_locale, gettext
from itsdangerous import URLSafeSerializer
from playwright.sync_api import expect

from referral_service.domain import portal
from referral_service.models import utcnow
from tests.browser.console import Api, desktop_only, fits_the_width

LANGUAGES = ["en", "pl", "hu", "el", "bg"]
CHANNELS = ["whatsapp", "email", "sms", "facebook", "x"]
HEADING = "Hi %(name)s, invite your friends"
phone_only = pytest.mark.parametrize("viewport", ["phone"], indirect=True)


def enrol(
    api: Api, external_id: str, name: str | None = "Ada Lovelace", locale: str | None = None
) -> dict:
    """Enrol a customer; their `referral` block (code, display code, share link)."""
    body = {"email": f"{external_id}@example.com", "name": name, "locale": locale}
    return api.ok("PUT", f"/api/v1/customers/{external_id}", body)["referral"]


def portal_link(api: Api, external_id: str, **body) -> dict:
    """A signed link to the customer's share page: `{"url", "expires_at"}`."""
    return api.ok("POST", f"/api/v1/customers/{external_id}/portal-link", body)


def refer(api: Api, code: str, friend: str, name: str | None, buys: bool) -> int | None:
    """`friend` signs up with `code` and, if `buys`, makes a first purchase of 50.00 EUR; the id
    of the referrer's reward for it."""
    body = {
        "external_id": friend,
        "email": f"{friend}@example.org",
        "name": name,
        "referral_code": code,
    }
    assert api.ok("POST", "/api/v1/signups", body)["attributed"] is True
    return api.first_purchase(friend)["id"] if buys else None


def clicks_by_channel(api: Api) -> dict[str, int]:
    """The clicks of the last 30 days per channel, as `GET /api/v1/stats` counts them."""
    stats = api.ok("GET", "/api/v1/stats", scope="admin")
    return {channel: counts["clicks"] for channel, counts in stats["by_channel"].items()}


def translated(live_server, language: str, message: str, **values) -> str:
    """`message` in `language`, from the catalogs the live server translates its pages with."""
    with live_server.app.test_request_context(), force_locale(language):
        return gettext(message, **values)


def language_of(page) -> str:
    return page.locator("html").get_attribute("lang")


def heading(page) -> str:
    return page.get_by_role("heading", level=1).inner_text()


def words(locator) -> str:
    """A locator's text with no-break spaces as plain ones (`10,00\xa0€` -> `10,00 €`)."""
    return locator.inner_text().replace("\xa0", " ")


@pytest.fixture
def program(api):
    """`program(**changes)` changes the program's settings; they are put back after the test,
    since other browser tests share the database without emptying it."""
    before = api.ok("GET", "/api/v1/program", scope="admin")
    changed: set[str] = set()

    def change(**changes) -> None:
        changed.update(changes)
        api.ok("PATCH", "/api/v1/program", changes, scope="admin")

    yield change
    if changed:
        api.ok("PATCH", "/api/v1/program", {k: before[k] for k in changed}, scope="admin")


# --- the share page in each language -------------------------------------------------------------


@phone_only
@pytest.mark.parametrize("language", LANGUAGES)
def test_share_page_in_each_language_fits_a_phone(page, live_server, api, screenshot, language):
    referral = enrol(api, f"lang-{language}", locale=language)
    link = portal_link(api, f"lang-{language}")
    assert link["url"].startswith(f"{live_server.url}/share/")

    response = page.goto(link["url"])

    assert response.status == 200
    assert response.headers["cache-control"] == "no-store"
    assert language_of(page) == language
    assert heading(page) == translated(live_server, language, HEADING, name="Ada")
    assert (heading(page) == "Hi Ada, invite your friends") == (language == "en")
    current = page.locator("nav.langs a[aria-current=true]")
    assert current.get_attribute("hreflang") == language
    assert page.locator("#link").input_value() == referral["share_url"]
    assert page.locator("#code").inner_text() == referral["display_code"]
    qr = page.locator(".qr img")
    assert qr.get_attribute("src") == referral["qr_svg_url"]
    assert qr.evaluate("i => i.complete && i.naturalWidth") > 0
    assert page.locator("#qr-png").get_attribute("href") == f"{referral['qr_png_url']}?size=1024"
    assert page.locator("#qr-svg").get_attribute("href") == referral["qr_svg_url"]
    assert fits_the_width(page)
    screenshot(page, language)


# --- copying and sharing -------------------------------------------------------------------------


def test_copy_buttons_copy_the_link_and_the_code(page, live_server, api):
    referral = enrol(api, "copy-ref", locale="hu")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    page.goto(portal_link(api, "copy-ref")["url"])
    status = page.get_by_role("status")

    page.locator("#copy-link").click()

    link_copied = translated(live_server, "hu", "Link copied.")
    expect(status).to_have_text(link_copied)
    assert link_copied != "Link copied."
    assert page.evaluate("navigator.clipboard.readText()") == f"{referral['share_url']}?via=copy"

    page.locator("#copy-code").click()

    code_copied = translated(live_server, "hu", "Code copied.")
    expect(status).to_have_text(code_copied)
    assert code_copied != "Code copied."
    assert page.evaluate("navigator.clipboard.readText()") == referral["display_code"]


@desktop_only
def test_share_buttons_carry_their_channel_and_count_its_clicks(page, open_page, api):
    share_link = enrol(api, "via-ref")["share_url"]
    page.goto(portal_link(api, "via-ref")["url"])
    hrefs = dict(
        page.locator("a.channel").evaluate_all(
            "links => links.map(a => [a.dataset.via, a.getAttribute('href')])"
        )
    )
    assert list(hrefs) == CHANNELS
    browser_agent = page.evaluate("navigator.userAgent")

    # The same person counts once an hour, so each channel's link reaches a friend of their own:
    # a browser context (own cookies) with a user agent of its own.
    friends, click_ids = {}, {}
    for via, href in hrefs.items():
        assert share_link not in href  # only URL-encoded inside the channel's own address
        values = [v for vs in parse_qs(urlsplit(href).query).values() for v in vs]
        inside = [link for v in values for link in re.findall(re.escape(share_link) + r"\S*", v)]
        assert inside == [f"{share_link}?via={via}"], href
        friend = friends[via] = open_page(user_agent=f"{browser_agent} friend-{via}")
        friend.goto(inside[0])  # the friend follows it
        landed = urlsplit(friend.url)
        assert landed.path == "/landing"
        (click_ids[via],) = parse_qs(landed.query)["click_id"]

    assert len(set(click_ids.values())) == len(CHANNELS)
    assert clicks_by_channel(api) == dict.fromkeys(CHANNELS, 1)

    # A friend who follows their link again within the hour is the same click, not a new one.
    first = CHANNELS[0]
    friends[first].goto(f"{share_link}?via={first}")
    assert parse_qs(urlsplit(friends[first].url).query)["click_id"] == [click_ids[first]]
    assert clicks_by_channel(api) == dict.fromkeys(CHANNELS, 1)


@desktop_only
def test_more_ways_to_share_only_where_the_browser_shares(page, live_server, api):
    share_link = enrol(api, "web-share-ref")["share_url"]
    url = portal_link(api, "web-share-ref")["url"]
    page.goto(url)
    assert page.locator("#web-share").is_visible() == page.evaluate("'share' in navigator")

    page.add_init_script(
        "Object.defineProperty(navigator, 'share', {value: data => {"
        " window.shared = data; return Promise.resolve(); }})"
    )
    page.goto(url)
    page.locator("#web-share").click()

    shared = page.evaluate("window.shared")
    assert shared["url"] == f"{share_link}?via=share"
    assert shared["text"] == translated(
        live_server, "en", "I shop here and I think you will like it too. Join with my link:"
    )


@desktop_only
def test_share_page_works_without_javascript(open_page, api):
    referral = enrol(api, "no-js-ref")
    refer(api, referral["code"], "no-js-friend", "Anna Kowalska", buys=True)
    page = open_page(java_script_enabled=False)

    page.goto(portal_link(api, "no-js-ref")["url"])

    assert page.locator("#link").is_visible()
    assert page.locator("#link").input_value() == referral["share_url"]
    assert page.locator("#code").inner_text() == referral["display_code"]
    channels = page.locator("a.channel")
    assert channels.count() == len(CHANNELS)
    assert all(channel.is_visible() for channel in channels.all())
    assert page.locator(".qr img").is_visible()
    for button in ("#copy-link", "#copy-code", "#web-share"):
        assert page.locator(button).is_hidden(), button
    assert page.locator("#friends .friend-name").all_inner_texts() == ["A*** K."]
    assert words(page.locator("#total-in_progress dd")) == "€10.00"
    assert words(page.locator("#rewards .list strong")) == "€10.00"


# --- the page's language -------------------------------------------------------------------------


@phone_only
def test_language_switcher_reloads_in_the_chosen_language(page, live_server, api):
    enrol(api, "switch-ref", locale="bg")
    url = portal_link(api, "switch-ref")["url"]
    page.goto(url)
    assert language_of(page) == "bg"

    page.get_by_role("link", name="Magyar").click()

    page.wait_for_url(f"{url}?lang=hu")
    assert language_of(page) == "hu"
    assert heading(page) == translated(live_server, "hu", HEADING, name="Ada")
    assert heading(page) != "Hi Ada, invite your friends"
    assert page.get_by_role("link", name="Magyar").get_attribute("aria-current") == "true"
    assert page.get_by_role("link", name="Български").get_attribute("aria-current") is None
    assert fits_the_width(page)


@desktop_only
def test_browser_language_then_program_default(open_page, program, api):
    enrol(api, "no-locale-ref", locale=None)
    enrol(api, "bg-ref", locale="bg")
    polish = open_page(locale="pl-PL")

    polish.goto(portal_link(api, "no-locale-ref")["url"])
    assert language_of(polish) == "pl"
    polish.goto(portal_link(api, "bg-ref")["url"])  # the customer's own locale comes first
    assert language_of(polish) == "bg"

    program(default_locale="el")
    german = open_page(locale="de-DE")  # a language the pages do not speak
    german.goto(portal_link(api, "no-locale-ref")["url"])
    assert language_of(german) == "el"


# --- links that no longer work -------------------------------------------------------------------


def test_expired_and_forged_links_say_so(
    open_page, page_errors, live_server, api, screenshot, monkeypatch
):
    page_errors.allow(r"status of (410|404) .*/share/")  # Chromium logs the page's own status
    enrol(api, "old-ref", locale="pl")
    link = portal_link(api, "old-ref", expires_in=60)
    page = open_page(locale="pl-PL")
    assert page.goto(link["url"]).status == 200

    later = utcnow() + timedelta(seconds=61)
    monkeypatch.setattr(portal, "utcnow", lambda: later)  # the live server runs in this process
    response = page.goto(link["url"])

    assert response.status == 410
    assert language_of(page) == "pl"
    expired = translated(live_server, "pl", "This link has expired")
    assert heading(page) == expired
    assert page.title() == expired
    assert expired != "This link has expired"
    assert page.locator("#link").count() == 0
    assert fits_the_width(page)
    screenshot(page, "expired")

    stranger = URLSafeSerializer("not the secret key", salt=portal.SALT)
    forged = stranger.dumps([1, int(later.timestamp()) + 86400])
    response = page.goto(f"/share/{forged}")

    assert response.status == 404
    assert language_of(page) == "pl"
    broken = translated(live_server, "pl", "This link does not work")
    assert heading(page) == broken
    assert broken != "This link does not work"
    assert fits_the_width(page)
    screenshot(page, "forged")


# --- the friend's welcome page -------------------------------------------------------------------


@phone_only
def test_welcome_page_names_the_referrer_and_keeps_the_click(
    page, live_server, api, program, screenshot
):
    program(landing_mode="welcome", friend_offer={"type": "percent", "value": "10"})
    code = enrol(api, "welcome-ref", name="Zofia Nowak")["code"]

    response = page.goto(f"/r/{code}?via=whatsapp")

    assert response.status == 200
    assert language_of(page) == "en"
    assert heading(page) == "Zofia invited you!"
    assert page.locator("#offer").inner_text() == "Get 10% off your first order."
    to_shop = urlsplit(page.locator("#to-shop").get_attribute("href"))
    query = parse_qs(to_shop.query)
    assert f"{to_shop.scheme}://{to_shop.netloc}{to_shop.path}" == f"{live_server.url}/landing"
    assert query["ref"] == [code]
    (click_id,) = query["click_id"]
    assert clicks_by_channel(api) == {"whatsapp": 1}

    page.get_by_role("link", name="Polski").click()

    page.wait_for_url(f"{live_server.url}/r/{code}/welcome?click_id={click_id}&lang=pl")
    assert language_of(page) == "pl"
    assert heading(page) == translated(live_server, "pl", "%(name)s invited you!", name="Zofia")
    assert heading(page) != "Zofia invited you!"
    offer = page.locator("#offer").inner_text()
    assert "10" in offer and "%" in offer and offer != "Get 10% off your first order."
    assert parse_qs(urlsplit(page.locator("#to-shop").get_attribute("href")).query) == query
    assert clicks_by_channel(api) == {"whatsapp": 1}  # no new click for the switch
    assert fits_the_width(page)
    screenshot(page)

    page.locator("#to-shop").click()

    page.wait_for_url(f"{live_server.url}/landing?ref={code}&click_id={click_id}")
    assert page.locator("code").first.inner_text() == code


# --- friends and rewards -------------------------------------------------------------------------


def test_friends_and_rewards_in_the_customers_language(page, live_server, api, program, screenshot):
    program(hold_days=0)  # a reward awaits approval at once
    code = enrol(api, "pl-ref", name="Jan Kowalski", locale="pl")["code"]
    anna = refer(api, code, "anna", "Anna Maria Kowalska", buys=True)
    refer(api, code, "bartek", "bartek", buys=True)
    refer(api, code, "celina", None, buys=False)
    api.ok("POST", f"/api/v1/rewards/{anna}/approve", {}, scope="admin")

    page.goto(portal_link(api, "pl-ref")["url"])

    assert language_of(page) == "pl"
    friends = page.locator("#friends")
    assert friends.locator(".friend-name").all_inner_texts() == ["c***", "B***", "A*** K."]
    assert "3" in friends.locator("p").first.inner_text()
    text = page.locator("body").inner_text()
    assert "Kowalska" not in text and "bartek" not in text and "celina@" not in text
    assert words(page.locator("#total-in_progress dd")) == "10,00 €"
    assert words(page.locator("#total-approved dd")) == "10,00 €"
    assert words(page.locator("#total-paid dd")) == "0,00 €"
    amounts = page.locator("#rewards .list strong").all_inner_texts()
    assert [a.replace("\xa0", " ") for a in amounts] == ["10,00 €", "10,00 €"]
    for_anna = translated(live_server, "pl", "For inviting %(name)s", name="A*** K.")
    assert page.locator("#rewards .list li", has_text=for_anna).count() == 1
    assert fits_the_width(page)
    screenshot(page)


# --- accessibility -------------------------------------------------------------------------------

# WCAG's contrast ratio of each element's text against the first opaque background behind it
CONTRASTS = """(selector) => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map((v) => {
    v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
  }).reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length === 3 || c[3] > 0) return c;
    }
    return [255, 255, 255];
  };
  return [...document.querySelectorAll(selector)]
    .filter((el) => el.offsetParent !== null && el.textContent.trim())
    .map((el) => {
      const [a, b] = [lum(rgb(getComputedStyle(el).color)), lum(background(el))];
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      return [el.textContent.trim().slice(0, 30), ratio];
    });
}"""


def test_share_page_for_keyboard_and_screen_reader(page, live_server, api, program):
    program(hold_days=0)
    code = enrol(api, "a11y-ref", locale="bg")["code"]
    refer(api, code, "a11y-friend", "Anna Kowalska", buys=True)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    page.goto(portal_link(api, "a11y-ref")["url"])

    # one h1, every section named by its heading, every image described, the field labelled
    assert page.locator("h1").count() == 1
    for section in page.locator("section[aria-labelledby]").all():
        assert page.locator(f"#{section.get_attribute('aria-labelledby')}").count() == 1
    assert all(alt.strip() for alt in page.locator("img").evaluate_all("i => i.map(x => x.alt)"))
    label = translated(live_server, "bg", "Your link")
    assert page.get_by_label(label).input_value().endswith(f"/r/{code}")
    assert page.get_by_role("navigation").count() == 1  # the language switcher, named
    assert page.locator("a[hreflang][lang]").count() == len(LANGUAGES)

    # the keyboard alone reaches the copy button, and Enter copies
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "copy-link":
            break
    else:
        raise AssertionError("Tab never reached the copy button")
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_have_text(translated(live_server, "bg", "Link copied."))

    # text stands out from its background: 4.5:1 at least (WCAG AA)
    selector = "h1, h2, p, label, a, button, .badge, .muted, dt, dd, strong"
    weak = [(text, round(ratio, 2)) for text, ratio in page.evaluate(CONTRASTS, selector)]
    assert [item for item in weak if item[1] < 4.5] == []

"""`/referral.js` on a shop's pages in Chromium: a tiny shop on another loopback port (its own
host name, `localhost`, so its cookies are its own) loads the script from the live server."""

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect

from referral_service.domain import program
from tests.browser.console import desktop_only

pytestmark = desktop_only

COOKIE = "rs_referral"
# a click id as the service hands them out (signed, 59 characters)
CODE, CLICK = "7KQ3M9XTW2HNB4RP", "AVbECFf73-VW8ByPVoJR8CsAAAAAAQBrDXGeBB0YQP6e5-514JSwDPPPel4"
OTHER, OTHER_CLICK = "5ZV1NQ8MHY4B2KTD", "another-click-id_012345"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
{head}<script src="{service}/referral.js"></script></head>
<body><h1>{title}</h1>
<form id="signup" action="/submitted" method="get">
  <input name="email" value="friend@example.com">
  <input name="referral_code" aria-label="Referral code">
  <input type="hidden" name="click_id">
  <button>Sign up</button>
</form>
<form id="typed"><input name="referral_code" value="TYPED-BY-HAND"></form>
<div id="later"></div>
<script>
  setTimeout(() => {{
    document.getElementById("later").innerHTML =
      '<form id="late"><input name="referral_code"><input name="click_id"></form>';
  }}, 150);
</script>
</body></html>"""
SHOPIFY = '<script>window.Shopify = {shop: "tiny.myshopify.com", routes: {root: "/"}};</script>'


@dataclass
class Shop:
    """The tiny shop: `url` (http://localhost:<port>) and what its cart received."""

    url: str
    posts: list[dict] = field(default_factory=list)


@pytest.fixture(scope="module")
def shop_server(live_server):
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            path = urlsplit(self.path).path
            pages = {"/page1": "", "/page2": "", "/shopify": SHOPIFY}
            if path in pages:
                html = PAGE.format(title=path[1:], head=pages[path], service=live_server.url)
                self._send(200, "text/html; charset=utf-8", html.encode())
            elif path == "/submitted":
                self._send(200, "text/html; charset=utf-8", b"<!doctype html><p>Thanks</p>")
            else:
                self._send(204, "text/plain", b"")

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append(
                {
                    "path": self.path,
                    "content_type": self.headers.get("Content-Type"),
                    "body": json.loads(body or b"null"),
                }
            )
            self._send(200, "application/json", b'{"attributes": {}}')

        def _send(self, status, content_type, body):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="tiny-shop", daemon=True)
    thread.start()
    yield Shop(f"http://localhost:{server.server_port}", received)
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()


@pytest.fixture
def shop(shop_server):
    shop_server.posts.clear()
    return shop_server


def filled(page, code: str, click_id: str = "") -> None:
    """The sign-up form and the form added later carry the referral; the typed field kept."""
    expect(page.locator("#signup [name=referral_code]")).to_have_value(code)
    expect(page.locator("#signup [name=click_id]")).to_have_value(click_id)
    expect(page.locator("#late [name=referral_code]")).to_have_value(code)
    expect(page.locator("#late [name=click_id]")).to_have_value(click_id)
    expect(page.locator("#typed [name=referral_code]")).to_have_value("TYPED-BY-HAND")


def kept_cookie(page, shop: Shop) -> dict:
    (cookie,) = [c for c in page.context.cookies(shop.url) if c["name"] == COOKIE]
    return cookie


def window_days(live_server) -> int:
    with live_server.app.app_context():
        return program.settings(last_known=True)["attribution_window_days"]


def test_the_referral_is_kept_across_pages_a_reload_and_a_new_tab(page, shop, live_server):
    landed = time.time()
    page.goto(f"{shop.url}/page1?ref={CODE}&click_id={CLICK}")
    filled(page, CODE, CLICK)
    assert page.evaluate("window.referral") == {"code": CODE, "clickId": CLICK}
    assert page.evaluate("Object.isFrozen(window.referral)")

    cookie = kept_cookie(page, shop)
    assert cookie["value"].split("|")[:2] == [CODE, CLICK]
    assert cookie["domain"] == "localhost" and cookie["path"] == "/"
    assert cookie["sameSite"] == "Lax"
    assert not cookie["secure"] and not cookie["httpOnly"]
    window = window_days(live_server) * 86400
    assert landed + window - 5 <= cookie["expires"] <= time.time() + window + 5
    # the shop's cookie stays the shop's: nothing is kept for the service's own host
    assert not [c for c in page.context.cookies(live_server.url) if c["name"] == COOKIE]

    page.goto(f"{shop.url}/page2")
    filled(page, CODE, CLICK)
    page.reload()
    filled(page, CODE, CLICK)
    assert kept_cookie(page, shop)["expires"] == pytest.approx(cookie["expires"], abs=2)

    tab = page.context.new_page()
    tab.goto(f"{shop.url}/page2")
    filled(tab, CODE, CLICK)
    assert tab.evaluate("window.referral.code") == CODE
    tab.close()

    # the field a visitor cleared stays clear when the form is sent
    page.locator("#signup [name=referral_code]").fill("")
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url("**/submitted?*")
    sent = parse_qs(urlsplit(page.url).query, keep_blank_values=True)
    assert sent["referral_code"] == [""] and sent["click_id"] == [CLICK]


def test_a_later_landing_replaces_the_referral_as_the_last_click_wins(page, shop):
    page.goto(f"{shop.url}/page1?ref={CODE}&click_id={CLICK}")
    filled(page, CODE, CLICK)
    first = kept_cookie(page, shop)

    page.goto(f"{shop.url}/page1?ref={OTHER}&click_id={OTHER_CLICK}")
    filled(page, OTHER, OTHER_CLICK)
    page.goto(f"{shop.url}/page2")
    filled(page, OTHER, OTHER_CLICK)
    ref, click_id, landed = kept_cookie(page, shop)["value"].split("|")
    assert (ref, click_id) == (OTHER, OTHER_CLICK)
    assert int(landed) >= int(first["value"].split("|")[2])  # the window starts again

    # the same referral without a click (a link of the shop's own) keeps the click
    page.goto(f"{shop.url}/page2?ref={OTHER}")
    filled(page, OTHER, OTHER_CLICK)
    # another referral without a click replaces both
    page.goto(f"{shop.url}/page1?ref={CODE}")
    page.goto(f"{shop.url}/page2")
    filled(page, CODE, "")
    assert page.evaluate("window.referral") == {"code": CODE, "clickId": None}


def test_without_a_referral_the_page_is_left_alone(page, shop):
    page.goto(f"{shop.url}/page1?ref=&click_id=%3Cscript%3E")

    assert page.evaluate("window.referral") == {"code": None, "clickId": None}
    expect(page.locator("#late [name=referral_code]")).to_have_value("")
    expect(page.locator("#signup [name=click_id]")).to_have_value("")
    assert not [c for c in page.context.cookies(shop.url) if c["name"] == COOKIE]


def test_a_shop_s_checkout_reads_it_from_the_event(page, shop):
    page.add_init_script(
        "document.addEventListener('referral:ready', (e) => { window.seen = e.detail; });"
    )
    page.goto(f"{shop.url}/page1?ref={CODE}&click_id={CLICK}")

    assert page.evaluate("window.seen") == {"code": CODE, "clickId": CLICK}


def test_on_shopify_the_referral_goes_to_the_cart_once_per_value(page, shop):
    page.goto(f"{shop.url}/shopify?ref={CODE}&click_id={CLICK}")
    filled(page, CODE, CLICK)

    page.wait_for_function("sessionStorage.getItem('rs_referral') !== null")
    assert shop.posts == [
        {
            "path": "/cart/update.js",
            "content_type": "application/json",
            "body": {"attributes": {"referral_code": CODE, "click_id": CLICK}},
        }
    ]
    page.reload()
    filled(page, CODE, CLICK)
    page.goto(f"{shop.url}/shopify")
    filled(page, CODE, CLICK)
    assert len(shop.posts) == 1

    page.goto(f"{shop.url}/shopify?ref={OTHER}")
    page.wait_for_function(f"sessionStorage.getItem('rs_referral') === '{OTHER}|null'")
    assert shop.posts[-1]["body"] == {"attributes": {"referral_code": OTHER, "click_id": ""}}
    assert len(shop.posts) == 2

    page.goto(f"{shop.url}/page2")  # not a Shopify page: nothing sent
    filled(page, OTHER, "")
    assert len(shop.posts) == 2


def test_on_https_the_cookie_is_secure(page, live_server):
    script = page.context.request.get(f"{live_server.url}/referral.js").body()
    html = PAGE.format(title="page1", head="", service="https://shop.example")

    def answer(route):
        path = urlsplit(route.request.url).path
        if path == "/referral.js":
            route.fulfill(body=script, content_type="application/javascript")
        elif path == "/page1":
            route.fulfill(body=html, content_type="text/html")
        else:
            route.fulfill(status=204)

    page.route("https://shop.example/**", answer)
    page.goto(f"https://shop.example/page1?ref={CODE}&click_id={CLICK}")
    filled(page, CODE, CLICK)

    (cookie,) = [c for c in page.context.cookies("https://shop.example") if c["name"] == COOKIE]
    assert cookie["secure"] and cookie["sameSite"] == "Lax"


def test_a_share_link_lands_on_the_shop_and_the_sign_up_attributes(page, shop, api, live_server):
    try:
        api.ok("PATCH", "/api/v1/program", {"landing_url": f"{shop.url}/page1"}, scope="admin")
        code = api.ok("PUT", "/api/v1/customers/js-ref", {"email": "js-ref@example.com"})[
            "referral"
        ]["code"]

        page.goto(f"{live_server.url}/r/{code}?via=whatsapp")
        page.wait_for_url(f"{shop.url}/page1?*")
        click_id = parse_qs(urlsplit(page.url).query)["click_id"][0]
        filled(page, code, click_id)
        page.goto(f"{shop.url}/page2")
        page.get_by_role("button", name="Sign up").click()
        page.wait_for_url("**/submitted?*")
        sent = parse_qs(urlsplit(page.url).query)
        with live_server.app.app_context():
            live_server.app.extensions["clicks"].flush()

        signup = api.ok(
            "POST",
            "/api/v1/signups",
            {
                "external_id": "js-friend",
                "email": sent["email"][0],
                "referral_code": sent["referral_code"][0],
                "click_id": sent["click_id"][0],
            },
        )
        assert signup["attributed"] is True
        assert signup["referral"]["referrer_external_id"] == "js-ref"
    finally:
        live_server.empty_tables()  # the program's default landing page again

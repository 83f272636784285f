"""The public pages in a real browser: they render, and the browser refuses nothing they carry."""

import itertools
from urllib.parse import parse_qs, urlsplit

import pytest

from referral_service.public.views import CLICK_COOKIE
from tests.factories import customer

_ids = itertools.count(1)
desktop_only = pytest.mark.parametrize("viewport", ["desktop"], indirect=True)


def new_code(live_server) -> str:
    """The referral code of a new customer, enrolled through the app of the live server."""
    n = next(_ids)
    with live_server.app.app_context():
        return customer(f"browser-{n}", f"browser{n}@example.com", name="Ada").code


def test_landing_page_renders_without_errors(page, screenshot):
    response = page.goto("/landing?ref=7KQ3M9XTW2HNB4RP")

    assert response.status == 200
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert page.get_by_role("heading", name="You were invited").is_visible()
    assert page.locator("code").first.inner_text() == "7KQ3M9XTW2HNB4RP"
    # The inline <style> applied: the page is centred and narrow, as the stylesheet says.
    assert page.locator("main").evaluate("m => getComputedStyle(m).maxWidth") != "none"
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page)


@desktop_only
def test_api_docs_render_swagger_ui_without_csp_violation(page, screenshot):
    response = page.goto("/api/docs")

    assert response.status == 200
    operation = page.locator(".opblock-summary-path", has_text="/api/v1/customers/").first
    operation.wait_for(state="visible")
    assert page.locator(".opblock").count() > 10
    assert "swagger-ui" in page.locator("#swagger-ui-container > div").get_attribute("class")
    screenshot(page)


@desktop_only
def test_share_link_lands_with_attribution_and_click_cookie(page, live_server):
    code = new_code(live_server)

    response = page.goto(f"/r/{code}?via=email")

    landed = urlsplit(page.url)
    query = parse_qs(landed.query)
    assert f"{landed.scheme}://{landed.netloc}" == live_server.url
    assert landed.path == "/landing"
    assert query["ref"] == [code]
    assert query["click_id"][0]
    assert response.status == 200
    assert response.request.redirected_from.url.endswith(f"/r/{code}?via=email")
    assert page.locator("code").first.inner_text() == code
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies[CLICK_COOKIE]["httpOnly"] is True
    assert cookies[CLICK_COOKIE]["sameSite"] == "Lax"
    assert cookies[CLICK_COOKIE]["value"].startswith(query["click_id"][0] + ".")
    # HttpOnly: the page's own scripts cannot read it.
    assert CLICK_COOKIE not in page.evaluate("document.cookie")


@desktop_only
def test_forged_share_link_lands_without_attribution(page, live_server):
    code = new_code(live_server)
    forged = code[:-1] + ("0" if code[-1] != "0" else "1")

    page.goto(f"/r/{forged}")

    assert urlsplit(page.url).path == "/landing"
    assert urlsplit(page.url).query == ""
    assert page.get_by_text("no longer valid").is_visible()
    assert CLICK_COOKIE not in {c["name"] for c in page.context.cookies()}


@desktop_only
@pytest.mark.parametrize("size", [None, 256])
def test_qr_png_loads_as_an_image_of_its_size(page, live_server, size):
    """Shown by a page of the service, as the share page will show it (`img-src 'self'`)."""
    code = new_code(live_server)
    src = f"/r/{code}/qr.png" + (f"?size={size}" if size else "")
    page.goto("/landing")

    with page.expect_response(lambda r: r.url.endswith(src)) as loaded:
        shown = page.evaluate(
            """src => new Promise((resolve, reject) => {
                const image = new Image();
                image.onload = () => resolve([image.naturalWidth, image.naturalHeight]);
                image.onerror = () => reject(new Error("the image did not load"));
                image.src = src;
                document.querySelector("main").append(image);
            })""",
            src,
        )

    assert shown == [size or 512, size or 512]
    assert loaded.value.status == 200
    assert loaded.value.headers["content-type"] == "image/png"


@desktop_only
def test_qr_png_opened_on_its_own_is_an_image(page, page_errors, live_server):
    """Opened directly (the API's `qr_png_url`), Chromium shows it in its image viewer.

    The viewer styles the <img> with inline style attributes, which the image's policy
    (`default-src 'none'`) refuses: the image is shown all the same, unstyled.
    """
    page_errors.allow(r"style-src-attr refused inline at \S+/qr\.png")
    page_errors.allow(r"Applying inline style violates .* 'default-src 'none''.*/qr\.png\b")
    code = new_code(live_server)

    response = page.goto(f"/r/{code}/qr.png?size=128")

    assert response.status == 200
    assert response.headers["content-type"] == "image/png"
    image = page.locator("img")
    assert image.evaluate("i => i.complete && [i.naturalWidth, i.naturalHeight]") == [128, 128]


@desktop_only
def test_page_errors_catch_a_csp_violation(page, page_errors, live_server):
    """The error collection works: an inline script the policy does not allow is reported."""
    page.route(
        f"{live_server.url}/csp-probe",
        lambda route: route.fulfill(
            status=200,
            content_type="text/html",
            headers={"Content-Security-Policy": "default-src 'none'"},
            body="<!doctype html><title>probe</title><script>console.log('ran')</script>",
        ),
    )
    page_errors.allow(r"script-src|Content Security Policy")

    page.goto("/csp-probe")
    page.wait_for_timeout(200)

    assert any("CSP violation: script-src" in m for m in page_errors.messages), page_errors.messages
    assert any("Content Security Policy" in m for m in page_errors.messages)

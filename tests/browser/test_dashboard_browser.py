"""The dashboard's insight in a real browser, on a desktop and on a phone (375 px): the charts
drawn (SVG with a size), nothing wider than the screen, nothing loaded from beyond the service
(no CDN), no console error or CSP violation (the `page` fixture fails the test on either), and
the CSV downloaded."""

from pathlib import Path

from sqlalchemy import update

from referral_service.extensions import db
from referral_service.models import Customer
from tests.browser.console import desktop_only, fits_the_width, make_admin, sign_in
from tests.test_admin_insight import HOSTILE_CHANNEL, QUOTED_NAME, fill_shop
from tests.test_insights import at, buy, signup, visit


def shop_with_data(live_server) -> None:
    """The scenario of tests/test_admin_insight.py, a hostile channel and a quoted name."""
    with live_server.app.app_context():
        fill_shop()
        click_id = visit("A", HOSTILE_CHANNEL, at(days=5))
        signup("F-hostile", at(days=5, hours=1), click_id=click_id)
        buy("fh-1", "F-hostile", "60.00", at(days=6))
        db.session.execute(
            update(Customer).where(Customer.external_id == "A").values(name=QUOTED_NAME)
        )
        db.session.commit()
        db.session.remove()


def test_the_dashboard_charts_fit_a_phone(page, live_server, api, screenshot):
    shop_with_data(live_server)
    email = make_admin(live_server, "viewer")
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    sign_in(page, email, "/admin?days=90")

    assert page.get_by_role("heading", name="Word of mouth, last 90 days").is_visible()
    assert page.locator("#k-factor").inner_text() == "0.86"  # 6 conversions for 7 customers
    assert page.locator("#best-channel").inner_text() == "whatsapp"
    assert page.locator("#worth").inner_text().startswith("+")
    charts = page.locator("svg.chart")
    assert charts.count() == 7
    for index in range(charts.count()):
        chart = charts.nth(index)
        assert chart.is_visible()
        box = chart.bounding_box()
        assert box["width"] > 0 and box["height"] > 0, index
        assert box["x"] >= 0 and box["x"] + box["width"] <= page.viewport_size["width"]
        assert chart.get_attribute("role") == "img" and chart.locator("title").count() == 1
    assert page.locator("svg.chart rect.bar").count() > 10
    assert page.get_by_role("img", name="K-factor by month, last 90 days").is_visible()
    # hostile names shown as text, never run
    assert page.get_by_role("row", name=HOSTILE_CHANNEL).is_visible()
    assert page.get_by_role("link", name=QUOTED_NAME).is_visible()
    # nothing wider than the screen (a phone's layout viewport grows to the widest content)
    assert fits_the_width(page)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert requested and all(url.startswith(live_server.url + "/") for url in requested), [
        url for url in requested if not url.startswith(live_server.url + "/")
    ]
    screenshot(page)


def test_an_empty_dashboard_says_no_data_yet(page, live_server, api, screenshot):
    email = make_admin(live_server, "viewer")
    sign_in(page, email, "/admin?days=365")
    assert page.get_by_role("link", name="365 days").get_attribute("aria-current") == "page"
    assert page.get_by_text("No data yet: no visit of a share link").is_visible()
    assert page.get_by_text("Not enough customers yet (at least 5 per group)").first.is_visible()
    funnel = page.get_by_role("img", name="Referral funnel, last 365 days")
    assert funnel.bounding_box()["height"] > 0
    assert fits_the_width(page)
    screenshot(page)


@desktop_only
def test_the_csv_downloads(page, live_server, api):
    shop_with_data(live_server)
    sign_in(page, make_admin(live_server, "viewer"), "/admin?days=90")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    assert download.value.suggested_filename.startswith("insights-")
    text = Path(download.value.path()).read_bytes().decode()
    assert text.startswith("figure,segment,value")
    assert "\r\nunique_visitors,,8\r\n" in text

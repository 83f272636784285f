"""The console's Integrations page in a real browser, at desktop and phone widths: each
platform's card and the integration log, with a hostile event among real ones."""

from decimal import Decimal

from referral_service.domain import platforms
from referral_service.domain.platforms import Ignore, Purchase
from referral_service.extensions import db
from referral_service.models import utcnow
from referral_service.models.platform import PlatformEvent
from tests.browser.console import fits_the_width, make_admin, sign_in


def test_the_integrations_page_reads_at_every_width(page, live_server, api, screenshot):
    api.ok("PUT", "/api/v1/customers/int-ref", {"email": "int-ref@example.com"})
    with live_server.app.app_context():
        platforms.apply(
            "stripe",
            "evt_browser_paid",
            "checkout.session.completed",
            Purchase("o-int", "int-buyer", Decimal("25.00"), "EUR", email="b@example.org"),
        )
        platforms.apply("shopify", "77", "carts/create", Ignore("unused", "Not used."))
        db.session.add(
            PlatformEvent(
                platform="shopify",
                event_id="\u202e" + "9" * 200,
                type="<script>alert(1)</script>",
                received_at=utcnow(),
                outcome="ignored",
                reason="no_email",
                message="x" * 480,
                order_id="o-" + "7" * 120,
                customer_external_id="int-ref",
            )
        )
        db.session.commit()
        db.session.remove()
    sign_in(page, make_admin(live_server, "viewer"), "/admin/integrations")
    assert page.get_by_role("heading", name="Integrations", level=1).is_visible()
    assert page.locator("#platform-stripe").get_by_text("Not configured").is_visible()
    assert (
        page.locator("#platform-shopify .url")
        .inner_text()
        .endswith("/integrations/shopify/webhook")
    )
    rows = page.locator("table.platform-log tbody tr")
    assert rows.count() == 3
    hostile = rows.nth(0)
    assert "<script>alert(1)</script>" in hostile.inner_text()  # shown as text
    hostile.get_by_role("link", name="int-ref").click()
    page.wait_for_url("**/admin/customers/int-ref")
    page.go_back()
    assert "signed up first" in rows.nth(2).inner_text()
    assert fits_the_width(page), page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    screenshot(page)
    page.get_by_label("Outcome").select_option("mapped")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/admin/integrations?*outcome=mapped*")
    assert rows.count() == 1 and "evt_browser_paid" in rows.nth(0).inner_text()

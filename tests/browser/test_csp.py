"""The content policy in Chromium: every page's own inline blocks run, nothing is refused.

The policy allows the inline `<script>` and `<style>` blocks of the templates a page was
rendered from, hashed from the templates' sources (security.InlineBlocks); a page whose own
block were refused would show a CSP violation here, which fails the test (see conftest.py).
That an injected block is refused is tested in tests/test_security_headers.py.
"""

from tests.browser.console import desktop_only, make_admin, sign_in


@desktop_only
def test_no_page_meets_a_csp_violation(page, page_errors, live_server, api):
    page_errors.allow(r"status of 400 .*/admin/customers\?q=%00")  # the refusal asked for
    referrer = api.ok("PUT", "/api/v1/customers/csp-ref", {"email": "csp-ref@example.com"})
    code = referrer["referral"]["code"]
    share = api.ok("POST", "/api/v1/customers/csp-ref/portal-link", {}, scope="admin")["url"]
    public = ["/landing?ref=ABCD", share, "/api/docs"]
    for url in public:
        response = page.goto(url)
        assert response.status == 200, url
        page.wait_for_load_state("networkidle")
    assert page.locator(".opblock").count() > 0  # Swagger UI's script ran: the operations show

    page.goto(share)
    assert page.locator("[data-copy]").first.is_visible()  # the share page's script ran

    api.ok("PATCH", "/api/v1/program", {"landing_mode": "welcome"}, scope="admin")
    try:
        page.goto(f"/r/{code}")  # the welcome page
        page.wait_for_load_state("networkidle")
    finally:  # the database is the other browser tests' too
        api.ok("PATCH", "/api/v1/program", {"landing_mode": "redirect"}, scope="admin")

    sign_in(page, make_admin(live_server, "owner"))
    for path in (
        "/admin",
        "/admin/rewards",
        "/admin/customers?q=csp",
        "/admin/customers/csp-ref",
        "/admin/payouts",
        "/admin/settings",
        "/admin/keys",
        "/admin/audit",
        "/admin/integrations",
        "/admin/customers?q=%00",  # the console's 400 page
    ):
        page.goto(path)
        page.wait_for_load_state("networkidle")

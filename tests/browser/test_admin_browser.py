"""The admin console in a real browser: sign-in, the dashboard, the rewards queue's decisions,
CSRF refusal, the viewer's limits and the keyboard.

Data comes in through the live server's HTTP API, as a shop and an admin would send it; each
test starts from empty tables (the live server's database is shared by the browser tests).
"""

from tests.browser.console import (
    PASSWORD,
    Api,
    audit,
    desktop_only,
    fits_the_width,
    make_admin,
    sign_in,
)

DISPOSABLE_WORDS = "The friend's email is at a throwaway-mail domain."


def seed_queue(api: Api, referrer: str, friends: dict[str, str]) -> dict[str, int]:
    """Enrol `referrer`, sign up each friend (`{external_id: email}`) with their code and make
    each buy for the first time; returns `{friend: id of the referrer's reward}`, every one of
    them awaiting approval."""
    api.ok("PATCH", "/api/v1/program", {"hold_days": 0}, scope="admin")
    answer = api.ok("PUT", f"/api/v1/customers/{referrer}", {"email": f"{referrer}@example.com"})
    code = answer["referral"]["code"]
    ids = {}
    for friend, email in friends.items():
        body = {"external_id": friend, "email": email, "referral_code": code}
        assert api.ok("POST", "/api/v1/signups", body)["attributed"] is True
        reward = api.first_purchase(friend)
        assert reward["status"] == "awaiting_approval", reward
        ids[friend] = reward["id"]
    return ids


# --- sign-in and the dashboard -------------------------------------------------------------------


def test_sign_in_shows_the_dashboard(page, live_server, api, screenshot):
    seed_queue(api, "dash-ref", {"dash-f1": "f1@example.org", "dash-f2": "f2@mailinator.com"})
    email = make_admin(live_server, "owner")

    page.goto("/admin")  # not signed in: sent to the sign-in page
    assert "/admin/login" in page.url
    sign_in(page, email)

    assert page.url == f"{live_server.url}/admin"
    assert page.get_by_role("heading", name="Dashboard", level=1).is_visible()
    assert page.get_by_text(f"{email} (owner)").is_visible()
    assert page.locator("#waiting").inner_text() == "2"
    chart = page.get_by_role("img", name="Referral funnel, last 30 days")
    assert chart.is_visible()
    assert "Sign-ups: 2." in chart.locator("desc").text_content()
    assert page.get_by_role("link", name="Dashboard").get_attribute("aria-current") == "page"
    assert fits_the_width(page)
    screenshot(page)

    page.get_by_role("navigation", name="Period").get_by_role("link", name="90 days").click()
    assert page.get_by_role("heading", name="Funnel, last 90 days").is_visible()

    page.get_by_role("button", name="Sign out").click()
    assert page.get_by_role("status").inner_text() == "You are signed out (on every device)."
    page.goto("/admin")
    assert "/admin/login" in page.url


@desktop_only
def test_wrong_password_is_refused_in_words(page, page_errors, live_server, api):
    page_errors.allow(r"status of 401 .*/admin/login")  # Chromium logs the page's own 401
    email = make_admin(live_server, "owner")
    page.goto("/admin/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("not the password")
    with page.expect_response(lambda r: r.url.endswith("/admin/login")) as answer:
        page.get_by_role("button", name="Sign in").click()

    assert answer.value.status == 401
    assert page.get_by_role("alert").inner_text() == "Wrong email or password."
    assert page.get_by_label("Email").input_value() == email
    assert page.get_by_label("Password").input_value() == ""


# --- the rewards queue ---------------------------------------------------------------------------


def test_queue_shows_risk_in_words(page, live_server, api, screenshot):
    ids = seed_queue(
        api,
        "queue-ref",
        {
            "queue-f1": "ann@example.org",
            "queue-f2": "bob@mailinator.com",
            "queue-f3": "cat@example.org",
        },
    )
    sign_in(page, make_admin(live_server, "approver"), "/admin/rewards")

    assert page.get_by_role("heading", name="Rewards", level=1).is_visible()
    assert page.get_by_text("3 rewards shown").is_visible()
    flagged = page.locator("tr", has=page.get_by_role("button", name=f"Approve #{ids['queue-f2']}"))
    assert flagged.get_by_text(DISPOSABLE_WORDS).is_visible()
    assert flagged.locator(".risk").inner_text().startswith("score ")
    assert "disposable_email" not in flagged.inner_text()
    calm = page.locator("tr", has=page.get_by_role("button", name=f"Approve #{ids['queue-f1']}"))
    assert DISPOSABLE_WORDS not in calm.inner_text()
    assert "o-queue-f1" in calm.inner_text() and "queue-ref" in calm.inner_text()
    assert fits_the_width(page)  # the wide table scrolls inside its own box
    screenshot(page)


@desktop_only
def test_approve_reject_and_bulk_approve_from_the_queue(page, live_server, api, screenshot):
    referrer = "decide-ref"
    ids = seed_queue(
        api,
        referrer,
        {
            "decide-a": "a@example.org",
            "decide-b": "b@mailinator.com",
            "decide-c": "c@example.org",
            "decide-d": "d@example.org",
        },
    )
    a, b, c, d = (ids[f"decide-{x}"] for x in "abcd")
    email = make_admin(live_server, "approver")
    sign_in(page, email, f"/admin/rewards?referrer={referrer}")
    assert page.get_by_text("4 rewards shown").is_visible()

    # approve one
    page.get_by_role("button", name=f"Approve #{a}").click()
    assert page.get_by_role("status").inner_text() == f"Approved 1 reward: #{a}."
    assert page.get_by_role("button", name=f"Approve #{a}").count() == 0
    assert page.get_by_label("Referrer (external id)").input_value() == referrer  # came back

    # reject one: without a reason first
    page.get_by_role("button", name=f"Reject #{b}").click()
    assert "Say why the reward is rejected" in page.get_by_role("alert").inner_text()
    assert api.rewards(referrer)[b]["status"] == "awaiting_approval"
    page.get_by_label("Reason for rejecting").fill("Throwaway address, same person")
    page.get_by_role("button", name=f"Reject #{b}").click()
    assert page.get_by_role("status").inner_text() == f"Rejected 1 reward: #{b}."

    # bulk approve the two left
    assert page.get_by_text("2 rewards shown").is_visible()
    page.get_by_label(f"Select reward {c}").check()
    page.get_by_label(f"Select reward {d}").check()
    page.get_by_role("button", name="Approve selected").click()
    assert page.get_by_role("status").inner_text() == f"Approved 2 rewards: #{c}, #{d}."
    assert page.get_by_text("No rewards match.").is_visible()

    statuses = {i: r["status"] for i, r in api.rewards(referrer).items()}
    assert statuses == {a: "approved", b: "rejected", c: "approved", d: "approved"}
    assert api.rewards(referrer)[b]["note"] == "Throwaway address, same person"
    actor = f"admin:{email}"
    assert [
        (who, what, int(subject)) for who, what, subject, _ in audit(live_server, "reward.")
    ] == [
        (actor, "reward.approve", a),
        (actor, "reward.reject", b),
        (actor, "reward.approve", c),
        (actor, "reward.approve", d),
    ]

    page.get_by_label("Status").select_option("all")
    page.get_by_role("button", name="Filter").click()
    assert page.get_by_text("4 rewards shown").is_visible()
    assert page.locator("tr", has_text="Throwaway address, same person").count() == 1
    screenshot(page, "decided")


# --- CSRF and roles ------------------------------------------------------------------------------


@desktop_only
def test_approve_without_csrf_token_is_refused(page, page_errors, live_server, api):
    page_errors.allow(r"status of 400 .*/admin/rewards/decide")
    ids = seed_queue(api, "csrf-ref", {"csrf-f1": "x@example.org"})
    reward = ids["csrf-f1"]
    sign_in(page, make_admin(live_server, "approver"), "/admin/rewards?referrer=csrf-ref")

    removed = page.evaluate(
        """() => {
            const input = document.querySelector(
                'form[action$="/admin/rewards/decide"] input[name="csrf_token"]');
            input.remove();
            return document.querySelectorAll(
                'form[action$="/admin/rewards/decide"] input[name="csrf_token"]').length === 0;
        }"""
    )
    assert removed
    with page.expect_response(lambda r: r.url.endswith("/admin/rewards/decide")) as answer:
        page.get_by_role("button", name=f"Approve #{reward}").click()

    assert answer.value.status == 400
    assert page.get_by_role("heading", name="Form refused").is_visible()
    assert page.get_by_text("missing its security token").is_visible()
    assert api.rewards("csrf-ref")[reward]["status"] == "awaiting_approval"
    assert audit(live_server, "reward.") == []


@desktop_only
def test_viewer_sees_no_decisions_and_a_forged_post_is_forbidden(
    page, page_errors, live_server, api
):
    page_errors.allow(r"status of 403 .*/admin/rewards/decide")
    ids = seed_queue(api, "viewer-ref", {"viewer-f1": "v@example.org"})
    reward = ids["viewer-f1"]
    email = make_admin(live_server, "viewer")
    sign_in(page, email, "/admin/rewards")

    assert page.get_by_text("1 reward shown").is_visible()
    assert page.get_by_role("cell", name=str(reward), exact=True).is_visible()
    assert page.get_by_role("button", name="Approve").count() == 0
    assert page.get_by_role("button", name="Reject").count() == 0
    assert page.get_by_role("checkbox").count() == 0
    assert page.locator('form[action$="/admin/rewards/decide"]').count() == 1

    forged = page.evaluate(
        """async (reward) => {
            const token = document.querySelector('input[name="csrf_token"]').value;
            const body = new URLSearchParams({csrf_token: token, approve: String(reward)});
            const response = await fetch("/admin/rewards/decide", {method: "POST", body});
            return [response.status, await response.text()];
        }""",
        reward,
    )

    assert forged[0] == 403
    assert "Not allowed" in forged[1]
    assert api.rewards("viewer-ref")[reward]["status"] == "awaiting_approval"
    assert audit(live_server, "reward.") == []


# --- the keyboard --------------------------------------------------------------------------------


def test_sign_in_with_the_keyboard_alone(page, live_server, api):
    email = make_admin(live_server, "approver")
    page.goto("/admin/login")

    focused = (
        "document.activeElement && (document.activeElement.id || document.activeElement.tagName)"
    )
    # autofocus: Chromium applies it once the page has settled, not always by `goto`'s end
    page.wait_for_function("document.activeElement && document.activeElement.id === 'email'")
    page.keyboard.type(email)
    page.keyboard.press("Tab")
    assert page.evaluate(focused) == "password"
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Sign in"
    with page.expect_navigation():
        page.keyboard.press("Enter")

    assert page.url == f"{live_server.url}/admin"
    assert page.get_by_text(f"{email} (approver)").is_visible()

    # The skip link is the first stop of the keyboard and takes it to the content.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    assert page.get_by_role("link", name="Skip to content").is_visible()

"""More of the admin console in a real browser: payouts (CSV, four eyes, paid with a reference),
the settings form's validation errors, and one referral's timeline (with screenshots).

Data comes in through the live server's HTTP API, as a shop and an admin would send it; each
test starts from empty tables (the live server's database is shared by the browser tests). The
helpers are in tests/browser/console.py.
"""

import csv
import io

import pytest

from tests.browser.console import (
    Api,
    audit,
    desktop_only,
    fits_the_width,
    make_admin,
    sign_in,
)


def enrol(api: Api, referrer: str) -> str:
    """The referral code of `referrer`, enrolled now."""
    answer = api.ok("PUT", f"/api/v1/customers/{referrer}", {"email": f"{referrer}@example.com"})
    return answer["referral"]["code"]


def refer(api: Api, code: str, friend: str, amount: str = "80.00", click_id: str | None = None):
    """`friend` signs up with `code` (or the click) and buys for the first time; the referrer's
    reward as the purchase answer shows it."""
    body = {"external_id": friend, "email": f"{friend}@example.org"}
    body |= {"click_id": click_id} if click_id else {"referral_code": code}
    assert api.ok("POST", "/api/v1/signups", body)["attributed"] is True
    return api.first_purchase(friend, amount)


def audit3(live_server, prefix: str) -> list[tuple]:
    """`(actor, action, subject_id)` of the audit records whose action starts with `prefix`."""
    return [record[:3] for record in audit(live_server, prefix)]


def main_fits_the_width(page) -> bool:
    """The page's own content (the header aside) is no wider than the screen."""
    return page.evaluate(
        "document.querySelector('main').getBoundingClientRect().right"
        " <= document.documentElement.clientWidth"
    )


def status_text(page) -> str:
    return page.get_by_role("status").inner_text()


def approved_rewards(api: Api, referrer: str, friends: list[str], value: str) -> list[int]:
    """Rewards of `value` EUR for `referrer`, approved at once (no hold, auto-approved)."""
    settings = {
        "hold_days": 0,
        "auto_approve_max_amount": "10000.00",
        "referrer_reward": {"type": "fixed", "value": value},
        "friend_reward": {"type": "none", "value": None},
    }
    api.ok("PATCH", "/api/v1/program", settings, scope="admin")
    code = enrol(api, referrer)
    rewards = [refer(api, code, friend) for friend in friends]
    assert [r["status"] for r in rewards] == ["approved"] * len(friends), rewards
    return [r["id"] for r in rewards]


def download_csv(page, batch: int) -> list[list[str]]:
    with page.expect_download() as download:
        page.get_by_role("link", name=f"payout-{batch}.csv").click()
    assert download.value.suggested_filename == f"payout-{batch}.csv"
    with open(download.value.path(), encoding="utf-8", newline="") as file:
        return list(csv.reader(io.StringIO(file.read())))


# --- payouts -------------------------------------------------------------------------------------


@desktop_only
def test_small_payout_created_downloaded_and_paid_by_its_creator(page, live_server, api):
    approved_rewards(api, "small-ref", ["small-f1", "small-f2"], "20.00")
    email = make_admin(live_server, "approver")
    sign_in(page, email, "/admin/payouts")

    assert page.get_by_role("heading", name="Payouts", level=1).is_visible()
    assert page.locator("#waiting").inner_text() == "40.00 EUR"
    page.get_by_role("button", name="Create a payout batch").click()
    page.wait_for_url("**/admin/payouts/*")
    batch = int(page.url.rsplit("/", 1)[1])
    assert status_text(page) == f"Created payout #{batch}: 2 rewards, 40.00 EUR."
    assert page.get_by_role("heading", name=f"Payout #{batch}", level=1).is_visible()
    assert page.locator("#total").inner_text() == "40.00 EUR (2 rewards)"
    assert "not required" in page.locator("#approved").inner_text()

    rows = download_csv(page, batch)
    assert rows[0][:2] == ["customer_external_id", "email"]
    assert rows[1] == [
        "small-ref",
        "small-ref@example.com",
        "",
        "2",
        "EUR",
        "40.00",
        "0.00",
        "40.00",
    ]
    assert rows[2] == ["TOTAL", "", "", "2", "EUR", "", "", "40.00"]
    assert len(rows) == 3

    # at or below the threshold, the creator may pay it without a second approver
    assert page.get_by_role("button", name=f"Approve payout #{batch}").count() == 0
    page.get_by_label("The bank's payment reference").fill("SEPA-small-1")
    page.get_by_role("button", name=f"Mark payout #{batch} paid").click()
    assert status_text(page) == f"Payout #{batch} is paid, reference SEPA-small-1."
    assert page.locator("#status").inner_text() == "paid"
    assert "reference SEPA-small-1" in page.locator("#paid").inner_text()

    page.get_by_role("link", name="All payouts").click()
    row = page.locator("tr", has=page.get_by_role("link", name=f"Payout #{batch}"))
    assert "paid" in row.inner_text() and "SEPA-small-1" in row.inner_text()
    actor = f"admin:{email}"
    assert audit3(live_server, "payout.") == [
        (actor, "payout.create", str(batch)),
        (actor, "payout.mark_paid", str(batch)),
    ]


@desktop_only
def test_large_payout_needs_a_second_approver(page, open_page, live_server, api):
    approved_rewards(api, "big-ref", ["big-f1", "big-f2"], "300.00")
    threshold = live_server.app.config["PAYOUT_APPROVAL_THRESHOLD"]
    assert float(threshold) < 600
    creator = make_admin(live_server, "approver")
    sign_in(page, creator, "/admin/payouts")
    page.get_by_role("button", name="Create a payout batch").click()
    page.wait_for_url("**/admin/payouts/*")
    batch = int(page.url.rsplit("/", 1)[1])
    assert status_text(page) == f"Created payout #{batch}: 2 rewards, 600.00 EUR."
    assert "required: the total is above 500.00 EUR" in page.locator("#approved").inner_text()

    rows = download_csv(page, batch)
    assert ["big-ref", "big-ref@example.com", "", "2", "EUR", "600.00", "0.00", "600.00"] in rows
    assert rows[-1] == ["TOTAL", "", "", "2", "EUR", "", "", "600.00"]

    # four eyes: the creator can neither approve nor pay, and is told why
    assert "created by you" in page.locator("#approve-refusal").inner_text()
    assert "a second approver, not its creator" in page.locator("#approve-refusal").inner_text()
    assert "needs a second approver" in page.locator("#paid-refusal").inner_text()
    assert page.get_by_role("button", name=f"Approve payout #{batch}").count() == 0
    assert page.get_by_role("button", name=f"Mark payout #{batch} paid").count() == 0
    # ... nor by posting the forms the page does not show: refused, in words
    refusals = {}
    for action in ("approve", "mark-paid"):
        refusals[action] = page.evaluate(
            """async ([batch, action]) => {
                const token = document.querySelector('input[name="csrf_token"]').value;
                const body = new URLSearchParams({csrf_token: token, reference: "X-1"});
                const response = await fetch(`/admin/payouts/${batch}/${action}`,
                                             {method: "POST", body});
                const html = new DOMParser().parseFromString(await response.text(), "text/html");
                return [...html.querySelectorAll('.flash[role="alert"]')].map(p => p.textContent);
            }""",
            [batch, action],
        )
    assert len(refusals["approve"]) == 1 and "created by you" in refusals["approve"][0]
    assert len(refusals["mark-paid"]) == 1
    assert "needs a second approver" in refusals["mark-paid"][0]
    page.reload()
    assert page.locator("#status").inner_text() == "created"
    assert api.ok("GET", f"/api/v1/payouts/{batch}", scope="admin")["status"] == "created"

    # a second approver, in their own browser, approves; then the batch is paid
    second = make_admin(live_server, "approver")
    other = open_page()  # another person's browser, with cookies of its own
    sign_in(other, second, f"/admin/payouts/{batch}")
    assert other.locator("#paid-refusal").is_visible()
    other.get_by_role("button", name=f"Approve payout #{batch}").click()
    assert status_text(other) == f"Approved payout #{batch}: it may now be marked paid."
    assert other.locator("#approved").inner_text().startswith(f"admin:{second}, ")
    assert "already approved" in other.locator("#approve-refusal").inner_text()
    other.get_by_label("The bank's payment reference").fill("SEPA-2024-0042")
    other.get_by_role("button", name=f"Mark payout #{batch} paid").click()
    assert status_text(other) == f"Payout #{batch} is paid, reference SEPA-2024-0042."
    assert other.locator("#status").inner_text() == "paid"

    paid = api.ok("GET", f"/api/v1/payouts/{batch}", scope="admin")
    assert paid["status"] == "paid" and paid["reference"] == "SEPA-2024-0042"
    page.reload()  # the creator sees it paid
    assert page.locator("#status").inner_text() == "paid"
    assert [(who, what) for who, what, _ in audit3(live_server, "payout.")] == [
        (f"admin:{creator}", "payout.create"),
        (f"admin:{second}", "payout.approve"),
        (f"admin:{second}", "payout.mark_paid"),
    ]


# --- settings ------------------------------------------------------------------------------------


def submit_refused(page) -> None:
    with page.expect_response(lambda r: r.url.endswith("/admin/settings")) as answer:
        page.get_by_role("button", name="Save settings").click()
    assert answer.value.status == 422
    assert "Nothing was saved" in page.get_by_role("alert").inner_text()


def assert_field_error(page, input_id: str, typed: str, words: str) -> None:
    """The input is marked invalid, keeps what was typed, and its message is next to it
    (linked by aria-describedby) and in the summary at the top, linking to the input."""
    field = page.locator(f"#{input_id}")
    assert field.get_attribute("aria-invalid") == "true"
    assert field.input_value() == typed
    message = page.locator(f"#{input_id}-error")
    assert message.is_visible() and words in message.inner_text(), message.inner_text()
    assert f"{input_id}-error" in field.get_attribute("aria-describedby").split()
    next_to = page.locator(f".field:has(#{input_id}) .field-error")
    assert next_to.inner_text() == message.inner_text()
    summary = page.get_by_role("alert")
    assert summary.locator(f'a[href="#{input_id}"]').count() == 1


@desktop_only
def test_settings_validation_errors_are_shown_by_their_inputs(page, page_errors, live_server, api):
    page_errors.allow(r"status of 422 .*/admin/settings")  # Chromium logs the page's own 422
    before = api.ok("GET", "/api/v1/program", scope="admin")
    sign_in(page, make_admin(live_server, "owner"), "/admin/settings")

    # First the form's checks (the API's schema): a negative hold. The reward value is also
    # wrong, but its check (decimals of the currency) comes second, as with PATCH /program.
    page.get_by_label("Hold before approval (days)").fill("-1")
    page.get_by_label("Referrer's reward type").select_option("fixed")
    page.get_by_label("Referrer's reward value").fill("10.505")
    submit_refused(page)
    assert_field_error(page, "set-hold-days", "-1", "greater than or equal to 0")
    assert page.locator("#set-referrer-reward-value").input_value() == "10.505"  # kept
    assert page.locator("#set-currency").get_attribute("aria-invalid") is None
    assert api.ok("GET", "/api/v1/program", scope="admin") == before

    # The hold corrected, the reward's three decimals are refused next to their input
    page.get_by_label("Hold before approval (days)").fill(str(before["hold_days"]))
    submit_refused(page)
    assert_field_error(page, "set-referrer-reward-value", "10.505", "at most 2 decimals")
    assert page.locator("#set-hold-days").get_attribute("aria-invalid") is None

    assert api.ok("GET", "/api/v1/program", scope="admin") == before
    assert audit3(live_server, "program.") == []


# --- one referral's story ------------------------------------------------------------------------


def test_referral_page_tells_the_story_in_order(page, live_server, api, screenshot):
    settings = {"hold_days": 0, "referrer_reward": {"type": "fixed", "value": "10.00"}}
    api.ok("PATCH", "/api/v1/program", settings, scope="admin")
    code = enrol(api, "story-ref")
    click_id = api.click(code, "whatsapp")
    reward = refer(api, code, "story-friend", amount="64.00", click_id=click_id)
    assert reward["status"] == "awaiting_approval"
    email = make_admin(live_server, "approver")
    sign_in(page, email, "/admin/rewards?referrer=story-ref")
    link = page.get_by_role("link", name="Referral #")  # the queue links a reward's referral
    assert link.count() == 1
    page.goto(link.get_attribute("href"))
    referral = int(page.url.rsplit("/", 1)[1])

    assert page.get_by_role("heading", name=f"Referral #{referral}", level=1).is_visible()
    # The keyboard, not a click: at 375 px the console's header overflows (see
    # test_console_header_fits_a_phone) and the mobile page's zoom puts clicks off target.
    page.get_by_role("button", name=f"Approve #{reward['id']}").press("Enter")
    page.wait_for_load_state()
    assert status_text(page) == f"Approved 1 reward: #{reward['id']}."
    assert page.url.endswith(f"/admin/referrals/{referral}")  # came back to the story

    events = page.locator("#timeline > li")
    kinds = [events.nth(i).get_attribute("data-kind") for i in range(events.count())]
    assert kinds == ["click", "signup", "purchase", "reward", "decision"]
    titles = [t.strip() for t in page.locator("#timeline .what strong").all_inner_texts()]
    assert titles == [
        "Share link opened",
        "Signed up, credited to story-ref",
        "Purchase o-story-friend: 64.00 EUR",
        f"Reward #{reward['id']} created: 10.00 EUR for the referrer (story-ref)",
        f"Reward #{reward['id']} approved",
    ]
    assert "Channel: whatsapp" in events.nth(0).inner_text()
    assert "through a click on the share link" in events.nth(1).inner_text()
    assert "qualifying first purchase" in events.nth(2).inner_text()
    assert f"by admin:{email}" in events.nth(4).inner_text()
    assert "awaiting approval → approved" in events.nth(4).inner_text()
    assert page.locator("table.referral-rewards").get_by_text("approved").is_visible()
    assert main_fits_the_width(page)
    screenshot(page, "referral")


@pytest.mark.parametrize("viewport", ["phone"], indirect=True)
def test_console_header_fits_a_phone(page, live_server, api):
    sign_in(page, make_admin(live_server, "owner"))
    assert fits_the_width(page), page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )

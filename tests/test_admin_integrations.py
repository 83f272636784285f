"""The console's Integrations page: each platform's setup and status, and the integration log
(filters, pagination, escaping), with events applied by domain/platforms.py and rows written
directly."""

import re
from datetime import timedelta
from decimal import Decimal
from html import unescape

import pytest

from referral_service.domain import platform_log, platforms
from referral_service.domain.platforms import Ignore, Purchase, Redact, Refund
from referral_service.errors import ValidationFailed
from referral_service.extensions import db
from referral_service.models import utcnow
from referral_service.models.platform import PlatformEvent
from tests.journey_helpers import referred_friend
from tests.test_admin_console import signed_in_as

PAGE = "/admin/integrations"
ROW = re.compile(r'<tr id="event-(\d+)">')


def html(client, path=PAGE) -> str:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    return response.get_data(as_text=True)


def shown_ids(page: str) -> list[int]:
    return [int(number) for number in ROW.findall(page)]


def section(page: str, platform: str) -> str:
    """The text of a platform's card."""
    start = page.index(f'id="platform-{platform}"')
    return page[start : page.index("</section>", start)]


def add_events(app, *rows: dict) -> list[int]:
    """PlatformEvent rows written directly (defaults: a Stripe event mapped now); their ids."""
    now = utcnow()
    with app.app_context():
        records = [
            PlatformEvent(
                **{
                    "platform": "stripe",
                    "event_id": f"evt_direct_{index}",
                    "type": "checkout.session.completed",
                    "received_at": now,
                    "outcome": "mapped",
                    **row,
                }
            )
            for index, row in enumerate(rows)
        ]
        db.session.add_all(records)
        db.session.commit()
        return [record.id for record in records]


@pytest.fixture
def applied(app, client, shop):
    """Events through domain/platforms.apply: a Stripe purchase that converts friend-1's
    referral, a Stripe refund of an unknown order and an unused Stripe type (both ignored), and
    a Shopify redaction of a customer the service does not know (ignored, not found)."""
    referred_friend(client, shop)
    with app.app_context():
        outcomes = [
            platforms.apply(
                "stripe",
                "evt_paid",
                "checkout.session.completed",
                Purchase("o-1", "friend-1", Decimal("50.00"), "EUR"),
            ),
            platforms.apply("stripe", "evt_refund", "charge.refunded", Refund("o-none")),
            platforms.apply(
                "stripe", "evt_unused", "customer.created", Ignore("unused", "Not used.")
            ),
            platforms.apply("shopify", "9001", "customers/redact", Redact("shopify-77")),
        ]
    assert [o.outcome for o in outcomes] == ["mapped", "ignored", "ignored", "ignored"]
    return outcomes


def test_the_page_shows_each_platforms_status_and_the_log(app, client, applied):
    signed_in_as(app, client, "viewer")
    page = html(client)
    assert 'href="/admin/integrations" aria-current="page">Integrations</a>' in page
    stripe = unescape(section(page, "stripe"))
    assert "customer.created</code>, ignored (unused)" in stripe  # the last event
    assert "1 in all, 1 in the last 7 days" in stripe  # mapped
    assert "2 in all, 2 in the last 7 days" in stripe  # ignored
    assert "<code>not_found</code>: 1 (1 in the last 7 days)" in stripe
    assert "<code>unused</code>: 1 (1 in the last 7 days)" in stripe
    shopify = unescape(section(page, "shopify"))
    assert "customers/redact</code>, ignored (not_found)" in shopify
    assert "0 in all, 0 in the last 7 days" in shopify  # mapped
    # the log: newest first, every column
    ids = shown_ids(page)
    assert len(ids) == 4 and ids == sorted(ids, reverse=True)
    paid = page[page.index(f'id="event-{ids[-1]}"') :]
    paid = paid[: paid.index("</tr>")]
    for text in ("Stripe", "checkout.session.completed", "evt_paid", "mapped", "o-1"):
        assert text in paid, text
    assert "converted the referral" in paid
    # the customer links to their console page when the service knows them
    assert '<a href="/admin/customers/friend-1">friend-1</a>' in paid
    redact = page[page.index(f'id="event-{ids[0]}"') :]
    redact = redact[: redact.index("</tr>")]
    assert "shopify-77" in redact and "/admin/customers/shopify-77" not in redact
    assert "not_found" in redact and "Shopify" in redact


@pytest.mark.parametrize("role", ["viewer", "approver", "owner"])
def test_every_role_reads_the_page(app, client, role):
    signed_in_as(app, client, role)
    page = html(client)
    assert "No platform events received yet." in page
    assert "none received yet" in section(page, "stripe")


def test_a_signed_out_visitor_is_sent_to_sign_in(client):
    response = client.get(f"{PAGE}?platform=stripe")
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/login?next=/admin/integrations?platform%3Dstripe"


def test_recent_counts_leave_out_older_events(app, client):
    old = utcnow() - timedelta(days=8)
    add_events(
        app,
        {"received_at": old},
        {"received_at": old, "outcome": "ignored", "reason": "unused"},
        {"outcome": "ignored", "reason": "unused"},
        {"outcome": "ignored", "reason": "no_email"},
        {"outcome": "ignored", "reason": "no_email"},
        {"outcome": "ignored", "reason": "no_email", "received_at": old},
        {"platform": "shopify", "type": "orders/paid"},
    )
    with app.app_context():
        found = platform_log.statuses(utcnow())
    stripe = found["stripe"]
    assert (stripe.mapped.all_time, stripe.mapped.recent) == (1, 0)
    assert (stripe.ignored.all_time, stripe.ignored.recent) == (5, 3)
    assert [(reason, t.all_time, t.recent) for reason, t in stripe.reasons] == [
        ("no_email", 3, 2),
        ("unused", 2, 1),
    ]
    assert stripe.last.reason == "no_email" and stripe.last.received_at is not None
    assert (found["shopify"].mapped.all_time, found["shopify"].last.type) == (1, "orders/paid")
    signed_in_as(app, client, "viewer")
    stripe_card = unescape(section(html(client), "stripe"))
    assert "5 in all, 3 in the last 7 days" in stripe_card
    assert stripe_card.index("no_email") < stripe_card.index("unused")


def test_the_log_filters_by_platform_and_outcome(app, client, applied):
    signed_in_as(app, client, "viewer")
    with app.app_context():
        every = {e.id: (e.platform, e.outcome) for e in db.session.query(PlatformEvent)}
    for query, wanted in [
        ("platform=stripe", lambda p, o: p == "stripe"),
        ("platform=shopify", lambda p, o: p == "shopify"),
        ("outcome=mapped", lambda p, o: o == "mapped"),
        ("outcome=ignored", lambda p, o: o == "ignored"),
        ("platform=stripe&outcome=ignored", lambda p, o: p == "stripe" and o == "ignored"),
        ("platform=shopify&outcome=mapped", lambda p, o: False),
    ]:
        page = html(client, f"{PAGE}?{query}")
        expected = sorted((i for i, (p, o) in every.items() if wanted(p, o)), reverse=True)
        assert shown_ids(page) == expected, query
        for part in query.split("&"):
            assert f'<option value="{part.split("=")[1]}" selected>' in page, query
        if not expected:
            assert "No platform events match." in page


@pytest.mark.parametrize(
    "query",
    [
        "platform=paypal",
        "platform=STRIPE",
        "outcome=duplicate",
        "outcome=",
        "platform=stripe%20",
        "platform=<script>&outcome=%E2%80%AE",
        "platform=" + "x" * 5000,
    ],
)
def test_an_unknown_filter_value_is_ignored(app, client, applied, query):
    """As the rewards queue's filters: a value the page does not offer shows every event."""
    signed_in_as(app, client, "viewer")
    page = html(client, f"{PAGE}?{query}")
    assert len(shown_ids(page)) == 4
    assert " selected>" not in page
    assert "<script>" not in page


def test_a_filter_with_a_control_character_is_the_consoles_400_page(app, client):
    signed_in_as(app, client, "viewer")
    response = client.get(f"{PAGE}?platform=stripe%00")
    assert response.status_code == 400
    assert "Request refused" in response.get_data(as_text=True)


def test_pages_are_stable_while_events_arrive_and_keep_the_filters(app, client):
    signed_in_as(app, client, "viewer")
    ids = add_events(
        app,
        *(
            {"event_id": f"evt_{n}", "outcome": "ignored" if n % 2 else "mapped"}
            for n in range(130)
        ),
    )
    seen: list[int] = []
    path = f"{PAGE}?outcome=ignored"
    pages = 0
    while path:
        page = html(client, path)
        pages += 1
        seen += shown_ids(page)
        # events arriving between two pages never shift the next one
        add_events(app, {"event_id": f"evt_late_{pages}", "outcome": "ignored"})
        following = re.search(r'href="([^"]+)" rel="next"', page)
        path = unescape(following.group(1)) if following else None
        if path:
            assert "outcome=ignored" in path and "cursor=" in path
        if pages > 1:
            assert 'href="/admin/integrations?outcome=ignored">First page</a>' in page
    ignored = [i for n, i in enumerate(ids) if n % 2]
    assert pages == 2 and seen == sorted(ignored, reverse=True)
    assert len(seen) == len(set(seen)) == 65


@pytest.mark.parametrize("cursor", ["nope", "MTA", "%F0%9F%92%A9", "9" * 400])
def test_a_bad_cursor_goes_back_to_the_first_page_with_the_filters(app, client, cursor):
    signed_in_as(app, client, "viewer")
    response = client.get(f"{PAGE}?platform=shopify&cursor={cursor}")
    if cursor == "MTA":  # a real cursor (id 10), past every event: an empty page
        assert response.status_code == 200
        return
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/integrations?platform=shopify"
    assert "no longer exists" in html(client, response.headers["Location"])


def test_hostile_values_in_the_log_are_escaped_and_cut(app, client, backend):
    nul = "" if backend == "postgresql" else "\x00"  # PostgreSQL refuses NUL in text
    long_message = "A" * 480 + "<b>tail</b>"
    add_events(
        app,
        {
            "event_id": "evt_\u202egpj.exe",  # RIGHT-TO-LEFT OVERRIDE: would show "exe.jpg"
            "type": "<script>alert(1)</script>",
            "outcome": "ignored",
            "reason": "<i>why</i>",
            "message": long_message,
            "order_id": f"o-\x1b[2J{nul}\x85\u2066x",
            "customer_external_id": '"><img src=x onerror=alert(1)>',
        },
        {"platform": "shopify", "event_id": "9" * 255, "type": "t" * 100, "message": "\u202b"},
    )
    signed_in_as(app, client, "viewer")
    page = html(client)
    for raw in ("<script>alert", "<img", "<i>why", "<b>tail", "\u202e", "\u202b", "\u2066"):
        assert raw not in page, raw
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "evt_\ufffdgpj.exe" in page and "o-\ufffd[2J" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "/admin/customers/%22" not in page  # no such customer: no link
    cut = "A" * 299 + "…"
    assert cut in page and "A" * 300 not in page
    assert "9" * 79 + "…" in page and "9" * 80 not in page
    assert "t" * 79 + "…" in page  # the type, in the log and as Shopify's last event


def test_the_secret_is_counted_never_shown(app, client):
    secrets = ("whsec_Q7zXk9PmW2aLr4", "whsec_R8yTj3NnV5bKs6")
    app.config["STRIPE_WEBHOOK_SECRETS"] = ",".join(secrets)
    app.config["SHOPIFY_WEBHOOK_SECRETS"] = "shpss_Zp3Lm8Qw1Rt6"
    signed_in_as(app, client, "viewer")
    page = html(client)
    assert "Configured: 2 secrets in <code>STRIPE_WEBHOOK_SECRETS</code>" in page
    assert "Configured: 1 secret in <code>SHOPIFY_WEBHOOK_SECRETS</code>" in page
    assert "Not configured" not in page and "To configure it" not in page
    for secret in (*secrets, "shpss_Zp3Lm8Qw1Rt6"):
        private = secret.split("_", 1)[1]
        for start in range(len(private) - 3):  # no four characters of it in a row
            assert private[start : start + 4] not in page, secret


def test_an_unconfigured_platform_says_how_to_configure_it(app, client):
    app.config["STRIPE_WEBHOOK_SECRETS"] = "whsec_Q7zXk9PmW2aLr4"
    app.config["SHOPIFY_WEBHOOK_SECRETS"] = None
    signed_in_as(app, client, "viewer")
    page = html(client)
    assert "Not configured" not in section(page, "stripe")
    shopify = unescape(section(page, "shopify"))
    assert "Not configured: every Shopify event is refused (401)." in shopify
    assert "To configure it" in shopify and "set <code>SHOPIFY_WEBHOOK_SECRETS</code>" in shopify
    for topic in ("orders/paid", "refunds/create", "customers/redact"):
        assert f"<code>{topic}</code>" in shopify


def test_the_webhook_urls_to_paste(app, client):
    signed_in_as(app, client, "viewer")
    page = html(client)  # no PUBLIC_BASE_URL: the address the request came to
    assert '<code class="url">http://shop.test/integrations/stripe/webhook</code>' in page
    assert '<code class="url">http://shop.test/integrations/shopify/webhook</code>' in page
    app.config["PUBLIC_BASE_URL"] = "https://refer.shop.example/base"
    page = html(client)
    stripe, shopify = section(page, "stripe"), section(page, "shopify")
    assert "https://refer.shop.example/base/integrations/stripe/webhook" in stripe
    assert "https://refer.shop.example/base/integrations/shopify/webhook" in shopify
    for kind in platform_log.SUBSCRIBED["stripe"]:
        assert f"<code>{kind}</code>" in stripe
    assert "checkout.session.async_payment_succeeded" in stripe


def test_the_log_page_refuses_unknown_filters_and_bad_cursors(app):
    with app.app_context():
        with pytest.raises(ValueError):
            platform_log.log_page(platform="paypal")
        with pytest.raises(ValueError):
            platform_log.log_page(outcome="duplicate")
        with pytest.raises(ValidationFailed):
            platform_log.log_page(cursor="nope")
        assert platform_log.log_page() == ([], None)
        assert platform_log.known_customers([None, "", "nobody"]) == set()

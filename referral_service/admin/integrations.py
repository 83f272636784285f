"""The console's Integrations page: each shop platform's setup and status, and the integration log.

Everyone signed in reads it. For Stripe and Shopify: whether the webhook secret is set (how many
secrets, never a secret itself), the webhook URL to paste into the platform and the events to
subscribe, the last event received, the events mapped and ignored (all time and the last days,
the ignored ones by reason); then the log of the platforms' events, newest first, filtered by
platform and by outcome. What a platform sent is shown as text, controls and bidirectional
overrides made visible and long values cut (a payload is anyone's to write).
"""

import re

from flask import current_app, flash, redirect, render_template, request, url_for

from referral_service.admin.views import blp
from referral_service.domain import platform_log
from referral_service.domain.platforms import secrets_of
from referral_service.errors import ValidationFailed
from referral_service.links import base_url
from referral_service.models import utcnow
from referral_service.models.platform import OUTCOMES, PLATFORMS

PAGE_SIZE = 50
NAMES = {"stripe": "Stripe", "shopify": "Shopify"}
SECRET_SETTINGS = {"stripe": "STRIPE_WEBHOOK_SECRETS", "shopify": "SHOPIFY_WEBHOOK_SECRETS"}
WEBHOOK_PATHS = {
    "stripe": "/integrations/stripe/webhook",
    "shopify": "/integrations/shopify/webhook",
}
# how many characters of a platform's value the page shows: the message, and any other value
MESSAGE_CHARS, VALUE_CHARS = 300, 80
# C0 and C1 controls, DEL, and the bidirectional marks, embeddings, overrides and isolates
# (an RLO in an event id would show another id): each shown as U+FFFD
UNSHOWN = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def shown(text: str | None, limit: int = VALUE_CHARS) -> str:
    """`text` as the page shows it: controls and bidirectional overrides replaced, at most
    `limit` characters (an ellipsis ends a cut text)."""
    if not text:
        return ""
    text = UNSHOWN.sub("\ufffd", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def chosen(name: str, allowed: tuple[str, ...]) -> str:
    """A filter's value when it is one of `allowed`; any other value is ignored (`""`: any)."""
    value = request.args.get(name, "")
    return value if value in allowed else ""


@blp.get("/integrations")
def integrations():
    filters = {"platform": chosen("platform", PLATFORMS), "outcome": chosen("outcome", OUTCOMES)}
    active = {name: value for name, value in filters.items() if value}
    cursor = request.args.get("cursor") or None
    try:
        events, next_cursor = platform_log.log_page(
            active.get("platform"), active.get("outcome"), cursor, PAGE_SIZE
        )
    except ValidationFailed:
        flash("That page of the log no longer exists; here is the first one.")
        return redirect(url_for("admin.integrations", **active))
    statuses = platform_log.statuses(utcnow())
    platforms = [
        {
            "key": platform,
            "name": NAMES[platform],
            "setting": SECRET_SETTINGS[platform],
            "secrets": len(secrets_of(current_app.config.get(SECRET_SETTINGS[platform]))),
            "url": base_url() + WEBHOOK_PATHS[platform],
            "subscribe": platform_log.SUBSCRIBED[platform],
            "status": statuses[platform],
            "last": statuses[platform].last,
        }
        for platform in PLATFORMS
    ]
    known = platform_log.known_customers(event.customer_external_id for event in events)
    rows = [
        {
            "id": event.id,
            "at": event.received_at,
            "platform": NAMES.get(event.platform, event.platform),
            "type": shown(event.type),
            "event_id": shown(event.event_id),
            "outcome": event.outcome,
            "reason": shown(event.reason),
            "message": shown(event.message, MESSAGE_CHARS),
            "order_id": shown(event.order_id),
            "customer": shown(event.customer_external_id),
            "customer_link": (
                url_for("admin.customer_page", external_id=event.customer_external_id)
                if event.customer_external_id in known
                else None
            ),
        }
        for event in events
    ]
    return render_template(
        "admin/integrations.html",
        platforms=platforms,
        recent_days=platform_log.RECENT_DAYS,
        rows=rows,
        filters=filters,
        active=active,
        names=NAMES,
        outcomes=OUTCOMES,
        next_cursor=next_cursor,
        first=cursor is not None,
        shown=shown,
    )

"""Console pages for customers and referrals: search, a customer's page (code, link, QR, stats,
friends, rewards), the rotation of a code, and the story of one referral.

Everyone signed in reads; making a link to the customer's share page (for support to send them)
and rotating a code take an approver (it breaks the links and QR codes the
customer has shared, so it sits with the people who decide on money, not with viewers). Rewards
are approved and rejected through the queue's own form handler (`admin.decide`), which sends the
admin back to the referral page.
"""

from datetime import datetime

from flask import flash, g, redirect, render_template, request, url_for
from markupsafe import Markup

from referral_service.admin.inputs import whole_number
from referral_service.admin.views import RISK_WORDS, blp, requires
from referral_service.domain import customers, portal, timeline
from referral_service.domain.codes import display
from referral_service.domain.fraud import WEIGHTS
from referral_service.errors import NotFound, ValidationFailed
from referral_service.links import portal_url, referral_block

# how long a share-page link made in the console works: long enough to send it to the customer
CONSOLE_LINK_DAYS = 7


def when(moment: datetime | None) -> Markup | str:
    """A UTC time as a `<time>` element, to the minute."""
    if moment is None:
        return ""
    return Markup('<time datetime="{}">{} UTC</time>').format(
        moment.isoformat(), moment.strftime("%Y-%m-%d %H:%M")
    )


def risk_list(reasons) -> list[dict]:
    """Each risk reason in words, with the weight it adds to the score."""
    return [
        {"code": code, "words": RISK_WORDS.get(code, code), "weight": WEIGHTS.get(code, 0)}
        for code in reasons
    ]


def not_found(message: str):
    return render_template("admin/error.html", title="Not found", message=message), 404


@blp.get("/customers")
def customer_search():
    query = request.args.get("q", "").strip()[:320]
    results = timeline.search_customers(query) if query else []
    return render_template(
        "admin/customers.html", q=query, results=results, limit=timeline.SEARCH_LIMIT
    )


@blp.get("/customers/<external_id>")
def customer_page(external_id: str):
    try:
        page = timeline.customer_page(external_id)
    except NotFound:
        return not_found(f"No customer has the external id {external_id!r}.")
    return render_template("admin/customer.html", **_customer_context(page))


def _customer_context(page: dict) -> dict:
    card = page["card"]
    return {
        "card": card,
        "page": page,
        "friends": [
            {**friend, "risks": risk_list(friend["risk_reasons"])} for friend in page["friends"]
        ],
        "link": referral_block(card.code) if card.code else None,
        "qr_url": url_for("public.QrSvg", code=card.code, size=256) if card.code else None,
        "qr_png_url": url_for("public.QrPng", code=card.code, size=512) if card.code else None,
        "when": when,
    }


@blp.route("/customers/<external_id>/rotate", methods=["GET", "POST"])
@requires("approver")
def rotate_code(external_id: str):
    """GET asks for confirmation; POST (with `confirm=yes`) revokes the code and issues a new one,
    audited as `customer.rotate_code` by `admin:<email>`."""
    try:
        card = customers.get(external_id)
    except (NotFound, ValidationFailed):  # a malformed id cannot name a customer
        return not_found(f"No customer has the external id {external_id!r}.")
    if request.method == "GET" or request.form.get("confirm") != "yes":
        return render_template(
            "admin/customer_rotate.html", card=card, code=display(card.code) if card.code else None
        )
    try:
        rotated = customers.rotate_code(card.external_id, actor=f"admin:{g.admin.email}")
    except NotFound:
        return not_found(f"No customer has the external id {external_id!r}.")
    old = f" The old code {display(card.code)} no longer works." if card.code else ""
    flash(f"New code {display(rotated.code)}.{old}")
    return redirect(url_for("admin.customer_page", external_id=card.external_id))


@blp.post("/customers/<external_id>/share-page")
@requires("approver")
def share_page_link(external_id: str):
    """A link to the customer's share page, for support to send them (audited as
    `customer.portal_link`); shown once on the customer's page."""
    try:
        link = portal.issue_link(
            external_id, CONSOLE_LINK_DAYS * 86400, actor=f"admin:{g.admin.email}"
        )
    except (NotFound, ValidationFailed):
        return not_found(f"No customer has the external id {external_id!r}.")
    page = timeline.customer_page(external_id)
    return render_template(
        "admin/customer.html",
        **_customer_context(page),
        portal_link=portal_url(link.token),
        portal_expires=link.expires_at,
    )


@blp.get("/referrals/<referral_id>")
def referral_page(referral_id: str):
    try:
        story = timeline.referral_story(whole_number(referral_id) or 0)
    except NotFound:
        return not_found(f"No referral {referral_id}.")
    referral = story["referral"]
    return render_template(
        "admin/referral.html",
        story=story,
        referral=referral,
        risks=risk_list(referral.risk_reasons or []),
        here=url_for("admin.referral_page", referral_id=referral.id),
        when=when,
    )

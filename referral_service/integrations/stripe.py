"""Stripe's webhooks in: `POST /integrations/stripe/webhook`.

The view is thin: it verifies the `Stripe-Signature` header over the raw body
(domain/platforms.verify_stripe, secrets in `STRIPE_WEBHOOK_SECRETS`), reads the event, maps it
with `action_for` and hands the action to `platforms.apply`, which carries it out once.

The mapping (pure, no HTTP; the one database read, a customer found by email, is passed in):
- `checkout.session.completed` with `payment_status` "paid" or "no_payment_required", and
  `checkout.session.async_payment_succeeded`: a Purchase. Customer = `client_reference_id`, else
  `metadata.customer_external_id`, else the one known customer with `customer_details.email`;
  order = `payment_intent` (else the session `id`); amount = `amount_total` in Stripe's minor
  units of `currency`; referral = `metadata.referral_code` / `metadata.click_id`; time = the
  session's `created`.
- `charge.refunded`: a Refund of order `payment_intent` (else the charge `id`) with
  `refunded_total` = `amount_refunded`.
- Anything else: Ignore with a snake_case reason and a message an admin can act on.

Every field of a payload is untrusted: a value of the wrong type, too long, or holding control
characters never raises; it becomes an Ignore naming the field (or, for the optional name and
email, is left out).
"""

import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime

from flask import request
from flask.views import MethodView
from sqlalchemy import select

from referral_service.domain import customers, platforms
from referral_service.domain.platforms import Action, Ignore, Purchase, Refund
from referral_service.domain.rewards import MAX_ORDER_ID
from referral_service.errors import ErrorEnvelope, ValidationFailed
from referral_service.extensions import db
from referral_service.integrations import (
    ACKNOWLEDGED,
    UNREADABLE_TYPE,
    Acknowledged,
    acknowledged,
    blp,
    read_json,
    secrets,
)
from referral_service.models import Customer

SETTING = "STRIPE_WEBHOOK_SECRETS"
PURCHASE_TYPES = frozenset(
    ["checkout.session.completed", "checkout.session.async_payment_succeeded"]
)
REFUND_TYPES = frozenset(["charge.refunded"])
PAID = frozenset(["paid", "no_payment_required"])
MAX_EVENT_ID = 255  # platform_events.event_id
MAX_EVENT_TYPE = 100  # platform_events.type
MAX_EMAIL = 320
MAX_REFERRAL = 200  # longer than any code or click id issued here; kept as typed below it
LARGEST_AMOUNT = 10**18  # minor units; far beyond the ledger's largest amount (10**12 major)
LATEST = 10**11  # unix seconds beyond any real date (year 5138): an unreadable time

FindCustomer = Callable[[str], list[str]]  # an email key -> the external ids known with it


# --- the view ---------------------------------------------------------------------------------


@blp.route("/stripe/webhook")
class StripeWebhook(MethodView):
    """Stripe's events."""

    @blp.doc(
        parameters=[
            {
                "in": "header",
                "name": "Stripe-Signature",
                "required": True,
                "schema": {"type": "string"},
                "description": '`t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">[,v1=...]`, '
                "within 300 s of now, under a secret of `STRIPE_WEBHOOK_SECRETS`.",
            }
        ],
        requestBody={
            "description": "The Event as Stripe sends it, signed in `Stripe-Signature`.",
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
    )
    @blp.response(
        200,
        Acknowledged,
        description=ACKNOWLEDGED,
    )
    @blp.alt_response(
        401,
        schema=ErrorEnvelope,
        description="`invalid_signature`: the `Stripe-Signature` header does not verify with "
        "a secret of `STRIPE_WEBHOOK_SECRETS` (or none is set); nothing was recorded.",
    )
    def post(self):
        """Receive a Stripe webhook event, verified by its `Stripe-Signature` header.

        Point a Stripe webhook endpoint here for `checkout.session.completed`,
        `checkout.session.async_payment_succeeded` and `charge.refunded`. Every verified event
        is answered 200 (an event that cannot be mapped too, so that Stripe does not retry it).
        """
        body = request.get_data(cache=False)
        platforms.verify_stripe(
            request.headers.get("Stripe-Signature"), body, secrets(SETTING), int(time.time())
        )
        event = read_json(body)
        event_id, event_type, action = read_event(event, body, known_customers)
        return acknowledged(platforms.apply("stripe", event_id, event_type, action))


def known_customers(key: str) -> list[str]:
    """The external ids of (at most two) customers whose normalized email is `key`."""
    return list(
        db.session.scalars(select(Customer.external_id).where(Customer.email_key == key).limit(2))
    )


# --- the mapping ------------------------------------------------------------------------------


def read_event(event, body: bytes, find: FindCustomer) -> tuple[str, str, Action]:
    """The event id, its type and the action of a verified body's JSON (`event`, None when the
    body is not a JSON object). An event without a readable id is named by the SHA-256 of its
    body, so that Stripe's retries of it are still recognized."""
    if not isinstance(event, dict):
        return (
            _body_id(body),
            UNREADABLE_TYPE,
            Ignore("unreadable_event", "The event's body is not a JSON object."),
        )
    event_id = _text(event.get("id"), MAX_EVENT_ID)
    event_type = _text(event.get("type"), MAX_EVENT_TYPE)
    if event_id is None or event_type is None:
        return (
            event_id or _body_id(body),
            event_type or UNREADABLE_TYPE,
            Ignore(
                "unreadable_event",
                "The event has no readable `id` or `type`: it is not a Stripe event.",
            ),
        )
    return event_id, event_type, action_for(event, find)


def action_for(event: dict, find: FindCustomer) -> Action:
    """The action of a Stripe event (a JSON object with a `type`); see the module."""
    kind = event.get("type")
    if not isinstance(kind, str) or (kind not in PURCHASE_TYPES and kind not in REFUND_TYPES):
        return Ignore(
            "unused_event_type",
            f"Stripe event type {_shown(kind)} is not used: send only "
            "checkout.session.completed, checkout.session.async_payment_succeeded and "
            "charge.refunded to this endpoint.",
        )
    data = event.get("data")
    thing = data.get("object") if isinstance(data, dict) else None
    if not isinstance(thing, dict):
        return Ignore("unreadable_event", f"The {kind} event has no `data.object`.")
    if kind in REFUND_TYPES:
        return refund_of(thing)
    return purchase_of(thing, kind, find)


def purchase_of(session: dict, kind: str, find: FindCustomer) -> Action:
    """The Purchase of a paid Checkout Session, or why there is none."""
    session_id = _text(session.get("id"), MAX_EVENT_ID)
    named = f"Checkout Session {session_id}" if session_id else "A Checkout Session"
    status = session.get("payment_status")
    if kind == "checkout.session.completed" and not (isinstance(status, str) and status in PAID):
        return Ignore(
            "not_paid",
            f"{named} completed with payment_status {_shown(status)}: not paid yet. The "
            "purchase is recorded when checkout.session.async_payment_succeeded arrives "
            "(send that event type to this endpoint too).",
        )
    order_id = _order_id(session, "session")
    if isinstance(order_id, Ignore):
        return order_id
    details = session.get("customer_details")
    details = details if isinstance(details, dict) else {}
    email = _email(details.get("email"))
    customer = _customer(session, email, find)
    if isinstance(customer, Ignore):
        return Ignore(customer.reason, f"{named}: {customer.message}", order_id=order_id)
    amount = _amount(session.get("amount_total"), session.get("currency"), "amount_total")
    if isinstance(amount, Ignore):
        return Ignore(
            amount.reason,
            f"{named}: {amount.message}",
            order_id=order_id,
            customer_external_id=customer,
        )
    metadata = session.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    referral = {}
    for field in ("referral_code", "click_id"):
        value = metadata.get(field)
        if value is None or value == "":
            continue
        text = _text(value, MAX_REFERRAL)
        if text is None:
            return Ignore(
                "unreadable_referral",
                f"{named}: metadata.{field} is not a text of at most {MAX_REFERRAL} printable "
                "characters; set it to the code or click id as the referral link gave it.",
                order_id=order_id,
                customer_external_id=customer,
            )
        referral[field] = text.strip() or None
    return Purchase(
        order_id=order_id,
        customer_external_id=customer,
        amount=amount,
        currency=session["currency"].upper(),
        occurred_at=_time(session.get("created")),
        email=email,
        name=_name(details.get("name")),
        **referral,
    )


def refund_of(charge: dict) -> Action:
    """The Refund of a refunded charge (its cumulative `amount_refunded`), or why there is none."""
    order_id = _order_id(charge, "charge")
    if isinstance(order_id, Ignore):
        return order_id
    amount = _amount(charge.get("amount_refunded"), charge.get("currency"), "amount_refunded")
    if isinstance(amount, Ignore):
        return Ignore(amount.reason, f"Order {order_id}: {amount.message}", order_id=order_id)
    # the amount was read in this currency, which must be the order's (checked when applied)
    return Refund(order_id, refunded_total=amount, currency=charge["currency"].upper())


# --- fields -----------------------------------------------------------------------------------


def _order_id(thing: dict, what: str) -> str | Ignore:
    """The order: the payment intent's id (a string, or an expanded object's `id`), else the
    session's or charge's own `id`."""
    intent = thing.get("payment_intent")
    if isinstance(intent, dict):
        intent = intent.get("id")
    if intent is None or intent == "":
        intent = thing.get("id")
        source = f"the {what} `id`"
    else:
        source = "`payment_intent`"
    order_id = _text(intent, MAX_ORDER_ID)
    if order_id is None or order_id != order_id.strip():
        return Ignore(
            "no_order",
            f"The {what} has no readable order: {source} is not a text of 1 to {MAX_ORDER_ID} "
            "printable characters.",
        )
    return order_id


def _customer(session: dict, email: str | None, find: FindCustomer) -> str | Ignore:
    """The customer's external id: `client_reference_id`, else `metadata.customer_external_id`,
    else the one known customer with the session's email."""
    metadata = session.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    for field, value in (
        ("client_reference_id", session.get("client_reference_id")),
        ("metadata.customer_external_id", metadata.get("customer_external_id")),
    ):
        if value is None or value == "":
            continue
        try:
            return customers.check_external_id(value)
        except ValidationFailed:
            return Ignore(
                "unreadable_customer",
                f"{field} is not a customer id (1 to {customers.MAX_EXTERNAL_ID} printable "
                "characters, no '/' or surrounding spaces): pass the shop's own customer id.",
            )
    if email is None:
        return Ignore(
            "no_customer",
            "no client_reference_id, no metadata.customer_external_id and no readable "
            "customer_details.email: pass the shop's customer id as client_reference_id when "
            "creating the Checkout Session.",
        )
    found = find(customers.email_key(email))
    if len(found) == 1:
        return found[0]
    if not found:
        return Ignore(
            "no_customer",
            "no client_reference_id, no metadata.customer_external_id, and no known customer "
            "has the session's email: pass the shop's customer id as client_reference_id when "
            "creating the Checkout Session.",
        )
    return Ignore(
        "ambiguous_customer",
        "no client_reference_id or metadata.customer_external_id, and several customers have "
        "the session's email: pass the shop's customer id as client_reference_id.",
    )


MESSAGES = {
    "unreadable_amount": "{field} is not a whole, non-negative number of Stripe's minor units.",
    "unknown_currency": "currency {currency} is not an ISO 4217 currency this service knows.",
    "unrepresentable_amount": (
        "{field} {amount} {currency} is finer than the currency's smallest unit (Stripe counts "
        "ISK in hundredths, which whole krónur cannot hold): record this order by hand."
    ),
}


def _amount(amount, currency, field: str):
    """An amount in major units (a Decimal), or the Ignore saying why it is none."""
    if isinstance(amount, int) and abs(amount) >= LARGEST_AMOUNT:  # beyond exact decimals
        return Ignore("amount_too_large", f"{field} {_shown(amount)} is beyond any real amount.")
    major = platforms.from_stripe_amount(amount, currency)
    if not isinstance(major, str):
        return major
    message = MESSAGES.get(major, "{field} cannot be read.").format(
        field=field,
        amount=_shown(amount),
        currency=_shown(currency),
    )
    return Ignore(major, message)


def _email(value) -> str | None:
    """The address if it is one (normalized as the API does), else None."""
    if not isinstance(value, str) or len(value) > MAX_EMAIL:
        return None
    try:
        return customers.check_email(value)
    except ValidationFailed:
        return None


def _name(value) -> str | None:
    """The name if the customers' rules accept it, else None (a name never stops a purchase)."""
    try:
        return customers.check_name(value)
    except ValidationFailed:
        return None


def _time(value) -> datetime | None:
    """A Stripe time (unix seconds) as an aware UTC time; None (now) when unreadable."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < LATEST:
        return None
    return datetime.fromtimestamp(value, UTC)


def _text(value, longest: int) -> str | None:
    """`value` if it is a text of 1 to `longest` printable characters, else None."""
    if isinstance(value, str) and 0 < len(value) <= longest and value.isprintable():
        return value
    return None


def _shown(value, longest: int = 60) -> str:
    """A payload value as a message may quote it: short and printable."""
    if value is None:
        return "(none)"
    if isinstance(value, bool | int | float):
        text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "(huge)"
    elif isinstance(value, str):
        text = value
    else:
        return f"(a JSON {'object' if isinstance(value, dict) else 'array'})"
    shown = "".join(char if char.isprintable() else "?" for char in text[:longest])
    return shown + ("..." if len(text) > longest else "")


def _body_id(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()

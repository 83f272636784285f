"""Shopify's webhooks in: `POST /integrations/shopify/webhook`, mapped onto the ledger.

The view verifies `X-Shopify-Hmac-SHA256` over the raw body (domain/platforms.py), names the
event by `X-Shopify-Event-Id` (else `X-Shopify-Webhook-Id`, else the body's SHA-256, so that a
retry is still the same event), and hands `action_of(topic, order)` to `platforms.apply`:

* `orders/paid`: a Purchase of order `id` by customer `customer.id` (email `email`, else
  `customer.email`; name from `customer.first_name` and `last_name`), of `current_total_price`
  (else `total_price`) in `currency`, dated `processed_at` (else `created_at`); the referral is
  the order's note attribute `referral_code` / `click_id` (a cart attribute of the same name, or
  with a leading `_`, which Shopify hides at checkout), or else the first of its
  `discount_codes` that is a well-signed referral code. A test order (`test: true`) is mapped
  like any other: the shop's own test shows the referral converting.
* `refunds/create`: a Refund of order `order_id` with `refund_id` = `id` and the sum of its
  successful `refund` transactions; a refund that moved no money (a restock) is ignored.
* `customers/redact`: a Redact of `customer.id`.

Every other topic, and every payload these cannot be read from, is an Ignore with its reason.
Every field is untrusted: a wrong type, a null, a huge or unprintable string is a reason to
ignore the event (or, for an optional field such as a name, to leave the field out), never an
error; the mapping reads no database and needs an application only to check referral codes.
"""

import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from flask import request
from flask.views import MethodView

from referral_service.domain import codes, customers, platforms
from referral_service.domain.money import AMOUNT_PATTERN, CURRENCIES, parse_amount
from referral_service.domain.platforms import Action, Ignore, Purchase, Redact, Refund
from referral_service.domain.refunds import check_refund_id
from referral_service.domain.rewards import check_order_id
from referral_service.errors import ErrorEnvelope, InvalidCode, ValidationFailed
from referral_service.integrations import (
    ACKNOWLEDGED,
    UNREADABLE_TYPE,
    Acknowledged,
    acknowledged,
    blp,
    read_json,
    secrets,
)

PLATFORM = "shopify"
SECRETS = "SHOPIFY_WEBHOOK_SECRETS"
ORDERS_PAID, REFUNDS_CREATE, CUSTOMERS_REDACT = "orders/paid", "refunds/create", "customers/redact"
TOPICS = (ORDERS_PAID, REFUNDS_CREATE, CUSTOMERS_REDACT)
# note attributes carrying the referral (a leading `_` hides a cart attribute at checkout)
CODE_ATTRIBUTES = ("referral_code", "_referral_code")
CLICK_ATTRIBUTES = ("click_id", "_click_id")
MAX_HEADER = 255  # characters of an event id or topic header read at most
MAX_TIME = 64  # characters of an ISO 8601 time read at most
MAX_DISCOUNT_CODES = 20  # discount codes of an order checked as referral codes at most
MAX_EMAIL = 320
_AMOUNT = re.compile(AMOUNT_PATTERN)
_CLICK_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # as clicks.sign_click makes them (or older)


class _Unreadable(Exception):
    """A field the mapping cannot read: the event is ignored with `reason`."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


# --- the view ---------------------------------------------------------------------------------


@blp.route("/shopify/webhook")
class ShopifyWebhook(MethodView):
    """Shopify's webhooks."""

    @blp.doc(
        parameters=[
            {
                "in": "header",
                "name": "X-Shopify-Hmac-SHA256",
                "required": True,
                "schema": {"type": "string"},
                "description": "The base64 HMAC-SHA256 of the raw body under a secret of "
                "`SHOPIFY_WEBHOOK_SECRETS`.",
            },
            {
                "in": "header",
                "name": "X-Shopify-Topic",
                "required": True,
                "schema": {"type": "string"},
                "description": "`orders/paid`, `refunds/create` or `customers/redact` (others "
                "are acknowledged and ignored).",
            },
            {
                "in": "header",
                "name": "X-Shopify-Event-Id",
                "required": False,
                "schema": {"type": "string"},
                "description": "The event's id, which a retry keeps (else `X-Shopify-Webhook-Id`, "
                "else a hash of the body).",
            },
        ],
        requestBody={
            "description": "The webhook's payload as Shopify sends it (an Order, a Refund, a "
            "customer to redact), signed in `X-Shopify-Hmac-SHA256`.",
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
        description="`invalid_signature`: no `X-Shopify-Hmac-SHA256`, one that matches no secret "
        "of `SHOPIFY_WEBHOOK_SECRETS`, or none is set; nothing was recorded.",
    )
    def post(self):
        """Receive a Shopify webhook, verified by its `X-Shopify-Hmac-SHA256` header.

        Subscribe the shop's webhooks `orders/paid`, `refunds/create` and `customers/redact`
        here. The header is the base64 HMAC-SHA256 of the raw body under the app's client
        secret; the topic is `X-Shopify-Topic`, the event `X-Shopify-Event-Id`. Every verified
        webhook is answered 200 (one that cannot be mapped too, so that Shopify does not retry
        it); a retry answers `duplicate` and changes nothing.
        """
        body = request.get_data(cache=False)
        platforms.verify_shopify(
            request.headers.get("X-Shopify-Hmac-SHA256"), body, secrets(SECRETS)
        )
        topic = _header("X-Shopify-Topic") or UNREADABLE_TYPE
        event_id = (
            _header("X-Shopify-Event-Id")
            or _header("X-Shopify-Webhook-Id")
            or hashlib.sha256(body).hexdigest()
        )
        payload = read_json(body)
        if payload is None:
            action = Ignore("unreadable_event", "The webhook's body is not a JSON object.")
        else:
            action = action_of(topic, payload)
        return acknowledged(platforms.apply(PLATFORM, event_id, topic, action))


def _header(name: str) -> str | None:
    """A request header's value if it is a short printable text, else None."""
    value = request.headers.get(name, "").strip()
    return value if value and len(value) <= MAX_HEADER and value.isprintable() else None


# --- the mapping ------------------------------------------------------------------------------


def signed_code(text) -> str | None:
    """The canonical referral code `text` reads as, if its signature verifies (no database)."""
    try:
        return codes.signer().verify(text)
    except InvalidCode:
        return None


def action_of(
    topic: str, payload: dict, referral_code: Callable[[object], str | None] = signed_code
) -> Action:
    """The action a Shopify webhook of `topic` asks for; an Ignore saying why when there is none.

    `referral_code(text)` reads a discount code as a referral code (canonical) or None; the
    default checks its signature, which needs the application. Raises nothing.
    """
    try:
        if topic == ORDERS_PAID:
            return paid_order(payload, referral_code)
        if topic == REFUNDS_CREATE:
            return refund(payload)
        if topic == CUSTOMERS_REDACT:
            return redact(payload)
    except _Unreadable as unreadable:
        return Ignore(unreadable.reason, unreadable.message)
    return Ignore(
        "unused_topic",
        f"Shopify topic {topic[:100]!r} is not one this service maps "
        f"(subscribe to {', '.join(TOPICS)}).",
    )


def paid_order(order: dict, referral_code: Callable[[object], str | None] = signed_code) -> Action:
    """`orders/paid`: a Purchase, or an Ignore. Raises _Unreadable for the order's own id."""
    order_id = _order_id(order.get("id"))
    customer = order.get("customer")
    customer_id = _customer_id(customer.get("id")) if isinstance(customer, dict) else None
    if customer_id is None:
        return Ignore(
            "no_customer",
            f"Order {order_id} names no customer (a guest checkout): nobody to credit.",
            order_id=order_id,
        )
    try:
        currency = _currency(order.get("currency"))
        price = order.get("current_total_price")
        amount = _amount(order.get("total_price") if price is None else price, currency)
        occurred_at = _time(order.get("processed_at") or order.get("created_at"))
    except _Unreadable as unreadable:
        return Ignore(
            unreadable.reason,
            f"Order {order_id}: {unreadable.message}",
            order_id=order_id,
            customer_external_id=customer_id,
        )
    attributes = _note_attributes(order.get("note_attributes"))
    typed = attributes.get(CODE_ATTRIBUTES)
    discounts = _discount_codes(order.get("discount_codes"))
    verified = next(filter(None, map(referral_code, [typed, *discounts])), None)
    click_id = attributes.get(CLICK_ATTRIBUTES)
    return Purchase(
        order_id,
        customer_id,
        amount,
        currency,
        occurred_at=occurred_at,
        email=_email(order.get("email"), customer.get("email")),
        name=_name(customer.get("first_name"), customer.get("last_name")),
        # a typed code that does not verify still goes to the sign-up, which says why
        referral_code=verified or codes.normalize(typed) or _as_typed(typed),
        click_id=click_id if isinstance(click_id, str) and _CLICK_ID.fullmatch(click_id) else None,
    )


def refund(payload: dict) -> Action:
    """`refunds/create`: a Refund of the money its successful refund transactions returned."""
    order_id = _order_id(payload.get("order_id"))
    try:
        refund_id = check_refund_id(_id_text(payload.get("id")))
    except ValidationFailed:
        return Ignore("unreadable_refund", "The refund's `id` is not readable.", order_id=order_id)
    transactions = payload.get("transactions")
    paid_back = [
        item
        for item in (transactions if isinstance(transactions, list) else [])
        if isinstance(item, dict)
        and item.get("kind") == "refund"
        and item.get("status") == "success"
    ]
    try:
        currencies = {
            _currency(item["currency"]) for item in paid_back if item.get("currency") is not None
        }
        if len(currencies) > 1:
            raise _Unreadable("unknown_currency", "its transactions are in several currencies.")
        currency = currencies.pop() if currencies else None
        amount = sum((_amount(item.get("amount"), currency) for item in paid_back), Decimal(0))
    except _Unreadable as unreadable:
        return Ignore(
            unreadable.reason, f"Refund {refund_id}: {unreadable.message}", order_id=order_id
        )
    if not amount:
        return Ignore(
            "no_refunded_amount",
            f"Refund {refund_id} returned no money (no successful refund transaction: a "
            "restock or an adjustment only).",
            order_id=order_id,
        )
    return Refund(order_id, refund_id=refund_id, amount=amount, currency=currency)


def redact(payload: dict) -> Action:
    """`customers/redact`: a Redact of the customer Shopify names."""
    customer = payload.get("customer")
    customer_id = _customer_id(customer.get("id")) if isinstance(customer, dict) else None
    if customer_id is None:
        return Ignore("no_customer", "The redaction request names no readable customer id.")
    return Redact(customer_id)


# --- fields -----------------------------------------------------------------------------------


def _id_text(value) -> str | None:
    """Shopify's numeric ids (or an id already a string) as text; None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**30:
        return str(value)
    return value if isinstance(value, str) else None


def _order_id(value) -> str:
    try:
        return check_order_id(_id_text(value))
    except ValidationFailed:
        raise _Unreadable("unreadable_order", "The order id is not readable.") from None


def _customer_id(value) -> str | None:
    try:
        return customers.check_external_id(_id_text(value))
    except ValidationFailed:
        return None


def _currency(value) -> str:
    if not isinstance(value, str) or value.upper() not in CURRENCIES:
        raise _Unreadable("unknown_currency", "its currency is not an ISO 4217 code.")
    return value.upper()


def _amount(value, currency: str | None) -> Decimal:
    """A plain decimal string, within the currency's minor unit when the currency is known."""
    if not isinstance(value, str) or not _AMOUNT.fullmatch(value):
        raise _Unreadable("unreadable_amount", "an amount is not a plain decimal string.")
    if currency is None:
        return Decimal(value)
    try:
        return parse_amount(value, currency, "amount")
    except ValidationFailed:
        raise _Unreadable(
            "unrepresentable_amount", f"an amount is finer than the minor unit of {currency}."
        ) from None


def _time(value) -> datetime | None:
    """An ISO 8601 time with its offset, in UTC; None when absent."""
    if value is None:
        return None
    try:
        if not isinstance(value, str) or len(value) > MAX_TIME:
            raise ValueError
        when = datetime.fromisoformat(value)
        if when.utcoffset() is None:
            raise ValueError
        return when.astimezone(UTC)
    except (ValueError, OverflowError):
        raise _Unreadable(
            "unreadable_time", "its time is not an ISO 8601 time with an offset."
        ) from None


def _note_attributes(value) -> dict[tuple[str, ...], object]:
    """The referral's note attributes: `{CODE_ATTRIBUTES: value, CLICK_ATTRIBUTES: value}`."""
    found: dict[tuple[str, ...], object] = {}
    for item in value if isinstance(value, list) else []:
        if not isinstance(item, dict):
            continue
        name = item.get("name")
        for names in (CODE_ATTRIBUTES, CLICK_ATTRIBUTES):
            if name in names and isinstance(name, str):
                found.setdefault(names, item.get("value"))
    return found


def _as_typed(value) -> str | None:
    """A code as typed, for the sign-up to say why it does not attribute (`invalid_code`): a
    short printable text, else None."""
    if isinstance(value, str) and value.strip() and value.isprintable() and len(value) <= 64:
        return value.strip()
    return None


def _discount_codes(value) -> list:
    return [
        item.get("code")
        for item in (value if isinstance(value, list) else [])[:MAX_DISCOUNT_CODES]
        if isinstance(item, dict)
    ]


def _email(*candidates) -> str | None:
    """The first candidate that may be an email address (a printable text with an `@`); the
    sign-up of an unknown customer checks it (a known customer's is not used)."""
    for value in candidates:
        if (
            isinstance(value, str)
            and "@" in value
            and len(value) <= MAX_EMAIL
            and value.isprintable()
            and value == value.strip()
        ):
            return value
    return None


def _name(*parts) -> str | None:
    """The customer's readable names (first, last) together; None when none is readable."""
    readable = []
    for part in parts:
        try:
            readable.append(customers.check_name(part if isinstance(part, str) else None))
        except ValidationFailed:
            continue
    name = " ".join(filter(None, readable))
    return name if name and len(name) <= customers.MAX_NAME else None

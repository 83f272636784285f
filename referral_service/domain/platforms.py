"""Events from the shop's platforms (Stripe, Shopify) onto the ledger, each exactly once.

A platform's webhook is verified (`verify_stripe`, `verify_shopify`: the signature schemes as each
platform documents them), then mapped by the platform's own module (integrations/) into an action of
this module: a `Purchase`, a `Refund`, a `Redact`, or `Ignore` with the reason. `apply` carries the
action out through the same domain functions as the API (a sign-up when an unknown customer carries
a referral, the purchase, the refund, the erasure), in one unit of work together with the event's
record in `platform_events`, unique per platform and event id: a platform's retry, even sent
concurrently, finds the record and changes nothing. An action the ledger refuses (an unknown order,
a currency it cannot take, an amount it cannot hold) is recorded as ignored with why, in a unit of
its own, and the platform gets its 2xx all the same: it would otherwise retry for days what will
never map. No payload is kept; the record names the order and the customer only.
"""

import base64
import hashlib
import hmac
import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from referral_service.domain import attribution, privacy, refunds, rewards
from referral_service.domain.clicks import flush_pending
from referral_service.domain.money import EXPONENTS, minor_digits
from referral_service.domain.unit import unit_of_work
from referral_service.errors import ReferralError, Unauthorized
from referral_service.extensions import db
from referral_service.models import Customer, utcnow
from referral_service.models import Purchase as PurchaseRow
from referral_service.models.platform import PLATFORMS, PlatformEvent

log = logging.getLogger(__name__)

STRIPE_TOLERANCE = 300  # seconds a Stripe signature's timestamp may be from now, either way
MAX_MESSAGE = 500
PLATFORM_ACTOR = "platform:{}"  # the audit actor of a refund or an erasure a platform asked for

# Stripe's minor units (https://docs.stripe.com/currencies): amounts are integers in the
# currency's smallest unit, which Stripe defines for itself. Zero-decimal currencies take whole
# units; three-decimal ones thousandths (the last digit 0); every other currency hundredths,
# including ISK, which ISO 4217 gives no decimals: Stripe keeps ISK two-decimal in its API
# (ISK 5 is `500`, and since 2023 every ISK amount is a multiple of 100).
STRIPE_ZERO_DECIMAL = frozenset(
    [
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "JPY",
        "KMF",
        "KRW",
        "MGA",
        "PYG",
        "RWF",
        "UGX",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    ]
)
STRIPE_THREE_DECIMAL = frozenset(["BHD", "JOD", "KWD", "OMR", "TND"])


class BadSignature(Unauthorized):
    """A platform webhook whose signature does not verify (or cannot: no secret is set)."""

    code = "invalid_signature"
    message = "The webhook's signature does not verify."


# --- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Purchase:
    """An order paid on the platform. `amount` in major units of `currency` (ISO 4217 code)."""

    order_id: str
    customer_external_id: str
    amount: Decimal
    currency: str
    occurred_at: datetime | None = None
    email: str | None = None
    name: str | None = None
    referral_code: str | None = None
    click_id: str | None = None


@dataclass(frozen=True)
class Refund:
    """A refund of an order: the cumulative `refunded_total`, or one refund (`refund_id` with its
    `amount`); amounts in major units of `currency`, which must be the order's (when given)."""

    order_id: str
    refunded_total: Decimal | None = None
    refund_id: str | None = None
    amount: Decimal | None = None
    customer_external_id: str | None = None
    currency: str | None = None  # the amounts' currency, when the platform says it


@dataclass(frozen=True)
class Redact:
    """A platform asks for a customer's personal data to be erased."""

    customer_external_id: str


@dataclass(frozen=True)
class Ignore:
    """Nothing to map: `reason` (a snake_case word) and `message` say why."""

    reason: str
    message: str
    order_id: str | None = None
    customer_external_id: str | None = None


Action = Purchase | Refund | Redact | Ignore


@dataclass(frozen=True)
class Outcome:
    """What became of a platform event: `mapped` or `ignored` (with `reason`), or `duplicate`
    for an event recorded before (nothing changed)."""

    outcome: str
    reason: str | None = None
    message: str | None = None


# --- signatures -------------------------------------------------------------------------------


def secrets_of(value: str | None) -> list[str]:
    """The secrets of a comma-separated setting (several during a rotation), blanks dropped."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def verify_stripe(header: str | None, body: bytes, secrets: list[str], now: int) -> None:
    """Check a `Stripe-Signature` header (`t=<unix time>,v1=<hex>,v1=...`) for `body`.

    As Stripe documents it (https://docs.stripe.com/webhooks#verify-manually): each `v1` is the
    hex HMAC-SHA256 of `<t>.<body>` keyed by an endpoint secret (`whsec_...`, used as it is).
    One `v1` matching one of `secrets` verifies; `t` must be within STRIPE_TOLERANCE seconds of
    `now` (unix seconds), in the past or the future. Raises BadSignature saying what failed.
    """
    if not secrets:
        raise BadSignature("STRIPE_WEBHOOK_SECRETS is not set: no Stripe event is accepted.")
    if not header:
        raise BadSignature("No Stripe-Signature header.")
    timestamp, signatures = None, []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isascii() and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif key == "v1" and value:  # bytes: compare_digest refuses non-ASCII text
            signatures.append(value.strip().encode("utf-8", "surrogatepass"))
    if timestamp is None or not signatures:
        raise BadSignature("The Stripe-Signature header has no timestamp or no v1 signature.")
    if abs(now - timestamp) > STRIPE_TOLERANCE:
        raise BadSignature(
            f"The Stripe-Signature timestamp is more than {STRIPE_TOLERANCE} s from now."
        )
    signed = str(timestamp).encode() + b"." + body
    for secret in secrets:
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest().encode()
        if any(hmac.compare_digest(expected, given) for given in signatures):
            return
    raise BadSignature("No v1 signature of the Stripe-Signature header matches a secret.")


def verify_shopify(header: str | None, body: bytes, secrets: list[str]) -> None:
    """Check an `X-Shopify-Hmac-SHA256` header for `body`: the base64 HMAC-SHA256 of the raw
    body keyed by the app's client secret (https://shopify.dev/docs/apps/build/webhooks/
    subscribe/https#step-5-verify-the-webhook). One of `secrets` must match. Raises BadSignature.
    """
    if not secrets:
        raise BadSignature("SHOPIFY_WEBHOOK_SECRETS is not set: no Shopify event is accepted.")
    if not header:
        raise BadSignature("No X-Shopify-Hmac-SHA256 header.")
    given = header.strip().encode("utf-8", "surrogatepass")
    for secret in secrets:
        expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest())
        if hmac.compare_digest(expected, given):
            return
    raise BadSignature("The X-Shopify-Hmac-SHA256 header matches no secret.")


# --- amounts ----------------------------------------------------------------------------------


def stripe_decimals(currency: str) -> int:
    """How many decimals Stripe's integer amounts of `currency` carry (see STRIPE_ZERO_DECIMAL)."""
    code = currency.upper()
    if code in STRIPE_ZERO_DECIMAL:
        return 0
    if code in STRIPE_THREE_DECIMAL:
        return 3
    return 2


def from_stripe_amount(amount, currency: str) -> Decimal | str:
    """A Stripe integer amount as an exact amount in major units of the ISO 4217 currency, or
    the reason it cannot be one (a string): not a whole non-negative number, an unknown
    currency, or finer than the currency's ISO minor unit (ISK 550 is 5.50 ISK, which ISO's
    whole krónur cannot hold)."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        return "unreadable_amount"
    if amount >= 10**18:  # beyond any order (and beyond what a Decimal scales exactly)
        return "amount_too_large"
    if not isinstance(currency, str) or currency.upper() not in EXPONENTS:
        return "unknown_currency"
    code = currency.upper()
    major = Decimal(amount).scaleb(-stripe_decimals(code))
    digits = minor_digits(code)
    if major != major.quantize(Decimal(1).scaleb(-digits)):
        return "unrepresentable_amount"
    return major.quantize(Decimal(1).scaleb(-digits))


# --- applying an action -----------------------------------------------------------------------


def seen(platform: str, event_id: str) -> bool:
    """Whether this platform event was recorded before (mapped or ignored)."""
    return (
        db.session.scalar(
            select(PlatformEvent.id).where(
                PlatformEvent.platform == platform, PlatformEvent.event_id == event_id
            )
        )
        is not None
    )


def apply(
    platform: str, event_id: str, event_type: str, action: Action, now: datetime | None = None
) -> Outcome:
    """Carry out `action` for platform event `event_id` once, and record it; see the module.

    Returns the Outcome. Raises nothing for what the ledger refuses (that is recorded as
    ignored); raises the database's errors (an outage) for the platform to retry.
    """
    if platform not in PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}")
    now = now or utcnow()
    event_id, event_type = _kept(event_id, 255) or "-", _kept(event_type, 100) or "-"
    if (isinstance(action, Purchase) and action.click_id) or isinstance(action, Redact):
        flush_pending()  # before the unit: the click may still wait in this process's buffer
    try:
        return _apply_once(platform, event_id, event_type, action, now)
    except IntegrityError:  # rolled back by its unit: the event recorded before, or a race lost
        if seen(platform, event_id):
            return Outcome("duplicate")
        return _apply_once(platform, event_id, event_type, action, now)


def _apply_once(platform, event_id, event_type, action, now) -> Outcome:
    """One try; its record comes first in its unit, so that an event recorded before (or a
    twin being recorded) fails it on the unique key before any effect."""
    if isinstance(action, Ignore):
        return _ignored(platform, event_id, event_type, action, now)
    try:
        with unit_of_work(now):
            # the record first: a concurrent twin waits for it (or fails on it) before any effect
            record = _record(platform, event_id, event_type, "mapped", None, None, action, now)
            message = _carry_out(platform, action, now)
            record.message = _kept(message, MAX_MESSAGE)
    except ReferralError as refused:  # the ledger's own answer: recorded, never retried
        if refused.status >= 500:  # the service cannot answer now (an outage): retried
            raise
        reason = "ledger_refused" if refused.code == "validation_error" else refused.code
        detail = refused.message
        if refused.fields:
            detail += " " + "; ".join(
                f"{field}: {' '.join(map(str, problems))}"
                for field, problems in refused.fields.items()
            )
        ignore = Ignore(
            reason,
            detail,
            order_id=getattr(action, "order_id", None),
            customer_external_id=getattr(action, "customer_external_id", None),
        )
        return _ignored(platform, event_id, event_type, ignore, now)
    log.info("%s event %s (%s) mapped: %s", platform, event_id, event_type, message)
    return Outcome("mapped", None, message)


def _ignored(platform, event_id, event_type, ignore: Ignore, now) -> Outcome:
    with unit_of_work(now):
        _record(
            platform, event_id, event_type, "ignored", ignore.reason, ignore.message, ignore, now
        )
    log.info(
        "%s event %s (%s) ignored (%s): %s",
        platform,
        event_id,
        event_type,
        ignore.reason,
        ignore.message,
    )
    return Outcome("ignored", ignore.reason, ignore.message)


def _kept(value, limit: int) -> str | None:
    """A text as the log keeps it: a string, no NUL (PostgreSQL refuses it), at most `limit`."""
    if value is None or value == "":
        return None
    return str(value).replace("\x00", "\ufffd")[:limit]


def _record(platform, event_id, event_type, outcome, reason, message, action, now):
    record = PlatformEvent(
        platform=platform,
        event_id=_kept(event_id, 255) or "-",
        type=_kept(event_type, 100) or "-",
        received_at=now,
        outcome=outcome,
        reason=_kept(reason, 64),
        message=_kept(message, MAX_MESSAGE),
        order_id=_kept(getattr(action, "order_id", None), 128),
        customer_external_id=_kept(getattr(action, "customer_external_id", None), 128),
    )
    db.session.add(record)
    db.session.flush()  # the unique record: a concurrent twin fails here, before any effect
    return record


def _carry_out(platform: str, action: Action, now: datetime) -> str:
    """The action's effect through the API's own domain functions; a sentence saying what."""
    if isinstance(action, Purchase):
        return _purchase(action, now)
    if isinstance(action, Refund):
        if action.currency is not None:
            ordered_in = db.session.scalar(
                select(PurchaseRow.currency).where(PurchaseRow.order_id == action.order_id)
            )
            if ordered_in is not None and ordered_in != action.currency:
                raise _Unmappable(
                    "currency_mismatch",
                    f"The refund is in {action.currency}, the order {action.order_id} in "
                    f"{ordered_in}: it cannot be applied.",
                )
        answer = refunds.refund(
            action.order_id,
            None if action.amount is None else str(action.amount),
            refund_id=action.refund_id,
            refunded_total=None if action.refunded_total is None else str(action.refunded_total),
            actor=PLATFORM_ACTOR.format(platform),
            now=now,
        )
        return f"Order {action.order_id}: refunded {answer['refunded_total']} in all."
    if isinstance(action, Redact):  # as `customers erase` does; an unknown customer: not_found
        privacy.erase(action.customer_external_id, PLATFORM_ACTOR.format(platform), now)
        return f"Customer {action.customer_external_id} erased."
    raise TypeError(f"not an action: {action!r}")


def _purchase(action: Purchase, now: datetime) -> str:
    known = db.session.scalar(
        select(Customer.id).where(Customer.external_id == action.customer_external_id)
    )
    signed_up = ""
    if not known:
        if not action.email:
            raise _Unmappable(
                "no_email", "An unknown customer without an email address cannot be signed up."
            )
        answer = attribution.signup(
            action.customer_external_id,
            action.email,
            referral_code=action.referral_code,
            click_id=action.click_id,
            occurred_at=action.occurred_at,
            name=action.name,
            now=now,
        )
        signed_up = (
            " The customer was signed up first, attributed."
            if answer.attributed
            else f" The customer was signed up first, not attributed ({answer.reason})."
        )
    answer = rewards.record_purchase(
        action.order_id,
        action.customer_external_id,
        str(action.amount),
        action.currency,
        occurred_at=action.occurred_at,
        now=now,
    )
    body = answer.body
    said = f"Order {action.order_id}: {action.amount} {action.currency}"
    if body.get("first_purchase") and body.get("rewards"):
        said += f", converted the referral ({len(body['rewards'])} reward(s))."
    elif body.get("reason"):
        said += f", no reward ({body['reason']})."
    else:
        said += ", recorded."
    return said + signed_up


class _Unmappable(ReferralError):
    """An action this service cannot carry out, for a reason of its own (`code`)."""

    status = 422

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code

"""Shop platforms in: Stripe's and Shopify's own webhooks, straight onto the ledger.

A door like api/: each platform's module verifies the platform's signature, reads the event and
maps it into an action of domain/platforms.py, which carries it out once. The answers are JSON:
`{"received": true, "outcome": "mapped" | "ignored" | "duplicate", "reason"}` with 200 for every
event that verified (an event that cannot be mapped is acknowledged, so that the platform does
not retry it for days, and shows in the console's integration log), 401 in the error envelope
for a signature that does not verify.
"""

import json

from flask import current_app, jsonify
from marshmallow import Schema, fields

from referral_service.api.blueprint import Blueprint
from referral_service.domain import platforms

blp = Blueprint(
    "integrations",
    __name__,
    url_prefix="/integrations",
    description="Webhooks of the shop's platforms (Stripe, Shopify), verified by their signatures.",
)


UNREADABLE_TYPE = "unreadable"  # the type recorded for an event without a readable one
ACKNOWLEDGED = (  # the spec's description of the 200 answer
    "Verified and acknowledged: `mapped` (the ledger has it), `ignored` (with the `reason`; "
    "nothing to map, shown in the console's integration log) or `duplicate` (an event id seen "
    "before; nothing changed)."
)


class Acknowledged(Schema):
    """The answer to a verified event."""

    received = fields.Boolean(required=True)
    outcome = fields.String(required=True, metadata={"enum": ["mapped", "ignored", "duplicate"]})
    reason = fields.String(allow_none=True, required=True)


def secrets(setting: str) -> list[str]:
    """The webhook secrets of a setting (`STRIPE_WEBHOOK_SECRETS`, `SHOPIFY_WEBHOOK_SECRETS`)."""
    return platforms.secrets_of(current_app.config.get(setting))


def read_json(body: bytes):
    """The body's JSON object, or None when it is not one (unreadable, too deep, not an object)."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def acknowledged(outcome: platforms.Outcome):
    """The 200 answer to a verified event."""
    return jsonify(received=True, outcome=outcome.outcome, reason=outcome.reason)


from referral_service.integrations import shopify, stripe  # noqa: E402, F401 (their routes)

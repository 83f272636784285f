"""The JSON API under /api/v1: flask-smorest blueprints with thin views."""

from referral_service import rate_limits
from referral_service.api import admin, checkout, customers, events, insights, program, webhooks

BLUEPRINTS = (
    customers.blp,
    checkout.blp,
    admin.blp,
    insights.blp,
    program.blp,
    events.blp,
    webhooks.blp,
)

for _blueprint in BLUEPRINTS:
    rate_limits.per_api_key(_blueprint)
rate_limits.signups_per_referrer(checkout.blp, checkout.Signups)

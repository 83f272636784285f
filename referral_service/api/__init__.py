"""The JSON API under /api/v1: flask-smorest blueprints with thin views."""

from referral_service import rate_limits
from referral_service.api import admin, checkout, customers, program

BLUEPRINTS = (customers.blp, checkout.blp, admin.blp, program.blp)

for _blueprint in BLUEPRINTS:
    rate_limits.per_api_key(_blueprint)
rate_limits.signups_per_referrer(checkout.blp, checkout.Signups)

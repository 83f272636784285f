"""The JSON API under /api/v1: flask-smorest blueprints with thin views."""

from referral_service.api import customers, program

BLUEPRINTS = (customers.blp, program.blp)

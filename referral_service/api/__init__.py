"""The JSON API under /api/v1: flask-smorest blueprints with thin views."""

from referral_service.api import admin, checkout, customers, program

BLUEPRINTS = (customers.blp, checkout.blp, admin.blp, program.blp)

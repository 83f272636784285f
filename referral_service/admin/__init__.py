"""The admin console at /admin: sign-in, the dashboard and the rewards queue (server-rendered)."""

import referral_service.admin.customers  # noqa: F401  (registers its pages)
from referral_service.admin import integrations as integration_page  # noqa: F401  (its view)
from referral_service.admin import payouts as payout_pages  # noqa: F401  (registers its views)
from referral_service.admin import settings  # noqa: F401  (registers its views)
from referral_service.admin import webhooks as webhook_pages  # noqa: F401  (registers its views)
from referral_service.admin.views import blp

__all__ = ["blp"]

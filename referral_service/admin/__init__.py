"""The admin console at /admin: sign-in, the dashboard and the rewards queue (server-rendered)."""

from referral_service.admin.views import blp

__all__ = ["blp"]

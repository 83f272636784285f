"""Public links and pages: the share-link redirect, QR images, the landing page, health."""

# the emails' writer registers itself with the domain; /unsubscribe and /referral.js join the
# public blueprint
from referral_service.public import emails, referral_js, unsubscribe  # noqa: F401

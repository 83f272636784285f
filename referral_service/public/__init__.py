"""Public links and pages: the share-link redirect, QR images, the landing page, health."""

# the emails' writer registers itself with the domain; /unsubscribe joins the public blueprint
from referral_service.public import emails, unsubscribe  # noqa: F401

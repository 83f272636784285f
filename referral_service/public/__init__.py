"""Public links and pages: the share-link redirect, QR images, the landing page, health."""

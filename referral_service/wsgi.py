"""The WSGI entry point: `gunicorn referral_service.wsgi:app` (`referral-service serve`)."""

from referral_service import create_app

app = create_app()

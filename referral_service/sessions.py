"""Flask's signed-cookie sessions, opened only when the request carries a cookie at all.

Share links and the API never use a session; skipping the serializer set-up for requests without
cookies keeps those hot paths lean. The cookie (used by the admin console) is HttpOnly and
SameSite=Lax, and Secure whenever the request came over HTTPS (or `SESSION_COOKIE_SECURE` is set).
"""

from flask import request
from flask.sessions import SecureCookieSessionInterface


class CookieSessions(SecureCookieSessionInterface):
    """A session interface that does no work for requests without a Cookie header."""

    def open_session(self, app, request):
        if "HTTP_COOKIE" not in request.environ:
            return self.session_class()
        return super().open_session(app, request)

    def get_cookie_secure(self, app) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or request.is_secure)

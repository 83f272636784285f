"""Bearer-key authentication for API views, documented in the OpenAPI spec."""

from functools import wraps

from flask import g, request

from referral_service.domain import api_keys
from referral_service.errors import ErrorEnvelope
from referral_service.rate_limits import RATE_LIMITED

SECURITY_SCHEME = {"bearerAuth": {"type": "http", "scheme": "bearer"}}


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else None


def presented_key():
    """The active key the request's bearer secret names (a row of `id`, `name`, `scope`), or
    None for no, an unknown or a revoked key; looked up once per request (the rate limit asks
    first, the view's guard reuses the answer)."""
    if "presented_key" not in g:
        g.presented_key = api_keys.find(_bearer())
    return g.presented_key


def requires(blp, scope: str):
    """Let the view run only for an active key of `scope` (`admin` keys may do everything).

    Put it right under `@blp.route` (above `@blp.arguments`), so that a stranger's request is
    turned away before its body is read. It also documents the 401, 403 and the 429 of the
    rate limit (per key; per client address for a key that does not authenticate: see
    rate_limits.py).
    """

    def decorator(view):
        @wraps(view)
        def guarded(*args, **kwargs):
            g.api_key = api_keys.authorize(presented_key(), scope, sent=bool(_bearer()))
            return view(*args, **kwargs)

        documented = blp.doc(security=[{"bearerAuth": []}])(guarded)
        documented = blp.alt_response(
            401, schema=ErrorEnvelope, description="No API key, or an unknown or revoked one."
        )(documented)
        documented = blp.alt_response(429, **RATE_LIMITED)(documented)
        return blp.alt_response(
            403,
            schema=ErrorEnvelope,
            description=f"The key's scope is not `{scope}` or `admin`."
            if scope == "shop"
            else "The key's scope is not `admin`.",
        )(documented)

    return decorator

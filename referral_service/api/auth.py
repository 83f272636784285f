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


def requires(blp, scope: str):
    """Let the view run only for an active key of `scope` (`admin` keys may do everything).

    Put it right under `@blp.route` (above `@blp.arguments`), so that a stranger's request is
    turned away before its body is read. It also documents the 401, 403 and the 429 of the
    per-key rate limit (see rate_limits.py).
    """

    def decorator(view):
        @wraps(view)
        def guarded(*args, **kwargs):
            g.api_key = api_keys.authenticate(_bearer(), scope)
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

"""Rate limits (Flask-Limiter): per API key, per client address, and sign-ups per referrer.

* The API, every call together, per API key (`RATELIMIT_API`); a request without a bearer key
  counts against its client address.
* Share links and QR images, together, per client address (`RATELIMIT_PUBLIC`).
* New sign-ups per referrer (`RATELIMIT_SIGNUPS_PER_REFERRER`): the referrer is the well-signed
  code the sign-up names, else its click id. Only sign-ups recorded anew (201) count; a replay,
  a refused key or a sign-up that names no referrer does not.

Counters live in Redis when `REDIS_URL` is set, shared by every process and host, else in each
process's memory. Limits are read from the settings at each request. Over a limit, the answer is
a 429 in the error envelope (code `rate_limited`) with `Retry-After` in seconds; every limited
answer carries `X-RateLimit-Limit`, `-Remaining` and `-Reset`. When Redis fails, counting goes
on in this process's memory and no request fails for it.
"""

import hashlib

from flask import Flask, current_app, g, request
from limits import parse_many
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from referral_service.domain import codes
from referral_service.errors import ErrorEnvelope, InvalidCode
from referral_service.extensions import limiter

LIMITS = ("RATELIMIT_API", "RATELIMIT_PUBLIC", "RATELIMIT_SIGNUPS_PER_REFERRER")
MAX_KEY = 64  # characters of a click id kept in a counter's key

RATE_LIMITED = {
    "schema": ErrorEnvelope,
    "description": "Too many requests (`rate_limited`); try again after `Retry-After` seconds.",
    "headers": {
        "Retry-After": {
            "description": "Seconds until the limit resets.",
            "schema": {"type": "integer"},
        }
    },
}


def init_app(app: Flask) -> None:
    """Bind the limiter to `app`: counters in Redis when `REDIS_URL` is set, else in memory.

    Behind `TRUSTED_PROXIES` reverse proxies, the client address (and scheme) are taken from
    their `X-Forwarded-For` (and `X-Forwarded-Proto`). Raises ValueError for a malformed limit.
    """
    for name in LIMITS:
        parse_many(app.config[name])  # a typo fails at start, not at every request
    app.config.setdefault("RATELIMIT_STORAGE_URI", app.config.get("REDIS_URL") or "memory://")
    hops = app.config.get("TRUSTED_PROXIES") or 0
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
    limiter.init_app(app)


def client_address() -> str:
    return request.remote_addr or "unknown"


def api_client() -> str:
    """Whom an API call counts against: its bearer key (hashed, never kept), else its address."""
    credentials = request.authorization
    if credentials is not None and credentials.type == "bearer" and credentials.token:
        secret = credentials.token.encode("utf-8", "surrogatepass")
        return "key:" + hashlib.blake2b(secret, digest_size=16, person=b"rate-limits").hexdigest()
    return "address:" + client_address()


def signup_referrer() -> str | None:
    """The referrer a sign-up names: its code if well signed (a typed code wins, as in
    attribution), else its click id; None when it names none (or a forged code)."""
    if "signup_referrer" not in g:
        try:
            body = request.get_json(silent=True)
        except HTTPException:  # a body over MAX_CONTENT_LENGTH: the view answers 413
            body = None
        g.signup_referrer = _named_referrer(body)
    return g.signup_referrer


def _named_referrer(body) -> str | None:
    if not isinstance(body, dict):
        return None
    if body.get("referral_code"):
        try:
            return "code:" + codes.signer().verify(body["referral_code"])
        except InvalidCode:
            return None
    click_id = body.get("click_id")
    if isinstance(click_id, str) and click_id:
        return "click:" + click_id[:MAX_KEY]
    return None


def _new_signup(response) -> bool:
    return response.status_code == 201 and "Idempotent-Replayed" not in response.headers


def _setting(name: str):
    return lambda: current_app.config[name]


def _message(what: str, name: str):
    def message() -> str:
        limits = ", ".join(str(item) for item in parse_many(current_app.config[name]))
        return f"Too many {what} (at most {limits}); try again later."

    return message


def per_api_key(blueprint) -> None:
    """Limit every view of an API blueprint per API key, one budget for all of them."""
    limiter.shared_limit(
        _setting("RATELIMIT_API"),
        scope="api",
        key_func=api_client,
        error_message=_message("requests with this API key", "RATELIMIT_API"),
    )(blueprint)


def per_address(blueprint, *views) -> None:
    """Limit these views of a public blueprint per client address, one budget for all of them."""
    endpoints = frozenset(f"{blueprint.name}.{view.__name__}" for view in views)

    def other_view() -> bool:
        return request.endpoint not in endpoints

    limiter.shared_limit(
        _setting("RATELIMIT_PUBLIC"),
        scope="public",
        key_func=client_address,
        exempt_when=other_view,
        error_message=_message("requests from this address", "RATELIMIT_PUBLIC"),
    )(blueprint)


def signups_per_referrer(blueprint, view) -> None:
    """Limit the new sign-ups that name the same referrer (checked before, counted after)."""
    endpoint = f"{blueprint.name}.{view.__name__}"

    def other_view_or_no_referrer() -> bool:
        return request.endpoint != endpoint or signup_referrer() is None

    limiter.limit(
        _setting("RATELIMIT_SIGNUPS_PER_REFERRER"),
        key_func=signup_referrer,
        exempt_when=other_view_or_no_referrer,
        deduct_when=_new_signup,
        error_message=_message("sign-ups for this referrer", "RATELIMIT_SIGNUPS_PER_REFERRER"),
    )(blueprint)

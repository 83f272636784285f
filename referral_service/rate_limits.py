"""Rate limits (Flask-Limiter): per API key, per client address, and sign-ups per referrer.

* The API, every call together, per API key (`RATELIMIT_API`); a request whose bearer key does
  not authenticate (none, unknown, revoked) counts against its client address, so invented keys
  share one budget per address while a valid key keeps its own, whatever other addresses do.
  The key is looked up once per request: the view's authentication reuses the answer.
* Share links and QR images, together, per client address (`RATELIMIT_PUBLIC`).
* New sign-ups per referrer (`RATELIMIT_SIGNUPS_PER_REFERRER`): the referrer is the well-signed
  code the sign-up names, else its click id. Only sign-ups recorded anew (201) count; a replay,
  a refused key or a sign-up that names no referrer does not.

Counters live in Redis when `REDIS_URL` is set, shared by every process and host, else in each
process's memory. Limits are read from the settings at each request. Over a limit, the answer is
a 429 in the error envelope (code `rate_limited`) with `Retry-After` in seconds; every limited
answer carries `X-RateLimit-Limit`, `-Remaining` and `-Reset`. When Redis fails, counting goes
on in this process's memory and no request fails for it; the outage is logged once when Redis
goes away and once when Flask-Limiter finds it back (it probes it after 1, 2, 4, ... 32 seconds).

A client address is the address the request came from (or, behind `TRUSTED_PROXIES`, the one
they forwarded); an IPv6 client counts by its /64 network, the block one subscriber gets.
"""

import ipaddress
import logging
import sys

from flask import Flask, current_app, g, has_app_context, request
from limits import parse_many
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from referral_service.domain import codes
from referral_service.errors import ErrorEnvelope, InvalidCode, Unavailable
from referral_service.extensions import db, limiter
from referral_service.outages import dependency

LIMITS = ("RATELIMIT_API", "RATELIMIT_PUBLIC", "RATELIMIT_SIGNUPS_PER_REFERRER")
MAX_KEY = 64  # characters of a click id kept in a counter's key
STORAGE = "Redis"  # how the outage lines name the counters' storage
# Flask-Limiter's own line when its storage fails and it counts in memory (flask_limiter/_extension)
FALLBACK_WARNING = "Rate limit storage unreachable"

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
    # Flask-Limiter sets `Retry-After` on every answer of a limited view, to the later of the
    # view's own and its window's reset: a 503's few seconds would read as a minute, and a 200
    # would carry one. It stays on the 429s; other answers keep only the view's own.
    app.after_request(_own_retry_after)  # registered first: runs after Flask-Limiter's
    limiter.init_app(app)
    app.after_request(_remember_retry_after)  # registered last: runs before Flask-Limiter's
    _watch_storage()


def _remember_retry_after(response):
    g.own_retry_after = response.headers.get("Retry-After")
    return response


def _own_retry_after(response):
    if response.status_code != 429:
        own = g.pop("own_retry_after", None)
        if own is None:
            response.headers.pop("Retry-After", None)
        else:
            response.headers["Retry-After"] = own
    return response


class _StorageOutage(logging.Filter):
    """Turns Flask-Limiter's warning that its storage failed into the outage's one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not (has_app_context() and record.getMessage().startswith(FALLBACK_WARNING)):
            return True
        dependency(STORAGE).failed(sys.exc_info()[1])  # logged in Flask-Limiter's `except`
        return False


def _watch_storage() -> None:
    """Log the storage's outages once each way, at the two places Flask-Limiter notices them:
    its warning when a request finds the storage failing (then it counts in memory), and its
    health check, which it runs only meanwhile, before it goes back to the storage."""
    flask_limiter_log = logging.getLogger("flask-limiter")
    if not any(isinstance(each, _StorageOutage) for each in flask_limiter_log.filters):
        flask_limiter_log.addFilter(_StorageOutage())
    storage = limiter._storage
    if storage is None or getattr(storage.check, "watched", False):
        return
    check = storage.check

    def watched_check() -> bool:
        healthy = check()
        if has_app_context():
            if healthy:
                dependency(STORAGE).succeeded()
            else:
                dependency(STORAGE).failed("no answer to a health check")
        return healthy

    watched_check.watched = True
    storage.check = watched_check


def client_address() -> str:
    """The client's address as every limit counts it: the peer's (or, behind TRUSTED_PROXIES,
    the forwarded) address; an IPv6 address as its /64 network ("2001:db8:1:2::/64"), an
    IPv4-mapped one as the IPv4 address; anything else as given ("unknown" when missing)."""
    address = request.remote_addr or "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network((ip, 64), strict=False))
    return address


def api_client() -> str:
    """Whom an API call counts against: its key, when the bearer key authenticates (by the key's
    id: the secret is never kept), else its client address."""
    from referral_service.api.auth import presented_key  # api.auth imports this module

    try:
        key = presented_key()
    except (SQLAlchemyError, Unavailable):  # the database is away: the view answers so (503)
        # no business step, so no unit of work: a failed read before any step is dropped, so
        # that the view can look again on a usable session
        db.session.rollback()
        key = None
    if key is not None:
        return f"key:{key.id}"
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
    """Limit every view of an API blueprint per API key (per client address for requests whose
    key does not authenticate), one budget for all of them."""
    with_key = _message("requests with this API key", "RATELIMIT_API")
    without_key = _message("requests without a valid API key from this address", "RATELIMIT_API")

    def message() -> str:
        return with_key() if api_client().startswith("key:") else without_key()

    limiter.shared_limit(
        _setting("RATELIMIT_API"),
        scope="api",
        key_func=api_client,
        error_message=message,
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

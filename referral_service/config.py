"""Settings from the environment, with embedded defaults so that a first run needs none."""

import os
import re
import secrets
import tempfile
from pathlib import Path

SECRET_KEY_FILE = "secret_key"
SQLITE_FILE = "referral-service.sqlite3"


def database_url(instance_path: str) -> str:
    """The SQLAlchemy URL from `DATABASE_URL`, or SQLite in the instance folder."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        Path(instance_path).mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{Path(instance_path) / SQLITE_FILE}"
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


MIN_SECRET_KEY = 32  # characters; a generated key has 64


class SettingsError(ValueError):
    """A setting the service refuses to start with; the message says what to do."""


def check_secret_key(key: str | None, source: str = "SECRET_KEY") -> str:
    """`key` if it is long enough to sign codes with, else SettingsError: an empty or short key
    (or an older one in `SECRET_KEY_FALLBACKS`, which still verifies) would let anyone forge
    referral codes, share-page links and console sessions. `source` names it in the message."""
    if not key or len(key) < MIN_SECRET_KEY:
        raise SettingsError(
            f"{source} is {'empty' if not key else f'only {len(key)} characters'}: the secret key "
            f"must have at least {MIN_SECRET_KEY} characters (generate one with "
            '`python -c "import secrets; print(secrets.token_urlsafe(48))"`).'
        )
    return key


def secret_key(instance_path: str) -> str:
    """`SECRET_KEY`, or a key generated on first run and kept in the instance folder (mode 0600).

    The key file is written whole before it appears (a temporary file, then a hard link to the
    final name, which fails if another process made it first), so processes starting at once on
    a fresh instance folder all read one complete key. Raises SettingsError for an empty or short
    key, given or read.
    """
    if "SECRET_KEY" in os.environ:  # given, even empty (a variable a template left blank)
        return check_secret_key(os.environ["SECRET_KEY"].strip())
    path = Path(instance_path) / SECRET_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_key_file(path, secrets.token_urlsafe(48))
    return check_secret_key(path.read_text().strip(), f"The key file {path}")


def _create_key_file(path: Path, key: str) -> None:
    """Write `key` to `path` unless it exists, never leaving a partial file under that name."""
    fd, temporary = tempfile.mkstemp(prefix=".secret_key.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, path)
    except FileExistsError:  # another process generated it first: theirs is kept
        pass
    finally:
        os.unlink(temporary)


RATE_LIMITS = ("RATELIMIT_API", "RATELIMIT_PUBLIC", "RATELIMIT_SIGNUPS_PER_REFERRER")
FALSE = ("0", "false", "no", "off")


def rate_limit_settings() -> dict:
    """The rate-limit settings given in the environment; the others keep their defaults.

    Raises ValueError for a `TRUSTED_PROXIES` that is not a whole number from 0 to 10.
    """
    found = {name: value for name in RATE_LIMITS if (value := os.environ.get(name, "").strip())}
    enabled = os.environ.get("RATELIMIT_ENABLED", "").strip().lower()
    if enabled:
        found["RATELIMIT_ENABLED"] = enabled not in FALSE
    proxies = os.environ.get("TRUSTED_PROXIES", "").strip()
    if proxies:
        if not (proxies.isdecimal() and int(proxies) <= 10):
            raise ValueError(f"TRUSTED_PROXIES must be a number of proxies, 0 to 10: {proxies!r}")
        found["TRUSTED_PROXIES"] = int(proxies)
    return found


def payout_settings() -> dict:
    """`PAYOUT_APPROVAL_THRESHOLD` when given: a plain decimal amount such as `500.00`.

    Raises ValueError for anything else (a sign, an exponent, a comma, a word).
    """
    threshold = os.environ.get("PAYOUT_APPROVAL_THRESHOLD", "").strip()
    if not threshold:
        return {}
    if not re.fullmatch(r"[0-9]{1,12}(\.[0-9]{1,12})?", threshold):
        raise ValueError(
            f"PAYOUT_APPROVAL_THRESHOLD must be a decimal amount such as 500.00: {threshold!r}"
        )
    return {"PAYOUT_APPROVAL_THRESHOLD": threshold}


DATABASE_TIMEOUTS = (
    "DATABASE_CONNECT_TIMEOUT",
    "DATABASE_POOL_TIMEOUT",
    "DATABASE_STATEMENT_TIMEOUT",
)
MAX_DATABASE_TIMEOUT = 300  # seconds


def database_timeouts() -> dict:
    """The database timeouts given in the environment, in seconds (see database.py); the others
    keep their defaults.

    Raises ValueError for a value that is not a number of seconds above 0 and at most 300.
    """
    found = {}
    for name in DATABASE_TIMEOUTS:
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        try:
            seconds = float(value)
        except ValueError:
            seconds = None
        if seconds is None or not 0 < seconds <= MAX_DATABASE_TIMEOUT:
            raise ValueError(
                f"{name} must be a number of seconds above 0 and at most "
                f"{MAX_DATABASE_TIMEOUT}, such as 3 or 0.5: {value!r}"
            )
        found[name] = seconds
    return found


MAX_WEB_CONCURRENCY = 64  # gunicorn worker processes (each holds the app: about 90 MB)
MAX_THREADS = 64  # threads per worker process


def server_settings() -> dict:
    """`{workers, threads}` of `referral-service serve` (gunicorn) from `WEB_CONCURRENCY`
    (default 2) and `THREADS` (default 1).

    Raises SettingsError for a value that is not a whole number from 1 to its maximum (64 each):
    a mistyped `WEB_CONCURRENCY=1000000` must not fork a million processes.
    """
    found = {}
    for name, key, default, most in (
        ("WEB_CONCURRENCY", "workers", 2, MAX_WEB_CONCURRENCY),
        ("THREADS", "threads", 1, MAX_THREADS),
    ):
        value = os.environ.get(name, "").strip() or str(default)
        if not (value.isascii() and value.isdecimal() and 1 <= int(value) <= most):
            raise SettingsError(f"{name} must be a whole number from 1 to {most}: {value!r}")
        found[key] = int(value)
    return found


def from_environment(instance_path: str) -> dict:
    """All settings of the service, read from the environment."""
    fallbacks = [k.strip() for k in os.environ.get("SECRET_KEY_FALLBACKS", "").split(",")]
    public_base_url = os.environ.get("PUBLIC_BASE_URL", "").strip().rstrip("/") or None
    return {
        "SECRET_KEY": secret_key(instance_path),
        "SECRET_KEY_FALLBACKS": [k for k in fallbacks if k],
        "SQLALCHEMY_DATABASE_URI": database_url(instance_path),
        **database_timeouts(),
        "PUBLIC_BASE_URL": public_base_url,
        "REDIS_URL": os.environ.get("REDIS_URL", "").strip() or None,
        **rate_limit_settings(),
        **payout_settings(),
        "CLICK_SPILL_DIR": os.environ.get("CLICK_SPILL_DIR", "").strip()
        or os.path.join(instance_path, "clicks-spill"),
        "DISPOSABLE_DOMAINS_FILE": os.environ.get("DISPOSABLE_DOMAINS_FILE", "").strip()
        or os.path.join(instance_path, "disposable_domains.txt"),
        **events_settings(),
        "TASKS_FILE": os.environ.get("TASKS_FILE", "").strip() or None,
    }


def events_settings() -> dict:
    """Where events go out: `WEBHOOKS_ALLOW_PRIVATE` (1 lets webhook endpoints be http and on
    private, loopback or link-local addresses), `MAIL_URL` and `MAIL_FROM` (emails to
    referrers: `smtp://user:password@host:port`, `smtps://` or `smtp+starttls://`)."""
    allow = os.environ.get("WEBHOOKS_ALLOW_PRIVATE", "").strip().lower()
    return {
        "WEBHOOKS_ALLOW_PRIVATE": bool(allow) and allow not in FALSE,
        "MAIL_URL": os.environ.get("MAIL_URL", "").strip() or None,
        "MAIL_FROM": os.environ.get("MAIL_FROM", "").strip() or None,
    }


DEFAULTS = {
    # hide_parameters: a database error in the log never shows the values (emails, say)
    "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True, "hide_parameters": True},
    # how long the service waits for its database, in seconds (database.py): to open a
    # connection, for a free connection of the pool, for a statement (PostgreSQL cancels it;
    # SQLite's busy timeout; a server that does not answer at all is given up 1 s later)
    "DATABASE_CONNECT_TIMEOUT": 3.0,
    "DATABASE_POOL_TIMEOUT": 3.0,
    "DATABASE_STATEMENT_TIMEOUT": 5.0,
    "JSON_SORT_KEYS": False,
    "MAX_CONTENT_LENGTH": 1024 * 1024,
    # clicks are buffered in memory and written in batches (see domain/clicks.py)
    "CLICK_FLUSH_INTERVAL": 0.5,
    "CLICK_FLUSH_SIZE": 500,
    # how long a process trusts what it cached of a code or of the program settings
    "CACHE_SECONDS": 10.0,
    "QR_CACHE_ITEMS": 2048,
    # rate limits (Flask-Limiter, see rate_limits.py); counters in Redis when REDIS_URL is set
    "RATELIMIT_ENABLED": True,
    "RATELIMIT_API": "6000/minute",  # per API key, all API calls together
    "RATELIMIT_PUBLIC": "600/minute",  # per client address, share links and QR images together
    "RATELIMIT_SIGNUPS_PER_REFERRER": "60/hour",  # new sign-ups naming the same code or click
    "RATELIMIT_HEADERS_ENABLED": True,  # X-RateLimit-*, and Retry-After on a 429
    "RATELIMIT_SWALLOW_ERRORS": True,  # a storage failure never fails a request...
    "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,  # ...: counting goes on in memory meanwhile
    "RATELIMIT_STORAGE_OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
    "TRUSTED_PROXIES": 0,  # reverse proxies in front whose X-Forwarded-For/-Proto are believed
    # the admin console: its session cookie (Secure too over HTTPS, see sessions.py) and CSRF
    "SESSION_COOKIE_HTTPONLY": True,
    "SESSION_COOKIE_SAMESITE": "Lax",
    "ADMIN_SESSION_HOURS": 12,  # a sign-in lasts this long at most
    "WTF_CSRF_CHECK_DEFAULT": False,  # only the admin console's forms are checked (not the API)
    # four eyes: a payout batch whose total (program currency) is above this needs a second approver
    "PAYOUT_APPROVAL_THRESHOLD": "500.00",
    # events out: webhook endpoints must be public https unless this is set; emails need MAIL_URL
    "WEBHOOKS_ALLOW_PRIVATE": False,
    "MAIL_URL": None,
    "MAIL_FROM": None,
    # the task queue (worker.py): Huey on SQLite (TASKS_FILE, by default
    # referral-service-tasks.sqlite3 in the instance folder), on Redis when REDIS_URL is set;
    # immediate mode runs each task at once in the process that queues it (tests)
    "TASKS_IMMEDIATE": False,
    "TASKS_FILE": None,
    # OpenAPI (flask-smorest)
    "API_TITLE": "Referral service",
    "API_VERSION": "v1",
    "OPENAPI_VERSION": "3.0.3",
    "OPENAPI_URL_PREFIX": "/api",
    "OPENAPI_JSON_PATH": "openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": "docs",
    "OPENAPI_SWAGGER_UI_URL": "/api/docs/assets/",
}

"""Settings from the environment, with embedded defaults so that a first run needs none."""

import os
import re
import secrets
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from limits import parse_many
from redis.connection import parse_url as parse_redis_url
from sqlalchemy.engine import URL, make_url

SECRET_KEY_FILE = "secret_key"
SQLITE_FILE = "referral-service.sqlite3"


DATABASE_SCHEMES = ("postgresql+psycopg", "sqlite", "sqlite+pysqlite")
DATABASE_EXAMPLES = (
    "postgresql+psycopg://user:password@host:5432/dbname or sqlite:////absolute/path/file.sqlite3"
)


def database_url(instance_path: str) -> str:
    """The SQLAlchemy URL from `DATABASE_URL`, or SQLite in the instance folder.

    `postgres://` and `postgresql://` are read as `postgresql+psycopg://`. Raises SettingsError
    for another scheme (the service runs on PostgreSQL with psycopg 3 and on SQLite), a URL that
    does not parse, a bad port, or a SQLite file whose folder does not exist. The message never
    quotes the URL itself (it may hold a password).
    """
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        Path(instance_path).mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{Path(instance_path) / SQLITE_FILE}"
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix) :]
    scheme, separator, _ = url.partition("://")
    if not separator:
        raise SettingsError(f"DATABASE_URL is not a database URL: use {DATABASE_EXAMPLES}")
    if scheme.lower() not in DATABASE_SCHEMES:
        raise SettingsError(
            f"DATABASE_URL's scheme {_shown(scheme)} is not one the service runs on: use "
            f"{DATABASE_EXAMPLES} (postgres:// and postgresql:// mean postgresql+psycopg://)"
        )
    url = scheme.lower() + url[len(scheme) :]
    try:
        parsed = make_url(url)
    except ValueError:  # a port that is not a number (ArgumentError is a ValueError too)
        parsed = None
    if parsed is None or not _port_ok(parsed.port):
        raise SettingsError(
            "DATABASE_URL does not parse as a URL with a port from 1 to 65535: use "
            f"{DATABASE_EXAMPLES}"
        )
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_file(parsed, instance_path)
    return url


def _check_sqlite_file(url: URL, instance_path: str) -> None:
    """A SQLite file's folder must exist (Flask-SQLAlchemy makes a relative path one in the
    instance folder, which it creates), and the file, if there, must not be a folder."""
    name = url.database or ""
    if name in ("", ":memory:") or name.startswith("file:"):
        return
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = Path(instance_path) / path
        folder_made = path.parent == Path(instance_path)
    else:
        folder_made = False
    if not folder_made and not path.parent.is_dir():
        raise SettingsError(
            f"DATABASE_URL names a SQLite file in {_shown(str(path.parent))}, which is not an "
            "existing folder: create the folder or correct the path (sqlite:////absolute/path)"
        )
    if path.is_dir():
        raise SettingsError(
            f"DATABASE_URL names {_shown(str(path))}, a folder: name a SQLite file in it"
        )


def _port_ok(port) -> bool:
    return port is None or 1 <= port <= 65535


def _shown(value: str, most: int = 80) -> str:
    """A value as a message quotes it: repr (control characters escaped), cut to `most`."""
    return repr(value if len(value) <= most else value[:most] + "…")


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
TRUE = ("1", "true", "yes", "on")


def flag(name: str) -> bool | None:
    """A yes/no setting: None when not given; raises SettingsError for a word that is neither."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    if value not in TRUE + FALSE:
        raise SettingsError(
            f"{name} must be one of {', '.join(TRUE)} (on) or {', '.join(FALSE)} (off): "
            f"{_shown(value)}"
        )
    return value in TRUE


def rate_limit_settings() -> dict:
    """The rate-limit settings given in the environment; the others keep their defaults.

    Raises SettingsError for a limit that does not parse (`6000/minute`, `10/second;1000/hour`),
    a `RATELIMIT_ENABLED` that is not a yes or a no, and a `TRUSTED_PROXIES` that is not a whole
    number from 0 to 10.
    """
    found = {name: value for name in RATE_LIMITS if (value := os.environ.get(name, "").strip())}
    for name, value in found.items():
        try:
            parse_many(value)
        except ValueError:
            raise SettingsError(
                f"{name} must be rate limits such as 600/minute or 10/second;1000/hour "
                f"(per second, minute, hour or day): {_shown(value)}"
            ) from None
    enabled = flag("RATELIMIT_ENABLED")
    if enabled is not None:
        found["RATELIMIT_ENABLED"] = enabled
    proxies = os.environ.get("TRUSTED_PROXIES", "").strip()
    if proxies:
        if not (proxies.isascii() and proxies.isdecimal() and int(proxies) <= 10):
            raise SettingsError(
                f"TRUSTED_PROXIES must be a number of proxies, 0 to 10: {_shown(proxies)}"
            )
        found["TRUSTED_PROXIES"] = int(proxies)
    return found


def payout_settings() -> dict:
    """`PAYOUT_APPROVAL_THRESHOLD` when given: a plain decimal amount such as `500.00`.

    Raises SettingsError for anything else (a sign, an exponent, a comma, a word).
    """
    threshold = os.environ.get("PAYOUT_APPROVAL_THRESHOLD", "").strip()
    if not threshold:
        return {}
    if not re.fullmatch(r"[0-9]{1,12}(\.[0-9]{1,12})?", threshold):
        raise SettingsError(
            "PAYOUT_APPROVAL_THRESHOLD must be a plain decimal amount such as 500.00 (digits, "
            f"an optional point and decimals; no sign, comma or currency): {_shown(threshold)}"
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

    Raises SettingsError for a value that is not a number of seconds above 0 and at most 300.
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
            raise SettingsError(
                f"{name} must be a number of seconds above 0 and at most "
                f"{MAX_DATABASE_TIMEOUT}, such as 3 or 0.5: {_shown(value)}"
            )
        found[name] = seconds
    return found


MAX_WEB_CONCURRENCY = 64  # gunicorn worker processes (each holds the app: about 90 MB)
MAX_THREADS = 64  # threads per worker process


def server_settings() -> dict:
    """`{workers, threads, bind}` of `referral-service serve` (gunicorn) from `WEB_CONCURRENCY`
    (default 2), `THREADS` (default 1) and `BIND` (default 127.0.0.1:8000).

    Raises SettingsError for a value that is not a whole number from 1 to its maximum (64 each):
    a mistyped `WEB_CONCURRENCY=1000000` must not fork a million processes; and for a `BIND`
    that is not `HOST:PORT`, `[IPv6]:PORT`, `unix:PATH` or `fd://N`.
    """
    found = {}
    for name, key, default, most in (
        ("WEB_CONCURRENCY", "workers", 2, MAX_WEB_CONCURRENCY),
        ("THREADS", "threads", 1, MAX_THREADS),
    ):
        value = os.environ.get(name, "").strip() or str(default)
        if not (value.isascii() and value.isdecimal() and 1 <= int(value) <= most):
            raise SettingsError(f"{name} must be a whole number from 1 to {most}: {_shown(value)}")
        found[key] = int(value)
    found["bind"] = bind_address()
    return found


BIND_FORMS = "HOST:PORT (127.0.0.1:8000), [IPv6]:PORT ([::1]:8000), unix:/path/to.sock or fd://3"


def bind_address() -> str:
    """`BIND` (default 127.0.0.1:8000), the address gunicorn listens on; raises SettingsError
    for one it could not read (a port that is not from 1 to 65535, say)."""
    value = os.environ.get("BIND", "").strip() or "127.0.0.1:8000"
    problem = None
    if not value.isprintable() or any(char.isspace() for char in value):
        problem = "spaces or control characters"
    elif value.startswith("unix:"):
        if not value.removeprefix("unix:").lstrip("/"):
            problem = "no socket path"
    elif value.startswith("fd://"):
        if not (value[5:].isascii() and value[5:].isdecimal()):
            problem = "no file descriptor number"
    else:
        match = re.fullmatch(r"(?:tcp://)?(?:\[[0-9A-Za-z:.%]+\]|[^:\[\]/]+)(?::([0-9]+))?", value)
        if not match:
            problem = "a host or a port it cannot read (an IPv6 address goes in [brackets])"
        elif match[1] is not None and not 1 <= int(match[1]) <= 65535:
            problem = "a port that is not from 1 to 65535"
    if problem:
        raise SettingsError(f"BIND must be {BIND_FORMS}; {_shown(value)} has {problem}")
    return value


def from_environment(instance_path: str) -> dict:
    """All settings of the service, read from the environment.

    Raises SettingsError, whose message names the setting, says what is wrong with its value
    and what is accepted, for any value the service would not run well with: the service stops
    before it starts rather than fail later, at a request or in a worker.
    """
    fallbacks = [k.strip() for k in os.environ.get("SECRET_KEY_FALLBACKS", "").split(",")]
    return {
        "SECRET_KEY": secret_key(instance_path),
        "SECRET_KEY_FALLBACKS": [k for k in fallbacks if k],
        "SQLALCHEMY_DATABASE_URI": database_url(instance_path),
        **database_timeouts(),
        "PUBLIC_BASE_URL": public_base_url(),
        **redis_settings(),
        **rate_limit_settings(),
        **payout_settings(),
        "CLICK_SPILL_DIR": _path("CLICK_SPILL_DIR", folder=True)
        or os.path.join(instance_path, "clicks-spill"),
        "DISPOSABLE_DOMAINS_FILE": _path("DISPOSABLE_DOMAINS_FILE", made=False)
        or os.path.join(instance_path, "disposable_domains.txt"),
        **events_settings(),
        "TASKS_FILE": _path("TASKS_FILE"),
        **platform_settings(),
    }


PLATFORM_SECRETS = ("STRIPE_WEBHOOK_SECRETS", "SHOPIFY_WEBHOOK_SECRETS")


def platform_settings() -> dict:
    """The secrets that sign the shop's platforms' webhooks (integrations/): each setting a
    comma-separated list (several during a rotation) of printable secrets without spaces, at
    most 200 characters each; raises SettingsError for anything else (the secret is never
    quoted in the message)."""
    found = {}
    for name in PLATFORM_SECRETS:
        value = os.environ.get(name, "").strip()
        parts = [part.strip() for part in value.split(",") if part.strip()]
        for position, part in enumerate(parts, 1):
            if len(part) > 200 or not part.isascii() or not part.isprintable() or " " in part:
                raise SettingsError(
                    f"{name} must be secrets separated by commas, each printable ASCII without "
                    f"spaces and at most 200 characters; secret {position} is not"
                )
        found[name] = ",".join(parts) or None
    return found


def public_base_url() -> str | None:
    """`PUBLIC_BASE_URL` without a trailing slash: `http(s)://host[:port][/path]`; raises
    SettingsError for anything else (share links and emails would lead nowhere)."""
    value = os.environ.get("PUBLIC_BASE_URL", "").strip().rstrip("/")
    if not value:
        return None
    try:
        parts = urlsplit(value)
        port_ok = _port_ok(parts.port)
    except ValueError:
        parts, port_ok = None, False
    if (
        parts is None
        or parts.scheme.lower() not in ("http", "https")
        or not parts.hostname
        or not port_ok
        or parts.username is not None
        or parts.query
        or parts.fragment
        or not value.isprintable()
        or any(char.isspace() for char in value)
    ):
        raise SettingsError(
            "PUBLIC_BASE_URL must be the service's public address, http(s)://host[:port][/path] "
            f"such as https://refer.shop.example (no user, query or fragment): {_shown(value)}"
        )
    return value


REDIS_SCHEMES = ("redis", "rediss", "unix")
REDIS_EXAMPLES = "redis://[:password@]host:6379/0, rediss://... (TLS) or unix:///path/redis.sock"


def redis_settings() -> dict:
    """`REDIS_URL` (the rate-limit counters and the task queue), checked: raises SettingsError for
    a scheme other than redis://, rediss:// and unix://, a bad port, a database that is not a
    number, or query arguments Redis's client refuses. The URL (it may hold a password) is never
    quoted back. Also the rate limiter's storage for a unix:// URL, which it names
    redis+unix://."""
    url = os.environ.get("REDIS_URL", "").strip()
    if not url:
        return {"REDIS_URL": None}
    scheme, separator, _ = url.partition("://")
    if not separator:
        raise SettingsError(f"REDIS_URL is not a URL: use {REDIS_EXAMPLES}")
    if scheme.lower() not in REDIS_SCHEMES:
        raise SettingsError(
            f"REDIS_URL's scheme {_shown(scheme)} is not one Redis takes: use {REDIS_EXAMPLES}"
        )
    scheme = scheme.lower()
    url = scheme + url[len(scheme) :]
    try:
        parts = urlsplit(url)
        port_ok = _port_ok(parts.port)
    except ValueError:
        parts, port_ok = None, False
    if parts is None or not port_ok:
        raise SettingsError(f"REDIS_URL's port must be a number from 1 to 65535: {REDIS_EXAMPLES}")
    if scheme == "unix":
        if not parts.path.strip("/"):
            raise SettingsError(f"REDIS_URL names no socket path: use {REDIS_EXAMPLES}")
    elif parts.path.strip("/") and not (parts.path[1:].isascii() and parts.path[1:].isdecimal()):
        raise SettingsError(
            f"REDIS_URL's database (its path) must be a number, such as /0: use {REDIS_EXAMPLES}"
        )
    try:
        parse_redis_url(url)
    except ValueError as error:  # an argument of the query (db, socket_timeout, ...)
        raise SettingsError(f"REDIS_URL cannot be used: {error}") from None
    found = {"REDIS_URL": url}
    if scheme == "unix":  # the same socket for the limiter (limits names it redis+unix://)
        found["RATELIMIT_STORAGE_URI"] = "redis+" + url
    return found


def _path(name: str, folder: bool = False, made: bool = True) -> str | None:
    """The path a setting names, or None when not given. Raises SettingsError when it names a
    folder where a file is wanted (or a file where a folder is), and, for a path the service
    writes (`made`), when its folder cannot be made (it is made now, as it would be later)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    what = "folder" if folder else "file"
    if not value.isprintable():
        raise SettingsError(f"{name} must be the path of a {what}: {_shown(value)}")
    path = Path(value).expanduser()
    if path.exists() and path.is_dir() != folder:
        raise SettingsError(
            f"{name} must be the path of a {what}; {_shown(value)} is "
            f"{'a folder' if path.is_dir() else 'not a folder'}"
        )
    if made:
        above = path.absolute().parent
        while not above.exists() and above != above.parent:
            above = above.parent
        if not above.is_dir():
            raise SettingsError(
                f"{name} must be the path of a {what}; {_shown(value)} is under "
                f"{_shown(str(above))}, which is not a folder"
            )
        try:
            (path if folder else path.absolute().parent).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SettingsError(
                f"{name} must be the path of a {what} the service can write; the folder of "
                f"{_shown(value)} cannot be made: {error.strerror or error}"
            ) from None
    return value


def events_settings() -> dict:
    """Where events go out: `WEBHOOKS_ALLOW_PRIVATE` (1 lets webhook endpoints be http and on
    private, loopback or link-local addresses), `MAIL_URL` and `MAIL_FROM` (emails to
    referrers: `smtp://user:password@host:port`, `smtps://` or `smtp+starttls://`)."""
    return {
        "WEBHOOKS_ALLOW_PRIVATE": bool(flag("WEBHOOKS_ALLOW_PRIVATE")),
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
    # shop platforms in (integrations/): no secret, no platform event accepted
    "STRIPE_WEBHOOK_SECRETS": None,
    "SHOPIFY_WEBHOOK_SECRETS": None,
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

"""Settings from the environment, with embedded defaults so that a first run needs none.

Every setting can also be written in a `.env` file in the working directory (python-dotenv's
format: `NAME=value` lines, `#` comments); a variable set in the environment wins over the file.
See `load_dotenv_file`.
"""

import ipaddress
import logging
import os
import re
import secrets
import tempfile
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import psycopg
from dotenv import dotenv_values
from limits import parse_many
from psycopg.conninfo import make_conninfo
from redis.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.connection import parse_url as parse_redis_url
from sqlalchemy.engine import URL, make_url

log = logging.getLogger(__name__)

SECRET_KEY_FILE = "secret_key"
SQLITE_FILE = "referral-service.sqlite3"

DOTENV_FILE = ".env"  # in the working directory
DOTENV_SWITCH = "REFERRAL_SERVICE_DOTENV"  # 0, false, no or off: the file is not read
_DOTENV_STATE = {"read": False}
_KEY_FILES_WARNED: set[Path] = set()  # the generated key's warning is said once per process


def load_dotenv_file() -> None:
    """Put the settings of `.env` in the working directory into the environment, once per
    process; a variable the environment already has keeps its value (the environment wins).

    Not read when `REFERRAL_SERVICE_DOTENV` is 0, false, no or off, nor while tests run (pytest
    sets `PYTEST_CURRENT_TEST`, which processes the tests start inherit): tests never pick up a
    developer's `.env`. Only the working directory is looked at, not its parents. Raises
    SettingsError when the file is there but cannot be read (no permission, not UTF-8); a line
    python-dotenv cannot parse is skipped with its own warning.
    """
    if _DOTENV_STATE["read"]:
        return
    _DOTENV_STATE["read"] = True
    if flag(DOTENV_SWITCH) is False or "PYTEST_CURRENT_TEST" in os.environ:
        return
    path = Path(DOTENV_FILE)
    if not path.is_file():
        return
    try:
        values = dotenv_values(path, encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "it is not UTF-8 text"
        raise SettingsError(
            f"The settings file {path.resolve()} cannot be read: {reason} (set "
            f"{DOTENV_SWITCH}=0 not to read it)"
        ) from None
    for name, value in values.items():
        if value is not None and name not in os.environ:
            os.environ[name] = value


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
            f"DATABASE_URL's scheme{_scheme_shown(scheme)} is not one the service runs on: use "
            f"{DATABASE_EXAMPLES} (postgres:// and postgresql:// mean postgresql+psycopg://)"
        )
    url = scheme.lower() + url[len(scheme) :]
    try:
        parsed = make_url(url)
    except ValueError:  # a port that is not a number (ArgumentError is a ValueError too)
        parsed = None
    if parsed is None or not _port_ok(parsed.port) or not _plain_port(url):
        raise SettingsError(
            "DATABASE_URL does not parse as a URL with a port from 1 to 65535 (digits 0-9): use "
            f"{DATABASE_EXAMPLES}"
        )
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_file(parsed, instance_path)
    else:
        _check_postgresql_options(parsed)
    return url


def _plain_port(url: str) -> bool:
    """Whether the port of `url`'s authority, if it has one, is written in ASCII digits 0-9 (a
    URL parser reads `:١٨٦٠٠`, `:+5432` or `:54_32` as a number with int())."""
    authority = re.split(r"[/?#]", url.partition("://")[2], maxsplit=1)[0]
    host_port = authority.rpartition("@")[2]
    if host_port.startswith("["):  # an IPv6 address: the port follows the bracket
        port = host_port.partition("]")[2].removeprefix(":")
    else:
        port = host_port.rpartition(":")[2] if ":" in host_port else ""
    return port == "" or _WHOLE.fullmatch(port) is not None


SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# libpq's options that take a whole number (libpq reads other digits, or a sign, in its own ways)
WHOLE_OPTIONS = ("connect_timeout", "port", "keepalives", "keepalives_idle")
WHOLE_OPTIONS += ("keepalives_interval", "keepalives_count", "tcp_user_timeout")


def _check_postgresql_options(url: URL) -> None:
    """The options in a PostgreSQL URL's query must be libpq's, each given once, an `sslmode`
    one of libpq's and a number option a whole number in digits 0-9: otherwise every
    connection would fail, later (the message never quotes a password)."""
    for name, value in url.query.items():
        if not isinstance(value, str):
            raise SettingsError(f"DATABASE_URL gives the option {_shown(name)} more than once")
        if name == "sslmode" and value not in SSLMODES:
            raise SettingsError(
                f"DATABASE_URL's sslmode must be {_either(SSLMODES)}; got {_shown(value)}"
            )
        if name in WHOLE_OPTIONS and plain_number(value) is None:
            raise SettingsError(
                f"DATABASE_URL's option {name} must be a whole number in digits 0-9; "
                f"got {_shown(value)}"
            )
    try:
        make_conninfo("", **{name: value for name, value in url.query.items()})
    except psycopg.Error as error:  # an option libpq does not know
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if url.password:
            reason = reason.replace(url.password, "***")
        raise SettingsError(f"DATABASE_URL's options cannot be used: {reason}") from None


def _check_sqlite_file(url: URL, instance_path: str) -> None:
    """A SQLite file's folder must exist (Flask-SQLAlchemy makes a relative path one in the
    instance folder, which it creates; `~` is not expanded), and the file, if there, must not
    be a folder. An in-memory database is refused: each connection, and each process, would
    have its own, empty one (no tables, and nothing the worker or another process wrote)."""
    name = url.database or ""
    if (
        name in ("", ":memory:")
        or name.startswith("file::memory:")
        or url.query.get("mode") == "memory"
    ):
        raise SettingsError(
            "DATABASE_URL names an in-memory SQLite database, which every connection and "
            "process would have empty and apart: name a file (sqlite:////absolute/path/file.sqlite3)"
        )
    if name.startswith("file:"):
        return
    path = Path(name)
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


def _shown_url(value: str) -> str:
    """A URL as a message quotes it (`_shown`), without what may be a user and a password:
    everything from the scheme's `//` (or the start) to the last `@` becomes `***` (a path
    with an @ is hidden too: a message may say less, never a password)."""
    scheme, separator, rest = value.partition("://")
    if not separator:
        scheme, rest = "", value
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return _shown(f"{scheme}{separator}{rest}")


def _scheme_shown(scheme: str) -> str:
    """A URL's scheme as a message quotes it, or nothing when it does not look like a scheme
    (`user:password@host://...`, say, whose "scheme" would be the password)."""
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,30}", scheme):
        return " " + _shown(scheme)
    return ""


_WHOLE = re.compile(r"[0-9]{1,12}")
_DECIMAL = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,12})?|\.[0-9]{1,12}")


def plain_number(value: str, decimal: bool = False) -> int | float | None:
    """`value` (surrounding spaces stripped) as a number when written plainly in ASCII digits
    0-9: a whole number (`3`), or with `decimal` also a point and decimals (`0.5`, `.5`); else
    None. Not what int() and float() also take: other scripts' digits (Arabic-Indic,
    full-width), underscores (`1_0`), signs, exponents (`1e2`), `nan`, `inf` or inner spaces.
    Every number setting is read so."""
    text = value.strip()
    if _WHOLE.fullmatch(text):
        return int(text)
    if decimal and _DECIMAL.fullmatch(text):
        return float(text)
    return None


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
    key, given or read. A key from the file (generated now or before) is announced with a
    warning, once per process: several instances must share one key, set in `SECRET_KEY`.
    """
    if "SECRET_KEY" in os.environ:  # given, even empty (a variable a template left blank)
        return check_secret_key(os.environ["SECRET_KEY"].strip())
    path = Path(instance_path) / SECRET_KEY_FILE
    generated = not path.exists()
    if generated:
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_key_file(path, secrets.token_urlsafe(48))
    key = check_secret_key(path.read_text().strip(), f"The key file {path}")
    if path in _KEY_FILES_WARNED and not generated:
        return key
    _KEY_FILES_WARNED.add(path)
    log.warning(
        "SECRET_KEY is not set: using the key %s on this host in %s. Several instances of the "
        "service must share one key (codes, links and sessions signed by one are checked by "
        "the others): set SECRET_KEY in the environment to the same value everywhere.",
        "just generated" if generated else "generated",
        path,
    )
    return key


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


def _either(words: tuple[str, ...]) -> str:
    return f"{', '.join(words[:-1])} or {words[-1]}"


def flag(name: str) -> bool | None:
    """A yes/no setting: None when not given; raises SettingsError for a word that is neither."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    if value not in TRUE + FALSE:
        raise SettingsError(
            f"{name} must be {_either(TRUE)} (on), or {_either(FALSE)} (off); got {_shown(value)}"
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
        number = plain_number(proxies)
        if number is None or number > 10:
            raise SettingsError(
                f"TRUSTED_PROXIES must be a number of proxies, 0 to 10: {_shown(proxies)}"
            )
        found["TRUSTED_PROXIES"] = number
    return found


def payout_settings() -> dict:
    """`PAYOUT_APPROVAL_THRESHOLD` when given: a plain decimal amount such as `500.00`.

    Raises SettingsError for anything else (a sign, an exponent, a comma, a word).
    """
    threshold = os.environ.get("PAYOUT_APPROVAL_THRESHOLD", "").strip()
    if not threshold:
        return {}
    if plain_number(threshold, decimal=True) is None or threshold.startswith("."):
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
        seconds = plain_number(value, decimal=True)
        if seconds is None or not 0 < seconds <= MAX_DATABASE_TIMEOUT:
            raise SettingsError(
                f"{name} must be a number of seconds above 0 and at most "
                f"{MAX_DATABASE_TIMEOUT}, such as 3 or 0.5: {_shown(value)}"
            )
        found[name] = float(seconds)
    return found


MAX_WEB_CONCURRENCY = 64  # gunicorn worker processes (each holds the app: about 90 MB)
MAX_THREADS = 64  # threads per worker process


def server_settings() -> dict:
    """`{workers, threads, bind}` of `referral-service serve` (gunicorn) from `WEB_CONCURRENCY`
    (default 2), `THREADS` (default 1) and `BIND` (default 127.0.0.1:8000).

    Raises SettingsError for a value that is not a whole number from 1 to its maximum (64 each):
    a mistyped `WEB_CONCURRENCY=1000000` must not fork a million processes; and for a `BIND`
    that is not `HOST:PORT`, `[IPv6]:PORT`, `unix:PATH` or `fd://N`. `.env` is read first
    (gunicorn reads these before the application).
    """
    load_dotenv_file()
    found = {}
    for name, key, default, most in (
        ("WEB_CONCURRENCY", "workers", 2, MAX_WEB_CONCURRENCY),
        ("THREADS", "threads", 1, MAX_THREADS),
    ):
        value = os.environ.get(name, "").strip() or str(default)
        number = plain_number(value)
        if number is None or not 1 <= number <= most:
            raise SettingsError(f"{name} must be a whole number from 1 to {most}: {_shown(value)}")
        found[key] = number
    found["bind"] = bind_address()
    return found


BIND_FORMS = "HOST:PORT (127.0.0.1:8000), [IPv6]:PORT ([::1]:8000), unix:/path/to.sock or fd://3"


_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")


def host_problem(host: str) -> str | None:
    """What is wrong with `host` as the host of an address to listen on, or None for an IPv4
    address, an IPv6 address in [brackets] or a host name (letters, digits, `-` and `_` in
    dot-separated labels). Whether a name resolves is not looked at here."""
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return "an IPv6 address it cannot read"
        return None
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return "an IPv4 address it cannot read"
        return None
    if _HOST_NAME.fullmatch(host):
        return None
    return "a host that is neither a name nor an address (an IPv6 address goes in [brackets])"


def listen_address(host: str | None, port: int | None) -> str:
    """The `HOST:PORT` of `referral-service serve --host/--port` (defaults 127.0.0.1 and 8000);
    an IPv6 address may be given with or without its brackets. Raises SettingsError naming
    --host for a host that is neither a name nor an address."""
    host = (host or "127.0.0.1").strip()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    problem = host_problem(host)
    if problem:
        raise SettingsError(
            f"--host must be a host name or an IP address; {_shown(host)} is {problem}"
        )
    return f"{host}:{port or 8000}"


def bind_address() -> str:
    """`BIND` (default 127.0.0.1:8000), the address gunicorn listens on; raises SettingsError
    for one it could not read: a host form without a port (gunicorn would take 8000 without a
    word), a port that is not from 1 to 65535, a host that is neither a name nor an address."""
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
        host, colon, port = value.removeprefix("tcp://").rpartition(":")
        if not colon or port.endswith("]"):  # `localhost`, `[::1]`
            problem = "no port (HOST:PORT)"
        elif not host:
            problem = "no host (0.0.0.0:PORT listens on every IPv4 address)"
        elif plain_number(port) is None or not 1 <= int(port) <= 65535:
            problem = "a port that is not from 1 to 65535"
        else:
            problem = host_problem(host)
    if problem:
        raise SettingsError(f"BIND must be {BIND_FORMS}; {_shown(value)} has {problem}")
    return value


def from_environment(instance_path: str) -> dict:
    """All settings of the service, read from the environment.

    Raises SettingsError, whose message names the setting, says what is wrong with its value
    and what is accepted, for any value the service would not run well with: the service stops
    before it starts rather than fail later, at a request or in a worker. `.env` in the working
    directory is read first (see `load_dotenv_file`).
    """
    load_dotenv_file()
    found_log_format = log_format()
    # lines said while the other settings are read (the generated key's warning) take it too
    from referral_service.log_format import configure

    configure(found_log_format)
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
        "LOG_FORMAT": found_log_format,
        **metrics_settings(),
    }


LOG_FORMATS = ("text", "json")


def log_format() -> str:
    """`LOG_FORMAT`: `text` (the default: lines for a person) or `json` (one JSON object a line,
    see log_format.py); raises SettingsError for anything else."""
    load_dotenv_file()
    value = os.environ.get("LOG_FORMAT", "").strip()
    if value.lower() not in ("", *LOG_FORMATS):
        raise SettingsError(f"LOG_FORMAT must be {_either(LOG_FORMATS)}; got {_shown(value)}")
    return value.lower() or "text"


def metrics_settings() -> dict:
    """`METRICS` (a yes or a no; on by default) and `METRICS_TOKEN` (printable ASCII without
    spaces, 16 to 200 characters) when given; raises SettingsError for anything else (the token
    is never quoted in the message)."""
    found = {}
    enabled = flag("METRICS")
    if enabled is not None:
        found["METRICS"] = enabled
    token = os.environ.get("METRICS_TOKEN", "").strip()
    if token:
        if not (16 <= len(token) <= 200 and token.isascii() and token.isprintable()) or (
            " " in token
        ):
            raise SettingsError(
                "METRICS_TOKEN must be 16 to 200 printable ASCII characters without spaces"
            )
        found["METRICS_TOKEN"] = token
    return found


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
        or not _plain_port(value)
        or parts.username is not None
        or parts.query
        or parts.fragment
        or not value.isprintable()
        or any(char.isspace() for char in value)
    ):
        raise SettingsError(
            "PUBLIC_BASE_URL must be the service's public address, http(s)://host[:port][/path] "
            f"such as https://refer.shop.example (no user, query or fragment): {_shown_url(value)}"
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
            f"REDIS_URL's scheme{_scheme_shown(scheme)} is not one Redis takes: "
            f"use {REDIS_EXAMPLES}"
        )
    scheme = scheme.lower()
    url = scheme + url[len(scheme) :]
    try:
        parts = urlsplit(url)
        port_ok = _port_ok(parts.port)
    except ValueError:
        parts, port_ok = None, False
    if parts is None or not port_ok or not _plain_port(url):
        raise SettingsError(
            f"REDIS_URL's port must be a number from 1 to 65535 (digits 0-9): {REDIS_EXAMPLES}"
        )
    if scheme == "unix":
        if not parts.path.strip("/"):
            raise SettingsError(f"REDIS_URL names no socket path: use {REDIS_EXAMPLES}")
    elif parts.path.strip("/") and not (parts.path[1:].isascii() and parts.path[1:].isdecimal()):
        raise SettingsError(
            f"REDIS_URL's database (its path) must be a number, such as /0: use {REDIS_EXAMPLES}"
        )
    for name, value in parse_qsl(parts.query):
        parse = URL_QUERY_ARGUMENT_PARSERS.get(name)
        if parse in (int, float) and plain_number(value, decimal=parse is float) is None:
            raise SettingsError(
                f"REDIS_URL's option {name} must be a {'whole ' if parse is int else ''}number "
                f"in digits 0-9; got {_shown(value)}"
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
    "LOG_FORMAT": "text",  # or json: one JSON object a line (log_format.py)
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
    # /metrics (metrics.py): on unless METRICS is off; a bearer token when METRICS_TOKEN is set
    "METRICS": True,
    "METRICS_TOKEN": None,
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

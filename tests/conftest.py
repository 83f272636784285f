"""Fixtures: an app per test on SQLite and (when TEST_DATABASE_URL is set) on PostgreSQL.

Each backend gets a database of its own for the test session, migrated once with the project's
migrations; each test starts from empty tables. With CI=true a missing PostgreSQL is an error,
never a silent skip.
"""

import atexit
import ipaddress
import os
import shutil
import socket
import tempfile
import uuid

import pytest
from flask_migrate import upgrade
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from referral_service import create_app
from referral_service.extensions import db
from referral_service.models import Base, Program

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_URL = os.environ.get("TEST_DATABASE_URL", "").strip()
BACKENDS = ["sqlite", "postgresql"] if PG_URL else ["sqlite"]
SECRET = "test-secret-key-0123456789abcdef"
BASE_URL = "http://shop.test"
# each test app's click spill folder: never the checkout's instance folder (see domain/clicks.py)
SPILL_ROOT = tempfile.mkdtemp(prefix="rs-test-spill-")
atexit.register(shutil.rmtree, SPILL_ROOT, True)


def pytest_configure(config):
    config.addinivalue_line("markers", "sqlite_only: the test is about SQLite; not run on others")
    config.addinivalue_line(
        "markers", "postgresql_only: the test is about a database server; not run on SQLite"
    )
    if IN_CI and not PG_URL:
        raise pytest.UsageError("CI=true but TEST_DATABASE_URL is not set: PostgreSQL is required")


def pytest_collection_modifyitems(config, items):
    """Tests marked `sqlite_only` run on the SQLite backend alone, those marked
    `postgresql_only` on PostgreSQL alone (deselected, not skipped)."""
    kept, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        backend = params.get("database_url", "sqlite")
        if (item.get_closest_marker("sqlite_only") and backend != "sqlite") or (
            item.get_closest_marker("postgresql_only") and backend != "postgresql"
        ):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_report_header(config):
    if PG_URL:
        return f"databases: SQLite and PostgreSQL ({make_url(PG_URL).render_as_string()})"
    return "databases: SQLite only (set TEST_DATABASE_URL to also run every test on PostgreSQL)"


@pytest.fixture(autouse=True)
def _own_click_spill_folder(tmp_path, monkeypatch):
    """Services a test starts from the environment (CLI, gunicorn) keep a stopping process's
    clicks in the test's folder, never in the checkout's instance folder, where another test's
    service would replay them into its own database."""
    monkeypatch.setenv("CLICK_SPILL_DIR", str(tmp_path / "clicks-spill"))


_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _loopback_only(address) -> None:
    """Raise for an internet address that is not loopback (the tests talk to nothing else)."""
    host = address[0] if isinstance(address, tuple) else None
    if host is None:  # a Unix socket
        return
    try:
        loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConnectionRefusedError(f"the tests never connect beyond loopback: {host!r}")


@pytest.fixture(autouse=True)
def _no_connections_beyond_loopback(monkeypatch):
    """Every connection a test's process opens goes to loopback: a webhook endpoint, an SMTP
    server or a name a test registers can never reach the internet (tasks run at once in tests,
    so registering an endpoint is enough to send to it)."""

    def connect(sock, address):
        _loopback_only(address)
        return _connect(sock, address)

    def connect_ex(sock, address):
        _loopback_only(address)
        return _connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


def print_past_capture(request, line: str) -> None:
    """Print a summary line of a test module, shown with or without `-s`."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n{line}")


def unavailable(what: str, error: Exception):
    """Skip when a service is missing on a laptop; fail under CI=true."""
    message = f"{what} is not available: {type(error).__name__}: {error}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _pg_url(name: str) -> str:
    url = make_url(PG_URL)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_admin():
    """An autocommit engine on TEST_DATABASE_URL, to create and drop test databases."""
    if not PG_URL:
        unavailable("PostgreSQL (TEST_DATABASE_URL)", RuntimeError("not configured"))
    engine = create_engine(_pg_url(make_url(PG_URL).database), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:
        unavailable("PostgreSQL at TEST_DATABASE_URL", error)
    yield engine
    engine.dispose()


def make_pg_database(pg_admin) -> str:
    name = f"rs_test_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    return name


def drop_pg_database(pg_admin, name: str) -> None:
    with pg_admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def app_config(database_url: str, **extra) -> dict:
    return {
        "TESTING": True,
        "SECRET_KEY": SECRET,
        "SECRET_KEY_FALLBACKS": [],
        "SQLALCHEMY_DATABASE_URI": database_url,
        "PUBLIC_BASE_URL": BASE_URL,
        "CLICK_FLUSH_INTERVAL": 0.05,
        "RATELIMIT_ENABLED": False,  # tests/test_rate_limits.py turns them on
        "TASKS_IMMEDIATE": True,  # tasks run at once in the test's process (worker.py)
        "CLICK_SPILL_DIR": tempfile.mkdtemp(dir=SPILL_ROOT),
        **extra,
    }


def migrated(database_url: str) -> None:
    app = create_app(app_config(database_url))
    with app.app_context():
        upgrade()
        db.engine.dispose()


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request, tmp_path_factory):
    """A migrated database for the whole test session, one per backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}"
        migrated(url)
        yield url
        return
    pg_admin = request.getfixturevalue("pg_admin")
    name = make_pg_database(pg_admin)
    url = _pg_url(name)
    migrated(url)
    yield url
    drop_pg_database(pg_admin, name)


def empty_tables() -> None:
    """Delete every row, then put back the program's default settings."""
    for table in reversed(Base.metadata.sorted_tables):
        db.session.execute(table.delete())
    db.session.add(Program(id=1))
    db.session.commit()


@pytest.fixture
def app(database_url):
    # Races open a dozen connections at once; on a busy machine PostgreSQL can take longer than
    # the 3 s default to fork them. The outage tests build their own apps with the defaults.
    app = create_app(app_config(database_url, DATABASE_CONNECT_TIMEOUT=15.0))
    with app.app_context():
        empty_tables()
    yield app
    with app.app_context():
        app.extensions["clicks"].flush()
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def backend(database_url) -> str:
    return "postgresql" if database_url.startswith("postgresql") else "sqlite"


@pytest.fixture
def shop_key(app):
    from tests.factories import api_key

    with app.app_context():
        return api_key("shop")


@pytest.fixture
def admin_key(app):
    from tests.factories import api_key

    with app.app_context():
        return api_key("admin")


@pytest.fixture
def shop(shop_key):
    """Headers of a request made with a shop key."""
    return {"Authorization": f"Bearer {shop_key}"}


@pytest.fixture
def admin(admin_key):
    """Headers of a request made with an admin key."""
    return {"Authorization": f"Bearer {admin_key}"}


@pytest.fixture(autouse=True)
def quick_hashes(monkeypatch):
    """Cheaper scrypt for the admins tests make (a stored hash names its own cost);
    `test_password_hash_uses_owasp_parameters` undoes it and checks the real one."""
    from referral_service.domain import admins

    monkeypatch.setattr(admins, "SCRYPT_N", 2**10)


@pytest.fixture
def fresh_database_url(backend, tmp_path, request):
    """An empty database of the test's backend, its own (migrations go up and down in it)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrated.sqlite3'}"
        return
    pg_admin = request.getfixturevalue("pg_admin")
    name = make_pg_database(pg_admin)
    yield _pg_url(name)
    drop_pg_database(pg_admin, name)

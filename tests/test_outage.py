"""A database that goes away or hangs: share links never break, `/readyz` says so within its
timeouts, the API answers 503 with `Retry-After`, and everything is back once the database is.

On PostgreSQL the outage is a TCP proxy of the test's own between the service and the server
(tests/tcp_proxy.py), cut (connections reset, new ones refused) or frozen (accepted, never
answered); the server itself is never touched. On SQLite: a database locked by another
connection past the busy timeout, and a database file that cannot be opened. Each request is
made in a thread with a deadline, so that a request that hangs (as they all did on a frozen
database) fails the test instead of stopping it.
"""

import sqlite3
import threading
import time
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from flask_migrate import upgrade
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from referral_service import config, create_app, outages
from referral_service.domain.codes import CodeSigner
from referral_service.errors import RETRY_AFTER, is_outage
from referral_service.extensions import db
from tests import factories
from tests.conftest import (
    BASE_URL,
    SECRET,
    _pg_url,
    app_config,
    drop_pg_database,
    empty_tables,
    make_pg_database,
    migrated,
)
from tests.tcp_proxy import TcpProxy
from tests.test_admin_console import signed_in_as

SHOP = "https://shop.example/welcome?campaign=spring"
BROWSER = {"Accept": "text/html", "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"}
READY_WITHIN = 5.0  # seconds: the issue's target for /readyz with a hung database
PUBLIC_WITHIN = 4.5  # seconds: a share link's worst wait (pre-ping 1.5 s + a new connection 2 s)
API_WITHIN = 6.0  # seconds: an API call's (pre-ping 1.5 s + a new connection 3 s)


def within(seconds: float, call):
    """`call()` in a thread; returns (its result, seconds taken). Fails when it takes longer than
    `seconds`: a request that hangs fails the test instead of stopping it."""
    done: dict = {}

    def run():
        started = time.monotonic()
        try:
            done["value"] = call()
        except BaseException as error:  # handed to the test's thread
            done["error"] = error
        done["took"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds + 1.0)
    assert "took" in done, f"no answer within {seconds} s"
    if "error" in done:
        raise done["error"]
    assert done["took"] < seconds, f"took {done['took']:.1f} s, over {seconds} s"
    return done["value"], done["took"]


def get(client, path, seconds=PUBLIC_WITHIN, **kwargs):
    return within(seconds, lambda: client.get(path, **kwargs))[0]


def query(response) -> dict:
    return parse_qs(urlsplit(response.headers["Location"]).query)


def wait_for(check, seconds: float = 8.0):
    """Call `check()` until it is true (the database is probed again every 2 s)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not back within {seconds} s"
        time.sleep(0.2)


# --- PostgreSQL through a proxy -------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_database(pg_admin):
    """A migrated PostgreSQL database of this module's own."""
    name = make_pg_database(pg_admin)
    url = _pg_url(name)
    migrated(url)
    yield url
    drop_pg_database(pg_admin, name)


class Outage:
    """An application whose way to PostgreSQL goes through a proxy the test cuts or freezes."""

    def __init__(self, database_url: str, tmp_path):
        url = make_url(database_url)
        self.proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).__enter__()
        self.url = url.set(host="127.0.0.1", port=self.proxy.port).render_as_string(False)
        self.tmp_path = tmp_path
        self.app = self.new_app()
        with self.app.app_context():
            empty_tables()
            self.key = factories.api_key("shop")
        self.client = self.app.test_client()

    def new_app(self):
        """Another process of the service: it has read nothing yet."""
        # CACHE_SECONDS 0: every visit asks the database, so that each one meets the outage
        return create_app(
            app_config(self.url, CACHE_SECONDS=0, CLICK_SPILL_DIR=str(self.tmp_path / "spill"))
        )

    @property
    def shop(self) -> dict:
        return factories.auth(self.key)

    def customer(self, external_id: str) -> str:
        response = self.client.put(
            f"/api/v1/customers/{external_id}",
            json={"email": f"{external_id}@example.com", "name": "Anna Kowalska"},
            headers=self.shop,
        )
        assert response.status_code == 201
        return response.json["referral"]["code"]

    def settings(self, **changes) -> None:
        admin = factories.auth(self.admin_key())
        response = self.client.patch("/api/v1/program", json=changes, headers=admin)
        assert response.status_code == 200, response.json

    def admin_key(self) -> str:
        with self.app.app_context():
            return factories.api_key("admin")

    def ready(self) -> bool:
        return self.client.get("/readyz").status_code == 200

    def close(self) -> None:
        self.proxy.restore()
        self.app.extensions["clicks"].flush()  # its own way to the database, back now
        with self.app.app_context():
            db.session.remove()
            db.engine.dispose()
        self.proxy.close()


@pytest.fixture
def outage(pg_database, tmp_path):
    outage = Outage(pg_database, tmp_path)
    yield outage
    outage.close()


@pytest.mark.parametrize("fault", ["cut", "freeze"])
def test_readyz_says_unavailable_within_its_timeouts_and_ready_when_back(outage, fault):
    assert outage.ready()  # a pooled connection, which the fault then strands
    getattr(outage.proxy, fault)()
    response, took = within(READY_WITHIN, lambda: outage.client.get("/readyz"))
    assert response.status_code == 503
    assert response.json["status"] == "unavailable"
    assert response.json["database"].startswith("unreachable")
    # while it is away, other requests do not wait for it again
    response, took = within(READY_WITHIN, lambda: outage.client.get("/readyz"))
    assert response.status_code == 503 and took < 0.5
    assert response.json["database"].startswith("unreachable: away for")
    outage.proxy.restore()
    wait_for(outage.ready)


def test_readyz_with_the_default_timeouts_answers_a_hung_database_in_under_5_seconds(outage):
    app = outage.new_app()  # the defaults of config.py: nothing set in the test
    assert app.config["DATABASE_CONNECT_TIMEOUT"] == 3.0
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    outage.proxy.freeze()
    response, _ = within(READY_WITHIN, lambda: client.get("/readyz"))
    assert response.status_code == 503
    with app.app_context():
        db.engine.dispose()


@pytest.mark.parametrize("fault", ["cut", "freeze"])
def test_share_links_lead_on_while_the_database_is_away(outage, fault):
    outage.settings(landing_url=SHOP)
    known, unknown = outage.customer("known"), outage.customer("unknown")
    assert outage.client.get(f"/r/{known}").status_code == 302  # this process has read it
    forged = ("X" if known[0] != "X" else "Y") + known[1:]
    getattr(outage.proxy, fault)()

    response = get(outage.client, f"/r/{known}?via=whatsapp")
    assert response.status_code == 302
    assert response.headers["Location"].startswith(SHOP + "&")  # the last known settings
    assert query(response)["ref"] == [known]
    assert "click_id" in query(response)  # its code was known: the click is kept for later

    response = get(outage.client, f"/r/{unknown.lower()}")
    assert response.status_code == 302
    assert response.headers["Location"].startswith(SHOP + "&")
    assert query(response)["ref"] == [unknown]  # its signature holds; nothing else is known
    assert "click_id" not in query(response)

    response = get(outage.client, f"/r/{forged}")
    assert response.status_code == 302
    assert response.headers["Location"] == "https://shop.example/welcome?campaign=spring"

    for path in (f"/r/{known}/qr.svg", f"/r/{unknown}/qr.png?size=128"):
        response = get(outage.client, path)
        assert response.status_code == 200 and response.headers["ETag"]
    assert get(outage.client, f"/r/{forged}/qr.svg").status_code == 404
    assert get(outage.client, f"/landing?ref={known}", headers=BROWSER).status_code == 200

    outage.proxy.restore()
    wait_for(outage.ready)
    response = outage.client.get(f"/r/{unknown}")
    assert "click_id" in query(response)  # read from the database again


def test_a_share_link_leads_on_in_the_first_requests_after_a_freeze(outage):
    """The first visits pay the timeouts once (a pooled connection, then a new one); those after
    them are answered at once while the database is away."""
    code = outage.customer("anna")
    assert outage.client.get(f"/r/{code}").status_code == 302
    outage.proxy.freeze()
    took = []
    for _ in range(5):
        response, seconds = within(PUBLIC_WITHIN, lambda: outage.client.get(f"/r/{code}"))
        assert response.status_code == 302 and query(response)["ref"] == [code]
        took.append(seconds)
    assert sorted(took)[-2] < 0.5, took  # at most one visit waited


def test_a_process_that_knows_nothing_sends_friends_to_the_built_in_page_with_ref(outage):
    code = outage.customer("anna")
    outage.settings(landing_url=SHOP)
    fresh = outage.new_app()  # a worker started during the outage
    client = fresh.test_client()
    outage.proxy.cut()
    response = get(client, f"/r/{code}")
    assert response.status_code == 302
    assert response.headers["Location"] == f"{BASE_URL}/landing?ref={code}"
    assert get(client, f"/r/{code}/qr.svg").status_code == 200
    page = get(client, f"/landing?ref={code}", headers=BROWSER)
    assert page.status_code == 200 and code in page.get_data(as_text=True)
    with fresh.app_context():
        db.engine.dispose()


def test_the_welcome_page_stays_up_without_the_referrer_s_name(outage):
    outage.settings(landing_mode="welcome", landing_url=SHOP)
    code = outage.customer("anna")
    page = outage.client.get(f"/r/{code}", headers=BROWSER)
    assert page.status_code == 200 and "Anna invited you!" in page.get_data(as_text=True)
    outage.proxy.cut()
    page = get(outage.client, f"/r/{code}", headers=BROWSER)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "A friend invited you!" in html and f"ref={code}" in html
    page = get(outage.client, f"/r/{code}/welcome?lang=pl", headers=BROWSER)
    assert page.status_code == 200


@pytest.mark.parametrize("fault", ["cut", "freeze"])
def test_the_api_answers_503_with_retry_after_and_the_envelope(outage, fault):
    getattr(outage.proxy, fault)()
    for _ in range(2):  # the first waits for the timeouts, the second is answered at once
        response, took = within(
            API_WITHIN,
            lambda: outage.client.post(
                "/api/v1/signups",
                json={"external_id": "friend-1", "email": "f@example.com"},
                headers=outage.shop,
            ),
        )
        assert response.status_code == 503
        assert response.json["error"]["code"] == "unavailable"
        assert "Retry-After" in response.json["error"]["message"]
        assert int(response.headers["Retry-After"]) > 0
    assert took < 0.5
    outage.proxy.restore()
    wait_for(outage.ready)
    response = outage.client.post(
        "/api/v1/signups",
        json={"external_id": "friend-1", "email": "f@example.com"},
        headers=outage.shop,
    )
    assert response.status_code == 201


def test_with_rate_limits_on_a_503_keeps_its_own_retry_after(outage, caplog):
    """As a user runs it (rate limits on): Flask-Limiter would stamp its window's reset (up to a
    minute) over the 503's few seconds, and a `Retry-After` on every 200. The database's outage
    is the database's in the log: the limiter's key lookup meeting it is no Redis outage."""
    limited = create_app(
        app_config(
            outage.url,
            RATELIMIT_ENABLED=True,
            RATELIMIT_STORAGE_URI="memory://",
            CLICK_SPILL_DIR=str(outage.tmp_path / "spill-limited"),
        )
    )
    client = limited.test_client()
    response = client.get("/api/v1/program", headers=outage.shop)
    assert response.status_code == 200 and "X-RateLimit-Remaining" in response.headers
    assert "Retry-After" not in response.headers
    outage.proxy.cut()
    for _ in range(3):
        response, _ = within(API_WITHIN, lambda: client.get("/api/v1/program", headers=outage.shop))
        assert response.status_code == 503
        assert response.headers["Retry-After"] == str(RETRY_AFTER)
    assert "Redis" not in caplog.text
    outage.proxy.restore()
    with limited.app_context():
        db.engine.dispose()


@pytest.mark.parametrize("path", ["/api/v1/program", "/r/{code}"])
def test_a_database_that_hangs_after_the_answer_is_made_is_no_500(outage, path):
    """The end-of-request clean-up (a ROLLBACK) meets the hang: the answer already made goes
    out, within a pre-ping's wait, and the next request knows the database is away."""
    code = outage.customer("anna")
    # (after the ones set up: runs before Flask-SQLAlchemy's ROLLBACK)
    outage.app.teardown_appcontext_funcs.append(lambda exc: outage.proxy.freeze())
    response, took = within(
        PUBLIC_WITHIN, lambda: outage.client.get(path.format(code=code), headers=outage.shop)
    )
    assert response.status_code in (200, 302)
    outage.app.teardown_appcontext_funcs.pop()
    response, took = within(
        API_WITHIN, lambda: outage.client.get("/api/v1/program", headers=outage.shop)
    )
    assert response.status_code == 503 and took < 0.5


def test_the_console_and_the_share_page_say_so_in_a_page(outage):
    outage.customer("anna")
    link = outage.client.post("/api/v1/customers/anna/portal-link", headers=outage.shop)
    share = urlsplit(link.json["url"]).path
    signed_in_as(outage.app, outage.client, "owner")
    outage.proxy.cut()
    for path in ("/admin/rewards", share):
        response = get(outage.client, path, seconds=API_WITHIN, headers=BROWSER)
        assert response.status_code == 503, path
        assert response.mimetype == "text/html"
        assert "try again" in response.get_data(as_text=True)


def test_a_code_revoked_during_the_outage_still_does_not_attribute(outage, pg_database):
    code = outage.customer("anna")
    assert outage.client.get(f"/r/{code}").status_code == 302
    other = create_app(app_config(pg_database))  # another process, straight to the database
    other_client = other.test_client()
    rotated = other_client.post("/api/v1/customers/anna/referral-code/rotate", headers=outage.shop)
    assert rotated.status_code == 200
    outage.proxy.cut()
    response = get(outage.client, f"/r/{code}")  # this process last knew the code as active
    assert query(response)["ref"] == [code]
    outage.proxy.restore()
    wait_for(outage.ready)
    signup = outage.client.post(
        "/api/v1/signups",
        json={"external_id": "friend", "email": "friend@example.com", "referral_code": code},
        headers=outage.shop,
    )
    assert signup.json["attributed"] is False
    assert signup.json["reason"] == "revoked_code"
    with other.app_context():
        db.engine.dispose()


def test_one_warning_when_the_database_goes_and_one_when_it_is_back(outage, caplog):
    code = outage.customer("anna")
    outage.proxy.cut()
    with caplog.at_level("WARNING", logger=outages.log.name):
        for _ in range(5):
            get(outage.client, f"/r/{code}")
        outage.proxy.restore()
        wait_for(outage.ready)
    lines = [r.getMessage() for r in caplog.records if r.name == outages.log.name]
    assert len([x for x in lines if "unavailable" in x]) == 1, lines
    assert len([x for x in lines if "is back" in x]) == 1, lines


def test_a_statement_under_way_when_the_database_hangs_is_given_up(outage):
    """A hung server never cancels anything: the service stops waiting on the socket itself."""
    app = create_app(app_config(outage.url, DATABASE_STATEMENT_TIMEOUT=1))

    def statement():
        with app.app_context():
            db.session.execute(text("SELECT 1"))  # the connection is open and in use
            outage.proxy.freeze()
            try:
                db.session.execute(text("SELECT 2"))
            except OperationalError as error:
                return error
            finally:
                db.session.remove()

    error, _ = within(3.0, statement)  # 1 s + ANSWER_GRACE 1 s, and a margin
    assert isinstance(error, OperationalError), error
    assert "did not answer within 2 s" in str(error)
    assert is_outage(error)
    with app.app_context():
        db.engine.dispose()


def test_a_statement_past_the_statement_timeout_is_cancelled_by_postgresql(pg_database):
    app = create_app(app_config(pg_database, DATABASE_STATEMENT_TIMEOUT=0.5))
    with app.app_context():
        started = time.monotonic()
        with pytest.raises(OperationalError) as raised:
            db.session.execute(text("SELECT pg_sleep(5)"))
        assert time.monotonic() - started < 2.0
        assert isinstance(raised.value.orig, psycopg.errors.QueryCanceled)
        assert is_outage(raised.value)
        db.session.rollback()
        assert db.session.scalar(text("SELECT 1")) == 1  # the connection is still good
        db.session.remove()
        db.engine.dispose()


# --- SQLite ---------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_app(tmp_path):
    url = f"sqlite:///{tmp_path / 'locked.sqlite3'}"
    migrated(url)
    app = create_app(app_config(url, DATABASE_STATEMENT_TIMEOUT=0.5))
    with app.app_context():
        empty_tables()
    yield app, tmp_path / "locked.sqlite3"
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_a_locked_sqlite_database_is_a_503_after_the_busy_timeout(sqlite_app):
    app, path = sqlite_app
    with app.app_context():
        shop = factories.auth(factories.api_key("shop"))
    client = app.test_client()
    code = client.put("/api/v1/customers/a", json={"email": "a@example.com"}, headers=shop).json[
        "referral"
    ]["code"]
    holder = sqlite3.connect(path, isolation_level=None)  # another program, holding the lock
    holder.execute("BEGIN EXCLUSIVE")
    try:
        response, _ = within(
            5.0,
            lambda: client.put(
                "/api/v1/customers/b", json={"email": "b@example.com"}, headers=shop
            ),
        )
        assert response.status_code == 503
        assert response.json["error"]["code"] == "unavailable"
        assert response.headers["Retry-After"]
        response = get(client, f"/r/{code}")
        assert response.status_code == 302 and query(response)["ref"] == [code]
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_sqlite_database_that_cannot_be_opened_still_leads_friends_on(tmp_path):
    app = create_app(app_config(f"sqlite:///{tmp_path / 'gone' / 'db.sqlite3'}"))
    client = app.test_client()
    code = CodeSigner(SECRET).issue()
    response = get(client, f"/r/{code}")
    assert response.status_code == 302
    assert response.headers["Location"] == f"{BASE_URL}/landing?ref={code}"
    assert get(client, f"/r/{code}/qr.png").status_code == 200
    assert get(client, f"/landing?ref={code}", headers=BROWSER).status_code == 200
    assert get(client, "/readyz").status_code == 503
    response = client.get("/api/v1/customers/a", headers=factories.auth("rs_" + "x" * 40))
    assert response.status_code == 503
    assert response.json["error"]["code"] == "unavailable"


# --- which errors are outages ---------------------------------------------------------------------


def _wrapped(error_class, driver_error):
    return error_class("SELECT 1", {}, driver_error)


def _sqlite_error(statement: str, setup: str = "") -> sqlite3.Error:
    connection = sqlite3.connect(":memory:")
    try:
        if setup:
            connection.execute(setup)
        connection.execute(statement)
    except sqlite3.Error as error:
        return error
    finally:
        connection.close()
    raise AssertionError("no error")


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (PoolTimeout("QueuePool limit reached"), True),
        (_wrapped(OperationalError, psycopg.OperationalError("connection refused")), True),
        (_wrapped(OperationalError, psycopg.errors.ConnectionTimeout("timeout expired")), True),
        (_wrapped(OperationalError, psycopg.errors.QueryCanceled("statement timeout")), True),
        (_wrapped(OperationalError, psycopg.errors.AdminShutdown("terminating")), True),
        (_wrapped(OperationalError, psycopg.errors.TooManyConnections("too many")), True),
        (_wrapped(IntegrityError, psycopg.errors.UniqueViolation("duplicate key")), False),
        (_wrapped(OperationalError, psycopg.errors.SerializationFailure("retry")), False),
        (_wrapped(ProgrammingError, psycopg.errors.UndefinedTable("no table")), False),
        (_wrapped(OperationalError, _sqlite_error("SELECT * FROM nothing")), False),
        (
            _wrapped(
                IntegrityError,
                _sqlite_error("INSERT INTO t VALUES (1)", "CREATE TABLE t (a CHECK (a > 1))"),
            ),
            False,
        ),
        (ValueError("not a database error"), False),
    ],
)
def test_only_errors_of_an_unreachable_database_are_outages(error, outage):
    assert is_outage(error) is outage


def test_a_busy_sqlite_database_is_an_outage(tmp_path):
    path = tmp_path / "busy.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        waiting = sqlite3.connect(path, timeout=0.01)
        with pytest.raises(sqlite3.OperationalError) as raised:
            waiting.execute("CREATE TABLE t (a)")
        waiting.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert is_outage(_wrapped(OperationalError, raised.value))


# --- settings -------------------------------------------------------------------------------------


def test_database_timeouts_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("DATABASE_CONNECT_TIMEOUT", "2")
    monkeypatch.setenv("DATABASE_STATEMENT_TIMEOUT", "0.5")
    monkeypatch.delenv("DATABASE_POOL_TIMEOUT", raising=False)
    assert config.database_timeouts() == {
        "DATABASE_CONNECT_TIMEOUT": 2.0,
        "DATABASE_STATEMENT_TIMEOUT": 0.5,
    }


@pytest.mark.parametrize("value", ["0", "-1", "soon", "301", "nan", "inf"])
def test_a_database_timeout_that_is_not_a_number_of_seconds_is_refused(monkeypatch, value):
    monkeypatch.setenv("DATABASE_POOL_TIMEOUT", value)
    with pytest.raises(ValueError, match="DATABASE_POOL_TIMEOUT"):
        config.database_timeouts()


def test_postgresql_gets_the_statement_timeout_of_the_settings(pg_database):
    app = create_app(app_config(pg_database, DATABASE_STATEMENT_TIMEOUT=1.5))
    with app.app_context():
        assert db.session.scalar(text("SHOW statement_timeout")) == "1500ms"
        db.session.remove()
        db.engine.dispose()


def test_sqlite_gets_the_busy_timeout_of_the_settings(tmp_path):
    app = create_app(
        app_config(f"sqlite:///{tmp_path / 'db.sqlite3'}", DATABASE_STATEMENT_TIMEOUT=0.25)
    )
    with app.app_context():
        upgrade()
        assert db.session.scalar(text("PRAGMA busy_timeout")) == 250
        db.session.remove()
        db.engine.dispose()

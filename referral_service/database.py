"""How long the service waits for its database, and what it does while the database is away.

Three settings bound every wait (config.py, in seconds): `DATABASE_CONNECT_TIMEOUT` to open a
connection, `DATABASE_POOL_TIMEOUT` to get a free one from the pool, `DATABASE_STATEMENT_TIMEOUT`
for a statement (PostgreSQL's own `statement_timeout`; SQLite's busy timeout). A PostgreSQL
server that stops answering altogether (a hung host, a network that drops packets) never cancels
anything, and a connection already open would wait on its socket for ever, pre-ping included:
so the service itself waits at most `DATABASE_STATEMENT_TIMEOUT` + ANSWER_GRACE for any answer
on a connection (psycopg's own wait with a timeout, `PatientConnection`; QUICK_ANSWER for the
pool's pre-ping), then closes it; the pool sees a closed connection, drops it and every older
one, and connects anew. The longest a request can wait for a database that hangs is thus
QUICK_ANSWER + DATABASE_CONNECT_TIMEOUT when the hang began between two requests (3.5 s by
default on the public paths and /readyz, which connect within MIN_CONNECT_TIMEOUT; 4.5 s
elsewhere), and DATABASE_STATEMENT_TIMEOUT + ANSWER_GRACE (6 s) when it began during a
statement: well within gunicorn's 30 s worker timeout.

While the database is away (`outages.dependency("database")`), the pool (`GuardedPool`) hands
out no connection but to one request per probe interval, which tries it again; the others get
`Unavailable` at once instead of waiting a timeout each. Every statement that succeeds reports the
database up; a connection that cannot be made, breaks or is given up on reports it down.

`attempt()` is how the public pages read: in it, an outage becomes `Unavailable` (and the
session is ready to be used again), and `quick=True` waits QUICK_ANSWER seconds at most for the
few small reads a share link makes.
"""

import contextlib
import contextvars
import math

import psycopg
from flask import has_app_context
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

import referral_service.models.base  # noqa: F401 (its SQLite settings run first; see _busy_timeout)
from referral_service import outages
from referral_service.errors import Unavailable, is_outage
from referral_service.extensions import db

ANSWER_GRACE = 1.0  # seconds beyond the statement timeout before the service stops waiting
QUICK_ANSWER = 1.5  # seconds a pre-ping, or a share link's, QR image's or /readyz's read, waits
MIN_CONNECT_TIMEOUT = 2  # seconds: libpq (and psycopg) wait at least this long to connect
_TIMEOUTS = "referral_service_timeouts"  # the connect argument that carries the settings

# this thread's narrower limits, in seconds: for each answer, and for a new connection
_patience: contextvars.ContextVar[float | None] = contextvars.ContextVar("patience", default=None)
_connect_patience: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "connect_patience", default=None
)


class PatientConnection(psycopg.Connection):
    """A psycopg connection that waits `answer_timeout` seconds at most for the server.

    Every blocking step of psycopg (a query, a fetch, commit, rollback, the pool's pre-ping)
    goes through `wait`; past the deadline the connection is closed (its protocol state is
    unknown) and psycopg.OperationalError raised, which SQLAlchemy reads as a disconnect.
    """

    answer_timeout: float | None = None

    def wait(self, gen, interval=None, timeout=None):
        """psycopg's wait, with this connection's deadline (narrowed by `waiting_at_most`)."""
        limit = _limit(timeout, self.answer_timeout, _patience.get())
        try:
            if interval is None:
                return super().wait(gen, timeout=limit)
            return super().wait(gen, interval, timeout=limit)
        except psycopg.errors._WaitTimeout:  # what Connection.wait raises past its timeout
            self.close()
            raise psycopg.OperationalError(
                f"the database did not answer within {limit:g} s; connection closed"
            ) from None


def _limit(*timeouts: float | None) -> float | None:
    given = [t for t in timeouts if t is not None]
    return min(given) if given else None


@contextlib.contextmanager
def waiting_at_most(seconds: float, connecting: bool = True):
    """Within the block, this thread waits at most `seconds` for each answer of the database
    and, if `connecting`, for a new connection (at least MIN_CONNECT_TIMEOUT)."""
    token = _patience.set(_limit(seconds, _patience.get()))
    connect_token = _connect_patience.set(
        _limit(seconds, _connect_patience.get()) if connecting else _connect_patience.get()
    )
    try:
        yield
    finally:
        _connect_patience.reset(connect_token)
        _patience.reset(token)


def engine_options(url: str, config: dict) -> dict:
    """SQLAlchemy engine options for `url` with the timeouts of `config` (seconds).

    PostgreSQL: connect timeout, server-side statement timeout, the client-side answer deadline
    (`PatientConnection`), pool timeout and pre-ping. SQLite: the busy timeout. Both get the
    `GuardedPool` (an in-memory SQLite database keeps SQLAlchemy's own pool).
    """
    options = dict(config.get("SQLALCHEMY_ENGINE_OPTIONS") or {})
    options["hide_parameters"] = True  # a database error in the log never shows the values
    statement = float(config["DATABASE_STATEMENT_TIMEOUT"])
    if url.startswith("sqlite"):
        options.pop("pool_pre_ping", None)  # a file does not go away between two requests
        if ":memory:" not in url and url not in ("sqlite://", "sqlite:///"):
            options["poolclass"] = GuardedPool
            options["pool_timeout"] = float(config["DATABASE_POOL_TIMEOUT"])
        options["connect_args"] = {
            **options.get("connect_args", {}),
            _TIMEOUTS: {"busy": statement},
        }
        return options
    options.update(
        pool_pre_ping=True, poolclass=GuardedPool, pool_timeout=config["DATABASE_POOL_TIMEOUT"]
    )
    if url.startswith("postgresql+psycopg"):
        options["connect_args"] = {
            **options.get("connect_args", {}),
            _TIMEOUTS: {
                "connect": float(config["DATABASE_CONNECT_TIMEOUT"]),
                "statement": statement,
            },
        }
    return options


@event.listens_for(Engine, "do_connect")
def _connect(dialect, connection_record, cargs, cparams):
    """Open a PostgreSQL connection with the timeouts of its engine (see `engine_options`)."""
    timeouts = cparams.pop(_TIMEOUTS, None)
    if timeouts is None:
        return None
    if "busy" in timeouts:  # SQLite: applied once connected (_busy_timeout)
        connection_record.info["busy_timeout_ms"] = int(timeouts["busy"] * 1000)
        return None
    connect = _limit(timeouts["connect"], _connect_patience.get())
    cparams["connect_timeout"] = max(MIN_CONNECT_TIMEOUT, math.ceil(connect))
    statement_ms = int(timeouts["statement"] * 1000)
    cparams["options"] = f"{cparams.get('options', '')} -c statement_timeout={statement_ms}".strip()
    connection = PatientConnection.connect(*cargs, **cparams)
    connection.answer_timeout = timeouts["statement"] + ANSWER_GRACE
    return connection


@event.listens_for(Engine, "connect")
def _busy_timeout(dbapi_connection, connection_record):
    """SQLite's busy timeout from `DATABASE_STATEMENT_TIMEOUT` (after models/base.py's own
    settings of a new connection, which this module imports first)."""
    busy = connection_record.info.get("busy_timeout_ms")
    if busy is not None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(busy)}")
        cursor.close()


def may_try() -> bool:
    """Whether to use the database now: always while it is up; while it is away, for one caller
    per probe interval (`Dependency.try_now`), whose outcome the statement reports.

    Code outside an application (a writer thread) always may.
    """
    if not has_app_context():
        return True
    database = outages.dependency("database")
    return not database.down or database.try_now()


class GuardedPool(QueuePool):
    """SQLAlchemy's queue pool, which refuses a connection (`Unavailable`, at once) to a request
    that may not use the database now (`may_try`), and waits QUICK_ANSWER seconds at most for
    the answer to its pre-ping (an empty statement: a server that answers at all answers it at
    once)."""

    def connect(self):
        if not may_try():
            raise Unavailable()
        if not self._pre_ping:  # SQLite: nothing to wait for before the statement
            return super().connect()
        with waiting_at_most(QUICK_ANSWER, connecting=False):
            return super().connect()


@event.listens_for(Engine, "handle_error")
def _report_failure(context) -> None:
    """The database is away: a connection could not be made, or one broke or was given up on.

    Not for a failed pre-ping (the pool connects anew, and that attempt reports), nor for a
    statement PostgreSQL cancelled or a lock SQLite waited for too long: those are answered 503
    (`is_outage`), but the database is there.
    """
    if context.is_pre_ping or not has_app_context():
        return
    error = context.sqlalchemy_exception or context.original_exception
    if context.is_disconnect or (context.connection is None and is_outage(error)):
        outages.dependency("database").failed(error)


@event.listens_for(Engine, "after_cursor_execute")
def _report_success(connection, cursor, statement, parameters, context, executemany) -> None:
    """A statement answered: the database is there."""
    if outages.anything_down() and has_app_context():
        outages.dependency("database").succeeded()


@contextlib.contextmanager
def attempt(quick: bool = False):
    """Use the database in the block; an outage (or a database known to be away) raises
    Unavailable, with the session rolled back so that it can be used again.

    With `quick`, each answer (and a new connection) is waited for QUICK_ANSWER seconds at most
    (MIN_CONNECT_TIMEOUT for a connection): for the small reads of the public pages.
    """
    try:
        with waiting_at_most(QUICK_ANSWER) if quick else contextlib.nullcontext():
            yield
    except Unavailable:
        db.session.rollback()
        raise
    except Exception as error:
        if not is_outage(error):
            raise
        db.session.rollback()
        raise Unavailable() from error

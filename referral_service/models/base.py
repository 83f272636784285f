"""The declarative base, column types for exact money and UTC time, and the SQLite settings."""

import contextlib
import fcntl
import os
import threading
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import DateTime, MetaData, String, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Base of every model; constraint names are stable across databases."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every database (SQLite keeps no zone of its own)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where an aware UTC time is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def load_dialect_impl(self, dialect):
        return dialect.type_descriptor(DateTime(timezone=dialect.name != "sqlite"))


class DecimalString(TypeDecorator):
    """An exact decimal kept as text: the same on SQLite (no exact decimal type) and PostgreSQL."""

    impl = String(40)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else str(Decimal(value))

    def process_result_value(self, value, dialect):
        return None if value is None else Decimal(value)


@event.listens_for(Engine, "connect")
def _sqlite_on_connect(dbapi_connection, connection_record):
    """WAL, a busy timeout and foreign keys; transactions are begun by us (see `_sqlite_begin`).
    `secure_delete` zeroes what a change frees, so that an erased person's email does not linger
    in the file's free space (see `scrub_sqlite_log` for the write-ahead log)."""
    if type(dbapi_connection).__module__.split(".")[0] != "sqlite3":
        return
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def scrub_sqlite_log(engine: Engine) -> None:
    """On SQLite, move the write-ahead log into the database file and empty it (a TRUNCATE
    checkpoint), so that the values a step overwrote (an erased person's email) are gone from
    the `-wal` file too; nothing elsewhere. Best effort: while another connection reads, the
    log is emptied at a later checkpoint."""
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


@event.listens_for(Engine, "begin")
def _sqlite_begin(connection):
    """Begin SQLite transactions ourselves: `BEGIN IMMEDIATE` when a writer asked for it.

    A write step takes the database's write lock when it starts, so two writers queue on the busy
    timeout instead of failing halfway with "database is locked".
    """
    if connection.dialect.name != "sqlite":
        return
    mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


class WriterQueue:
    """Writers to one SQLite file take turns on an OS file lock, not on SQLite's busy timeout.

    SQLite lets one writer in at a time; the others poll with growing sleeps (1, 2, 5, 10 ms and
    up) until the lock is free, so under load most of a writer's time goes to sleeping after the
    lock was already released. Queued on `flock` instead, the next writer is woken the moment the
    last one commits. The lock file sits beside the database (`<file>-writer.lock`); it is held
    from `BEGIN IMMEDIATE` to the end of the transaction, is per process and thread (a thread of
    this process waits on a thread lock first), and the kernel drops it when a process dies.
    SQLite's own lock and busy timeout stay in force behind it for writers that do not queue
    (another program, say).
    """

    def __init__(self, database: str):
        self.path = f"{database}-writer.lock"
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._file = None
        self._pid = None

    def _fd(self) -> int:
        if self._pid != os.getpid():  # opened after a fork: each process has its own lock
            self._file = open(self.path, "a+b")  # noqa: SIM115 (kept open for the process)
            self._pid = os.getpid()
        return self._file.fileno()

    def acquire(self) -> None:
        self._thread_lock.acquire()
        try:
            if self._depth == 0:
                fcntl.flock(self._fd(), fcntl.LOCK_EX)
            self._depth += 1
        except BaseException:
            self._thread_lock.release()
            raise

    def release(self) -> None:
        self._depth -= 1
        try:
            if self._depth == 0:
                fcntl.flock(self._fd(), fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    @contextlib.contextmanager
    def turn(self):
        """Hold the queue's lock for the block."""
        self.acquire()
        try:
            yield
        finally:
            self.release()


_queues: dict[str, WriterQueue] = {}
_queues_lock = threading.Lock()


def writer_queue(bind) -> WriterQueue | None:
    """The writer queue of an engine's SQLite file; None for other databases and for `:memory:`."""
    url = bind.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    path = os.path.abspath(url.database)
    with _queues_lock:
        return _queues.setdefault(path, WriterQueue(path))


def end_read(session) -> None:
    """End the session's read-only transaction, if one is open, so that the next read sees what
    was committed since. Writes nothing; unsaved changes or an open unit of work at this point
    are a bug, so they raise (the unit of work alone ends a step's transaction)."""
    if hasattr(session, "registry"):  # a scoped_session: work on the session it holds
        session = session()
    if not session.in_transaction():
        return
    if session.new or session.dirty or session.deleted or session.info.get("unit_of_work"):
        raise RuntimeError("end_read() called inside a step that writes")
    session.rollback()


def begin_write(session) -> None:
    """Start the session's transaction as a writer (`BEGIN IMMEDIATE` on SQLite).

    Called first by every domain step that writes. A read-only transaction still open (from
    authentication, say) is ended first; pending changes at this point are a bug, so they raise.
    On a SQLite file the writer first waits its turn in the `WriterQueue`, until the transaction
    ends.
    """
    if hasattr(session, "registry"):  # a scoped_session: work on the session it holds
        session = session()
    end_read(session)
    queue = writer_queue(session.get_bind())
    if queue is not None:
        queue.acquire()
        session.info["writer_queue"] = queue
    try:
        session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
    except BaseException:
        session.info.pop("writer_queue", None)
        if queue is not None:
            queue.release()
        raise


@event.listens_for(Session, "after_transaction_end")
def _end_of_turn(session, transaction) -> None:
    """A writer's transaction ended (committed, rolled back or closed): the next one may go."""
    if transaction.parent is None:
        queue = session.info.pop("writer_queue", None)
        if queue is not None:
            queue.release()

"""A bare Flask application that writes one row, on SQLite or PostgreSQL, with sync or gthread
workers: the baseline the benchmark suite (`bench/suite.py`) compares the checkout calls to.

What it measures: nothing by itself. `POST /insert` takes a JSON body `{"external_id", "email"}`,
inserts one row into a table of its own and commits, answering 201 with the new row's id (409 if
the `external_id` is taken, 400 for another body): what Flask, the WSGI server and one write
transaction cost with no application code around them. `GET /` answers "ok".

The database is `BARE_INSERT_URL`: `sqlite:///<path>` (the sqlite3 module, set up as the service
sets SQLite up: WAL, `busy_timeout` 30000, `synchronous=NORMAL`, `BEGIN IMMEDIATE`) or
`postgresql://...` (psycopg, autocommit off, one transaction a row). Each thread of each worker
process opens one connection on its first request and keeps it (a gthread worker's threads
never share a connection, as the service's pool gives each request its own). The table
`bare_rows` is created if missing; `bench/suite.py` creates and drops the databases it names.

How to run it alone (from the repository root, with the development dependencies installed):

    BARE_INSERT_URL=sqlite:///bare.sqlite3 \\
        .venv/bin/gunicorn --workers 2 --bind 127.0.0.1:8001 --chdir bench bare_insert_any_app:app
"""

import os
import sqlite3
import threading
from datetime import UTC, datetime

from flask import Flask, request

URL = os.environ.get("BARE_INSERT_URL", "sqlite:///bare-insert.sqlite3")
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS bare_rows (
    id INTEGER PRIMARY KEY,
    external_id VARCHAR(128) NOT NULL UNIQUE,
    email VARCHAR(320) NOT NULL,
    created_at DATETIME NOT NULL
)
"""
POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS bare_rows (
    id BIGSERIAL PRIMARY KEY,
    external_id VARCHAR(128) NOT NULL UNIQUE,
    email VARCHAR(320) NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
)
"""

app = Flask(__name__)
_local = threading.local()


class _SQLite:
    def __init__(self, path: str):
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout=30000")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(SQLITE_SCHEMA)

    def insert(self, external_id: str, email: str) -> int | None:
        """The new row's id, None if `external_id` is taken."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            cursor = self.db.execute(
                "INSERT INTO bare_rows (external_id, email, created_at) VALUES (?, ?, ?)",
                (external_id, email, datetime.now(UTC).isoformat()),
            )
            self.db.execute("COMMIT")
        except sqlite3.IntegrityError:
            self.db.execute("ROLLBACK")
            return None
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return cursor.lastrowid


class _Postgres:
    def __init__(self, url: str):
        import psycopg  # only needed for PostgreSQL

        self.errors = psycopg.errors
        self.db = psycopg.connect(url)
        with self.db.transaction():
            self.db.execute(POSTGRES_SCHEMA)

    def insert(self, external_id: str, email: str) -> int | None:
        try:
            with self.db.transaction():
                row = self.db.execute(
                    "INSERT INTO bare_rows (external_id, email, created_at) "
                    "VALUES (%s, %s, %s) RETURNING id",
                    (external_id, email, datetime.now(UTC)),
                ).fetchone()
        except self.errors.UniqueViolation:
            return None
        return row[0]


def connection():
    """This thread's connection in this process (opened after gunicorn forked the worker)."""
    pid = os.getpid()
    if getattr(_local, "pid", None) != pid:
        if URL.startswith("sqlite:///"):
            _local.db = _SQLite(URL.removeprefix("sqlite:///"))
        else:
            _local.db = _Postgres(URL.replace("postgresql+psycopg://", "postgresql://", 1))
        _local.pid = pid
    return _local.db


@app.get("/")
def index():
    """A short plain text answer."""
    return "ok\n", 200, {"Content-Type": "text/plain; charset=utf-8"}


@app.post("/insert")
def insert():
    """Insert one row and commit; 201 with its id, 409 for a taken external_id, 400 else."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not all(
        isinstance(body.get(k), str) for k in ("external_id", "email")
    ):
        return {"error": {"code": "bad_request", "message": "Need external_id and email."}}, 400
    new_id = connection().insert(body["external_id"], body["email"])
    if new_id is None:
        return {"error": {"code": "conflict", "message": "external_id already taken."}}, 409
    return {"id": new_id}, 201

"""A bare Flask application that writes: the baseline the service's checkout calls are compared to.

What it measures: nothing by itself. `POST /insert` takes a JSON body `{"external_id", "email"}`,
inserts one row into a SQLite table and commits, answering 201 with the new row's id: what
Flask, the WSGI server and one SQLite write transaction cost on this machine with no application
code around them. `bench_checkout.py` runs it under gunicorn next to the service, with the same
settings. `GET /` answers "ok" (for readiness checks).

SQLite is set up as the service sets it up (`referral_service/models/base.py`): WAL,
`busy_timeout` 30000, `synchronous=NORMAL`, and write transactions begun with `BEGIN IMMEDIATE`.
Each worker process opens one connection, on its first request, and keeps it.

How to run it alone (from the repository root, with the development dependencies installed):

    BARE_INSERT_DATABASE=bare-insert.sqlite3 \\
        .venv/bin/gunicorn --workers 2 --bind 127.0.0.1:8001 --chdir bench bare_insert_app:app

Needs: Flask and gunicorn (both are dependencies of the service). The database file is
`BARE_INSERT_DATABASE` (default: `bare-insert.sqlite3` in the current directory); its table is
created if missing.
"""

import os
import sqlite3
from datetime import UTC, datetime

from flask import Flask, request

DATABASE = os.environ.get("BARE_INSERT_DATABASE", "bare-insert.sqlite3")
SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (
    id INTEGER PRIMARY KEY,
    external_id VARCHAR(128) NOT NULL UNIQUE,
    email VARCHAR(320) NOT NULL,
    created_at DATETIME NOT NULL
)
"""

app = Flask(__name__)
_connections: dict[int, sqlite3.Connection] = {}  # process id -> its connection


def connection() -> sqlite3.Connection:
    """This process's connection (opened after gunicorn forked the worker, never shared)."""
    pid = os.getpid()
    found = _connections.get(pid)
    if found is None:
        found = sqlite3.connect(DATABASE, isolation_level=None, check_same_thread=False)
        found.execute("PRAGMA busy_timeout=30000")
        found.execute("PRAGMA journal_mode=WAL")
        found.execute("PRAGMA synchronous=NORMAL")
        found.execute(SCHEMA)
        _connections.clear()
        _connections[pid] = found
    return found


@app.get("/")
def index():
    """A short plain text answer."""
    return "ok\n", 200, {"Content-Type": "text/plain; charset=utf-8"}


@app.post("/insert")
def insert():
    """Insert one row and commit; 201 with its id, 400 for a body without the two strings."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not all(
        isinstance(body.get(k), str) for k in ("external_id", "email")
    ):
        return {"error": {"code": "bad_request", "message": "Need external_id and email."}}, 400
    db = connection()
    db.execute("BEGIN IMMEDIATE")
    try:
        cursor = db.execute(
            "INSERT INTO rows (external_id, email, created_at) VALUES (?, ?, ?)",
            (body["external_id"], body["email"], datetime.now(UTC).isoformat()),
        )
        db.execute("COMMIT")
    except sqlite3.IntegrityError:
        db.execute("ROLLBACK")
        return {"error": {"code": "conflict", "message": "external_id already taken."}}, 409
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return {"id": cursor.lastrowid}, 201

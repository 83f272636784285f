"""Readiness: is the database reachable, and is its schema at this version's newest migration or
ahead of it?

Ahead is ready: a newer release's `db upgrade` runs while this version still serves, and its
migrations only add (expand first, contract in a later release), so this version works on the
schema it left. A revision this version does not know is such a newer one.
"""

import time
from pathlib import Path

from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from referral_service import database, outages
from referral_service.errors import Unavailable
from referral_service.extensions import db

_PACKAGE = Path(__file__).resolve().parent.parent
# inside an installed wheel the migrations sit in the package (setup.py copies them there); in a
# checkout (and an editable install) they are the repository's top-level `migrations/`
MIGRATIONS = next(
    (
        folder
        for folder in (_PACKAGE / "migrations", _PACKAGE.parent / "migrations")
        if folder.is_dir()
    ),
    _PACKAGE / "migrations",
)
VERSION_TABLE = "alembic_version"  # alembic's default, which migrations/env.py keeps
_heads: tuple[str, ...] | None = None
_known: frozenset[str] | None = None


def _scripts() -> ScriptDirectory:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


def heads() -> tuple[str, ...]:
    """The head revision(s) of the migrations shipped with this version."""
    global _heads
    if _heads is None:
        _heads = tuple(_scripts().get_heads())
    return _heads


def known_revisions() -> frozenset[str]:
    """Every revision of the migrations shipped with this version."""
    global _known
    if _known is None:
        _known = frozenset(script.revision for script in _scripts().walk_revisions())
    return _known


def schema_state(current: tuple[str, ...]) -> str:
    """Where the database's revision(s) `current` stand against this version's migrations:
    `head`; `ahead` (every one unknown here: a newer release's); or `behind` (none, or one this
    version knows but not its head: `db upgrade` has not run)."""
    if set(current) == set(heads()):
        return "head"
    if current and not set(current) & known_revisions():
        return "ahead"
    return "behind"


def readiness() -> dict:
    """`{status, database, migrations, revision, head}`; status is ok when the database answers
    and `migrations` (schema_state) is `head` or `ahead`, else `unavailable`.

    Quick (database.py `attempt`): with the database away, hung or cut off, the answer comes
    within QUICK_ANSWER seconds per answer and MIN_CONNECT_TIMEOUT for a new connection, and at
    once while this process knows it is away and another request is probing it.
    """
    head = ",".join(heads())
    try:
        with database.attempt(quick=True), db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            current = _current_revisions(connection)
    except Exception as error:  # any failure to reach the database means not ready
        return {
            "status": "unavailable",
            "database": f"unreachable: {_reason(error)}",
            "migrations": "unknown",
            "revision": None,
            "head": head,
        }
    revision = ",".join(current) or None
    state = schema_state(tuple(current))
    return {
        "status": "unavailable" if state == "behind" else "ok",
        "database": "ok",
        "migrations": state,
        "revision": revision,
        "head": head,
    }


def _current_revisions(connection) -> tuple[str, ...]:
    """The revisions in the database's `alembic_version` table (none without the table), read
    as alembic's MigrationContext reads them, but without its two INFO log lines per call: a
    load balancer probes `/readyz` every few seconds."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return ()
    return tuple(connection.scalars(text(f"SELECT version_num FROM {VERSION_TABLE}")))


def _reason(error: Exception) -> str:
    """What kept the database from answering, in a few words."""
    if isinstance(error, Unavailable) and error.__cause__ is None:
        away = outages.dependency("database").down_since
        if away is not None:
            return f"away for {time.monotonic() - away:.0f} s"
    cause = error.__cause__ if isinstance(error, Unavailable) and error.__cause__ else error
    driver_error = getattr(cause, "orig", None) or cause
    return type(driver_error).__name__

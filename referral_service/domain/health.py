"""Readiness: is the database reachable, and is its schema at the newest migration?"""

import time
from pathlib import Path

from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

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
_heads: tuple[str, ...] | None = None


def heads() -> tuple[str, ...]:
    """The head revision(s) of the migrations shipped with this version."""
    global _heads
    if _heads is None:
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS))
        _heads = tuple(ScriptDirectory.from_config(config).get_heads())
    return _heads


def readiness() -> dict:
    """`{status, database, migrations, revision, head}`; status is ok only when both are.

    Quick (database.py `attempt`): with the database away, hung or cut off, the answer comes
    within QUICK_ANSWER seconds per answer and MIN_CONNECT_TIMEOUT for a new connection, and at
    once while this process knows it is away and another request is probing it.
    """
    head = ",".join(heads())
    try:
        with database.attempt(quick=True), db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            current = MigrationContext.configure(connection).get_current_heads()
    except Exception as error:  # any failure to reach the database means not ready
        return {
            "status": "unavailable",
            "database": f"unreachable: {_reason(error)}",
            "migrations": "unknown",
            "revision": None,
            "head": head,
        }
    revision = ",".join(current) or None
    at_head = set(current) == set(heads())
    return {
        "status": "ok" if at_head else "unavailable",
        "database": "ok",
        "migrations": "head" if at_head else "behind",
        "revision": revision,
        "head": head,
    }


def _reason(error: Exception) -> str:
    """What kept the database from answering, in a few words."""
    if isinstance(error, Unavailable) and error.__cause__ is None:
        away = outages.dependency("database").down_since
        if away is not None:
            return f"away for {time.monotonic() - away:.0f} s"
    cause = error.__cause__ if isinstance(error, Unavailable) and error.__cause__ else error
    driver_error = getattr(cause, "orig", None) or cause
    return type(driver_error).__name__

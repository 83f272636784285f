"""Readiness: is the database reachable, and is its schema at the newest migration?"""

from pathlib import Path

from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from referral_service.extensions import db

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
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
    """`{status, database, migrations, revision, head}`; status is ok only when both are."""
    head = ",".join(heads())
    try:
        with db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            current = MigrationContext.configure(connection).get_current_heads()
    except Exception as error:  # any failure to reach the database means not ready
        return {
            "status": "unavailable",
            "database": f"unreachable: {type(error).__name__}",
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

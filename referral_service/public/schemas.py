"""Schemas of the health answers."""

from marshmallow import Schema, fields


class Health(Schema):
    """Liveness."""

    status = fields.String(required=True)


class Readiness(Schema):
    """Readiness: the database and its migrations."""

    status = fields.String(required=True, metadata={"description": "ok or unavailable"})
    database = fields.String(required=True)
    migrations = fields.String(
        required=True,
        metadata={
            "description": "`head` (at this version's newest migration), `ahead` (a newer "
            "release's, still ready), `behind` (not ready: run `db upgrade`) or `unknown`"
        },
    )
    revision = fields.String(allow_none=True)
    head = fields.String(allow_none=True)

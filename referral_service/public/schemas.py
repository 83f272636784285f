"""Schemas of the health answers."""

from marshmallow import Schema, fields


class Health(Schema):
    """Liveness."""

    status = fields.String(required=True)


class Readiness(Schema):
    """Readiness: the database and its migrations."""

    status = fields.String(required=True, metadata={"description": "ok or unavailable"})
    database = fields.String(required=True)
    migrations = fields.String(required=True)
    revision = fields.String(allow_none=True)
    head = fields.String(allow_none=True)

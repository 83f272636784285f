"""Schemas of the public links' queries and of the health answers."""

from marshmallow import EXCLUDE, Schema, fields, validate

from referral_service.domain.qr import MAX_SIZE, MIN_SIZE


class VisitQuery(Schema):
    """`/r/<code>` query: other parameters (utm_*, ...) are allowed and ignored."""

    class Meta:
        unknown = EXCLUDE

    via = fields.String(
        metadata={
            "description": "The channel: link, qr, email, whatsapp, sms, facebook, x, "
            "copy, ... (anything else is counted as `other`)."
        }
    )


class QrQuery(Schema):
    """QR image query."""

    class Meta:
        unknown = EXCLUDE

    size = fields.Integer(
        strict=False,
        validate=validate.Range(MIN_SIZE, MAX_SIZE),
        metadata={"description": f"Pixels square, {MIN_SIZE} to {MAX_SIZE} (default 512)."},
    )


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

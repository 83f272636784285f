"""Cursor pagination: newest first, the cursor an opaque token naming the last id seen."""

import base64
import binascii

from sqlalchemy import Select

from referral_service.errors import ValidationFailed
from referral_service.extensions import db

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_ID = 2**31 - 1  # the largest id an integer primary key holds (PostgreSQL's `integer`)


def _decode(cursor: str) -> int:
    """The id a cursor names; raises ValidationFailed for any text `_encode` does not give out.

    Only the exact token counts: base64 alone would skip characters outside its alphabet and
    int() would read ` 12`, `1_2` or other scripts' digits, so many texts would name one id."""
    try:
        digits = base64.urlsafe_b64decode(cursor.encode() + b"=" * (-len(cursor) % 4))
        value = int(digits) if digits.isdigit() and len(digits) <= len(str(MAX_ID)) else -1
    except (ValueError, binascii.Error, UnicodeError):
        value = -1
    if not 0 < value <= MAX_ID or _encode(value) != cursor:
        raise ValidationFailed(fields={"cursor": ["Not a cursor this service gave out."]})
    return value


def _encode(last_id: int) -> str:
    return base64.urlsafe_b64encode(str(last_id).encode()).decode().rstrip("=")


def page(query: Select, id_column, cursor: str | None, limit: int | None):
    """`(items, next_cursor)` of a query, newest first; raises ValidationFailed for a bad cursor."""
    limit = limit or DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationFailed(fields={"limit": [f"Must be 1 to {MAX_LIMIT}."]})
    if cursor:
        query = query.where(id_column < _decode(cursor))
    items = list(db.session.scalars(query.order_by(id_column.desc()).limit(limit + 1)))
    more = len(items) > limit
    items = items[:limit]
    return items, (_encode(items[-1].id) if more else None)

"""The business events of the contract, their ids, and how an event's object is shaped.

Every event is `{id: "evt_...", type, created_at, data}`; `data` is the object as the API shows
it. The domain names the object (a model instance, or a dict already in the API's shape); the
doors register how each kind of model is shown (`register_shape`), so the domain never builds an
outside view itself. Events are written by the unit of work (domain/unit.py) in the transaction
of the change they tell about (a transactional outbox).
"""

import os
import time
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import select

from referral_service.domain import pages
from referral_service.domain.text import findable
from referral_service.extensions import db
from referral_service.models import OutboxEvent

EVENT_TYPES = (
    "customer.enrolled",
    "referral.attributed",
    "referral.converted",
    "referral.requalified",
    "reward.created",
    "reward.matured",
    "reward.approved",
    "reward.rejected",
    "reward.reversed",
    "clawback.created",
    "payout.created",
    "payout.approved",
    "payout.paid",
)
ALL = "*"  # an endpoint's filter that takes every type

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_shapes: dict[type, Callable[[object], dict]] = {}


def new_event_id() -> str:
    """`evt_` and 26 Crockford base32 characters: 48 bits of milliseconds, then 80 random bits
    (the ULID layout), so ids sort by the time they were made."""
    number = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        number, digit = divmod(number, 32)
        chars.append(_CROCKFORD[digit])
    return "evt_" + "".join(reversed(chars))


def register_shape(kind: type, shape: Callable[[object], dict]) -> None:
    """Show instances of `kind` (a model class) in events as `shape(instance)` does."""
    _shapes[kind] = shape


def shaped(subject) -> dict:
    """The event data of `subject`: a dict as given (its times and decimals made JSON), or a
    model instance through its registered shape. Raises LookupError for a kind with no shape."""
    if isinstance(subject, dict):
        return jsonable(subject)
    for kind in type(subject).__mro__:
        if kind in _shapes:
            return jsonable(_shapes[kind](subject))
    raise LookupError(f"no event shape registered for {type(subject).__name__}")


def jsonable(value):
    """`value` with datetimes as ISO 8601 strings and decimals as strings, for a JSON column."""
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def as_dict(event: OutboxEvent) -> dict:
    """An event as the API and the webhook body show it: `{id, type, created_at, data}`.

    `event` is an OutboxEvent or a row with its `event_id`, `type`, `created_at` and `data`."""
    return {
        "id": event.event_id,
        "type": event.type,
        "created_at": event.created_at,
        "data": event.data,
    }


def recent(
    type: str | None = None, cursor: str | None = None, limit: int | None = None
) -> tuple[list[OutboxEvent], str | None]:
    """A page of events, newest first, of one `type` or all; raises ValidationFailed for a bad
    cursor. A type holding a control character finds nothing."""
    if not findable(type):
        return [], None
    query = select(OutboxEvent)
    if type:
        query = query.where(OutboxEvent.type == type)
    return pages.page(query, OutboxEvent.id, cursor, limit)


def get(event_id: str) -> OutboxEvent | None:
    """The event with this public id, or None."""
    return db.session.scalar(select(OutboxEvent).where(OutboxEvent.event_id == event_id))

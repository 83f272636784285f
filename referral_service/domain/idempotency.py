"""Idempotency keys, as Stripe's work: the same key and request get the saved answer.

A key is claimed by inserting it (a unique key per API key owner decides the race), in a unit
of work of its own that commits before the request's step runs: while the first request runs,
a retry gets Conflict. The answer is saved by `save`, which joins the step's unit when the
caller runs both in one (api/idempotency.py does), so that the step and its saved answer commit
together. Once answered, a retry with the same request gets the saved answer, and one with a
different request gets ValidationFailed. Keys are kept for 24 hours; a claim left behind by a
crash is given up after `ABANDONED`.

`retried_once` is how a step that lost a race on a unique key runs again as a replay.
"""

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from referral_service.domain.unit import current, unit_of_work
from referral_service.errors import Conflict, ValidationFailed
from referral_service.extensions import db
from referral_service.models import IdempotencyKey

KEEP = timedelta(hours=24)
ABANDONED = timedelta(minutes=5)
MAX_KEY = 255


@dataclass
class Saved:
    """The answer saved for a key."""

    status: int
    body: bytes


def retried_once(step, *args):
    """`step(*args)`, run once more if it lost a race on a unique key (IntegrityError): the
    second run, in a new unit of work, finds what the winner wrote and answers as a replay.

    A step that is part of a unit opened by its caller (a request whose answer is saved in the
    step's transaction) cannot run again in a transaction the error has spent: the error goes to
    the caller, which retries the whole unit.
    """
    try:
        return step(*args)
    except IntegrityError:
        if current() is not None:
            raise
        return step(*args)


def check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY or not key.isascii() or not key.isprintable():
        raise ValidationFailed(
            fields={
                "Idempotency-Key": [
                    "Must be 1 to 255 printable ASCII characters (a UUID is a good key)."
                ]
            }
        )
    return key


def claim(owner: str, key: str, request_hash: str, now=None) -> Saved | None:
    """Claim `key` for a request, or return the answer saved for it.

    The claim is a unit of work of its own (it joins one already open): it must be committed
    before the request's step runs, so that a retry meanwhile sees it in flight. Raises Conflict
    while the first request with the key is still running, and ValidationFailed when the key
    was used for a different request.
    """
    key = check_key(key)
    try:
        with unit_of_work(now) as unit:
            db.session.execute(
                delete(IdempotencyKey).where(IdempotencyKey.created_at < unit.now - KEEP)
            )
            row = db.session.scalar(
                select(IdempotencyKey).where(
                    IdempotencyKey.owner == owner, IdempotencyKey.key == key
                )
            )
            if (
                row is not None
                and row.status_code is None
                and row.created_at < unit.now - ABANDONED
            ):
                db.session.delete(row)
                db.session.flush()
                row = None
            if row is None:
                db.session.add(
                    IdempotencyKey(
                        owner=owner, key=key, request_hash=request_hash, created_at=unit.now
                    )
                )
                return None
            saved = row.request_hash, row.status_code, row.body
    except IntegrityError:  # another request claimed it between our read and insert
        raise Conflict("A request with this Idempotency-Key is in progress; retry later.") from None
    saved_hash, status, body = saved
    if saved_hash != request_hash:
        raise ValidationFailed(
            fields={
                "Idempotency-Key": [
                    "This key was used with a different request; use a new key for a new request."
                ]
            }
        )
    if status is None:
        raise Conflict("A request with this Idempotency-Key is in progress; retry later.")
    return Saved(status, body)


def save(owner: str, key: str, status: int, body: bytes) -> None:
    """Keep the answer of a claimed key (a unit of work, or a part of the one open)."""
    with unit_of_work():
        row = db.session.scalar(
            select(IdempotencyKey).where(IdempotencyKey.owner == owner, IdempotencyKey.key == key)
        )
        if row is not None:
            row.status_code, row.body = status, body


def release(owner: str, key: str) -> None:
    """Give a key back when its request failed before it could answer (its own unit of work:
    the request's step, if any, has already rolled back)."""
    with unit_of_work():
        db.session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.owner == owner,
                IdempotencyKey.key == key,
                IdempotencyKey.status_code.is_(None),
            )
        )

"""One unit of work per business step: one write transaction, its audit records and its events.

Every domain function that changes something runs inside `unit_of_work()`:

    with unit_of_work(now) as unit:
        reward = ...                       # reads and writes through db.session
        unit.audit(actor, "reward.approve", "reward", reward.id, before, after)
        unit.emit("reward.approved", reward)
    # committed here once; an exception anywhere in the block rolls everything back

The block starts as a writer (`begin_write`: SQLite's writer queue and `BEGIN IMMEDIATE`;
on PostgreSQL the step takes its own row locks), and the unit is the only place that commits or
rolls back. The events are written to the outbox table in the same transaction as the change
(a transactional outbox), so a crash can neither lose an event of a committed change nor leave an
event of a change that was rolled back. A unit opened inside another joins it: the step's parts
commit together with the outer step.
"""

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import insert

from referral_service.domain import audit, events
from referral_service.extensions import db
from referral_service.models import OutboxEvent, utcnow
from referral_service.models.base import begin_write

logger = logging.getLogger(__name__)
_UNIT = "unit_of_work"
_committed_listeners: list[Callable[[list[str]], None]] = []


def on_events_committed(listener: Callable[[list[str]], None]) -> None:
    """Call `listener(event_ids)` after each commit that wrote events (the worker's relay is
    woken this way); a listener's failure is logged by the caller's logs, never raised. A
    listener added again is called once all the same."""
    if listener not in _committed_listeners:
        _committed_listeners.append(listener)


@dataclass
class Unit:
    """The open unit of work: the step's time, and the events it will write at commit."""

    session: object
    now: datetime
    _events: list[tuple[str, object]] = field(default_factory=list)
    # what the step read once and may read again in its transaction (the program settings, the
    # enabled webhook endpoints while the relay plans a batch): gone with the unit
    memo: dict = field(default_factory=dict)

    def emit(self, type: str, subject) -> None:
        """Write event `type` (one of events.EVENT_TYPES) about `subject` (a model instance, or a
        dict in the API's shape) at commit; the object is shaped as it stands then."""
        if type not in events.EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        self._events.append((type, subject))

    def audit(
        self, actor: str, action: str, subject_type: str, subject_id, before=None, after=None
    ):
        """Add an audit record to the step (domain/audit.py), dated at the step's time."""
        audit.record(actor, action, subject_type, subject_id, before, after, at=self.now)

    def _write_events(self) -> list[str]:
        if not self._events:
            return []
        self.session.flush()  # ids and defaults of the objects the events show
        rows = [
            {
                "event_id": events.new_event_id(),
                "type": type,
                "created_at": self.now,
                "data": events.shaped(subject),
                "relayed_at": None,
            }
            for type, subject in self._events
        ]
        self.session.execute(insert(OutboxEvent.__table__), rows)  # a plain insert, no ORM work
        return [row["event_id"] for row in rows]


def current() -> Unit | None:
    """The unit of work open in this session, if any (a step inside it joins it)."""
    return db.session().info.get(_UNIT)


@contextlib.contextmanager
def unit_of_work(now: datetime | None = None) -> Iterator[Unit]:
    """Run one business step as one write transaction; see the module's docstring.

    Commits when the block ends, rolls back and re-raises when it raises. Inside an open unit,
    joins it (and its time) instead. Raises what the block raises, and the database's errors
    (IntegrityError for a broken constraint, which a caller may retry in a new unit).
    """
    session = db.session()
    outer = session.info.get(_UNIT)
    if outer is not None:
        yield outer
        return
    begin_write(session)
    unit = Unit(session, now or utcnow())
    session.info[_UNIT] = unit
    try:
        yield unit
        written = unit._write_events()
        session.info.pop(_UNIT, None)
        session.commit()
    except BaseException:
        session.info.pop(_UNIT, None)
        session.rollback()
        raise
    for listener in _committed_listeners if written else ():
        try:
            listener(written)
        except Exception:  # the events are safe in the outbox; the relay's sweep finds them
            logger.exception("a listener of committed events failed")

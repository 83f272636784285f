"""The outbox relay: events written by business steps become planned deliveries and emails.

One relay step takes the unrelayed outbox rows, oldest first, in one unit of work (PostgreSQL
locks them `FOR UPDATE SKIP LOCKED`, so relays running at once take different rows; SQLite's
writer queue runs them one after the other), hands each event to every planner (the webhook
deliveries and the emails it asks for, added in the same transaction, idempotent by their unique
keys), sets `relayed_at` and commits. Only then does the caller queue the planned work: a crash
before the commit leaves the rows unrelayed for the next relay, a crash after it leaves planned
rows that the due sweeps find (the database is the truth, the queue only a hint). Rows are
marked relayed, never deleted.
"""

import logging
from collections.abc import Callable, Mapping
from datetime import datetime

from sqlalchemy import select, update

from referral_service.domain.unit import unit_of_work
from referral_service.extensions import db
from referral_service.models import OutboxEvent
from referral_service.models.base import end_read

logger = logging.getLogger(__name__)

BATCH = 100  # events per transaction (their deliveries are queued when it commits)
# a planner: `plan(event, now) -> ids` of the rows it added for the event
Planner = Callable[[OutboxEvent, datetime], list[int]]


def pending() -> bool:
    """Whether any event waits for the relay (a read of the outbox's partial index, no lock)."""
    found = db.session.scalar(
        select(OutboxEvent.id).where(OutboxEvent.relayed_at.is_(None)).limit(1)
    )
    end_read(db.session)  # a relay or the next step begins its own transaction
    return found is not None


def relay_batch(
    planners: Mapping[str, Planner], now: datetime | None = None, limit: int = BATCH
) -> tuple[int, dict[str, list[int]]]:
    """Relay up to `limit` events, oldest first, in one unit of work.

    Returns the number of events relayed and, per planner name, the ids it planned (to queue
    once this returns, after the commit). Raises what a planner raises (nothing is relayed).
    """
    planned: dict[str, list[int]] = {name: [] for name in planners}
    with unit_of_work(now) as unit:
        events = db.session.scalars(
            select(OutboxEvent)
            .where(OutboxEvent.relayed_at.is_(None))
            .order_by(OutboxEvent.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        for event in events:
            for name, plan in planners.items():
                planned[name].extend(plan(event, unit.now))
        if events:
            db.session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id.in_([event.id for event in events]))
                .values(relayed_at=unit.now)
                .execution_options(synchronize_session=False)
            )
    return len(events), planned


def relay_one(
    planners: Mapping[str, Planner], event_id: int, now: datetime | None = None
) -> dict[str, list[int]]:
    """Relay the event with outbox id `event_id` alone, if it is still unrelayed (one unit);
    returns what was planned. Raises what a planner raises."""
    planned: dict[str, list[int]] = {name: [] for name in planners}
    with unit_of_work(now) as unit:
        event = db.session.scalar(
            select(OutboxEvent)
            .where(OutboxEvent.id == event_id, OutboxEvent.relayed_at.is_(None))
            .with_for_update(skip_locked=True)
        )
        if event is not None:
            for name, plan in planners.items():
                planned[name].extend(plan(event, unit.now))
            event.relayed_at = unit.now
    return planned


def relay(
    planners: Mapping[str, Planner],
    queue: Callable[[dict[str, list[int]]], None],
    now: datetime | None = None,
    limit: int = BATCH,
) -> int:
    """Relay every waiting event, a batch per transaction, calling `queue(planned)` after each
    commit; returns the number of events relayed.

    A batch whose planning fails is relayed again event by event, so that one event a planner
    cannot handle (logged, left unrelayed for the next relay) holds back no other.
    """
    if not pending():
        return 0
    relayed = 0
    while True:
        try:
            count, planned = relay_batch(planners, now, limit)
        except Exception:
            logger.exception("relaying a batch of events failed; relaying them one by one")
            count, planned = _one_by_one(planners, now, limit)
            if count == 0:
                return relayed
        queue(planned)
        relayed += count
        if count < limit:
            return relayed


def _one_by_one(
    planners: Mapping[str, Planner], now: datetime | None, limit: int
) -> tuple[int, dict[str, list[int]]]:
    ids = db.session.scalars(
        select(OutboxEvent.id)
        .where(OutboxEvent.relayed_at.is_(None))
        .order_by(OutboxEvent.id)
        .limit(limit)
    ).all()
    end_read(db.session)
    count, planned = 0, {name: [] for name in planners}
    for event_id in ids:
        try:
            one = relay_one(planners, event_id, now)
        except Exception:
            logger.exception(
                "relaying outbox event %s failed; it stays for the next relay", event_id
            )
            continue
        count += 1
        for name, found in one.items():
            planned[name].extend(found)
    return count, planned

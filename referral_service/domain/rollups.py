"""Click roll-ups and pruning: the funnel stays fast and exact however many clicks there are.

`roll_up` counts the clicks of past hours into `click_days` (per UTC day and channel),
`click_hours` (per hour and channel) and `click_totals` (per referrer and channel, with the first
and last visit), and marks each click it counted (`clicks.rolled_up_at`). The mark and the counts
change in one transaction, and a click is counted only from the rows its own `UPDATE ... WHERE
rolled_up_at IS NULL ... RETURNING` marked (on PostgreSQL in one statement), and the jobs take
turns on a row lock besides, so two roll-ups at once count each click exactly once; a click
written late (a buffer replayed after an outage) is simply not marked yet, and the next roll-up
counts it.

Every reader of clicks adds the roll-ups to the clicks not rolled up yet (one statement, so one
snapshot): `clicks_by_channel` for the funnel, `referrer_clicks` and `referrer_visits` for a
customer's counters and their data export. A period's whole days are read from `click_days`, the
whole hours of its partial days from `click_hours`, and its partial hours from the click rows,
which are kept for the attribution window: a year costs about the same at 10 k clicks as at
10 M.

`prune` deletes rolled-up click rows older than `keep_days` (at least the attribution window;
by default that window plus PRUNE_MARGIN), whole UTC days at a time, and records the midnight it
pruned up to (`click_marks.pruned_until`, set before the rows go). Every figure stays the same,
with one limit: a period that starts or ends inside an hour whose rows are pruned (older than
the kept days) is read at the granularity of an hour there, a pruned hour counting when it
starts in the period. Pruning also ends the attribution of a legacy click id (one not signed)
to that click, which the attribution window has ended already.
"""

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import Integer, case, delete, func, select, text, union_all, update
from sqlalchemy.dialects import postgresql, sqlite

from referral_service.domain.unit import unit_of_work
from referral_service.errors import ValidationFailed
from referral_service.extensions import db
from referral_service.models import Click, ClickDay, ClickHour, ClickMark, ClickTotal, utcnow

PRUNED_UNTIL = "pruned_until"
ROLL_BATCH = 50_000  # clicks marked and counted per transaction (a short write lock each)
PRUNE_BATCH = 20_000  # click rows deleted per transaction
PRUNE_MARGIN = timedelta(days=7)  # kept beyond the attribution window by default
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)

_clicks = Click.__table__


def midnight(moment: datetime) -> datetime:
    """The UTC midnight that starts `moment`'s day (an aware datetime)."""
    moment = moment.astimezone(UTC)
    return datetime.combine(moment.date(), time(), tzinfo=UTC)


def _next_midnight(moment: datetime) -> datetime:
    """The first UTC midnight at or after `moment` (the last moment there is, in year 9999)."""
    start = midnight(moment)
    if start == moment:
        return start
    try:
        return start + DAY
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC)


def _day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def hour_start(moment: datetime) -> datetime:
    """The start of `moment`'s hour, in UTC."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _next_hour(moment: datetime) -> datetime:
    """The first hour's start at or after `moment` (the last moment there is, in year 9999)."""
    start = hour_start(moment)
    if start == moment:
        return start
    try:
        return start + HOUR
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC)


def _insert(model):
    dialect = postgresql if db.session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(model)


def _lock_marks() -> datetime | None:
    """Take the roll-ups' lock for this transaction (the `pruned_until` row, FOR UPDATE on
    PostgreSQL; SQLite's writer already holds the database) and return `pruned_until`."""
    db.session.execute(
        _insert(ClickMark).values(name=PRUNED_UNTIL, at=None).on_conflict_do_nothing()
    )
    return db.session.scalar(
        select(ClickMark.at).where(ClickMark.name == PRUNED_UNTIL).with_for_update()
    )


def pruned_until() -> datetime | None:
    """The UTC midnight before which rolled-up click rows may be gone; None: never pruned."""
    return db.session.scalar(select(ClickMark.at).where(ClickMark.name == PRUNED_UNTIL))


def _roll_batch(before: datetime, now: datetime, limit: int) -> int:
    """Mark and count at most `limit` clicks dated before `before`, in one transaction."""
    with unit_of_work(now):
        _lock_marks()
        if db.session.get_bind().dialect.name == "postgresql":
            return db.session.scalar(_ROLL_IN_ONE, {"before": before, "now": now, "limit": limit})
        chosen = (
            select(_clicks.c.id)
            .where(_clicks.c.rolled_up_at.is_(None), _clicks.c.occurred_at < before)
            .limit(limit)
            .scalar_subquery()
        )
        rows = db.session.execute(
            update(_clicks)
            .where(_clicks.c.id.in_(chosen), _clicks.c.rolled_up_at.is_(None))
            .values(rolled_up_at=now)
            .returning(_clicks.c.referrer_id, _clicks.c.channel, _clicks.c.occurred_at)
        ).all()
        if rows:
            _add(rows)
    return len(rows)


# PostgreSQL marks and counts in one statement (its data-modifying CTEs run once, on one
# snapshot). The second test of rolled_up_at is what PostgreSQL checks again on a row that
# another roll-up has just marked: that row is then skipped, not counted twice.
_ROLL_IN_ONE = text(
    """
    WITH chosen AS (
        SELECT id FROM clicks
        WHERE rolled_up_at IS NULL AND occurred_at < :before
        LIMIT :limit
    ), marked AS (
        UPDATE clicks SET rolled_up_at = :now
        FROM chosen
        WHERE clicks.id = chosen.id AND clicks.rolled_up_at IS NULL
        RETURNING clicks.referrer_id, clicks.channel, clicks.occurred_at
    ), days AS (
        INSERT INTO click_days (day, channel, clicks)
        SELECT CAST(occurred_at AT TIME ZONE 'UTC' AS DATE), channel, count(*)
        FROM marked GROUP BY 1, 2
        ON CONFLICT (day, channel) DO UPDATE SET clicks = click_days.clicks + excluded.clicks
    ), hours AS (
        INSERT INTO click_hours (hour, channel, clicks)
        SELECT date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', channel,
            count(*)
        FROM marked GROUP BY 1, 2
        ON CONFLICT (hour, channel) DO UPDATE SET clicks = click_hours.clicks + excluded.clicks
    ), totals AS (
        INSERT INTO click_totals (referrer_id, channel, clicks, first_at, last_at)
        SELECT referrer_id, channel, count(*), min(occurred_at), max(occurred_at)
        FROM marked GROUP BY 1, 2
        ON CONFLICT (referrer_id, channel) DO UPDATE SET
            clicks = click_totals.clicks + excluded.clicks,
            first_at = LEAST(click_totals.first_at, excluded.first_at),
            last_at = GREATEST(click_totals.last_at, excluded.last_at)
    )
    SELECT count(*) FROM marked
    """
)


def _add(rows: Iterable) -> None:
    """Add counted clicks `(referrer_id, channel, occurred_at)` into the two roll-up tables."""
    days: Counter = Counter()
    hours: Counter = Counter()
    totals: dict[tuple[int, str], list] = {}
    for referrer_id, channel, occurred_at in rows:
        days[(_day(occurred_at), channel)] += 1
        hours[(hour_start(occurred_at), channel)] += 1
        total = totals.get((referrer_id, channel))
        if total is None:
            totals[(referrer_id, channel)] = [1, occurred_at, occurred_at]
        else:
            total[0] += 1
            total[1] = min(total[1], occurred_at)
            total[2] = max(total[2], occurred_at)
    insert_days = _insert(ClickDay)
    db.session.execute(
        insert_days.on_conflict_do_update(
            index_elements=[ClickDay.day, ClickDay.channel],
            set_={"clicks": ClickDay.clicks + insert_days.excluded.clicks},
        ),
        [{"day": d, "channel": c, "clicks": n} for (d, c), n in sorted(days.items())],
    )
    insert_hours = _insert(ClickHour)
    db.session.execute(
        insert_hours.on_conflict_do_update(
            index_elements=[ClickHour.hour, ClickHour.channel],
            set_={"clicks": ClickHour.clicks + insert_hours.excluded.clicks},
        ),
        [{"hour": h, "channel": c, "clicks": n} for (h, c), n in sorted(hours.items())],
    )
    insert_totals = _insert(ClickTotal)
    new = insert_totals.excluded
    db.session.execute(
        insert_totals.on_conflict_do_update(
            index_elements=[ClickTotal.referrer_id, ClickTotal.channel],
            set_={
                "clicks": ClickTotal.clicks + new.clicks,
                "first_at": case(
                    (new.first_at < ClickTotal.first_at, new.first_at), else_=ClickTotal.first_at
                ),
                "last_at": case(
                    (new.last_at > ClickTotal.last_at, new.last_at), else_=ClickTotal.last_at
                ),
            },
        ),
        [
            {"referrer_id": r, "channel": c, "clicks": n, "first_at": first, "last_at": last}
            for (r, c), (n, first, last) in sorted(totals.items())
        ],
    )


def roll_up(now: datetime | None = None, batch: int = ROLL_BATCH) -> int:
    """Count the clicks dated before the current hour that are not counted yet into the
    roll-ups; returns how many clicks it counted. Safe to run from cron, and concurrently with
    itself (each click is counted once: see the module's docstring)."""
    now = now or utcnow()
    before = hour_start(now)
    counted = 0
    while True:
        done = _roll_batch(before, now, batch)
        counted += done
        if done < batch:
            return counted


def prune(
    attribution_window_days: int,
    keep_days: int | None = None,
    now: datetime | None = None,
    batch: int = PRUNE_BATCH,
) -> dict:
    """Roll up, then delete the click rows of the UTC days ended more than `keep_days` ago
    (default: the attribution window and PRUNE_MARGIN) and record that midnight in
    `pruned_until`. Returns `{rolled_up, pruned, pruned_until}`. Raises ValidationFailed when
    `keep_days` is shorter than the attribution window (the clicks a sign-up may still name).
    No figure of the funnel or of a customer changes (see the module's docstring)."""
    now = now or utcnow()
    if keep_days is None:
        keep_days = attribution_window_days + PRUNE_MARGIN.days
    if keep_days < attribution_window_days:
        raise ValidationFailed(
            fields={
                "keep_days": [
                    f"Must be at least the attribution window ({attribution_window_days} days)."
                ]
            }
        )
    rolled = roll_up(now)
    until = midnight(now - timedelta(days=keep_days))
    with unit_of_work(now):
        marked = _lock_marks()
        if marked is None or marked < until:
            db.session.execute(
                update(ClickMark).where(ClickMark.name == PRUNED_UNTIL).values(at=until)
            )
        else:
            until = marked
    pruned = 0
    while True:
        with unit_of_work(now):
            _lock_marks()
            chosen = (
                select(_clicks.c.id)
                .where(_clicks.c.occurred_at < until, _clicks.c.rolled_up_at.is_not(None))
                .limit(batch)
                .scalar_subquery()
            )
            done = db.session.execute(delete(_clicks).where(_clicks.c.id.in_(chosen))).rowcount
        pruned += done
        if done < batch:
            return {"rolled_up": rolled, "pruned": pruned, "pruned_until": until}


def clicks_by_channel(start: datetime, end: datetime) -> dict[str, int]:
    """Clicks dated in `[start, end)` by channel, in one statement: the day roll-ups of the
    period's whole days, the hour roll-ups of the whole hours of its partial days, the
    rolled-up click rows of its partial hours, and the clicks not rolled up yet. A partial hour
    before `pruned_until` counts whole when it starts in the period (see the module's
    docstring)."""
    mark = pruned_until()
    pruned_to = mark if mark is not None else datetime.min.replace(tzinfo=UTC)
    parts = [_count_rows(start, end, rolled=False)]
    first_day, last_day = _next_midnight(start), midnight(end)
    if first_day < last_day:
        parts.append(_sum(ClickDay, ClickDay.day, first_day.date(), last_day.date()))
        pieces = [(start, first_day), (last_day, end)]
    else:
        pieces = [(start, end)]
    for low, high in pieces:
        if low >= high:
            continue
        first_hour, last_hour = _next_hour(low), hour_start(high)
        hours_to = last_hour
        if low <= last_hour < high and last_hour < pruned_to:
            hours_to = last_hour + HOUR  # the pruned hour `high` falls in counts whole
        if first_hour < hours_to:
            parts.append(_sum(ClickHour, ClickHour.hour, first_hour, hours_to))
        rows = [(low, first_hour), (last_hour, high)] if first_hour < last_hour else [(low, high)]
        for row_low, row_high in rows:
            row_low = max(row_low, pruned_to)
            if row_low < row_high:
                parts.append(_count_rows(row_low, row_high, rolled=True))
    counts: Counter = Counter()
    for channel, n in db.session.execute(union_all(*parts)):
        counts[channel] += int(n)
    return {channel: n for channel, n in counts.items() if n}


def _count_rows(start: datetime, end: datetime, rolled: bool):
    """Click rows in `[start, end)` by channel, the rolled-up ones or the others."""
    state = _clicks.c.rolled_up_at.is_not(None) if rolled else _clicks.c.rolled_up_at.is_(None)
    return (
        select(_clicks.c.channel, func.count().label("n"))
        .where(state, _clicks.c.occurred_at >= start, _clicks.c.occurred_at < end)
        .group_by(_clicks.c.channel)
    )


def _sum(model, column, start, end):
    """A roll-up table's clicks by channel over its buckets in `[start, end)`."""
    return (
        select(model.channel, func.sum(model.clicks).label("n"))
        .where(column >= start, column < end)
        .group_by(model.channel)
    )


def referrer_clicks(referrer_id: int) -> int:
    """All the clicks on a referrer's links (rolled up or not), in one statement."""
    rolled = (
        select(func.coalesce(func.sum(ClickTotal.clicks), 0))
        .where(ClickTotal.referrer_id == referrer_id)
        .scalar_subquery()
    )
    fresh = (
        select(func.count())
        .select_from(_clicks)
        .where(_clicks.c.referrer_id == referrer_id, _clicks.c.rolled_up_at.is_(None))
        .scalar_subquery()
    )
    return int(db.session.scalar(select((rolled + fresh).cast(Integer))) or 0)


def referrer_visits(referrer_id: int) -> dict[str, dict]:
    """A referrer's clicks by channel, rolled up or not: `{channel: {count, first_at,
    last_at}}` (aware datetimes), in one statement."""
    parts = union_all(
        select(
            ClickTotal.channel,
            ClickTotal.clicks.label("n"),
            ClickTotal.first_at.label("first_at"),
            ClickTotal.last_at.label("last_at"),
        ).where(ClickTotal.referrer_id == referrer_id),
        select(
            _clicks.c.channel,
            func.count().label("n"),
            func.min(_clicks.c.occurred_at).label("first_at"),
            func.max(_clicks.c.occurred_at).label("last_at"),
        )
        .where(_clicks.c.referrer_id == referrer_id, _clicks.c.rolled_up_at.is_(None))
        .group_by(_clicks.c.channel),
    )
    visits: dict[str, dict] = {}
    for channel, n, first_at, last_at in db.session.execute(parts):
        first_at, last_at = _aware(first_at), _aware(last_at)
        seen = visits.get(channel)
        if seen is None:
            visits[channel] = {"count": int(n), "first_at": first_at, "last_at": last_at}
        else:
            seen["count"] += int(n)
            seen["first_at"] = min(seen["first_at"], first_at)
            seen["last_at"] = max(seen["last_at"], last_at)
    return dict(sorted(visits.items()))


def _aware(moment) -> datetime:
    """A time read through a UNION (without the column's type on SQLite: text) as aware UTC."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

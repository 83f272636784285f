"""Times: checks of those a client sends (timezone-aware, not absurdly far from now), the clock
skew allowed between a shop's clock and ours, and calendar months in UTC.

Business rules count by when a thing happened (an order's or a sign-up's `occurred_at`), not
by when the service heard of it: a shop may report an order late, or replay a day's orders.
"""

from datetime import UTC, datetime, timedelta

from referral_service.errors import ValidationFailed

MAX_FUTURE = timedelta(days=1)
CLOCK_SKEW = timedelta(minutes=5)  # a shop's clock and ours may disagree by this much
OLDEST = datetime(2000, 1, 1, tzinfo=UTC)


def utc(value: datetime, field: str) -> datetime:
    """An aware time in UTC; raises ValidationFailed for a naive one or one with no UTC date.

    (`0001-01-01T00:00:00+01:00` is a valid ISO time whose UTC date falls before year 1.)
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationFailed(fields={field: ["Give a time zone, e.g. 2026-11-22T10:00:00Z."]})
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValidationFailed(fields={field: ["Out of the range of dates."]}) from None


def check_time(value: datetime | None, now: datetime, field: str = "occurred_at") -> datetime:
    """`value` in UTC (or `now` when absent); raises ValidationFailed for naive or odd times."""
    if value is None:
        return now
    value = utc(value, field)
    if value > now + MAX_FUTURE or value < OLDEST:
        raise ValidationFailed(fields={field: ["Must be after 2000 and not in the future."]})
    return value


def utc_month(when: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month holding `when` (an aware time), as `[start, end)`."""
    start = when.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end

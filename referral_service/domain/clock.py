"""Checks of the times a client sends: timezone-aware, and not absurdly far from now."""

from datetime import UTC, datetime, timedelta

from referral_service.errors import ValidationFailed

MAX_FUTURE = timedelta(days=1)
OLDEST = datetime(2000, 1, 1, tzinfo=UTC)


def check_time(value: datetime | None, now: datetime, field: str = "occurred_at") -> datetime:
    """`value` in UTC (or `now` when absent); raises ValidationFailed for naive or odd times."""
    if value is None:
        return now
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationFailed(fields={field: ["Give a time zone, e.g. 2026-11-22T10:00:00Z."]})
    value = value.astimezone(UTC)
    if value > now + MAX_FUTURE or value < OLDEST:
        raise ValidationFailed(fields={field: ["Must be after 2000 and not in the future."]})
    return value

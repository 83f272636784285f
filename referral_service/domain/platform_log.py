"""The integration log: what the shop's platforms (Stripe, Shopify) sent and what became of it.

Reads only, from `platform_events` (written by domain/platforms.py): each platform's status
(its last event, the events mapped and ignored over all time and the last RECENT_DAYS days,
the ignored ones by reason) and the log itself, newest first, a page at a time.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import case, func, select

from referral_service.domain import pages
from referral_service.extensions import db
from referral_service.models import Customer
from referral_service.models.platform import OUTCOMES, PLATFORMS, PlatformEvent

RECENT_DAYS = 7
# The event types (Stripe) and topics (Shopify) the service maps: what to subscribe to.
SUBSCRIBED = {
    "stripe": (
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "charge.refunded",
    ),
    "shopify": ("orders/paid", "refunds/create", "customers/redact"),
}


@dataclass(frozen=True)
class Tally:
    """A number of events: over all time, and received in the last RECENT_DAYS days."""

    all_time: int = 0
    recent: int = 0


@dataclass(frozen=True)
class Status:
    """A platform's events at a glance: the last one received, the counts by outcome, and the
    ignored ones by reason (most frequent first)."""

    platform: str
    last: PlatformEvent | None = None
    mapped: Tally = Tally()
    ignored: Tally = Tally()
    reasons: list[tuple[str, Tally]] = field(default_factory=list)


def statuses(now: datetime) -> dict[str, Status]:
    """Each platform's Status (every platform of PLATFORMS, in that order), its recent counts
    since `now` less RECENT_DAYS days."""
    tallies = _tallies(now - timedelta(days=RECENT_DAYS))
    found = {}
    for platform in PLATFORMS:
        rows = tallies.get(platform, {})
        reasons = sorted(
            ((reason, tally) for (outcome, reason), tally in rows.items() if outcome == "ignored"),
            key=lambda item: (-item[1].all_time, item[0]),
        )
        found[platform] = Status(
            platform,
            last_event(platform),
            _sum(tally for (outcome, _), tally in rows.items() if outcome == "mapped"),
            _sum(tally for _, tally in reasons),
            reasons,
        )
    return found


def _tallies(since: datetime) -> dict[str, dict[tuple[str, str], Tally]]:
    """`{platform: {(outcome, reason): Tally}}` in one grouped query (reason `""` when none)."""
    recent = func.count(case((PlatformEvent.received_at >= since, 1)))
    query = select(
        PlatformEvent.platform,
        PlatformEvent.outcome,
        PlatformEvent.reason,
        func.count(),
        recent,
    ).group_by(PlatformEvent.platform, PlatformEvent.outcome, PlatformEvent.reason)
    found: dict[str, dict[tuple[str, str], Tally]] = {}
    for platform, outcome, reason, all_time, in_recent in db.session.execute(query):
        found.setdefault(platform, {})[(outcome, reason or "")] = Tally(all_time, in_recent)
    return found


def _sum(tallies: Iterable[Tally]) -> Tally:
    total = Tally()
    for tally in tallies:
        total = Tally(total.all_time + tally.all_time, total.recent + tally.recent)
    return total


def last_event(platform: str) -> PlatformEvent | None:
    """The platform's event recorded last, or None."""
    return db.session.scalar(
        select(PlatformEvent)
        .where(PlatformEvent.platform == platform)
        .order_by(PlatformEvent.id.desc())
        .limit(1)
    )


def log_page(
    platform: str | None = None,
    outcome: str | None = None,
    cursor: str | None = None,
    limit: int | None = None,
) -> tuple[list[PlatformEvent], str | None]:
    """`(events, next_cursor)`, newest first, of one platform and one outcome when given.
    Raises ValueError for a platform or outcome that is not one of PLATFORMS / OUTCOMES, and
    ValidationFailed for a bad cursor or limit (see domain/pages.py)."""
    query = select(PlatformEvent)
    if platform is not None:
        if platform not in PLATFORMS:
            raise ValueError(f"unknown platform {platform!r}")
        query = query.where(PlatformEvent.platform == platform)
    if outcome is not None:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        query = query.where(PlatformEvent.outcome == outcome)
    return pages.page(query, PlatformEvent.id, cursor, limit)


def known_customers(external_ids: Iterable[str | None]) -> set[str]:
    """Those of `external_ids` that name a customer of the service."""
    wanted = {external_id for external_id in external_ids if external_id}
    if not wanted:
        return set()
    return set(
        db.session.scalars(select(Customer.external_id).where(Customer.external_id.in_(wanted)))
    )

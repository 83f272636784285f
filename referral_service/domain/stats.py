"""The funnel: clicks, sign-ups, conversions and rewards, by channel, over a time range."""

from collections import defaultdict
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from referral_service.domain import rollups
from referral_service.domain.clicks import flush_pending
from referral_service.domain.clock import utc
from referral_service.domain.money import from_minor
from referral_service.domain.pages import page
from referral_service.domain.text import findable
from referral_service.errors import ValidationFailed
from referral_service.extensions import db
from referral_service.models import Clawback, Customer, Purchase, Referral, Reward, utcnow
from referral_service.models.referral import REWARD_STATUSES

DEFAULT_RANGE = timedelta(days=30)
CLAWED_BACK = "clawed_back"  # beside the reward statuses in the totals: paid, then taken back


def top_referrers(start: datetime, end: datetime, limit: int = 5) -> list[dict]:
    """The referrers with the most conversions in `[start, end)`: `{external_id, name,
    conversions}`, most first (ties by external id)."""
    count = func.count(Referral.id)
    rows = db.session.execute(
        select(Customer.external_id, Customer.name, count)
        .join(Referral, Referral.referrer_id == Customer.id)
        .where(
            Referral.status == "converted",
            Referral.converted_at >= start,
            Referral.converted_at < end,
        )
        .group_by(Customer.id, Customer.external_id, Customer.name)
        .order_by(count.desc(), Customer.external_id)
        .limit(limit)
    )
    return [{"external_id": e, "name": n, "conversions": c} for e, n, c in rows]


def period(start: datetime | None, end: datetime | None, now=None) -> tuple[datetime, datetime]:
    """The range `[start, end)` in UTC: `end` defaults to now, `start` to DEFAULT_RANGE before
    it. Raises ValidationFailed when `start` is not before `end`, or for a time with no date in
    UTC."""
    end = utc(end, "to") if end else now or utcnow()
    if start:
        start = utc(start, "from")
    else:
        try:
            start = end - DEFAULT_RANGE
        except OverflowError:  # `to` in the first days of year 1
            start = datetime.min.replace(tzinfo=UTC)
    if start >= end:
        raise ValidationFailed(fields={"from": ["Must be before `to`."]})
    return start, end


def funnel(start: datetime | None = None, end: datetime | None = None, now=None) -> dict:
    """Counts in `[start, end)` (default: the last 30 days), in total and by channel.

    Clicks count by visit time (read from the roll-ups and the clicks not rolled up yet:
    domain/rollups.py), sign-ups by attribution time, conversions by conversion time,
    rewards by the date of the order that earned them (as conversions do, whenever the shop
    reported it): `rewards` is `{status: {count, amounts: {currency: "12.50"}}}`
    with `paid` net of clawbacks and `clawed_back` (see `reward_totals`). Raises
    ValidationFailed when `start` is not before `end`, or for a time with no date in UTC.
    """
    flush_pending()
    start, end = period(start, end, now)
    channels: dict[str, dict] = defaultdict(lambda: {"clicks": 0, "signups": 0, "conversions": 0})
    for channel, count in rollups.clicks_by_channel(start, end).items():
        channels[channel]["clicks"] = count
    for channel, count in db.session.execute(
        select(Referral.channel, func.count())
        .where(Referral.attributed_at >= start, Referral.attributed_at < end)
        .group_by(Referral.channel)
    ):
        channels[channel]["signups"] = count
    for channel, count in db.session.execute(
        select(Referral.channel, func.count())
        .where(Referral.converted_at >= start, Referral.converted_at < end)
        .group_by(Referral.channel)
    ):
        channels[channel]["conversions"] = count
    ordered = select(Purchase.id).where(Purchase.occurred_at >= start, Purchase.occurred_at < end)
    rewards = reward_totals(Reward.purchase_id.in_(ordered))
    totals = {
        key: sum(c[key] for c in channels.values()) for key in ("clicks", "signups", "conversions")
    }
    return {
        "from": start,
        "to": end,
        **totals,
        "rewards": rewards,
        "by_channel": dict(sorted(channels.items())),
    }


def reward_totals(*where) -> dict:
    """`{status: {count, amounts: {currency: "12.50"}}}` of the rewards matching `where`, with
    `paid` net of clawbacks and `clawed_back`: how many paid rewards had money taken back,
    and how much (whether later payouts have netted it yet or not)."""
    minor: dict[str, dict[str, int]] = {status: {} for status in (*REWARD_STATUSES, CLAWED_BACK)}
    counts = dict.fromkeys(minor, 0)
    for status, currency, count, total in db.session.execute(
        select(Reward.status, Reward.currency, func.count(), func.sum(Reward.amount_minor))
        .where(*where)
        .group_by(Reward.status, Reward.currency)
    ):
        counts[status] += count
        minor[status][currency] = int(total)
    for currency, count, total in db.session.execute(
        select(
            Reward.currency, func.count(func.distinct(Reward.id)), func.sum(Clawback.amount_minor)
        )
        .join(Clawback, Clawback.reward_id == Reward.id)
        .where(*where)
        .group_by(Reward.currency)
    ):
        counts[CLAWED_BACK] += count
        minor[CLAWED_BACK][currency] = int(total)
        paid = minor["paid"]
        paid[currency] = paid.get(currency, 0) - int(total)
    return {
        status: {
            "count": counts[status],
            "amounts": {c: from_minor(a, c) for c, a in sorted(amounts.items())},
        }
        for status, amounts in minor.items()
    }


def customer_stats(customer_id: int) -> dict:
    """A referrer's counters: clicks, sign-ups, conversions; their rewards counted by status
    (`clawed_back`: paid rewards with money taken back by a refund), and `amounts` of each
    status per currency (`{currency: "12.50"}`), `paid` net of clawbacks."""
    flush_pending()
    clicks = rollups.referrer_clicks(customer_id)
    referrals = dict(
        db.session.execute(
            select(Referral.status, func.count())
            .where(Referral.referrer_id == customer_id)
            .group_by(Referral.status)
        ).all()
    )
    rewards = reward_totals(Reward.customer_id == customer_id)
    shown = ("pending", "awaiting_approval", "approved", "paid", CLAWED_BACK)
    return {
        "clicks": clicks or 0,
        "signups": sum(referrals.values()),
        "conversions": referrals.get("converted", 0),
        "rewards": {status: rewards[status]["count"] for status in shown},
        "amounts": {status: rewards[status]["amounts"] for status in shown},
    }


def referral_dict(referral: Referral) -> dict:
    return {
        "id": referral.id,
        "referrer_external_id": referral.referrer.external_id,
        "friend_external_id": referral.friend.external_id,
        "status": referral.status,
        "channel": referral.channel,
        "attributed_at": referral.attributed_at,
        "converted_at": referral.converted_at,
        "order_id": referral.order_id,
        "risk": {"score": referral.risk_score, "reasons": list(referral.risk_reasons or [])},
    }


def list_referrals(referrer=None, status=None, cursor=None, limit=None):
    """A page of referrals, newest first, filtered by referrer external id and status; a filter
    holding a control character finds nothing."""
    if not (findable(referrer) and findable(status)):
        return [], None
    query = select(Referral)
    if referrer:
        query = query.where(
            Referral.referrer_id.in_(select(Customer.id).where(Customer.external_id == referrer))
        )
    if status:
        query = query.where(Referral.status == status)
    items, next_cursor = page(query, Referral.id, cursor, limit)
    return [referral_dict(r) for r in items], next_cursor

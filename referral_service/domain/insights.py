"""Word-of-mouth insight: the K-factor and its two factors, channels, time to convert, and the
value of referred customers against the others.

Definitions (the README's "Insight" section and the OpenAPI descriptions say the same), for a
period `[from, to)`:

- `customers_at_start`: customers known to the service (enrolled or signed up) before `from`.
- `unique_visitors`: visits of share links in the period as the redirect counts them (domain/
  clicks.py): link-preview bots and crawlers are not visits, and the same visitor on the same
  code within an hour is one visit. These are the invites.
- `friends_signed_up`: referrals attributed in the period; `friends_converted`: referrals
  converted (the friend's first qualifying purchase) in the period, as GET /api/v1/stats counts
  them.
- `invites_per_customer = unique_visitors / customers_at_start`,
  `invite_conversion_rate = friends_converted / unique_visitors`, and the K-factor (viral
  coefficient) `k_factor = friends_converted / customers_at_start`, their product whenever both
  are defined. A ratio whose divisor is zero is None (null).
- `time_to_signup_hours` and `time_to_convert_hours`: for the referrals attributed (resp.
  converted) in the period, the hours from the visit of the share link to the sign-up (resp.
  the first qualifying purchase), as nearest-rank percentiles p50 and p90 (each an observed
  value), with `referrals` counted. The clock starts at the sign-up when the code was typed
  without a visit, or when the visit's row is pruned already (`clicks prune`: the attribution
  window and a margin are kept).
- `cohorts`: the customers whose first order (in the program currency, fully refunded orders
  aside) falls in the period, `referred` (the friend of a referral that was not rejected) or
  `not_referred`; over each customer's orders in the 90 days from their first order (net of
  refunds): `repeat_purchase_rate_90d` (the share of customers with a second order),
  `average_order_value` and `revenue_per_customer` (decimal strings in major units of
  `currency`). A figure from fewer than MIN_COHORT customers is None, so that no person can be
  recognised in it; `customers` is always given.
"""

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from math import ceil

from sqlalchemy import Integer, Interval, and_, case, cast, func, literal, select

from referral_service.domain import program, rollups
from referral_service.domain.clicks import flush_pending
from referral_service.domain.money import from_minor
from referral_service.domain.stats import period, top_referrers
from referral_service.domain.text import spreadsheet_safe
from referral_service.extensions import db
from referral_service.models import Click, Customer, Purchase, Referral

MIN_COHORT = 5  # customers behind a cohort's figures, at least
REPEAT_WINDOW_DAYS = 90
TOP_REFERRERS = 10
MAX_MONTHS = 120  # `by_month` covers at most the last ten years of a longer period
PERCENTILES = (50, 90)
SHOP_FIGURES = (
    "k_factor",
    "invites_per_customer",
    "invite_conversion_rate",
    "customers_at_start",
    "unique_visitors",
    "friends_signed_up",
    "friends_converted",
)


@dataclass(frozen=True)
class Ratio:
    """`numerator / denominator` as a float, or None when the denominator is zero."""

    numerator: int
    denominator: int

    @property
    def value(self) -> float | None:
        return self.numerator / self.denominator if self.denominator else None


def insights(start: datetime | None = None, end: datetime | None = None, now=None) -> dict:
    """The insight of `[start, end)` (default: the last 30 days), as the module docstring
    defines it: `{from, to, k_factor, invites_per_customer, invite_conversion_rate,
    customers_at_start, unique_visitors, friends_signed_up, friends_converted,
    time_to_signup_hours: {p50, p90, referrals}, time_to_convert_hours: {...}, by_channel:
    [{channel, unique_visitors, signups, conversions, conversion_rate}], by_month: [{month,
    from, to, customers_at_start, unique_visitors, friends_converted, k_factor}], cohorts:
    {referred: {...}, not_referred: {...}}, top_referrers: [{external_id, name, conversions}]}`.

    Channels are ordered by conversions, then visitors, most first. Raises ValidationFailed
    when `start` is not before `end`, or for a time with no date in UTC.
    """
    flush_pending()
    start, end = period(start, end, now)
    visitors = rollups.clicks_by_channel(start, end)
    signups = _count_by_channel(Referral.attributed_at, start, end)
    conversions = _count_by_channel(Referral.converted_at, start, end)
    customers_at_start = _customers_before([start])[0]
    unique_visitors = sum(visitors.values())
    friends_converted = sum(conversions.values())
    channels = [
        {
            "channel": channel,
            "unique_visitors": visitors.get(channel, 0),
            "signups": signups.get(channel, 0),
            "conversions": conversions.get(channel, 0),
            "conversion_rate": Ratio(conversions.get(channel, 0), visitors.get(channel, 0)).value,
        }
        for channel in set(visitors) | set(signups) | set(conversions)
    ]
    channels.sort(key=lambda c: (-c["conversions"], -c["unique_visitors"], c["channel"]))
    return {
        "from": start,
        "to": end,
        "k_factor": Ratio(friends_converted, customers_at_start).value,
        "invites_per_customer": Ratio(unique_visitors, customers_at_start).value,
        "invite_conversion_rate": Ratio(friends_converted, unique_visitors).value,
        "customers_at_start": customers_at_start,
        "unique_visitors": unique_visitors,
        "friends_signed_up": sum(signups.values()),
        "friends_converted": friends_converted,
        **_times(start, end),
        "by_channel": channels,
        "by_month": by_month(start, end),
        "cohorts": cohorts(start, end),
        "top_referrers": top_referrers(start, end, TOP_REFERRERS),
    }


def _count_by_channel(column, start: datetime, end: datetime) -> dict[str, int]:
    return dict(
        db.session.execute(
            select(Referral.channel, func.count())
            .where(column >= start, column < end)
            .group_by(Referral.channel)
        ).all()
    )


def _customers_before(moments: list[datetime]) -> list[int]:
    """How many customers were known before each moment, in one pass over the customers."""
    row = db.session.execute(
        select(
            *(
                func.coalesce(func.sum(case((Customer.created_at < moment, 1), else_=0)), 0)
                for moment in moments
            )
        ).where(Customer.created_at < max(moments))
    ).one()
    return [int(count) for count in row]


# --- time to sign up and to convert --------------------------------------------------------------


def _hours(later: datetime, earlier: datetime) -> float:
    return max(0.0, (later - earlier).total_seconds() / 3600)


def percentiles(values: list[float]) -> dict:
    """`{p50, p90}` of `values` by the nearest-rank method (the smallest value with at least
    p % of the values at or below it: always an observed value), rounded to 0.01; None for none.
    """
    ordered = sorted(values)
    return {
        f"p{p}": round(ordered[max(ceil(p / 100 * len(ordered)), 1) - 1], 2) if ordered else None
        for p in PERCENTILES
    }


def _times(start: datetime, end: datetime) -> dict:
    """Hours from the visit (or the sign-up, for a typed code) to the sign-up and to the first
    qualifying purchase, for the referrals attributed, resp. converted, in the period."""
    visited = func.coalesce(Click.occurred_at, Referral.attributed_at)
    with_visit = select(visited).outerjoin(Click, Click.id == Referral.click_id)
    signed = db.session.execute(
        with_visit.add_columns(Referral.attributed_at).where(
            Referral.attributed_at >= start, Referral.attributed_at < end
        )
    ).all()
    converted = db.session.execute(
        with_visit.add_columns(Referral.converted_at).where(
            Referral.converted_at >= start, Referral.converted_at < end
        )
    ).all()
    to_signup = [_hours(_aware(b), _aware(a)) for a, b in signed]
    to_convert = [_hours(_aware(b), _aware(a)) for a, b in converted]
    return {
        "time_to_signup_hours": {**percentiles(to_signup), "referrals": len(to_signup)},
        "time_to_convert_hours": {**percentiles(to_convert), "referrals": len(to_convert)},
    }


def _aware(moment) -> datetime:
    """A time read through COALESCE (SQLite gives text there) as an aware UTC datetime."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# --- by month ------------------------------------------------------------------------------------


def _months(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The calendar months (UTC) that meet `[start, end)`, each cut to the period; the last
    MAX_MONTHS of them."""
    bounds = []
    cursor = start
    while cursor < end:
        year, month = (cursor.year, cursor.month + 1) if cursor.month < 12 else (cursor.year + 1, 1)
        try:
            following = datetime(year, month, 1, tzinfo=UTC)
        except ValueError:  # past year 9999
            following = end
        bounds.append((cursor, min(following, end)))
        cursor = following
        if len(bounds) > MAX_MONTHS:
            bounds.pop(0)
    return bounds


def by_month(start: datetime, end: datetime) -> list[dict]:
    """The K-factor of each calendar month of the period (cut to it): `{month: "2026-04", from,
    to, customers_at_start, unique_visitors, friends_converted, k_factor}`."""
    months = _months(start, end)
    if not months:
        return []
    at_start = _customers_before([a for a, _ in months])
    conversions = _converted_by_month(months)
    rows = []
    for (a, b), customers, converted in zip(months, at_start, conversions, strict=True):
        visitors = sum(rollups.clicks_by_channel(a, b).values())
        rows.append(
            {
                "month": f"{a.year:04d}-{a.month:02d}",
                "from": a,
                "to": b,
                "customers_at_start": customers,
                "unique_visitors": visitors,
                "friends_converted": converted,
                "k_factor": Ratio(converted, customers).value,
            }
        )
    return rows


def _converted_by_month(months: list[tuple[datetime, datetime]]) -> list[int]:
    """Referrals converted in each of `months`, in one statement over the period's conversions."""
    row = db.session.execute(
        select(
            *(
                func.coalesce(
                    func.sum(
                        case(
                            (and_(Referral.converted_at >= a, Referral.converted_at < b), 1),
                            else_=0,
                        )
                    ),
                    0,
                )
                for a, b in months
            )
        ).where(Referral.converted_at >= months[0][0], Referral.converted_at < months[-1][1])
    ).one()
    return [int(count) for count in row]


# --- cohorts -------------------------------------------------------------------------------------


def _within_days(later, earlier, days: int, dialect: str):
    """SQL: `later < earlier + days` for two UTC timestamp columns, on SQLite and PostgreSQL."""
    if dialect == "sqlite":
        return func.julianday(later) < func.julianday(earlier) + days
    return later < earlier + literal(timedelta(days=days), Interval())


def cohorts(start: datetime, end: datetime) -> dict:
    """`{referred: {...}, not_referred: {...}}`, each `{customers, orders,
    repeat_purchase_rate_90d, average_order_value, revenue_per_customer, currency}` as the
    module docstring defines them; every figure but `customers` None below MIN_COHORT."""
    currency = program.settings()["currency"]
    counted = and_(Purchase.currency == currency, Purchase.refunded_minor < Purchase.amount_minor)
    first_at = func.min(Purchase.occurred_at)
    firsts = (
        select(Purchase.customer_id.label("customer_id"), first_at.label("first_at"))
        .where(counted)
        .group_by(Purchase.customer_id)
        .having(first_at >= start, first_at < end)
        .subquery("firsts")
    )
    referred = (
        select(literal(1))
        .where(Referral.friend_id == firsts.c.customer_id, Referral.status != "rejected")
        .exists()
    )
    dialect = db.session.get_bind().dialect.name
    per_customer = (
        select(
            firsts.c.customer_id,
            cast(referred, Integer).label("referred"),
            func.count(Purchase.id).label("orders"),
            func.sum(Purchase.amount_minor - Purchase.refunded_minor).label("revenue"),
        )
        .join(Purchase, Purchase.customer_id == firsts.c.customer_id)
        .where(
            counted,
            Purchase.occurred_at >= firsts.c.first_at,
            _within_days(Purchase.occurred_at, firsts.c.first_at, REPEAT_WINDOW_DAYS, dialect),
        )
        .group_by(firsts.c.customer_id)
        .subquery("per_customer")
    )
    rows = db.session.execute(
        select(
            per_customer.c.referred,
            func.count(),
            func.sum(case((per_customer.c.orders >= 2, 1), else_=0)),
            func.sum(per_customer.c.orders),
            func.sum(per_customer.c.revenue),
        ).group_by(per_customer.c.referred)
    ).all()
    found = {bool(r): (int(c), int(rep), int(o), int(rev)) for r, c, rep, o, rev in rows}
    return {
        name: _cohort(*found.get(flag, (0, 0, 0, 0)), currency)
        for name, flag in (("referred", True), ("not_referred", False))
    }


def _per(minor: int, count: int, currency: str) -> str:
    """`minor / count` rounded half up to the currency's minor unit, in major units."""
    share = (Decimal(minor) / count).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return from_minor(int(share), currency)


def _cohort(customers: int, repeaters: int, orders: int, revenue: int, currency: str) -> dict:
    if customers < MIN_COHORT:
        return {
            "customers": customers,
            "orders": None,
            "repeat_purchase_rate_90d": None,
            "average_order_value": None,
            "revenue_per_customer": None,
            "currency": currency,
        }
    return {
        "customers": customers,
        "orders": orders,
        "repeat_purchase_rate_90d": repeaters / customers,
        "average_order_value": _per(revenue, orders, currency),
        "revenue_per_customer": _per(revenue, customers, currency),
        "currency": currency,
    }


# --- CSV -----------------------------------------------------------------------------------------


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return spreadsheet_safe(str(value))


def as_csv(report: dict) -> str:
    """The insight as CSV, one figure a row: `figure,segment,value` (the segment a channel, a
    cohort, a month or a referrer's external id; empty for the whole shop; an empty value for
    None). Text cells are kept from being read as spreadsheet formulas."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["figure", "segment", "value"])
    for key in ("from", "to", *SHOP_FIGURES):
        writer.writerow([key, "", _cell(report[key])])
    for key in ("time_to_signup_hours", "time_to_convert_hours"):
        for part, value in report[key].items():
            writer.writerow([f"{key}.{part}", "", _cell(value)])
    for channel in report["by_channel"]:
        for key, value in channel.items():
            if key != "channel":
                writer.writerow([f"channel.{key}", _cell(channel["channel"]), _cell(value)])
    for name, cohort in report["cohorts"].items():
        for key, value in cohort.items():
            writer.writerow([f"cohort.{key}", name, _cell(value)])
    for month in report["by_month"]:
        for key in ("customers_at_start", "unique_visitors", "friends_converted", "k_factor"):
            writer.writerow([f"month.{key}", month["month"], _cell(month[key])])
    for referrer in report["top_referrers"]:
        writer.writerow(
            ["top_referrer.conversions", _cell(referrer["external_id"]), referrer["conversions"]]
        )
    return out.getvalue()

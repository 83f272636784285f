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
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from math import ceil

from sqlalchemy import (
    Date,
    and_,
    case,
    cast,
    func,
    or_,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.types import NullType

from referral_service.domain import cohorts as cohorts_summary
from referral_service.domain import program, rollups
from referral_service.domain.clicks import flush_pending
from referral_service.domain.money import from_minor
from referral_service.domain.stats import period, top_referrers
from referral_service.domain.text import spreadsheet_safe
from referral_service.extensions import db
from referral_service.models import (
    Click,
    ClickDay,
    Customer,
    CustomerFirstOrder,
    Referral,
)

MIN_COHORT = 5  # customers behind a cohort's figures, at least
REPEAT_WINDOW_DAYS = cohorts_summary.REPEAT_WINDOW_DAYS
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
    months = _months(start, end)
    visits = _visits(start, end, months)
    visitors = visits.by_channel
    referrals = _referrals(start, end, months)
    signups, conversions = referrals.signups, referrals.conversions
    at_start = _customers_before([start, *(a for a, _ in months)])
    customers_at_start = at_start[0]
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
        **_time_figures(referrals.to_signup, referrals.to_convert),
        "by_channel": channels,
        "by_month": _by_month(months, at_start[1:], visits.by_month, referrals.converted_by_month),
        "cohorts": cohorts(start, end),
        "top_referrers": top_referrers(start, end, TOP_REFERRERS),
    }


def _customers_before(moments: list[datetime]) -> list[int]:
    """How many customers were known before each of `moments` (ascending), in one statement:
    those before the first counted through the index on `created_at`, the ones between the
    first and the last read in one range of it, each counted in the span between two moments
    it falls in (the counts before each moment are then running sums)."""
    first, last = moments[0], moments[-1]
    before_first = (
        select(func.count()).select_from(Customer).where(Customer.created_at < first)
    ).scalar_subquery()
    if first == last:
        return [int(db.session.scalar(select(before_first)))] * len(moments)
    span = case(
        *((Customer.created_at < moment, i) for i, moment in enumerate(moments[1:], 1)),
        else_=len(moments),
    )
    rows = db.session.execute(
        select(before_first, span, func.count())
        .where(Customer.created_at >= first, Customer.created_at < last)
        .group_by(span)
    ).all()
    if not rows:
        return [int(db.session.scalar(select(before_first)))] * len(moments)
    spans = Counter({int(index): int(count) for _, index, count in rows})
    counts, running = [], int(rows[0][0])
    for index in range(len(moments)):
        running += spans[index]
        counts.append(running)
    return counts


# --- time to sign up and to convert --------------------------------------------------------------


def percentiles(values: list[float]) -> dict:
    """`{p50, p90}` of `values` by the nearest-rank method (the smallest value with at least
    p % of the values at or below it: always an observed value), rounded to 0.01; None for none.
    """
    ordered = sorted(values)
    return {
        f"p{p}": round(ordered[max(ceil(p / 100 * len(ordered)), 1) - 1], 2) if ordered else None
        for p in PERCENTILES
    }


@dataclass(frozen=True)
class _Referrals:
    """The period's referrals: sign-ups and conversions by channel, conversions by month, and
    the hours to sign up and to convert (one value a referral)."""

    signups: Counter
    conversions: Counter
    converted_by_month: list[int]
    to_signup: list[float]
    to_convert: list[float]


def _referrals(start: datetime, end: datetime, months: list[tuple[datetime, datetime]]):
    """The referrals attributed or converted in the period (a range of each index on those
    times) with the time of their visit (its click row, while kept), in one statement. The
    times are read as naive UTC times, straight from the driver (SQLite's text read by
    `fromisoformat`, not through the column type) and compared as such: a year's referrals
    are most of what insight costs, in Python as much as in the database."""
    dialect = db.session.get_bind().dialect.name

    def naive(moment):
        if dialect == "postgresql":
            return func.timezone("UTC", moment)
        return type_coerce(moment, NullType())

    # the visit's time by its primary key, a probe a referral (a join may read every kept click)
    visited = select(Click.occurred_at).where(Click.id == Referral.click_id).scalar_subquery()
    rows = db.session.execute(
        select(
            Referral.channel,
            naive(Referral.attributed_at),
            naive(Referral.converted_at),
            naive(visited),
        ).where(
            or_(
                and_(Referral.attributed_at >= start, Referral.attributed_at < end),
                and_(Referral.converted_at >= start, Referral.converted_at < end),
            )
        )
    )
    low, high = _naive(start), _naive(end)
    firsts = [_naive(a) for a, _ in months]
    signups: Counter = Counter()
    conversions: Counter = Counter()
    by_month = [0] * len(months)
    to_signup, to_convert = [], []
    for channel, attributed, converted, visited in rows:
        attributed = _read(attributed)
        # the clock starts at the visit, or at the sign-up (a typed code, a pruned click row)
        visited = attributed if visited is None else _read(visited)
        if low <= attributed < high:
            signups[channel] += 1
            to_signup.append(_hours(attributed, visited))
        if converted is None:
            continue
        converted = _read(converted)
        if low <= converted < high:
            conversions[channel] += 1
            to_convert.append(_hours(converted, visited))
            month = bisect_right(firsts, converted) - 1
            if month >= 0:
                by_month[month] += 1
    return _Referrals(signups, conversions, by_month, to_signup, to_convert)


def _naive(moment: datetime) -> datetime:
    """An aware time as a naive UTC one."""
    return moment.astimezone(UTC).replace(tzinfo=None)


def _time_figures(to_signup: list[float], to_convert: list[float]) -> dict:
    return {
        "time_to_signup_hours": {**percentiles(to_signup), "referrals": len(to_signup)},
        "time_to_convert_hours": {**percentiles(to_convert), "referrals": len(to_convert)},
    }


def _read(moment) -> datetime:
    """A naive UTC time as the driver gives it (SQLite: its text) as a naive datetime."""
    return datetime.fromisoformat(moment) if isinstance(moment, str) else moment


def _hours(later: datetime, earlier: datetime) -> float:
    return max(0.0, (later - earlier).total_seconds() / 3600)


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
    visitors = _visits(months[0][0], end, months).by_month
    return _by_month(months, at_start, visitors, _converted_by_month(months))


def _by_month(
    months: list[tuple[datetime, datetime]],
    at_start: list[int],
    visitors: list[int],
    conversions: list[int],
) -> list[dict]:
    """`by_month`'s rows from each month's customers at its start, visitors and conversions."""
    rows = []
    for (a, b), customers, visits, converted in zip(
        months, at_start, visitors, conversions, strict=True
    ):
        rows.append(
            {
                "month": f"{a.year:04d}-{a.month:02d}",
                "from": a,
                "to": b,
                "customers_at_start": customers,
                "unique_visitors": visits,
                "friends_converted": converted,
                "k_factor": Ratio(converted, customers).value,
            }
        )
    return rows


@dataclass(frozen=True)
class _Visits:
    """The period's visits by channel, and the visitors of each of its `months`."""

    by_channel: dict[str, int]
    by_month: list[int]


def _next_midnight(moment: datetime) -> datetime:
    start = rollups.midnight(moment)
    if start == moment:
        return start
    try:
        return start + timedelta(days=1)
    except OverflowError:  # in the last day of year 9999
        return datetime.max.replace(tzinfo=UTC)


def _visits(start: datetime, end: datetime, months: list[tuple[datetime, datetime]]) -> _Visits:
    """Visits in `[start, end)` as `rollups.clicks_by_channel` counts them, the same figures in
    fewer statements: its whole days by day from the day roll-ups and the clicks not rolled up
    yet (one statement), and its partial first and last days through `clicks_by_channel`
    (month boundaries are midnights, so each of those falls in one month)."""
    index = {(a.year, a.month): i for i, (a, _) in enumerate(months)}
    channels: Counter = Counter()
    monthly = [0] * len(months)

    def add(channel: str, count: int, moment) -> None:
        channels[channel] += count
        found = index.get((moment.year, moment.month))
        if found is not None:
            monthly[found] += count

    first_day, last_day = _next_midnight(start), rollups.midnight(end)
    if first_day >= last_day:  # no whole day: a day or two at most
        for a, b in months:
            for channel, count in rollups.clicks_by_channel(a, b).items():
                add(channel, count, a)
        return _Visits({c: n for c, n in channels.items() if n}, monthly)
    for low, high in ((start, first_day), (last_day, end)):
        if low < high:
            for channel, count in rollups.clicks_by_channel(low, high).items():
                add(channel, count, low)
    dialect = db.session.get_bind().dialect.name
    if dialect == "sqlite":
        day = func.date(Click.occurred_at)
    else:
        day = cast(func.timezone("UTC", Click.occurred_at), Date)
    whole_days = union_all(
        select(ClickDay.day, ClickDay.channel, func.sum(ClickDay.clicks))
        .where(ClickDay.day >= first_day.date(), ClickDay.day < last_day.date())
        .group_by(ClickDay.day, ClickDay.channel),
        select(day, Click.channel, func.count())
        .where(
            Click.rolled_up_at.is_(None),
            Click.occurred_at >= first_day,
            Click.occurred_at < last_day,
        )
        .group_by(day, Click.channel),
    )
    for when, channel, count in db.session.execute(whole_days):
        if isinstance(when, str):  # SQLite's text, through a UNION
            when = date.fromisoformat(when[:10])
        add(channel, int(count), when)
    return _Visits({c: n for c, n in channels.items() if n}, monthly)


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


def cohorts(start: datetime, end: datetime) -> dict:
    """`{referred: {...}, not_referred: {...}}`, each `{customers, orders,
    repeat_purchase_rate_90d, average_order_value, revenue_per_customer, currency}` as the
    module docstring defines them; every figure but `customers` None below MIN_COHORT.

    One statement over one range of the index on (currency, first order) of the customers'
    first-order summaries (`customer_first_orders`, kept up to date by domain/cohorts.py with
    each customer's orders of the 90 days from their first), counted by whether they were
    referred."""
    currency = program.settings()["currency"]
    summary = CustomerFirstOrder
    # the customer's referral not rejected, if any (a customer is the friend of one at most): a
    # probe of the unique index on the friend a customer, never a read of every referral
    referral = (
        select(Referral.id)
        .where(Referral.friend_id == summary.customer_id, Referral.status != "rejected")
        .scalar_subquery()
    )
    customers = (
        select(
            referral.label("referral_id"),
            summary.orders_90d.label("orders"),
            summary.revenue_90d_minor.label("revenue"),
        )
        .where(
            summary.currency == currency,
            summary.first_order_at >= start,
            summary.first_order_at < end,
        )
        .subquery("customers")
    )
    referred = case((customers.c.referral_id.is_(None), 0), else_=1)
    rows = db.session.execute(
        select(
            referred,
            func.count(),
            func.sum(case((customers.c.orders >= 2, 1), else_=0)),
            func.sum(customers.c.orders),
            func.sum(customers.c.revenue),
        ).group_by(referred)
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

"""The console's charts: the geometry of server-rendered SVG, and numbers written for people.

Pure functions, no Flask: each takes plain numbers and gives the coordinates a template draws
(in the SVG's own units; the template sets `viewBox="0 0 width height"` and the stylesheet
scales it to the page, so a phone shows the same chart smaller). A value that is negative,
not finite or None draws a bar of width 0, never a negative one; with no data at all every
bar is 0 wide and the chart is still well formed (no division by zero).

The formatters give the text beside a bar and in the headline figures: `percent(0.1234)` is
"12.3 %", `money("52.86", "EUR")` "€52.86", `hours(50)` "2.1 days"; None is a dash.
"""

import math
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

from referral_service.domain.money import format_money

# an en dash: a figure that cannot be computed (a divisor of zero, a cohort under 5 customers)
NONE = "\u2013"
MINUS = "\u2212"  # the minus sign of a change
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Horizontal bars: sized so that a phone (about 340 px for the chart) shows labels near 14 px.
LABEL_WIDTH, BAR_SPACE, TEXT_SPACE = 110, 150, 100
BAR_HEIGHT, GAP, GROUP_GAP = 24, 8, 18
# Columns (K-factor by month)
COLUMNS_WIDTH, COLUMNS_PLOT, COLUMNS_TOP, COLUMNS_BOTTOM = 360, 120, 18, 36


class Bar(NamedTuple):
    """One bar: its label (may be empty), value (drawn), text (shown beside it) and kind (a CSS
    class naming its series, e.g. `visitors`)."""

    label: str
    value: float | int | Decimal | None
    text: str = ""
    kind: str = ""


def magnitude(value) -> float:
    """A value as a bar's length: a finite number at least 0; 0 for None, NaN, ±∞ and below 0."""
    try:
        number = float(value)
    except (TypeError, ValueError, InvalidOperation):
        return 0.0
    return number if math.isfinite(number) and number > 0 else 0.0


def bar_groups(groups: list[tuple[str, list[Bar]]], label_width: int = LABEL_WIDTH) -> dict:
    """Geometry of horizontal bars in groups (a channel's visitors and conversions, say), every
    bar on one scale, the largest filling the bar space; a group's label beside its first bar.

    Returns `{bars: [{label, value, text, kind, x, y, width, text_x, text_y}], width, height,
    bar_height, label_width, empty}`; `empty` when no bar is longer than 0.
    """
    largest = max((magnitude(b.value) for _, bars in groups for b in bars), default=0.0)
    rows, y = [], 0
    for index, (label, bars) in enumerate(groups):
        if index and len(bars) > 1:
            y += GROUP_GAP - GAP
        for position, bar in enumerate(bars):
            width = round(BAR_SPACE * magnitude(bar.value) / largest, 1) if largest else 0.0
            rows.append(
                {
                    "label": label if position == 0 else "",
                    "value": bar.value,
                    "text": bar.text,
                    "kind": bar.kind,
                    "x": label_width,
                    "y": y,
                    "width": width,
                    "text_x": round(label_width + width + 6, 1),
                    "text_y": round(y + BAR_HEIGHT * 0.7, 1),
                }
            )
            y += BAR_HEIGHT + GAP
    return {
        "bars": rows,
        "width": label_width + BAR_SPACE + TEXT_SPACE,
        "height": max(y - GAP, 0) or BAR_HEIGHT,
        "bar_height": BAR_HEIGHT,
        "label_width": label_width,
        "empty": largest == 0,
    }


def bars(rows: list[Bar], label_width: int = LABEL_WIDTH) -> dict:
    """Geometry of one bar per row (the funnel, say), as `bar_groups` gives it."""
    return bar_groups([(bar.label, [bar]) for bar in rows], label_width)


def columns(points: list[Bar]) -> dict:
    """Geometry of vertical columns (one per month, label `Apr` and a year under January and
    the first), heights relative to the largest value; a None value is a missing column
    (`missing`: nothing to divide by), drawn as a baseline mark.

    Returns `{columns: [{label, year, value, text, missing, x, width, y, height, center,
    text_y}], width, height, baseline, empty}`.
    """
    count = len(points)
    largest = max((magnitude(p.value) for p in points), default=0.0)
    step = COLUMNS_WIDTH / count if count else COLUMNS_WIDTH
    width = round(step * 0.7, 1)
    baseline = COLUMNS_TOP + COLUMNS_PLOT
    out = []
    for index, point in enumerate(points):
        height = round(COLUMNS_PLOT * magnitude(point.value) / largest, 1) if largest else 0.0
        x = round(index * step + (step - width) / 2, 1)
        month, _, year = point.label.partition(" ")
        out.append(
            {
                "label": month,
                "year": year if index == 0 or month == MONTHS[0] else "",
                "value": point.value,
                "text": point.text,
                "kind": point.kind,
                "missing": point.value is None,
                "x": x,
                "width": width,
                "y": round(baseline - height, 1),
                "height": height,
                "center": round(x + width / 2, 1),
                "text_y": round(baseline - height - 4, 1),
            }
        )
    return {
        "columns": out,
        "width": COLUMNS_WIDTH,
        "height": baseline + COLUMNS_BOTTOM,
        "baseline": baseline,
        "empty": largest == 0,
    }


def month_label(month: str) -> str:
    """`2026-04` as `Apr 2026`; anything else as it is."""
    year, _, number = month.partition("-")
    if number.isdecimal() and 1 <= int(number) <= 12:
        return f"{MONTHS[int(number) - 1]} {year}"
    return month


# --- numbers for people --------------------------------------------------------------------------


def number(value) -> str:
    """A count with thousands separators: `1,234`; None is a dash."""
    return NONE if value is None else f"{value:,}"


def ratio(value, digits: int = 2) -> str:
    """A ratio such as the K-factor: `0.42`; None is a dash."""
    return NONE if value is None else f"{value:,.{digits}f}"


def percent(rate) -> str:
    """A rate (0.1234) as `12.3 %` (a whole number from 10 % up); None is a dash."""
    if rate is None:
        return NONE
    share = float(rate) * 100
    return f"{share:,.0f} %" if abs(share) >= 10 or share == 0 else f"{share:,.1f} %"


def change(new, old) -> str | None:
    """How much more `new` is than `old`, relative: `+23 %`, `-5 %` (with a minus sign); None
    when either is None or `old` is zero (no comparison)."""
    if new is None or old is None:
        return None
    new, old = Decimal(str(new)), Decimal(str(old))
    if old == 0:
        return None
    share = (new - old) / old * 100
    rounded = int(share.to_integral_value())
    if rounded == 0:
        return "±0 %"
    return f"+{rounded:,} %" if rounded > 0 else f"{MINUS}{-rounded:,} %"


def money(amount, currency: str) -> str:
    """A decimal string in major units with its currency for an English reader: `€52.86`;
    None is a dash."""
    return NONE if amount is None else format_money(amount, currency, "en")


def hours(value) -> str:
    """Hours in the unit a person reads: `35 min`, `5 h`, `2.1 days`; None is a dash."""
    if value is None:
        return NONE
    if value < 1:
        return f"{round(value * 60)} min"
    if value < 48:
        return f"{value:.0f} h" if value >= 10 else f"{value:.1f} h".replace(".0 h", " h")
    return f"{value / 24:,.1f} days"

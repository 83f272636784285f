"""The console's dashboard shows the insight (domain/insights.py) with server-drawn charts: the
figures of a small shop built with known times, an empty database, hostile names escaped, the
CSV of the same period; and the charts' geometry and number formats (admin/charts.py)."""

import csv
import io
import math
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import update

from referral_service.admin import charts
from referral_service.domain import insights
from referral_service.extensions import db
from referral_service.models import Customer, utcnow
from tests.test_admin_console import signed_in_as
from tests.test_insights import at, buy, enrolled, signup, visit

HOSTILE_CHANNEL = "<script>alert(1)</script>"
QUOTED_NAME = 'O\'Brien "Bob" <b>'


@pytest.fixture
def shop_with_worth(app):
    """Within the last 90 days (T0 is 60 days ago; times in days from T0):

    customers before the period: referrers A and B, and N1..N5 (enrolled at -40, 100 days ago).
    visits: A whatsapp at 1, 1.1, 1.2, 1.3 (4); B email at 2, 2.1, 2.2 (3): 7 unique visitors.
    friends: F1..F3 via A's first three visits, F4, F5 via B's first two, each signs up an hour
    after the visit and buys 60.00 a day later (5 conversions); F1 and F2 buy 30.00 again at 20.
    the others: N1..N5 buy 50.00 at 3; N1 again 50.00 at 10.

    K-factor 5 / 7; invites per customer 7 / 7; invite conversion rate 5 / 7; best channel
    whatsapp (3 conversions, 75 % of 4 visitors); referred: 5 customers, 7 orders, 360.00
    (72.00 each, 40 % bought again); others: 5 customers, 6 orders, 300.00 (60.00 each, 20 %).
    """
    with app.app_context():
        fill_shop()


def fill_shop() -> None:
    """The scenario of `shop_with_worth` (in an app context)."""
    for name in ("A", "B", "N1", "N2", "N3", "N4", "N5"):
        enrolled(name, at(days=-40))
    friends = []
    for referrer, channel, count, day in (("A", "whatsapp", 4, 1), ("B", "email", 3, 2)):
        for n in range(count):
            when = at(days=day, hours=n * 2.4)
            friends.append((visit(referrer, channel, when), when))
        friends.pop()  # the last visitor of each did not sign up
    for number, (click_id, when) in enumerate(friends, start=1):
        signup(f"F{number}", when + timedelta(hours=1), click_id=click_id)
        buy(f"f{number}-1", f"F{number}", "60.00", when + timedelta(days=1))
    buy("f1-2", "F1", "30.00", at(days=20))
    buy("f2-2", "F2", "30.00", at(days=20))
    for n in range(1, 6):
        buy(f"n{n}-1", f"N{n}", "50.00", at(days=3))
    buy("n1-2", "N1", "50.00", at(days=10))


def figure(html: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}">\s*(.*?)\s*<', html)
    assert found, element_id
    return found.group(1)


def test_the_dashboard_shows_the_insight_of_the_period(app, client, shop_with_worth):
    signed_in_as(app, client, "viewer")
    page = client.get("/admin?days=90")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    with app.app_context():
        now = utcnow()
        report = insights.insights(now - timedelta(days=90), now)
    # the figures insights computes, and the scenario's by hand
    assert report["k_factor"] == 5 / 7 and report["unique_visitors"] == 7
    assert report["cohorts"]["referred"]["revenue_per_customer"] == "72.00"
    assert report["cohorts"]["not_referred"]["revenue_per_customer"] == "60.00"
    assert figure(html, "k-factor") == "0.71"
    assert "Each 100 customers brought 71 new customers in this period." in html
    assert figure(html, "invites") == "1.0"
    assert figure(html, "conversion-rate") == "71 %"
    assert figure(html, "visitors") == "7"
    assert figure(html, "best-channel") == "whatsapp"
    assert "3 conversions, 75 % of its 4 visitors" in html
    assert figure(html, "worth") == "+20 %"
    assert "Yes: referred customers spent €72.00 each in their first 90 days, the others " in html
    assert "€60.00. 40 % of them bought again within 90 days, against 20 %." in html
    # the charts, each with its text alternative
    assert html.count("<svg") == 7  # funnel, months, channels, three cohorts, times
    assert html.count('role="img"') == 7
    assert "Unique visitors: 7. Sign-ups: 5. Conversions: 5." in html
    assert "whatsapp: 4 unique visitors, 3 conversions." in html
    assert "Bought again within 90 days" in html and "Referred: 40 %." in html
    assert "Not referred: €60.00." in html
    assert "Sign-up: half: 1 h." in html and "Purchase: 90 %: 24 h." in html
    # no negative or missing size in any drawn rectangle
    widths = re.findall(r'<rect [^>]*width="([^"]+)"', html)
    assert widths and all(float(w) >= 0 and math.isfinite(float(w)) for w in widths)
    assert "No data yet" not in html
    # the period links, 365 days among them, and the CSV of the same period
    assert 'href="/admin?days=365"' in html
    assert 'href="/admin?days=90" aria-current="page"' in html
    assert 'href="/admin/insights.csv?days=90"' in html


def test_an_empty_database_renders_with_no_data_yet(app, client):
    signed_in_as(app, client, "viewer")
    for days in (7, 30, 90, 365):
        page = client.get(f"/admin?days={days}")
        assert page.status_code == 200
        html = page.get_data(as_text=True)
        assert figure(html, "k-factor") == charts.NONE
        assert figure(html, "visitors") == "0"
        assert figure(html, "best-channel") == charts.NONE
        assert "No conversions in this period yet." in html
        assert "Not enough customers yet (at least 5 per group" in html
        assert "No data yet: no visit of a share link" in html
        assert "Unique visitors: 0. Sign-ups: 0. Conversions: 0." in html
        assert "nan" not in html.lower().replace("nanoid", "")
        assert re.search(r'viewBox="0 0 \d+ \d+"', html)
        assert not re.search(r'width="-', html)


def test_hostile_channel_and_referrer_names_are_escaped(app, client, shop_with_worth):
    with app.app_context():
        click_id = visit("A", HOSTILE_CHANNEL, at(days=5))
        signup("F-hostile", at(days=5, hours=1), click_id=click_id)
        buy("fh-1", "F-hostile", "60.00", at(days=6))
        db.session.execute(
            update(Customer).where(Customer.external_id == "A").values(name=QUOTED_NAME)
        )
        db.session.commit()
    signed_in_as(app, client, "viewer")
    html = client.get("/admin?days=90").get_data(as_text=True)
    assert "<script>alert" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the table and the chart's desc
    assert "O&#39;Brien &#34;Bob&#34; &lt;b&gt;" in html
    assert 'Brien "Bob"' not in html


def test_the_csv_of_the_period(app, client, shop_with_worth):
    signed_in_as(app, client, "viewer")
    response = client.get("/admin/insights.csv?days=90")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    disposition = response.headers["Content-Disposition"]
    assert re.fullmatch(
        r'attachment; filename="insights-\d{4}-\d\d-\d\d-to-\d{4}-\d\d-\d\d\.csv"', disposition
    )
    assert response.headers["Cache-Control"] == "no-store"
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    with app.app_context():
        now = utcnow()
        expected = insights.as_csv(insights.insights(now - timedelta(days=90), now))
    expected_rows = list(csv.reader(io.StringIO(expected)))
    assert rows[0] == ["figure", "segment", "value"]
    # the same figures (the period's ends are the moment each was asked)
    assert rows[3:] == expected_rows[3:]
    cells = {(figure, segment): value for figure, segment, value in rows[1:]}
    assert cells[("unique_visitors", "")] == "7"
    assert cells[("cohort.revenue_per_customer", "referred")] == "72.00"
    assert client.get("/admin/insights.csv?days=abc").status_code == 200  # the default period


def test_the_csv_needs_a_signed_in_admin(app, client):
    response = client.get("/admin/insights.csv?days=30")
    assert response.status_code == 302
    assert "/admin/login" in response.headers["Location"]
    assert "insights.csv" in response.headers["Location"]  # back there after signing in


# --- the charts' geometry and numbers (no database) ----------------------------------------------


def test_bars_scale_to_the_largest():
    chart = charts.bars([charts.Bar("a", 100), charts.Bar("b", 50), charts.Bar("c", 0)])
    widths = [bar["width"] for bar in chart["bars"]]
    assert widths == [charts.BAR_SPACE, charts.BAR_SPACE / 2, 0]
    assert [bar["y"] for bar in chart["bars"]] == [0, 32, 64]
    assert chart["height"] == 3 * charts.BAR_HEIGHT + 2 * charts.GAP
    assert chart["width"] == charts.LABEL_WIDTH + charts.BAR_SPACE + charts.TEXT_SPACE
    assert not chart["empty"]


@pytest.mark.parametrize(
    "values",
    [[], [0, 0, 0], [None, None], [-5, 0], [float("nan"), float("inf"), float("-inf")]],
)
def test_bars_with_no_data_are_zero_wide_and_well_formed(values):
    chart = charts.bars([charts.Bar(str(i), v) for i, v in enumerate(values)])
    assert chart["empty"]
    assert all(bar["width"] == 0 for bar in chart["bars"])
    assert chart["height"] > 0 and chart["width"] > 0


def test_bars_are_never_negative():
    chart = charts.bars([charts.Bar("up", 10), charts.Bar("down", -10), charts.Bar("d", "7.5")])
    assert [bar["width"] for bar in chart["bars"]] == [charts.BAR_SPACE, 0, 112.5]
    assert all(bar["text_x"] >= bar["x"] for bar in chart["bars"])


def test_groups_share_one_scale_and_label_their_first_bar():
    chart = charts.bar_groups(
        [
            ("whatsapp", [charts.Bar("", 40, kind="visitors"), charts.Bar("", 10, kind="conv")]),
            ("email", [charts.Bar("", 20, kind="visitors"), charts.Bar("", 0, kind="conv")]),
        ]
    )
    bars = chart["bars"]
    assert [b["label"] for b in bars] == ["whatsapp", "", "email", ""]
    assert [b["width"] for b in bars] == [150, 37.5, 75, 0]
    assert bars[2]["y"] - bars[1]["y"] == charts.BAR_HEIGHT + charts.GROUP_GAP  # groups apart


def test_columns_of_months():
    points = [
        charts.Bar("Nov 2025", 0.5, "0.50"),
        charts.Bar("Dec 2025", None, charts.NONE),
        charts.Bar("Jan 2026", 0.25, "0.25"),
    ]
    chart = charts.columns(points)
    columns = chart["columns"]
    assert [c["height"] for c in columns] == [charts.COLUMNS_PLOT, 0, charts.COLUMNS_PLOT / 2]
    assert [c["missing"] for c in columns] == [False, True, False]
    assert [c["year"] for c in columns] == ["2025", "", "2026"]  # the first, and January
    assert all(c["y"] + c["height"] == chart["baseline"] for c in columns)
    assert columns[-1]["x"] + columns[-1]["width"] <= chart["width"]
    empty = charts.columns([])
    assert empty["columns"] == [] and empty["empty"] and empty["height"] > 0
    assert charts.columns([charts.Bar("May 2026", 0)])["empty"]


def test_numbers_for_people():
    assert charts.number(1234567) == "1,234,567" and charts.number(None) == charts.NONE
    assert charts.ratio(5 / 7) == "0.71" and charts.ratio(None) == charts.NONE
    assert charts.percent(0.75) == "75 %" and charts.percent(0.0412) == "4.1 %"
    assert charts.percent(0) == "0 %" and charts.percent(None) == charts.NONE
    assert charts.change("72.00", "60.00") == "+20 %"
    assert charts.change(Decimal("45"), Decimal("60")) == "\u221225 %"
    assert charts.change(0.3, 0.3) == "±0 %"
    assert charts.change("1.00", "0.00") is None and charts.change(None, "1") is None
    assert charts.money("52.86", "EUR") == "€52.86"
    assert charts.money("1234", "JPY") == "¥1,234"
    assert charts.money(None, "EUR") == charts.NONE
    assert charts.hours(0.5) == "30 min" and charts.hours(4.0) == "4 h"
    assert charts.hours(2.5) == "2.5 h" and charts.hours(25) == "25 h"
    assert charts.hours(60) == "2.5 days" and charts.hours(None) == charts.NONE
    assert charts.month_label("2026-04") == "Apr 2026" and charts.month_label("x") == "x"

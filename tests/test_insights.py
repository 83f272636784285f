"""GET /api/v1/insights against a shop's month computed by hand, and its edge cases: an empty
period, a period with no customers at its start, a cohort under 5 customers, bots only; CSV."""

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from referral_service.domain import attribution, clicks, insights, refunds, rewards
from referral_service.extensions import db
from referral_service.models import Click, Customer, ReferralCode, utcnow
from tests import factories

# The scenario's clock: T0 is a UTC midnight 60 days ago; the period is [T0, T0 + 30 days).
T0 = (utcnow() - timedelta(days=60)).replace(hour=0, minute=0, second=0, microsecond=0)
END = T0 + timedelta(days=30)


def at(days: float = 0, hours: float = 0) -> datetime:
    return T0 + timedelta(days=days, hours=hours)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def enrolled(external_id: str, created_at: datetime) -> int:
    """A customer enrolled at `created_at` (the clock of an import long ago)."""
    factories.customer(external_id)
    db.session.execute(
        update(Customer).where(Customer.external_id == external_id).values(created_at=created_at)
    )
    db.session.commit()
    return db.session.execute(
        select(Customer.id).where(Customer.external_id == external_id)
    ).scalar()


def visit(referrer: str, channel: str, when: datetime) -> str:
    """A human visit of `referrer`'s share link as the redirect stores it; its signed click id."""
    code_id, referrer_id = db.session.execute(
        select(ReferralCode.id, ReferralCode.customer_id)
        .join(Customer, Customer.id == ReferralCode.customer_id)
        .where(Customer.external_id == referrer, ReferralCode.revoked_at.is_(None))
    ).one()
    row = clicks.new_click_id()
    db.session.add(
        Click(id=row, code_id=code_id, referrer_id=referrer_id, channel=channel, occurred_at=when)
    )
    db.session.commit()
    return clicks.sign_click(row, code_id, channel, when)


def signup(external_id: str, when: datetime, click_id=None, code=None):
    answer = attribution.signup(
        external_id,
        f"{external_id}@example.org",
        referral_code=code,
        click_id=click_id,
        occurred_at=when,
        now=when,
    )
    assert answer.attributed, answer.reason
    return answer


def buy(order_id: str, external_id: str, amount: str, when: datetime, currency: str = "EUR"):
    return rewards.record_purchase(order_id, external_id, amount, currency, when, now=when)


def code_of(external_id: str) -> str:
    return db.session.execute(
        select(ReferralCode.code)
        .join(Customer, Customer.id == ReferralCode.customer_id)
        .where(Customer.external_id == external_id, ReferralCode.revoked_at.is_(None))
    ).scalar()


@pytest.fixture
def month(app):
    """The scenario (times in hours from T0 unless said):

    customers before T0: A, B, C, D (referrers) and X, enrolled at T0 - 10 d; E enrolled at
    T0 + 1 d; Y buys in USD only.
    visits: v0 A whatsapp T0 - 1 d (before the period); v1, v2, v3 A whatsapp at 1, 2, 3;
    v4, v5 B email at 10, 11; v6 C link at 20; v7 A whatsapp at T0 + 31 d (after it).
    sign-ups: F1 via v1 at 5 (4 h), F2 via v2 at 4 (2 h), F3 via v4 at 20 (10 h), F4 typed
    C's code at 30 (0 h), F5 via v0 at 2 (26 h).
    first orders: F1 10.00 at 2 d (47 h from v1), F2 40.00 at 24 (22 h from v2), F4 30.00 at
    3 d (42 h from the sign-up), F3 at 40 d (after the period).
    """
    with app.app_context():
        _fill()


def _fill():
    for name in "ABCDX":
        enrolled(name, at(days=-10))
    enrolled("E", at(days=1))
    enrolled("Y", at(days=-10))
    v0 = visit("A", "whatsapp", at(days=-1))
    v1, v2, _ = (visit("A", "whatsapp", at(hours=h)) for h in (1, 2, 3))
    v4, _ = (visit("B", "email", at(hours=h)) for h in (10, 11))
    visit("C", "link", at(hours=20))
    visit("A", "whatsapp", at(days=31))
    signup("F5", at(hours=2), click_id=v0)
    signup("F2", at(hours=4), click_id=v2)
    signup("F1", at(hours=5), click_id=v1)
    signup("F3", at(hours=20), click_id=v4)
    signup("F4", at(hours=30), code=code_of("C"))
    # referred customers: F1 buys again within 90 days, F4 only after them
    buy("f2-1", "F2", "40.00", at(hours=24))
    buy("f1-1", "F1", "10.00", at(days=2))
    buy("f4-1", "F4", "30.00", at(days=3))
    buy("f1-2", "F1", "20.00", at(days=50))
    buy("f3-1", "F3", "25.00", at(days=40))
    # the others: A and X buy again within 90 days; C's second order is refunded in full and
    # its first in part; D bought before the period; Y in another currency
    buy("a-1", "A", "100.00", at(days=1))
    buy("a-2", "A", "50.00", at(days=10))
    buy("b-1", "B", "60.00", at(days=5))
    buy("c-1", "C", "80.00", at(days=6))
    buy("c-2", "C", "15.00", at(days=8))
    refunds.refund("c-1", amount="20.00", refund_id="c-1-r1", now=at(days=9))
    refunds.refund("c-2", now=at(days=9))
    buy("d-0", "D", "20.00", at(days=-2))
    buy("d-1", "D", "20.00", at(days=3))
    buy("x-1", "X", "40.00", at(days=7))
    buy("x-2", "X", "40.00", at(days=50))
    buy("e-1", "E", "20.00", at(days=20))
    buy("y-1", "Y", "99.00", at(days=4), currency="USD")


# The figures of [T0, T0 + 30 d), by hand.
EXPECTED = {
    "customers_at_start": 6,  # A, B, C, D, X, Y
    "unique_visitors": 6,  # v1..v6
    "friends_signed_up": 5,  # F1..F5
    "friends_converted": 3,  # F1, F2, F4 (F3 converts after the period)
    "k_factor": 3 / 6,
    "invites_per_customer": 6 / 6,
    "invite_conversion_rate": 3 / 6,
    # [0, 2, 4, 10, 26]: nearest rank 3 of 5 and 5 of 5
    "time_to_signup_hours": {"p50": 4.0, "p90": 26.0, "referrals": 5},
    # [22, 42, 47]: nearest rank 2 of 3 and 3 of 3
    "time_to_convert_hours": {"p50": 42.0, "p90": 47.0, "referrals": 3},
}
CHANNELS = [  # most conversions first, then most visitors
    {
        "channel": "whatsapp",
        "unique_visitors": 3,
        "signups": 3,
        "conversions": 2,
        "conversion_rate": 2 / 3,
    },
    {
        "channel": "code",
        "unique_visitors": 0,
        "signups": 1,
        "conversions": 1,
        "conversion_rate": None,
    },
    {
        "channel": "email",
        "unique_visitors": 2,
        "signups": 1,
        "conversions": 0,
        "conversion_rate": 0.0,
    },
    {
        "channel": "link",
        "unique_visitors": 1,
        "signups": 0,
        "conversions": 0,
        "conversion_rate": 0.0,
    },
]
COHORTS = {
    # F1, F2, F4: fewer than 5, so no figure
    "referred": {
        "customers": 3,
        "orders": None,
        "repeat_purchase_rate_90d": None,
        "average_order_value": None,
        "revenue_per_customer": None,
        "currency": "EUR",
    },
    # A (100 + 50), B (60), C (80 - 20; the refunded order aside), X (40 + 40), E (20): 7 orders,
    # 370.00; A and X came back. D's first order was before the period, Y's in USD.
    "not_referred": {
        "customers": 5,
        "orders": 7,
        "repeat_purchase_rate_90d": 2 / 5,
        "average_order_value": "52.86",  # 370 / 7 = 52.857...
        "revenue_per_customer": "74.00",
        "currency": "EUR",
    },
}


def test_a_month_computed_by_hand(client, admin, month):
    response = client.get(
        "/api/v1/insights", query_string={"from": iso(T0), "to": iso(END)}, headers=admin
    )
    assert response.status_code == 200, response.json
    body = response.json
    assert body["from"] == T0.isoformat() and body["to"] == END.isoformat()
    for key, value in EXPECTED.items():
        assert body[key] == value, key
    assert body["k_factor"] == pytest.approx(
        body["invites_per_customer"] * body["invite_conversion_rate"]
    )
    assert body["by_channel"] == CHANNELS
    assert body["cohorts"] == COHORTS
    assert body["top_referrers"] == [
        {"external_id": "A", "name": None, "conversions": 2},
        {"external_id": "C", "name": None, "conversions": 1},
    ]
    months = body["by_month"]
    assert months[0]["from"] == T0.isoformat() and months[-1]["to"] == END.isoformat()
    assert sum(m["unique_visitors"] for m in months) == 6
    assert sum(m["friends_converted"] for m in months) == 3
    assert months[0]["customers_at_start"] == 6
    for m in months:
        assert m["k_factor"] == m["friends_converted"] / m["customers_at_start"]


def test_the_funnel_and_the_insight_agree(client, admin, month):
    window = {"from": iso(T0), "to": iso(END)}
    funnel = client.get("/api/v1/stats", query_string=window, headers=admin).json
    body = client.get("/api/v1/insights", query_string=window, headers=admin).json
    assert funnel["clicks"] == body["unique_visitors"]
    assert funnel["signups"] == body["friends_signed_up"]
    assert funnel["conversions"] == body["friends_converted"]
    for channel in body["by_channel"]:
        counts = funnel["by_channel"][channel["channel"]]
        assert (counts["clicks"], counts["signups"], counts["conversions"]) == (
            channel["unique_visitors"],
            channel["signups"],
            channel["conversions"],
        )


def test_a_period_with_no_customers_at_its_start(client, admin, month):
    window = {"from": iso(at(days=-20)), "to": iso(END)}
    body = client.get("/api/v1/insights", query_string=window, headers=admin).json
    assert body["customers_at_start"] == 0
    assert body["k_factor"] is None and body["invites_per_customer"] is None
    assert body["unique_visitors"] == 7  # v0 too
    assert body["friends_converted"] == 3
    assert body["invite_conversion_rate"] == 3 / 7
    # D's first order now falls in the period: six customers who were not referred
    assert body["cohorts"]["not_referred"]["customers"] == 6


def test_an_empty_period(client, admin, month):
    window = {"from": iso(at(days=-400)), "to": iso(at(days=-300))}
    body = client.get("/api/v1/insights", query_string=window, headers=admin).json
    assert body | {"by_month": []} == {
        "from": at(days=-400).isoformat(),
        "to": at(days=-300).isoformat(),
        "k_factor": None,
        "invites_per_customer": None,
        "invite_conversion_rate": None,
        "customers_at_start": 0,
        "unique_visitors": 0,
        "friends_signed_up": 0,
        "friends_converted": 0,
        "time_to_signup_hours": {"p50": None, "p90": None, "referrals": 0},
        "time_to_convert_hours": {"p50": None, "p90": None, "referrals": 0},
        "by_channel": [],
        "by_month": [],
        "cohorts": {
            name: {**COHORTS["referred"], "customers": 0} for name in ("referred", "not_referred")
        },
        "top_referrers": [],
    }
    assert all(m["unique_visitors"] == 0 for m in body["by_month"])


def test_an_empty_database(client, admin):
    body = client.get("/api/v1/insights", headers=admin).json
    assert body["k_factor"] is None and body["unique_visitors"] == 0
    assert body["cohorts"]["referred"]["customers"] == 0


BOT = "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)"


def test_bots_only_make_no_visitors(app, client, admin):
    with app.app_context():
        factories.customer("bot-target")
        code = code_of("bot-target")
    for n in range(5):
        response = client.get(
            f"/r/{code}?via=facebook",
            headers={"User-Agent": BOT},
            environ_base={"REMOTE_ADDR": f"192.0.2.{n + 1}"},
        )
        assert response.status_code == 302
    body = client.get("/api/v1/insights", headers=admin).json
    assert body["unique_visitors"] == 0
    assert body["by_channel"] == []
    assert body["invite_conversion_rate"] is None


def test_repeat_visits_within_an_hour_are_one_visitor(app, client, admin):
    with app.app_context():
        factories.customer("busy")
        code = code_of("busy")
    browser = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"}
    for _ in range(3):
        client.get(f"/r/{code}?via=sms", headers=browser, environ_base={"REMOTE_ADDR": "192.0.2.9"})
    client.get(f"/r/{code}?via=sms", headers=browser, environ_base={"REMOTE_ADDR": "192.0.2.10"})
    body = client.get("/api/v1/insights", headers=admin).json
    assert body["unique_visitors"] == 2
    assert body["by_channel"][0]["channel"] == "sms"


def test_csv_gives_the_same_figures(app, client, admin, month):
    response = client.get(
        "/api/v1/insights",
        query_string={"from": iso(T0), "to": iso(END)},
        headers={**admin, "Accept": "text/csv"},
    )
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0] == ["figure", "segment", "value"]
    cells = {(figure, segment): value for figure, segment, value in rows[1:]}
    assert float(cells[("k_factor", "")]) == EXPECTED["k_factor"]
    assert cells[("unique_visitors", "")] == "6"
    assert cells[("time_to_convert_hours.p50", "")] == "42.0"
    assert cells[("channel.conversion_rate", "code")] == ""
    assert cells[("cohort.average_order_value", "not_referred")] == "52.86"
    assert cells[("cohort.repeat_purchase_rate_90d", "referred")] == ""
    assert cells[("top_referrer.conversions", "A")] == "2"
    json_body = client.get("/api/v1/insights", headers=admin).json  # JSON stays the default
    assert "k_factor" in json_body


def test_csv_cells_are_not_formulas(app):
    with app.app_context():
        report = insights.insights(now=datetime(2026, 1, 1, tzinfo=UTC))
    report["top_referrers"] = [
        {"external_id": "=cmd|' /C calc'!A0", "name": None, "conversions": 1}
    ]
    text = insights.as_csv(report)
    assert "'=cmd" in text


@pytest.mark.parametrize(
    ("values", "p50", "p90"),
    [
        ([], None, None),
        ([5.0], 5.0, 5.0),
        ([1.0, 2.0], 1.0, 2.0),
        (list(map(float, range(1, 11))), 5.0, 9.0),
    ],
)
def test_nearest_rank_percentiles(values, p50, p90):
    assert insights.percentiles(values) == {"p50": p50, "p90": p90}


@pytest.mark.parametrize(
    "query",
    [
        "from=2026-01-01",
        "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "since=2026-01-01T00:00:00Z",
        "to=not-a-date",
    ],
)
def test_bad_periods_are_422(client, admin, query):
    response = client.get(f"/api/v1/insights?{query}", headers=admin)
    assert response.status_code == 422
    assert response.json["error"]["fields"]


def test_a_shop_key_may_not_read_insight(client, shop):
    assert client.get("/api/v1/insights", headers=shop).status_code == 403

"""Every statement of the checkout, the redirect, the admin queue and the stats uses an index.

The tables are filled with a realistic number of rows and ANALYZE'd, then the endpoints are called
through the test client while a `before_cursor_execute` listener records the statements the
service really issues (the click writer's too); each is then explained with its own parameters:
`EXPLAIN (FORMAT JSON)` on PostgreSQL (no `Seq Scan` node on a table that grows), `EXPLAIN QUERY
PLAN` on SQLite (no `SCAN <table>` of a table that grows without `USING INDEX` or `USING COVERING
INDEX`). The planner decides on its own: no `enable_seqscan=off`.
"""

import re
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine

from referral_service.domain import fraud, rewards
from referral_service.extensions import db
from referral_service.models import Base, utcnow
from tests.journey_helpers import buy, click, enrol, sign_up

# tables that stay a handful of rows whatever the traffic: a scan of them is the fastest plan
SMALL = {
    "program",
    "api_keys",
    "admins",
    "admin_sign_in_failures",
    "webhook_endpoints",
    "click_marks",
}
GROWING = {table.name for table in Base.metadata.sorted_tables} - SMALL

OFFSET = 10_000_000  # ids of the filled rows, far above the ones the service gives
REFERRERS = 20_000
FRIENDS = 20_000
CLICKS = 200_000
PAYOUTS = 3_000  # a large shop's batches over some years


def series(dialect: str, count: int) -> str:
    if dialect == "postgresql":
        return f"generate_series(1, {count}) AS s(n)"
    return (
        f"(WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {count}) "
        "SELECT n FROM s) AS s"
    )


def minutes_ago(dialect: str, base: str, minutes: str) -> str:
    """A time `minutes` (an SQL expression) before `base`, as the column type stores it."""
    if dialect == "postgresql":
        return f"(TIMESTAMPTZ '{base}+00' - ({minutes}) * INTERVAL '1 minute')"
    seconds = f"printf('%+d seconds', CAST(-({minutes}) * 60 AS INTEGER))"
    return f"(strftime('%Y-%m-%d %H:%M:%f', '{base}', {seconds}) || '000')"


def fill(dialect: str) -> None:
    """Referrers and their codes, their links' clicks (a year), friends with their sign-ups,
    referrals, first orders and rewards in every status, refunds, audit records, relayed
    events and idempotency keys: tens of thousands of rows a table, as a live shop has."""
    base = utcnow().strftime("%Y-%m-%d %H:%M:%S")
    hour = utcnow().strftime("%Y-%m-%d %H:00:00")
    true = "true" if dialect == "postgresql" else "1"
    o = OFFSET
    ref, fr = REFERRERS, FRIENDS
    at = lambda minutes: minutes_ago(dialect, base, minutes)  # noqa: E731
    statements = [
        f"""INSERT INTO customers (id, external_id, email, email_key, created_at, updated_at,
            origin) SELECT {o} + n, 'fill-' || n, 'fill' || n || '@example.com',
            'fill' || n || '@example.com', {at("n * 20")}, {at("n * 20")},
            CASE WHEN n > {ref} THEN 'signup' ELSE 'enrolled' END
            FROM {series(dialect, ref + fr)}""",
        f"""INSERT INTO referral_codes (id, customer_id, code, created_at)
            SELECT {o} + n, {o} + n, 'FILL' || n, {at("n * 20")}
            FROM {series(dialect, ref + fr)}""",
        f"""INSERT INTO clicks (id, code_id, referrer_id, channel, occurred_at, rolled_up_at)
            SELECT 'fill' || n, {o} + 1 + n % {ref}, {o} + 1 + n % {ref},
            CASE n % 4 WHEN 0 THEN 'link' WHEN 1 THEN 'qr' WHEN 2 THEN 'email' ELSE 'x' END,
            {at("n * 2.6")}, CASE WHEN n > 1000 THEN {at("0")} END
            FROM {series(dialect, CLICKS)}""",
        f"""INSERT INTO click_days (day, channel, clicks)
            SELECT DISTINCT CAST({at("n * 2.6")} AS DATE), 'link', 1
            FROM {series(dialect, CLICKS)} WHERE n % 100 = 0""",
        *(
            f"""INSERT INTO click_hours (hour, channel, clicks)
            SELECT {minutes_ago(dialect, hour, "n * 60")}, '{channel}', 3
            FROM {series(dialect, 24 * 365)}"""
            for channel in ("link", "qr")
        ),
        f"""INSERT INTO click_totals (referrer_id, channel, clicks, first_at, last_at)
            SELECT {o} + n, 'link', 10, {at("n * 20")}, {at("n")}
            FROM {series(dialect, ref)}""",
        f"""INSERT INTO referrals (id, referrer_id, friend_id, code_id, channel, friend_email_key,
            status, attributed_at, converted_at, order_id, risk_score, risk_reasons)
            SELECT {o} + n, {o} + 1 + n % {ref}, {o} + {ref} + n, {o} + 1 + n % {ref}, 'link',
            'fill' || ({ref} + n) || '@example.com',
            CASE WHEN n % 3 = 0 THEN 'attributed' ELSE 'converted' END, {at("n * 25")},
            CASE WHEN n % 3 = 0 THEN NULL ELSE {at("n * 25 - 60")} END,
            CASE WHEN n % 3 = 0 THEN NULL ELSE 'fill-order-' || n END, 0, '[]'
            FROM {series(dialect, fr)}""",
        f"""INSERT INTO signups (id, customer_id, attributed, referral_id, code, occurred_at)
            SELECT {o} + n, {o} + {ref} + n, {true}, {o} + n, 'FILL' || n, {at("n * 25")}
            FROM {series(dialect, fr)}""",
        f"""INSERT INTO purchases (id, order_id, customer_id, amount_minor, refunded_minor,
            currency, occurred_at, created_at, response)
            SELECT {o} + n, 'fill-order-' || n, {o} + {ref} + n, 5000, 0, 'EUR',
            {at("n * 25 - 60")}, {at("n * 25 - 60")}, '{{}}'
            FROM {series(dialect, fr)}""",
        # each friend's one order, summarised as the service keeps it (domain/cohorts.py)
        f"""INSERT INTO customer_first_orders (customer_id, currency, first_order_at, orders_90d,
            revenue_90d_minor)
            SELECT customer_id, currency, occurred_at, 1, amount_minor - refunded_minor
            FROM purchases WHERE id > {o}""",
        f"""INSERT INTO payouts (id, status, created_at, created_by, paid_at)
            SELECT {o} + n, 'paid', {at("n * 1440")}, 'admin:fill', {at("n * 1440")}
            FROM {series(dialect, PAYOUTS)}""",
        f"""INSERT INTO rewards (id, referral_id, purchase_id, customer_id, beneficiary, rule_type,
            rule_value, amount_minor, currency, status, available_at, created_at, updated_at,
            payout_id)
            SELECT {o} + n, {o} + n, {o} + n, {o} + 1 + n % {ref}, 'referrer', 'fixed', '10.00',
            1000, 'EUR',
            CASE n % 10 WHEN 0 THEN 'pending' WHEN 1 THEN 'awaiting_approval'
              WHEN 2 THEN 'approved' WHEN 3 THEN 'rejected' ELSE 'paid' END,
            CASE WHEN n % 10 = 0 THEN {at("-100000 - n")} ELSE {at("n * 25 - 20000")} END,
            {at("n * 25")}, {at("n * 25")}, CASE WHEN n % 10 >= 4 THEN {o} + 1 + n % {PAYOUTS} END
            FROM {series(dialect, fr)}""",
        f"""INSERT INTO refunds (id, purchase_id, refund_id, amount_minor, refunded_total_minor,
            created_at)
            SELECT {o} + n, {o} + n * 10, 'fill-refund-' || n, 100, 100, {at("n * 200")}
            FROM {series(dialect, fr // 10)}""",
        f"""INSERT INTO clawbacks (id, customer_id, reward_id, amount_minor, settled_minor,
            currency, created_at)
            SELECT {o} + n, {o} + 1 + n * 10 % {ref}, {o} + n * 10, 100, 0, 'EUR', {at("n * 200")}
            FROM {series(dialect, fr // 10)}""",
        f"""INSERT INTO clawback_settlements (id, clawback_id, payout_id, amount_minor)
            SELECT {o} + n, {o} + n, {o} + 1 + n % {PAYOUTS}, 100
            FROM {series(dialect, fr // 10)}""",
        f"""INSERT INTO audit_log (id, at, actor, action, subject_type, subject_id)
            SELECT {o} + n, {at("n * 10")}, 'admin:fill', 'reward.approve', 'reward',
            CAST({o} + n AS VARCHAR(20)) FROM {series(dialect, 40_000)}""",
        f"""INSERT INTO outbox (id, event_id, type, created_at, data, relayed_at)
            SELECT {o} + n, 'evt_fill' || n, 'reward.created', {at("n * 10")}, '{{}}',
            {at("n * 10")} FROM {series(dialect, 40_000)}""",
        f"""INSERT INTO idempotency_keys (id, owner, key, request_hash, created_at, status_code,
            body)
            SELECT {o} + n, 'key:fill', 'fill-' || n, 'h', {at("n")}, 201, '{{}}'
            FROM {series(dialect, 20_000)}""",
    ]
    # an engine of its own: the service's sets a statement timeout made for requests
    filler = create_engine(db.engine.url.render_as_string(hide_password=False))
    try:
        with filler.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))
        with filler.connect() as connection:
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.execute(text("ANALYZE"))
    finally:
        filler.dispose()


class Recorder:
    """The statements the application's engine runs, with their parameters, while recording."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.seen: dict[str, tuple] = {}

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._record)

    def _record(self, connection, cursor, statement, parameters, context, executemany):
        first = statement.lstrip().split(None, 1)[0].upper()
        if executemany or first not in ("SELECT", "UPDATE", "DELETE", "WITH", "INSERT"):
            return
        if first == "INSERT" and not re.search(r"\bSELECT\b", statement, re.I):
            return  # a plain insert reads no table
        self.seen.setdefault(statement, parameters)


def pg_scans(plan: dict) -> list[str]:
    found = []
    if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") in GROWING:
        found.append(plan["Relation Name"])
    for child in plan.get("Plans", []):
        found += pg_scans(child)
    return found


def full_scans(connection, dialect: str, statement: str, parameters) -> list[str]:
    """The tables that grow which the statement's plan reads whole."""
    raw = connection.connection.driver_connection
    if dialect == "postgresql":
        cursor = raw.cursor()
        cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
        plan = cursor.fetchone()[0]
        return pg_scans(plan[0]["Plan"])
    rows = raw.execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
    scans = []
    for detail in (row[3] for row in rows):
        match = re.match(r"SCAN (\w+)", detail)
        if match and "USING" not in detail and match.group(1) in GROWING:
            scans.append(detail)
    return scans


def walk_the_paths(app, client, shop, admin) -> None:
    """Redirects, sign-ups (by click and by code), first purchases, a repeat purchase, refunds
    (partial and full), maturing into the admin queue, approval, a payout, and the stats."""
    assert client.patch("/api/v1/program", json={"hold_days": 0}, headers=admin).status_code == 200
    code = enrol(client, shop, "plan-referrer")
    click_id = click(client, code, via="qr")
    click(client, code)
    assert sign_up(client, shop, "plan-friend-1", click_id=click_id).json["attributed"]
    assert sign_up(client, shop, "plan-friend-2", referral_code=code).json["attributed"]
    assert sign_up(client, shop, "plan-nobody").status_code == 201
    for n, friend in enumerate(("plan-friend-1", "plan-friend-2")):
        assert buy(client, shop, f"plan-order-{n}", friend, "80.00").status_code == 201
    assert buy(client, shop, "plan-order-again", "plan-friend-1", "20.00").status_code == 201
    assert buy(client, shop, "plan-order-0", "plan-friend-1", "80.00").status_code == 200
    partial = {"order_id": "plan-order-0", "refund_id": "r-1", "amount": "5.00"}
    assert client.post("/api/v1/refunds", json=partial, headers=shop).status_code == 200
    whole = {"order_id": "plan-order-again", "refunded_total": "20.00"}
    assert client.post("/api/v1/refunds", json=whole, headers=shop).status_code == 200
    with app.app_context():
        rewards.mature(utcnow() + timedelta(minutes=1))
        db.session.remove()
    queue = client.get(
        "/api/v1/rewards", query_string={"status": "awaiting_approval"}, headers=admin
    )
    assert queue.status_code == 200 and queue.json["items"]
    theirs = {"status": "awaiting_approval", "referrer": "plan-referrer"}
    mine = [
        r["id"]
        for r in client.get("/api/v1/rewards", query_string=theirs, headers=admin).json["items"]
    ]
    assert len(mine) == 2
    page = client.get(
        "/api/v1/rewards", query_string={"cursor": queue.json["next_cursor"]}, headers=admin
    )
    assert page.status_code == 200
    for reward_id in mine:
        approved = client.post(f"/api/v1/rewards/{reward_id}/approve", json={}, headers=admin)
        assert approved.status_code == 200, approved.json
    payout = client.post("/api/v1/payouts", json={"reward_ids": mine}, headers=admin)
    assert payout.status_code == 201, payout.json
    payout_id = payout.json["id"]
    assert client.get(f"/api/v1/payouts/{payout_id}", headers=admin).status_code == 200
    assert client.get(f"/api/v1/payouts/{payout_id}.csv", headers=admin).status_code == 200
    now = utcnow()
    for days in (1, 30, 365):
        period = {"from": (now - timedelta(days=days)).isoformat(), "to": now.isoformat()}
        assert client.get("/api/v1/stats", query_string=period, headers=admin).status_code == 200


@pytest.fixture
def filled(app, backend):
    """The tables filled (`fill`), and emptied after the test: on PostgreSQL by TRUNCATE, as
    the next test's row-by-row DELETE would check each filled row's references one by one."""
    with app.app_context():
        fill(backend)
        url = db.engine.url.render_as_string(hide_password=False)
        db.session.remove()
    yield
    with app.app_context():
        app.extensions["clicks"].flush()
        db.session.remove()
        db.engine.dispose()
    if backend == "postgresql":
        cleaner = create_engine(url)
        tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
        with cleaner.begin() as connection:
            connection.execute(text(f"TRUNCATE {tables}"))
        cleaner.dispose()


def test_every_statement_of_the_hot_paths_uses_an_index(app, client, shop, admin, backend, filled):
    with app.app_context():
        engine = db.engine
    with Recorder(engine) as recorder:
        walk_the_paths(app, client, shop, admin)
        with app.app_context():
            app.extensions["clicks"].flush()
    assert len(recorder.seen) > 30  # the listener saw the paths' statements
    with app.app_context(), engine.connect() as connection:
        scans = {
            statement: found
            for statement, parameters in recorder.seen.items()
            if (found := full_scans(connection, backend, statement, parameters))
        }
    report = "\n\n".join(f"{found}:\n{statement[:800]}" for statement, found in scans.items())
    assert not scans, f"{len(scans)} statements read a growing table whole:\n\n{report}"


@pytest.mark.sqlite_only
def test_a_referrers_recent_conversions_are_an_index_range(app):
    """The conversion-velocity signal, run on every first purchase, reads a referrer's recent
    conversions through (referrer_id, converted_at), not every referral of the referrer: at
    1,000,000 referrals an index on the referrer alone made a first purchase 1.7 times dearer."""
    now = utcnow()
    with app.app_context(), db.engine.connect() as connection:
        statement = str(fraud._RECENT_CONVERSIONS.compile(connection))
        plan = " ".join(
            str(row[-1])
            for row in connection.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {statement}", (1, "converted", now, now)
            )
        )
    assert "ix_referrals_referrer_converted (referrer_id=? AND converted_at>? AND" in plan, plan


def test_insight_reads_its_period_through_indexes(app, client, admin, backend, filled):
    """GET /api/v1/insights for 30 days and for a year: every statement reads through an index
    (the visits from the roll-ups, the period's referrals with a probe for each one's click,
    the period's first-order summaries with a probe of each one's referral), with one exception on
    PostgreSQL: the count of the customers known before the period and before each month. A
    count of most of the table is read whole whatever the index (PostgreSQL keeps no counts in
    its indexes), and its planner rightly prefers the table to an index-only scan there."""
    with app.app_context():
        engine = db.engine
    now = utcnow()
    with Recorder(engine) as recorder:
        for days in (30, 365):
            period = {"from": (now - timedelta(days=days)).isoformat(), "to": now.isoformat()}
            answer = client.get("/api/v1/insights", query_string=period, headers=admin)
            assert answer.status_code == 200, answer.json
    assert len(recorder.seen) >= 8
    with app.app_context(), engine.connect() as connection:
        scans = {
            statement: found
            for statement, parameters in recorder.seen.items()
            if (found := full_scans(connection, backend, statement, parameters))
        }
    counts_of_customers = {
        statement
        for statement, found in scans.items()
        if backend == "postgresql"
        and set(found) == {"customers"}
        and statement.startswith("SELECT (SELECT count(*)")
    }
    report = "\n\n".join(f"{found}:\n{statement[:800]}" for statement, found in scans.items())
    assert set(scans) == counts_of_customers, f"statements reading a growing table whole:\n{report}"

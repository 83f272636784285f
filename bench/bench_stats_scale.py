"""The funnel (`GET /api/v1/stats` for a year) at 10 k clicks and at 10 M: within 2x?

What it measures: one database is filled with share-link clicks in steps (by default 10,000,
then 10,000,000), spread evenly over the 400 days before now across 10,000 referrers and eight
channels. After each step the worker's roll-up job (`referral-service clicks roll-up`) counts the
past days' clicks into the daily roll-ups, and `GET /api/v1/stats?from=<a year ago>&to=<now>` is
called through the application (Flask's test client: the request's parsing, the queries and the
JSON, without a network or a server in front) `--repeat` times after a warm-up; the median and
the worst time are printed, with the ratio of each step's median to the first step's (the target
is 2x or less). The figures answered are checked against a plain count of the clicks table, so a
fast but wrong answer cannot pass. The clicks of the current hour stay raw, as they would between
two roll-ups; `--no-roll-up` measures the clicks table alone, as before roll-ups.

Clicks are written in bulk with one `INSERT ... SELECT` over a generated series per million rows
(not through the service), then the statistics of the tables are refreshed (ANALYZE).

How to run it (from the repository root):

    .venv/bin/python bench/bench_stats_scale.py                       # 10 k, then 10 M (SQLite)
    .venv/bin/python bench/bench_stats_scale.py --clicks 10000,1000000  # a quicker run
    .venv/bin/python bench/bench_stats_scale.py --database-url postgresql+psycopg://postgres@127.0.0.1/postgres

Times measured on a 2-core machine shared with other work (load average 5 to 10), SQLite: the
10 M fill took 11.5 minutes and its roll-up 8 (a 10 M database takes about 3.5 GB of disk);
1 M took 2 minutes and 1 to 2. PostgreSQL: 1 M took 50 s and 30 s. With `--database-url` naming
PostgreSQL, a fresh database is made on that server for the run and dropped at the end; without
it, a SQLite file in a temporary directory, removed at the end.

Needs: the service installed in the running Python (`pip install -e .`). Exit status: 0 when every
step is within the target (or `--no-check`), 1 otherwise.
"""

import argparse
import contextlib
import io
import os
import secrets
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from flask_migrate import upgrade
from sqlalchemy import create_engine, func, select, text

from referral_service import create_app
from referral_service.domain import api_keys, rollups
from referral_service.extensions import db
from referral_service.models import Click, utcnow

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import postgres_database

TARGET = 2.0
DAYS = 400
REFERRERS = 10_000
CHANNELS = ("link", "qr", "email", "whatsapp", "sms", "facebook", "x", "copy")
CHUNK = 1_000_000
OFFSET = 1_000_000  # ids of the seeded customers and codes


def series(dialect: str, first: int, last: int) -> str:
    """Rows `n` from `first` to `last` (inclusive), as a FROM item."""
    if dialect == "postgresql":
        return f"generate_series({first}, {last}) AS s(n)"
    return (
        f"(WITH RECURSIVE s(n) AS (SELECT {first} UNION ALL SELECT n + 1 FROM s "
        f"WHERE n < {last}) SELECT n FROM s) AS s"
    )


def seconds_before(dialect: str, base: str, seconds: str) -> str:
    if dialect == "postgresql":
        return f"(TIMESTAMPTZ '{base}+00' - ({seconds}) * INTERVAL '1 second')"
    shift = f"printf('%+d seconds', -({seconds}))"
    return f"(strftime('%Y-%m-%d %H:%M:%f', '{base}', {shift}) || '000')"


def seed_referrers(engine, dialect: str) -> None:
    base = utcnow().strftime("%Y-%m-%d %H:%M:%S")
    made = seconds_before(dialect, base, f"{DAYS + 30} * 86400")
    with engine.begin() as connection:
        connection.execute(
            text(
                f"""INSERT INTO customers (id, external_id, email, email_key, created_at,
                updated_at, origin) SELECT {OFFSET} + n, 'bench-' || n,
                'bench' || n || '@example.com', 'bench' || n || '@example.com', {made}, {made},
                'enrolled' FROM {series(dialect, 1, REFERRERS)}"""
            )
        )
        connection.execute(
            text(
                f"""INSERT INTO referral_codes (id, customer_id, code, created_at)
                SELECT {OFFSET} + n, {OFFSET} + n, 'BENCH' || n, {made}
                FROM {series(dialect, 1, REFERRERS)}"""
            )
        )


def add_clicks(engine, dialect: str, first: int, last: int, total: int, base: str) -> None:
    """Clicks `first..last` of `total`, evenly over the DAYS before `base`, newest first."""
    spacing = DAYS * 86400 / total
    channel = "CASE n % 8 " + " ".join(f"WHEN {i} THEN '{c}'" for i, c in enumerate(CHANNELS))
    referrer = f"{OFFSET} + 1 + (CAST(n AS BIGINT) * 7919) % {REFERRERS}"
    for low in range(first, last + 1, CHUNK):
        high = min(low + CHUNK - 1, last)
        occurred = seconds_before(dialect, base, f"CAST(n * {spacing} AS INTEGER)")
        with engine.begin() as connection:
            connection.execute(
                text(
                    f"""INSERT INTO clicks (id, code_id, referrer_id, channel, occurred_at)
                    SELECT 'b' || n, {referrer}, {referrer}, {channel} END, {occurred}
                    FROM {series(dialect, low, high)}"""
                )
            )


def analyze(engine) -> None:
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))


def time_stats(client, headers, period, repeat: int) -> tuple[list[float], dict]:
    client.get("/api/v1/stats", query_string=period, headers=headers)  # warm-up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = client.get("/api/v1/stats", query_string=period, headers=headers)
        times.append(time.perf_counter() - started)
        if answer.status_code != 200:
            raise SystemExit(f"GET /api/v1/stats answered {answer.status_code}: {answer.json}")
    return times, answer.json


def run(url: str, folder: str, steps: list[int], repeat: int, roll: bool, check: bool) -> int:
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": url,
            "SECRET_KEY": secrets.token_urlsafe(32),
            "RATELIMIT_ENABLED": False,
            "CLICK_SPILL_DIR": os.path.join(folder, "clicks-spill"),
            "TASKS_FILE": os.path.join(folder, "tasks.sqlite3"),
        }
    )
    with app.app_context():
        with contextlib.redirect_stderr(io.StringIO()):  # Alembic's lines
            upgrade()
        dialect = db.engine.dialect.name
        engine = create_engine(db.engine.url.render_as_string(hide_password=False))
        headers = {"Authorization": f"Bearer {api_keys.create('bench', 'admin').secret}"}
        db.session.remove()
    seed_referrers(engine, dialect)
    base_time = utcnow().replace(microsecond=0)
    base = base_time.strftime("%Y-%m-%d %H:%M:%S")
    client = app.test_client()
    now = utcnow()
    period = {"from": (now - timedelta(days=365)).isoformat(), "to": now.isoformat()}
    print(f"{dialect}; GET /api/v1/stats for a year, median of {repeat} after a warm-up")
    print(
        f"{'clicks':>12} {'fill s':>8} {'roll-up s':>10} {'p50 ms':>8} {'max ms':>8} {'ratio':>6}"
    )
    done, first_median, worst_ratio = 0, None, 0.0
    for total in steps:
        started = time.perf_counter()
        # each step spreads its own clicks over the whole period: old ones are renumbered
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM clicks"))
            connection.execute(text("DELETE FROM click_days"))
            connection.execute(text("DELETE FROM click_hours"))
            connection.execute(text("DELETE FROM click_totals"))
        add_clicks(engine, dialect, 1, total, total, base)
        analyze(engine)
        filled = time.perf_counter() - started
        rolled_for = 0.0
        if roll:
            started = time.perf_counter()
            with app.app_context():
                rollups.roll_up(base_time)
                db.session.remove()
            analyze(engine)
            rolled_for = time.perf_counter() - started
        times, body = time_stats(client, headers, period, repeat)
        with app.app_context():
            expected = db.session.scalar(
                select(func.count()).where(
                    Click.occurred_at >= now - timedelta(days=365), Click.occurred_at < now
                )
            )
            db.session.remove()
        if body["clicks"] != expected:
            raise SystemExit(f"stats say {body['clicks']} clicks, the table holds {expected}")
        median = statistics.median(times)
        first_median = first_median or median
        ratio = median / first_median
        if total != steps[0]:
            worst_ratio = max(worst_ratio, ratio)
        print(
            f"{total:>12,} {filled:>8.1f} {rolled_for:>10.1f} {median * 1000:>8.2f} "
            f"{max(times) * 1000:>8.2f} {ratio:>6.2f}",
            flush=True,
        )
        done = total
    engine.dispose()
    verdict = "met" if worst_ratio <= TARGET else "MISSED"
    print(f"target: within {TARGET}x of the first step, up to {done:,} clicks: {verdict}")
    return 0 if worst_ratio <= TARGET or not check else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clicks",
        default="10000,10000000",
        help="comma-separated click counts, measured in turn (default: 10000,10000000)",
    )
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per step")
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server to make a fresh database on (default: a SQLite file)",
    )
    parser.add_argument(
        "--no-roll-up", action="store_true", help="read the clicks table alone (no roll-ups)"
    )
    parser.add_argument("--no-check", action="store_true", help="exit 0 even above the target")
    args = parser.parse_args()
    steps = [int(n.replace("_", "")) for n in args.clicks.split(",")]
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-stats-"))
        if args.database_url:
            url = stack.enter_context(postgres_database(args.database_url, "bench_stats"))
        else:
            url = f"sqlite:///{folder}/bench.sqlite3"
        return run(url, folder, steps, args.repeat, not args.no_roll_up, not args.no_check)


if __name__ == "__main__":
    sys.exit(main())

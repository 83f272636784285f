"""The benchmark suite behind `make bench`: every load the issue's targets name, one table.

What it measures, on SQLite and on PostgreSQL, with gunicorn's sync and gthread workers, the
rate limiter on (its counters in Redis), one endpoint loaded at a time with wrk:

  * `GET /r/<code>?via=link` (the redirect, a new visitor each request, so a new click each)
    against `GET /` of a bare Flask app (`bench/bare_app.py`): target >= 0.5;
  * `GET /r/<code>/qr.png` (served from the QR cache) against the same: target >= 0.7;
  * `POST /api/v1/signups` (a new friend with a referrer's valid code, each attributed) and
    `POST /api/v1/purchases` (the first purchase of an attributed friend, each earning a reward)
    against `POST /insert` of a bare one-row insert app on the same database
    (`bench/bare_insert_any_app.py`): target >= 0.4;
  * the rate limiter's own cost on the redirect: the redirect's req/s with the limiter on over
    its req/s with `RATELIMIT_ENABLED=false` (measured on the first database, both worker kinds;
    no target: a cost of 1 - ratio);
  * the resident memory of each service worker (RSS from /proc, after its loads): < 150 MB;
  * for every service load: p50 and p99 latency, and the rule p99 <= 3 x p50 (the `tail`
    column; a load that breaks it counts as a missed target);
  * the checkout at scale: sign-ups and purchases on SQLite databases seeded with 10,000 and with
    1,000,000 referrals (`--scale-sizes`; 100,000 with --quick), the slowdown (req/s at the
    small size over req/s at the large one) within 1.3x; on PostgreSQL too with
    `--scale-postgres` (its seeding is slower: several minutes for 1,000,000);
  * stats at scale: `bench/bench_stats_scale.py` on each database (`GET /api/v1/stats` for a
    year, in-process, at 10,000 and at 1,000,000 clicks by default, `--stats-clicks
    10000,10000000` for the issue's figure), the median time's ratio within 2x;
  * insight vs stats: `bench/bench_insight_scale.py` on each database (`GET /api/v1/insights`
    and `GET /api/v1/stats` for the same year of a shop, in-process, alternating; 100,000
    customers and 5,000,000 visits by default, `--insight-size`; 10,000 and 500,000 with
    --quick), insight's median time under 2x the stats' median, its figures checked against
    plain counts.

Every ratio compares loads of the same run under the same gunicorn settings (`--workers`, the
worker kind, `--threads` for gthread, a config file, free ports on 127.0.0.1); each service load
sits between two baseline loads and is compared to their mean, so that a machine whose speed
drifts (other work on it) moves both sides alike. The `other` column is the share of the
machine's CPUs taken by other work during the service load (from /proc, as bench_public.py
reports it; PostgreSQL's and Redis's own CPU counts there too): above a few percent, that
row's figures are disturbed; rerun when quiet. The `CPU ratio` column gives the same ratio from
the servers' CPU time per request, steadier on a shared machine.

Databases: SQLite files in a temporary directory; PostgreSQL is a database the suite creates from
`BENCH_DATABASE_URL` (else `TEST_DATABASE_URL`) and drops at the end, its rows skipped with a line
saying so when neither is set. Redis: `--redis-url` (default `redis://127.0.0.1:6379/11`, or
`BENCH_REDIS_URL`), a database the suite owns: it is emptied (FLUSHDB) at the start and at the
end, so do not point it at a database holding anything else. Rows are seeded with bulk inserts
(`bench/seed.py`); the temporary directory is removed at the end, even on Ctrl-C.

How to run it (from the repository root):

    make bench                                   # the full suite, about 15 minutes
    .venv/bin/python bench/suite.py --quick      # short loads, 100,000 referrals (~5 minutes)
    .venv/bin/python bench/suite.py --check      # exit status 1 when a target is missed
    .venv/bin/python bench/suite.py --duration 20 --scale-sizes 10000,1000000
    .venv/bin/python bench/suite.py --only sqlite --kinds gthread --skip-scale
    .venv/bin/python bench/suite.py --help

Needs: the service installed with its development dependencies (`pip install -e '.[dev]'`,
which brings gunicorn), `wrk` on the PATH (`apt-get install wrk`), Redis, and about 1.5 GB of
free disk for the 1,000,000-referral database. Exit status: 0 when the runs complete (with
`--check`: only if every target is met), 1 on a failure, 2 without wrk.
"""

import argparse
import contextlib
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench_checkout import (
    LUA_INSERT,
    LUA_PURCHASE,
    LUA_SIGNUP,
    SECRET,
    SIGNUP_CODES,
    Population,
    check_service,
    lua,
    populate,
    wait_for_other_wrk,
)
from bench_public import (
    BENCH,
    ROOT,
    VISITORS_SCRIPT,
    WRK_SCRIPT,
    BenchError,
    Load,
    Server,
    check_qr,
    check_redirect,
    free_port,
    measure,
    request,
    run_cli,
    run_main,
    run_process,
    service_env,
    wrk,
)
from harness import (
    describe_machine,
    gunicorn_argv,
    postgres_database,
    redis_database,
    worker_rss,
)
from seed import Referrer, seed_history, seed_pool, seed_referrers
from sqlalchemy import create_engine, text

REDIRECT_TARGET = 0.5
QR_TARGET = 0.7
CHECKOUT_TARGET = 0.4
RSS_LIMIT_MB = 150
TAIL_LIMIT = 3.0  # p99 at most this many times p50
SLOWDOWN_LIMIT = 1.3  # checkout at the large size at most this many times slower
STATS_LIMIT = 2.0  # stats at the large size at most this many times slower
ERROR_LIMIT = 0.01
REFERRERS = 1000
SETTLE = 1.0  # seconds for requests in flight when wrk stopped to be written
STATS_SCRIPT = BENCH / "bench_stats_scale.py"
INSIGHT_LIMIT = 2.0  # insight for a year under this many times the stats for it
INSIGHT_SCRIPT = BENCH / "bench_insight_scale.py"


# --- the table -----------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table. `met` None: nothing to meet (a figure shown for itself, or not
    measured); `tail_ok` None: not a load."""

    measure: str
    db: str = "-"
    workers: str = "-"
    figure: str = ""
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    other: float | None = None
    note: str = ""
    cpu_ratio: str = ""  # the ratio from server CPU time per request (see LEGEND)

    @property
    def tail_ok(self) -> bool | None:
        if self.p50_ms is None or self.p99_ms is None:
            return None
        return self.p99_ms <= TAIL_LIMIT * self.p50_ms

    @property
    def ok(self) -> bool:
        """False when its target or its tail rule is missed."""
        return self.met is not False and self.tail_ok is not False


COLUMNS = (
    ("measure", 34, "<"),
    ("db", 10, "<"),
    ("workers", 8, "<"),
    ("figure", 13, ">"),
    ("baseline", 13, ">"),
    ("ratio", 8, ">"),
    ("target", 9, ">"),
    ("met", 5, ">"),
    ("CPU ratio", 10, ">"),
    ("p50 ms", 8, ">"),
    ("p99 ms", 8, ">"),
    ("tail", 6, ">"),
    ("other", 6, ">"),
)


def _cells(row: Row) -> list[str]:
    def ms(value):
        return "" if value is None else f"{value:.1f}"

    def yes(value):
        return "" if value is None else "yes" if value else "NO"

    tail = "" if row.tail_ok is None else f"{row.p99_ms / max(row.p50_ms, 1e-9):.1f}x"
    if row.tail_ok is False:
        tail += "!"
    return [
        row.measure,
        row.db,
        row.workers,
        row.figure,
        row.baseline,
        row.ratio,
        row.target,
        yes(row.met),
        row.cpu_ratio,
        ms(row.p50_ms),
        ms(row.p99_ms),
        tail,
        "" if row.other is None else f"{row.other:.0%}",
    ]


def format_table(rows: list[Row]) -> str:
    """The table as text: a header, a rule, a line a row (notes indented below their row)."""
    header = " ".join(f"{name:{align}{width}}" for name, width, align in COLUMNS)
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = _cells(row)
        lines.append(
            " ".join(
                f"{cell[:width] if i == 0 else cell:{align}{width}}"
                for i, (cell, (_, width, align)) in enumerate(zip(cells, COLUMNS, strict=True))
            ).rstrip()
        )
        if row.note:
            lines.append(f"    {row.note}")
    return "\n".join(lines)


LEGEND = (
    "figure: req/s of the service (or what the row names); baseline: mean req/s of the baseline "
    "loads just\nbefore and after (bare GET / for the redirect and QR, bare POST /insert for the "
    "checkout); ratio: figure / baseline;\ntail: p99 / p50 (! when over 3x, which counts as a "
    "missed target); other: share of the CPUs other work took\nduring the service load (above "
    "~5% the row is disturbed: rerun when the machine is quiet); CPU ratio: the same ratio\n"
    "from server CPU time per request (baseline's over the service's, from /proc): what the "
    "ratio would be on CPUs\nfree of other work, the client aside (for the scale rows: the "
    "CPU time's slowdown)."
)


def all_ok(rows: list[Row]) -> bool:
    """True if no row misses its target or its tail rule."""
    return all(row.ok for row in rows)


def short(number: int) -> str:
    """10000 -> "10k", 1000000 -> "1M", 1500 -> "1,500"."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if number >= size and number % size == 0:
            return f"{number // size}{suffix}"
    return f"{number:,}"


def verdict(rows: list[Row]) -> str:
    """One line: how many targets (tail rules included) were met, missed, not measured."""
    checks = [row.met for row in rows if row.target] + [row.tail_ok for row in rows]
    met, missed = checks.count(True), checks.count(False)
    unmeasured = sum(1 for row in rows if row.met is None and (row.target or row.note))
    return (
        f"all targets met: {'NO' if missed else 'yes'} ({met} met, {missed} missed, "
        f"{unmeasured} rows not measured or without a target)"
    )


def rps(load: Load) -> str:
    return f"{load.wrk.rps:,.0f} req/s"


def cpu_ratio(load: Load, before: Load, *more: Load, inverse: bool = False) -> str:
    """Baseline CPU time per request (the mean of `before` and `more`) over `load`'s: its
    throughput ratio on CPUs free of other work, client aside ("" without /proc)."""
    mine = load.cpu_per_request_us
    base = [x.cpu_per_request_us for x in (before, *more)]
    if not mine or None in base:
        return ""
    value = sum(base) / len(base) / mine
    return f"{1 / value:.2f}x" if inverse else f"{value:.2f}"


def ratio_row(
    label: str, db: str, kind: str, load: Load, before: Load, after: Load, target: float
) -> Row:
    """A service load against the mean of the baseline loads around it."""
    baseline = (before.wrk.rps + after.wrk.rps) / 2
    ratio = load.wrk.rps / baseline if baseline else 0.0
    errors = load.wrk.errors
    too_many = errors > ERROR_LIMIT * max(load.wrk.requests, 1)
    note = f"{errors} errors in {load.wrk.requests} requests" if errors else ""
    return Row(
        label,
        db,
        kind,
        rps(load),
        f"{baseline:,.0f} req/s",
        f"{ratio:.2f}",
        f">= {target}",
        ratio >= target and not too_many,
        load.wrk.p50_ms,
        load.wrk.p99_ms,
        load.other_share,
        note,
        cpu_ratio(load, before, after),
    )


def rss_row(db: str, kind: str, sizes: list[int]) -> Row:
    if not sizes:
        return Row("RSS per service worker", db, kind, "?", note="no /proc: not measured")
    largest = max(sizes) / 2**20
    return Row(
        "RSS per service worker (max)",
        db,
        kind,
        f"{largest:.0f} MB",
        ratio="",
        target=f"< {RSS_LIMIT_MB} MB",
        met=largest < RSS_LIMIT_MB,
        note="workers: " + ", ".join(f"{x / 2**20:.0f} MB" for x in sizes),
    )


# --- one database ---------------------------------------------------------------------------------


@dataclass
class Database:
    """A database the service and the bare insert app run on, and what was seeded there."""

    kind: str  # "sqlite" or "postgresql"
    url: str  # the service's DATABASE_URL
    bare_url: str  # the bare insert app's BARE_INSERT_URL
    folder: Path
    key: str = ""
    referrers: list[Referrer] = field(default_factory=list)
    pool_end: int = 0  # pool friends seeded so far
    pool_next: int = 0  # the first pool friend no purchase load has used

    def engine(self):
        return create_engine(self.url)


def service_environment(db: Database, port: int, redis_url: str, limiter: bool = True) -> dict:
    env = service_env(db.folder / "unused.sqlite3", port, SECRET)
    env.update(DATABASE_URL=db.url, REDIS_URL=redis_url)
    env["CLICK_SPILL_DIR"] = str(db.folder / f"clicks-spill-{port}")
    if not limiter:
        env["RATELIMIT_ENABLED"] = "false"
    return env


def prepare(db: Database, redis_url: str) -> None:
    """Schema and an API key."""
    env = service_environment(db, free_port(), redis_url)
    run_cli(["db", "upgrade"], env, timeout=300)
    db.key = run_cli(["api-keys", "create", "bench", "--scope", "shop"], env).strip()


def seed(db: Database, pool: int, referrers: bool = True) -> None:
    """The referrers (unless made already) and `pool` pool friends, in bulk, before the service
    starts (ids are taken as max(id) + 1: nothing else may write meanwhile)."""
    started = time.monotonic()
    engine = db.engine()
    try:
        if referrers:
            db.referrers = seed_referrers(engine, REFERRERS, SECRET)
        seed_pool(engine, db.referrers, db.pool_end, pool)
        db.pool_end += pool
    finally:
        engine.dispose()
    print(f"  seeded {pool:,} pool friends in {time.monotonic() - started:.1f} s", flush=True)


def ensure_pool(db: Database, needed: int) -> None:
    """Moves `db.pool_next` past the pool friends used; BenchError if fewer than `needed` are
    left (the pool is seeded before the service starts)."""
    engine = db.engine()
    try:
        with engine.connect() as connection:
            used = connection.execute(
                text(
                    "SELECT max(c.external_id) FROM purchases p "
                    "JOIN customers c ON c.id = p.customer_id WHERE c.external_id LIKE 'pool-%'"
                )
            ).scalar_one()
        db.pool_next = int(used.removeprefix("pool-")) + 1 if used else db.pool_next
    finally:
        engine.dispose()
    if db.pool_end - db.pool_next < needed:
        raise BenchError(
            f"the pool of friends is short: {db.pool_end - db.pool_next} left, {needed} needed"
        )


class Suite:
    """The run's settings, its servers and the loads' scripts."""

    def __init__(self, args, tmp: Path, servers: list[Server], redis_url: str):
        self.args, self.tmp, self.servers, self.redis_url = args, tmp, servers, redis_url
        self.visitors = tmp / "visitors.lua"
        self.visitors.write_text(VISITORS_SCRIPT + WRK_SCRIPT)
        # pool friends a purchase load may use: its warm-up and its measured run
        self.pool_per_load = args.max_rate * (args.duration + args.warmup)

    def server(self, name: str, app: str, chdir: Path, env: dict, kind: str, folder: Path):
        port = free_port()
        if "PUBLIC_BASE_URL" in env:
            env = {**env, "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"}
        argv = gunicorn_argv(app, chdir, port, self.args.workers, kind, self.args.gthreads)
        server = Server(name, argv, chdir, env, port, folder / f"{name.replace(' ', '-')}.log")
        self.servers.append(server)
        return server

    def load(self, server: Server, path: str, label: str, script: Path) -> Load:
        wait_for_other_wrk()
        return measure(self.args, script, server, path, label)[0]

    def script(self, name: str, text_: str) -> Path:
        path = self.tmp / name
        path.write_text(text_)
        return path

    def purchases(self, db: Database, service: Server, label: str) -> Load:
        """The warm-up and the measured run each buy for pool friends of their own (a friend
        bought for again would make a second purchase, cheaper than a first)."""
        args, path = self.args, "/api/v1/purchases"

        def script(seconds: int) -> Path:
            ensure_pool(db, args.max_rate * seconds)
            return self.script(
                "purchase.lua",
                lua(args, db.key, LUA_PURCHASE, first=db.pool_next, threads=args.threads),
            )

        wait_for_other_wrk()
        if args.warmup:
            wrk(args, script(args.warmup), service.port, path, args.warmup)
            time.sleep(SETTLE)  # requests in flight when wrk stopped write their purchases
        measured = argparse.Namespace(**{**vars(args), "warmup": 0})
        return measure(measured, script(args.duration), service, path, label)[0]

    def signups(self, db: Database, service: Server, label: str) -> Load:
        codes = ", ".join(f'"{r.code}"' for r in db.referrers[:SIGNUP_CODES])
        script = self.script("signup.lua", lua(self.args, db.key, LUA_SIGNUP, codes=codes))
        return self.load(service, "/api/v1/signups", label, script)

    def run_kind(self, db: Database, kind: str, limiter_cost: bool) -> list[Row]:
        """Every load of one database with one worker kind; the rows."""
        args, rows = self.args, []
        print(f"\n== {db.kind}, {kind} workers ==", flush=True)
        folder = db.folder / kind
        folder.mkdir(exist_ok=True)
        plain = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        bare = self.server("bare app", "bare_app:app", BENCH, plain, kind, folder)
        insert_env = {**plain, "BARE_INSERT_URL": db.bare_url}
        inserts = self.server(
            "bare insert", "bare_insert_any_app:app", BENCH, insert_env, kind, folder
        )
        env = service_environment(db, 0, self.redis_url)
        service = self.server("service", "referral_service.wsgi:app", ROOT, env, kind, folder)
        for server, ready in ((bare, "/"), (inserts, "/"), (service, "/healthz")):
            server.start(ready)
        status, _, body = request(
            inserts.port, "POST", "/insert", body={"external_id": f"check-{kind}", "email": "c@x"}
        )
        if status != 201:
            raise BenchError(f"bare POST /insert answered {status}: {body[:300]!r}")
        code = db.referrers[0].code
        check_redirect(service.port, code)
        check_qr(service.port, code, "png", "image/png")
        check_service(service.port, db.key, code, f"{db.kind}-{kind}")

        bare_label, insert_label = "bare GET /", "bare POST /insert"
        b0 = self.load(bare, "/", bare_label, self.visitors)
        redirect = self.load(service, f"/r/{code}?via=link", "GET /r/<code>", self.visitors)
        b1 = self.load(bare, "/", bare_label, self.visitors)
        png = self.load(service, f"/r/{code}/qr.png", "GET /r/<code>/qr.png", self.visitors)
        b2 = self.load(bare, "/", bare_label, self.visitors)
        rows.append(
            ratio_row("redirect GET /r/<code>", db.kind, kind, redirect, b0, b1, REDIRECT_TARGET)
        )
        rows.append(
            ratio_row("cached QR GET /r/<code>/qr.png", db.kind, kind, png, b1, b2, QR_TARGET)
        )

        insert_script = self.script("insert.lua", lua(args, "", LUA_INSERT))
        i0 = self.load(inserts, "/insert", insert_label, insert_script)
        signups = self.signups(db, service, "POST /api/v1/signups")
        i1 = self.load(inserts, "/insert", insert_label, insert_script)
        purchases = self.purchases(db, service, "POST /api/v1/purchases")
        i2 = self.load(inserts, "/insert", insert_label, insert_script)
        rows.append(
            ratio_row(
                "sign-up POST /api/v1/signups", db.kind, kind, signups, i0, i1, CHECKOUT_TARGET
            )
        )
        rows.append(
            ratio_row(
                "purchase POST /api/v1/purchases", db.kind, kind, purchases, i1, i2, CHECKOUT_TARGET
            )
        )
        sizes = worker_rss(service)
        errors = service_log_errors(service)
        if errors:
            rows[-1].note = (rows[-1].note + "; " if rows[-1].note else "") + (
                f"the service logged {errors} errors (see --keep-tmp)"
            )
            rows[-1].met = False
        rows.append(rss_row(db.kind, kind, sizes))
        inserts.stop()
        bare.stop()

        if limiter_cost:
            off_env = service_environment(db, 0, self.redis_url, limiter=False)
            off = self.server(
                "service limiter off", "referral_service.wsgi:app", ROOT, off_env, kind, folder
            )
            off.start("/healthz")
            without = self.load(
                off, f"/r/{code}?via=link", "GET /r/<code> limiter off", self.visitors
            )
            with_ = self.load(
                service, f"/r/{code}?via=link", "GET /r/<code> limiter on", self.visitors
            )
            off.stop()
            ratio = with_.wrk.rps / without.wrk.rps if without.wrk.rps else 0.0
            rows.append(
                Row(
                    "rate limiter on/off, redirect",
                    db.kind,
                    kind,
                    rps(with_),
                    f"{without.wrk.rps:,.0f} req/s",
                    f"{ratio:.2f}",
                    "-",
                    None,
                    with_.wrk.p50_ms,
                    with_.wrk.p99_ms,
                    with_.other_share,
                    f"the limiter (Redis) costs {1 - ratio:.0%} of the redirect's req/s "
                    "(baseline: the same service with RATELIMIT_ENABLED=false)",
                    cpu_ratio(with_, without),
                )
            )
        service.stop()
        return rows


def service_log_errors(server: Server) -> int:
    try:
        log = server.log.read_text(errors="replace")
    except OSError:
        return 0
    return log.count("Traceback") + log.count("[ERROR]")


# --- the checkout at scale ---------------------------------------------------------------------


def run_scale(suite: Suite, sizes: list[int], kind: str = "sqlite") -> list[Row]:
    """Sign-ups and purchases (sync workers) on databases seeded with each size of history."""
    results = {}
    for size in sizes:
        folder = suite.tmp / f"scale-{kind}-{size}"
        folder.mkdir()
        print(f"\n== checkout at scale: {size:,} referrals ({kind}, sync workers) ==", flush=True)
        with contextlib.ExitStack() as stack:
            if kind == "sqlite":
                database = folder / "service.sqlite3"
                db = Database(kind, f"sqlite:///{database}", "", folder)
                prepare(db, suite.redis_url)
                # the sqlite3 module's bulk writer of bench_checkout.py: faster than seed.py's
                population = Population(database)
                populate(population, REFERRERS, size)
                db.referrers = [Referrer(*referrer) for referrer in population.referrers]
                seed(db, suite.pool_per_load, referrers=False)
            else:
                url = stack.enter_context(postgres_database(postgres_url()))
                db = Database(kind, url, "", folder)
                prepare(db, suite.redis_url)
                seed(db, suite.pool_per_load)
                started, engine = time.monotonic(), db.engine()
                try:
                    seed_history(engine, db.referrers, size)
                finally:
                    engine.dispose()
                print(f"  seeded {size:,} referrals in {time.monotonic() - started:.0f} s")
            env = service_environment(db, 0, suite.redis_url)
            service = suite.server(
                "service", "referral_service.wsgi:app", ROOT, env, "sync", folder
            )
            service.start("/healthz")
            check_service(service.port, db.key, db.referrers[0].code, f"scale-{size}")
            signups = suite.signups(db, service, f"POST /api/v1/signups @{size:,}")
            purchases = suite.purchases(db, service, f"POST /api/v1/purchases @{size:,}")
            service.stop()
        results[size] = (signups, purchases)
    small, large = sizes[0], sizes[-1]
    rows = []
    for index, name in enumerate(("sign-up", "purchase")):
        at_small, at_large = results[small][index], results[large][index]
        slowdown = at_small.wrk.rps / at_large.wrk.rps if at_large.wrk.rps else float("inf")
        rows.append(
            Row(
                f"{name} at {short(large)} vs {short(small)} referrals",
                kind,
                "sync",
                rps(at_large),
                rps(at_small),
                f"{slowdown:.2f}x",
                f"<= {SLOWDOWN_LIMIT}x",
                slowdown <= SLOWDOWN_LIMIT,
                at_large.wrk.p50_ms,
                at_large.wrk.p99_ms,
                at_large.other_share,
                "ratio: slowdown, req/s at the small size over req/s at the large one",
                cpu_ratio(at_large, at_small, inverse=True),
            )
        )
    return rows


# --- stats and insight ---------------------------------------------------------------------------


STATS_LINE = re.compile(r"^\s*([\d,]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$")


def parse_stats(output: str) -> list[tuple[int, float]]:
    """The steps of bench_stats_scale.py's table: (clicks, median ms of GET /api/v1/stats)."""
    steps = []
    for line in output.splitlines():
        found = STATS_LINE.match(line)
        if found:
            steps.append((int(found[1].replace(",", "")), float(found[4])))
    return steps


def stats_row(db: str, steps: list[tuple[int, float]], note: str = "") -> Row:
    """The largest step against the first: within STATS_LIMIT times its median?"""
    if len(steps) < 2:
        return Row("stats GET /api/v1/stats at scale", db, figure="failed", met=False, note=note)
    (small, base), (large, median) = steps[0], steps[-1]
    ratio = median / base if base else float("inf")
    return Row(
        f"stats at {short(large)} vs {short(small)} clicks",
        db,
        "-",
        f"{median:.1f} ms",
        f"{base:.1f} ms",
        f"{ratio:.2f}x",
        f"<= {STATS_LIMIT}x",
        ratio <= STATS_LIMIT,
        note=note or "median time of GET /api/v1/stats for a year (in-process, no server)",
    )


def run_stats(args) -> list[Row]:
    """bench/bench_stats_scale.py on each database (its output shown), a row for each."""
    if not STATS_SCRIPT.exists():
        return [Row("stats at scale", note="bench/bench_stats_scale.py is not there")]
    rows = []
    for kind in args.databases:
        argv = [sys.executable, str(STATS_SCRIPT), "--clicks", args.stats_clicks, "--no-check"]
        if kind == "postgresql":
            if not postgres_url():
                continue
            argv += ["--database-url", postgres_url()]
        print(f"\n== stats at scale ({kind}): --clicks {args.stats_clicks} ==", flush=True)
        done = run_process(
            argv, 3600, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        print(done.stdout, end="", flush=True)
        note = "" if done.returncode == 0 else f"bench_stats_scale.py exited {done.returncode}"
        rows.append(stats_row(kind, parse_stats(done.stdout), note))
    return rows


INSIGHT_RESULT = re.compile(
    r"^result: db=(\w+) customers=(\d+) visits=(\d+) stats_ms=([\d.]+) insight_ms=([\d.]+) "
    r"ratio=([\d.]+) figures=(\w+)\s*$",
    re.M,
)


@dataclass
class InsightResult:
    """bench_insight_scale.py's last line: the sizes, both medians (ms), their figures' check."""

    customers: int
    visits: int
    stats_ms: float
    insight_ms: float
    figures_ok: bool


def parse_insight(output: str) -> InsightResult | None:
    """The `result:` line of bench_insight_scale.py's output; None without one."""
    found = INSIGHT_RESULT.search(output)
    if not found:
        return None
    return InsightResult(
        int(found[2]), int(found[3]), float(found[4]), float(found[5]), found[7] == "ok"
    )


def insight_row(db: str, result: InsightResult | None, note: str = "") -> Row:
    """Insight's median against the stats' for the same year: under INSIGHT_LIMIT times, with
    its figures equal to the plain counts?"""
    measure = "insight vs stats, a year"
    if result is None:
        return Row(measure, db, figure="failed", met=False, note=note.rstrip("; "))
    ratio = result.insight_ms / result.stats_ms if result.stats_ms else float("inf")
    wrong = "" if result.figures_ok else "; insight's figures differ from the plain counts"
    return Row(
        measure,
        db,
        "-",
        f"{result.insight_ms:.1f} ms",
        f"{result.stats_ms:.1f} ms",
        f"{ratio:.2f}x",
        f"< {INSIGHT_LIMIT}x",
        ratio < INSIGHT_LIMIT and result.figures_ok,
        note=(note or "")
        + (
            f"median of GET /api/v1/insights (figure) and GET /api/v1/stats (baseline) for a "
            f"year of {short(result.customers)} customers and {short(result.visits)} visits "
            f"(in-process, no server){wrong}"
        ),
    )


def run_insight(args) -> list[Row]:
    """bench/bench_insight_scale.py on each database (its output shown), a row for each."""
    if not INSIGHT_SCRIPT.exists():
        return [Row("insight vs stats", note="bench/bench_insight_scale.py is not there")]
    customers, visits = args.insight_size
    rows = []
    for kind in args.databases:
        argv = [
            sys.executable,
            str(INSIGHT_SCRIPT),
            "--customers",
            str(customers),
            "--visits",
            str(visits),
            "--no-check",
        ]
        if kind == "postgresql":
            if not postgres_url():
                continue
            argv += ["--database-url", postgres_url()]
        print(
            f"\n== insight vs stats ({kind}): {customers:,} customers, {visits:,} visits ==",
            flush=True,
        )
        done = run_process(
            argv, 3600, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        print(done.stdout, end="", flush=True)
        note = "" if done.returncode == 0 else f"bench_insight_scale.py exited {done.returncode}; "
        rows.append(insight_row(kind, parse_insight(done.stdout), note))
    return rows


# --- main ----------------------------------------------------------------------------------------


def describe(args, redis_url: str) -> None:
    describe_machine(args.wrk)
    print(
        f"load: wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency after a "
        f"{args.warmup} s warm-up; gunicorn --workers {args.workers}, sync and gthread "
        f"(--threads {args.gthreads}); rate limiter on, Redis {redis_url} (emptied at the start "
        "and the end)"
    )


def postgres_url() -> str:
    return (
        os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL") or ""
    ).strip()


def run(args, tmp: Path, servers: list[Server]) -> bool:
    """The whole suite; True if every target is met."""
    rows: list[Row] = []
    with redis_database(args.redis_url) as redis_url:
        describe(args, redis_url)
        suite = Suite(args, tmp, servers, redis_url)
        for index, kind in enumerate(args.databases):
            if kind == "postgresql" and not postgres_url():
                rows.append(
                    Row(
                        "PostgreSQL loads",
                        "postgresql",
                        note="skipped: set BENCH_DATABASE_URL (or TEST_DATABASE_URL) to a "
                        "PostgreSQL server the suite may create a database on",
                    )
                )
                print("\nPostgreSQL: skipped (no BENCH_DATABASE_URL or TEST_DATABASE_URL)")
                continue
            folder = tmp / kind
            folder.mkdir()
            with contextlib.ExitStack() as stack:
                if kind == "sqlite":
                    url = f"sqlite:///{folder / 'service.sqlite3'}"
                    bare_url = f"sqlite:///{folder / 'bare.sqlite3'}"
                else:
                    url = bare_url = stack.enter_context(postgres_database(postgres_url()))
                db = Database(kind, url, bare_url, folder)
                print(f"\n{kind}: db upgrade, API key, {REFERRERS:,} referrers", flush=True)
                prepare(db, redis_url)
                seed(db, suite.pool_per_load * len(args.kinds))
                for worker_kind in args.kinds:
                    rows += suite.run_kind(db, worker_kind, limiter_cost=index == 0)
                    for server in servers:
                        if server.running:
                            server.stop()
        if args.skip_scale:
            rows.append(Row("checkout at scale", note="skipped (--skip-scale)"))
        else:
            rows += run_scale(suite, args.scale_sizes)
            if args.scale_postgres and postgres_url():
                rows += run_scale(suite, args.scale_sizes, "postgresql")
            else:
                rows.append(
                    Row(
                        "checkout at scale",
                        "postgresql",
                        note="not run: --scale-postgres (with BENCH_DATABASE_URL or "
                        "TEST_DATABASE_URL) runs it, its 1M seeding takes several minutes",
                    )
                )
    if args.skip_stats:
        rows.append(Row("stats at scale", note="skipped (--skip-stats)"))
    else:
        rows += run_stats(args)
    if args.skip_insight:
        rows.append(Row("insight vs stats", note="skipped (--skip-insight)"))
    else:
        rows += run_insight(args)
    print("\n" + format_table(rows) + "\n\n" + LEGEND)
    met = all_ok(rows)
    print("\n" + verdict(rows))
    return met


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The benchmark suite: every target, one table.")
    parser.add_argument("--duration", type=int, default=8, help="seconds per load (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up (default 2)")
    parser.add_argument(
        "--quick", action="store_true", help="2 s loads, 1 s warm-ups, 10k vs 100k referrals"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--only",
        choices=("sqlite", "postgresql"),
        help="one database (default: both; PostgreSQL when its URL is set)",
    )
    parser.add_argument(
        "--kinds", default="sync,gthread", help="worker kinds (default sync,gthread)"
    )
    parser.add_argument(
        "--gthreads", type=int, default=4, help="threads per gthread worker (default 4)"
    )
    parser.add_argument(
        "--scale-sizes",
        help="referrals of the checkout-at-scale databases (default 10000,1000000; "
        "10000,100000 with --quick)",
    )
    parser.add_argument("--skip-scale", action="store_true", help="without the checkout at scale")
    parser.add_argument(
        "--scale-postgres",
        action="store_true",
        help="the checkout at scale on PostgreSQL too (its 1M seeding takes several minutes)",
    )
    parser.add_argument("--skip-stats", action="store_true", help="without the stats at scale")
    parser.add_argument(
        "--stats-clicks",
        help="clicks of the stats-at-scale steps (default 10000,1000000; 10000,100000 with "
        "--quick; the issue's figure: 10000,10000000, about 15 minutes more)",
    )
    parser.add_argument("--skip-insight", action="store_true", help="without insight vs stats")
    parser.add_argument(
        "--insight-size",
        help="customers and visits of the insight-vs-stats year (default 100000,5000000; "
        "10000,500000 with --quick)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"),
        help="a Redis database the suite empties at its start and end (default "
        "redis://127.0.0.1:6379/11, or BENCH_REDIS_URL)",
    )
    parser.add_argument(
        "--max-rate",
        type=int,
        default=1500,
        help="purchases a second the pool of friends is sized for (default 1500)",
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (2)")
    parser.add_argument("--wrk", default="wrk", help="the wrk program (default: from PATH)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the databases and logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 2, 1
        args.scale_sizes = args.scale_sizes or "10000,100000"
        args.stats_clicks = args.stats_clicks or "10000,100000"
        args.insight_size = args.insight_size or "10000,500000"
    args.stats_clicks = args.stats_clicks or "10000,1000000"
    args.insight_size = args.insight_size or "100000,5000000"
    if not re.fullmatch(r"\d[\d_]*,\d[\d_]*", args.insight_size):
        parser.error("--insight-size takes two numbers: customers,visits")
    args.insight_size = tuple(int(x.replace("_", "")) for x in args.insight_size.split(","))
    if args.insight_size[0] < 100 or args.insight_size[1] < 1000:
        parser.error("--insight-size needs at least 100 customers and 1000 visits")
    try:
        sizes = args.scale_sizes or "10000,1000000"
        args.scale_sizes = sorted({int(x.replace("_", "")) for x in sizes.split(",") if x.strip()})
    except ValueError:
        parser.error("--scale-sizes takes numbers separated by commas")
    if not re.fullmatch(r"\d[\d_]*(,\d[\d_]*)+", args.stats_clicks):
        parser.error("--stats-clicks takes two or more numbers separated by commas")
    if len(args.scale_sizes) < 2 or args.scale_sizes[-1] > 5_000_000:
        parser.error("--scale-sizes needs two sizes, at most 5,000,000")
    args.kinds = [x.strip() for x in args.kinds.split(",") if x.strip()]
    if not args.kinds or not set(args.kinds) <= {"sync", "gthread"}:
        parser.error("--kinds takes sync, gthread or both")
    args.databases = [args.only] if args.only else ["sqlite", "postgresql"]
    if not 1 <= args.duration <= 300 or not 0 <= args.warmup <= 60:
        parser.error("need --duration 1 to 300 s and --warmup 0 to 60 s")
    if not 1 <= args.threads <= args.connections <= 1000 or not 1 <= args.workers <= 64:
        parser.error("need 1 <= threads <= connections <= 1000 and 1 to 64 workers")
    if not 1 <= args.gthreads <= 64 or not 10 <= args.max_rate <= 100_000:
        parser.error("need --gthreads 1 to 64 and --max-rate 10 to 100000")
    return args


def main(argv=None) -> int:
    return run_main(run, parse_args(argv), "suite")


if __name__ == "__main__":
    sys.exit(main())

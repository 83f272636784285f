"""Where the time of each benchmarked path goes: cProfile of the service's hot paths and of the
baselines they are compared to, in one process, without the network or the WSGI server.

What it measures. The application is built in this process (`create_app()` from the
environment the benchmark suite gives its servers: its own secret key, the rate limiter on with
its counters in Redis, or in memory with `--redis-url memory://`, limits it never reaches) on a
fresh SQLite database in a temporary folder (or a PostgreSQL database made for the run from
`--database-url`, dropped at the end), migrated and seeded with `bench/seed.py`. Each path is
called straight through WSGI (a hand-made environ, the answer read and closed):

  * `GET /` of the bare Flask app (`bench/bare_app.py`), the baseline of the next two;
  * `GET /r/<code>?via=link`, a new visitor (User-Agent) each request, so a new click each; the
    click buffer is written by this thread every `--flush-every` requests (its writer thread
    is held back), so that the clicks' INSERT shows in the profile;
  * `GET /r/<code>/qr.png`, from the QR cache;
  * `POST /insert` of the bare one-row insert app (`bench/bare_insert_any_app.py`) on a database
    of its own of the same kind, the baseline of the next two;
  * `POST /api/v1/signups` (a new friend naming a referrer's code: attributed);
  * `POST /api/v1/purchases` (the first purchase of a seeded attributed friend: a reward).

For each: the mean wall and CPU microseconds per request over `--requests` calls without the
profiler, then the same number of calls under cProfile, printed as the own time per bucket
(Flask/werkzeug, flask-smorest/marshmallow, SQLAlchemy, the database driver, the rate limiter,
the click buffer, logging and request hooks, JSON, ...; each function goes to the bucket of the
file it is in, C functions by their name) scaled to the unprofiled mean (cProfile's own overhead
grows with the number of calls, so these are shares, not exact times), the time spent inside
each bucket once entered from outside it (its callees included), and the top functions by
cumulative and by own time. A last table puts each service path beside its baseline, bucket by
bucket. The ratios differ from `make bench`'s: gunicorn's HTTP parsing and writing, which both
sides pay, are left out here.

With `--scale 10000,1000000`: the first purchase at scale. For each size, a fresh SQLite
database gets 1,000 referrers and that many referrals (the bulk writer the suite uses for its
SQLite scale rows, `bench_checkout.populate`), plus pool friends (`seed.seed_pool`); then
`--scale-purchases` first purchases are made while every SQL statement is timed (SQLAlchemy's
before/after_cursor_execute events). The statements whose mean time per purchase grew from the
smallest size to the largest are listed with SQLite's EXPLAIN QUERY PLAN of each.

How to run it (from the repository root, Redis on 127.0.0.1:6379):

    .venv/bin/python bench/profile_paths.py                          # all paths, SQLite
    .venv/bin/python bench/profile_paths.py --requests 500 --paths redirect,bare
    .venv/bin/python bench/profile_paths.py --redis-url memory://     # limiter counters in memory
    .venv/bin/python bench/profile_paths.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test   # on PostgreSQL
    .venv/bin/python bench/profile_paths.py --paths none --scale 10000,1000000

`--redis-url` (default `redis://127.0.0.1:6379/13`) names a Redis database the run owns: it is
emptied at the start and at the end. The 1,000,000-referral database takes about 1 GB of disk
and a few minutes to write. Runs in one process on one core. Exit status 0, or 1 on a failure
(an answer with another status than the path's, or a database or Redis that does not answer).
"""

import argparse
import contextlib
import cProfile
import io
import logging
import os
import pstats
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_public import BROWSER_AGENT, BenchError  # noqa: E402
from harness import postgres_database, redis_database  # noqa: E402

SECRET = "bench-secret-key-0123456789abcdefghij"
REFERRERS = 1000
SIGNUP_CODES = 100
WARMUP = 50

# (bucket, substrings of a function's file or, for C functions, of its name); first match wins.
# A C function no rule names counts in the bucket of its main caller; a file no rule names in
# "package <name>" (site-packages) or "stdlib <module>".
BUCKETS = (
    ("harness (environ, loop)", ("bench/profile_paths.py",)),
    ("baseline app's own code", ("bench/bare_",)),
    ("rate limiter (Flask-Limiter, limits)", ("flask_limiter", "/limits/")),
    ("Redis client and socket I/O", ("/redis/", "_socket.socket", "select.", "selectors")),
    ("task queue (huey)", ("/huey/",)),
    ("SQLAlchemy ORM session", ("sqlalchemy/orm", "flask_sqlalchemy")),
    ("SQLAlchemy Core statements, compile, cache keys", ("sqlalchemy/sql",)),
    ("SQLAlchemy engine execute, rows, types", ("sqlalchemy/engine", "sqlalchemy/dialects")),
    ("SQLAlchemy pool, events, util", ("sqlalchemy",)),
    ("DB driver (sqlite3 / psycopg)", ("sqlite3", "psycopg")),
    ("smorest/marshmallow/webargs", ("flask_smorest", "marshmallow", "webargs", "apispec")),
    ("click buffer (domain/clicks.py)", ("referral_service/domain/clicks.py",)),
    (
        "logging, request id, metrics, headers",
        (
            "/logging/",
            "referral_service/logs.py",
            "referral_service/log_format.py",
            "referral_service/request_id.py",
            "referral_service/metrics.py",
            "referral_service/security.py",
        ),
    ),
    ("JSON (json, flask.json)", ("/json/", "flask/json", "_json.", "orjson")),
    ("i18n (Babel)", ("babel",)),
    ("QR (segno)", ("segno", "qrcode")),
    ("crypto (hmac, hashlib, secrets)", ("hmac", "hashlib", "secrets.py", "_sha", "_blake")),
    ("Flask/werkzeug routing+request", ("/flask/", "/werkzeug/", "/itsdangerous/", "blinker")),
    ("service code (referral_service)", ("referral_service/",)),
)


def _named(text: str) -> str | None:
    for bucket, marks in BUCKETS:
        if any(mark in text for mark in marks):
            return bucket
    return None


def _bucket(key: tuple, stats: dict, seen: frozenset = frozenset()) -> str:
    filename, _, name = key
    if filename != "~":
        found = _named(filename)
        if found:
            return found
        if "site-packages/" in filename:
            return "package " + filename.split("site-packages/", 1)[1].split("/")[0]
        module = Path(filename).name.removesuffix(".py")
        return "stdlib " + (Path(filename).parent.name if module == "__init__" else module)
    found = _named(name)
    if found:
        return found
    callers = stats.get(key, (0, 0, 0, 0, {}))[4]
    if not callers or key in seen:
        return "builtins"
    caller = max(callers.items(), key=lambda item: item[1][3])[0]
    return _bucket(caller, stats, seen | {key})


def buckets_of(stats: dict) -> dict:
    """Each pstats function key's bucket."""
    return {key: _bucket(key, stats) for key in stats}


# --- calling a WSGI app -------------------------------------------------------------------------


def call(app, method: str, path: str, query: str = "", headers=None, body: bytes = b""):
    """One request straight through WSGI: (status code, body bytes)."""
    environ = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
        environ["CONTENT_TYPE"] = "application/json"
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    answer = {}

    def start_response(status, response_headers, exc_info=None):
        answer["status"] = int(status.split(" ", 1)[0])

    result = app(environ, start_response)
    try:
        data = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    return answer["status"], data


# --- the paths ----------------------------------------------------------------------------------


class Path_:
    """A path to load: `make(i)` returns (method, path, query, headers, body) of request i."""

    def __init__(self, key, name, app, expected, make, after=None, baseline=None):
        self.key, self.name, self.app, self.expected, self.make = key, name, app, expected, make
        self.after = after  # called after every request with its index (the click flush)
        self.baseline = baseline


def run_requests(path: Path_, start: int, count: int) -> None:
    for i in range(start, start + count):
        method, url, query, headers, body = path.make(i)
        status, data = call(path.app, method, url, query, headers, body)
        if status != path.expected:
            raise BenchError(f"{path.name}: request {i} answered {status}: {data[:300]!r}")
        if path.after:
            path.after(i)


class Counts:
    """SQL statements (by their first word) and Redis commands (by name) while `on`."""

    def __init__(self, engine=None):
        import redis
        from sqlalchemy import event

        self.on = False
        self.sql: dict[str, int] = defaultdict(int)
        self.redis: dict[str, int] = defaultdict(int)
        self.sends = 0
        if engine is not None:
            event.listen(engine, "before_cursor_execute", self._statement)
        counts = self
        command = redis.client.Redis.execute_command
        send = redis.connection.AbstractConnection.send_packed_command

        def execute_command(client, *args, **options):
            if counts.on:
                counts.redis[str(args[0]).split()[0].upper()] += 1
            return command(client, *args, **options)

        def send_packed_command(connection, *args, **options):
            if counts.on:
                counts.sends += 1
            return send(connection, *args, **options)

        redis.client.Redis.execute_command = execute_command
        redis.connection.AbstractConnection.send_packed_command = send_packed_command

    def _statement(self, conn, cursor, statement, parameters, context, executemany):
        if self.on:
            self.sql[statement.split(None, 1)[0].upper()] += 1

    def line(self, requests: int) -> str:
        def listed(found):
            return ", ".join(f"{n / requests:.1f} {name}" for name, n in sorted(found.items()))

        sql = sum(self.sql.values()) / requests
        commands = sum(self.redis.values()) / requests
        return (
            f"    per request: {sql:.1f} SQL statements ({listed(self.sql) or '-'}); "
            f"{commands:.1f} Redis commands ({listed(self.redis) or '-'}) in "
            f"{self.sends / requests:.1f} round trips"
        )


COUNTS: list[Counts] = []


def measure(path: Path_, count: int, top: int) -> dict:
    """Unprofiled mean µs per request, then a profile of `count` more requests."""
    counts = COUNTS[0] if COUNTS else None
    if counts:
        counts.on, counts.sql, counts.redis, counts.sends = True, defaultdict(int), {}, 0
        counts.redis = defaultdict(int)
    try:
        run_requests(path, 0, WARMUP)
    finally:
        if counts:
            counts.on = False
    wall, cpu = time.perf_counter(), time.process_time()
    run_requests(path, WARMUP, count)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    profile = cProfile.Profile()
    profiled = time.perf_counter()
    profile.enable()
    run_requests(path, WARMUP + count, count)
    profile.disable()
    profiled = time.perf_counter() - profiled
    stats = pstats.Stats(profile)
    result = report(path.name, stats, count, wall / count * 1e6, cpu / count * 1e6, profiled, top)
    if counts:
        print(counts.line(WARMUP))
    return result


def report(name, stats, count, wall_us, cpu_us, profiled_s, top) -> dict:
    """Print the profile of one path; return its own µs per bucket (scaled to `wall_us`)."""
    bucket = buckets_of(stats.stats)
    own: dict[str, float] = defaultdict(float)
    entered: dict[str, float] = defaultdict(float)
    total = 0.0
    for key, (_, _, tottime, _, callers) in stats.stats.items():
        own[bucket[key]] += tottime
        total += tottime
        for caller, edge in callers.items():
            if bucket.get(caller) != bucket[key]:
                entered[bucket[key]] += edge[3]
    per_request = total / count * 1e6
    scale = wall_us / per_request if total else 0.0
    print(f"\n=== {name}: {wall_us:,.0f} µs/request wall, {cpu_us:,.0f} µs CPU ({count} requests)")
    print(
        f"    under cProfile {profiled_s / count * 1e6:,.0f} µs/request; buckets below are "
        f"cProfile's shares scaled to the unprofiled {wall_us:,.0f} µs"
    )
    print(f"    {'bucket (own time)':<46} {'own µs':>8} {'share':>6} {'entered µs':>11}")
    scaled = {}
    for name_, seconds in sorted(own.items(), key=lambda item: -item[1]):
        us = seconds / count * 1e6 * scale
        scaled[name_] = us
        if us < 1:
            continue
        within = entered.get(name_, 0.0) / count * 1e6 * scale
        print(f"    {name_:<46} {us:>8,.1f} {seconds / total:>6.0%} {within:>11,.1f}")
    print(
        "    (entered: time from entering the bucket from another one, its callees included;\n"
        "     overlaps where buckets call each other back, as Flask and the views do)"
    )
    for title, column in (("cumulative", 3), ("own", 2)):
        print(f"  top {top} by {title} time (µs/request under cProfile, calls/request, bucket):")
        rows = sorted(
            (
                item
                for item in stats.stats.items()
                if column == 2 or item[1][3] < 0.9 * total  # not the request's wrappers
            ),
            key=lambda item: -item[1][column],
        )[:top]
        for key, row in rows:
            filename, line, function = key
            where = function if filename == "~" else f"{short_file(filename)}:{line} {function}"
            print(
                f"    {row[column] / count * 1e6:>8,.1f} {row[1] / count:>6.1f}  "
                f"{where[:72]:<72} [{bucket[key].split(' (')[0]}]"
            )
    return {"wall": wall_us, "cpu": cpu_us, "own": scaled}


def short_file(filename: str) -> str:
    for mark in ("site-packages/", "bench/", "lib/python3.11/"):
        if mark in filename:
            return filename.split(mark, 1)[1]
    return filename


# --- the application ----------------------------------------------------------------------------


def environment(tmp: Path, database_url: str, redis_url: str) -> None:
    """The settings the benchmark suite gives its servers (bench_public.service_env)."""
    for name in ("REDIS_URL", "SECRET_KEY_FALLBACKS"):
        os.environ.pop(name, None)
    os.environ.update(
        DATABASE_URL=database_url,
        SECRET_KEY=SECRET,
        CLICK_SPILL_DIR=str(tmp / "clicks-spill"),
        PUBLIC_BASE_URL="http://127.0.0.1:8000",
        RATELIMIT_PUBLIC="1000000000/minute",
        RATELIMIT_API="1000000000/minute",
        RATELIMIT_SIGNUPS_PER_REFERRER="1000000000/hour",
        RATELIMIT_ENABLED="true",
        REFERRAL_SERVICE_DOTENV="0",
    )
    if redis_url.startswith(("redis://", "rediss://", "unix://")):
        os.environ["REDIS_URL"] = redis_url


def build_service(tmp: Path, database_url: str, redis_url: str):
    """The migrated, empty service app and a shop API key."""
    from flask_migrate import upgrade

    from referral_service import create_app
    from referral_service.domain import api_keys

    environment(tmp, database_url, redis_url)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    app = create_app()
    with app.app_context():
        upgrade()
        key = api_keys.create("profile", "shop").secret
    clicks = app.extensions["clicks"]
    clicks.interval = 3600.0  # the writer thread sleeps: clicks are written by `flush` below
    clicks.flush_size = 10**9
    return app, key


def bare_insert_app(url: str):
    """bench/bare_insert_any_app.py on `url` (it reads BARE_INSERT_URL when imported)."""
    os.environ["BARE_INSERT_URL"] = url
    sys.modules.pop("bare_insert_any_app", None)
    import bare_insert_any_app

    return bare_insert_any_app.app


def engine_for(app):
    from referral_service.extensions import db

    with app.app_context():
        return db.engine


def profile_paths(args, tmp: Path, database_url: str, bare_url: str) -> None:
    import json

    import bare_app
    from seed import seed_pool, seed_referrers

    app, key = build_service(tmp, database_url, args.redis_url)
    engine = engine_for(app)
    COUNTS[:] = [Counts(engine)]
    referrers = seed_referrers(engine, REFERRERS, SECRET)
    pool = 2 * args.requests + WARMUP
    seed_pool(engine, referrers, 0, pool)
    auth = {"Authorization": f"Bearer {key}", "User-Agent": "profile/1"}
    code = referrers[0].code
    clicks = app.extensions["clicks"]

    def flush(i):
        if (i + 1) % args.flush_every == 0:
            clicks.flush()

    def post(url, payload):
        return ("POST", url, "", auth, json.dumps(payload).encode())

    bare_get = Path_(
        "bare", "bare Flask GET /", bare_app.app, 200, lambda i: ("GET", "/", "", {}, b"")
    )
    bare_insert = Path_(
        "bare-insert",
        "bare POST /insert",
        bare_insert_app(bare_url),
        201,
        lambda i: post("/insert", {"external_id": f"b-{i}", "email": f"b-{i}@example.com"}),
    )
    agent = BROWSER_AGENT + " visitor/"
    paths = [
        bare_get,
        Path_(
            "redirect",
            "GET /r/<code>?via=link",
            app,
            302,
            lambda i: ("GET", f"/r/{code}", "via=link", {"User-Agent": f"{agent}{i}"}, b""),
            after=flush,
            baseline=bare_get,
        ),
        Path_(
            "qr",
            "GET /r/<code>/qr.png (cached)",
            app,
            200,
            lambda i: ("GET", f"/r/{code}/qr.png", "", {"User-Agent": agent}, b""),
            baseline=bare_get,
        ),
        bare_insert,
        Path_(
            "signups",
            "POST /api/v1/signups",
            app,
            201,
            lambda i: post(
                "/api/v1/signups",
                {
                    "external_id": f"s-{i}",
                    "email": f"s-{i}@example.com",
                    "referral_code": referrers[i % SIGNUP_CODES].code,
                },
            ),
            baseline=bare_insert,
        ),
        Path_(
            "purchases",
            "POST /api/v1/purchases",
            app,
            201,
            lambda i: post(
                "/api/v1/purchases",
                {
                    "order_id": f"p-{i}",
                    "customer_external_id": f"pool-{i:08d}",
                    "amount": "49.90",
                    "currency": "EUR",
                },
            ),
            baseline=bare_insert,
        ),
    ]
    wanted = set(args.paths.split(","))
    named = {p for p in paths if "all" in wanted or p.key in wanted}
    chosen = [p for p in paths if p in named or any(q.baseline is p for q in named)]
    results = {}
    for path in chosen:
        results[path.name] = measure(path, args.requests, args.top)
    clicks.flush()
    compare(chosen, results)
    engine.dispose()


def compare(paths, results) -> None:
    """Each service path beside its baseline, bucket by bucket (µs per request)."""
    for path in paths:
        if path.baseline is None or path.baseline.name not in results:
            continue
        mine, base = results[path.name], results[path.baseline.name]
        print(f"\n--- {path.name} vs {path.baseline.name} (µs/request, in-process)")
        print(f"    {'bucket':<46} {'service':>8} {'baseline':>9}")
        buckets = sorted(
            set(mine["own"]) | set(base["own"]),
            key=lambda b: -(mine["own"].get(b, 0.0) + base["own"].get(b, 0.0)),
        )
        rest = [0.0, 0.0]
        for bucket in buckets:
            a, b = mine["own"].get(bucket, 0.0), base["own"].get(bucket, 0.0)
            if a >= 15 or b >= 15:
                print(f"    {bucket:<46} {a:>8,.1f} {b:>9,.1f}")
            else:
                rest[0] += a
                rest[1] += b
        print(f"    {'the rest (buckets under 15 µs)':<46} {rest[0]:>8,.1f} {rest[1]:>9,.1f}")
        print(
            f"    {'total wall':<46} {mine['wall']:>8,.1f} {base['wall']:>9,.1f}   ratio "
            f"{base['wall'] / mine['wall']:.2f} (CPU {base['cpu'] / mine['cpu']:.2f})"
        )


# --- the first purchase at scale ----------------------------------------------------------------


class StatementTimer:
    """Every statement's time, by its SQL text (SQLAlchemy cursor events)."""

    def __init__(self, engine):
        from sqlalchemy import event

        self.times: dict[str, list[float]] = defaultdict(list)
        self.params: dict[str, object] = {}
        self.on = False
        event.listen(engine, "before_cursor_execute", self.before)
        event.listen(engine, "after_cursor_execute", self.after)

    def before(self, conn, cursor, statement, parameters, context, executemany):
        conn.info["profile_started"] = time.perf_counter()

    def after(self, conn, cursor, statement, parameters, context, executemany):
        if self.on:
            self.times[statement].append(time.perf_counter() - conn.info["profile_started"])
            self.params.setdefault(statement, parameters)


def scale_run(args, tmp: Path, size: int) -> dict:
    """`--scale-purchases` first purchases on a SQLite database with `size` referrals, timed
    without the profiler (every statement timed), then as many under cProfile: {timer, wall,
    cpu (µs per purchase), stats (pstats.Stats), engine}."""
    import json

    from bench_checkout import Population, populate
    from seed import Referrer, seed_pool

    folder = tmp / f"scale-{size}"
    folder.mkdir()
    database = folder / "service.sqlite3"
    app, key = build_service(folder, f"sqlite:///{database}", args.redis_url)
    engine = engine_for(app)
    engine.dispose()
    population = Population(database)
    populate(population, REFERRERS, size)
    referrers = [Referrer(*r) for r in population.referrers]
    count = args.scale_purchases
    seed_pool(engine, referrers, 0, 2 * count + WARMUP)
    timer = StatementTimer(engine)
    auth = {"Authorization": f"Bearer {key}"}

    def purchase(i):
        body = {
            "order_id": f"p-{i}",
            "customer_external_id": f"pool-{i:08d}",
            "amount": "49.90",
            "currency": "EUR",
        }
        status, data = call(app, "POST", "/api/v1/purchases", "", auth, json.dumps(body).encode())
        if status not in (200, 201) or b'"first_purchase":true' not in data.replace(b" ", b""):
            raise BenchError(f"purchase {i} at {size:,} answered {status}: {data[:300]!r}")

    for i in range(WARMUP):
        purchase(i)
    timer.on = True
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(WARMUP, WARMUP + count):
        purchase(i)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    timer.on = False
    profile = cProfile.Profile()
    profile.enable()
    for i in range(WARMUP + count, WARMUP + 2 * count):
        purchase(i)
    profile.disable()
    return {
        "timer": timer,
        "wall": wall / count * 1e6,
        "cpu": cpu / count * 1e6,
        "stats": pstats.Stats(profile),
        "engine": engine,
    }


def grown_functions(small, large, count: int, top: int) -> None:
    """The functions whose own time per purchase grew most from `small` to `large` (pstats)."""
    a, b = small.stats, large.stats
    rows = []
    for key in set(a) | set(b):
        own_a = a[key][2] if key in a else 0.0
        own_b = b[key][2] if key in b else 0.0
        calls_a = a[key][1] if key in a else 0
        calls_b = b[key][1] if key in b else 0
        rows.append((own_b - own_a, own_a, own_b, calls_a, calls_b, key))
    rows.sort(reverse=True)
    total_a = sum(row[2] for row in a.values()) / count * 1e6
    total_b = sum(row[2] for row in b.values()) / count * 1e6
    print(
        f"\n--- own time per purchase under cProfile: {total_a:,.0f} vs {total_b:,.0f} µs; "
        "the functions that grew most (µs, calls per purchase)"
    )
    print(f"    {'grown':>8} {'small':>8} {'large':>8} {'calls':>13}  function")
    for grown, own_a, own_b, calls_a, calls_b, key in rows[:top]:
        filename, line, function = key
        where = function if filename == "~" else f"{short_file(filename)}:{line} {function}"
        calls = f"{calls_a / count:.1f}/{calls_b / count:.1f}"
        print(
            f"    {grown / count * 1e6:>8,.1f} {own_a / count * 1e6:>8,.1f} "
            f"{own_b / count * 1e6:>8,.1f} {calls:>13}  {where[:80]}"
        )


def explain(engine, statement: str, parameters) -> list[str]:
    with engine.connect() as connection:
        rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
    return [str(row[-1]) for row in rows]


def scale(args, tmp: Path) -> None:
    sizes = sorted(int(x.replace("_", "")) for x in args.scale.split(","))
    count = args.scale_purchases
    runs = {}
    for size in sizes:
        print(f"\n=== first purchases at {size:,} referrals (SQLite) ===", flush=True)
        run_ = runs[size] = scale_run(args, tmp, size)
        sql = sum(sum(t) for t in run_["timer"].times.values()) / count * 1e6
        statements = sum(len(t) for t in run_["timer"].times.values()) / count
        print(
            f"    {run_['wall']:,.0f} µs/purchase wall, {run_['cpu']:,.0f} µs CPU; "
            f"{statements:.1f} statements taking {sql:,.0f} µs (cursor.execute, fetches aside)",
            flush=True,
        )
    small, large = runs[sizes[0]], runs[sizes[-1]]
    print(
        f"\n--- statements per purchase, {sizes[0]:,} vs {sizes[-1]:,} referrals (µs per "
        f"purchase; wall {small['wall']:,.0f} vs {large['wall']:,.0f} µs, "
        f"{large['wall'] / small['wall']:.2f}x; CPU {small['cpu']:,.0f} vs "
        f"{large['cpu']:,.0f} µs, {large['cpu'] / small['cpu']:.2f}x)"
    )
    rows = []
    for statement in set(small["timer"].times) | set(large["timer"].times):
        a = sum(small["timer"].times.get(statement, [])) / count * 1e6
        b = sum(large["timer"].times.get(statement, [])) / count * 1e6
        rows.append((b - a, a, b, statement))
    rows.sort(reverse=True)
    print(f"    {'grown':>8} {'small':>8} {'large':>8}  statement")
    for grown, a, b, statement in rows[: args.top]:
        print(f"    {grown:>8,.1f} {a:>8,.1f} {b:>8,.1f}  {' '.join(statement.split())[:240]}")
    print("\n--- query plans (at the large size) of the statements that grew by 5 µs or more")
    for grown, _, _, statement in rows:
        if grown < 5:
            break
        if not statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "INSERT")):
            continue
        print(f"  {' '.join(statement.split())}")
        for line in explain(large["engine"], statement, large["timer"].params[statement]):
            print(f"      {line}")
    grown_functions(small["stats"], large["stats"], count, args.top)
    selects = [row for row in rows if row[3].lstrip().upper().startswith("SELECT")]
    if args.try_index and selects:
        statement = selects[0][3]
        try_indexes(large["engine"], statement, large["timer"].params[statement], args.try_index)
    for run_ in runs.values():
        run_["engine"].dispose()


def try_indexes(engine, statement: str, parameters, indexes: list[str]) -> None:
    """Time the statement that grew most at the large size as it is, then with each candidate
    index (`table(column, ...)`) made in the scratch database, planned and timed, dropped."""

    def timed() -> float:
        with engine.connect() as connection:
            connection.exec_driver_sql(statement, parameters).all()  # pages into the cache
            started = time.perf_counter()
            for _ in range(100):
                connection.exec_driver_sql(statement, parameters).all()
            return (time.perf_counter() - started) / 100 * 1e6

    print(f"\n--- candidate indexes for: {' '.join(statement.split())}")
    print(f"    as it is: {timed():,.1f} µs per execution (warm, 100 runs)")
    for index in indexes:
        table, _, columns = index.partition("(")
        with engine.begin() as connection:
            connection.exec_driver_sql(f"CREATE INDEX profile_candidate ON {table}({columns}")
        try:
            plan = "; ".join(explain(engine, statement, parameters))
            print(f"    with an index on {index}: {timed():,.1f} µs per execution; plan: {plan}")
        finally:
            with engine.begin() as connection:
                connection.exec_driver_sql("DROP INDEX profile_candidate")


# --- main ---------------------------------------------------------------------------------------


def run(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="referral-profile-"))
    try:
        with contextlib.ExitStack() as stack:
            if args.redis_url.startswith(("redis://", "rediss://", "unix://")):
                stack.enter_context(redis_database(args.redis_url))
            if args.paths != "none":
                if args.database_url:
                    url = stack.enter_context(postgres_database(args.database_url, "profile"))
                    bare_url = stack.enter_context(
                        postgres_database(args.database_url, "profile_bare")
                    )
                else:
                    url = f"sqlite:///{tmp / 'service.sqlite3'}"
                    bare_url = f"sqlite:///{tmp / 'bare.sqlite3'}"
                profile_paths(args, tmp, url, bare_url)
            if args.scale:
                scale(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per path (2000)")
    parser.add_argument(
        "--paths",
        default="all",
        help="comma-separated: all, redirect, qr, signups, purchases (each with its baseline), "
        "or none (all)",
    )
    parser.add_argument("--database-url", help="a PostgreSQL URL to make the databases from")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/13",
        help="the limiter's counters and the task queue (a database the run empties), or "
        "memory:// (default redis://127.0.0.1:6379/13)",
    )
    parser.add_argument("--flush-every", type=int, default=250, help="clicks per write (250)")
    parser.add_argument("--top", type=int, default=15, help="functions listed per table (15)")
    parser.add_argument("--scale", help="referral counts for the purchase at scale: 10000,1000000")
    parser.add_argument(
        "--scale-purchases", type=int, default=300, help="purchases timed per size (300)"
    )
    parser.add_argument(
        "--try-index",
        action="append",
        default=[],
        help="with --scale: time the statement that grew most with this index too, made in the "
        "scratch database, e.g. 'referrals(referrer_id, status, converted_at)' (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        run(args)
    except BenchError as error:
        print(f"\nprofile failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

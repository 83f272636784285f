"""Throughput of the checkout calls (sign-ups, purchases), against a bare insert, and at scale.

What it measures: requests per second, latency (p50/p99), errors and server CPU time per request
of

  * `POST /insert` of a bare Flask app (`bench/bare_insert_any_app.py`) that inserts one row into
    SQLite and commits, with the service's SQLite settings: the baseline, loaded before and
    after each service load (the mean of those two runs is that load's baseline, so that a
    machine whose speed drifts moves both sides of the ratio alike);
  * `POST /api/v1/signups`: every request a new friend with the valid code of an enrolled
    referrer, so every sign-up is attributed (a customer, a code, a referral, a sign-up row);
  * `POST /api/v1/purchases`: every request the first purchase of a distinct attributed friend,
    so every one converts its referral and earns the referrer a reward;

each as a ratio of the baseline, beside its target (>= 0.4). Then the scale part: the same two
loads on databases pre-populated with 10,000 and with 1,000,000 referrals (`--sizes`), with the
slowdown from the smallest to the largest size (req/s at the smallest / req/s at the largest)
beside its target (at most 1.3 times slower).

Every request carries a unique `external_id` / `order_id` (a wrk Lua script: a random prefix per
wrk thread and run, plus a counter; the purchases walk through a pool of attributed friends
created for them with bulk SQL). wrk counts responses of 400 or more as errors; a load with more
than 1% errors fails the run. After each load the database is checked: every answered sign-up
left an attributed sign-up, every answered purchase was a first purchase with one reward (so a
200 replay, or any answer that wrote nothing, would fail the run too).

The databases are SQLite files in a temporary directory, made with `referral-service db upgrade`;
the pre-population (referrers, friends with their codes, sign-ups and referrals, a mix of
attributed, converted and rejected ones, purchases and rewards for the converted) is written with
the `sqlite3` module in one transaction per table. Both applications run under gunicorn with
the same settings (sync workers, `--workers 2`, free ports on 127.0.0.1) and are loaded one at a
time with wrk (`-t2 -c16`), each load after a warm-up. Before each load the benchmark waits
(up to 10 minutes) until no other `wrk` runs on the machine; the share of the CPUs other work
took meanwhile is reported (`other`: above a few percent, that load's figures are disturbed).
A service load during which other work took more than 15% of the CPUs is made again (twice at
most, `--retries`), and the least disturbed attempt counts. The temporary directory is removed at
the end, even on Ctrl-C.

Then the events part: what the transactional outbox costs the checkout. A fresh database
(with `--referrers` referrers) is served by two gunicorns with the same settings, side by side:
the service (`referral_service.wsgi`, every business step writes its events in its transaction
and queues the relay after its commit) and the same service with the outbox write switched off
(`bench/events_off_app.py`), with the rate limiter on in both and `referral-service worker`
running beside them (it relays the events as they come; no webhook endpoint is registered, so
the events cost the outbox row, the queued relay and the relay's own transaction, not
deliveries). Sign-ups, then purchases, are loaded on each in turn, alternating which goes first
(`--event-rounds` pairs); the cost is the mean req/s without events over the mean with them,
minus one (target: at most +10 %), beside the server CPU per request of each and the worker's
CPU per request of the loads with events. Every event the loads wrote must be relayed within
30 s of the last load.

How to run it (from the repository root):

    .venv/bin/python bench/bench_checkout.py                  # 10 s loads, 10k and 1M (~5 min)
    .venv/bin/python bench/bench_checkout.py --events-only    # only the events part (~2 min)
    .venv/bin/python bench/bench_checkout.py --skip-events    # without the events part
    .venv/bin/python bench/bench_checkout.py --quick          # 3 s loads
    .venv/bin/python bench/bench_checkout.py --skip-scale     # only the ratios to the bare insert
    .venv/bin/python bench/bench_checkout.py --sizes 10000,100000 --scale-duration 5
    .venv/bin/python bench/bench_checkout.py --help           # threads, connections, ...

Needs: the service installed in the running Python (`pip install -e '.[dev]'`, which brings
gunicorn), `wrk` on the PATH (`apt-get install wrk`), and about 1.5 GB of free disk for the
1,000,000-referral database. Exit status: 0 when the runs complete (with `--check`: only if
every target is met), 1 on a failure (including errors above 1% or a failed database check),
2 without wrk.
"""

import argparse
import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from array import array
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from string import Template

from bench_public import (
    BENCH,
    QUIET,
    ROOT,
    WRK_SCRIPT,
    BenchError,
    Load,
    Round,
    Server,
    WrkResult,
    add_load_options,
    console_script,
    free_port,
    gunicorn_argv,
    measure,
    request,
    run_cli,
    run_main,
    run_process,
    service_env,
    wrk,
)
from harness import describe_machine

from referral_service.domain.codes import CodeSigner

SECRET = "bench-secret-key-0123456789abcdefghij"
SIGNUP_TARGET = 0.4
PURCHASE_TARGET = 0.4
SLOWDOWN_TARGET = 1.3
ERROR_LIMIT = 0.01  # a load with more errors than this share of its requests fails the run
WAIT_LIMIT = 600.0  # seconds to wait for another benchmark's wrk to finish
WAIT_POLL = 2.0
DISTURBED = 0.15  # a load is made again if other work took more of the CPUs
SIGNUP_CODES = 100  # referrers whose codes the sign-up load types, in turn
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy stores a DateTime in SQLite
CHANNELS = ("code", "link", "qr", "email", "whatsapp", "sms", "facebook", "copy")
REWARD_STATUSES = ("pending", "awaiting_approval", "approved", "rejected", "reversed")

# The request part of the wrk scripts (`WRK_SCRIPT` of bench_public.py, which prints the summary,
# is appended). Every Lua state (one per wrk thread) draws its own random prefix, so ids are
# unique across threads and runs.
LUA_COMMON = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"

local urandom = io.open("/dev/urandom", "rb")
local prefix = (urandom:read(6):gsub(".", function(c) return string.format("%02x", c:byte()) end))
urandom:close()
local n = 0
"""

LUA_INSERT = """\
request = function()
  n = n + 1
  local id = "b-" .. prefix .. "-" .. n
  return wrk.format(nil, nil, nil, string.format(
    '{"external_id":"%s","email":"%s@example.com"}', id, id))
end
"""

LUA_SIGNUP = """\
local codes = {$codes}

request = function()
  n = n + 1
  local id = "s-" .. prefix .. "-" .. n
  return wrk.format(nil, nil, nil, string.format(
    '{"external_id":"%s","email":"%s@example.com","referral_code":"%s"}',
    id, id, codes[n % #codes + 1]))
end
"""

# Thread k (from 0) of T buys for pool friends first + k, first + k + T, ...: each a first
# purchase. `setup` runs in wrk's main Lua state and hands each thread its slot.
LUA_PURCHASE = """\
local first, threads = $first, $threads
local slots = 0

function setup(thread)
  thread:set("slot", slots)
  slots = slots + 1
end

request = function()
  local i = first + slot + n * threads
  n = n + 1
  return wrk.format(nil, nil, nil, string.format(
    '{"order_id":"bench-%s-%d","customer_external_id":"pool-%08d",'
    .. '"amount":"49.90","currency":"EUR"}', prefix, i, i))
end
"""


def stamp(moment: datetime) -> str:
    return moment.strftime(SQLITE_TIME)


def utcnow() -> datetime:
    """Now in UTC, naive, as the service stores times in SQLite."""
    return datetime.now(UTC).replace(tzinfo=None)


def _insert(connection: sqlite3.Connection, table: str, columns: str, rows) -> None:
    """executemany in one transaction."""
    marks = ", ".join("?" * len(columns.split(",")))
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


CUSTOMER_COLUMNS = "id, external_id, email, email_key, name, locale, created_at, updated_at, origin"
CODE_COLUMNS = "id, customer_id, code, created_at, revoked_at"
SIGNUP_COLUMNS = "id, customer_id, attributed, reason, referral_id, code, click_id, occurred_at"
REFERRAL_COLUMNS = (
    "id, referrer_id, friend_id, code_id, click_id, channel, status, attributed_at, "
    "converted_at, order_id, risk_score, risk_reasons"
)
# the pool's referrals: attributed, neither converted nor flagged
POOL_REFERRAL_COLUMNS = (
    "id, referrer_id, friend_id, code_id, click_id, channel, status, attributed_at, risk_score, "
    "risk_reasons"
)
PURCHASE_COLUMNS = (
    "id, order_id, customer_id, amount_minor, refunded_minor, currency, occurred_at, created_at, "
    "response"
)
REWARD_COLUMNS = (
    "id, referral_id, purchase_id, customer_id, beneficiary, rule_type, rule_value, "
    "amount_minor, currency, status, available_at, created_at, updated_at, note, payout_id"
)


class Population:
    """Rows written straight into the service's SQLite database (bypassing the service).

    Referrers have real codes (signed like the service's, under the bench's SECRET_KEY); friends get
    lower-case placeholder codes, which no code the service issues can equal. The purchase load
    uses a pool of attributed friends, `pool-00000000`, `pool-00000001`, ..., with no purchase.
    """

    def __init__(self, path: Path, seed: int = 1):
        self.path = path
        self.rng = random.Random(seed)
        self.signer = CodeSigner(SECRET)
        self.referrers: list[tuple[int, int, str]] = []  # customer id, code id, code
        self.friends = 0  # friends made so far: fr-00000000 ...
        self.pool_end = 0  # pool friends made so far: pool-00000000 ... pool-<pool_end - 1>

    def connect(self, bulk: bool = False) -> sqlite3.Connection:
        """A connection; `bulk`: no journal and no syncing, only while the service is down."""
        connection = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        connection.execute("PRAGMA busy_timeout=30000")
        if bulk:
            connection.execute("PRAGMA journal_mode=DELETE")
            connection.execute("PRAGMA synchronous=OFF")
            connection.execute("PRAGMA cache_size=-262144")  # 256 MB
        else:
            connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    @staticmethod
    def _next_ids(connection, *tables: str) -> list[int]:
        return [
            connection.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {table}").fetchone()[0]
            for table in tables
        ]

    def add_referrers(self, connection, count: int) -> None:
        """Enrolled customers with signed codes (`ref-0000000`, ...)."""
        customer0, code0 = self._next_ids(connection, "customers", "referral_codes")
        start = len(self.referrers)
        codes: dict[str, None] = {}
        while len(codes) < count:
            codes[self.signer.issue()] = None
        created = stamp(utcnow() - timedelta(days=400))
        customers, rows = [], []
        for i, code in enumerate(codes):
            external = f"ref-{start + i:07d}"
            email = f"{external}@example.com"
            name = f"Referrer {start + i}"
            customers.append(
                (customer0 + i, external, email, email, name, "pl", created, created, "enrolled")
            )
            rows.append((code0 + i, customer0 + i, code, created, None))
            self.referrers.append((customer0 + i, code0 + i, code))
        _insert(connection, "customers", CUSTOMER_COLUMNS, customers)
        _insert(connection, "referral_codes", CODE_COLUMNS, rows)

    def add_referrals(self, connection, count: int) -> None:
        """Friends signed up through a referrer's code over the past year: about 55% converted
        (one purchase, a fifth of them a second one; one reward for the referrer), 40% still
        attributed (most of them long outside the conversion window), 5% rejected."""
        rng, referrers = self.rng, self.referrers
        if not referrers:
            raise BenchError("add referrers before referrals")
        now = utcnow()
        tables = ("customers", "referral_codes", "referrals", "signups", "purchases", "rewards")
        customer0, code0, referral0, signup0, purchase0, reward0 = self._next_ids(
            connection, *tables
        )
        base = self.friends
        # per friend: its referrer, its status (0 attributed, 1 converted, 2 converted and a
        # second purchase, 3 rejected) and its age in minutes; the rest is derived in order
        who = array("I", (rng.randrange(len(referrers)) for _ in range(count)))
        status = bytearray(
            0 if x < 0.40 else 1 if x < 0.84 else 2 if x < 0.95 else 3
            for x in (rng.random() for _ in range(count))
        )
        age = array("I", (rng.randrange(1440, 365 * 1440) for _ in range(count)))

        # the times as stored, formatted once (strftime is most of the cost of a row)
        minute = timedelta(minutes=1)
        attributed = [stamp(now - minute * x) for x in age]
        converted = [stamp(now - minute * (x - x // 2)) for x in age]
        available = [stamp(now - minute * (x - x // 2 - 14 * 1440)) for x in age]  # 14 days on

        def customers():
            for i in range(count):
                external = f"fr-{base + i:08d}"
                email, at = f"{external}@example.com", attributed[i]
                yield customer0 + i, external, email, email, None, None, at, at, "signup"

        def codes():
            for i in range(count):
                yield code0 + i, customer0 + i, f"x{base + i:015x}", attributed[i], None

        def signups():
            for i in range(count):
                code, at = referrers[who[i]][2], attributed[i]
                yield signup0 + i, customer0 + i, 1, None, referral0 + i, code, None, at

        def referrals():
            for i in range(count):
                referrer_id, code_id, _ = referrers[who[i]]
                state = status[i]
                done = state in (1, 2)
                yield (
                    referral0 + i,
                    referrer_id,
                    customer0 + i,
                    code_id,
                    None,
                    CHANNELS[i % len(CHANNELS)],
                    "converted" if done else "rejected" if state == 3 else "attributed",
                    attributed[i],
                    converted[i] if done else None,
                    f"pre-{base + i:08d}" if done else None,
                    60 if state == 3 else 0,
                    '["same_device"]' if state == 3 else "[]",
                )

        def purchases():
            number = purchase0
            for i in range(count):
                if status[i] not in (1, 2):
                    continue
                at = converted[i]
                order = f"pre-{base + i:08d}"
                response = (
                    f'{{"order_id": "{order}", "first_purchase": true, "referral": {{"id": '
                    f'{referral0 + i}, "referrer_external_id": "ref-{who[i]:07d}", "status": '
                    f'"converted"}}, "rewards": [{{"id": 0, "beneficiary": "referrer", '
                    f'"amount": "10.00", "currency": "EUR", "status": "pending"}}]}}'
                )
                amount = 1000 + (i * 7919) % 20000
                yield number, order, customer0 + i, amount, 0, "EUR", at, at, response
                number += 1
                if status[i] == 2:
                    again = f"{order}-2"
                    response = (
                        f'{{"order_id": "{again}", "first_purchase": false, "referral": null, '
                        f'"rewards": []}}'
                    )
                    yield number, again, customer0 + i, amount, 0, "EUR", at, at, response
                    number += 1

        def rewards():
            number, purchase = reward0, purchase0
            for i in range(count):
                if status[i] not in (1, 2):
                    continue
                at = converted[i]
                state = REWARD_STATUSES[i % len(REWARD_STATUSES)]
                yield (
                    number,
                    referral0 + i,
                    purchase,
                    referrers[who[i]][0],
                    "referrer",
                    "fixed",
                    "10.00",
                    1000,
                    "EUR",
                    state,
                    available[i],
                    at,
                    at,
                    None,
                    None,
                )
                number += 1
                purchase += 2 if status[i] == 2 else 1

        _insert(connection, "customers", CUSTOMER_COLUMNS, customers())
        _insert(connection, "referral_codes", CODE_COLUMNS, codes())
        _insert(connection, "referrals", REFERRAL_COLUMNS, referrals())
        _insert(connection, "signups", SIGNUP_COLUMNS, signups())
        _insert(connection, "purchases", PURCHASE_COLUMNS, purchases())
        _insert(connection, "rewards", REWARD_COLUMNS, rewards())
        self.friends += count

    def add_pool(self, connection, count: int) -> None:
        """Friends attributed an hour ago, with no purchase yet: each converts on its first."""
        customer0, code0, referral0, signup0 = self._next_ids(
            connection, "customers", "referral_codes", "referrals", "signups"
        )
        at = stamp(utcnow() - timedelta(hours=1))
        start, referrers = self.pool_end, self.referrers
        customers, codes, referrals, signups = [], [], [], []
        for i in range(count):
            external = f"pool-{start + i:08d}"
            email = f"{external}@example.com"
            referrer_id, code_id, code = referrers[(start + i) % len(referrers)]
            customers.append((customer0 + i, external, email, email, None, None, at, at, "signup"))
            codes.append((code0 + i, customer0 + i, f"y{start + i:015x}", at, None))
            friend = customer0 + i
            referrals.append(
                (
                    referral0 + i,
                    referrer_id,
                    friend,
                    code_id,
                    None,
                    "code",
                    "attributed",
                    at,
                    0,
                    "[]",
                )
            )
            signups.append((signup0 + i, customer0 + i, 1, None, referral0 + i, code, None, at))
        _insert(connection, "customers", CUSTOMER_COLUMNS, customers)
        _insert(connection, "referral_codes", CODE_COLUMNS, codes)
        _insert(connection, "referrals", POOL_REFERRAL_COLUMNS, referrals)
        _insert(connection, "signups", SIGNUP_COLUMNS, signups)
        self.pool_end += count


def populate(population: Population, referrers: int, referrals: int) -> None:
    """Bulk rows before the service starts; prints what it wrote and how long it took."""
    started = time.monotonic()
    connection = population.connect(bulk=True)
    try:
        population.add_referrers(connection, referrers)
        if referrals:
            population.add_referrals(connection, referrals)
        connection.execute("PRAGMA journal_mode=WAL")  # as the service keeps it
    finally:
        connection.close()
    size = population.path.stat().st_size / 1e6
    print(
        f"  populated {referrers:,} referrers and {referrals:,} referrals in "
        f"{time.monotonic() - started:.1f} s (database {size:,.0f} MB)",
        flush=True,
    )


# --- counts and checks in the database -----------------------------------------------------------


def query(database: Path, sql: str, *params):
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as connection:
        return connection.execute(sql, params).fetchone()


def max_id(database: Path, table: str) -> int:
    return query(database, f"SELECT coalesce(max(id), 0) FROM {table}")[0]


def settle(database: Path, table: str, timeout: float = 15.0) -> int:
    """Wait until requests still in flight when wrk stopped have written their rows."""
    last, deadline = max_id(database, table), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = max_id(database, table)
        if now == last:
            return now
        last = now
    return last


def check_count(label: str, made: int, answered: int, errors: int, slack: int) -> None:
    """`made` rows for `answered` responses (some failed; some in flight when wrk stopped)."""
    if not answered - errors <= made <= answered + slack:
        raise BenchError(
            f"{label}: {made} rows written for {answered} responses ({errors} errors); expected "
            f"{answered - errors} to {answered + slack}"
        )


def check_errors(label: str, result: WrkResult, server: Server) -> None:
    if result.errors > ERROR_LIMIT * max(result.requests, 1):
        raise BenchError(
            f"{label}: {result.errors} errors in {result.requests} requests (over "
            f"{ERROR_LIMIT:.0%}): {result.status_errors} responses >= 400, "
            f"{result.socket_errors} socket errors\n{server.name} log:\n{server.log_tail()}"
        )


# --- loads ---------------------------------------------------------------------------------------


def wait_for_other_wrk() -> None:
    """Wait (up to WAIT_LIMIT) until no `wrk` runs on this machine: another benchmark's load."""
    if shutil.which("pgrep") is None:
        return
    started, told = time.monotonic(), False
    while True:
        done = run_process(["pgrep", "-x", "wrk"], 10, stdout=subprocess.PIPE, text=True)
        pids = done.stdout.split()
        if not pids:
            if told:
                print(f"  (waited {time.monotonic() - started:.0f} s)", flush=True)
            return
        waited = time.monotonic() - started
        if waited >= WAIT_LIMIT:
            print(f"  another wrk still runs after {waited:.0f} s: measuring anyway", flush=True)
            return
        if not told:
            print(
                f"  waiting: another wrk runs (pid {', '.join(pids)}); checking every "
                f"{WAIT_POLL:.0f} s, up to {WAIT_LIMIT / 60:.0f} minutes",
                flush=True,
            )
            told = True
        time.sleep(WAIT_POLL)


@dataclass
class Bench:
    """What the loads share: settings, the bare app, its loads, the temporary directory."""

    args: argparse.Namespace
    tmp: Path
    bare: Server
    bare_database: Path
    bare_loads: list[Load] = field(default_factory=list)

    def load(
        self, server: Server, path: str, label: str, script, table: tuple[Path, str], count
    ) -> Load:
        """Warm up, then measure one endpoint; `script()` writes the wrk script for each run
        and `count()` returns the rows the run is checked against (read after it settled)."""
        args, runs, answered, errors = self.args, 0, 0, 0
        before = count()
        if args.warmup:
            wait_for_other_wrk()
            warm = wrk(args, script(), server.port, path, args.warmup)
            check_errors(f"{label} (warm-up)", warm, server)
            runs, answered, errors = 1, warm.requests, warm.errors
            settle(*table)  # the next script may depend on what the warm-up wrote
        measured_args = argparse.Namespace(**{**vars(args), "warmup": 0})
        wait_for_other_wrk()
        load, requests = measure(measured_args, script(), server, path, label)
        check_errors(label, load.wrk, server)
        settle(*table)
        check_count(
            label,
            count() - before,
            answered + requests,
            errors + load.wrk.errors,
            args.connections * (runs + 1),
        )
        return load

    def round(self, label: str, service_load) -> Round:
        """A service load and the bare load after it (the one before is the last one made).

        A load during which other work took more than DISTURBED of the CPUs is made again
        (`--retries` times at most); the least disturbed round counts.
        """
        best = None
        for attempt in range(1 + self.args.retries):
            before = self.bare_loads[-1]
            load = service_load()
            this = Round(load, before, self.bare_load())
            if best is None or this.disturbance < best.disturbance:
                best = this
            if this.disturbance <= DISTURBED or attempt == self.args.retries:
                return best
            print(
                f"  other work took {this.disturbance:.0%} of the CPUs: measuring {label} again",
                flush=True,
            )
        return best

    def bare_load(self) -> Load:
        script = self.tmp / "insert.lua"

        def write():
            script.write_text(lua(self.args, "", LUA_INSERT))
            return script

        def count():
            return max_id(self.bare_database, "bare_rows")

        load = self.load(
            self.bare,
            "/insert",
            "bare POST /insert",
            write,
            (self.bare_database, "bare_rows"),
            count,
        )
        self.bare_loads.append(load)
        return load


def lua(args, key: str, body: str, **values) -> str:
    return Template(LUA_COMMON + body).substitute(key=key, **values) + WRK_SCRIPT


@dataclass
class Phase:
    """The loads on one database: their rounds and the referrals there when each began."""

    name: str
    referrals: dict[str, int] = field(default_factory=dict)
    rounds: dict[str, Round] = field(default_factory=dict)
    bare_loads: list[Load] = field(default_factory=list)


def run_phase(bench: Bench, name: str, referrals: int, servers: list[Server]) -> Phase:
    """A fresh database with `referrals` referrals; bare, sign-ups, bare, purchases, bare."""
    args = bench.args
    folder = bench.tmp / f"phase-{len(list(bench.tmp.glob('phase-*')))}"
    folder.mkdir()
    database = folder / "bench.sqlite3"
    port = free_port()
    env = service_env(database, port, SECRET)
    print(f"\n{name}: db upgrade, API key, {args.referrers:,} referrers, {referrals:,} referrals")
    run_cli(["db", "upgrade"], env)
    key = run_cli(["api-keys", "create", "bench", "--scope", "shop"], env).strip()
    population = Population(database)
    populate(population, args.referrers, referrals)
    service = Server(
        "service",
        gunicorn_argv("referral_service.wsgi:app", ROOT, port, args.workers),
        ROOT,
        env,
        port,
        folder / "service.log",
    )
    servers.append(service)
    service.start("/healthz")
    check_service(port, key, population.referrers[0][2], folder.name)
    phase = Phase(name)
    first_bare = len(bench.bare_loads)
    codes = ", ".join(f'"{code}"' for _, _, code in population.referrers[:SIGNUP_CODES])

    def count_referrals() -> int:
        return query(database, "SELECT count(*) FROM referrals")[0]

    # sign-ups: each a new friend, attributed
    signup_script = folder / "signup.lua"

    def write_signup():
        signup_script.write_text(lua(args, key, LUA_SIGNUP, codes=codes))
        return signup_script

    first_signup = max_id(database, "signups")

    def count_signups() -> int:
        return query(database, "SELECT count(*) FROM signups WHERE id > ?", first_signup)[0]

    def signup_load() -> Load:
        phase.referrals["signups"] = count_referrals()
        load = bench.load(
            service,
            "/api/v1/signups",
            "POST /api/v1/signups",
            write_signup,
            (database, "signups"),
            count_signups,
        )
        made, attributed = query(
            database,
            "SELECT count(*), coalesce(sum(attributed), 0) FROM signups WHERE id > ?",
            first_signup,
        )
        if made != attributed:
            raise BenchError(f"{name}: only {attributed} of {made} new sign-ups were attributed")
        return load

    bench.bare_load()
    phase.rounds["signups"] = bench.round("POST /api/v1/signups", signup_load)

    # purchases: each the first of a pool friend, converting and earning one reward
    purchase_script = folder / "purchase.lua"
    first_purchase, first_reward = max_id(database, "purchases"), max_id(database, "rewards")
    cursor = {"next": 0}  # the first pool friend the next run buys for

    def write_purchase():
        used = query(
            database,
            "SELECT max(c.external_id) FROM purchases p JOIN customers c ON c.id = p.customer_id "
            "WHERE p.id > ? AND c.external_id LIKE 'pool-%'",
            first_purchase,
        )[0]
        cursor["next"] = int(used.removeprefix("pool-")) + 1 if used else 0
        purchase_script.write_text(
            lua(args, key, LUA_PURCHASE, first=cursor["next"], threads=args.threads)
        )
        return purchase_script

    def count_purchases() -> int:
        return query(database, "SELECT count(*) FROM purchases WHERE id > ?", first_purchase)[0]

    def purchase_load() -> Load:
        # enough pool friends for a generous guess of the purchases' req/s
        rate = min(bench.bare_loads[-1].wrk.rps, 3 * phase.rounds["signups"].load.wrk.rps)
        seconds = args.warmup + args.duration
        needed = int(rate * seconds * 1.3) + 64 * args.connections
        needed -= population.pool_end - cursor["next"]
        if needed > 0:
            with contextlib.closing(population.connect()) as connection:
                population.add_pool(connection, needed)
            print(f"  added {needed:,} attributed friends for the purchases", flush=True)
        phase.referrals["purchases"] = count_referrals()
        try:
            load = bench.load(
                service,
                "/api/v1/purchases",
                "POST /api/v1/purchases",
                write_purchase,
                (database, "purchases"),
                count_purchases,
            )
        except BenchError as error:
            write_purchase()
            if cursor["next"] >= population.pool_end:
                pool = population.pool_end
                raise BenchError(f"{error}\n(the pool of {pool} friends ran out)") from None
            raise
        write_purchase()  # where the next attempt starts
        purchases, firsts = query(
            database,
            "SELECT count(*), coalesce(sum(json_extract(response, '$.first_purchase')), 0) "
            "FROM purchases WHERE id > ?",
            first_purchase,
        )
        rewards = query(database, "SELECT count(*) FROM rewards WHERE id > ?", first_reward)[0]
        if not purchases == firsts == rewards:
            raise BenchError(
                f"{name}: {purchases} new purchases, {firsts} of them first purchases, "
                f"{rewards} rewards: every purchase of the load should convert with one reward"
            )
        return load

    phase.rounds["purchases"] = bench.round("POST /api/v1/purchases", purchase_load)
    phase.bare_loads = bench.bare_loads[first_bare:]
    service.stop()
    if service_errors := service.log.read_text(errors="replace").count("Traceback"):
        print(f"  note: the service logged {service_errors} tracebacks:\n{service.log_tail()}")
    if not args.keep_tmp:
        shutil.rmtree(folder, ignore_errors=True)
    return phase


def check_service(port: int, key: str, code: str, name: str) -> None:
    """One sign-up with a referrer's code and the friend's first purchase, through the API."""
    headers = {"Authorization": f"Bearer {key}"}
    friend = f"check-{name}"
    status, _, body = request(
        port,
        "POST",
        "/api/v1/signups",
        body={"external_id": friend, "email": f"{friend}@example.com", "referral_code": code},
        headers=headers,
    )
    if status != 201 or b'"attributed":true' not in body.replace(b" ", b""):
        raise BenchError(f"POST /api/v1/signups answered {status}: {body[:300]!r}")
    status, _, body = request(
        port,
        "POST",
        "/api/v1/purchases",
        body={
            "order_id": f"check-{name}",
            "customer_external_id": friend,
            "amount": "49.90",
            "currency": "EUR",
        },
        headers=headers,
    )
    flat = body.replace(b" ", b"")
    if status != 201 or b'"first_purchase":true' not in flat or b'"beneficiary"' not in flat:
        raise BenchError(f"POST /api/v1/purchases answered {status}: {body[:300]!r}")


# --- report --------------------------------------------------------------------------------------


def _figures(load: Load) -> str:
    cpu, other = load.cpu_per_request_us, load.other_share
    return (
        f"{load.wrk.rps:8.0f}{load.wrk.p50_ms:8.2f}{load.wrk.p99_ms:8.2f}{load.wrk.errors:7d}"
        f"{'?' if cpu is None else f'{cpu:.0f}':>8}{'?' if other is None else f'{other:.0%}':>7}"
    )


HEADER = f"{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'errors':>7}{'CPU µs':>8}{'other':>7}"
TARGETS = {"signups": SIGNUP_TARGET, "purchases": PURCHASE_TARGET}
LABELS = {"signups": "POST /api/v1/signups", "purchases": "POST /api/v1/purchases"}


def print_ratios(phase: Phase) -> bool:
    """The table of step 1; True if both endpoints meet their target."""
    bare_loads = phase.bare_loads
    header = f"{'endpoint':<28}{HEADER}{'bare':>7}{'ratio':>7}{'target':>8}  met{'CPU ratio':>11}"
    print(f"\n{header}\n{'-' * len(header)}")
    quietest = min(bare_loads, key=lambda x: x.other_share or 0.0)
    print(f"{f'bare POST /insert (best of {len(bare_loads)})':<28}{_figures(quietest)}")
    all_met = True
    for name, target in TARGETS.items():
        chosen = phase.rounds[name]
        met = chosen.ratio >= target
        all_met &= met
        cpu_ratio = "?" if chosen.cpu_ratio is None else f"{chosen.cpu_ratio:.2f}"
        print(
            f"{LABELS[name]:<28}{_figures(chosen.load)}{chosen.baseline:7.0f}{chosen.ratio:7.2f}"
            f"{'>= ' + format(target, '.1f'):>8}  {'yes' if met else 'NO ':<3}{cpu_ratio:>11}"
        )
    return all_met


def print_scale(phases: list[Phase]) -> bool:
    """The table of the scale part; True if the largest size is at most 1.3 times slower."""
    header = f"{'referrals':>11}  {'endpoint':<24}{HEADER}{'bare':>7}{'ratio':>7}"
    print(f"\n{header}\n{'-' * len(header)}")
    for phase in phases:
        for name in TARGETS:
            chosen = phase.rounds[name]
            print(
                f"{phase.referrals[name]:>11,}  {LABELS[name]:<24}{_figures(chosen.load)}"
                f"{chosen.baseline:7.0f}{chosen.ratio:7.2f}"
            )
    small, large = phases[0], phases[-1]
    print(
        f"\nslowdown from {small.name} to {large.name} (req/s / req/s; target: at most "
        f"{SLOWDOWN_TARGET} times slower):"
    )
    all_met = True
    for name in TARGETS:
        a, b = small.rounds[name], large.rounds[name]
        slowdown = a.load.wrk.rps / b.load.wrk.rps if b.load.wrk.rps else float("inf")
        relative = a.ratio / b.ratio if b.ratio else float("inf")
        cpu_a, cpu_b = a.load.cpu_per_request_us, b.load.cpu_per_request_us
        cpu = "?" if not (cpu_a and cpu_b) else f"{cpu_b / cpu_a:.2f}"
        met = slowdown <= SLOWDOWN_TARGET
        all_met &= met
        print(
            f"  {LABELS[name]:<24}{slowdown:6.2f}x  {'met' if met else 'NOT MET'}   "
            f"(of the ratios to bare: {relative:.2f}x; server CPU per request: {cpu}x)"
        )
    return all_met


def print_notes(loads: list[Load]) -> None:
    print(
        "\nCPU µs: server CPU time per request (master and workers); other: share of the "
        "machine's CPU taken by other work during the load;\nbare: mean req/s of the bare "
        "insert loads just before and after; ratio: req/s / bare; CPU ratio: bare CPU µs / "
        "endpoint CPU µs\n(the ratio on CPUs free of other work, client aside); errors: "
        "socket errors and responses >= 400."
    )
    if any((x.other_share or 0) > QUIET for x in loads):
        print("note: other work took more than 5% of the CPUs during some loads; see `other`.")


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Load the service's sign-ups and purchases with wrk, against a bare insert.",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per load (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up (default 2)")
    parser.add_argument(
        "--scale-duration", type=int, help="seconds per load of the scale part (--duration)"
    )
    parser.add_argument("--quick", action="store_true", help="3 s loads, 1 s warm-ups")
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="times a load disturbed by other work (over 15%% of the CPUs) is made again (2)",
    )
    parser.add_argument(
        "--sizes",
        default="10000,1000000",
        help="referrals in the databases of the scale part (default 10000,1000000)",
    )
    parser.add_argument("--skip-scale", action="store_true", help="only the ratios to bare")
    parser.add_argument("--skip-events", action="store_true", help="without the events part")
    parser.add_argument("--events-only", action="store_true", help="only the events part")
    parser.add_argument(
        "--event-rounds", type=int, default=2, help="pairs of loads (with, without) per endpoint"
    )
    parser.add_argument("--referrers", type=int, default=10_000, help="referrers (10000)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    add_load_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 3, 1
        args.scale_duration = args.scale_duration or 3
    args.scale_duration = args.scale_duration or args.duration
    try:
        args.sizes = sorted({int(x.replace("_", "")) for x in args.sizes.split(",") if x.strip()})
    except ValueError:
        parser.error("--sizes takes numbers separated by commas")
    if not 1 <= args.duration <= 300 or not 1 <= args.scale_duration <= 300:
        parser.error("need --duration and --scale-duration of 1 to 300 s")
    if not 0 <= args.warmup <= 60 or not 0 <= args.retries <= 5:
        parser.error("need --warmup 0 to 60 s and --retries 0 to 5")
    if not args.skip_scale and (len(args.sizes) < 2 or not 0 <= args.sizes[0] <= 5_000_000):
        parser.error("--sizes needs at least two sizes of 0 to 5,000,000 referrals")
    if args.sizes and args.sizes[-1] > 5_000_000:
        parser.error("at most 5,000,000 referrals")
    if not SIGNUP_CODES <= args.referrers <= 1_000_000:
        parser.error(f"need {SIGNUP_CODES} to 1,000,000 referrers")
    if not 1 <= args.threads <= args.connections <= 1000 or not 1 <= args.workers <= 64:
        parser.error("need 1 <= threads <= connections <= 1000 and 1 to 64 workers")
    return args


def describe(args) -> None:
    describe_machine(args.wrk)
    print(
        f"load: wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency (after a "
        f"{args.warmup} s warm-up; scale part -d{args.scale_duration}s); servers: gunicorn "
        f"--workers {args.workers} --worker-class sync; one endpoint loaded at a time"
    )


def run(args, tmp: Path, servers: list[Server]) -> bool:
    """The whole benchmark; True if every target is met."""
    describe(args)
    if args.events_only:
        met = run_events(Bench(args, tmp, None, None), servers)
        print(f"\nall targets met: {'yes' if met else 'NO'}")
        return met
    bare_database = tmp / "bare.sqlite3"
    bare_port = free_port()
    env = {**os.environ, "BARE_INSERT_URL": f"sqlite:///{bare_database}"}
    bare = Server(
        "bare insert app",
        gunicorn_argv("bare_insert_any_app:app", BENCH, bare_port, args.workers),
        BENCH,
        env,
        bare_port,
        tmp / "bare.log",
    )
    servers.append(bare)
    bare.start("/")
    status, _, body = request(
        bare_port, "POST", "/insert", body={"external_id": "check", "email": "c@example.com"}
    )
    if status != 201:
        raise BenchError(f"POST /insert answered {status}: {body[:300]!r}")
    bench = Bench(args, tmp, bare, bare_database)

    print("\n== 1. sign-ups and purchases against the bare insert ==")
    base = run_phase(bench, "base", 0, servers)
    all_met = print_ratios(base)
    phases: list[Phase] = []
    if not args.skip_scale:
        print(f"\n== 2. scale: {', '.join(f'{x:,}' for x in args.sizes)} referrals ==")
        args.duration = args.scale_duration
        phases = [run_phase(bench, f"{size:,} referrals", size, servers) for size in args.sizes]
        print("\n== results ==")
        print_ratios(base)
        all_met &= print_scale(phases)
    bare.stop()
    print_notes(bench.bare_loads + [r.load for x in [base, *phases] for r in x.rounds.values()])
    if not args.skip_events:
        all_met &= run_events(bench, servers)
    print(f"\nall targets met: {'yes' if all_met else 'NO'}")
    return all_met


# --- events: the checkout with and without its outbox ---------------------------------------------

EVENTS_TARGET = 0.10  # the checkout with events costs at most this much more than without


def run_events(bench: Bench, servers: list[Server]) -> bool:
    """The events part (see the module's docstring); True if both costs are within target."""
    args = bench.args
    print(f"\n== 3. events: the checkout with and without its outbox ({args.workers} workers) ==")
    folder = bench.tmp / "events"
    folder.mkdir()
    database = folder / "bench.sqlite3"
    on_port, off_port = free_port(), free_port()
    env = {**service_env(database, on_port, SECRET), "TASKS_FILE": str(folder / "tasks.sqlite3")}
    run_cli(["db", "upgrade"], env)
    key = run_cli(["api-keys", "create", "bench", "--scope", "shop"], env).strip()
    population = Population(database)
    populate(population, args.referrers, 0)
    with_events = Server(
        "with events",
        gunicorn_argv("referral_service.wsgi:app", ROOT, on_port, args.workers),
        ROOT,
        env,
        on_port,
        folder / "with.log",
    )
    without = Server(
        "without events",
        gunicorn_argv("events_off_app:app", BENCH, off_port, args.workers),
        BENCH,
        {**env, "PUBLIC_BASE_URL": f"http://127.0.0.1:{off_port}"},
        off_port,
        folder / "without.log",
    )
    worker_log = open(folder / "worker.log", "wb")  # noqa: SIM115 - open while it runs
    worker = subprocess.Popen(
        [console_script("referral-service"), "worker"],
        env=env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        for server in (with_events, without):
            servers.append(server)
            server.start("/healthz")
            check_service(server.port, key, population.referrers[0][2], f"events-{server.port}")
        if query(database, "SELECT count(*) FROM outbox")[0] == 0:
            raise BenchError("the service with events wrote no event for its check")
        results = _event_loads(bench, population, database, key, with_events, without, worker)
        outbox_end = time.monotonic() + 30
        while query(database, "SELECT count(*) FROM outbox WHERE relayed_at IS NULL")[0]:
            if time.monotonic() > outbox_end:
                raise BenchError("the worker did not relay every event within 30 s")
            time.sleep(0.2)
        written = query(database, "SELECT count(*) FROM outbox")[0]
    finally:
        for server in (with_events, without):
            server.stop()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
        worker_log.close()
    print(f"\n{written:,} events written, every one relayed by the worker")
    return print_events(results)


def _process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _event_loads(bench, population, database, key, with_events, without, worker) -> dict:
    """Sign-ups, then purchases, on each server in turn; {endpoint: {server name: [(Load,
    worker CPU seconds)]}}."""
    args = bench.args
    codes = ", ".join(f'"{code}"' for _, _, code in population.referrers[:SIGNUP_CODES])
    script = bench.tmp / "events" / "load.lua"
    results: dict = {"signups": {}, "purchases": {}}

    def signups():
        script.write_text(lua(args, key, LUA_SIGNUP, codes=codes))
        return script

    def purchases():
        used = query(
            database,
            "SELECT max(c.external_id) FROM purchases p JOIN customers c ON c.id = p.customer_id "
            "WHERE c.external_id LIKE 'pool-%'",
        )[0]
        first = int(used.removeprefix("pool-")) + 1 if used else 0
        needed = first + 600 * (args.warmup + args.duration) + 64 * args.connections
        if needed > population.pool_end:
            with contextlib.closing(population.connect()) as connection:
                population.add_pool(connection, needed - population.pool_end)
        script.write_text(lua(args, key, LUA_PURCHASE, first=first, threads=args.threads))
        return script

    loads = {"signups": (signups, "/api/v1/signups"), "purchases": (purchases, "/api/v1/purchases")}
    for name, (write, path) in loads.items():
        table = (database, name)
        for round_number in range(args.event_rounds):
            pair = (with_events, without) if round_number % 2 == 0 else (without, with_events)
            for server in pair:
                before = query(database, f"SELECT count(*) FROM {name}")[0]
                cpu = _process_cpu(worker.pid)
                load = bench.load(
                    server,
                    path,
                    f"{LABELS[name]} {server.name}",
                    write,
                    table,
                    lambda name=name: query(database, f"SELECT count(*) FROM {name}")[0],
                )
                if query(database, f"SELECT count(*) FROM {name}")[0] <= before:
                    raise BenchError(f"{server.name}: the load wrote no {name}")
                worker_cpu = _process_cpu(worker.pid) - cpu
                results[name].setdefault(server.name, []).append((load, worker_cpu))
    return results


def print_events(results: dict) -> bool:
    """The events table; True if every cost is within EVENTS_TARGET."""
    header = (
        f"{'endpoint':<24}{'req/s with':>11}{'without':>9}{'cost':>8}{'target':>8}  met"
        f"{'p50 with':>10}{'without':>9}{'CPU µs with':>13}{'without':>9}{'worker µs':>11}"
        f"{'CPU cost':>10}"
    )
    print(f"\n{header}\n{'-' * len(header)}")
    all_met = True
    for name, by_server in results.items():
        with_loads, without_loads = by_server["with events"], by_server["without events"]

        def mean(values):
            values = [x for x in values if x is not None]
            return sum(values) / len(values) if values else None

        rps_with = mean([x.wrk.rps for x, _ in with_loads])
        rps_without = mean([x.wrk.rps for x, _ in without_loads])
        cost = rps_without / rps_with - 1
        met = cost <= EVENTS_TARGET
        all_met &= met
        requests = sum(x.wrk.requests for x, _ in with_loads)
        worker_us = sum(cpu for _, cpu in with_loads) / requests * 1e6 if requests else None
        cpu_with = mean([x.cpu_per_request_us for x, _ in with_loads])
        cpu_without = mean([x.cpu_per_request_us for x, _ in without_loads])

        def us(value):
            return "?" if value is None else f"{value:.0f}"

        cpu_cost = (
            "?"
            if None in (cpu_with, cpu_without, worker_us)
            else f"{(cpu_with + worker_us) / cpu_without - 1:+.1%}"
        )

        print(
            f"{LABELS[name]:<24}{rps_with:11.0f}{rps_without:9.0f}{cost:+8.1%}"
            f"{'<= +' + format(EVENTS_TARGET, '.0%'):>8}  {'yes' if met else 'NO ':<3}"
            f"{mean([x.wrk.p50_ms for x, _ in with_loads]):10.2f}"
            f"{mean([x.wrk.p50_ms for x, _ in without_loads]):9.2f}"
            f"{us(cpu_with):>13}{us(cpu_without):>9}{us(worker_us):>11}{cpu_cost:>10}"
        )
    print(
        "\ncost: mean req/s without events / mean req/s with them - 1 (loads alternated); "
        "CPU µs: the gunicorn's CPU per request;\nworker µs: the worker's CPU (relaying the "
        "events) per request of the loads with events; CPU cost: (CPU µs with + worker µs) / "
        "CPU µs without - 1,\nthe machine's work per checkout call, which other work on the "
        "machine disturbs less than req/s (see `other` above)."
    )
    return all_met


def main(argv=None) -> int:
    return run_main(run, parse_args(argv), "checkout")


if __name__ == "__main__":
    sys.exit(main())

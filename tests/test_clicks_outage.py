"""Clicks through a database outage: one log line each way, shedding said once, and the buffer
kept in a spill file when the process stops, replayed once at the next start.

On PostgreSQL the outage is a TCP proxy of the test's own between the recorder and the server,
cut or frozen (the server itself is never touched); on SQLite, an engine on a file in a folder
that does not exist. The last test runs gunicorn (two workers) through the proxy.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from referral_service import create_app, outages
from referral_service.domain import clicks
from referral_service.domain.clicks import ClickRecorder, read_spill, write_spill
from referral_service.extensions import db
from referral_service.models import Click, utcnow
from tests import factories
from tests.conftest import PG_URL, _pg_url, app_config, drop_pg_database, make_pg_database
from tests.tcp_proxy import TcpProxy
from tests.test_processes import (
    NoRedirect,
    cli,
    free_port,
    gunicorn,
    put_customer,
    wait_until_up,
)

LOGGERS = (clicks.log.name, outages.log.name)


class Outage:
    """The recorder's way to the test database, cut, frozen and restored."""

    def __init__(self, app, database_url: str, tmp_path):
        with app.app_context():
            self.real = db.engine
        self.proxy = None
        self.cut_now = False
        if database_url.startswith("postgresql"):
            url = make_url(database_url)
            self.proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).__enter__()
            self.engine = create_engine(
                url.set(host="127.0.0.1", port=self.proxy.port),
                connect_args={"connect_timeout": 2},
                hide_parameters=True,
            )
        else:  # SQLite cannot be unplugged: an engine that cannot open its file stands in
            self.broken = create_engine(f"sqlite:///{tmp_path / 'missing' / 'clicks.sqlite3'}")

    def engine_factory(self):
        if self.proxy is not None:
            return self.engine
        return self.broken if self.cut_now else self.real

    def cut(self) -> None:
        self.cut_now = True
        if self.proxy is not None:
            self.proxy.cut()

    def freeze(self) -> None:
        self.proxy.freeze()

    def restore(self) -> None:
        self.cut_now = False
        if self.proxy is not None:
            self.proxy.restore()

    def close(self) -> None:
        if self.proxy is not None:
            self.engine.dispose()
            self.proxy.close()


@pytest.fixture
def outage(app, database_url, tmp_path):
    outage = Outage(app, database_url, tmp_path)
    yield outage
    outage.close()


@pytest.fixture
def recorders(outage, tmp_path):
    """Makes recorders writing through `outage`, spilling in `tmp_path/spill`; closes them."""
    made = []

    def make(**options) -> ClickRecorder:
        options = {"interval": 60, "flush_size": 10_000, "spill_dir": tmp_path / "spill", **options}
        recorder = ClickRecorder(outage.engine_factory, **options)
        made.append(recorder)
        return recorder

    yield make
    for recorder in made:  # never after a restore: a write stuck on a frozen proxy stays stuck
        recorder.close()


@pytest.fixture
def active(app):
    with app.app_context():
        from referral_service.domain.codes import lookup

        return lookup(factories.customer().code)


def stored(app) -> set[str]:
    with app.app_context():
        return set(db.session.scalars(select(Click.id)))


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name in LOGGERS]


def eventually(check, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError("not within the time allowed")
        time.sleep(0.02)
    return found


def click(recorder, active, n: int = 0, at: datetime | None = None) -> str:
    evidence = {"ip_hash": f"ip{n}", "ua_hash": f"ua{n}", "referer_host": "mail.example"}
    return recorder.record(active.code_id, active.referrer_id, "qr", at or utcnow(), evidence)


def test_an_outage_is_logged_once_each_way_not_per_retry(app, active, outage, recorders, caplog):
    caplog.set_level(logging.WARNING)
    recorder = recorders(interval=0.01)
    outage.cut()
    ids = {click(recorder, active, n) for n in range(5)}
    eventually(lambda: recorder.database.failures >= 4)  # the writer has retried
    ids |= {click(recorder, active, n) for n in range(5, 8)}
    outage.restore()
    eventually(lambda: recorder.pending() == 0 and not recorder.database.down)
    assert stored(app) == ids
    assert [r.levelno for r in caplog.records if r.name in LOGGERS] == [logging.WARNING] * 2
    away, back = warnings(caplog)
    assert away.startswith("the database (click writer) is unavailable (")
    assert "clicks wait in memory (at most 100000)" in away
    assert back.startswith("the database (click writer) is back after ")
    assert back.endswith("; 8 clicks that waited are written")


def test_a_reader_flushing_during_an_outage_does_not_log_again(
    app, active, outage, recorders, caplog
):
    caplog.set_level(logging.WARNING)
    recorder = recorders()
    click(recorder, active)
    outage.cut()
    for _ in range(3):
        with pytest.raises(Exception):  # noqa: B017 - what the driver raises is its own
            recorder.flush()
    assert recorder.pending() == 1
    assert len(warnings(caplog)) == 1


def test_the_writer_is_not_woken_per_click_while_the_database_is_away(active, outage, recorders):
    tries = []

    def counting():
        tries.append(1)
        return outage.engine_factory()

    recorder = recorders(flush_size=1)
    recorder._engine_factory = counting
    outage.cut()
    click(recorder, active)
    eventually(lambda: recorder.database.down)  # woken by a full batch, and failed
    for n in range(1, 50):
        click(recorder, active, n)
    time.sleep(0.3)
    assert len(tries) == 1  # no retry per click: the writer backs off
    assert recorder.pending() == 50


def test_shedding_is_said_once_and_its_total_when_it_ends(app, active, outage, recorders, caplog):
    caplog.set_level(logging.WARNING)
    recorder = recorders(max_pending=3)
    outage.cut()
    ids = [click(recorder, active, n) for n in range(10)]
    assert len(set(ids)) == 10  # every visitor still gets a click id
    with pytest.raises(Exception):  # noqa: B017
        recorder.flush()
    assert recorder.pending() == 3 and recorder.dropped == 7
    full = [m for m in warnings(caplog) if "click buffer" in m]
    assert full == [
        "the click buffer is full (3 clicks wait for the database): new clicks are not counted "
        "until it is back (visitors are still redirected)"
    ]
    outage.restore()
    assert recorder.flush() == 3
    assert warnings(caplog)[-1] == "the click buffer has room again; 7 clicks were not counted"
    assert stored(app) == set(ids[:3])
    click(recorder, active, 99)
    recorder.flush()
    assert sum("click buffer" in m for m in warnings(caplog)) == 2


def test_rows_of_a_failed_write_that_no_longer_fit_are_shed_and_said(active, recorders, caplog):
    caplog.set_level(logging.WARNING)
    recorder = recorders(max_pending=4)
    for n in range(3):
        click(recorder, active, n)

    def newer_clicks_then_away():
        for n in range(3, 5):  # arrive while the write is under way
            click(recorder, active, n)
        raise ConnectionError("database away")

    recorder._engine_factory = newer_clicks_then_away
    with pytest.raises(ConnectionError):
        recorder.flush()
    assert recorder.pending() == 4 and recorder.dropped == 1
    assert sum("click buffer is full" in m for m in warnings(caplog)) == 1


def test_clicks_that_cannot_be_written_at_exit_are_spilled_and_replayed(
    app, active, outage, recorders, tmp_path, caplog
):
    caplog.set_level(logging.WARNING)
    spill = tmp_path / "spill"
    stopping = recorders()
    outage.cut()
    at = datetime(2024, 3, 31, 0, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    ids = [click(stopping, active, n, at=at + timedelta(minutes=n)) for n in range(5)]
    ids.append(stopping.record(active.code_id, active.referrer_id, None, utcnow()))
    assert stopping.close() == 6
    assert stopping.close() == 0  # once (gunicorn's hook, then atexit)
    [path] = spill.glob("*.jsonl")
    assert path.name.startswith(f"{os.getpid()}-")
    assert path.stat().st_mode & 0o777 == 0o600
    assert not list(spill.glob(".*"))  # no temporary file left
    assert "6 clicks not yet written are kept in " in warnings(caplog)[-1]
    first = json.loads(path.read_text().splitlines()[0])
    assert first["occurred_at"] == "2024-03-30T22:30:15.123456+00:00"

    outage.restore()
    starting = recorders()
    assert starting.replay() == 6
    assert stored(app) == set(ids) and not list(spill.iterdir())
    with app.app_context():
        times = dict(db.session.execute(select(Click.id, Click.occurred_at)).all())
    assert times[ids[0]] == datetime(2024, 3, 30, 22, 30, 15, 123456, tzinfo=UTC)
    assert times[ids[4]] == at + timedelta(minutes=4)
    assert starting.replay() == 0
    assert "wrote 6 clicks kept in 1 spill files" in warnings(caplog)[-1]


def test_a_spill_file_replayed_twice_changes_nothing(app, active, recorders, tmp_path):
    spill = tmp_path / "spill"
    rows = [
        {**row, "occurred_at": utcnow()}
        for row in (
            {"id": f"spilled-{n}", "code_id": active.code_id, "referrer_id": active.referrer_id}
            | {"channel": "link", "referer_host": None, "ip_hash": None, "ua_hash": None}
            for n in range(4)
        )
    ]
    path = write_spill(spill, rows)
    shutil.copy(path, spill / "copy.jsonl")
    assert recorders().replay() == 8
    assert stored(app) == {row["id"] for row in rows}


def test_two_recorders_replaying_at_once_write_each_file_once(app, active, recorders, tmp_path):
    spill = tmp_path / "spill"
    files, per_file = 24, 25
    ids = set()
    for f in range(files):
        rows = [
            {"id": f"f{f}-{n}", "code_id": active.code_id, "referrer_id": active.referrer_id}
            | {"channel": "link", "occurred_at": utcnow()}
            | {"referer_host": None, "ip_hash": None, "ua_hash": None}
            for n in range(per_file)
        ]
        write_spill(spill, rows)
        ids |= {row["id"] for row in rows}
    first, second = recorders(), recorders()
    start = threading.Barrier(2)
    read = {}

    def replay(recorder):
        start.wait()
        read[recorder] = recorder.replay()

    threads = [threading.Thread(target=replay, args=(r,)) for r in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(read.values()) == files * per_file  # each file read by one of them
    assert stored(app) == ids
    assert not list(spill.iterdir())


def test_a_replay_that_fails_hands_the_file_back(app, active, outage, recorders, tmp_path):
    spill = tmp_path / "spill"
    row = {"id": "spilled", "code_id": active.code_id, "referrer_id": active.referrer_id}
    path = write_spill(spill, [row | {"channel": "qr", "occurred_at": utcnow()}])
    recorder = recorders()
    outage.cut()
    with pytest.raises(Exception):  # noqa: B017
        recorder.replay()
    assert [p.name for p in spill.iterdir()] == [path.name] and recorder.database.down
    outage.restore()
    assert recorder.replay() == 1 and stored(app) == {"spilled"}


def test_a_stale_claim_is_taken_over_and_a_fresh_one_left_alone(app, active, recorders, tmp_path):
    spill = tmp_path / "spill"

    def spilled(click_id):
        row = {"id": click_id, "code_id": active.code_id, "referrer_id": active.referrer_id}
        path = write_spill(spill, [row | {"channel": "qr", "occurred_at": utcnow()}])
        claimed = path.with_name(path.name + ".claimed")
        path.rename(claimed)
        return claimed

    stale, fresh = spilled("left-by-a-dead-process"), spilled("being-replayed")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    assert recorders().replay() == 1
    assert stored(app) == {"left-by-a-dead-process"}
    assert list(spill.iterdir()) == [fresh]


def test_a_spill_file_keeps_times_in_utc_and_skips_what_is_not_a_click(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    path = tmp_path / "x.jsonl"
    path.write_text(
        '{"id": "a", "code_id": 1, "referrer_id": 2, "channel": "qr",'
        ' "occurred_at": "2024-01-01T12:00:00-05:00"}\n'
        '{"id": "b", "code_id": 1, "referrer_id": 2, "channel": "qr",'
        ' "occurred_at": "2024-01-01T12:00:00"}\n'
        "not json\n"
        '{"id": "c", "code_id": 1}\n'
    )
    a, b = read_spill(path)
    assert a["occurred_at"] == datetime(2024, 1, 1, 17, tzinfo=UTC)
    assert a["occurred_at"].utcoffset() == timedelta(0)
    assert b["occurred_at"] == datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert a["referer_host"] is None and set(a) == set(clicks.SPILL_COLUMNS)
    assert warnings(caplog) == ["skipped 2 lines of x.jsonl that are not clicks"]


def test_closing_while_the_database_is_known_away_spills_at_once(active, outage, recorders):
    recorder = recorders(close_seconds=30)
    outage.cut()
    click(recorder, active)
    with pytest.raises(Exception):  # noqa: B017
        recorder.flush()
    started = time.monotonic()
    assert recorder.close() == 1
    assert time.monotonic() - started < 1


@pytest.mark.postgresql_only  # a database that hangs is a server that stops answering
def test_closing_against_a_database_that_hangs_spills_within_its_time(
    app, active, outage, recorders, tmp_path
):
    recorder = recorders(close_seconds=1.0, interval=0.01)
    written = click(recorder, active, 0)
    eventually(lambda: stored(app) == {written} and not recorder._writing)  # connection pooled
    outage.freeze()
    ids = {click(recorder, active, n) for n in range(1, 4)}
    time.sleep(0.2)  # the writer is stuck in a write
    started = time.monotonic()
    assert recorder.close() == 3
    assert time.monotonic() - started < 2.5
    [path] = (tmp_path / "spill").glob("*.jsonl")
    assert {row["id"] for row in read_spill(path)} == ids


def test_without_a_spill_folder_what_is_lost_is_said(active, outage, caplog, recorders):
    caplog.set_level(logging.WARNING)
    recorder = recorders(spill_dir=None)
    outage.cut()
    click(recorder, active)
    assert recorder.close() == 0
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert line.getMessage() == "lost 1 clicks: the database is away and no spill folder is set"


def test_a_full_disk_at_exit_is_said(active, outage, caplog, recorders, tmp_path):
    caplog.set_level(logging.WARNING)
    (tmp_path / "a-file").write_text("")
    recorder = recorders(spill_dir=tmp_path / "a-file" / "spill")  # cannot be made
    outage.cut()
    click(recorder, active)
    assert recorder.close() == 0
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert line.getMessage().startswith("lost 1 clicks: the database is away and no spill file")


def test_a_starting_app_replays_spill_files_without_a_visit(app, active, database_url, tmp_path):
    """A process that starts writes the clicks a stopped process spilled for its database, and
    only those: another database's spill files stay where they are."""
    spill = tmp_path / "spill"
    row = {"id": "kept-through-a-restart", "code_id": active.code_id}
    row |= {"referrer_id": active.referrer_id, "channel": "sms", "occurred_at": utcnow()}
    with app.app_context():
        url = db.engine.url
    write_spill(clicks.spill_folder(spill, url), [row])
    elsewhere = clicks.spill_folder(spill, url.set(database="another"))
    write_spill(elsewhere, [row | {"id": "meant-for-another-database"}])
    started = create_app(app_config(database_url, CLICK_SPILL_DIR=str(spill)))
    eventually(lambda: stored(app) == {"kept-through-a-restart"})
    eventually(lambda: not list(clicks.spill_folder(spill, url).iterdir()))  # replayed, gone
    assert len(list(elsewhere.glob("*.jsonl"))) == 1
    started.extensions["clicks"].close()


def test_a_visit_during_an_outage_is_buffered_without_a_query(database_url, tmp_path):
    """`visit` reads no table: with the database away it still gives a click id, and a
    revisit the same one (from the buffer)."""
    if database_url.startswith("postgresql"):
        proxy = TcpProxy("127.0.0.1", make_url(database_url).port or 5432).__enter__()
        url = make_url(database_url).set(port=proxy.port).render_as_string(hide_password=False)
        proxy.cut()
    else:
        proxy, url = None, f"sqlite:///{tmp_path / 'missing' / 'db.sqlite3'}"
    config = app_config(url, CLICK_SPILL_DIR=str(tmp_path / "spill"), CLICK_FLUSH_INTERVAL=60)
    away = create_app(config)
    try:
        with away.app_context():
            with pytest.raises(Exception):  # noqa: B017 - the database is away indeed
                db.session.execute(text("SELECT 1"))
            db.session.remove()
            evidence = {"ip_hash": "i", "ua_hash": "u", "referer_host": None}
            first = clicks.visit(7, 8, "qr", utcnow(), evidence)
            again = clicks.visit(7, 8, "link", utcnow() + timedelta(minutes=5), evidence)
        assert first == again and away.extensions["clicks"].pending() == 1
    finally:
        away.extensions["clicks"].close()
        if proxy is not None:
            proxy.close()


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["cut", "freeze"])
def test_gunicorn_keeps_the_clicks_of_an_outage_through_a_sigterm(pg_admin, tmp_path, fault):
    """gunicorn (two workers) writes to PostgreSQL through the proxy; the proxy is cut (or
    frozen: the server hangs), N share links are visited, the server is stopped (SIGTERM) while
    the database is still away, the proxy restored and the server started again: every click
    handed out is in the database."""
    name = make_pg_database(pg_admin)
    try:
        with TcpProxy("127.0.0.1", make_url(PG_URL).port or 5432) as proxy:
            kept, sent, log = run_an_outage(proxy, fault, name, tmp_path, visits=VISITS)
    finally:
        drop_pg_database(pg_admin, name)
    print(f"\nclicks through an outage ({fault}) and a SIGTERM: sent {sent}, kept {kept}")
    assert kept == sent > 0  # every click handed out is kept (`ref` alone carries none)
    assert log.count("the database (click writer) is unavailable") <= 2  # once per worker
    assert "clicks not yet written are kept in" in log


VISITS = 300


def run_an_outage(proxy, fault: str, name: str, tmp_path, visits: int) -> tuple[int, int, str]:
    """Returns (clicks kept, clicks handed out during the outage, the servers' log); `fault` is
    the proxy's: `cut` or `freeze`."""
    direct = _pg_url(name)
    proxied = make_url(direct).set(host="127.0.0.1", port=proxy.port)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DATABASE_URL": direct,
        "SECRET_KEY": "s" * 32,
        "PUBLIC_BASE_URL": base,
        "RATELIMIT_ENABLED": "0",
    }
    cli(env, "db", "upgrade")
    key = cli(env, "api-keys", "create", "t", "--scope", "shop")
    env["DATABASE_URL"] = proxied.render_as_string(hide_password=False)
    settings = {"CLICK_SPILL_DIR": str(tmp_path / "spill"), "CACHE_SECONDS": 600.0}
    log = ""

    server = start_gunicorn(env, port, settings)
    try:
        code = put_customer(base, key, "c1")
        with ThreadPoolExecutor(8) as pool:  # at once: both workers cache the code and program
            warm = set(pool.map(lambda i: visit_link(base, code, f"warm/{i}"), range(64)))
        assert all(warm)
        eventually(lambda: count_clicks(direct) == len(warm), seconds=20)
        getattr(proxy, fault)()
        given = [visit_link(base, code, f"outage/{i}") for i in range(visits)]
        assert None not in given  # every visit redirected
        handed_out = {factories.click_row(click_id) for click_id in given if click_id}  # their rows
        assert handed_out  # (a worker the warm-up missed hands out `ref` alone)
    finally:
        log += stop(server)
    spilled = sum(len(read_spill(p)) for p in (tmp_path / "spill").glob("*/*.jsonl"))
    proxy.restore()
    server = start_gunicorn(env, port, settings)
    try:
        eventually(lambda: count_clicks(direct) >= len(warm) + len(handed_out), seconds=30)
    finally:
        log += stop(server)
    with create_engine(direct).connect() as connection:
        stored_ids = set(connection.scalars(text("SELECT id FROM clicks")))
    assert spilled == len(handed_out), log
    return len(handed_out & stored_ids), len(handed_out), log


def start_gunicorn(env: dict, port: int, settings: dict) -> subprocess.Popen:
    server = gunicorn(env, port, app=f"referral_service:create_app({settings!r})")
    wait_until_up(f"http://127.0.0.1:{port}/healthz", server)
    return server


def stop(server: subprocess.Popen) -> str:
    server.send_signal(signal.SIGTERM)
    output, _ = server.communicate(timeout=60)
    return output


def visit_link(base: str, code: str, user_agent: str) -> str | None:
    """The click id a share link's redirect hands out ("" for a redirect without one: a worker
    that never read the code, during an outage), None when it did not redirect."""
    request = urllib.request.Request(f"{base}/r/{code}", headers={"User-Agent": user_agent})
    try:
        urllib.request.build_opener(NoRedirect).open(request, timeout=10)
    except urllib.error.HTTPError as error:
        if error.code != 302:
            return None
        query = urllib.parse.urlsplit(error.headers["Location"]).query
        return urllib.parse.parse_qs(query).get("click_id", [""])[0]
    return None


def count_clicks(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.scalar(text("SELECT count(*) FROM clicks"))
    finally:
        engine.dispose()

"""Outages of dependencies: one log line when one goes away, one when it is back, and one probe
at a time while it is away."""

import logging
import threading

import pytest
from sqlalchemy.exc import OperationalError

from referral_service import create_app, outages
from referral_service.outages import Dependency, dependency
from tests.conftest import app_config


class Clock:
    """A stand-in for `time` in outages.py whose monotonic clock the test moves."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(outages, "time", clock)
    return clock


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == outages.log.name]


def test_one_line_when_it_goes_away_and_one_when_it_is_back(caplog, clock):
    caplog.set_level(logging.WARNING, logger=outages.log.name)
    redis = Dependency("Redis")
    assert redis.succeeded() is False and not redis.down
    assert redis.failed(ConnectionError("refused")) is True
    clock.now += 3
    assert [redis.failed(ConnectionError("refused")) for _ in range(5)] == [False] * 5
    assert redis.down and redis.down_since == 1000.0
    clock.now += 9.5
    assert redis.succeeded() is True
    assert redis.succeeded() is False
    assert lines(caplog) == [
        "Redis is unavailable (ConnectionError); carrying on without it",
        "Redis is back after 12.5 s (6 failed attempts meanwhile)",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert not redis.down and redis.failures == 0


def test_a_second_outage_is_logged_again(caplog, clock):
    caplog.set_level(logging.WARNING, logger=outages.log.name)
    database = Dependency("the database")
    for _ in range(2):
        database.failed(TimeoutError())
        database.failed(TimeoutError())
        database.succeeded()
    assert len(lines(caplog)) == 4


def test_the_lines_carry_a_detail_and_the_error_type_but_never_its_message(caplog, clock):
    caplog.set_level(logging.WARNING, logger=outages.log.name)
    database = Dependency("the database")
    secret = 'connection to "db.internal" (user "shop", password "hunter2") failed'
    database.failed(OperationalError("SELECT 1", {}, Exception(secret)), detail="clicks wait")
    database.succeeded(detail="12 clicks written")
    first, second = lines(caplog)
    assert first == (
        "the database is unavailable (OperationalError); carrying on without it; clicks wait"
    )
    assert second.endswith("; 12 clicks written")
    assert "hunter2" not in caplog.text and "db.internal" not in caplog.text
    database.failed("timed out after 2 s")
    assert lines(caplog)[-1].startswith("the database is unavailable (timed out after 2 s)")


def test_while_it_is_away_one_caller_probes_it_per_interval(clock):
    redis = Dependency("Redis", probe_seconds=2.0)
    assert all(redis.try_now() for _ in range(3))  # up: everyone uses it
    redis.failed(ConnectionError())
    assert not redis.try_now()  # just failed: nobody waits for its timeout again
    clock.now += 1.9
    assert not redis.try_now()
    clock.now += 0.2
    assert [redis.try_now() for _ in range(4)] == [True, False, False, False]
    redis.failed(ConnectionError())  # the probe failed: the next one in 2 s
    clock.now += 1.0
    assert not redis.try_now()
    clock.now += 1.1
    assert redis.try_now()
    redis.succeeded()
    assert all(redis.try_now() for _ in range(3))


def test_concurrent_failures_and_probes_make_one_line_and_one_probe(caplog):
    caplog.set_level(logging.WARNING, logger=outages.log.name)
    database = Dependency("the database", probe_seconds=60)
    threads, start = 16, threading.Barrier(16)
    probes = []

    def fail_then_probe():
        start.wait()
        database.failed(ConnectionError())
        start.wait()
        database._next_probe = 0.0  # the probe interval is over for everyone at once
        start.wait()
        probes.append(database.try_now())

    workers = [threading.Thread(target=fail_then_probe) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    [line] = lines(caplog)
    assert line == "the database is unavailable (ConnectionError); carrying on without it"
    assert database.failures == threads
    assert sorted(probes) == [False] * (threads - 1) + [True]


def test_each_application_has_its_own_state(database_url):
    first, second = create_app(app_config(database_url)), create_app(app_config(database_url))
    with first.app_context():
        redis = dependency("Redis", probe_seconds=5)
        assert dependency("Redis") is redis and redis.probe_seconds == 5
        assert dependency("the database") is not redis
        redis.failed(ConnectionError())
    with second.app_context():
        assert dependency("Redis") is not redis
        assert not dependency("Redis").down
    with pytest.raises(RuntimeError, match="application context"):
        dependency("Redis")


def test_anything_down_counts_every_dependency_of_the_process(clock):
    """The hot path's shortcut: no dependency away, no success to report. (Earlier tests may
    have left dependencies of their own away: counted from where they left it.)"""
    before = outages._away
    first, second = outages.Dependency("first"), outages.Dependency("second")
    first.failed("gone")
    second.failed("gone")
    first.failed("still gone")  # the same outage: counted once
    assert outages._away == before + 2 and outages.anything_down()
    first.succeeded()
    second.succeeded()
    second.succeeded()  # already back: counted once
    assert outages._away == before
    assert outages.anything_down() == (before > 0)

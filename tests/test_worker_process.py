"""The worker and the server as an operator runs them: `referral-service worker` and `serve` in
processes of their own on a SQLite instance, a loopback receiver, and crashes (SIGKILL) in the
middle of a delivery and right after a business step's commit."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest
from standardwebhooks import Webhook

from referral_service import create_app
from referral_service.cli import main
from referral_service.domain import webhooks
from referral_service.extensions import db
from tests.conftest import unavailable
from tests.test_processes import BIN, cli, free_port, wait_until_up
from tests.test_worker import Receiver

pytestmark = [pytest.mark.slow]
SECRET = "worker-process-secret-0123456789abcdef"


@pytest.fixture
def instance(tmp_path):
    """A migrated SQLite database, its task queue file and the environment of its processes."""
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'service.sqlite3'}",
        "TASKS_FILE": str(tmp_path / "tasks.sqlite3"),
        "SECRET_KEY": SECRET,
        "WEBHOOKS_ALLOW_PRIVATE": "1",
    }
    env.pop("REDIS_URL", None)
    cli(env, "db", "upgrade")
    return env


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


def redis_url() -> str:
    """A Redis database on loopback for the queue's test (its queue is the test database's)."""
    import redis

    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as error:
        unavailable(f"Redis at {url}", error)
    return url


def service_app(env: dict):
    """The service's app in this process, on the instance's database and queue (not immediate:
    what it queues, the worker process runs)."""
    return create_app(
        {
            "SECRET_KEY": env["SECRET_KEY"],
            "SQLALCHEMY_DATABASE_URI": env["DATABASE_URL"],
            "TASKS_FILE": env["TASKS_FILE"],
            "WEBHOOKS_ALLOW_PRIVATE": True,
            "RATELIMIT_ENABLED": False,
            "CLICK_SPILL_DIR": env["CLICK_SPILL_DIR"],
            "REDIS_URL": env.get("REDIS_URL"),
        }
    )


def start_worker(env: dict, *options: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "referral-service"), "worker", "--poll", "0.2", *options],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(process: subprocess.Popen, sig=signal.SIGTERM) -> str:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


def wait_for(condition, seconds: float = 30, what: str = "the condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def rows(env: dict, sql: str) -> list[tuple]:
    with sqlite3.connect(env["DATABASE_URL"].removeprefix("sqlite:///"), timeout=10) as conn:
        return conn.execute(sql).fetchall()


def add_endpoint(env: dict, url: str) -> str:
    app = service_app(env)
    with app.app_context():
        secret = webhooks.create_endpoint(url, ["*"], None, "test").secret
        db.session.remove()
        db.engine.dispose()
    return secret


def enrol(env: dict, external_id: str) -> None:
    """A business step in this process: its commit queues the relay on the shared queue."""
    from tests.factories import customer

    app = service_app(env)
    with app.app_context():
        customer(external_id)
        db.session.remove()
        db.engine.dispose()


# --- the commands --------------------------------------------------------------------------------


def test_worker_and_serve_say_what_they_take(runner):
    worker = runner.invoke(main, ["worker", "--help"])
    assert worker.exit_code == 0
    assert "--workers" in worker.output and "--sweep" in worker.output
    serve = runner.invoke(main, ["serve", "--help"])
    assert serve.exit_code == 0
    assert "--host" in serve.output and "--port" in serve.output


def test_the_worker_refuses_immediate_mode(runner):
    result = runner.invoke(main, ["worker"])
    assert result.exit_code != 0
    assert "TASKS_IMMEDIATE" in result.output


def test_serve_answers_and_stops_cleanly(instance):
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "referral-service"), "serve", "--port", str(port)],
        env={**instance, "WEB_CONCURRENCY": "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz", server, seconds=40)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            assert answer.status == 200
    finally:
        output = stop(server)
    assert server.returncode == 0, output
    assert "Booting worker" in output  # gunicorn, not the development server
    assert output.count("Booting worker") == 2  # WEB_CONCURRENCY


def test_serve_says_why_it_will_not_start(instance):
    result = subprocess.run(
        [str(BIN / "referral-service"), "serve"],
        env={**instance, "SECRET_KEY": "short"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr
    assert "Traceback" not in result.stderr


# --- a real worker -------------------------------------------------------------------------------


@pytest.mark.parametrize("queue", ["sqlite", "redis"])
def test_a_worker_process_delivers_signed_events(instance, receiver, queue):
    """Five business steps in this process, each queueing the relay on the shared queue (the
    SQLite file, or Redis), and a worker process that delivers their events."""
    if queue == "redis":
        instance["REDIS_URL"] = redis_url()
    secret = add_endpoint(instance, receiver.url)
    worker = start_worker(instance)
    try:
        for n in range(5):
            enrol(instance, f"c{n}")
        wait_for(lambda: len(receiver.requests) >= 5, what="five deliveries")
    finally:
        output = stop(worker)
    assert worker.returncode == 0, output  # SIGTERM: a graceful stop
    events = {event_id for (event_id,) in rows(instance, "SELECT event_id FROM outbox")}
    assert sorted(receiver.ids()) == sorted(events)
    for headers, body in receiver.requests:
        assert Webhook(secret).verify(body, headers)["type"] == "customer.enrolled"
    assert rows(instance, "SELECT DISTINCT status FROM webhook_deliveries") == [("delivered",)]
    assert rows(instance, "SELECT count(*) FROM outbox WHERE relayed_at IS NULL") == [(0,)]


def test_a_worker_killed_in_a_delivery_resumes_it_with_the_same_webhook_id(instance, receiver):
    """The receiver holds the first request until the worker is killed (SIGKILL); a new worker
    sends the event again with the same `webhook-id` once the dead worker's lease has run out
    (moved back here instead of waited for), and one successful delivery is recorded."""
    secret = add_endpoint(instance, receiver.url)
    receiver.hold = True
    worker = start_worker(instance)
    try:
        enrol(instance, "anna")
        assert receiver.arrived.wait(30), "the first attempt never came"
        worker.kill()
        worker.wait(10)
    finally:
        stop(worker)
    receiver.hold = False
    receiver.release.set()
    [(status, attempts, lease)] = rows(
        instance, "SELECT status, attempts, lease_until FROM webhook_deliveries"
    )
    assert (status, attempts) == ("pending", 0) and lease is not None  # held by the dead worker
    with sqlite3.connect(instance["DATABASE_URL"].removeprefix("sqlite:///")) as conn:
        conn.execute("UPDATE webhook_deliveries SET lease_until = '2000-01-01 00:00:00.000000'")
    restarted = start_worker(instance, "--sweep", "1")
    try:
        wait_for(lambda: len(receiver.requests) >= 2, what="the delivery again")
        wait_for(
            lambda: rows(instance, "SELECT status FROM webhook_deliveries") == [("delivered",)],
            what="the delivery recorded",
        )
    finally:
        output = stop(restarted)
    [(event_id,)] = rows(instance, "SELECT event_id FROM outbox")
    assert receiver.ids() == [event_id, event_id], output  # the same webhook-id both times
    for headers, body in receiver.requests:
        Webhook(secret).verify(body, headers)
    assert rows(instance, "SELECT attempts, status FROM webhook_deliveries") == [(1, "delivered")]
    assert rows(instance, "SELECT status_code FROM webhook_attempts") == [(200,)]


def test_an_event_committed_by_a_process_killed_at_once_is_still_delivered(instance, receiver):
    """A process killed right after a business step's commit, before it queued the relay: the
    event is in the outbox, the queue knows nothing of it, and the worker delivers it once."""
    add_endpoint(instance, receiver.url)
    script = textwrap.dedent(
        f"""
        import os, signal
        from referral_service.domain import unit
        from tests.test_worker_process import enrol
        unit._committed_listeners.insert(0, lambda ids: os.kill(os.getpid(), signal.SIGKILL))
        enrol({instance!r}, "killed-after-commit")
        """
    )
    killed = subprocess.run(
        [sys.executable, "-c", script], env=instance, capture_output=True, timeout=60
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [(event_id, relayed)] = rows(instance, "SELECT event_id, relayed_at FROM outbox")
    assert relayed is None
    with sqlite3.connect(instance["TASKS_FILE"]) as tasks:
        assert tasks.execute("SELECT count(*) FROM task").fetchone() == (0,)
    worker = start_worker(instance)
    try:
        wait_for(lambda: receiver.requests, what="the delivery")
        wait_for(
            lambda: rows(instance, "SELECT status FROM webhook_deliveries") == [("delivered",)],
            what="the delivery recorded",
        )
        time.sleep(1.5)  # more polls and sweeps: still one request
    finally:
        stop(worker)
    assert receiver.ids() == [event_id]


@pytest.mark.parametrize(
    "name, value",
    [
        ("WEB_CONCURRENCY", "1000000"),
        ("WEB_CONCURRENCY", "0"),
        ("THREADS", "two"),
        ("THREADS", "-1"),
    ],
)
def test_serve_refuses_a_number_of_workers_out_of_range(instance, name, value):
    result = subprocess.run(
        [str(BIN / "referral-service"), "serve", "--port", str(free_port())],
        env={**instance, name: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"{name} must be a whole number from 1 to 64" in result.stderr
    assert "Booting worker" not in result.stdout + result.stderr

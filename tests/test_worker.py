"""The task queue and the outbox relay, with Huey in immediate mode (tasks run where queued):
each event relayed once and kept, relays racing each other, the periodic jobs, the worker's
pump, and where the queue lives."""

import http.server
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from standardwebhooks import Webhook

from referral_service import create_app, worker
from referral_service.domain import relay, unit, webhooks
from referral_service.domain.unit import unit_of_work
from referral_service.extensions import db
from referral_service.models import IdempotencyKey, OutboxEvent, utcnow
from referral_service.models.webhook import WebhookAttempt, WebhookDelivery
from referral_service.worker import Pump, _planners, queue_name
from tests.conftest import app_config
from tests.factories import customer


class Receiver:
    """A webhook receiver on loopback: records every request (headers, body) and answers
    `status`; with `hold` set, the handler waits for `release` before it answers."""

    def __init__(self, status: int = 200):
        self.status = status
        self.requests: list[tuple[dict, bytes]] = []
        self.arrived = threading.Event()
        self.hold = False
        self.release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                receiver.arrived.set()
                if receiver.hold:
                    receiver.release.wait(30)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ids(self) -> list[str]:
        return [headers["webhook-id"] for headers, _ in self.requests]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def quiet_outbox(monkeypatch):
    """No relay after commits: events stay in the outbox until a test relays them."""
    monkeypatch.setattr(unit, "_committed_listeners", [])


def endpoint(app, url: str, types=("*",)):
    app.config["WEBHOOKS_ALLOW_PRIVATE"] = True
    return webhooks.create_endpoint(url, list(types), None, "test")


def emit(count: int, type: str = "customer.enrolled") -> None:
    for n in range(count):
        with unit_of_work() as step:
            step.emit(type, {"id": n})


def outbox() -> list[OutboxEvent]:
    db.session.rollback()
    return list(db.session.scalars(select(OutboxEvent).order_by(OutboxEvent.id)))


def delivered_events() -> list[str]:
    db.session.rollback()
    return list(db.session.scalars(select(WebhookDelivery.event_id)))


# --- the relay -----------------------------------------------------------------------------------


def test_the_relay_plans_each_event_once_marks_it_and_deletes_nothing(app, quiet_outbox):
    with app.app_context():
        emit(5)
        calls = []

        def plan(event, now):
            calls.append(event.event_id)
            return [len(calls)]

        queued = []
        assert relay.relay({"count": plan}, queued.append) == 5
        assert relay.relay({"count": plan}, queued.append) == 0
        rows = outbox()
        assert len(rows) == 5  # kept
        assert calls == [row.event_id for row in rows]  # each once, oldest first
        assert all(row.relayed_at is not None for row in rows)
        assert queued == [{"count": [1, 2, 3, 4, 5]}]  # queued after the commit, in one go


def test_a_relay_queues_nothing_when_planning_fails_and_leaves_the_events(app, quiet_outbox):
    """Nothing is relayed by a batch whose planning fails, then each event alone: the one a
    planner cannot handle stays unrelayed (the next relay tries it again), the others go."""
    with app.app_context():
        emit(3)
        bad = outbox()[1].event_id

        def plan(event, now):
            if event.event_id == bad:
                raise RuntimeError("cannot plan")
            return [event.id]

        queued = []
        assert relay.relay({"plan": plan}, queued.append) == 2
        rows = outbox()
        assert [row.relayed_at is None for row in rows] == [False, True, False]
        assert sorted(id for q in queued for id in q["plan"]) == [rows[0].id, rows[2].id]


def test_relays_in_batches(app, quiet_outbox):
    with app.app_context():
        emit(7)
        queued = []
        assert relay.relay({"n": lambda event, now: [event.id]}, queued.append, limit=3) == 7
        assert [len(q["n"]) for q in queued] == [3, 3, 1]


def test_relays_racing_each_other_plan_one_delivery_per_endpoint_and_event(app, quiet_outbox):
    """Eight relays at once over 40 events and two endpoints: 80 deliveries, each planned by
    one relay only (SQLite: the writer queue; PostgreSQL: FOR UPDATE SKIP LOCKED)."""
    with app.app_context():
        endpoint(app, "http://127.0.0.1:9/a")
        endpoint(app, "http://127.0.0.1:9/b")
        emit(40)
    planned: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def one_relay():
        with app.app_context():
            start.wait()
            mine = []
            relay.relay(_planners(), lambda p: mine.extend(p["deliver"]), limit=5)
            with lock:
                planned.extend(mine)
            db.session.remove()

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(one_relay) for _ in range(8)]:
            future.result()
    assert len(planned) == 80
    assert len(set(planned)) == 80
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(WebhookDelivery)) == 80
        pairs = db.session.execute(select(WebhookDelivery.endpoint_id, WebhookDelivery.event_id))
        assert len(set(pairs)) == 80
        assert all(row.relayed_at is not None for row in outbox())


# --- immediate mode: from the business step to the receiver ---------------------------------------


def test_a_business_step_is_delivered_at_once_in_immediate_mode(app, receiver):
    """The after-commit wake-up queues the relay; immediate mode runs it, and the delivery, in
    the step's own process: the receiver has the event, signed, before `enrol` returns."""
    with app.app_context():
        created = endpoint(app, receiver.url, ["customer.enrolled"])
        customer("anna")
        [event] = outbox()
        assert event.relayed_at is not None
        assert receiver.ids() == [event.event_id]
        headers, body = receiver.requests[0]
        signed = Webhook(created.secret).verify(body, headers)
        assert signed["type"] == "customer.enrolled"
        assert signed["data"]["external_id"] == "anna"
        [delivery] = db.session.scalars(select(WebhookDelivery))
        assert delivery.status == "delivered"


def test_a_step_that_fails_after_its_write_leaves_no_event(app, receiver):
    with app.app_context():
        endpoint(app, receiver.url)
        with pytest.raises(RuntimeError), unit_of_work() as step:
            step.emit("customer.enrolled", {"id": 1})
            raise RuntimeError("the step fails after its write")
        assert outbox() == []
        assert receiver.requests == []


# --- the periodic jobs ---------------------------------------------------------------------------


def test_the_due_sweep_queues_what_a_killed_worker_held(app, receiver, quiet_outbox):
    """A delivery claimed by a worker that died: once its lease runs out the sweep queues it
    again, and the receiver gets the event with its id."""
    tasks = app.extensions["tasks"]
    with app.app_context():
        endpoint(app, receiver.url)
        emit(1)
        [planned] = relay.relay_batch(_planners())[1]["deliver"]
        now = utcnow()
        leased = update(WebhookDelivery).values(lease_token="gone")
        db.session.execute(leased.values(lease_until=now + webhooks.LEASE))
        db.session.commit()
        assert tasks.sweep_due(now) == {"deliveries": 0, "emails": 0}  # still leased
        assert receiver.requests == []
        db.session.execute(leased.values(lease_until=now - timedelta(seconds=1)))  # ran out
        db.session.commit()
        assert tasks.sweep_due() == {"deliveries": 1, "emails": 0}
        assert receiver.ids() == [outbox()[0].event_id]
        assert db.session.get(WebhookDelivery, planned).status == "delivered"


def test_the_minute_job_matures_rewards(app, monkeypatch):
    from referral_service.domain import rewards

    called = []
    monkeypatch.setattr(rewards, "mature", lambda now=None: called.append(now) or {"moved": 0})
    assert app.extensions["tasks"].mature() == {"moved": 0}
    assert called == [None]


def test_the_daily_job_purges_risk_evidence_past_the_programs_retention(app, monkeypatch):
    from referral_service.domain import fraud, program

    calls = []
    real = fraud.purge
    monkeypatch.setattr(fraud, "purge", lambda days, now: calls.append(days) or real(days, now))
    with app.app_context():
        assert app.extensions["tasks"].purge() == {"signups": 0, "clicks": 0}
        assert calls == [program.settings()["risk_retention_days"]]


def test_the_hourly_job_prunes_expired_idempotency_keys(app):
    tasks = app.extensions["tasks"]
    with app.app_context():
        now = utcnow()
        for key, age in (("old", timedelta(hours=25)), ("new", timedelta(hours=1))):
            db.session.add(
                IdempotencyKey(owner="o", key=key, request_hash="h", created_at=now - age)
            )
        db.session.commit()
        assert tasks.prune_keys(now) == 1
        assert list(db.session.scalars(select(IdempotencyKey.key))) == ["new"]


def test_the_worker_pump_relays_events_it_finds(app, receiver, quiet_outbox):
    """An event whose wake-up was lost (a web process killed after its commit) is relayed by
    the pump's look at the outbox within a poll."""
    tasks = app.extensions["tasks"]
    with app.app_context():
        endpoint(app, receiver.url)
        emit(2)
    pump = Pump(tasks, poll=0.05, sweep=60)
    pump.start()
    try:
        deadline = time.monotonic() + 10
        while len(receiver.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        pump.stop()
        pump.join(5)
    with app.app_context():
        assert sorted(receiver.ids()) == sorted(row.event_id for row in outbox())
        assert all(row.relayed_at is not None for row in outbox())


def test_webhook_attempts_are_recorded_once_per_delivery(app, receiver):
    with app.app_context():
        endpoint(app, receiver.url)
        customer()
        customer()
        assert db.session.scalar(select(func.count()).select_from(WebhookAttempt)) == 2
        assert len(set(receiver.ids())) == 2


# --- where the queue lives -----------------------------------------------------------------------


def test_each_database_has_its_own_queue(app, tmp_path, monkeypatch):
    with app.app_context():
        name = queue_name(db.engine.url)
    assert name.startswith("referral-service-")
    assert name == app.extensions["tasks"].huey.name
    other = create_app(app_config(f"sqlite:///{tmp_path / 'other.sqlite3'}"))
    assert other.extensions["tasks"].huey.name != name


def test_the_queue_is_sqlite_in_the_instance_folder_by_default(tmp_path):
    config = app_config(f"sqlite:///{tmp_path / 'q.sqlite3'}", TASKS_IMMEDIATE=False)
    app = create_app(config)
    huey = app.extensions["tasks"].huey
    assert type(huey).__name__ == "SqliteHuey"
    assert huey.storage.filename.endswith("instance/referral-service-tasks.sqlite3")
    app = create_app({**config, "TASKS_FILE": str(tmp_path / "tasks.sqlite3")})
    assert app.extensions["tasks"].huey.storage.filename == str(tmp_path / "tasks.sqlite3")


def test_the_queue_is_redis_with_redis_url(tmp_path):
    app = create_app(
        app_config(
            f"sqlite:///{tmp_path / 'r.sqlite3'}",
            TASKS_IMMEDIATE=False,
            REDIS_URL="redis://127.0.0.1:6379/0",
        )
    )
    huey = app.extensions["tasks"].huey
    assert type(huey).__name__ == "RedisHuey"
    assert huey.name.startswith("referral-service-")


def test_a_busy_process_queues_the_relay_at_most_once_a_second(tmp_path, monkeypatch):
    """Commits that wrote events wake the relay; a process queues it at most once per
    WAKE_INTERVAL (the worker's pump relays the rest within a poll), never once per request."""
    app = create_app(
        app_config(
            f"sqlite:///{tmp_path / 'w.sqlite3'}",
            TASKS_IMMEDIATE=False,
            TASKS_FILE=str(tmp_path / "tasks.sqlite3"),
        )
    )
    tasks = app.extensions["tasks"]
    for _ in range(50):
        tasks.wake()
    assert tasks.huey.pending_count() == 1
    clock = iter([time.monotonic() + worker.WAKE_INTERVAL + 0.1])
    monkeypatch.setattr(worker.time, "monotonic", lambda: next(clock))
    tasks.wake()
    assert tasks.huey.pending_count() == 2
    assert [task.name for task in tasks.huey.pending()] == ["relay", "relay"]


def test_a_queue_that_is_away_never_fails_a_business_step(app, database_url, caplog):
    """Redis away (nothing listens on the port): the step commits, its event waits in the
    outbox for the worker's poll, and the wake-up that could not be queued is one warning."""
    from tests.test_processes import free_port

    away = create_app(
        app_config(
            database_url, TASKS_IMMEDIATE=False, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"
        )
    )
    with away.app_context():
        started = time.monotonic()
        customer("while-redis-is-away")
        assert time.monotonic() - started < 5
        [event] = outbox()
        assert event.relayed_at is None
        db.session.remove()
        db.engine.dispose()
    assert "could not queue the relay (ConnectionError" in caplog.text


def test_the_pump_says_once_that_it_fails_and_once_that_it_works_again(app, caplog, monkeypatch):
    """The database away for three polls: one error with its traceback, then one line when the
    pump works again (not a traceback every second)."""
    caplog.set_level(logging.INFO, logger="referral_service.worker")
    tasks = app.extensions["tasks"]
    outcomes = iter([RuntimeError("away")] * 3 + [0] * 1000)

    def relay_now():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(tasks, "relay_now", relay_now)
    monkeypatch.setattr(tasks, "sweep_due", lambda now=None: {})
    pump = Pump(tasks, poll=0.01, sweep=60)
    pump.start()
    deadline = time.monotonic() + 10
    while "works again" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.01)
    pump.stop()
    pump.join(5)
    assert caplog.text.count("the worker's pump failed") == 1
    assert caplog.text.count("works again") == 1

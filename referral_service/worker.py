"""The task queue (Huey) and its tasks: the outbox relay, webhook deliveries, emails, and the
periodic jobs (maturing rewards, purging risk evidence, pruning idempotency keys, rolling up
clicks every hour and pruning the rolled-up ones past the attribution window every night).

Each application gets its own Huey instance (`app.extensions["tasks"]`): SQLite storage in the
instance folder by default (`TASKS_FILE`), Redis when `REDIS_URL` is set; in both the queue's name
carries a hash of the database's URL, so services (and tests) on different databases never run
each other's tasks. With `TASKS_IMMEDIATE` a task runs at once in the process that queues it.
Every task runs inside an application context of that app (one app per worker process).

The database is the truth and the queue only a hint: a delivery or an email lost with a killed
worker is still planned in its table, and the due sweeps queue it again; an event whose relay was
lost is still unrelayed in the outbox, and the relay sweep finds it. Events reach the relay three
ways: after a commit that wrote events (`on_events_committed`) a process queues the relay, at
most once a second (`Tasks.wake`: a lone event goes at once, a busy checkout queues nothing per
request); the worker's pump relays what it finds in the outbox every second, in batches, and
sweeps the due deliveries and emails every `sweep` seconds; and the periodic tasks below do both
once a minute as well.
"""

import hashlib
import logging
import os
import threading
import time
from datetime import datetime

import redis
from flask import Flask, current_app
from huey import RedisHuey, SqliteHuey, crontab
from huey.storage import SqliteStorage
from sqlalchemy import delete

from referral_service.domain import fraud, idempotency, program, relay, rewards, rollups, unit
from referral_service.domain.unit import unit_of_work
from referral_service.errors import Unavailable, is_outage
from referral_service.extensions import db
from referral_service.models import IdempotencyKey, utcnow

logger = logging.getLogger(__name__)

TASKS_FILE = "referral-service-tasks.sqlite3"
SWEEP_LIMIT = 1000  # deliveries (and emails) queued again per sweep
SWEEP_SECONDS = 30.0  # how often the worker's pump sweeps the due deliveries and emails
POLL_SECONDS = 1.0  # how often it looks for events the relay has not taken
WAKE_INTERVAL = 1.0  # a process queues the relay after a commit at most this often (seconds)


def queue_name(database_url) -> str:
    """`referral-service-<16 hex digits>`: a hash of the database URL without its password."""
    url = database_url.render_as_string(hide_password=True)
    digest = hashlib.blake2b(url.encode(), digest_size=8, person=b"task-queue").hexdigest()
    return f"referral-service-{digest}"


def register_tasks(app: Flask) -> None:
    """Give the app its task queue (`app.extensions["tasks"]`) and queue the relay after every
    commit that wrote events."""
    with app.app_context():
        name = queue_name(db.engine.url)
    immediate = bool(app.config.get("TASKS_IMMEDIATE"))
    if app.config.get("REDIS_URL"):
        pool = redis.ConnectionPool.from_url(
            app.config["REDIS_URL"],
            socket_connect_timeout=1,  # a Redis away never holds a request long
            socket_timeout=5,  # above the worker's blocking read (1 s)
        )
        huey = RedisHuey(name, connection_pool=pool, results=False, immediate=immediate)
    else:
        path = app.config.get("TASKS_FILE") or os.path.join(app.instance_path, TASKS_FILE)
        if not immediate:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        huey = SqliteHuey(
            name, filename=path, results=False, immediate=immediate, storage_class=QueueFile
        )
    app.extensions["tasks"] = Tasks(app, huey)
    unit.on_events_committed(_wake_relay)


class QueueFile(SqliteStorage):
    """Huey's SQLite storage with `synchronous=NORMAL` (as the service's own database): in WAL
    mode a commit then waits for no disk sync (queueing takes 0.2 ms instead of 4), and a power
    loss may cost the last tasks queued, never the file; what they were for is in the database,
    and the sweeps queue it again."""

    def _create_connection(self):
        connection = super()._create_connection()
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection


def _wake_relay(event_ids: list[str]) -> None:
    """After a commit that wrote events: wake the relay (in the app of the committing step)."""
    tasks = current_app.extensions.get("tasks")
    if tasks is not None:
        tasks.wake()


def _planners() -> dict:
    """The relay's planners, by the task that carries out what they plan."""
    from referral_service.domain import notifications, webhooks

    return {"deliver": webhooks.plan_deliveries, "send": notifications.plan_emails}


class Tasks:
    """The tasks of one application on its Huey instance (`.huey`, which the consumer runs)."""

    def __init__(self, app: Flask, huey):
        self.app = app
        self.huey = huey
        self._woken = -WAKE_INTERVAL

        def in_app(fn):
            def run(*args):
                with app.app_context():
                    try:
                        return fn(*args)
                    except Exception as error:
                        reason = outage_reason(error)
                        if reason is None:  # a fault: Huey logs it with its traceback
                            raise
                        # the database is away: what the task was for is still in it, and a
                        # sweep queues it again once it is back
                        logger.warning("task %s: the database cannot be used (%s)", name, reason)
                        return None

            name = fn.__name__
            run.__name__ = fn.__name__
            run.__qualname__ = fn.__name__
            return run

        self.relay = huey.task(name="relay")(in_app(self.relay_now))
        self.deliver = huey.task(name="deliver")(in_app(self._deliver))
        self.send = huey.task(name="send")(in_app(self._send))
        every_minute = crontab(minute="*")
        huey.periodic_task(every_minute, name="relay_sweep")(in_app(self.relay_now))
        huey.periodic_task(every_minute, name="due_sweep")(in_app(self.sweep_due))
        huey.periodic_task(every_minute, name="mature")(in_app(self.mature))
        huey.periodic_task(crontab(minute="7"), name="prune_keys")(in_app(self.prune_keys))
        huey.periodic_task(crontab(minute="23", hour="3"), name="purge")(in_app(self.purge))
        huey.periodic_task(crontab(minute="17"), name="roll_up_clicks")(in_app(self.roll_up))
        huey.periodic_task(crontab(minute="43", hour="3"), name="prune_clicks")(
            in_app(self.prune_clicks)
        )

    def wake(self) -> None:
        """Queue the relay after a commit that wrote events, at most once per `WAKE_INTERVAL`
        from this process: a first event is relayed at once, and under load the worker's pump
        relays what came meanwhile in batches (within a poll), so a busy checkout pays for no
        queue write and the worker for no relay per event. In immediate mode, relay now."""
        now = time.monotonic()
        if not self.huey.immediate:
            if now - self._woken < WAKE_INTERVAL:
                return
            self._woken = now
        try:
            self.relay()
        except Exception as error:  # the queue is away: the worker's poll finds the events
            logger.warning("could not queue the relay (%s: %s)", type(error).__name__, error)

    # --- what the tasks do (in an app context) ---------------------------------------------------

    def relay_now(self) -> int:
        """Relay the waiting events and queue what they planned; returns how many events."""
        return relay.relay(_planners(), self._queue_planned)

    def _queue_planned(self, planned: dict[str, list[int]]) -> None:
        for delivery_id in planned.get("deliver", ()):
            self.deliver(delivery_id)
        for notification_id in planned.get("send", ()):
            self.send(notification_id)

    def _deliver(self, delivery_id: int) -> None:
        from referral_service.domain import webhooks

        self._again(self.deliver, delivery_id, webhooks.deliver(delivery_id))

    def _send(self, notification_id: int) -> None:
        from referral_service.domain import notifications

        self._again(self.send, notification_id, notifications.send(notification_id))

    def _again(self, task, row_id: int, when: datetime | None) -> None:
        """Queue `task(row_id)` for `when`, the next attempt the domain planned, if any."""
        if when is not None and not self.huey.immediate:
            task.schedule((row_id,), eta=when)

    def sweep_due(self, now: datetime | None = None) -> dict[str, int]:
        """Queue the deliveries and emails that are due (a killed worker's among them); returns
        how many of each."""
        from referral_service.domain import notifications, webhooks

        now = now or utcnow()
        deliveries = webhooks.due_deliveries(now, SWEEP_LIMIT)
        emails = notifications.due_emails(now, SWEEP_LIMIT)
        self._queue_planned({"deliver": deliveries, "send": emails})
        return {"deliveries": len(deliveries), "emails": len(emails)}

    def mature(self):
        """Move the rewards whose hold has passed (`referral-service rewards mature`)."""
        return rewards.mature()

    def purge(self):
        """Empty the risk evidence older than the program's `risk_retention_days`."""
        return fraud.purge(program.settings()["risk_retention_days"], utcnow())

    def roll_up(self, now: datetime | None = None) -> int:
        """Count the clicks of past days into the roll-ups (`referral-service clicks roll-up`);
        returns how many clicks it counted."""
        return rollups.roll_up(now)

    def prune_clicks(self, now: datetime | None = None) -> dict:
        """Roll up, then delete the click rows older than the attribution window and its
        margin (`referral-service clicks prune`); no figure changes."""
        return rollups.prune(program.settings()["attribution_window_days"], now=now)

    def prune_keys(self, now: datetime | None = None) -> int:
        """Delete the idempotency keys older than they are honoured (`idempotency.KEEP`; a
        claim deletes them too, but only while requests come); returns how many."""
        with unit_of_work(now) as step:
            return db.session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.created_at < step.now - idempotency.KEEP
                )
            ).rowcount


def outage_reason(error: BaseException) -> str | None:
    """The first line of a database error that means the database is away (`is_outage`, or the
    pool's `Unavailable`), for a log line without a traceback; None for any other error."""
    if isinstance(error, Unavailable):
        return "it failed moments ago"
    if not is_outage(error):
        return None
    lines = str(getattr(error, "orig", None) or error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class Pump(threading.Thread):
    """The worker's own clock below Huey's minute: relays the events it finds in the outbox
    every `poll` seconds (the after-commit wake-up may have been lost with a web process) and
    queues the due deliveries and emails every `sweep` seconds (and at once on start, so a
    restarted worker resumes what a killed one held)."""

    def __init__(self, tasks: Tasks, poll: float = POLL_SECONDS, sweep: float = SWEEP_SECONDS):
        super().__init__(name="referral-service-pump", daemon=True)
        self.tasks, self.poll, self.sweep = tasks, poll, sweep
        self.stopping = threading.Event()

    def run(self) -> None:
        swept, failing = None, False
        while not self.stopping.is_set():
            now = utcnow()
            try:
                with self.tasks.app.app_context():
                    if swept is None or (now - swept).total_seconds() >= self.sweep:
                        self.tasks.sweep_due(now)
                        swept = now
                    self.tasks.relay_now()
            except Exception as error:
                if not failing:  # once per outage, not once a second
                    reason = outage_reason(error)
                    if reason is None:
                        logger.exception("the worker's pump failed; it tries again every poll")
                    else:
                        logger.warning(
                            "the worker's pump cannot use the database (%s); it tries again "
                            "every poll",
                            reason,
                        )
                failing = True
            else:
                if failing:
                    logger.info("the worker's pump works again")
                failing = False
            self.stopping.wait(self.poll)

    def stop(self) -> None:
        self.stopping.set()

"""Prometheus metrics at `GET /metrics` (prometheus_client), in Prometheus's text format.

What is counted in the processes that serve requests:

* `referral_http_requests_total{endpoint,method,status}` and the histogram
  `referral_http_request_duration_seconds{endpoint}`: `endpoint` is the name of the Flask view
  that answered (`checkout.Signups`, `public.ShareLink`, ...), `none` when no route matched (a 404
  or a 405), never the path; a method other than the usual ones is `other`. The duration runs from
  the first `before_request` hook to the last `after_request` hook.
* `referral_attributions_total{reason}`: sign-ups recorded anew (201 from `POST
  /api/v1/signups`) by the answer's reason: `attributed`, or why it was not (`no_referral`,
  `invalid_code`, `unknown_click`, ...; see domain/attribution.py). Counted at the API's door
  once the answer is made, so a replay (200) is not counted twice.
* `referral_clicks_buffered` and `referral_clicks_dropped_total`: clicks waiting in the
  processes' buffers, and clicks shed while the database was away (domain/clicks.py).

What is read when `/metrics` is asked (one scrape, one process), each part left out when its
store does not answer quickly (the scrape still answers 200 with the rest):

* from the database (indexed counts): `referral_rewards{status}`, `referral_outbox_unrelayed`
  (events the relay has not taken) and `referral_webhook_deliveries{status}`;
* from the task queue (Huey: Redis or its SQLite file): `referral_task_queue_depth`.

Under gunicorn's several worker processes, `referral-service serve` gives the workers a fresh
folder in `PROMETHEUS_MULTIPROC_DIR` at each start (gunicorn_conf.py), where prometheus_client's
multiprocess mode keeps each process's figures; a scrape, served by any worker, adds them all up
(a stopped worker's counts stay; its buffered clicks, a live figure, go with it). Without that
folder (the development server, tests) the figures are this process's own.

`METRICS` (on by default) off: no route, nothing counted. `METRICS_TOKEN` set: `/metrics` needs
`Authorization: Bearer <token>` (compared in constant time), else a 401 in the error envelope.
`/metrics` is under no rate limit (it is not one of the limited doors) and not in the OpenAPI
description (it is an operator's door, described in the README).
"""

import hmac
import logging
import os
import re
import threading
import time

from flask import Flask, current_app, g, jsonify, request
from sqlalchemy import func, select

from referral_service import database
from referral_service.extensions import db
from referral_service.models import OutboxEvent, Reward
from referral_service.models.referral import REWARD_STATUSES
from referral_service.models.webhook import DELIVERY_STATUSES, WebhookDelivery
from referral_service.request_id import request_id

log = logging.getLogger(__name__)

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess mode
NO_ENDPOINT = "none"  # the endpoint label of a request no route matched
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
SIGNUPS_ENDPOINT = "checkout.Signups"
_REASON = re.compile(r"[a-z][a-z0-9_]{0,39}")
REFRESH_SECONDS = 1.0  # how often a worker process publishes its click buffer's figures
# latency buckets in seconds: a redirect takes about a millisecond, a checkout call a few
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Counted:
    """The figures counted as requests are served, one set per process. They are made at the
    first `register_metrics` of a process, not at import: gunicorn's master process imports this
    package (gunicorn_conf.py) before it names the multiprocess folder, and prometheus_client
    decides at its own import whether figures are kept in memory (in `registry`) or in that
    folder's files; the workers, forked from the master, import it only after."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "referral_http_requests_total",
            "HTTP requests answered, by endpoint (the Flask view), method and status.",
            ("endpoint", "method", "status"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "referral_http_request_duration_seconds",
            "Time to answer an HTTP request, by endpoint (the Flask view).",
            ("endpoint",),
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.attributions = Counter(
            "referral_attributions_total",
            "Sign-ups recorded, by reason: attributed, or why the sign-up was not attributed.",
            ("reason",),
            registry=self.registry,
        )
        self.clicks_buffered = Gauge(
            "referral_clicks_buffered",
            "Clicks waiting in the processes' memory to be written to the database.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.clicks_dropped = Counter(
            "referral_clicks_dropped_total",
            "Clicks shed because too many waited while the database was away.",
            registry=self.registry,
        )


_counted: list[_Counted] = []  # the process's one set, once made


def counted() -> _Counted:
    with _state_lock:
        if not _counted:
            _counted.append(_Counted())
        return _counted[0]


_state_lock = threading.Lock()
_dropped_seen: dict[int, int] = {}  # id(recorder) -> its `dropped` when last published
_refresher = {"pid": None}


def multiprocess_dir() -> str | None:
    """The folder of prometheus_client's multiprocess mode, when gunicorn_conf.py set one."""
    return os.environ.get(MULTIPROC_DIR) or None


def register_metrics(app: Flask) -> None:
    """Count requests and serve `/metrics`, unless `METRICS` is off."""
    if not app.config.get("METRICS", True):
        return
    counted()
    app.before_request_funcs.setdefault(None, []).insert(0, _start)  # before the limiter
    app.after_request(_finish)
    app.teardown_request(_teardown)
    app.add_url_rule("/metrics", "metrics", _view, methods=["GET"])


def _start() -> None:
    g.metrics_started = time.perf_counter()
    if multiprocess_dir() and _refresher["pid"] != os.getpid():
        _start_refresher(current_app._get_current_object())


def _finish(response):
    _observe(response.status_code)
    if request.endpoint == SIGNUPS_ENDPOINT and response.status_code == 201:
        _count_attribution(response)
    return response


def _teardown(error) -> None:
    if error is not None:  # no response was made (after_request did not run)
        _observe(500)


def _observe(status: int) -> None:
    started = g.pop("metrics_started", None)
    if started is None:  # counted already, or before our first hook (nothing to time)
        return
    endpoint = request.endpoint or NO_ENDPOINT
    method = request.method if request.method in METHODS else "other"
    figures = counted()
    figures.requests.labels(endpoint, method, str(status)).inc()
    figures.duration.labels(endpoint).observe(time.perf_counter() - started)


def _count_attribution(response) -> None:
    body = response.get_json(silent=True)
    if not isinstance(body, dict):
        return
    if body.get("attributed") is True:
        reason = "attributed"
    else:
        reason = body.get("reason")
        if not isinstance(reason, str) or not _REASON.fullmatch(reason):
            reason = "other"
    counted().attributions.labels(reason).inc()


def _publish_clicks(app: Flask) -> None:
    """Put this process's click buffer into the click figures."""
    recorder = app.extensions.get("clicks")
    if recorder is None:
        return
    figures = counted()
    figures.clicks_buffered.set(recorder.pending())
    with _state_lock:
        dropped = recorder.dropped
        more = dropped - _dropped_seen.get(id(recorder), 0)
        _dropped_seen[id(recorder)] = dropped
    if more > 0:
        figures.clicks_dropped.inc(more)


def _start_refresher(app: Flask) -> None:
    """In a worker process of the multiprocess mode: publish its click buffer every second, so
    that a scrape served by another worker sees it (a daemon thread, one per process)."""
    with _state_lock:
        if _refresher["pid"] == os.getpid():
            return
        _refresher["pid"] = os.getpid()

    def run():
        while True:
            try:
                _publish_clicks(app)
            except Exception:  # a figure must never stop the process
                log.exception("publishing the click figures failed")
            time.sleep(REFRESH_SECONDS)

    threading.Thread(target=run, name="metrics-clicks", daemon=True).start()


def _view():
    token = current_app.config.get("METRICS_TOKEN")
    if token and not _authorized(token):
        response = jsonify(
            {
                "error": {
                    "code": "unauthorized",
                    "message": "Send the metrics token: 'Authorization: Bearer <METRICS_TOKEN>'.",
                    "request_id": request_id(),
                }
            }
        )
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    _publish_clicks(current_app)
    from prometheus_client.exposition import choose_encoder

    encode, content_type = choose_encoder(request.headers.get("Accept", ""))  # or OpenMetrics
    response = current_app.response_class(encode(_Scrape(current_app._get_current_object())))
    response.headers["Content-Type"] = content_type
    response.headers["Cache-Control"] = "no-store"
    return response


def _authorized(token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


class _Scrape:
    """What one scrape reports: the counted figures (of every process in multiprocess mode),
    then the ones read now from the database and the task queue."""

    def __init__(self, app: Flask):
        self.app = app

    def collect(self):
        folder = multiprocess_dir()
        if folder:
            from prometheus_client import CollectorRegistry
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=folder)
            yield from registry.collect()
        else:
            yield from counted().registry.collect()
        yield from _database_figures()
        yield from _queue_figures(self.app)


def _gauge(name: str, documentation: str, **kwargs):
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(name, documentation, **kwargs)


def _database_figures():
    """Rewards by status, unrelayed events and webhook deliveries by status; nothing when the
    database does not answer within database.py's quick limits."""
    try:
        with database.attempt(quick=True), db.engine.connect() as connection:
            rewards = connection.execute(
                select(Reward.status, func.count()).group_by(Reward.status)
            ).all()
            unrelayed = connection.execute(
                select(func.count())
                .select_from(OutboxEvent)
                .where(OutboxEvent.relayed_at.is_(None))
            ).scalar_one()
            deliveries = connection.execute(
                select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)
            ).all()
    except Exception as error:  # away, hung or without tables: the other figures still go out
        log.warning("metrics: the database figures are left out (%s)", type(error).__name__)
        return
    family = _gauge(
        "referral_rewards", "Rewards, by status (read from the database).", labels=("status",)
    )
    # every status has its series, 0 too, so that an alert on one never meets a missing series
    for status, count in sorted({**dict.fromkeys(REWARD_STATUSES, 0), **dict(rewards)}.items()):
        family.add_metric((status,), count)
    yield family
    yield _gauge(
        "referral_outbox_unrelayed",
        "Events in the outbox the relay has not taken yet (read from the database).",
        value=unrelayed,
    )
    family = _gauge(
        "referral_webhook_deliveries",
        "Webhook deliveries, by status: pending, delivered or failed (read from the database).",
        labels=("status",),
    )
    known = {**dict.fromkeys(DELIVERY_STATUSES, 0), **dict(deliveries)}
    for status, count in sorted(known.items()):
        family.add_metric((status,), count)
    yield family


def _queue_figures(app: Flask):
    """Tasks waiting in the queue (Huey); nothing when the queue's store does not answer."""
    tasks = app.extensions.get("tasks")
    if tasks is None:
        return
    try:
        depth = tasks.huey.pending_count()
    except Exception as error:
        log.warning("metrics: the task queue's depth is left out (%s)", type(error).__name__)
        return
    yield _gauge("referral_task_queue_depth", "Tasks waiting in the task queue.", value=depth)

"""Outbound webhooks: the API, signatures, the retry schedule, 410, 429, redirects, races.

Deliveries go to a real HTTP receiver on loopback (a thread running http.server), which answers
as each test tells it; WEBHOOKS_ALLOW_PRIVATE is on for it. Time is passed in (`now`), so the
schedule is followed over days in no time. No test opens a connection to anything but loopback
(`loopback_only` refuses it). Signatures are checked with the `standardwebhooks` package.
"""

import base64
import http.server
import itertools
import json
import re
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook

from referral_service.domain import events, webhooks
from referral_service.domain.unit import unit_of_work
from referral_service.extensions import db
from referral_service.models import AuditRecord, OutboxEvent
from referral_service.models.webhook import WebhookAttempt, WebhookDelivery, WebhookEndpoint

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)  # a Sunday, in the past
ADMIN_ACTOR = "admin:ops@example.com"


# --- the receiver and the guard ------------------------------------------------------------------


class Receiver:
    """A loopback HTTP server recording each request; `answers` is what it answers, in turn
    (the last one repeats): (status, headers, body, delay in seconds)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.answers: list[tuple] = [(200, {}, b"ok", 0)]
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                receiver.requests.append(
                    {"path": self.path, "headers": dict(self.headers.items()), "body": body}
                )
                index = min(len(receiver.requests) - 1, len(receiver.answers) - 1)
                status, headers, content, delay = receiver.answers[index]
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(content)))
                    self.end_headers()
                    self.wfile.write(content)
                except OSError:
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, *answers):
        self.answers = [
            (a, {}, b"", 0) if isinstance(a, int) else (*a, *((b"", 0)[len(a) - 2 :]))
            for a in answers
        ]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Any connection to an address that is not loopback fails the test before it is opened."""
    real = socket.create_connection
    opened = []

    def guarded(address, *args, **kwargs):
        host = address[0]
        assert host in LOOPBACK, f"a test tried to connect to {host}"
        opened.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    return opened


@pytest.fixture
def names(monkeypatch):
    """Stubbed name resolution: `names["host"] = ["1.2.3.4"]`; an address resolves to itself,
    an unknown name does not resolve. Nothing is asked of a DNS server."""
    table: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        host = host.decode() if isinstance(host, bytes) else host
        if host in table:
            return [
                (
                    socket.AF_INET6 if ":" in ip else socket.AF_INET,
                    socket.SOCK_STREAM,
                    6,
                    "",
                    (ip, port, 0, 0) if ":" in ip else (ip, port),
                )
                for ip in table[host]
            ]
        try:
            return real(host, port, *args, flags=socket.AI_NUMERICHOST)
        except socket.gaierror:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


@pytest.fixture(autouse=True)
def no_task_queue(request):
    """Deliveries are made by the tests themselves, at the times they choose: the task queue's
    wake-up after a commit (which would relay and deliver at once) is taken away."""
    if "app" in request.fixturenames and "task_queue" not in request.fixturenames:
        request.getfixturevalue("app").extensions.pop("tasks", None)


@pytest.fixture
def task_queue(app):
    """The app's task queue, left in place (immediate mode: a task runs when it is queued)."""
    return app.extensions["tasks"]


@pytest.fixture
def private(app):
    app.config["WEBHOOKS_ALLOW_PRIVATE"] = True
    return app


# --- helpers -------------------------------------------------------------------------------------


def emit(type: str = "reward.created", now: datetime = T0, **data) -> OutboxEvent:
    """An event in the outbox, as a business step writes it."""
    with unit_of_work(now) as unit:
        unit.emit(type, {"id": 1, "amount": "10.00", "currency": "EUR", **data})
    return db.session.scalar(select(OutboxEvent).order_by(OutboxEvent.id.desc()).limit(1))


def endpoint(url: str, types=("*",), description: str = "") -> webhooks.CreatedEndpoint:
    return webhooks.create_endpoint(url, list(types), description, ADMIN_ACTOR, now=T0)


def planned(event: OutboxEvent, now: datetime = T0) -> list[int]:
    """Plan the event's deliveries as the relay does: in a unit of work."""
    with unit_of_work(now):
        return webhooks.plan_deliveries(event, now)


def delivery(delivery_id: int) -> WebhookDelivery:
    return db.session.get(WebhookDelivery, delivery_id, populate_existing=True)


def attempts(delivery_id: int) -> list[WebhookAttempt]:
    db.session.expire_all()
    return list(
        db.session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id == delivery_id)
            .order_by(WebhookAttempt.id)
        )
    )


def one_delivery(url: str, type: str = "reward.created") -> tuple[int, str, OutboxEvent]:
    created = endpoint(url)
    event = emit(type)
    (delivery_id,) = planned(event)
    return delivery_id, created.secret, event


def within_jitter(wait: timedelta, step: int) -> bool:
    expected = webhooks.SCHEDULE[step].total_seconds()
    return expected * 0.9 - 0.01 <= wait.total_seconds() <= expected * 1.1 + 1


# --- secrets -------------------------------------------------------------------------------------


def test_secret_format_and_sealing(app):
    with app.app_context():
        secret = webhooks.new_secret()
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24
        sealed = webhooks.seal(secret)
        assert secret not in sealed and secret.removeprefix("whsec_") not in sealed
        assert webhooks.unseal(sealed) == secret
        assert webhooks.seal(secret) != sealed  # a fresh nonce each time
        app.config["SECRET_KEY_FALLBACKS"] = [app.secret_key]
        app.secret_key = "another-secret-key-0123456789abcdef"
        assert webhooks.unseal(sealed) == secret  # an old key still opens it
        app.config["SECRET_KEY_FALLBACKS"] = []
        with pytest.raises(webhooks.SealBroken):
            webhooks.unseal(sealed)
        tampered = sealed[:-6] + ("AAAAAA" if not sealed.endswith("AAAAAA") else "BBBBBB")
        app.config["SECRET_KEY_FALLBACKS"] = []
        with pytest.raises((webhooks.SealBroken, ValueError)):
            webhooks.unseal(tampered)


def test_signature_matches_standard_webhooks():
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    body = b'{"id":"evt_1"}'
    ours = webhooks.signature(secret, "evt_1", 1_700_000_000, body)
    theirs = Webhook(secret).sign(
        "evt_1", datetime.fromtimestamp(1_700_000_000, UTC), body.decode()
    )
    assert ours == theirs


# --- the API -------------------------------------------------------------------------------------


def make(client, headers, url, types=("*",), **extra):
    return client.post(
        "/api/v1/webhook-endpoints",
        headers=headers,
        json={"url": url, "events": list(types), **extra},
    )


def test_create_shows_the_secret_once(private, client, admin, receiver, caplog):
    response = make(
        client, admin, receiver.url, ["reward.created", "payout.paid"], description="ERP"
    )
    assert response.status_code == 201, response.json
    body = response.json
    assert body["secret"].startswith("whsec_")
    assert len(base64.b64decode(body["secret"][6:])) >= 24
    assert body["events"] == ["reward.created", "payout.paid"]
    assert body["description"] == "ERP" and body["disabled"] is False
    shown = client.get(f"/api/v1/webhook-endpoints/{body['id']}", headers=admin)
    assert shown.status_code == 200 and "secret" not in shown.json
    assert shown.json["url"] == receiver.url
    listed = client.get("/api/v1/webhook-endpoints", headers=admin).json
    assert [item["id"] for item in listed["items"]] == [body["id"]]
    assert listed["next_cursor"] is None and "secret" not in listed["items"][0]
    with private.app_context():
        stored = db.session.get(WebhookEndpoint, body["id"])
        assert body["secret"] not in stored.secret
        record = db.session.scalar(
            select(AuditRecord).where(AuditRecord.action == "webhook_endpoint.create")
        )
        assert record.subject_id == str(body["id"]) and body["secret"] not in json.dumps(
            record.after
        )
    assert body["secret"] not in caplog.text


def test_event_filters_are_normalised(app):
    assert webhooks.check_events(["*", "reward.created"]) == ["*"]
    assert webhooks.check_events(["payout.paid", "reward.created", "payout.paid"]) == [
        "reward.created",
        "payout.paid",
    ]


def test_list_pages(private, client, admin, receiver):
    ids = [make(client, admin, receiver.url).json["id"] for _ in range(3)]
    first = client.get("/api/v1/webhook-endpoints?limit=2", headers=admin).json
    assert [item["id"] for item in first["items"]] == ids[::-1][:2]
    second = client.get(
        f"/api/v1/webhook-endpoints?limit=2&cursor={first['next_cursor']}", headers=admin
    )
    assert [item["id"] for item in second.json["items"]] == ids[:1]
    assert client.get("/api/v1/webhook-endpoints?cursor=nonsense", headers=admin).status_code == 422


ROUTES = [
    ("get", "/api/v1/webhook-endpoints", 200),
    ("post", "/api/v1/webhook-endpoints", 201),
    ("get", "/api/v1/webhook-endpoints/{id}", 200),
    ("patch", "/api/v1/webhook-endpoints/{id}", 200),
    ("post", "/api/v1/webhook-endpoints/{id}/rotate-secret", 200),
    ("get", "/api/v1/webhook-endpoints/{id}/deliveries", 200),
    ("post", "/api/v1/webhook-endpoints/{id}/deliveries/{delivery}/redeliver", 202),
    ("delete", "/api/v1/webhook-endpoints/{id}", 204),
]


@pytest.mark.parametrize(("method", "path", "allowed"), ROUTES)
@pytest.mark.parametrize("who", ["nobody", "shop", "admin"])
def test_allow_deny_matrix(private, client, shop, admin, receiver, method, path, allowed, who):
    with private.app_context():
        delivery_id, _, _ = one_delivery(receiver.url)
        endpoint_id = delivery(delivery_id).endpoint_id
    headers = {"nobody": {}, "shop": shop, "admin": admin}[who]
    body = (
        {"url": receiver.url, "events": ["*"]}
        if method == "post" and path.endswith("endpoints")
        else None
    )
    if method == "patch":
        body = {"description": "changed"}
    response = getattr(client, method)(
        path.format(id=endpoint_id, delivery=delivery_id), headers=headers, json=body
    )
    expected = {"nobody": 401, "shop": 403, "admin": allowed}[who]
    assert response.status_code == expected, response.get_data(as_text=True)
    if expected >= 400:
        assert response.json["error"]["code"] in ("unauthorized", "forbidden")


BAD_CREATES = [
    ({"url": "https://hooks.example/" + "a" * 2100, "events": ["*"]}, "url"),
    ({"url": "not a url", "events": ["*"]}, "url"),
    ({"url": "hooks.example/path", "events": ["*"]}, "url"),
    ({"url": "https://", "events": ["*"]}, "url"),
    ({"url": "https://hooks.example:99999/", "events": ["*"]}, "url"),
    ({"url": "https://hooks.example/a\x00b", "events": ["*"]}, "url"),
    ({"url": 12, "events": ["*"]}, "url"),
    ({"url": "https://hooks.example/", "events": []}, "events"),
    ({"url": "https://hooks.example/", "events": ["reward.exploded"]}, "events"),
    ({"url": "https://hooks.example/", "events": "reward.created"}, "events"),
    ({"url": "https://hooks.example/", "events": [1]}, "events.0"),
    ({"url": "https://hooks.example/", "events": ["x" * 5000]}, "events.0"),
    ({"url": "https://hooks.example/", "events": ["*"], "description": "a\x07b"}, "description"),
    ({"url": "https://hooks.example/", "events": ["*"], "description": "d" * 501}, "description"),
    ({"url": "https://hooks.example/", "events": ["*"], "secret": "whsec_x"}, "secret"),
    ({"events": ["*"]}, "url"),
    ({"url": "https://hooks.example/"}, "events"),
]


@pytest.mark.parametrize(("body", "field"), BAD_CREATES)
def test_bad_inputs_are_422(app, client, admin, names, body, field):
    names["hooks.example"] = ["93.184.216.34"]
    response = client.post("/api/v1/webhook-endpoints", headers=admin, json=body)
    assert response.status_code == 422, response.get_data(as_text=True)
    error = response.json["error"]
    assert error["code"] == "validation_error" and field in error["fields"], error


BAD_PATCHES = [
    ({"secret": "whsec_mine"}, "secret"),
    ({"disabled": "yes"}, "disabled"),
    ({"events": ["nope"]}, "events"),
    ({"url": "ftp://hooks.example/"}, "url"),
    ({"description": "\x1b[31m"}, "description"),
    ({"id": 5}, "id"),
]


@pytest.mark.parametrize(("body", "field"), BAD_PATCHES)
def test_bad_patches_are_422(private, client, admin, receiver, body, field):
    endpoint_id = make(client, admin, receiver.url).json["id"]
    response = client.patch(f"/api/v1/webhook-endpoints/{endpoint_id}", headers=admin, json=body)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert field in response.json["error"]["fields"]


def test_unreadable_bodies_and_ids(private, client, admin):
    response = client.post(
        "/api/v1/webhook-endpoints", headers={**admin, "Content-Type": "application/json"}, data="{"
    )
    assert response.status_code == 400 and response.json["error"]["code"] == "invalid_json"
    for path in ("/api/v1/webhook-endpoints/99", "/api/v1/webhook-endpoints/99999999999999"):
        assert client.get(path, headers=admin).status_code == 404
    assert (
        client.post("/api/v1/webhook-endpoints/99/rotate-secret", headers=admin).status_code == 404
    )
    assert client.get("/api/v1/webhook-endpoints/99/deliveries", headers=admin).status_code == 404
    assert (
        client.post(
            "/api/v1/webhook-endpoints/99/deliveries/1/redeliver", headers=admin
        ).status_code
        == 404
    )
    assert client.delete("/api/v1/webhook-endpoints/99", headers=admin).status_code == 404
    assert client.get("/api/v1/webhook-endpoints?limit=0", headers=admin).status_code == 422


def test_patch_disable_enable_and_delete(private, client, admin, receiver):
    endpoint_id = make(client, admin, receiver.url).json["id"]
    path = f"/api/v1/webhook-endpoints/{endpoint_id}"
    changed = client.patch(
        path, headers=admin, json={"events": ["payout.paid"], "description": "x"}
    )
    assert changed.status_code == 200 and changed.json["events"] == ["payout.paid"]
    disabled = client.patch(path, headers=admin, json={"disabled": True}).json
    assert disabled["disabled"] is True and "Disabled by api-key:" in disabled["disabled_reason"]
    enabled = client.patch(path, headers=admin, json={"disabled": False}).json
    assert enabled["disabled"] is False and enabled["disabled_reason"] is None
    with private.app_context():
        actions = db.session.scalars(
            select(AuditRecord.action).where(AuditRecord.subject_id == str(endpoint_id))
        ).all()
        assert actions.count("webhook_endpoint.update") == 3
    assert client.delete(path, headers=admin).status_code == 204
    assert client.get(path, headers=admin).status_code == 404


# --- deliveries ----------------------------------------------------------------------------------


def test_delivery_is_signed_and_verifies(private, receiver, caplog):
    caplog.set_level("DEBUG")
    with private.app_context():
        created = endpoint(receiver.url)
        secret, now = created.secret, datetime.now(UTC)
        event = emit(now=now)
        (delivery_id,) = planned(event, now)
        assert webhooks.deliver(delivery_id) is None
        (request,) = receiver.requests
        headers = {name.lower(): value for name, value in request["headers"].items()}
        assert headers["webhook-id"] == event.event_id
        assert headers["content-type"] == "application/json"
        assert headers["user-agent"].startswith("referral-service-webhooks/")
        payload = Webhook(secret).verify(request["body"], headers)
        assert payload == events.jsonable(events.as_dict(event))
        assert payload["type"] == "reward.created" and payload["data"]["amount"] == "10.00"
        assert delivery(delivery_id).status == "delivered"
        (attempt,) = attempts(delivery_id)
        assert attempt.status_code == 200 and attempt.error is None and attempt.duration_ms >= 0
        # delivered once: another try does nothing
        assert webhooks.deliver(delivery_id) is None
        assert len(receiver.requests) == 1
    assert secret not in caplog.text and secret.removeprefix("whsec_") not in caplog.text


def test_an_event_reaches_the_receiver_through_the_task_queue(private, task_queue, receiver):
    """A business step commits an event: the relay plans the delivery, the worker's task sends
    it (the queue runs tasks at once here), signed; relaying again sends nothing more."""
    with private.app_context():
        secret = endpoint(receiver.url, ["reward.created"]).secret
        event = emit(now=datetime.now(UTC))
        (request,) = receiver.requests
        headers = {name.lower(): value for name, value in request["headers"].items()}
        assert Webhook(secret).verify(request["body"], headers)["id"] == event.event_id
        row = db.session.scalar(select(WebhookDelivery))
        assert row.status == "delivered" and row.event_id == event.event_id
        task_queue.relay_now()
        task_queue.sweep_due()
        assert len(receiver.requests) == 1


def test_rotation_sends_both_signatures_for_a_day(private, receiver):
    with private.app_context():
        created = endpoint(receiver.url)
        old = created.secret
        now = datetime.now(UTC)
        new = webhooks.rotate_secret(created.endpoint.id, ADMIN_ACTOR, now=now).secret
        assert new != old and new.startswith("whsec_")
        (first,) = planned(emit(now=now), now)
        webhooks.deliver(first, now=now)
        headers = {k.lower(): v for k, v in receiver.requests[-1]["headers"].items()}
        assert len(headers["webhook-signature"].split(" ")) == 2
        body = receiver.requests[-1]["body"]
        Webhook(old).verify(body, headers)
        Webhook(new).verify(body, headers)
        later = now + webhooks.ROTATION_OVERLAP + timedelta(seconds=1)
        (second,) = planned(emit(now=later), later)
        webhooks.deliver(second, now=later)
        headers = {k.lower(): v for k, v in receiver.requests[-1]["headers"].items()}
        body = receiver.requests[-1]["body"].decode()
        assert headers["webhook-timestamp"] == str(int(later.timestamp()))
        assert headers["webhook-signature"] == Webhook(new).sign(headers["webhook-id"], later, body)


def test_500_then_200_follows_the_schedule(private, receiver):
    receiver.answer(500, 500, 200)
    with private.app_context():
        delivery_id, _, event = one_delivery(receiver.url)
        second = webhooks.deliver(delivery_id, now=T0)
        assert within_jitter(second - T0, 1)
        # not due yet: nothing is sent, the time of the next attempt is said again
        assert webhooks.deliver(delivery_id, now=T0 + timedelta(seconds=1)) == second
        assert len(receiver.requests) == 1
        third = webhooks.deliver(delivery_id, now=second)
        assert within_jitter(third - second, 2)
        assert webhooks.deliver(delivery_id, now=third) is None
        assert delivery(delivery_id).status == "delivered"
        ids = {request["headers"]["webhook-id"] for request in receiver.requests}
        assert ids == {event.event_id} and len(receiver.requests) == 3
        log = [(a.status_code, a.next_attempt_at) for a in attempts(delivery_id)]
        assert log == [(500, second), (500, third), (200, None)]
        endpoint_row = db.session.get(WebhookEndpoint, delivery(delivery_id).endpoint_id)
        assert endpoint_row.failing_since is None


def test_every_failure_until_the_last_step(private, receiver):
    receiver.answer(503)
    with private.app_context():
        delivery_id, _, _ = one_delivery(receiver.url)
        now, times = T0, []
        while now is not None:
            times.append(now)
            now = webhooks.deliver(delivery_id, now=now)
        assert len(times) == len(webhooks.SCHEDULE) == len(receiver.requests)
        for step, (before, after) in enumerate(itertools.pairwise(times), start=1):
            assert within_jitter(after - before, step)
        total = times[-1] - times[0]
        assert timedelta(days=2.7) < total < timedelta(days=3.5)
        row = delivery(delivery_id)
        assert row.status == "failed" and row.next_attempt_at is None and row.attempts == 10
        assert db.session.get(WebhookEndpoint, row.endpoint_id).disabled is False  # < 5 days


def test_a_timeout_is_a_failure(private, receiver):
    receiver.answer((200, {}, b"late", 1.5))
    with private.app_context():
        delivery_id, _, _ = one_delivery(receiver.url)
        next_at = webhooks.deliver(delivery_id, now=T0, timeout=0.3)
        assert within_jitter(next_at - T0, 1)
        (attempt,) = attempts(delivery_id)
        assert attempt.status_code is None and "Timed out after 0.3 s" in attempt.error
        assert delivery(delivery_id).status == "pending"


def test_default_timeout_is_ten_seconds():
    assert webhooks.TIMEOUT == 10.0


def test_410_disables_the_endpoint(private, client, admin, receiver):
    receiver.answer(410)
    with private.app_context():
        delivery_id, _, _ = one_delivery(receiver.url)
        other = planned(emit("payout.paid"))[0]
        assert webhooks.deliver(delivery_id, now=T0) is None
        row = delivery(delivery_id)
        assert row.status == "failed"
        endpoint_row = db.session.get(WebhookEndpoint, row.endpoint_id)
        assert endpoint_row.disabled and "410" in endpoint_row.disabled_reason
        # its other deliveries wait: nothing is due, nothing is sent
        assert webhooks.due_deliveries(T0 + timedelta(days=1), 10) == []
        assert webhooks.deliver(other, now=T0 + timedelta(days=1)) is None
        assert len(receiver.requests) == 1
        assert planned(emit()) == []  # a disabled endpoint gets no new deliveries
        endpoint_id = row.endpoint_id
    shown = client.get(f"/api/v1/webhook-endpoints/{endpoint_id}", headers=admin).json
    assert shown["disabled"] is True and "410" in shown["disabled_reason"]
    with private.app_context():
        assert db.session.scalar(
            select(AuditRecord).where(
                AuditRecord.action == "webhook_endpoint.disable",
                AuditRecord.actor == "system:webhooks",
            )
        )


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("3600", timedelta(hours=1)),
        ("Sun, 01 Nov 2026 11:00:00 GMT", timedelta(hours=2)),
        ("999999999", timedelta(days=1)),  # bounded
        ("1", None),  # shorter than the schedule: the schedule's wait
        ("soon", None),  # unreadable: the schedule's wait
    ],
)
def test_429_honours_retry_after(private, receiver, retry_after, expected):
    receiver.answer((429, {"Retry-After": retry_after}), 200)
    with private.app_context():
        delivery_id, _, _ = one_delivery(receiver.url)
        next_at = webhooks.deliver(delivery_id, now=T0)
        if expected is None:
            assert within_jitter(next_at - T0, 1)
        else:
            assert expected <= next_at - T0 <= expected + timedelta(seconds=1)
        assert attempts(delivery_id)[0].status_code == 429


def test_redirects_are_not_followed(private, receiver):
    receiver.answer((302, {"Location": f"http://127.0.0.1:{receiver.port}/elsewhere"}))
    with private.app_context():
        delivery_id, _, _ = one_delivery(receiver.url)
        assert within_jitter(webhooks.deliver(delivery_id, now=T0) - T0, 1)
        assert [r["path"] for r in receiver.requests] == ["/hooks"]
        (attempt,) = attempts(delivery_id)
        assert attempt.status_code == 302 and "not followed" in attempt.error


def test_five_days_of_failures_disable_the_endpoint(private, receiver):
    receiver.answer(500)
    with private.app_context():
        first, _, _ = one_delivery(receiver.url)
        webhooks.deliver(first, now=T0)
        endpoint_id = delivery(first).endpoint_id
        assert db.session.get(WebhookEndpoint, endpoint_id).failing_since == T0
        late = T0 + webhooks.FAILING_LIMIT - timedelta(minutes=1)
        (second,) = planned(emit(now=late), late)
        webhooks.deliver(second, now=late)
        assert not db.session.get(WebhookEndpoint, endpoint_id, populate_existing=True).disabled
        later = T0 + webhooks.FAILING_LIMIT + timedelta(minutes=1)
        (third,) = planned(emit(now=later), later)
        assert webhooks.deliver(third, now=later) is not None
        row = db.session.get(WebhookEndpoint, endpoint_id, populate_existing=True)
        assert row.disabled and "5 days" in row.disabled_reason
        assert webhooks.due_deliveries(later + timedelta(days=2), 10) == []


def test_a_success_clears_the_failing_time(private, receiver):
    receiver.answer(500, 200)
    with private.app_context():
        delivery_id, _, _ = one_delivery(receiver.url)
        next_at = webhooks.deliver(delivery_id, now=T0)
        endpoint_id = delivery(delivery_id).endpoint_id
        assert db.session.get(WebhookEndpoint, endpoint_id).failing_since == T0
        webhooks.deliver(delivery_id, now=next_at)
        assert (
            db.session.get(WebhookEndpoint, endpoint_id, populate_existing=True).failing_since
            is None
        )


def test_planning_is_filtered_and_idempotent(private, receiver):
    with private.app_context():
        everything = endpoint(receiver.url).endpoint.id
        rewards_only = endpoint(receiver.url, ["reward.created"]).endpoint.id
        endpoint(receiver.url, ["payout.paid"])
        event = emit("reward.created")
        ids = planned(event)
        assert {delivery(i).endpoint_id for i in ids} == {everything, rewards_only}
        assert planned(event) == []  # a second relay of the same event adds nothing
        assert db.session.scalar(select(func.count()).select_from(WebhookDelivery)) == 2
        assert sorted(webhooks.due_deliveries(T0, 10)) == ids
        assert webhooks.due_deliveries(T0 - timedelta(seconds=1), 10) == []


def test_racing_workers_deliver_once(private, receiver):
    receiver.answer((200, {}, b"ok", 0.2))
    with private.app_context():
        delivery_id, _, _ = one_delivery(receiver.url)
    results, barrier = [], threading.Barrier(4)

    def worker():
        with private.app_context():
            barrier.wait()
            results.append(webhooks.deliver(delivery_id, now=T0))
            db.session.remove()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [None] * 4
    assert len(receiver.requests) == 1
    with private.app_context():
        assert delivery(delivery_id).status == "delivered"
        assert len(attempts(delivery_id)) == 1


def test_a_success_after_the_lease_ran_out_is_recorded_once(private, receiver):
    """Two attempts overlap (the first one's lease ran out): the receiver sees the event twice,
    with one webhook-id; the delivery is delivered once."""
    with private.app_context():
        delivery_id, _, _ = one_delivery(receiver.url)
        first = webhooks._claim(delivery_id, T0)
        second = webhooks._claim(delivery_id, T0 + webhooks.LEASE + timedelta(seconds=1))
        assert first.token != second.token
        for request, now in ((second, T0 + webhooks.LEASE), (first, T0)):
            webhooks._record(request, webhooks._send(request, 2.0), now)
        row = delivery(delivery_id)
        assert row.status == "delivered" and row.attempts == 1
        assert len(attempts(delivery_id)) == 2 and len(receiver.requests) == 2
        assert len({r["headers"]["webhook-id"] for r in receiver.requests}) == 1


def test_a_lost_lease_records_no_failure(private, receiver):
    receiver.answer(500)
    with private.app_context():
        delivery_id, _, _ = one_delivery(receiver.url)
        first = webhooks._claim(delivery_id, T0)
        later = T0 + webhooks.LEASE + timedelta(seconds=1)
        second = webhooks._claim(delivery_id, later)
        assert webhooks._record(first, webhooks._send(first, 2.0), T0) is None
        assert delivery(delivery_id).lease_token == second.token  # still the second's
        assert webhooks._record(second, webhooks._send(second, 2.0), later) is not None
        assert delivery(delivery_id).attempts == 1 and len(attempts(delivery_id)) == 2


def test_redelivery_sends_the_same_webhook_id(private, client, admin, receiver):
    with private.app_context():
        delivery_id, _, event = one_delivery(receiver.url)
        event_id = event.event_id
        webhooks.deliver(delivery_id, now=T0)
        endpoint_id = delivery(delivery_id).endpoint_id
    path = f"/api/v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/redeliver"
    response = client.post(path, headers=admin)
    assert response.status_code == 202 and response.json["status"] == "pending"
    with private.app_context():
        assert delivery_id in webhooks.due_deliveries(datetime.now(UTC), 10)
        webhooks.deliver(delivery_id)
        assert delivery(delivery_id).status == "delivered" and delivery(delivery_id).attempts == 2
    assert [r["headers"]["webhook-id"] for r in receiver.requests] == [event_id] * 2
    log = client.get(f"/api/v1/webhook-endpoints/{endpoint_id}/deliveries", headers=admin).json
    (item,) = log["items"]
    assert item["id"] == delivery_id and item["event_id"] == event_id
    assert item["status"] == "delivered" and item["attempt_count"] == 2
    assert item["status_code"] == 200 and len(item["attempts"]) == 2
    assert {"attempted_at", "status_code", "duration_ms", "error", "next_retry_at"} <= set(
        item["attempts"][0]
    )
    other = client.post(
        f"/api/v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id + 1}/redeliver",
        headers=admin,
    )
    assert other.status_code == 404
    client.patch(f"/api/v1/webhook-endpoints/{endpoint_id}", headers=admin, json={"disabled": True})
    assert client.post(path, headers=admin).status_code == 409


def test_a_secret_no_key_opens_is_a_failed_attempt(private, receiver):
    with private.app_context():
        delivery_id, _, _ = one_delivery(receiver.url)
        private.secret_key = "a-new-secret-key-without-fallbacks-000"
        assert webhooks.deliver(delivery_id, now=T0) is not None
        (attempt,) = attempts(delivery_id)
        assert "SECRET_KEY" in attempt.error and receiver.requests == []


def test_a_deleted_endpoint_mid_attempt(private, receiver):
    with private.app_context():
        delivery_id, _, _ = one_delivery(receiver.url)
        request = webhooks._claim(delivery_id, T0)
        webhooks.delete_endpoint(delivery(delivery_id).endpoint_id, ADMIN_ACTOR)
        assert webhooks._record(request, webhooks._send(request, 2.0), T0) is None
        assert db.session.scalar(select(func.count()).select_from(WebhookDelivery)) == 0


def test_a_huge_or_binary_answer_is_cut(private, receiver):
    receiver.answer((500, {}, b"\x00\xff" * 50_000))
    with private.app_context():
        delivery_id, _, _ = one_delivery(receiver.url)
        webhooks.deliver(delivery_id, now=T0)
        (attempt,) = attempts(delivery_id)
        assert len(attempt.response_body) <= webhooks.MAX_RESPONSE_BODY
        assert "\x00" not in attempt.response_body


def test_retry_after_parsing():
    now = T0
    assert webhooks.retry_after_delay(None, now) is None
    assert webhooks.retry_after_delay("120", now) == timedelta(seconds=120)
    assert webhooks.retry_after_delay("Sun, 01 Nov 2026 08:00:00 GMT", now) == timedelta(0)
    assert webhooks.retry_after_delay("9" * 40, now) == webhooks.MAX_RETRY_AFTER
    assert webhooks.retry_after_delay("-5", now) is None
    assert webhooks.retry_after_delay("\x00", now) is None


# --- the console ---------------------------------------------------------------------------------


def test_console_owner_manages_endpoints(private, receiver):
    from tests.test_admin_payouts import console, flashed, page, post

    owner = console(private, "owner@example.com", "owner")
    listing = page(owner, "/admin/webhooks")
    assert "No webhook endpoints yet." in listing and 'href="/admin/webhooks"' in listing
    response = post(
        owner,
        "/admin/webhooks",
        "/admin/webhooks",
        url=receiver.url,
        description="ERP",
        events=["reward.created", "payout.paid"],
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    shown = response.get_data(as_text=True)
    (secret,) = re.findall(r'value="(whsec_[^"]+)"', shown)
    with private.app_context():
        (row,) = db.session.scalars(select(WebhookEndpoint)).all()
        assert row.events == ["reward.created", "payout.paid"] and row.description == "ERP"
        endpoint_id = row.id
    detail = page(owner, f"/admin/webhooks/{endpoint_id}")
    assert secret not in detail and receiver.url in detail and "active" in detail
    assert secret not in page(owner, "/admin/webhooks")
    # rotate: a new secret, shown once
    rotated = post(owner, f"/admin/webhooks/{endpoint_id}/rotate", f"/admin/webhooks/{endpoint_id}")
    assert rotated.status_code == 200
    (new,) = re.findall(r'value="(whsec_[^"]+)"', rotated.get_data(as_text=True))
    assert new != secret and "24 hours" in rotated.get_data(as_text=True)
    # change the filter, disable, enable
    saved = post(
        owner,
        f"/admin/webhooks/{endpoint_id}",
        f"/admin/webhooks/{endpoint_id}",
        url=receiver.url,
        description="",
        events=["*"],
    )
    assert "Endpoint saved." in flashed(owner, saved)
    path = f"/admin/webhooks/{endpoint_id}"
    disabled = flashed(owner, post(owner, f"{path}/disable", path))
    assert "Disabled by admin:owner@example.com" in disabled
    assert "Enable" in disabled
    enabled = flashed(owner, post(owner, f"{path}/enable", path))
    assert "Endpoint enabled" in enabled
    with private.app_context():
        row = db.session.get(WebhookEndpoint, endpoint_id)
        assert row.events == ["*"] and row.disabled is False
        actions = set(db.session.scalars(select(AuditRecord.action)).all())
        assert {"webhook_endpoint.create", "webhook_endpoint.rotate_secret"} <= actions
    confirm = page(owner, f"{path}/delete")
    assert "cannot be undone" in confirm
    gone = flashed(owner, post(owner, f"{path}/delete", f"{path}/delete"))
    assert f"Deleted webhook endpoint {endpoint_id}" in gone
    assert owner.get(path).status_code == 404


def test_console_refuses_bad_endpoints_with_reasons(app, names):
    from tests.test_admin_payouts import console, post

    owner = console(app, "owner@example.com", "owner")
    names["internal.example"] = ["10.1.2.3"]
    for form, words in (
        ({"url": "https://internal.example/", "events": ["*"]}, "a private address"),
        ({"url": "http://shop.example/", "events": ["*"]}, "Must be an https URL, not http"),
        ({"url": "file:///etc/passwd", "events": ["*"]}, "file:"),
        ({"url": "https://internal.example/"}, "one event type or more"),
        ({"url": "https://internal.example/", "events": ["nonsense"]}, "one event type"),
    ):
        response = post(owner, "/admin/webhooks", "/admin/webhooks", description="", **form)
        assert response.status_code == 422, form
        assert words in response.get_data(as_text=True), form
    control = post(
        owner, "/admin/webhooks", "/admin/webhooks", url="https://x.example/\x00", events=["*"]
    )
    assert control.status_code == 400
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(WebhookEndpoint)) == 0


@pytest.mark.parametrize("allow_private", [False, True])
def test_console_url_help_says_what_is_taken(app, allow_private, receiver):
    """The URL field's help follows WEBHOOKS_ALLOW_PRIVATE: it never says private addresses
    are refused while they are taken, nor the other way round."""
    from referral_service.admin.webhooks import URL_HINTS
    from tests.test_admin_payouts import console, page

    app.config["WEBHOOKS_ALLOW_PRIVATE"] = allow_private
    owner = console(app, "owner@example.com", "owner")
    with app.app_context():
        url = receiver.url if allow_private else "https://93.184.216.34/"
        endpoint_id = endpoint(url).endpoint.id
    refused = "private, loopback and link-local addresses are refused"
    for path in ("/admin/webhooks", f"/admin/webhooks/{endpoint_id}"):
        shown = page(owner, path)
        hint = re.search(r'<small id="webhook-url-hint" class="hint">([^<]*)</small>', shown)
        assert hint and hint.group(1) == URL_HINTS[allow_private], path
        assert (refused in shown) is not allow_private
        assert ("WEBHOOKS_ALLOW_PRIVATE is set" in shown) is allow_private


def test_console_viewers_read_only(private, receiver):
    from tests.test_admin_payouts import console, page, post, token

    with private.app_context():
        created = endpoint(receiver.url)
        endpoint_id = created.endpoint.id
    viewer = console(private, "viewer@example.com", "viewer")
    listing = page(viewer, "/admin/webhooks")
    assert receiver.url in listing and "Add an endpoint" not in listing
    detail = page(viewer, f"/admin/webhooks/{endpoint_id}")
    assert "Rotate" not in detail and "Redeliver" not in detail
    csrf = token(viewer, "/admin/webhooks")
    for path in (
        "/admin/webhooks",
        f"/admin/webhooks/{endpoint_id}",
        f"/admin/webhooks/{endpoint_id}/disable",
        f"/admin/webhooks/{endpoint_id}/rotate",
        f"/admin/webhooks/{endpoint_id}/delete",
        f"/admin/webhooks/{endpoint_id}/deliveries/1/redeliver",
    ):
        response = post(viewer, path, "/admin/webhooks", csrf_token=csrf, url=receiver.url)
        assert response.status_code == 403, path
    assert viewer.get(f"/admin/webhooks/{endpoint_id}/delete").status_code == 403
    assert viewer.get("/admin/webhooks/999").status_code == 404


def test_console_delivery_log_and_redeliver(private, receiver):
    from tests.test_admin_payouts import console, flashed, page, post

    receiver.answer(500, 410)
    with private.app_context():
        delivery_id, _, event = one_delivery(receiver.url)
        event_id = event.event_id
        next_at = webhooks.deliver(delivery_id, now=T0)
        webhooks.deliver(delivery_id, now=next_at)
        endpoint_id = delivery(delivery_id).endpoint_id
    owner = console(private, "owner@example.com", "owner")
    with private.app_context():
        db.session.get(WebhookEndpoint, endpoint_id).disabled = False
        db.session.commit()
    assert f"failing</span> since {T0:%Y-%m-%d %H:%M} UTC" in page(owner, "/admin/webhooks")
    with private.app_context():
        db.session.get(WebhookEndpoint, endpoint_id).disabled = True
        db.session.commit()
    detail = page(owner, f"/admin/webhooks/{endpoint_id}")
    assert event_id in detail and "500" in detail and "410" in detail
    assert "disabled" in detail and "answered 410 Gone" in detail
    assert "answered 410 Gone" in page(owner, "/admin/webhooks")
    path = f"/admin/webhooks/{endpoint_id}"
    refused = flashed(owner, post(owner, f"{path}/deliveries/{delivery_id}/redeliver", path))
    assert "enable it before redelivering" in refused
    post(owner, f"{path}/enable", path)
    again = flashed(owner, post(owner, f"{path}/deliveries/{delivery_id}/redeliver", path))
    assert f"Event {event_id} will be sent again" in again
    with private.app_context():
        assert delivery(delivery_id).status == "pending"
    missing = post(owner, f"{path}/deliveries/{delivery_id + 5}/redeliver", path)
    assert missing.status_code == 404


def test_a_deleted_endpoints_id_is_never_given_again(private, client, admin, receiver):
    first = make(client, admin, receiver.url).json["id"]
    assert client.delete(f"/api/v1/webhook-endpoints/{first}", headers=admin).status_code == 204
    second = make(client, admin, receiver.url).json["id"]
    assert second > first  # SQLite would hand out the newest row's id again without AUTOINCREMENT

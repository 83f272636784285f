"""The unit of work: one place commits a business step, with its audit records and events.

Three parts: a scan of the package's source proving that no module but the unit of work (and
the named infrastructure) commits or rolls back; the unit itself (events written with the
change, none with a change rolled back, nested units, listeners after commit); and the payout
events over HTTP (one event per step, none for a refused or replayed step, one for a race).
"""

import ast
import logging
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from referral_service.domain import unit as unit_module
from referral_service.domain.unit import unit_of_work
from referral_service.extensions import db
from referral_service.models import AuditRecord, OutboxEvent, Payout, Reward
from tests.factories import api_key, auth
from tests.journey_helpers import approve, converted_friend, set_program, together

PACKAGE = Path(__file__).resolve().parent.parent / "referral_service"
EVENT_ID = re.compile(r"^evt_[0-9A-HJKMNP-TV-Z]{26}$")  # Crockford base32, 26 characters

# --- no business step commits anywhere but through the unit of work --------------------------

# Modules that may end transactions themselves, and why.
INFRASTRUCTURE = {
    "domain/unit.py": "the unit of work: the one place a business step commits or rolls back",
    "models/base.py": "end_read ends a read-only transaction (begin_write, before a step)",
    "database.py": "outage recovery: a session an outage broke is rolled back to be usable",
    "extensions.py": "the end-of-request clean-up of the session",
}
# Functions outside those modules that may, each with the reason its module gives in a comment.
EXCEPTIONS = {
    # the click flusher's batch insert on its own connection: clicks are no business event
    ("domain/clicks.py", "ClickRecorder._insert"),
    # the rate limit's key lookup, before any step: a read that failed is dropped
    ("rate_limits.py", "api_client"),
}
# Attribute calls that end a transaction (or open one that commits at the end of its block).
ENDINGS = {"commit", "rollback", "begin", "begin_nested"}
RAW = re.compile(r"^\s*(COMMIT|ROLLBACK|BEGIN|END|SAVEPOINT|RELEASE)\b", re.IGNORECASE)


class _Finder(ast.NodeVisitor):
    """Every call that ends a transaction, and every `begin_write` call, with its function."""

    def __init__(self):
        self.scope: list[str] = []
        self.endings: list[tuple[str, int, str]] = []
        self.writes: list[tuple[str, int]] = []

    def _enter(self, node):
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _enter

    def visit_Call(self, node: ast.Call):
        where = ".".join(self.scope) or "<module>"
        called = node.func
        name = called.attr if isinstance(called, ast.Attribute) else getattr(called, "id", None)
        if isinstance(called, ast.Attribute) and name in ENDINGS:
            self.endings.append((where, node.lineno, f".{name}("))
        if name == "begin_write":
            self.writes.append((where, node.lineno))
        if name in ("text", "exec_driver_sql"):  # raw SQL that ends or opens a transaction
            for argument in node.args[:1]:
                sql = argument.value if isinstance(argument, ast.Constant) else None
                if isinstance(sql, str) and RAW.match(sql):
                    self.endings.append((where, node.lineno, sql.strip()))
        self.generic_visit(node)


def _scan() -> dict[str, _Finder]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        finder = _Finder()
        finder.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        found[path.relative_to(PACKAGE).as_posix()] = finder
    return found


def test_the_scan_sees_the_unit_of_work_commit():
    """The scan works: it finds the unit's own commit and rollback, and the writer's begin."""
    unit = _scan()["domain/unit.py"]
    assert {what for _, _, what in unit.endings} >= {".commit(", ".rollback("}
    assert [where for where, _ in unit.writes] == ["unit_of_work"]


def test_no_business_step_commits_outside_the_unit_of_work():
    """Only the unit of work and the named infrastructure commit, roll back or begin a
    transaction that commits; anything else is a business step going around the unit."""
    offenders = [
        f"referral_service/{module}:{line} {where}() calls {what}"
        for module, finder in _scan().items()
        if module not in INFRASTRUCTURE
        for where, line, what in finder.endings
        if (module, where) not in EXCEPTIONS
    ]
    assert offenders == [], "\n".join(offenders)


def test_only_the_unit_of_work_begins_a_write():
    """A step that calls begin_write itself opens the write transaction without the unit that
    would commit it, its audit records and its events."""
    offenders = [
        f"referral_service/{module}:{line} {where}() calls begin_write"
        for module, finder in _scan().items()
        if module not in ("domain/unit.py", "models/base.py")
        for where, line in finder.writes
    ]
    assert offenders == [], "\n".join(offenders)


# --- the unit itself ---------------------------------------------------------------------------

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def listeners(monkeypatch) -> list:
    """The unit's listeners of committed events, empty for the test and restored after (the
    worker's relay, woken by one, would mark the events relayed and commit on its own)."""
    fresh: list = []
    monkeypatch.setattr(unit_module, "_committed_listeners", fresh)
    return fresh


def outbox_seen_elsewhere() -> list[tuple[str, str]]:
    """`(event_id, type)` of the outbox rows another connection sees: the committed ones."""
    with db.engine.connect() as connection:
        return connection.execute(
            select(OutboxEvent.event_id, OutboxEvent.type).order_by(OutboxEvent.id)
        ).all()


def audit_actions() -> list[str]:
    return list(db.session.scalars(select(AuditRecord.action).order_by(AuditRecord.id)))


def a_payout(now=NOW) -> Payout:
    payout = Payout(status="created", created_at=now, created_by="admin:anna@example.com")
    db.session.add(payout)
    db.session.flush()
    return payout


def test_a_unit_commits_its_change_audit_and_events_together(app, listeners):
    with app.app_context():
        with unit_of_work(NOW) as unit:
            payout_id = a_payout(unit.now).id
            unit.audit("admin:anna@example.com", "test.step", "payout", payout_id, None, {"a": 1})
            unit.emit(
                "payout.created",
                {"id": payout_id, "at": NOW, "amount": Decimal("12.50"), "lines": [{"n": 1}]},
            )
            unit.emit("payout.approved", {"id": payout_id})
        seen = outbox_seen_elsewhere()
        assert [kind for _, kind in seen] == ["payout.created", "payout.approved"]
        assert all(EVENT_ID.match(event_id) for event_id, _ in seen), seen
        assert len({event_id for event_id, _ in seen}) == 2
        rows = db.session.scalars(select(OutboxEvent).order_by(OutboxEvent.id)).all()
        assert rows[0].data == {
            "id": payout_id,
            "at": NOW.isoformat(),
            "amount": "12.50",
            "lines": [{"n": 1}],
        }
        assert [row.created_at for row in rows] == [NOW, NOW]
        assert [row.relayed_at for row in rows] == [None, None]
        assert db.session.get(Payout, payout_id) is not None
        record = db.session.scalars(select(AuditRecord)).one()
        assert (record.action, record.subject_id, record.at) == ("test.step", str(payout_id), NOW)


def test_an_exception_rolls_back_the_change_and_its_events(app, listeners):
    """No ghost events: a step that fails after its write and its emit leaves nothing."""
    called = []
    unit_module.on_events_committed(called.append)
    with app.app_context():
        with pytest.raises(RuntimeError, match="after the write"), unit_of_work(NOW) as unit:
            payout = a_payout()
            unit.audit("admin:anna@example.com", "test.step", "payout", payout.id)
            unit.emit("payout.created", {"id": payout.id})
            raise RuntimeError("the step fails after the write")
        assert outbox_seen_elsewhere() == []
        assert db.session.scalar(select(func.count()).select_from(Payout)) == 0
        assert audit_actions() == []
        # the session is usable again, and a next unit commits normally
        with unit_of_work(NOW) as unit:
            unit.emit("payout.created", {"id": a_payout().id})
        assert [kind for _, kind in outbox_seen_elsewhere()] == ["payout.created"]
    assert len(called) == 1  # the failed unit told nobody


def test_a_failure_while_writing_the_events_rolls_back_the_change(app, listeners):
    """An event whose object cannot be shown fails the step at commit: the change goes too."""
    with app.app_context():
        with pytest.raises(LookupError), unit_of_work(NOW) as unit:
            a_payout()
            unit.emit("payout.created", object())  # no shape registered for it
        assert db.session.scalar(select(func.count()).select_from(Payout)) == 0
        assert outbox_seen_elsewhere() == []


def test_an_unknown_event_type_is_refused_and_nothing_is_written(app, listeners):
    with app.app_context():
        with pytest.raises(ValueError, match="unknown event type"), unit_of_work(NOW) as unit:
            a_payout()
            unit.emit("reward.paid", {"id": 1})  # not in the contract's list
        assert db.session.scalar(select(func.count()).select_from(Payout)) == 0
        assert outbox_seen_elsewhere() == []


@pytest.fixture
def commits(app):
    """How many times a session committed during the test."""
    counted: list = []

    def count(session):
        counted.append(session)

    event.listen(Session, "after_commit", count)
    yield counted
    event.remove(Session, "after_commit", count)


def test_a_nested_unit_joins_the_outer_one_and_commits_once(app, commits, listeners):
    with app.app_context():
        with unit_of_work(NOW) as outer:
            first = a_payout()
            outer.emit("payout.created", {"id": first.id})
            with unit_of_work(datetime(2000, 1, 1, tzinfo=UTC)) as inner:
                assert inner is outer and inner.now == NOW  # the outer step's time
                inner.emit("payout.approved", {"id": first.id})
            assert commits == []
            assert outbox_seen_elsewhere() == []  # the inner unit committed nothing
        assert len(commits) == 1
        assert [kind for _, kind in outbox_seen_elsewhere()] == [
            "payout.created",
            "payout.approved",
        ]


def test_a_failing_nested_unit_rolls_back_the_outer_step(app, commits, listeners):
    with app.app_context():
        with pytest.raises(RuntimeError), unit_of_work(NOW) as outer:
            outer.emit("payout.created", {"id": a_payout().id})
            with unit_of_work() as inner:
                inner.emit("payout.approved", {"id": 1})
                raise RuntimeError("the inner part fails")
        assert commits == []
        assert outbox_seen_elsewhere() == []
        assert db.session.scalar(select(func.count()).select_from(Payout)) == 0


def test_listeners_get_the_event_ids_after_the_commit(app, listeners):
    calls = []

    def listener(event_ids):  # what another connection sees when the listener runs
        calls.append((event_ids, [event_id for event_id, _ in outbox_seen_elsewhere()]))

    unit_module.on_events_committed(listener)
    with app.app_context():
        with unit_of_work(NOW) as unit:
            unit.emit("payout.created", {"id": 1})
            unit.emit("payout.paid", {"id": 1})
            assert calls == []
        with unit_of_work(NOW):
            a_payout()  # a step without events tells nobody
        written = [event_id for event_id, _ in outbox_seen_elsewhere()]
    assert calls == [(written, written)]


def test_units_on_threads_lose_no_update(app, listeners):
    """Each unit begins as a writer (SQLite: the writer queue and BEGIN IMMEDIATE) and a step's
    row lock holds until its commit (PostgreSQL): read-modify-write steps lose nothing."""
    with app.app_context(), unit_of_work(NOW):
        payout = a_payout()
        payout.reference = "0"
    with app.app_context():
        payout_id = db.session.scalar(select(Payout.id))

    def step(i):
        with app.app_context(), unit_of_work() as unit:
            locked = db.session.scalar(
                select(Payout).where(Payout.id == payout_id).with_for_update()
            )
            locked.reference = str(int(locked.reference) + 1)
            unit.emit("payout.approved", {"id": payout_id, "step": i})

    together(8, step)
    with app.app_context():
        assert db.session.get(Payout, payout_id).reference == "8"
        assert len(outbox_seen_elsewhere()) == 8


def test_a_failing_listener_does_not_break_the_step(app, listeners, caplog):
    told = []

    def broken(event_ids):
        raise ConnectionError("the queue is away")

    unit_module.on_events_committed(broken)
    unit_module.on_events_committed(told.append)
    with app.app_context(), caplog.at_level(logging.ERROR, logger=unit_module.__name__):
        with unit_of_work(NOW) as unit:
            payout_id = a_payout().id
            unit.emit("payout.created", {"id": payout_id})
        assert db.session.get(Payout, payout_id) is not None
        assert len(outbox_seen_elsewhere()) == 1
    assert len(told) == 1 and len(told[0]) == 1  # the next listener was told all the same
    assert "a listener of committed events failed" in caplog.text
    assert "the queue is away" in caplog.text


# --- payout events over HTTP -------------------------------------------------------------------


@pytest.fixture
def approved(app, client, shop, admin):
    """Three approved referrer rewards (ref-1 twice, ref-2), under the approval threshold."""
    set_program(client, admin, hold_days=0, referrer_reward={"type": "fixed", "value": "10.00"})
    ids = []
    for friend, referrer in (("f-1", "ref-1"), ("f-2", "ref-1"), ("f-3", "ref-2")):
        body = converted_friend(client, shop, friend, referrer=referrer)
        ids.append(body["rewards"][0]["id"])
        assert approve(client, admin, ids[-1]).status_code == 200
    return ids


@pytest.fixture
def second_admin(app) -> dict:
    """Headers of another admin key: the second pair of eyes."""
    with app.app_context():
        return auth(api_key("admin", name="second-admin"))


def payout_events(app, kind: str | None = None) -> list[OutboxEvent]:
    with app.app_context():
        query = select(OutboxEvent).where(OutboxEvent.type.like("payout.%"))
        if kind:
            query = query.where(OutboxEvent.type == kind)
        return db.session.scalars(query.order_by(OutboxEvent.id)).all()


def create_batch(client, admin, **body):
    return client.post("/api/v1/payouts", json=body or {"all_approved": True}, headers=admin)


def mark_paid(client, admin, payout_id: int, reference: str = "SEPA-1"):
    return client.post(
        f"/api/v1/payouts/{payout_id}/mark-paid", json={"reference": reference}, headers=admin
    )


def test_a_batch_writes_payout_created_once(app, client, admin, approved):
    created = create_batch(client, admin)
    assert created.status_code == 201, created.json
    (written,) = payout_events(app)
    assert written.type == "payout.created"
    assert EVENT_ID.match(written.event_id)
    shown = client.get(f"/api/v1/payouts/{created.json['id']}", headers=admin).json
    assert written.data == shown  # the batch as the API shows it
    assert written.data["reward_ids"] == sorted(approved)
    assert create_batch(client, admin).status_code == 409  # nothing left: no second event
    assert len(payout_events(app)) == 1


def test_a_batch_failing_after_its_write_leaves_no_event(app, admin, approved, monkeypatch):
    """No ghost event: the batch is made, its rewards claimed and its event emitted, then the
    step fails before its commit; nothing of it stays."""
    from referral_service.domain import payouts

    emit = unit_module.Unit.emit

    def emit_then_fail(unit, kind, subject):
        emit(unit, kind, subject)
        raise RuntimeError("the step fails after its write")

    monkeypatch.setattr(unit_module.Unit, "emit", emit_then_fail)
    with app.app_context():
        with pytest.raises(RuntimeError, match="after its write"):
            payouts.create("admin:anna@example.com", all_approved=True)
        assert db.session.scalar(select(func.count()).select_from(Payout)) == 0
        assert db.session.scalar(select(func.count()).where(Reward.payout_id.is_not(None))) == 0
        assert "payout.create" not in audit_actions()
    assert payout_events(app) == []


def test_a_refused_batch_writes_no_event(app, client, admin, approved):
    refused = create_batch(client, admin, reward_ids=[approved[0], 999_999])
    assert refused.status_code == 409
    assert payout_events(app) == []
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Payout)) == 0
        assert db.session.scalar(select(func.count()).where(Reward.payout_id.is_not(None))) == 0


def test_approval_writes_payout_approved(app, client, admin, second_admin, approved):
    batch = create_batch(client, admin).json
    own = client.post(f"/api/v1/payouts/{batch['id']}/approve", headers=admin)
    assert own.status_code == 409  # its creator: refused, no event
    assert [e.type for e in payout_events(app)] == ["payout.created"]
    approved_batch = client.post(f"/api/v1/payouts/{batch['id']}/approve", headers=second_admin)
    assert approved_batch.status_code == 200, approved_batch.json
    (written,) = payout_events(app, "payout.approved")
    assert written.data == client.get(f"/api/v1/payouts/{batch['id']}", headers=admin).json
    assert written.data["approved_by"] == approved_batch.json["approved_by"]
    again = client.post(f"/api/v1/payouts/{batch['id']}/approve", headers=second_admin)
    assert again.status_code == 409
    assert len(payout_events(app, "payout.approved")) == 1


def test_mark_paid_writes_payout_paid_once(app, client, admin, approved):
    batch = create_batch(client, admin).json
    paid = mark_paid(client, admin, batch["id"], "SEPA-77")
    assert paid.status_code == 200, paid.json
    (written,) = payout_events(app, "payout.paid")
    assert written.data == client.get(f"/api/v1/payouts/{batch['id']}", headers=admin).json
    assert (written.data["status"], written.data["reference"]) == ("paid", "SEPA-77")
    assert written.data["reward_ids"] == sorted(approved)  # the rewards it paid
    with app.app_context():
        assert set(db.session.scalars(select(Reward.status))) == {"paid"}
        (record,) = db.session.scalars(
            select(AuditRecord).where(AuditRecord.action == "payout.mark_paid")
        ).all()
        assert record.after["reward_ids"] == sorted(approved)
    # a replay, or a second payment, writes nothing twice
    for reference in ("SEPA-77", "SEPA-78"):
        assert mark_paid(client, admin, batch["id"], reference).status_code == 409
    assert [e.type for e in payout_events(app)] == ["payout.created", "payout.paid"]
    with app.app_context():
        actions = audit_actions()
    assert actions.count("payout.mark_paid") == 1


def test_a_batch_above_the_threshold_is_not_paid_and_tells_nothing(
    app, client, shop, admin, approved
):
    set_program(client, admin, referrer_reward={"type": "fixed", "value": "600.00"})
    body = converted_friend(client, shop, "f-9", referrer="ref-9")
    assert approve(client, admin, body["rewards"][0]["id"]).status_code == 200
    batch = create_batch(client, admin, reward_ids=[body["rewards"][0]["id"]]).json
    refused = mark_paid(client, admin, batch["id"])
    assert refused.status_code == 409
    assert [e.type for e in payout_events(app)] == ["payout.created"]


def post_from_thread(app, path: str, body: dict | None, headers: dict) -> int:
    return app.test_client().post(path, json=body, headers=headers).status_code


def test_two_mark_paid_at_once_write_one_event(app, admin, client, approved):
    batch = create_batch(client, admin).json
    path = f"/api/v1/payouts/{batch['id']}/mark-paid"
    statuses = together(4, lambda i: post_from_thread(app, path, {"reference": f"SEPA-{i}"}, admin))
    assert sorted(statuses) == [200, 409, 409, 409]
    assert len(payout_events(app, "payout.paid")) == 1


def test_two_batches_at_once_take_each_reward_once(app, admin, client, approved):
    statuses = together(
        4, lambda i: post_from_thread(app, "/api/v1/payouts", {"all_approved": True}, admin)
    )
    assert sorted(statuses) == [201, 409, 409, 409]
    (written,) = payout_events(app, "payout.created")
    assert written.data["reward_ids"] == sorted(approved)


def test_two_approvals_at_once_write_one_event(app, admin, client, approved):
    batch = create_batch(client, admin).json
    with app.app_context():
        approvers = [auth(api_key("admin", name=f"approver-{i}")) for i in range(4)]
    path = f"/api/v1/payouts/{batch['id']}/approve"
    statuses = together(4, lambda i: post_from_thread(app, path, None, approvers[i]))
    assert sorted(statuses) == [200, 409, 409, 409]
    assert len(payout_events(app, "payout.approved")) == 1

"""Payouts in the admin console and four eyes (console, API and domain).

CSRF stays on: every form is posted with the token read from the page that carries it. A batch
whose total is above `PAYOUT_APPROVAL_THRESHOLD` (500.00 by default) needs a second approver.
"""

import csv
import io
import re

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from referral_service import config
from referral_service.domain import admins, payouts
from referral_service.errors import Conflict, NotFound
from referral_service.extensions import db
from referral_service.models import AuditRecord, Payout, Reward
from tests.factories import api_key, auth
from tests.journey_helpers import approve, converted_friend, set_program

PASSWORD = "correct horse battery"
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def console(app, email: str, role: str = "approver"):
    """A test client of its own, signed in as a new admin."""
    with app.app_context():
        admins.create(email, PASSWORD, role)
    browser = app.test_client()
    form = {"csrf_token": token(browser, "/admin/login"), "email": email, "password": PASSWORD}
    assert browser.post("/admin/login", data=form).status_code == 302
    return browser


def token(browser, path: str) -> str:
    response = browser.get(path)
    assert response.status_code == 200, response.status_code
    return TOKEN.search(response.get_data(as_text=True)).group(1)


def post(browser, path: str, page: str, **form):
    """POST a form with the CSRF token of the page that shows it."""
    form.setdefault("csrf_token", token(browser, page))
    return browser.post(path, data=form)


def page(browser, path: str) -> str:
    response = browser.get(path)
    assert response.status_code == 200, response.status_code
    return response.get_data(as_text=True)


def flashed(browser, response) -> str:
    """The page a POST redirected to, with its messages."""
    assert response.status_code == 302, response.get_data(as_text=True)
    return page(browser, response.headers["Location"])


def create(browser, **form) -> int:
    response = post(browser, "/admin/payouts", "/admin/payouts", **form)
    assert response.status_code == 302, response.get_data(as_text=True)
    match = re.fullmatch(r"/admin/payouts/(\d+)", response.headers["Location"])
    assert match, response.headers["Location"]
    return int(match.group(1))


def approve_batch(browser, payout_id: int):
    return post(browser, f"/admin/payouts/{payout_id}/approve", f"/admin/payouts/{payout_id}")


def mark_paid(browser, payout_id: int, reference: str = "SEPA-42"):
    return post(
        browser,
        f"/admin/payouts/{payout_id}/mark-paid",
        f"/admin/payouts/{payout_id}",
        reference=reference,
    )


def batch(app, payout_id: int) -> Payout:
    with app.app_context():
        payout = db.session.get(Payout, payout_id)
        db.session.expunge(payout)
        return payout


def reward_statuses(app) -> set[str]:
    with app.app_context():
        return set(db.session.scalars(select(Reward.status)))


def audit(app) -> list[tuple]:
    with app.app_context():
        return [
            (r.actor, r.action, r.subject_id)
            for r in db.session.scalars(
                select(AuditRecord)
                .where(AuditRecord.subject_type == "payout")
                .order_by(AuditRecord.id)
            )
        ]


@pytest.fixture
def approved(client, shop, admin):
    """Two approved referrer rewards of 300.00 EUR (ref-1, ref-2): 600.00 together."""
    set_program(client, admin, hold_days=0, referrer_reward={"type": "fixed", "value": "300.00"})
    ids = []
    for friend, referrer in (("f-1", "ref-1"), ("f-2", "ref-2")):
        reward_id = converted_friend(client, shop, friend, referrer=referrer)["rewards"][0]["id"]
        assert approve(client, admin, reward_id).status_code == 200
        ids.append(reward_id)
    return ids


# --- the console ---------------------------------------------------------------------------------


def test_payouts_need_a_sign_in(client):
    for path in ("/admin/payouts", "/admin/payouts/1", "/admin/payouts/1.csv"):
        response = client.get(path)
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/admin/login")


def test_console_creates_a_batch_of_all_approved_rewards(app, approved):
    anna = console(app, "anna@example.com")
    listing = page(anna, "/admin/payouts")
    assert "600.00 EUR" in listing and "2 rewards" in listing  # waiting for a batch
    assert "No payout batches yet." in listing
    payout_id = create(anna)
    shown = page(anna, f"/admin/payouts/{payout_id}")
    assert f"Created payout #{payout_id}: 2 rewards, 600.00 EUR." in shown
    assert "admin:anna@example.com" in shown
    assert "ref-1@example.com" in shown and "ref-2@example.com" in shown
    assert "required: the total is above 500.00 EUR" in shown
    assert f'href="/admin/payouts/{payout_id}.csv"' in shown
    listing = page(anna, "/admin/payouts")
    assert f"Payout #{payout_id}" in listing and "needs a second approver" in listing
    assert "admin:anna@example.com" in listing
    with app.app_context():
        assert set(db.session.scalars(select(Reward.payout_id))) == {payout_id}
    assert audit(app) == [("admin:anna@example.com", "payout.create", str(payout_id))]
    # nothing left: the next attempt is refused with a message
    again = flashed(anna, post(anna, "/admin/payouts", "/admin/payouts"))
    assert "No approved rewards are waiting for a payout." in again


def test_console_creates_a_batch_of_chosen_rewards(app, approved):
    anna = console(app, "anna@example.com")
    payout_id = create(anna, reward_ids=f" {approved[1]} ")
    with app.app_context():
        assert db.session.get(Reward, approved[1]).payout_id == payout_id
        assert db.session.get(Reward, approved[0]).payout_id is None
    for bad in ("12, abc", "-3", "1.5", str(2**31)):
        shown = flashed(anna, post(anna, "/admin/payouts", "/admin/payouts", reward_ids=bad))
        assert "Reward ids are whole numbers" in shown, bad
    taken = flashed(anna, post(anna, "/admin/payouts", "/admin/payouts", reward_ids=approved[1]))
    assert "nothing was batched" in taken


def test_csv_download_is_the_apis_csv(app, client, admin, approved):
    anna = console(app, "anna@example.com", role="viewer")
    with app.app_context():
        payout_id = payouts.create("api-key:9:other", all_approved=True)["id"]
    response = anna.get(f"/admin/payouts/{payout_id}.csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="payout-{payout_id}.csv"'
    )
    from_api = client.get(f"/api/v1/payouts/{payout_id}.csv", headers=admin)
    assert response.get_data() == from_api.get_data()
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[-1] == ["TOTAL", "", "", "2", "EUR", "", "", "600.00"]
    assert anna.get("/admin/payouts/999.csv").status_code == 404
    assert anna.get("/admin/payouts/999").status_code == 404
    assert anna.get(f"/admin/payouts/{2**40}").status_code == 404


def test_four_eyes_in_the_console(app, approved):
    anna = console(app, "anna@example.com")
    payout_id = create(anna)
    shown = page(anna, f"/admin/payouts/{payout_id}")
    assert "a second approver, not its creator, must approve it" in shown
    assert "needs a second approver before it can be marked paid" in shown
    assert f"/admin/payouts/{payout_id}/approve" not in shown  # no button for the creator
    assert f"/admin/payouts/{payout_id}/mark-paid" not in shown
    # the creator cannot approve their own batch, even by posting the form
    refused = flashed(anna, approve_batch(anna, payout_id))
    assert "was created by you (admin:anna@example.com)" in refused
    # and it cannot be paid before a second approver approves it
    refused = flashed(anna, mark_paid(anna, payout_id))
    assert "totals 600.00 EUR, above the approval threshold of 500.00 EUR" in refused
    assert "needs a second approver" in refused
    assert (batch(app, payout_id).status, batch(app, payout_id).approved_by) == ("created", None)
    assert reward_statuses(app) == {"approved"}
    # a second approver approves
    ben = console(app, "ben@example.com")
    shown = page(ben, f"/admin/payouts/{payout_id}")
    assert f"/admin/payouts/{payout_id}/approve" in shown
    done = flashed(ben, approve_batch(ben, payout_id))
    assert f"Approved payout #{payout_id}" in done
    assert "admin:ben@example.com" in done
    again = flashed(ben, approve_batch(ben, payout_id))
    assert "already approved by admin:ben@example.com" in again
    stored = batch(app, payout_id)
    assert stored.approved_by == "admin:ben@example.com" and stored.approved_at is not None
    # now anyone with the approver role may mark it paid, its creator too
    paid = flashed(anna, mark_paid(anna, payout_id, "SEPA-2026-12"))
    assert f"Payout #{payout_id} is paid, reference SEPA-2026-12." in paid
    assert batch(app, payout_id).status == "paid"
    assert reward_statuses(app) == {"paid"}
    assert f"/admin/payouts/{payout_id}/mark-paid" not in paid
    listing = page(anna, "/admin/payouts")
    assert "SEPA-2026-12" in listing and "admin:ben@example.com" in listing
    assert audit(app) == [
        ("admin:anna@example.com", "payout.create", str(payout_id)),
        ("admin:ben@example.com", "payout.approve", str(payout_id)),
        ("admin:anna@example.com", "payout.mark_paid", str(payout_id)),
    ]
    late = flashed(ben, mark_paid(ben, payout_id, "SEPA-X"))
    assert "already paid" in late


def test_batch_under_the_threshold_is_paid_directly(app, approved):
    anna = console(app, "anna@example.com")
    payout_id = create(anna, reward_ids=str(approved[0]))  # 300.00 EUR
    shown = page(anna, f"/admin/payouts/{payout_id}")
    assert "not required (the total is at most 500.00 EUR)" in shown
    assert f"/admin/payouts/{payout_id}/mark-paid" in shown
    blank = flashed(anna, mark_paid(anna, payout_id, "   "))
    assert "Give the payment&#39;s reference (1-200)." in blank
    paid = flashed(anna, mark_paid(anna, payout_id, "SEPA-1"))
    assert f"Payout #{payout_id} is paid" in paid
    assert batch(app, payout_id).approved_by is None


def test_threshold_comes_from_the_app_config(app, approved):
    app.config["PAYOUT_APPROVAL_THRESHOLD"] = "1000"
    anna = console(app, "anna@example.com")
    payout_id = create(anna)  # 600.00 EUR
    assert "at most 1000.00 EUR" in page(anna, f"/admin/payouts/{payout_id}")
    assert "is paid" in flashed(anna, mark_paid(anna, payout_id))


def test_viewer_reads_but_cannot_create_approve_or_pay(app, approved):
    with app.app_context():
        payout_id = payouts.create("admin:anna@example.com", all_approved=True)["id"]
    vera = console(app, "vera@example.com", role="viewer")
    listing = page(vera, "/admin/payouts")
    assert f"Payout #{payout_id}" in listing
    assert 'action="/admin/payouts"' not in listing
    shown = page(vera, f"/admin/payouts/{payout_id}")
    assert "Your role reads payouts only" in shown
    assert "/approve" not in shown and "/mark-paid" not in shown
    assert vera.get(f"/admin/payouts/{payout_id}.csv").status_code == 200
    csrf = token(vera, "/admin/payouts")
    for path, form in (
        ("/admin/payouts", {}),
        (f"/admin/payouts/{payout_id}/approve", {}),
        (f"/admin/payouts/{payout_id}/mark-paid", {"reference": "R-1"}),
    ):
        response = vera.post(path, data={"csrf_token": csrf, **form})
        assert response.status_code == 403, path
        assert "Not allowed" in response.get_data(as_text=True)
    stored = batch(app, payout_id)
    assert (stored.status, stored.approved_by) == ("created", None)
    assert [action for _, action, _ in audit(app)] == ["payout.create"]  # nothing more


def test_forms_without_a_csrf_token_are_refused(app, approved):
    with app.app_context():
        payout_id = payouts.create("admin:anna@example.com", all_approved=True)["id"]
    ben = console(app, "ben@example.com")
    for path, form in (
        ("/admin/payouts", {}),
        (f"/admin/payouts/{payout_id}/approve", {}),
        (f"/admin/payouts/{payout_id}/mark-paid", {"reference": "R-1"}),
    ):
        response = ben.post(path, data=form)
        assert response.status_code == 400, path
        assert "security token" in response.get_data(as_text=True)
    assert batch(app, payout_id).approved_by is None


# --- the API -------------------------------------------------------------------------------------


def test_api_approve_needs_a_second_admin_key(app, client, shop, admin, approved):
    with app.app_context():
        second = auth(api_key("admin", "second-admin"))
    created = client.post("/api/v1/payouts", json={"all_approved": True}, headers=admin)
    assert created.status_code == 201
    body = created.json
    assert (body["approved_by"], body["approved_at"]) == (None, None)
    assert body["created_by"].startswith("api-key:")
    path = f"/api/v1/payouts/{body['id']}"
    own = client.post(f"{path}/approve", headers=admin)
    assert own.status_code == 409 and own.json["error"]["code"] == "conflict"
    assert "second approver" in own.json["error"]["message"]
    early = client.post(f"{path}/mark-paid", json={"reference": "R-1"}, headers=admin)
    assert early.status_code == 409
    assert "needs a second approver" in early.json["error"]["message"]
    assert client.post(f"{path}/approve", headers=shop).status_code == 403
    approved_body = client.post(f"{path}/approve", headers=second)
    assert approved_body.status_code == 200, approved_body.json
    assert approved_body.json["approved_by"].endswith(":second-admin")
    assert approved_body.json["approved_at"] is not None
    assert client.get(path, headers=admin).json["approved_by"].endswith(":second-admin")
    assert client.post(f"{path}/approve", headers=second).status_code == 409
    paid = client.post(f"{path}/mark-paid", json={"reference": "R-1"}, headers=admin)
    assert paid.status_code == 200 and paid.json["status"] == "paid"
    after = client.post(f"{path}/approve", headers=second)
    assert after.status_code == 409 and "already paid" in after.json["error"]["message"]
    assert client.post("/api/v1/payouts/999/approve", headers=second).status_code == 404
    assert client.post(f"/api/v1/payouts/{2**40}/approve", headers=second).status_code == 404
    actions = [action for _, action, _ in audit(app)]
    assert actions == ["payout.create", "payout.approve", "payout.mark_paid"]


def test_api_documents_the_approve_operation(client):
    spec = client.get("/api/openapi.json").json
    operation = spec["paths"]["/api/v1/payouts/{payout_id}/approve"]["post"]
    assert {"200", "404", "409"} <= operation["responses"].keys()
    payout = spec["components"]["schemas"]["PayoutOut"]["properties"]
    assert {"created_by", "approved_by", "approved_at"} <= payout.keys()


# --- the domain ----------------------------------------------------------------------------------


def test_domain_approve_rules(app, approved):
    with app.app_context():
        payout_id = payouts.create("admin:anna@example.com", all_approved=True)["id"]
        assert payouts.get(payout_id)["needs_approval"] is True
        with pytest.raises(Conflict, match="created by you"):
            payouts.approve(payout_id, "admin:anna@example.com")
        with pytest.raises(Conflict, match="needs a second approver"):
            payouts.mark_paid(payout_id, "R-1", "admin:anna@example.com")
        body = payouts.approve(payout_id, "admin:ben@example.com")
        assert body["approved_by"] == "admin:ben@example.com" and body["approved_at"] is not None
        with pytest.raises(Conflict, match="already approved"):
            payouts.approve(payout_id, "admin:carl@example.com")
        paid = payouts.mark_paid(payout_id, "R-1", "admin:anna@example.com")
        assert paid["status"] == "paid"
        with pytest.raises(Conflict, match="already paid"):
            payouts.approve(payout_id, "admin:carl@example.com")
        with pytest.raises(NotFound):
            payouts.approve(999_999, "admin:carl@example.com")
        record = db.session.scalar(
            select(AuditRecord).where(AuditRecord.action == "payout.approve")
        )
        assert record.actor == "admin:ben@example.com"
        assert record.before == {"approved_by": None}
        assert record.after == {
            "approved_by": "admin:ben@example.com",
            "created_by": "admin:anna@example.com",
            "totals": [{"currency": "EUR", "amount": "600.00"}],
        }


def test_domain_threshold_is_strictly_above(app, client, admin, approved):
    with app.app_context():
        app.config["PAYOUT_APPROVAL_THRESHOLD"] = "600.00"
        payout_id = payouts.create("admin:anna@example.com", all_approved=True)["id"]
        assert payouts.get(payout_id)["needs_approval"] is False
        assert payouts.mark_paid(payout_id, "R-1", "admin:anna@example.com")["status"] == "paid"
        app.config["PAYOUT_APPROVAL_THRESHOLD"] = "599.99"
        assert payouts.needs_approval({"EUR": 60000}) is True
        assert payouts.needs_approval({"EUR": 59999}) is False
        # a total in another currency cannot be compared with the threshold: always approved
        assert payouts.needs_approval({"USD": 1}) is True
        assert payouts.needs_approval({}) is False
        assert payouts.approval_threshold() == ("599.99", "EUR")


def test_the_database_refuses_the_creator_as_approver(app, approved):
    with app.app_context():
        payout_id = payouts.create("admin:anna@example.com", all_approved=True)["id"]
        with pytest.raises(IntegrityError):
            db.session.execute(
                update(Payout)
                .where(Payout.id == payout_id)
                .values(approved_by="admin:anna@example.com")
            )
            db.session.commit()
        db.session.rollback()


def test_threshold_from_the_environment(monkeypatch):
    monkeypatch.delenv("PAYOUT_APPROVAL_THRESHOLD", raising=False)
    assert config.payout_settings() == {}
    assert config.DEFAULTS["PAYOUT_APPROVAL_THRESHOLD"] == "500.00"
    monkeypatch.setenv("PAYOUT_APPROVAL_THRESHOLD", " 1250.50 ")
    assert config.payout_settings() == {"PAYOUT_APPROVAL_THRESHOLD": "1250.50"}
    for bad in ("-1", "1e3", "1,000.00", "lots", "NaN"):
        monkeypatch.setenv("PAYOUT_APPROVAL_THRESHOLD", bad)
        with pytest.raises(ValueError, match="PAYOUT_APPROVAL_THRESHOLD"):
            config.payout_settings()


# --- batches left empty, and clawbacks netted in part, in the console ----------------------------


def test_console_will_not_pay_a_batch_whose_rewards_were_all_refunded(app, client, shop, approved):
    anna = console(app, "anna@example.com")
    payout_id = create(anna, reward_ids=str(approved[0]))
    refunded = client.post("/api/v1/refunds", json={"order_id": "o-f-1"}, headers=shop)
    assert refunded.json["rewards"][0]["status"] == "reversed"
    shown = page(anna, f"/admin/payouts/{payout_id}")
    assert 'id="paid-refusal"' in shown and "holds no rewards any more" in shown
    assert f"/admin/payouts/{payout_id}/mark-paid" not in shown
    refused = flashed(anna, mark_paid(anna, payout_id, "SEPA-1"))  # a form left open meanwhile
    assert "there is nothing to pay" in refused
    assert batch(app, payout_id).status == "created"
    assert reward_statuses(app) == {"reversed", "approved"}


def test_console_shows_a_clawback_taken_in_part(app, client, shop, admin, approved):
    anna = console(app, "anna@example.com")
    first = create(anna, reward_ids=str(approved[0]))  # ref-1: 300.00
    assert f"Payout #{first} is paid" in flashed(anna, mark_paid(anna, first, "SEPA-1"))
    client.post("/api/v1/refunds", json={"order_id": "o-f-1"}, headers=shop)  # clawback of 300.00
    set_program(client, admin, referrer_reward={"type": "fixed", "value": "120.00"})
    reward_id = converted_friend(client, shop, "f-3", referrer="ref-1")["rewards"][0]["id"]
    assert approve(client, admin, reward_id).status_code == 200
    second = create(anna, reward_ids=str(reward_id))
    shown = page(anna, f"/admin/payouts/{second}")
    assert re.search(r"120\.00.*?120\.00.*?0\.00", shown, re.S), shown
    with app.app_context():
        assert payouts.get(second)["lines"][0]["clawbacks"] == "120.00"


@pytest.mark.parametrize("before", ["2147483647", "2147483648", "99999999999999999999", "-1"])
def test_a_page_cursor_beyond_any_id_is_the_first_page(app, before):
    """`before` names a payout id: one past the largest id the column holds was a 500 on
    PostgreSQL (integer out of range); every value out of range is the first page."""
    browser = console(app, "pages@example.com")
    response = browser.get(f"/admin/payouts?before={before}")
    assert response.status_code == 200

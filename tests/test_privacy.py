"""Data rights (domain/privacy.py): the export of everything held about a person, and their
erasure, after which neither their email, nor their name, nor the keys and hashes made of them
appear anywhere in the database, while the money ledger stays whole."""

import json
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, make_url, select

from referral_service.domain import customers, fraud, privacy
from referral_service.errors import NotFound
from referral_service.extensions import db
from referral_service.models import (
    AuditRecord,
    Base,
    Clawback,
    Customer,
    Payout,
    Reward,
    Signup,
    utcnow,
)
from referral_service.models.notification import EmailOptOut, Notification
from tests.factories import click_row
from tests.journey_helpers import (
    buy,
    enrol,
    pay,
    ready_for_payout,
    referred_friend,
    refund,
    set_program,
    sign_up,
)

REFERRER = {"id": "ref-1", "email": "Rhiannon.Quimby+Shop@Example.com", "name": "Rhiannon Quimby"}
FRIEND = {"id": "friend-1", "email": "Zoë.Xanthippe@Example.org", "name": "Zoë Xanthippe"}
OTHER = {"id": "other-1", "email": "ottilie.vandersloot@example.net", "name": "Ottilie Vandersloot"}
FRIEND_IP, FRIEND_UA, FRIEND_DEVICE = "203.0.113.77", "Friend-Browser/9.9 (rare)", "dev-zx-42"
VISIT_IP, VISIT_UA = "2001:db8::7e57", "Friend-Phone/1.2 (rare)"


def put(client, shop, person: dict, locale: str = "pl") -> dict:
    body = {"email": person["email"], "name": person["name"], "locale": locale}
    response = client.put(f"/api/v1/customers/{person['id']}", json=body, headers=shop)
    assert response.status_code in (200, 201), response.json
    return response.json


def ledger(app) -> dict:
    """The sums of the money ledger: rewards, payouts' rewards, clawbacks, by status."""
    with app.app_context():
        return {
            "rewards": db.session.execute(
                select(Reward.status, func.sum(Reward.amount_minor)).group_by(Reward.status)
            ).all(),
            "paid_out": db.session.scalar(
                select(func.sum(Reward.amount_minor)).where(Reward.payout_id.is_not(None))
            ),
            "payouts": db.session.scalar(select(func.count()).select_from(Payout)),
            "clawbacks": db.session.scalar(select(func.sum(Clawback.amount_minor))),
        }


def everything_stored(app) -> str:
    """Every value of every column of every table, as text, case folded."""
    chunks = []
    with app.app_context():
        for table in Base.metadata.sorted_tables:
            for row in db.session.execute(table.select()):
                for value in row:
                    if isinstance(value, bytes):
                        value = value.decode("utf-8", "replace")
                    elif isinstance(value, dict | list):
                        value = json.dumps(value, ensure_ascii=False)
                    chunks.append(str(value))
    return "\n".join(chunks).casefold()


@pytest.fixture
def story(app, client, shop, admin):
    """A referrer whose friend signed up through a visit of their link, bought, was refunded
    after the rewards were paid (a clawback), was emailed and unsubscribed; and another
    customer, unrelated. Returns what was stored about the friend that is no one else's."""
    set_program(client, admin, friend_reward={"type": "fixed", "value": "5.00"})
    put(client, shop, REFERRER)
    put(client, shop, OTHER)
    code = enrol(client, shop, REFERRER["id"], REFERRER["email"])
    visit = client.get(
        f"/r/{code}?via=whatsapp",
        headers={"User-Agent": VISIT_UA},
        environ_base={"REMOTE_ADDR": VISIT_IP},
    )
    click_id = visit.headers["Location"].split("click_id=")[1].split("&")[0]
    signed = sign_up(
        client,
        shop,
        FRIEND["id"],
        FRIEND["email"],
        name=FRIEND["name"],
        locale="el",
        click_id=click_id,
        ip=FRIEND_IP,
        user_agent=FRIEND_UA,
        device_id=FRIEND_DEVICE,
    )
    assert signed.status_code == 201 and signed.json["attributed"], signed.json
    bought = buy(client, shop, "o-friend", FRIEND["id"], "50.00")
    assert bought.status_code == 201 and len(bought.json["rewards"]) == 2, bought.json
    pay(client, admin, ready_for_payout(app, client, admin, bought.json))
    assert refund(client, shop, "o-friend").status_code == 200
    with app.app_context():
        app.extensions["clicks"].flush()
        friend = db.session.scalar(select(Customer).where(Customer.external_id == FRIEND["id"]))
        signup = db.session.scalar(select(Signup).where(Signup.customer_id == friend.id))
        now = utcnow()
        db.session.add(
            Notification(
                event_id="evt_test",
                customer_id=friend.id,
                kind="reward_earned",
                amounts=[{"amount": "5.00", "currency": "EUR"}],
                status="pending",
                attempts=1,
                created_at=now,
                next_attempt_at=now + timedelta(minutes=5),
                last_error=f"550 mailbox {FRIEND['email']} unavailable",
            )
        )
        db.session.add(EmailOptOut(customer_id=friend.id, opted_out_at=now))
        db.session.commit()
        visit_evidence = fraud.visit_evidence(VISIT_IP, VISIT_UA)
        return {
            "click_id": click_row(click_id),
            "email_key": customers.email_key(FRIEND["email"]),
            "hashes": [
                signup.ip_hash,
                signup.ua_hash,
                signup.device_hash,
                visit_evidence["ip_hash"],
                visit_evidence["ua_hash"],
            ],
        }


def friend_traces(story) -> list[str]:
    return [
        FRIEND["email"],
        FRIEND["name"],
        story["email_key"],
        *story["hashes"],
    ]


# --- export --------------------------------------------------------------------------------------


def test_the_export_holds_everything_about_the_person_and_nothing_of_others(app, story):
    with app.app_context():
        friend = privacy.export(FRIEND["id"])
        referrer = privacy.export(REFERRER["id"])
    assert json.dumps(friend) and json.dumps(referrer)  # JSON-ready as they are
    assert friend["customer"] | {"created_at": None, "updated_at": None} == {
        "external_id": FRIEND["id"],
        "email": customers.check_email(FRIEND["email"]),
        "name": FRIEND["name"],
        "locale": "el",
        "origin": friend["customer"]["origin"],
        "created_at": None,
        "updated_at": None,
        "erased_at": None,
    }
    assert friend["signup"]["evidence"] == dict(
        zip(("ip_hash", "ua_hash", "device_hash"), story["hashes"][:3], strict=True)
    )
    assert friend["own_visits"][0]["click_id"] == story["click_id"]
    assert friend["own_visits"][0]["evidence"]["ip_hash"] == story["hashes"][3]
    assert friend["referred_by"]["referrer_external_id"] == REFERRER["id"]
    assert [p["order_id"] for p in friend["purchases"]] == ["o-friend"]
    assert friend["purchases"][0]["refunded"] == "50.00"
    assert [r["order_id"] for r in friend["refunds"]] == ["o-friend"]
    assert [r["beneficiary"] for r in friend["rewards"]] == ["friend"]
    assert [c["amount"] for c in friend["clawbacks"]] == ["5.00"]
    assert [line["customer_external_id"] for p in friend["payouts"] for line in p["lines"]] == [
        FRIEND["id"]
    ]
    assert friend["emails"][0]["kind"] == "reward_earned"
    assert friend["email_opt_out"]["opted_out_at"]
    assert friend["referral_codes"][0]["code"]
    assert "reward.approve" in {record["action"] for record in friend["audit"]}

    assert referrer["link_visits"]["count"] == 1
    assert referrer["link_visits"]["by_channel"] == {"whatsapp": 1}
    assert [r["friend_external_id"] for r in referrer["referrals_made"]] == [FRIEND["id"]]
    assert [r["beneficiary"] for r in referrer["rewards"]] == ["referrer"]
    assert referrer["signup"] is None and referrer["own_visits"] == []
    assert [line["customer_external_id"] for p in referrer["payouts"] for line in p["lines"]] == [
        REFERRER["id"]
    ]
    said = json.dumps(referrer, ensure_ascii=False).casefold()
    assert REFERRER["email"].casefold() in said
    for trace in [*friend_traces(story), OTHER["email"], OTHER["name"]]:
        assert trace.casefold() not in said, trace
    said = json.dumps(friend, ensure_ascii=False).casefold()
    for trace in [REFERRER["email"], REFERRER["name"], OTHER["email"], OTHER["name"]]:
        assert trace.casefold() not in said, trace


def test_an_unknown_or_malformed_customer_is_not_found_or_refused(app):
    with app.app_context():
        with pytest.raises(NotFound):
            privacy.export("nobody")
        with pytest.raises(NotFound):
            privacy.erase("nobody", "cli")


# --- erasure -------------------------------------------------------------------------------------


def test_erasure_leaves_no_trace_of_the_person_and_the_ledger_whole(app, client, admin, story):
    before = ledger(app)
    stored = everything_stored(app)
    for trace in [*friend_traces(story), REFERRER["email"], REFERRER["name"]]:
        assert trace.casefold() in stored, trace  # the scan sees them before
    with app.app_context():
        card = privacy.erase(FRIEND["id"], "cli")
        assert (card.email, card.name, card.locale) == (None, None, None)
        assert card.erased_at is not None
        privacy.erase(REFERRER["id"], "cli")
    stored = everything_stored(app)
    for trace in [
        *friend_traces(story),
        REFERRER["email"],
        REFERRER["name"],
        customers.email_key(REFERRER["email"]),
    ]:
        assert trace.casefold() not in stored, trace
    assert OTHER["email"].casefold() in stored  # others keep their data
    assert ledger(app) == before

    payout_id = story_payout(app)
    batch = client.get(f"/api/v1/payouts/{payout_id}", headers=admin)
    assert batch.status_code == 200
    assert {(line["email"], line["name"]) for line in batch.json["lines"]} == {(None, None)}
    sheet = client.get(f"/api/v1/payouts/{payout_id}.csv", headers=admin)
    assert sheet.status_code == 200
    for trace in (FRIEND["email"], FRIEND["name"], REFERRER["email"], REFERRER["name"]):
        assert trace.casefold() not in sheet.get_data(as_text=True).casefold()
    assert REFERRER["id"] in sheet.get_data(as_text=True)

    with app.app_context():
        friend = db.session.scalar(select(Customer).where(Customer.external_id == FRIEND["id"]))
        emails = db.session.scalars(
            select(Notification).where(Notification.customer_id == friend.id)
        )
        assert [(n.status, n.last_error) for n in emails] == [("skipped", None)]
        assert db.session.scalar(select(func.count()).select_from(EmailOptOut)) == 0
        records = db.session.scalars(
            select(AuditRecord).where(AuditRecord.action == privacy.ERASE_ACTION)
        ).all()
        assert {(r.actor, r.subject_type, r.after["external_id"]) for r in records} == {
            ("cli", "customer", FRIEND["id"]),
            ("cli", "customer", REFERRER["id"]),
        }


@pytest.mark.sqlite_only
def test_erasure_leaves_no_copy_in_the_sqlite_files(app, story):
    """Not in the rows only: in no byte of the database's files either (its free space and its
    write-ahead log, which keep what a change overwrote until a checkpoint)."""
    path = Path(make_url(app.config["SQLALCHEMY_DATABASE_URI"]).database)
    files = [path, *path.parent.glob(path.name + "-*")]
    traces = [FRIEND["email"], FRIEND["email"].lower(), FRIEND["name"], story["email_key"]]

    def found() -> set[str]:
        held = b"".join(file.read_bytes() for file in files if file.exists())
        return {trace for trace in traces if trace.encode() in held}

    assert FRIEND["email"] in found()  # the scan sees it before
    with app.app_context():
        privacy.erase(FRIEND["id"], "cli")
    assert found() == set()


def story_payout(app) -> int:
    with app.app_context():
        return db.session.scalar(select(Payout.id))


def test_erasing_twice_changes_nothing_and_answers_the_same(app, story):
    with app.app_context():
        first = privacy.erase(FRIEND["id"], "cli")
        second = privacy.erase(FRIEND["id"], "someone-else")
        assert first == second
        assert (
            db.session.scalar(
                select(func.count())
                .select_from(AuditRecord)
                .where(AuditRecord.action == privacy.ERASE_ACTION)
            )
            == 1
        )
        exported = privacy.export(FRIEND["id"])
        assert exported["customer"]["email"] is None
        assert exported["customer"]["erased_at"] == first.erased_at.isoformat()
        assert exported["signup"]["evidence"] == dict.fromkeys(
            ("ip_hash", "ua_hash", "device_hash")
        )


def test_an_erased_customer_enrolled_again_is_a_customer_again(app, client, shop, story):
    with app.app_context():
        privacy.erase(OTHER["id"], "cli")
    again = put(client, shop, OTHER)
    assert again["email"] == OTHER["email"] and again["erased_at"] is None


# --- the doors: admin API and command line -------------------------------------------------------


def test_the_admin_api_exports_and_erases(app, client, shop, admin, story):
    exported = client.get(f"/api/v1/customers/{FRIEND['id']}/export", headers=admin)
    assert exported.status_code == 200
    assert exported.json["customer"]["name"] == FRIEND["name"]
    assert exported.json["signup"]["evidence"]["device_hash"] == story["hashes"][2]

    erased = client.delete(f"/api/v1/customers/{FRIEND['id']}", headers=admin)
    assert erased.status_code == 200, erased.json
    assert (erased.json["email"], erased.json["name"], erased.json["locale"]) == (None, None, None)
    assert erased.json["erased_at"] and erased.json["stats"]
    shown = client.get(f"/api/v1/customers/{FRIEND['id']}", headers=shop)
    assert shown.status_code == 200
    assert shown.json == erased.json
    again = client.delete(f"/api/v1/customers/{FRIEND['id']}", headers=admin)
    assert (again.status_code, again.json) == (200, erased.json)
    with app.app_context():
        record = db.session.scalar(
            select(AuditRecord).where(AuditRecord.action == privacy.ERASE_ACTION)
        )
        assert record.actor.startswith("api-key:")
    for trace in friend_traces(story):
        assert trace.casefold() not in everything_stored(app), trace


@pytest.mark.parametrize("method", ["get_export", "delete"])
def test_the_data_rights_doors_are_for_admins_only(app, client, shop, story, method):
    path = f"/api/v1/customers/{FRIEND['id']}"
    call = client.get if method == "get_export" else client.delete
    path += "/export" if method == "get_export" else ""
    refused = call(path, headers=shop)
    assert refused.status_code == 403 and refused.json["error"]["code"]
    assert call(path).status_code == 401
    with app.app_context():
        assert db.session.scalar(select(Customer.email).where(Customer.external_id == FRIEND["id"]))


@pytest.mark.parametrize("path", ["nobody", "nobody/export"])
def test_an_unknown_customer_is_a_404_in_the_envelope(client, admin, path):
    call = client.get if path.endswith("export") else client.delete
    response = call(f"/api/v1/customers/{path}", headers=admin)
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"


def test_the_command_line_exports_and_erases(app, runner, story):
    from referral_service.cli import main

    exported = runner.invoke(main, ["customers", "export", FRIEND["id"]])
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.stdout)["customer"]["name"] == FRIEND["name"]

    declined = runner.invoke(main, ["customers", "erase", FRIEND["id"]], input="n\n")
    assert declined.exit_code != 0
    with app.app_context():
        assert privacy.export(FRIEND["id"])["customer"]["erased_at"] is None

    erased = runner.invoke(main, ["customers", "erase", FRIEND["id"]], input="y\n")
    assert erased.exit_code == 0, erased.output
    assert erased.stdout.strip().startswith(f"Customer {FRIEND['id']} erased at ")
    assert len(erased.stdout.strip().splitlines()) == 1
    again = runner.invoke(main, ["customers", "erase", FRIEND["id"], "--yes"])
    assert (again.exit_code, again.stdout) == (0, erased.stdout)

    unknown = runner.invoke(main, ["customers", "export", "nobody"])
    assert unknown.exit_code == 1 and "nobody" in unknown.output
    unknown = runner.invoke(main, ["customers", "erase", "nobody", "--yes"])
    assert unknown.exit_code == 1 and "nobody" in unknown.output


def test_pages_and_steps_that_name_an_erased_friend_still_work(app, client, shop, admin):
    """A purchase by an erased friend and their referrer's share page: the person's email is
    gone, nothing fails for it."""
    referred_friend(client, shop, "friend-e", "ref-e")
    with app.app_context():
        privacy.erase("friend-e", "admin:test")
    response = buy(client, shop, "o-erased", "friend-e", "50.00")
    assert response.status_code == 201, response.json
    link = client.post("/api/v1/customers/ref-e/portal-link", headers=shop)
    assert link.status_code in (200, 201), link.json
    page = client.get(urlsplit(link.json["url"]).path)
    assert page.status_code == 200
    assert client.get("/api/v1/customers/friend-e", headers=admin).json["email"] is None

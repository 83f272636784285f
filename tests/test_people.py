"""One person, one referral: the same normalized email under another `external_id` is not referred
again, whatever the spelling, the door or the race; and a click dated after its sign-up."""

import json
import threading
from datetime import timedelta

import pytest
from flask_migrate import downgrade, upgrade
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from referral_service import create_app
from referral_service.domain import attribution, customers
from referral_service.extensions import db
from referral_service.models import Click, Customer, Referral, ReferralCode, utcnow
from tests.conftest import app_config
from tests.journey_helpers import ago, buy, click, count, enrol, sign_up


def refused(response, reason: str, status: int = 201) -> None:
    assert (response.status_code, response.json) == (
        status,
        {"attributed": False, "reason": reason, "referral": None, "friend_offer": None},
    )


def referrals_of(app) -> list[tuple]:
    with app.app_context():
        return db.session.execute(
            select(Customer.external_id, Referral.friend_email_key)
            .join(Customer, Customer.id == Referral.friend_id)
            .order_by(Referral.id)
        ).all()


# --- the same person under another external id ---------------------------------------------------


def test_same_person_under_another_external_id_is_already_referred(app, client, shop):
    code = enrol(client, shop, "ref-1")
    first = sign_up(client, shop, "dora-a", email="dora@example.org", referral_code=code)
    assert first.json["attributed"] is True
    bought = buy(client, shop, "o-1", "dora-a", "50.00")
    assert bought.json["referral"]["status"] == "converted"

    again = sign_up(client, shop, "dora-b", email="Dora+2@example.org", referral_code=code)
    refused(again, "already_referred")
    # dora-b is a customer of the shop, but no referral of anyone: her purchase earns nothing
    assert client.get("/api/v1/customers/dora-b", headers=shop).status_code == 200
    second_order = buy(client, shop, "o-2", "dora-b", "50.00")
    assert second_order.status_code == 201
    assert second_order.json["referral"] is None and second_order.json["rewards"] == []
    assert referrals_of(app) == [("dora-a", "dora@example.org")]
    # a replay of dora-b's sign-up gets the same refusal
    refused(
        sign_up(client, shop, "dora-b", email="Dora+2@example.org", referral_code=code),
        "already_referred",
        status=200,
    )


@pytest.mark.parametrize(
    ("first_email", "second_email", "key"),
    [
        ("dora@example.org", "DORA@EXAMPLE.ORG", "dora@example.org"),
        ("dora+shop@example.org", "dora+news@example.org", "dora@example.org"),
        ("d.o.r.a@gmail.com", "Dora+x@googlemail.com", "dora@gmail.com"),
        ("dora@bücher.example", "Dora@xn--bcher-kva.example", "dora@bücher.example"),
        ("Zoë@example.org", "zoe\u0308@example.org", "zoë@example.org"),  # NFC
        # full-width letters (NFKC)
        ("wanda@example.org", "\uff37\uff21\uff2e\uff24\uff21@example.org", "wanda@example.org"),
    ],
    ids=["case", "tags", "gmail", "idn", "nfc", "nfkc"],
)
def test_every_spelling_of_one_mailbox_is_one_person(
    app, client, shop, first_email, second_email, key
):
    code = enrol(client, shop, "ref-1")
    assert sign_up(client, shop, "a", email=first_email, referral_code=code).json["attributed"]
    refused(sign_up(client, shop, "b", email=second_email, referral_code=code), "already_referred")
    assert referrals_of(app) == [("a", key)]


@pytest.mark.parametrize(
    ("first_email", "second_email"),
    [
        ("dora@example.org", "dora.b@example.org"),  # dots matter outside Gmail
        ("dora@gmail.com", "dora@example.org"),
        ("+a@example.org", "+b@example.org"),  # nothing before the `+`: no tag to drop
    ],
)
def test_other_mailboxes_are_other_people(app, client, shop, first_email, second_email):
    code = enrol(client, shop, "ref-1")
    assert sign_up(client, shop, "a", email=first_email, referral_code=code).json["attributed"]
    assert sign_up(client, shop, "b", email=second_email, referral_code=code).json["attributed"]
    assert count(app, Referral) == 2


def test_already_referred_also_by_click_and_by_another_referrer(app, client, shop):
    first = enrol(client, shop, "ref-1")
    second = enrol(client, shop, "ref-2")
    assert sign_up(client, shop, "dora-a", email="dora@example.org", referral_code=first).json[
        "attributed"
    ]
    refused(
        sign_up(client, shop, "dora-b", email="dora+b@example.org", click_id=click(client, second)),
        "already_referred",
    )
    assert count(app, Referral) == 1


def test_already_referred_before_an_email_change(app, client, shop):
    """The key is the email the friend was attributed with, whatever their record says later."""
    code = enrol(client, shop, "ref-1")
    assert sign_up(client, shop, "dora-a", email="dora@example.org", referral_code=code).json[
        "attributed"
    ]
    moved = client.put(
        "/api/v1/customers/dora-a", json={"email": "dora@elsewhere.example"}, headers=shop
    )
    assert moved.status_code == 200
    refused(
        sign_up(client, shop, "dora-b", email="dora@example.org", referral_code=code),
        "already_referred",
    )


def test_enrolled_under_another_external_id_is_existing_customer(app, client, shop):
    code = enrol(client, shop, "ref-1")
    enrol(client, shop, "shop-id-77", email="dora@example.org")
    refused(
        sign_up(client, shop, "dora-b", email="Dora+2@example.org", referral_code=code),
        "existing_customer",
    )
    refused(
        sign_up(client, shop, "dora-c", email="dora@example.org", click_id=click(client, code)),
        "existing_customer",
    )
    assert count(app, Referral) == 0


def test_imported_under_another_external_id_is_existing_customer(app, client, shop):
    code = enrol(client, shop, "ref-1")
    with app.app_context():
        report = customers.import_customers(
            [(2, {"external_id": "c-9", "email": "Dora@Example.org"})]
        )
    assert report.created == 1
    refused(
        sign_up(client, shop, "dora-b", email="dora+x@example.org", referral_code=code),
        "existing_customer",
    )


def test_signed_up_under_another_external_id_is_existing_customer(app, client, shop):
    """Someone who already has an account (not referred) opens a second one with a code."""
    code = enrol(client, shop, "ref-1")
    refused(sign_up(client, shop, "dora-a", email="dora@example.org"), "no_referral")
    refused(
        sign_up(client, shop, "dora-b", email="dora+2@example.org", referral_code=code),
        "existing_customer",
    )
    # and the first account, now that the same email is known under dora-b too
    refused(
        sign_up(client, shop, "dora-a", email="dora@example.org", referral_code=code),
        "existing_customer",
        status=200,
    )
    assert count(app, Referral) == 0


def test_late_attribution_checks_the_stored_email(app, client, shop):
    """A later call of a known friend is judged by the email on record, not the one it sends."""
    code = enrol(client, shop, "ref-1")
    assert sign_up(client, shop, "dora-a", email="dora@example.org", referral_code=code).json[
        "attributed"
    ]
    refused(sign_up(client, shop, "x-1", email="Dora+x@example.org"), "no_referral")
    refused(
        sign_up(client, shop, "x-1", email="someone.else@example.org", referral_code=code),
        "already_referred",
        status=200,
    )
    assert count(app, Referral) == 1


def test_self_referral_wins_over_the_other_reasons(client, shop):
    code = enrol(client, shop, "ref-1", email="ref@example.org")
    refused(
        sign_up(client, shop, "ref-alt", email="Ref+alt@example.org", referral_code=code),
        "self_referral",
    )


# --- guarded by the database ---------------------------------------------------------------------


def test_the_database_refuses_a_second_referral_of_one_email(app, client, shop):
    code = enrol(client, shop, "ref-1")
    sign_up(client, shop, "dora-a", email="dora@example.org", referral_code=code)
    refused(sign_up(client, shop, "dora-b", email="dora@example.org"), "no_referral")
    with app.app_context():
        first = db.session.scalar(select(Referral))
        dora_b = db.session.scalar(select(Customer).where(Customer.external_id == "dora-b"))
        db.session.add(
            Referral(
                referrer_id=first.referrer_id,
                friend_id=dora_b.id,
                channel="code",
                friend_email_key="dora@example.org",
                attributed_at=utcnow(),
            )
        )
        with pytest.raises(IntegrityError):
            db.session.commit()
        db.session.rollback()


def test_concurrent_signups_of_one_person_under_two_ids_refer_once(app, client, shop, monkeypatch):
    """Both sign-ups decide before either writes (a barrier holds them): the unique key on the
    friend's normalized email lets one referral in, and the other answers `already_referred`."""
    code = enrol(client, shop, "ref-1")
    barrier = threading.Barrier(2)
    waited = []
    decide = attribution._decide

    def decide_then_wait(*args):
        answer = decide(*args)
        if len(waited) < 2:  # the first decision of each sign-up; not their retries
            waited.append(answer)
            barrier.wait(timeout=30)
        return answer

    monkeypatch.setattr(attribution, "_decide", decide_then_wait)
    bodies = [
        {"external_id": "dora-a", "email": "dora@example.org", "referral_code": code},
        {"external_id": "dora-b", "email": "Dora+2@example.org", "referral_code": code},
    ]
    answers = [None, None]

    def post(i):
        response = app.test_client().post("/api/v1/signups", json=bodies[i], headers=shop)
        answers[i] = (response.status_code, json.loads(response.get_data()))

    threads = [threading.Thread(target=post, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [source is not None for source, _ in waited] == [True, True]  # both decided to attribute
    assert sorted(status for status, _ in answers) == [201, 201]
    outcomes = sorted((body["attributed"], body["reason"]) for _, body in answers)
    assert outcomes == [(False, "already_referred"), (True, None)]
    assert count(app, Referral) == 1
    assert count(app, Customer) == 3  # both became customers
    winner = next(i for i in range(2) if answers[i][1]["attributed"])
    assert referrals_of(app) == [(bodies[winner]["external_id"], "dora@example.org")]


# --- the migration -------------------------------------------------------------------------------


def test_migration_backfills_the_key_and_keeps_the_first_of_repeated_emails(fresh_database_url):
    app = create_app(app_config(fresh_database_url))
    now = utcnow()
    with app.app_context():
        upgrade(revision="0008")
        connection = db.session.connection()
        for n, (external_id, key) in enumerate(
            [
                ("ref", "ref@example.org"),
                ("dora-a", "dora@example.org"),
                ("dora-b", "dora@example.org"),  # the same person, referred twice by old code
                ("eve", "eve@example.org"),
            ],
            start=1,
        ):
            connection.execute(
                text(
                    "INSERT INTO customers (id, external_id, email, email_key, created_at, "
                    "updated_at, origin) VALUES (:id, :external_id, :key, :key, :now, :now, "
                    "'signup')"
                ),
                {"id": n, "external_id": external_id, "key": key, "now": now},
            )
        for referral_id, friend_id in [(1, 3), (2, 2), (3, 4)]:  # dora-b was referred first
            connection.execute(
                text(
                    "INSERT INTO referrals (id, referrer_id, friend_id, channel, status, "
                    "attributed_at, risk_score, risk_reasons) VALUES (:id, 1, :friend_id, "
                    "'code', 'attributed', :now, 0, '[]')"
                ),
                {"id": referral_id, "friend_id": friend_id, "now": now},
            )
        db.session.commit()
        upgrade(revision="0009")
        rows = db.session.execute(
            text("SELECT id, friend_email_key FROM referrals ORDER BY id")
        ).all()
        assert rows == [(1, "dora@example.org"), (2, None), (3, "eve@example.org")]
        with pytest.raises(IntegrityError):
            db.session.execute(text("UPDATE referrals SET friend_email_key = 'eve@example.org'"))
        db.session.rollback()
        downgrade(revision="0008")
        upgrade(revision="0009")
        db.session.remove()
        db.engine.dispose()


# --- times that contradict each other ------------------------------------------------------------


def test_click_after_the_signup_is_refused(app, client, shop):
    code = enrol(client, shop, "ref-1")
    click_id = click(client, code)  # obtained now
    refused(
        sign_up(client, shop, "friend-1", click_id=click_id, occurred_at=ago(days=3)),
        "click_after_signup",
    )
    assert count(app, Referral) == 0
    # the friend is a customer all the same, and their replay gets the same answer
    refused(
        sign_up(client, shop, "friend-1", click_id=click_id, occurred_at=ago(days=3)),
        "click_after_signup",
        status=200,
    )


@pytest.mark.parametrize(
    ("signed_up_before_the_click", "attributed"),
    [(timedelta(minutes=4), True), (timedelta(minutes=6), False)],
    ids=["within-skew", "beyond-skew"],
)
def test_clock_skew_of_five_minutes_is_allowed(
    app, client, shop, signed_up_before_the_click, attributed
):
    code = enrol(client, shop, "ref-1")
    click_id = click(client, code)
    with app.app_context():
        app.extensions["clicks"].flush()
        clicked_at = db.session.scalar(select(Click.occurred_at))
    signed_up = (clicked_at - signed_up_before_the_click).isoformat()
    body = sign_up(client, shop, "friend-1", click_id=click_id, occurred_at=signed_up).json
    assert body["attributed"] is attributed
    assert body["reason"] == (None if attributed else "click_after_signup")


def test_late_click_of_a_known_friend_is_refused(app, client, shop):
    """A friend who signed up days ago and follows a share link today was not brought by it."""
    code = enrol(client, shop, "ref-1")
    signed_up = ago(days=3)
    refused(sign_up(client, shop, "friend-1", occurred_at=signed_up), "no_referral")
    refused(
        sign_up(client, shop, "friend-1", click_id=click(client, code), occurred_at=signed_up),
        "click_after_signup",
        status=200,
    )


def test_code_issued_after_the_signup_still_attributes(app, client, shop):
    """A code is often typed at checkout, after the account was made: its issue date is not
    evidence of how the friend arrived (attribution.py's docstring)."""
    signed_up = ago(days=3)
    code = enrol(client, shop, "ref-1")
    with app.app_context():
        issued = db.session.scalar(select(ReferralCode.created_at))
    assert issued > utcnow() - timedelta(minutes=1)
    body = sign_up(client, shop, "friend-1", referral_code=code, occurred_at=signed_up).json
    assert body["attributed"] is True

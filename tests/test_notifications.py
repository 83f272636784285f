"""Emails to referrers, received by a real SMTP server on loopback (aiosmtpd): one per event, in
the referrer's language, never twice; retries while the server is away; the unsubscribe link
(RFC 8058 one-click); the mail settings and the program's switches."""

import email
import email.policy
import logging
import re
import socket
import ssl
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from sqlalchemy import select, update

from referral_service import mail
from referral_service.config import SettingsError
from referral_service.domain import notifications
from referral_service.domain.unit import unit_of_work
from referral_service.extensions import db
from referral_service.models import Customer, OutboxEvent, utcnow
from referral_service.models.notification import EmailOptOut, Notification
from tests.journey_helpers import approve, buy, mature, pay, set_program, sign_up
from tests.test_admin_console import signed_in_as
from tests.test_admin_settings import save, saved

SENDER = "Shop <referrals@shop.example>"
ALL_ON = {"reward_earned": True, "reward_approved": True, "reward_paid": True}


class Mailbox:
    """What the SMTP server received; recipients starting with `bounce` are refused for good
    (550), those starting with `later` for now (451)."""

    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("bounce"):
            return f"550 5.1.1 <{address}>: no such mailbox"
        if address.startswith("later"):
            return f"451 4.7.1 <{address}>: try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)
        )
        return "250 Message accepted for delivery"


class SmtpServer:
    """An aiosmtpd server on a free loopback port that can be stopped and started again;
    `options` go to aiosmtpd's Controller (TLS, STARTTLS, a login)."""

    def __init__(self, **options):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.box = Mailbox()
        self.options = options
        self.controller = None

    @property
    def messages(self):
        return self.box.messages

    def start(self):
        self.controller = Controller(self.box, hostname="127.0.0.1", port=self.port, **self.options)
        self.controller.start()

    def stop(self):
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def smtp(app):
    server = SmtpServer()
    server.start()
    app.config.update(MAIL_URL=f"smtp://127.0.0.1:{server.port}", MAIL_FROM=SENDER)
    yield server
    server.stop()


CERTIFICATE = str(Path(__file__).with_name("smtp_tls_localhost.pem"))


def server_tls() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(CERTIFICATE)
    return context


@pytest.fixture
def trusting_the_test_certificate(monkeypatch):
    """The service's TLS trusts the tests' self-signed certificate (and checks it as always)."""
    monkeypatch.setattr(mail, "tls_context", lambda: ssl.create_default_context(cafile=CERTIFICATE))


class Logins:
    """aiosmtpd's authenticator: one user and password, and the logins it saw."""

    def __init__(self, user: str, password: str):
        self.user, self.password, self.seen = user, password, []

    def __call__(self, server, session, envelope, mechanism, auth_data):
        self.seen.append(auth_data.login.decode())
        ok = (auth_data.login.decode(), auth_data.password.decode()) == (self.user, self.password)
        return AuthResult(success=ok, handled=False)  # aiosmtpd then answers 535 itself


def switch_on(client, admin, **kinds):
    return set_program(client, admin, notifications=kinds or ALL_ON)


def enrol(client, shop, external_id="ref-1", locale=None, name=None, email_address=None):
    body = {"email": email_address or f"{external_id}@example.com"}
    if locale:
        body["locale"] = locale
    if name:
        body["name"] = name
    response = client.put(f"/api/v1/customers/{external_id}", json=body, headers=shop)
    assert response.status_code in (200, 201), response.json
    return response.json["referral"]["code"]


def converted(client, shop, code, friend="friend-1", amount="50.00"):
    """A friend signed up with `code` whose first purchase converts; returns the purchase."""
    signed = sign_up(
        client,
        shop,
        friend,
        referral_code=code,
        occurred_at=(utcnow() - timedelta(days=1)).isoformat(),
    )
    assert signed.status_code == 201 and signed.json["attributed"], signed.json
    bought = buy(client, shop, f"o-{friend}", friend, amount)
    assert bought.status_code == 201, bought.json
    return bought.json


def rows(app) -> list[Notification]:
    with app.app_context():
        found = list(db.session.scalars(select(Notification).order_by(Notification.id)))
        db.session.expunge_all()
        return found


def text_of(message) -> str:
    return message.get_body(("plain",)).get_content()


def html_of(message) -> str:
    return message.get_body(("html",)).get_content()


def unsubscribe_path(message) -> str:
    found = re.fullmatch(r"<(.+)>", message["List-Unsubscribe"].strip())
    return urlsplit(found.group(1)).path


# --- one email per event, in the referrer's language -------------------------------------------


def test_a_polish_referrer_gets_polish_emails_for_earned_approved_and_paid(
    app, client, shop, admin, smtp
):
    switch_on(client, admin)
    code = enrol(client, shop, "ref-1", locale="pl-PL", name="Anna Kowalska")
    purchase = converted(client, shop, code)
    assert len(smtp.messages) == 1
    earned = smtp.messages[0]
    assert earned["To"].addresses[0].addr_spec == "ref-1@example.com"
    assert earned["From"] == SENDER
    assert earned["Subject"] == "Zakup Twojego znajomego przyniósł Ci 10,00\xa0€"
    assert earned["Content-Language"] == "pl"
    body = text_of(earned)
    assert body.startswith("Cześć Anna,")
    assert f"http://shop.test/r/{code}?via=email" in body
    assert "http://shop.test/share/" in body
    assert "Wypisz się z tych e-maili: http://shop.test/unsubscribe/" in body
    assert f'href="http://shop.test/r/{code}?via=email"' in html_of(earned)
    assert earned["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert unsubscribe_path(earned).startswith("/unsubscribe/")
    assert re.fullmatch(r"<evt_[0-9A-Z]{26}\.\d+@shop\.example>", earned["Message-ID"])
    assert earned["Date"].datetime.tzinfo is not None

    reward_id = purchase["rewards"][0]["id"]
    mature(app, utcnow() + timedelta(days=400))
    assert approve(client, admin, reward_id).status_code == 200
    assert len(smtp.messages) == 2
    assert smtp.messages[1]["Subject"] == "Twoja nagroda 10,00\xa0€ jest zatwierdzona"

    pay(client, admin, [reward_id])
    assert len(smtp.messages) == 3
    paid = smtp.messages[2]
    assert paid["Subject"] == "Wypłaciliśmy Ci 10,00\xa0€"
    assert "Wypłaciliśmy Ci 10,00\xa0€ za zapraszanie znajomych." in text_of(paid)
    assert len({m["Message-ID"] for m in smtp.messages}) == 3
    assert [row.status for row in rows(app)] == ["sent"] * 3


@pytest.mark.parametrize(
    ("locale", "subject"),
    [
        (None, "Your friend's purchase earned you €10.00"),
        ("hu", "A barátod vásárlásával 10,00\xa0EUR jutalmat szereztél"),
        ("el", "Η αγορά του φίλου σου σού απέφερε 10,00\xa0€"),  # noqa: RUF001
        ("bg", "Покупката на твой приятел ти донесе 10,00\xa0€"),
        ("de", "Your friend's purchase earned you €10.00"),  # no catalog: the program's default
    ],
)
def test_the_email_speaks_the_referrers_language(app, client, shop, admin, smtp, locale, subject):
    switch_on(client, admin, reward_earned=True)
    converted(client, shop, enrol(client, shop, "ref-1", locale=locale))
    assert [m["Subject"] for m in smtp.messages] == [subject]


def test_without_a_language_of_their_own_the_programs_default_is_used(
    app, client, shop, admin, smtp
):
    set_program(client, admin, default_locale="bg")
    switch_on(client, admin, reward_earned=True)
    converted(client, shop, enrol(client, shop, "ref-1"))
    assert smtp.messages[0]["Subject"] == "Покупката на твой приятел ти донесе 10,00\xa0€"


def milestone(friends: int, value: str = "20.00") -> dict:
    return {"friends": friends, "reward": {"type": "fixed", "value": value}}


def test_a_milestone_rewards_email_says_it_is_a_bonus_for_n_friends(app, client, shop, admin, smtp):
    set_program(client, admin, milestones=[milestone(2)])
    switch_on(client, admin, reward_earned=True)
    code = enrol(client, shop, "ref-1", name="Ann Lee")
    converted(client, shop, code, "friend-1")
    second = converted(client, shop, code, "friend-2")
    assert [(r["kind"], r["milestone_friends"]) for r in second["rewards"]] == [
        ("referral", None),
        ("milestone", 2),
    ]
    subjects = [m["Subject"] for m in smtp.messages]
    assert subjects == [
        "Your friend's purchase earned you €10.00",
        "Your friend's purchase earned you €10.00",  # a referral reward's email, as before
        "You reached 2 friends: a bonus of €20.00",
    ]
    referral, bonus = smtp.messages[1], smtp.messages[2]
    assert "a friend you invited made their first purchase, and it earned you €10.00." in (
        text_of(referral)
    )
    body = text_of(bonus)
    assert body.startswith("Hello Ann,")
    assert (
        "Good news: 2 of the friends you invited are now customers of the shop, and that "
        "earned you a bonus of €20.00." in body
    )
    assert "The bonus is held while your friends' orders can still be returned" in body
    assert "first purchase" not in body and "first purchase" not in html_of(bonus)
    assert "2 of the friends you invited are now customers" in html_of(bonus)
    # the rest of the email is that of every reward: links, unsubscribe, its own Message-ID
    assert f"http://shop.test/r/{code}?via=email" in body
    assert "http://shop.test/share/" in body
    assert "Unsubscribe from these emails: http://shop.test/unsubscribe/" in body
    assert bonus["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert unsubscribe_path(bonus) == unsubscribe_path(referral)
    assert len({m["Message-ID"] for m in smtp.messages}) == 3
    assert [row.kind for row in rows(app)] == ["reward_earned"] * 3


def test_a_milestone_email_in_polish_takes_the_plural_form_of_n(app, client, shop, admin, smtp):
    """Polish has three forms: 1, 2-4 (22-24...), and 5+ (12-14...); a milestone of one
    friend says "the first"."""
    set_program(
        client, admin, milestones=[milestone(1, "5.00"), milestone(2, "6.00"), milestone(5)]
    )
    switch_on(client, admin, reward_earned=True)
    code = enrol(client, shop, "ref-1", locale="pl")
    for n in range(1, 6):
        converted(client, shop, code, f"friend-{n}")
    subjects = [m["Subject"] for m in smtp.messages]
    assert subjects.count("Zakup Twojego znajomego przyniósł Ci 10,00\xa0€") == 5
    bonuses = [m for m in smtp.messages if "premia" in m["Subject"]]
    assert [m["Subject"] for m in bonuses] == [
        "Pierwsza zaproszona przez Ciebie osoba została klientem: premia 5,00\xa0€",
        "2 zaproszone przez Ciebie osoby zostały klientami: premia 6,00\xa0€",
        "5 zaproszonych przez Ciebie osób zostało klientami: premia 20,00\xa0€",
    ]
    leads = [text_of(m) for m in bonuses]
    assert "pierwsza zaproszona przez Ciebie osoba została klientem sklepu" in leads[0]
    assert "2 zaproszone przez Ciebie osoby zostały klientami sklepu" in leads[1]
    assert (
        "Dobra wiadomość: 5 zaproszonych przez Ciebie osób zostało klientami sklepu, a Ty "
        "zyskujesz premię 20,00\xa0€." in leads[2]
    )
    assert all("Premia czeka" in lead for lead in leads)
    assert all(m["Content-Language"] == "pl" for m in bonuses)


@pytest.mark.parametrize(
    ("locale", "subject"),
    [
        ("hu", "Már 5 barátod vásárló: 20,00\xa0EUR bónusz"),
        ("el", "Έφτασες τους 5 φίλους: μπόνους 20,00\xa0€"),
        ("bg", "Достигна 5 приятели: бонус 20,00\xa0€"),
    ],
)
def test_a_milestone_email_speaks_the_referrers_language(
    app, client, shop, admin, smtp, locale, subject
):
    converted_before = [f"friend-{n}" for n in range(1, 5)]
    code = enrol(client, shop, "ref-1", locale=locale)
    for friend in converted_before:
        converted(client, shop, code, friend)
    set_program(client, admin, milestones=[milestone(5)])
    switch_on(client, admin, reward_earned=True)
    converted(client, shop, code, "friend-5")
    assert [m["Subject"] for m in smtp.messages][1:] == [subject]


def test_a_milestone_emails_words_follow_its_events_data_when_the_reward_is_gone():
    """The N an email tells comes from the reward, else from its `reward.created` event."""
    from referral_service.domain.notifications import _milestone_friends

    assert _milestone_friends(None, {"kind": "milestone", "milestone_friends": 5}) == 5
    assert _milestone_friends(None, {"kind": "referral", "milestone_friends": None}) is None
    for bad in ("5", True, 0, None, 2.5):
        assert _milestone_friends(None, {"kind": "milestone", "milestone_friends": bad}) is None


def test_amounts_keep_their_currencys_decimals(app, client, shop, admin, smtp):
    set_program(
        client, admin, currency="HUF", referrer_reward={"type": "fixed", "value": "1234.50"}
    )
    switch_on(client, admin, reward_earned=True)
    code = enrol(client, shop, "ref-1", locale="hu")
    signed = sign_up(client, shop, "friend-1", referral_code=code)
    assert signed.status_code == 201
    assert buy(client, shop, "o-1", "friend-1", "20000.00", currency="HUF").status_code == 201
    assert "1\xa0234,50\xa0Ft" in smtp.messages[0]["Subject"]


def test_the_friends_own_reward_is_not_told(app, client, shop, admin, smtp):
    set_program(client, admin, friend_reward={"type": "fixed", "value": "5.00"})
    switch_on(client, admin)
    purchase = converted(client, shop, enrol(client, shop, "ref-1"))
    assert {r["beneficiary"] for r in purchase["rewards"]} == {"referrer", "friend"}
    assert [m["To"].addresses[0].addr_spec for m in smtp.messages] == ["ref-1@example.com"]


def test_a_payout_tells_each_referrer_what_it_paid_them(app, client, shop, admin, smtp):
    switch_on(client, admin, reward_paid=True)
    first = converted(client, shop, enrol(client, shop, "ref-1"), "friend-1")
    second = converted(client, shop, enrol(client, shop, "ref-1"), "friend-2")
    third = converted(client, shop, enrol(client, shop, "ref-2", locale="pl"), "friend-3")
    ids = [body["rewards"][0]["id"] for body in (first, second, third)]
    mature(app, utcnow() + timedelta(days=400))
    for reward_id in ids:
        assert approve(client, admin, reward_id).status_code == 200
    assert smtp.messages == []
    pay(client, admin, ids)
    subjects = {m["To"].addresses[0].addr_spec: m["Subject"] for m in smtp.messages}
    assert subjects == {
        "ref-1@example.com": "We have paid you €20.00",
        "ref-2@example.com": "Wypłaciliśmy Ci 10,00\xa0€",
    }


def test_a_payout_email_says_what_was_paid_net_of_clawbacks(app, client, shop, admin, smtp):
    from tests.journey_helpers import refund

    switch_on(client, admin, reward_paid=True)
    code = enrol(client, shop, "ref-1")
    first = converted(client, shop, code, "friend-1")["rewards"][0]["id"]
    mature(app, utcnow() + timedelta(days=400))
    assert approve(client, admin, first).status_code == 200
    pay(client, admin, [first], "SEPA-1")
    assert refund(client, shop, "o-friend-1").status_code == 200  # after payout: a clawback
    later = [converted(client, shop, code, f)["rewards"][0]["id"] for f in ("friend-2", "friend-3")]
    mature(app, utcnow() + timedelta(days=400))
    for reward_id in later:
        assert approve(client, admin, reward_id).status_code == 200
    pay(client, admin, later, "SEPA-2")
    assert [m["Subject"] for m in smtp.messages] == [
        "We have paid you €10.00",
        "We have paid you €10.00",  # €20.00 of rewards, less the €10.00 clawed back
    ]


# --- nothing sent: switches off, unsubscribed, no MAIL_URL ----------------------------------------


def test_with_the_switches_off_nothing_is_planned(app, client, shop, admin, smtp):
    purchase = converted(client, shop, enrol(client, shop, "ref-1"))
    mature(app, utcnow() + timedelta(days=400))
    assert approve(client, admin, purchase["rewards"][0]["id"]).status_code == 200
    assert smtp.messages == [] and rows(app) == []


def test_one_switch_sends_its_kind_only(app, client, shop, admin, smtp):
    switch_on(client, admin, reward_approved=True)
    purchase = converted(client, shop, enrol(client, shop, "ref-1"))
    assert smtp.messages == []
    mature(app, utcnow() + timedelta(days=400))
    assert approve(client, admin, purchase["rewards"][0]["id"]).status_code == 200
    assert [m["Subject"] for m in smtp.messages] == ["Your reward of €10.00 is approved"]


def test_an_unsubscribed_referrer_gets_nothing(app, client, shop, admin, smtp):
    switch_on(client, admin)
    code = enrol(client, shop, "ref-1")
    with app.app_context():
        customer_id = db.session.scalar(select(Customer.id).where(Customer.external_id == "ref-1"))
        token = notifications.unsubscribe_token(customer_id)
    assert client.post(f"/unsubscribe/{token}").status_code == 200
    converted(client, shop, code)
    assert smtp.messages == [] and rows(app) == []


def test_unsubscribing_after_planning_skips_the_waiting_email(app, client, shop, admin, smtp):
    switch_on(client, admin)
    smtp.stop()
    converted(client, shop, enrol(client, shop, "ref-1"))
    (row,) = rows(app)
    assert row.status == "pending" and row.attempts == 1
    with app.app_context():
        assert client.post(f"/unsubscribe/{notifications.unsubscribe_token(row.customer_id)}")
    smtp.start()
    with app.app_context():
        assert notifications.send(row.id, utcnow() + timedelta(minutes=2)) is None
    assert smtp.messages == []
    assert rows(app)[0].status == "skipped" and rows(app)[0].last_error == "unsubscribed"


def test_switching_off_after_planning_skips_the_waiting_email(app, client, shop, admin, smtp):
    switch_on(client, admin)
    smtp.stop()
    converted(client, shop, enrol(client, shop, "ref-1"))
    switch_on(client, admin, reward_earned=False)
    smtp.start()
    with app.app_context():
        assert notifications.send(rows(app)[0].id, utcnow() + timedelta(minutes=2)) is None
    assert smtp.messages == [] and rows(app)[0].status == "skipped"


def test_without_mail_url_nothing_is_planned_and_the_log_says_so_once(
    app, client, shop, admin, caplog
):
    switch_on(client, admin)
    with caplog.at_level(logging.INFO, logger="referral_service.domain.notifications"):
        converted(client, shop, enrol(client, shop, "ref-1"), "friend-1")
        converted(client, shop, enrol(client, shop, "ref-2"), "friend-2")
    said = [r for r in caplog.records if "MAIL_URL is not set" in r.getMessage()]
    assert len(said) == 1
    assert rows(app) == []


# --- never twice ---------------------------------------------------------------------------------


def earned_event(app) -> OutboxEvent:
    with app.app_context():
        event = db.session.scalar(select(OutboxEvent).where(OutboxEvent.type == "reward.created"))
        db.session.expunge(event)
        return event


def test_the_same_event_relayed_twice_is_one_email(app, client, shop, admin, smtp):
    switch_on(client, admin)
    converted(client, shop, enrol(client, shop, "ref-1"))
    event = earned_event(app)
    with app.app_context():
        with unit_of_work() as unit:
            assert notifications.plan_emails(event, unit.now) == []
        for row_id in notifications.due_emails(utcnow() + timedelta(days=30)):
            notifications.send(row_id)
        notifications.send(rows(app)[0].id, utcnow() + timedelta(days=30))
    assert len(smtp.messages) == 1 and len(rows(app)) == 1


def test_planning_by_hand_inside_a_unit_adds_one_row(app, client, shop, admin, smtp):
    """What the relay does: plan inside its transaction (only rows added), send after commit."""
    switch_on(client, admin)
    code = enrol(client, shop, "ref-1")
    app.extensions.pop("tasks")  # no worker: the event stays in the outbox for this test
    purchase = converted(client, shop, code)
    event = earned_event(app)
    assert event.data["id"] == purchase["rewards"][0]["id"]
    with app.app_context():
        with unit_of_work() as unit:
            planned = notifications.plan_emails(event, unit.now)
            assert notifications.plan_emails(event, unit.now) == []
        assert len(planned) == 1
        assert notifications.due_emails(utcnow()) == planned
        assert notifications.send(planned[0]) is None
        assert notifications.send(planned[0]) is None  # sent: never claimed again
        assert notifications.due_emails(utcnow() + timedelta(days=30)) == []
    assert len(smtp.messages) == 1


def test_events_that_tell_nobody_plan_nothing(app, client, shop, admin, smtp):
    switch_on(client, admin)
    code = enrol(client, shop, "ref-1")
    app.extensions.pop("tasks")
    converted(client, shop, code)
    with app.app_context():
        with unit_of_work() as unit:
            unit.emit("reward.created", {"id": "not a number"})
            unit.emit("reward.approved", {"id": 10**9})
            unit.emit("payout.paid", {"id": 10**9})
            unit.emit("reward.rejected", {"id": 1})
        made = list(db.session.scalars(select(OutboxEvent).order_by(OutboxEvent.id)))[-4:]
        with unit_of_work() as unit:
            assert [notifications.plan_emails(e, unit.now) for e in made] == [[], [], [], []]


def test_two_workers_sending_the_same_email_send_it_once(app, client, shop, admin, smtp):
    from tests.journey_helpers import together

    switch_on(client, admin)
    smtp.stop()
    converted(client, shop, enrol(client, shop, "ref-1"))
    smtp.start()
    row_id = rows(app)[0].id
    later = utcnow() + timedelta(minutes=2)

    def attempt(_):
        with app.app_context():
            return notifications.send(row_id, later)

    together(6, attempt)
    assert len(smtp.messages) == 1 and rows(app)[0].status == "sent"


# --- the mail server away: retried, then sent once ---------------------------------------------


def test_a_server_away_is_retried_on_the_schedule_then_sent_once(app, client, shop, admin, smtp):
    switch_on(client, admin)
    smtp.stop()
    start = utcnow()
    converted(client, shop, enrol(client, shop, "ref-1"))
    (row,) = rows(app)
    assert (row.status, row.attempts, row.sent_at) == ("pending", 1, None)
    assert "ConnectionRefusedError" in row.last_error
    assert timedelta(seconds=59) < row.next_attempt_at - start < timedelta(seconds=70)
    with app.app_context():
        assert notifications.due_emails(start + timedelta(seconds=30)) == []
        # the second attempt, a minute later, fails again: the next one 5 minutes after it
        second = row.next_attempt_at
        assert notifications.due_emails(second) == [row.id]
        assert notifications.send(row.id, second) == second + timedelta(minutes=5)
        assert notifications.send(row.id, second) is None  # not due yet: no attempt
        smtp.start()
        third = second + timedelta(minutes=5)
        assert notifications.send(row.id, third) is None
        assert notifications.send(row.id, third + timedelta(days=2)) is None
    assert len(smtp.messages) == 1
    row = rows(app)[0]
    assert (row.status, row.attempts, row.last_error) == ("sent", 3, None)
    assert row.sent_at == third


def test_the_workers_sweep_sends_the_emails_that_are_due(app, client, shop, admin, smtp):
    switch_on(client, admin)
    smtp.stop()
    converted(client, shop, enrol(client, shop, "ref-1"))
    smtp.start()
    with app.app_context():
        tasks = app.extensions["tasks"]
        assert tasks.sweep_due()["emails"] == 0  # its retry is a minute away
        with unit_of_work():  # the minute has passed
            db.session.execute(
                update(Notification).values(next_attempt_at=utcnow() - timedelta(seconds=1))
            )
        assert tasks.sweep_due()["emails"] == 1
        assert tasks.sweep_due()["emails"] == 0
    assert len(smtp.messages) == 1 and rows(app)[0].status == "sent"


def test_retries_run_out_after_a_day_and_more(app, client, shop, admin, smtp):
    switch_on(client, admin)
    smtp.stop()
    converted(client, shop, enrol(client, shop, "ref-1"))
    row_id = rows(app)[0].id
    waits = []
    with app.app_context():
        when = rows(app)[0].next_attempt_at
        while when is not None:
            following = notifications.send(row_id, when)
            if following is not None:
                waits.append(following - when)
            when = following
    assert waits == [timedelta(seconds=s) for s in (300, 1800, 7200, 21600, 86400)]
    row = rows(app)[0]
    assert (row.status, row.attempts) == ("failed", 7)


def test_a_mailbox_refused_for_good_is_not_retried(app, client, shop, admin, smtp):
    switch_on(client, admin)
    converted(client, shop, enrol(client, shop, "ref-1", email_address="bounce@example.com"))
    row = rows(app)[0]
    assert (row.status, row.attempts) == ("failed", 1)
    assert "550" in row.last_error
    assert smtp.messages == []


def test_a_mailbox_refused_for_now_is_retried_and_the_error_names_no_address(
    app, client, shop, admin, smtp, caplog
):
    switch_on(client, admin)
    converted(client, shop, enrol(client, shop, "ref-1", email_address="later@example.com"))
    row = rows(app)[0]
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.last_error == "TemporaryFailure: recipient refused (451)"
    assert "later@" not in caplog.text
    assert smtp.messages == []


def test_an_internationalized_domain_is_sent_in_its_ascii_form(app, client, shop, admin, smtp):
    switch_on(client, admin)
    converted(client, shop, enrol(client, shop, "ref-1", email_address="anna@bücher.example"))
    assert smtp.box.envelopes[0].rcpt_tos == ["anna@xn--bcher-kva.example"]
    assert rows(app)[0].status == "sent"


def test_an_address_no_header_can_carry_is_given_up_at_once(app, client, shop, admin, smtp):
    switch_on(client, admin)
    code = enrol(client, shop, "ref-1")
    with app.app_context(), unit_of_work():  # as a shop's import could hold it
        customer = db.session.scalar(select(Customer).where(Customer.external_id == "ref-1"))
        customer.email = "zażółć@example.com"
    converted(client, shop, code)
    row = rows(app)[0]
    assert (row.status, row.attempts) == ("failed", 1)
    assert row.last_error.startswith("unusable address")
    assert smtp.messages == []


@pytest.mark.parametrize("broken", ["writer", "sender"])
def test_a_bug_is_logged_in_full_and_retried(
    app, client, shop, admin, smtp, monkeypatch, caplog, broken
):
    def fail(*args):
        raise RuntimeError("a bug")

    if broken == "writer":
        monkeypatch.setattr(notifications, "_writer", [fail])
    else:
        monkeypatch.setattr(mail, "send", fail)
    switch_on(client, admin)
    converted(client, shop, enrol(client, shop, "ref-1"))
    row = rows(app)[0]
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "RuntimeError")
    assert row.lease_until is None
    assert "Traceback" in caplog.text and "a bug" in caplog.text
    assert smtp.messages == []


def test_a_lease_keeps_other_workers_off_until_it_ends(app, client, shop, admin, smtp):
    switch_on(client, admin)
    smtp.stop()
    converted(client, shop, enrol(client, shop, "ref-1"))
    smtp.start()
    row_id = rows(app)[0].id
    later = utcnow() + timedelta(minutes=2)
    with app.app_context():
        email_held = notifications._claim(row_id, later)  # a worker that dies while sending
        assert email_held is not None
        assert notifications.due_emails(later) == []
        assert notifications.send(row_id, later + timedelta(minutes=1)) is None
        assert smtp.messages == []
        after_lease = later + notifications.LEASE
        assert notifications.due_emails(after_lease) == [row_id]
        assert notifications.send(row_id, after_lease) is None
    assert len(smtp.messages) == 1
    assert rows(app)[0].attempts == 3


# --- TLS: smtps:// and smtp+starttls://, with a login --------------------------------------------


@pytest.fixture
def tls_server(app):
    server = SmtpServer(ssl_context=server_tls())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def starttls_server(app):
    logins = Logins("shop@mail.example", "p@ss:w/rd")
    server = SmtpServer(
        tls_context=server_tls(),
        require_starttls=True,
        authenticator=logins,
        auth_require_tls=True,
    )
    server.logins = logins
    server.start()
    yield server
    server.stop()


def test_smtps_sends_over_tls(app, client, shop, admin, tls_server, trusting_the_test_certificate):
    app.config.update(MAIL_URL=f"smtps://localhost:{tls_server.port}", MAIL_FROM=SENDER)
    switch_on(client, admin)
    converted(client, shop, enrol(client, shop, "ref-1"))
    assert len(tls_server.messages) == 1 and rows(app)[0].status == "sent"


def test_starttls_with_a_login(
    app, client, shop, admin, starttls_server, trusting_the_test_certificate
):
    url = f"smtp+starttls://shop%40mail.example:p%40ss%3Aw%2Frd@localhost:{starttls_server.port}"
    app.config.update(MAIL_URL=url, MAIL_FROM=SENDER)
    switch_on(client, admin)
    converted(client, shop, enrol(client, shop, "ref-1"))
    assert len(starttls_server.messages) == 1 and rows(app)[0].status == "sent"
    assert starttls_server.logins.seen == ["shop@mail.example"]


def test_a_certificate_the_service_does_not_trust_is_refused_and_retried(
    app, client, shop, admin, starttls_server, caplog
):
    url = f"smtp+starttls://shop%40mail.example:p%40ss%3Aw%2Frd@localhost:{starttls_server.port}"
    app.config.update(MAIL_URL=url, MAIL_FROM=SENDER)
    switch_on(client, admin)
    converted(client, shop, enrol(client, shop, "ref-1"))
    row = rows(app)[0]
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.last_error.startswith("SSLCertVerificationError")
    assert starttls_server.logins.seen == []  # the password never left before TLS held
    assert "p@ss" not in caplog.text and "p@ss" not in row.last_error


def test_a_wrong_password_is_retried_and_never_recorded(
    app, client, shop, admin, starttls_server, trusting_the_test_certificate, caplog
):
    url = f"smtp+starttls://shop%40mail.example:wrong-secret@localhost:{starttls_server.port}"
    app.config.update(MAIL_URL=url, MAIL_FROM=SENDER)
    switch_on(client, admin)
    converted(client, shop, enrol(client, shop, "ref-1"))
    row = rows(app)[0]
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.last_error == "TemporaryFailure: SMTPAuthenticationError (535)"
    assert "wrong-secret" not in caplog.text


def test_plain_smtp_is_refused_by_a_server_that_requires_starttls(
    app, client, shop, admin, starttls_server
):
    app.config.update(MAIL_URL=f"smtp://localhost:{starttls_server.port}", MAIL_FROM=SENDER)
    switch_on(client, admin)
    converted(client, shop, enrol(client, shop, "ref-1"))
    assert rows(app)[0].status == "pending" and starttls_server.messages == []


# --- unsubscribing -------------------------------------------------------------------------------


@pytest.fixture
def token(app, client, shop):
    enrol(client, shop, "ref-1", locale="pl")
    with app.app_context():
        customer_id = db.session.scalar(select(Customer.id).where(Customer.external_id == "ref-1"))
        return notifications.unsubscribe_token(customer_id)


def opted_out(app) -> int:
    with app.app_context():
        return len(db.session.scalars(select(EmailOptOut)).all())


def test_the_unsubscribe_page_asks_first_and_a_get_changes_nothing(app, client, token):
    page = client.get(f"/unsubscribe/{token}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert '<html lang="pl">' in html
    assert f'<form method="post" action="/unsubscribe/{token}">' in html
    assert "Wypisz się</button>" in html
    assert page.headers["Cache-Control"] == "no-store"
    assert opted_out(app) == 0


def test_one_click_unsubscribe_needs_no_sign_in_and_is_idempotent(app, client, token):
    for _ in range(2):
        done = client.post(
            f"/unsubscribe/{token}",
            data="List-Unsubscribe=One-Click",
            content_type="application/x-www-form-urlencoded",
        )
        assert done.status_code == 200
        assert "Wypisano Cię" in done.get_data(as_text=True)
    assert opted_out(app) == 1
    again = client.get(f"/unsubscribe/{token}").get_data(as_text=True)
    assert "Wypisano Cię" in again and "<form" not in again


def test_unsubscribing_at_once_from_many_places_is_one_opt_out_audited_once(app, token):
    from referral_service.models import AuditRecord
    from tests.journey_helpers import together

    def click(_):
        return app.test_client().post(f"/unsubscribe/{token}").status_code

    assert together(6, click) == [200] * 6
    assert opted_out(app) == 1
    with app.app_context():
        audited = db.session.scalars(
            select(AuditRecord).where(AuditRecord.action == "customer.unsubscribe")
        ).all()
    assert len(audited) == 1


def test_the_unsubscribe_link_of_an_email_works(app, client, shop, admin, smtp):
    switch_on(client, admin)
    converted(client, shop, enrol(client, shop, "ref-1"))
    path = unsubscribe_path(smtp.messages[0])
    assert path in text_of(smtp.messages[0])
    assert client.post(path).status_code == 200
    assert opted_out(app) == 1


@pytest.mark.parametrize(
    "forged",
    [
        "x",
        "MQ.forged-signature",
        "A" * 300,
        "%E2%80%AE",
        "MQ",
    ],
)
def test_a_forged_unsubscribe_link_is_a_404_page(app, client, token, forged):
    for method in (client.get, client.post):
        response = method(f"/unsubscribe/{forged}", headers={"Accept": "text/html"})
        assert response.status_code == 404
        assert "text/html" in response.content_type
    assert opted_out(app) == 0


def test_a_token_signed_for_something_else_is_refused(app, client, token):
    from referral_service.domain import portal

    with app.app_context():
        share_page_token = portal.issue_link("ref-1").token
    assert client.post(f"/unsubscribe/{share_page_token}").status_code == 404
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert client.post(f"/unsubscribe/{tampered}").status_code == 404
    assert opted_out(app) == 0


def test_a_link_naming_a_customer_who_is_gone_is_a_404(app, client):
    with app.app_context():
        token = notifications.unsubscribe_token(987654)
    assert client.get(f"/unsubscribe/{token}").status_code == 404
    assert client.post(f"/unsubscribe/{token}").status_code == 404


# --- settings: MAIL_URL, MAIL_FROM, the program's switches ---------------------------------------


@pytest.mark.parametrize(
    ("url", "security", "host", "port", "user", "password"),
    [
        ("smtp://mail.example", "plain", "mail.example", 25, None, None),
        ("smtp://u:p@mail.example:2525", "plain", "mail.example", 2525, "u", "p"),
        ("smtps://mail.example", "tls", "mail.example", 465, None, None),
        (
            "SMTPS://me%40shop.example:p%3A%2Fw@mail.example:4650",
            *("tls", "mail.example", 4650, "me@shop.example", "p:/w"),
        ),
        ("smtp+starttls://u:@mail.example", "starttls", "mail.example", 587, "u", ""),
        ("smtp+starttls://[::1]:1587/", "starttls", "::1", 1587, None, None),
    ],
)
def test_mail_urls(url, security, host, port, user, password):
    server = mail.parse_mail_url(url, "referrals@shop.example")
    assert (server.security, server.host, server.port) == (security, host, port)
    assert (server.username, server.password) == (user, password)
    assert "password" not in repr(server) or password is None


@pytest.mark.parametrize(
    "url",
    [
        "http://mail.example",
        "smtp://",
        "smtp://mail.example:99999",
        "smtp://mail.example:0",
        "smtp://mail.example:port",
        "smtp://mail.example/inbox",
        "smtp://mail.example?tls=1",
        "smtp://:secret@mail.example",
        "mail.example:25",
        "smtp://[::1",
    ],
)
def test_bad_mail_urls_are_a_settings_error(url):
    with pytest.raises(SettingsError) as refused:
        mail.parse_mail_url(url, "referrals@shop.example")
    assert "MAIL_URL" in str(refused.value)
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize(
    "sender",
    [
        *(None, "", "shop", "@shop.example", "a@b", "a@b.example, c@d.example"),
        *("a b@shop.example", "Shop <a@shop.example>\nBcc: x@y.example"),
    ],
)
def test_mail_from_must_be_one_address(sender):
    with pytest.raises(SettingsError, match="MAIL_FROM"):
        mail.parse_mail_url("smtp://mail.example", sender)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"MAIL_URL": "smtp://mail.example:99999", "MAIL_FROM": SENDER}, "MAIL_URL must be"),
        ({"MAIL_URL": "smtp://mail.example"}, "MAIL_FROM must be"),
        (
            {"MAIL_URL": "smtp://mail.example", "MAIL_FROM": SENDER, "PUBLIC_BASE_URL": None},
            "MAIL_URL needs PUBLIC_BASE_URL",
        ),
    ],
)
def test_the_service_will_not_start_with_bad_mail_settings(database_url, settings, problem):
    from referral_service import create_app
    from tests.conftest import app_config

    with pytest.raises(SettingsError, match=problem):
        create_app(app_config(database_url, **settings))


def test_a_bad_mail_url_plans_nothing_and_says_why(app, client, shop, admin, caplog):
    switch_on(client, admin)
    app.config.update(MAIL_URL="smtp://mail.example:99999", MAIL_FROM=SENDER)
    with caplog.at_level(logging.ERROR, logger="referral_service.domain.notifications"):
        converted(client, shop, enrol(client, shop, "ref-1"))
    assert rows(app) == []
    assert any("MAIL_URL must be" in r.getMessage() for r in caplog.records)


def test_the_switches_are_program_settings(client, shop, admin):
    assert client.get("/api/v1/program", headers=shop).json["notifications"] == {
        "reward_earned": False,
        "reward_approved": False,
        "reward_paid": False,
    }
    changed = set_program(client, admin, notifications={"reward_paid": True})
    assert changed["notifications"] == {
        "reward_earned": False,
        "reward_approved": False,
        "reward_paid": True,
    }
    changed = set_program(client, admin, notifications={"reward_earned": True})
    assert changed["notifications"]["reward_paid"] is True  # a kind left out keeps its value


@pytest.mark.parametrize(
    "value",
    [
        {"reward_paid": "true"},
        {"reward_paid": 1},
        {"reward_paid": None},
        {"reward_refunded": True},
        [True],
        "on",
        None,
    ],
)
def test_switches_that_are_not_booleans_are_a_422(client, shop, admin, value):
    response = client.patch("/api/v1/program", json={"notifications": value}, headers=admin)
    assert response.status_code == 422, response.json
    assert response.json["error"]["code"] == "validation_error"
    assert any(key.startswith("notifications") for key in response.json["error"]["fields"])
    assert client.get("/api/v1/program", headers=shop).json["notifications"]["reward_paid"] is False


def test_a_shop_key_cannot_switch_emails_on(client, shop):
    response = client.patch(
        "/api/v1/program", json={"notifications": {"reward_paid": True}}, headers=shop
    )
    assert response.status_code == 403


def test_the_console_shows_and_saves_the_switches(app, client):
    signed_in_as(app, client, "owner")
    page = client.get("/admin/settings").get_data(as_text=True)
    for kind in ALL_ON:
        assert f'name="notifications.{kind}"' in page
    assert "MAIL_URL is not set" in page
    response = save(
        client,
        **{"notifications.reward_paid": ["false", "true"], "notifications.reward_earned": "false"},
    )
    assert response.status_code == 302
    assert saved(app)["notifications"] == {
        "reward_earned": False,
        "reward_approved": False,
        "reward_paid": True,
    }
    app.config["MAIL_URL"] = "smtp://127.0.0.1:25"
    assert "MAIL_URL is not set" not in client.get("/admin/settings").get_data(as_text=True)


def test_the_program_change_is_audited_once(app, client, admin):
    from referral_service.models import AuditRecord

    set_program(client, admin, notifications={"reward_earned": True})
    with app.app_context():
        (record,) = db.session.scalars(
            select(AuditRecord).where(AuditRecord.action == "program.update")
        ).all()
        assert record.after == {
            "notifications": {"reward_earned": True, "reward_approved": False, "reward_paid": False}
        }


def test_a_reward_reversed_before_its_email_went_out_is_not_told(app, client, shop, admin, smtp):
    switch_on(client, admin)
    smtp.stop()
    converted(client, shop, enrol(client, shop, "ref-1"))
    assert (
        client.post("/api/v1/refunds", json={"order_id": "o-friend-1"}, headers=shop).status_code
        == 200
    )
    smtp.start()
    with app.app_context():
        assert notifications.send(rows(app)[0].id, utcnow() + timedelta(minutes=2)) is None
    assert smtp.messages == []
    assert rows(app)[0].status == "skipped" and rows(app)[0].last_error == "reward no longer owed"

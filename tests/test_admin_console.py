"""The admin console with Flask's test client: admins on the command line, sign-in and its
throttle, sessions, CSRF, roles, the rewards queue and the dashboard.

CSRF stays on here: every form is posted with the token read from the page that carries it.
"""

import base64
import re
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from referral_service import cli, create_app
from referral_service.cli import main
from referral_service.domain import admins
from referral_service.errors import Throttled, Unauthorized
from referral_service.extensions import db
from referral_service.models import Admin, AuditRecord, Customer, Referral, Reward, utcnow
from tests.conftest import app_config, empty_tables
from tests.journey_helpers import at, buy, converted_friend, enrol, set_program, sign_up

PASSWORD = "correct horse battery"
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def make_admin(app, email="owner@example.com", role="owner", password=PASSWORD) -> int:
    with app.app_context():
        return admins.create(email, password, role).id


def token(client, path="/admin/login") -> str:
    response = client.get(path)
    assert response.status_code == 200, response.status_code
    return TOKEN.search(response.get_data(as_text=True)).group(1)


def sign_in(client, email="owner@example.com", password=PASSWORD, **extra):
    form = {"csrf_token": token(client), "email": email, "password": password, **extra}
    return client.post("/admin/login", data=form)


def signed_in_as(app, client, role="owner", email=None):
    email = email or f"{role}@example.com"
    make_admin(app, email, role)
    response = sign_in(client, email)
    assert response.status_code == 302, response.get_data(as_text=True)
    return email


def decide(client, **form):
    """POST the queue's form with the token of the queue page."""
    form.setdefault("csrf_token", token(client, "/admin/rewards"))
    return client.post("/admin/rewards/decide", data=form)


@pytest.fixture
def queue(app, client, shop):
    """Three rewards awaiting approval: two of ref-1 (f-2 risky, with a hostile name), one of
    ref-2."""
    signed_up = utcnow() - timedelta(days=40)
    ids = {}
    for friend, referrer in (("f-1", "ref-1"), ("f-2", "ref-1"), ("f-3", "ref-2")):
        body = converted_friend(
            client,
            shop,
            friend,
            referrer=referrer,
            signed_up_at=at(signed_up),
            occurred_at=at(signed_up + timedelta(days=1)),  # the hold is long over
        )
        ids[friend] = body["rewards"][0]["id"]
    with app.app_context():
        friend_id = select(Customer.id).where(Customer.external_id == "f-2").scalar_subquery()
        db.session.execute(
            update(Referral)
            .where(Referral.friend_id == friend_id)
            .values(risk_score=60, risk_reasons=["same_device", "disposable_email"])
        )
        db.session.execute(
            update(Customer)
            .where(Customer.external_id == "f-2")
            .values(name="<script>alert(1)</script>")
        )
        db.session.commit()
        statuses = {db.session.get(Reward, i).status for i in ids.values()}
    assert statuses == {"awaiting_approval"}
    return ids


def status_of(app, reward_id) -> str:
    with app.app_context():
        return db.session.get(Reward, reward_id).status


def audit(app) -> list[tuple]:
    with app.app_context():
        return [
            (r.actor, r.action, r.subject_id, r.after)
            for r in db.session.scalars(select(AuditRecord).order_by(AuditRecord.id))
        ]


# --- admins on the command line -----------------------------------------------------------------


def test_cli_creates_admin_from_prompt(app, runner, monkeypatch):
    monkeypatch.setattr(cli, "_interactive", lambda: True)
    result = runner.invoke(
        main, ["admins", "create", "Boss@Example.COM"], input=f"{PASSWORD}\n{PASSWORD}\n"
    )
    assert result.exit_code == 0, result.output
    assert "Created admin" in result.output and "role owner" in result.output
    assert PASSWORD not in result.output
    with app.app_context():
        admin = db.session.scalar(select(Admin))
        assert (admin.email, admin.role) == ("boss@example.com", "owner")
        assert admin.password_hash.startswith("scrypt$")
        assert PASSWORD not in admin.password_hash
        assert admins.verify_password(PASSWORD, admin.password_hash)


def test_cli_prompt_needs_the_same_password_twice(app, runner, monkeypatch):
    monkeypatch.setattr(cli, "_interactive", lambda: True)
    result = runner.invoke(
        main,
        ["admins", "create", "a@example.com"],
        input=f"{PASSWORD}\nsomething else!\n{PASSWORD}\n{PASSWORD}\n",
    )
    assert result.exit_code == 0, result.output
    assert "do not match" in result.output or "don't match" in result.output


def test_cli_creates_admin_from_stdin_and_lists(app, runner):
    result = runner.invoke(
        main, ["admins", "create", "viewer@example.com", "--role", "viewer"], input=PASSWORD + "\n"
    )
    assert result.exit_code == 0, result.output
    listed = runner.invoke(main, ["admins", "list"])
    assert listed.exit_code == 0, listed.output
    assert re.search(r"viewer@example\.com\s+viewer\s+never\s+active", listed.output)


@pytest.mark.parametrize(
    ("email", "password", "problem"),
    [
        ("a@example.com", "too short", "password"),
        ("not an email", PASSWORD, "email"),
        ("owner@example.com", PASSWORD, "exists already"),
    ],
)
def test_cli_refuses_bad_admins(app, runner, email, password, problem):
    make_admin(app)
    result = runner.invoke(main, ["admins", "create", email], input=password + "\n")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert problem in result.output


def test_password_hash_uses_owasp_parameters(monkeypatch):
    monkeypatch.undo()
    stored = admins.hash_password(PASSWORD)
    scheme, n, r, p, salt, key = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**17), "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(key)) == 64
    assert admins.hash_password(PASSWORD) != stored  # salted
    assert admins.verify_password(PASSWORD, stored)
    assert not admins.verify_password(PASSWORD + "!", stored)


# --- sign-in, sessions, throttle --------------------------------------------------------------


@pytest.mark.parametrize("path", ["/admin", "/admin/rewards", "/admin/rewards?status=approved"])
def test_pages_need_sign_in(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login?next=")


def test_sign_in_and_out(app, client):
    make_admin(app)
    page = client.get("/admin/login")
    assert 'autocomplete="current-password"' in page.get_data(as_text=True)
    response = sign_in(client, "OWNER@example.com ", next="/admin/rewards")
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/rewards"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    dashboard = client.get("/admin")
    assert dashboard.status_code == 200
    assert "owner@example.com" in dashboard.get_data(as_text=True)
    assert dashboard.headers["Cache-Control"] == "no-store"
    assert "style-src 'self'" in dashboard.headers["Content-Security-Policy"]
    with app.app_context():
        assert db.session.scalar(select(Admin.last_sign_in_at)) is not None
    out = client.post("/admin/logout", data={"csrf_token": token(client, "/admin")})
    assert out.status_code == 302
    assert client.get("/admin").status_code == 302


def test_session_cookie_is_secure_over_https(app):
    client = app.test_client()
    response = client.get("/admin/login", base_url="https://admin.test")
    assert "Secure" in response.headers["Set-Cookie"]


@pytest.mark.parametrize(
    ("email", "password"),
    [("owner@example.com", PASSWORD + "x"), ("nobody@example.com", PASSWORD), ("", "")],
)
def test_wrong_sign_in_is_refused_with_one_message(app, client, email, password):
    make_admin(app)
    response = sign_in(client, email, password)
    assert response.status_code == 401
    assert "Wrong email or password." in response.get_data(as_text=True)
    assert client.get("/admin").status_code == 302


def test_sign_in_refuses_an_open_redirect(app, client):
    make_admin(app)
    response = sign_in(client, next="//evil.example/admin")
    assert response.headers["Location"] == "/admin"


def test_sign_in_is_throttled_after_five_failures(app, client):
    make_admin(app)
    for _ in range(5):
        assert sign_in(client, password="wrong password!").status_code == 401
    refused = sign_in(client)  # even the right password
    assert refused.status_code == 429
    assert "Too many failed sign-ins" in refused.get_data(as_text=True)
    assert client.get("/admin").status_code == 302
    with app.app_context():
        with pytest.raises(Throttled) as throttled:
            admins.authenticate("owner@example.com", PASSWORD)
        assert 0 < throttled.value.retry_after <= 15 * 60
        later = utcnow() + timedelta(minutes=16)
        assert admins.authenticate("owner@example.com", PASSWORD, now=later).email
        # a success forgets the failures: one more wrong password is not yet a lock-out
        with pytest.raises(Unauthorized):
            admins.authenticate("owner@example.com", "wrong password!", now=later)
        assert admins.authenticate("owner@example.com", PASSWORD, now=later).email


def from_address(address: str) -> dict:
    return {"environ_base": {"REMOTE_ADDR": address}}


def sign_in_from(client, address: str, email="owner@example.com", password=PASSWORD):
    form = {"email": email, "password": password}
    form["csrf_token"] = TOKEN.search(
        client.get("/admin/login", **from_address(address)).get_data(as_text=True)
    ).group(1)
    return client.post("/admin/login", data=form, **from_address(address))


def test_sign_in_is_throttled_per_address_whatever_the_emails(app, client):
    """15 emails guessed from one address: 10 refusals, then 429 for every email (the right
    password too), while another address signs in; each email alone stays under its 5."""
    make_admin(app)
    answers = [
        sign_in_from(client, "192.0.2.7", f"guess{n}@example.com", "wrong password!").status_code
        for n in range(15)
    ]
    assert answers == [401] * admins.MAX_ADDRESS_FAILURES + [429] * 5
    refused = sign_in_from(client, "192.0.2.7")
    assert refused.status_code == 429
    assert "Too many failed sign-ins for this address" in refused.get_data(as_text=True)
    assert 0 < int(refused.headers["Retry-After"]) <= 15 * 60
    assert sign_in_from(app.test_client(), "192.0.2.8").status_code == 302


def test_sign_in_throttle_counts_the_address_the_rate_limits_see(database_url):
    """Behind a trusted proxy, the forwarded client address is counted, not the proxy's; an
    IPv6 client counts by its /64 network."""
    app = create_app(app_config(database_url, TRUSTED_PROXIES=1))
    with app.app_context():
        empty_tables()
    make_admin(app)
    client = app.test_client()
    try:
        for n in range(admins.MAX_ADDRESS_FAILURES):
            forwarded = {"X-Forwarded-For": f"2001:db8:1:2::{n + 1:x}"}
            form = {"csrf_token": token(client), "email": f"g{n}@example.com", "password": "x"}
            response = client.post(
                "/admin/login", data=form, headers=forwarded, **from_address("10.0.0.1")
            )
            assert response.status_code == 401
        for forwarded, status in (("2001:db8:1:2::ff", 429), ("2001:db8:1:3::1", 302)):
            form = {"csrf_token": token(client), "email": "owner@example.com"}
            form["password"] = PASSWORD
            response = client.post(
                "/admin/login",
                data=form,
                headers={"X-Forwarded-For": forwarded},
                **from_address("10.0.0.1"),
            )
            assert response.status_code == status, forwarded
        # whatever a proxy forwards, a failure is recorded (its first 64 characters), never a 500
        client = app.test_client()
        form = {"csrf_token": token(client), "email": "owner@example.com", "password": "x"}
        response = client.post(
            "/admin/login",
            data=form,
            headers={"X-Forwarded-For": "not-an-address-" + "é" * 300},
            **from_address("10.0.0.1"),
        )
        assert response.status_code == 401
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def test_a_success_does_not_forget_the_failures_of_its_address(app):
    """One known password does not reset the count of guesses at the others."""
    make_admin(app)
    with app.app_context():
        for n in range(admins.MAX_ADDRESS_FAILURES - 1):
            with pytest.raises(Unauthorized):
                admins.authenticate(f"g{n}@example.com", "wrong password!", address="192.0.2.9")
        assert admins.authenticate("owner@example.com", PASSWORD, address="192.0.2.9")
        with pytest.raises(Unauthorized):
            admins.authenticate("g@example.com", "wrong password!", address="192.0.2.9")
        with pytest.raises(Throttled):
            admins.authenticate("owner@example.com", PASSWORD, address="192.0.2.9")
        later = utcnow() + admins.FAILURE_WINDOW + timedelta(seconds=1)
        assert admins.authenticate("owner@example.com", PASSWORD, address="192.0.2.9", now=later)


def test_disabled_admin_is_signed_out_and_cannot_sign_in(app, client, runner):
    signed_in_as(app, client, "owner")
    assert client.get("/admin").status_code == 200
    result = runner.invoke(main, ["admins", "disable", "owner@example.com"])
    assert result.exit_code == 0, result.output
    assert client.get("/admin").status_code == 302
    assert sign_in(client).status_code == 401


def test_a_new_password_ends_older_sessions(app, client):
    signed_in_as(app, client, "owner")
    with app.app_context():
        admin = db.session.scalar(select(Admin))
        admin.password_hash = admins.hash_password("a brand new password")
        db.session.commit()
    assert client.get("/admin").status_code == 302


# --- CSRF ----------------------------------------------------------------------------------------


def test_forms_without_csrf_token_are_refused(app, client, queue):
    make_admin(app)
    client.get("/admin/login")
    refused = client.post("/admin/login", data={"email": "owner@example.com", "password": PASSWORD})
    assert refused.status_code == 400
    assert "security token" in refused.get_data(as_text=True)
    assert sign_in(client).status_code == 302
    refused = client.post("/admin/rewards/decide", data={"approve": str(queue["f-1"])})
    assert refused.status_code == 400
    forged = decide(client, approve=str(queue["f-1"]), csrf_token="forged")
    assert forged.status_code == 400
    assert status_of(app, queue["f-1"]) == "awaiting_approval"


def test_the_api_needs_no_csrf_token(app, client, admin, queue):
    response = client.post(f"/api/v1/rewards/{queue['f-1']}/approve", json={}, headers=admin)
    assert response.status_code == 200, response.json


# --- the rewards queue ------------------------------------------------------------------------


def test_queue_shows_rewards_with_risk_in_words_and_escapes_names(app, client, queue):
    signed_in_as(app, client, "approver")
    page = client.get("/admin/rewards")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for reward_id in queue.values():
        assert f'name="approve" value="{reward_id}"' in html
    assert "o-f-1" in html and "ref-2" in html and "10.00 EUR" in html
    assert "The friend signed up from the referrer&#39;s own device." in html
    assert "throwaway-mail" in html
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html
    filtered = client.get("/admin/rewards?referrer=ref-2").get_data(as_text=True)
    assert f'value="{queue["f-3"]}"' in filtered and f'value="{queue["f-1"]}"' not in filtered
    approved = client.get("/admin/rewards?status=approved").get_data(as_text=True)
    assert "No rewards match." in approved


def test_milestone_rewards_say_their_kind_in_the_queue_and_on_the_referral_and_customer_pages(
    app, client, shop, admin
):
    milestones = [{"friends": n, "reward": {"type": "fixed", "value": "20.00"}} for n in (1, 2)]
    set_program(client, admin, milestones=milestones)
    for friend in ("f-1", "f-2"):
        converted_friend(client, shop, friend, referrer="ref-1")
    with app.app_context():
        second = db.session.scalar(select(Reward.referral_id).where(Reward.milestone_friends == 2))
    one = '<small class="reward-kind">Milestone: 1 friend</small>'
    two = '<small class="reward-kind">Milestone: 2 friends</small>'
    signed_in_as(app, client, "viewer")
    queue = client.get("/admin/rewards?status=all").get_data(as_text=True)
    assert queue.count(one) == 1 and queue.count(two) == 1
    assert queue.count("Milestone:") == 2  # the referral rewards say nothing more
    assert "<small>referrer</small><br>" + two in queue  # beside the beneficiary
    story = client.get(f"/admin/referrals/{second}").get_data(as_text=True)
    assert "referrer (ref-1)<br>" + two in story and one not in story
    assert "Milestone: 2 converted friends" in story  # the reward's event on the timeline
    customer = client.get("/admin/customers/ref-1").get_data(as_text=True)
    assert customer.count(one) == 1 and customer.count(two) == 1
    assert "Milestone:" not in client.get("/admin/customers/f-1").get_data(as_text=True)


def test_queue_pages_with_the_cursor(app, client, queue, monkeypatch):
    from referral_service.admin import views

    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    signed_in_as(app, client, "viewer")
    first = client.get("/admin/rewards").get_data(as_text=True)
    link = re.search(r'href="([^"]*cursor=[^"]+)" rel="next"', first).group(1)
    second = client.get(link.replace("&amp;", "&")).get_data(as_text=True)
    assert (
        f'<td data-label="#">{queue["f-1"]}</td>' in second
        and f'<td data-label="#">{queue["f-1"]}</td>' not in first
    )
    bad = client.get("/admin/rewards?cursor=nonsense")
    assert bad.status_code == 302


def test_approve_one_from_the_queue(app, client, queue):
    email = signed_in_as(app, client, "approver")
    response = decide(client, approve=str(queue["f-1"]), back="/admin/rewards?status=all")
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/rewards?status=all"
    assert status_of(app, queue["f-1"]) == "approved"
    assert audit(app) == [
        (
            f"admin:{email}",
            "reward.approve",
            str(queue["f-1"]),
            {"status": "approved", "note": None},
        )
    ]
    assert f"Approved 1 reward: #{queue['f-1']}." in client.get("/admin/rewards").get_data(
        as_text=True
    )


def test_reject_asks_for_a_reason(app, client, queue):
    email = signed_in_as(app, client, "approver")
    decide(client, reject=str(queue["f-2"]), reason="  ")
    assert status_of(app, queue["f-2"]) == "awaiting_approval"
    assert "Say why" in client.get("/admin/rewards").get_data(as_text=True)
    decide(client, reject=str(queue["f-2"]), reason="Same device as the referrer")
    assert status_of(app, queue["f-2"]) == "rejected"
    assert audit(app) == [
        (
            f"admin:{email}",
            "reward.reject",
            str(queue["f-2"]),
            {"status": "rejected", "note": "Same device as the referrer"},
        )
    ]


def test_bulk_approve_and_reject(app, client, queue):
    email = signed_in_as(app, client, "owner")
    response = decide(client, bulk="approve", reward=[str(queue["f-1"]), str(queue["f-3"])])
    assert response.status_code == 302
    assert [status_of(app, queue[f]) for f in ("f-1", "f-2", "f-3")] == [
        "approved",
        "awaiting_approval",
        "approved",
    ]
    decide(client, bulk="reject", reward=[str(queue["f-2"]), str(queue["f-3"])], reason="Fraud")
    assert status_of(app, queue["f-2"]) == "rejected"
    assert status_of(app, queue["f-3"]) == "rejected"  # an approved reward may still be rejected
    actions = [(actor, action) for actor, action, _, _ in audit(app)]
    assert (
        actions
        == [(f"admin:{email}", "reward.approve")] * 2 + [(f"admin:{email}", "reward.reject")] * 2
    )
    nothing = decide(client, bulk="approve")
    assert nothing.status_code == 302
    assert "Tick at least one reward" in client.get("/admin/rewards").get_data(as_text=True)


def test_a_decision_on_a_decided_reward_is_reported(app, client, queue):
    signed_in_as(app, client, "approver")
    decide(client, approve=str(queue["f-1"]))
    decide(client, approve=str(queue["f-1"]))
    html = client.get("/admin/rewards").get_data(as_text=True)
    assert f"Reward {queue['f-1']} is approved" in html
    assert len(audit(app)) == 1


def test_viewer_reads_but_cannot_decide(app, client, queue):
    signed_in_as(app, client, "viewer")
    html = client.get("/admin/rewards").get_data(as_text=True)
    assert f'<td data-label="#">{queue["f-1"]}</td>' in html
    assert 'name="approve"' not in html and 'name="bulk"' not in html
    refused = decide(client, approve=str(queue["f-1"]))
    assert refused.status_code == 403
    assert "Not allowed" in refused.get_data(as_text=True)
    assert status_of(app, queue["f-1"]) == "awaiting_approval"
    assert audit(app) == []


# --- the dashboard ----------------------------------------------------------------------------


def test_dashboard_shows_waiting_owed_and_the_funnel(app, client, queue):
    signed_in_as(app, client, "approver")
    decide(client, approve=str(queue["f-1"]))
    page = client.get("/admin?days=90")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert re.search(r'id="waiting">2<', html)
    assert re.search(r'id="owed">\s*10.00 EUR\s*<', html)
    assert "<svg" in html and 'role="img"' in html
    assert "Sign-ups: 3." in html and "Conversions: 3." in html
    assert "last 90 days" in html
    assert client.get("/admin?days=12345").status_code == 200  # an unknown period: the default


def test_queue_filters_by_risk_and_approval_keeps_a_note(app, client, shop, admin):
    set_program(client, admin, hold_days=0)
    code = enrol(client, shop, "risk-ref")
    for friend, email in (("clean-f", "clean@example.org"), ("flag-f", "flag@mailinator.com")):
        assert sign_up(client, shop, friend, email=email, referral_code=code).status_code == 201
        assert buy(client, shop, f"o-{friend}", friend, "50.00").status_code == 201
    signed_in_as(app, client, "approver")
    flagged = client.get("/admin/rewards?risk=flagged").get_data(as_text=True)
    clean = client.get("/admin/rewards?risk=clean").get_data(as_text=True)
    assert "flag-f" in flagged and "clean-f" not in flagged
    assert "clean-f" in clean and "flag-f" not in clean
    page = client.get("/admin/rewards?risk=clean").get_data(as_text=True)
    reward_id = int(re.search(r'name="approve" value="(\d+)"', page).group(1))
    answer = decide(client, approve=reward_id, reason="Checked by phone")
    assert answer.status_code == 302
    listed = client.get("/api/v1/rewards?status=approved", headers=admin).json["items"]
    assert [(r["id"], r["note"]) for r in listed] == [(reward_id, "Checked by phone")]


def test_dashboard_lists_top_referrers(app, client, shop, admin):
    set_program(client, admin, hold_days=0)
    for referrer, friends in (("top-a", 2), ("top-b", 1)):
        code = enrol(client, shop, referrer)
        for n in range(friends):
            friend = f"{referrer}-f{n}"
            assert sign_up(client, shop, friend, referral_code=code).status_code == 201
            assert buy(client, shop, f"o-{friend}", friend, "50.00").status_code == 201
    signed_in_as(app, client, "viewer")
    html = client.get("/admin").get_data(as_text=True)
    leaders = html[html.index("Top referrers") :]
    assert leaders.index("top-a") < leaders.index("top-b")
    assert "2 conversions" in leaders and "1 conversion<" in leaders

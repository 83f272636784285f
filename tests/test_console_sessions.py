"""Console sessions end on the server: a cookie copied before a sign-out, a new password, a new
role, disabling or `admins sign-out` no longer does anything, even with its CSRF token.

The copied cookie stands for one stolen from a browser (or left on a shared computer): the test
client that signed in is one device, a second test client carrying the same cookie another.
"""

import threading
from datetime import timedelta

import pytest
from flask_migrate import downgrade, upgrade
from sqlalchemy import select, text

from referral_service import create_app
from referral_service.cli import main
from referral_service.domain import admins
from referral_service.errors import NotFound, ValidationFailed
from referral_service.extensions import db
from referral_service.models import Admin, Reward, utcnow
from tests.conftest import app_config
from tests.journey_helpers import at, converted_friend
from tests.test_admin_console import PASSWORD, decide, sign_in, signed_in_as, token

NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture
def reward(client, shop) -> int:
    """A reward awaiting approval (its hold is long over)."""
    signed_up = utcnow() - timedelta(days=40)
    body = converted_friend(
        client,
        shop,
        "f-1",
        signed_up_at=at(signed_up),
        occurred_at=at(signed_up + timedelta(days=1)),
    )
    return body["rewards"][0]["id"]


def status_of(app, reward_id: int) -> str:
    with app.app_context():
        return db.session.get(Reward, reward_id).status


def copy_of_session(app, client):
    """Another device with the same session cookie, and the queue's CSRF token, taken now."""
    csrf = token(client, "/admin/rewards")
    other = app.test_client()
    other.set_cookie("session", client.get_cookie("session").value)
    assert other.get("/admin").status_code == 200  # the copy works, for now
    return other, csrf


def approve(client, reward_id: int, csrf: str):
    """The queue's approve button, posted with a CSRF token taken earlier."""
    return client.post(
        "/admin/rewards/decide", data={"approve": str(reward_id), "csrf_token": csrf}
    )


def signed_out(response) -> bool:
    return response.status_code == 302 and response.headers["Location"].startswith("/admin/login")


def log_out(client, runner, email):
    response = client.post("/admin/logout", data={"csrf_token": token(client, "/admin")})
    assert signed_out(response)


def new_password(client, runner, email):
    result = runner.invoke(main, ["admins", "set-password", email], input=f"{NEW_PASSWORD}\n")
    assert result.exit_code == 0, result.output


def new_role(client, runner, email):
    # a promotion: a refusal can only come from the ended session, not from the role
    result = runner.invoke(main, ["admins", "set-role", email, "owner"])
    assert result.exit_code == 0, result.output


def disabled(client, runner, email):
    result = runner.invoke(main, ["admins", "disable", email])
    assert result.exit_code == 0, result.output


def ended_by_operator(client, runner, email):
    result = runner.invoke(main, ["admins", "sign-out", email])
    assert result.exit_code == 0, result.output


ENDINGS = [log_out, new_password, new_role, disabled, ended_by_operator]


@pytest.mark.parametrize("end", ENDINGS, ids=lambda end: end.__name__)
def test_a_copied_cookie_cannot_approve_after_the_session_ended(app, client, runner, reward, end):
    email = signed_in_as(app, client, "approver")
    copy, csrf = copy_of_session(app, client)
    end(client, runner, email)
    response = approve(copy, reward, csrf)
    assert signed_out(response)
    assert status_of(app, reward) == "awaiting_approval"
    assert signed_out(copy.get("/admin"))
    assert signed_out(client.get("/admin"))  # the device that signed in is signed out too


def test_signing_in_again_works_and_the_old_copy_stays_dead(app, client, reward):
    email = signed_in_as(app, client, "approver")
    copy, csrf = copy_of_session(app, client)
    log_out(client, None, email)
    assert sign_in(client, email).status_code == 302
    assert signed_out(approve(copy, reward, csrf))
    assert decide(client, approve=str(reward)).status_code == 302
    assert status_of(app, reward) == "approved"


def test_signing_in_on_another_device_keeps_the_first_session(app, client):
    email = signed_in_as(app, client, "viewer")
    other = app.test_client()
    assert sign_in(other, email).status_code == 302
    assert client.get("/admin").status_code == 200
    assert other.get("/admin").status_code == 200


def test_signing_out_ends_the_sessions_on_every_device(app, client):
    email = signed_in_as(app, client, "viewer")
    other = app.test_client()
    assert sign_in(other, email).status_code == 302
    log_out(client, None, email)
    assert signed_out(other.get("/admin"))
    assert "signed out (on every device)" in client.get("/admin/login").get_data(as_text=True)


def test_ending_one_admins_sessions_leaves_the_others(app, client, runner):
    signed_in_as(app, client, "viewer")
    other = app.test_client()
    signed_in_as(app, other, "owner")
    ended_by_operator(client, runner, "viewer@example.com")
    assert signed_out(client.get("/admin"))
    assert other.get("/admin").status_code == 200


def test_a_new_role_applies_at_the_next_sign_in(app, client, runner):
    email = signed_in_as(app, client, "approver")
    new_role(client, runner, email)
    assert sign_in(client, email).status_code == 302
    with app.app_context():
        assert db.session.scalar(select(Admin.role)) == "owner"


def test_a_new_password_replaces_the_old_one(app, client, runner):
    email = signed_in_as(app, client, "viewer")
    new_password(client, runner, email)
    assert sign_in(client, email).status_code == 401
    assert sign_in(client, email, NEW_PASSWORD).status_code == 302


def test_concurrent_sign_outs_all_count(app):
    """Every ending raises the generation by one, computed by the database: none is lost."""
    with app.app_context():
        admin_id = admins.create("owner@example.com", PASSWORD).id
    threads, start = 8, threading.Barrier(8)
    errors = []

    def sign_out():
        with app.app_context():
            try:
                start.wait()
                admins.sign_out(admin_id)
            except Exception as error:  # reported below, not lost in the thread
                errors.append(error)
            finally:
                db.session.remove()

    workers = [threading.Thread(target=sign_out) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    with app.app_context():
        assert db.session.get(Admin, admin_id).session_generation == threads


def test_changes_to_unknown_admins_or_with_bad_values_are_refused(app):
    with app.app_context():
        admins.create("owner@example.com", PASSWORD)
        for change in (
            lambda: admins.set_password("nobody@example.com", NEW_PASSWORD),
            lambda: admins.set_role("nobody@example.com", "viewer"),
            lambda: admins.sign_out_everywhere("nobody@example.com"),
            lambda: admins.disable("nobody@example.com"),
        ):
            with pytest.raises(NotFound):
                change()
        with pytest.raises(ValidationFailed):
            admins.set_password("owner@example.com", "short")
        with pytest.raises(ValidationFailed):
            admins.set_role("owner@example.com", "emperor")
        admin = db.session.scalar(select(Admin))
        assert (admin.role, admin.session_generation) == ("owner", 0)
        assert admins.verify_password(PASSWORD, admin.password_hash)


def test_an_admin_from_before_the_migration_signs_in(fresh_database_url):
    """Admins made at 0009 get generation 0 and keep signing in; 0010 goes down and up again."""
    app = create_app(app_config(fresh_database_url))
    with app.app_context():
        upgrade(revision="0009")
        with db.engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO admins (email, password_hash, role, created_at) "
                    "VALUES (:email, :hash, 'approver', :now)"
                ),
                {
                    "email": "old@example.com",
                    "hash": admins.hash_password(PASSWORD),
                    "now": utcnow(),
                },
            )
            connection.execute(
                text(
                    "INSERT INTO admin_sign_in_failures (email, at) VALUES ('x@example.com', :now)"
                ),
                {"now": utcnow()},
            )
        upgrade()
        assert db.session.scalar(select(Admin.session_generation)) == 0
        db.session.rollback()
    client = app.test_client()
    assert sign_in(client, "old@example.com").status_code == 302
    assert client.get("/admin").status_code == 200
    with app.app_context():
        downgrade(revision="0009")
        with db.engine.connect() as connection:
            assert connection.execute(text("SELECT COUNT(*) FROM admins")).scalar() == 1
        upgrade()
        db.engine.dispose()

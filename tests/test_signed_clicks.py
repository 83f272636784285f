"""Self-verifying click ids: a click attributes on any instance the moment the redirect is
answered, whether or not its row has left the buffer of the instance that served it."""

import base64
import secrets
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from referral_service import create_app
from referral_service.domain import clicks
from referral_service.extensions import db
from referral_service.models import Click, Referral, ReferralCode, Signup
from tests.conftest import SECRET, app_config
from tests.factories import click_row
from tests.journey_helpers import enrol, sign_up

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


@pytest.fixture
def holding(database_url, app):
    """Another instance of the service on the same database whose click buffer is never
    written on its own (as if it were a process on another host, its clicks not yet written)."""
    other = create_app(app_config(database_url, CLICK_FLUSH_INTERVAL=3600, CLICK_FLUSH_SIZE=10**6))
    yield other
    with other.app_context():
        other.extensions["clicks"].flush()
        db.session.remove()
        db.engine.dispose()


def click_from(instance, code, via=None, address="203.0.113.9") -> str:
    response = instance.test_client().get(
        f"/r/{code}" + (f"?via={via}" if via else ""),
        headers={"User-Agent": BROWSER},
        environ_base={"REMOTE_ADDR": address},
    )
    assert response.status_code == 302
    [click_id] = parse_qs(urlsplit(response.headers["Location"]).query)["click_id"]
    return click_id


def rows(app) -> list:
    with app.app_context():
        return list(db.session.scalars(db.select(Click)))


def referral_of(app, friend: str) -> Referral:
    with app.app_context():
        return db.session.scalars(
            db.select(Referral).join(Referral.friend).where(Referral.friend.has(external_id=friend))
        ).one()


@pytest.mark.parametrize("via", ["whatsapp", "qr", None, "newsletter-2026", "Weird Channel!"])
def test_a_click_still_buffered_elsewhere_attributes_at_once(app, client, shop, holding, via):
    code = enrol(client, shop, "ref-1")
    click_id = click_from(holding, code, via)
    assert rows(app) == []  # the row waits in the other instance's buffer
    answer = sign_up(client, shop, "friend-1", click_id=click_id)
    assert answer.status_code == 201, answer.json
    assert answer.json["attributed"] is True and answer.json["reason"] is None
    referral = referral_of(app, "friend-1")
    assert referral.channel == clicks.channel(via)  # the channel the id vouches for
    assert referral.click_id == click_row(click_id)  # the row it names, which lands later
    holding.extensions["clicks"].flush()
    [row] = rows(app)
    assert (row.id, row.channel) == (click_row(click_id), clicks.channel(via))


def test_a_replay_with_another_id_of_the_same_click_is_a_replay(app, client, shop):
    code = enrol(client, shop, "ref-1")
    first = click_from(app, code, "email")
    app.extensions["clicks"].flush()
    again = click_from(app, code, "sms")  # the same person within the hour: the same row
    assert click_row(again) == click_row(first) and again != first
    assert sign_up(client, shop, "friend-1", click_id=first).status_code == 201
    replay = sign_up(client, shop, "friend-1", click_id=again)
    assert replay.status_code == 200 and replay.json["attributed"] is True
    assert referral_of(app, "friend-1").channel == "email"  # the row's, where there is one


def test_a_code_rotated_since_the_click_is_refused_before_the_row_lands(app, client, shop, holding):
    code = enrol(client, shop, "ref-1")
    click_id = click_from(holding, code)
    rotated = client.post("/api/v1/customers/ref-1/referral-code/rotate", headers=shop)
    assert rotated.status_code == 200, rotated.json
    answer = sign_up(client, shop, "friend-1", click_id=click_id)
    assert (answer.json["attributed"], answer.json["reason"]) == (False, "revoked_code")


def sign_click_at(app, code: str, at: datetime, channel="link") -> str:
    with app.app_context():
        code_id = db.session.scalar(db.select(ReferralCode.id).where(ReferralCode.code == code))
        return clicks.sign_click(clicks.new_click_id(), code_id, channel, at)


def test_the_signed_time_dates_a_click_without_its_row(app, client, shop):
    code = enrol(client, shop, "ref-1")
    now = datetime.now(UTC)
    late = sign_click_at(app, code, now + timedelta(hours=2))
    old = sign_click_at(app, code, now - timedelta(days=31))  # the default window is 30 days
    fine = sign_click_at(app, code, now - timedelta(days=29))
    assert sign_up(client, shop, "f-late", click_id=late).json["reason"] == "click_after_signup"
    assert sign_up(client, shop, "f-old", click_id=old).json["reason"] == "window_expired"
    assert sign_up(client, shop, "f-fine", click_id=fine).json["attributed"] is True


def forgeries(genuine: str) -> dict:
    raw = bytearray(base64.urlsafe_b64decode(genuine + "=" * (-len(genuine) % 4)))

    def flipped(at: int) -> str:
        changed = bytearray(raw)
        changed[at] ^= 0x01
        return base64.urlsafe_b64encode(bytes(changed)).rstrip(b"=").decode()

    return {
        "row id changed": flipped(3),
        "code id changed": flipped(20),
        "time changed": flipped(25),
        "channel changed": flipped(27),
        "MAC changed": flipped(len(raw) - 1),
        "cut short": genuine[:-4],
        "one character more": genuine + "A",
        "another spelling of the same bytes": genuine[:-1] + chr(ord(genuine[-1]) ^ 1),
        "unknown version": flipped(0),
        "not base64": genuine[:30] + "." + genuine[31:],
        "random": base64.urlsafe_b64encode(secrets.token_bytes(44)).rstrip(b"=").decode(),
    }


def test_a_forged_click_id_attributes_nothing(app, client, shop, holding):
    code = enrol(client, shop, "ref-1")
    genuine = click_from(holding, code, "whatsapp")
    for number, (name, forged) in enumerate(forgeries(genuine).items()):
        assert forged != genuine
        answer = sign_up(client, shop, f"friend-{number}", click_id=forged)
        assert answer.status_code == 201, (name, answer.json)
        assert (answer.json["attributed"], answer.json["reason"]) == (False, "unknown_click"), name
    answer = sign_up(client, shop, "friend-genuine", click_id=genuine)
    assert answer.json["attributed"] is True


def test_a_click_id_signed_with_another_key_is_unknown_and_a_fallback_key_still_verifies(
    database_url, app, client, shop
):
    code = enrol(client, shop, "ref-1")
    stranger = create_app(app_config(database_url, SECRET_KEY="another-" + SECRET))
    older = create_app(app_config(database_url, SECRET_KEY="older-" + SECRET))
    try:
        foreign = sign_click_at(stranger, code, datetime.now(UTC))
        before_rotation = sign_click_at(older, code, datetime.now(UTC))
    finally:
        for instance in (stranger, older):
            with instance.app_context():
                db.engine.dispose()
    assert sign_up(client, shop, "f-1", click_id=foreign).json["reason"] == "unknown_click"
    assert sign_up(client, shop, "f-2", click_id=before_rotation).json["reason"] == "unknown_click"
    rotated = create_app(app_config(database_url, SECRET_KEY_FALLBACKS=["older-" + SECRET]))
    try:
        answer = sign_up(rotated.test_client(), shop, "f-3", click_id=before_rotation)
        assert answer.json["attributed"] is True, answer.json
    finally:
        with rotated.app_context():
            db.session.remove()
            db.engine.dispose()


def test_an_id_of_an_earlier_release_still_attributes_while_its_row_is_there(app, client, shop):
    code = enrol(client, shop, "ref-1")
    legacy = clicks.new_click_id()  # what the landing page was given before ids were signed
    with app.app_context():
        found = db.session.scalars(db.select(ReferralCode).where(ReferralCode.code == code)).one()
        db.session.add(
            Click(
                id=legacy,
                code_id=found.id,
                referrer_id=found.customer_id,
                channel="facebook",
                occurred_at=datetime.now(UTC) - timedelta(minutes=5),
            )
        )
        db.session.commit()
    answer = sign_up(client, shop, "friend-1", click_id=legacy)
    assert answer.json["attributed"] is True, answer.json
    assert referral_of(app, "friend-1").channel == "facebook"
    unknown = sign_up(client, shop, "friend-2", click_id=clicks.new_click_id())
    assert unknown.json["reason"] == "unknown_click"


def test_every_channel_reads_back_as_signed(app):
    row = clicks.new_click_id()
    at = datetime(2026, 11, 30, 12, 0, 7, 999_000, tzinfo=UTC)
    names = [*clicks.KNOWN_CHANNELS, "a", "newsletter", "x" * 32]
    with app.app_context():
        for name in names:
            signed = clicks.sign_click(row, 2**40 - 1, name, at)
            assert len(signed) <= clicks.MAX_CLICK_ID
            claim = clicks.read_click_id(signed)
            assert claim == clicks.ClickClaim(
                row_id=row,
                signed=True,
                code_id=2**40 - 1,
                channel=name,
                occurred_at=at.replace(microsecond=0),
            )
        with pytest.raises(ValueError):
            clicks.sign_click("not-a-row-id", 1, "link", at)


def test_what_a_sign_up_keeps_is_the_row_id(app, client, shop, holding):
    code = enrol(client, shop, "ref-1")
    click_id = click_from(holding, code, "x")
    sign_up(client, shop, "friend-1", click_id=click_id)
    too_long = sign_up(client, shop, "friend-2", click_id="A" * 129)
    assert too_long.status_code == 422  # longer than any click id the service hands out
    with app.app_context():
        kept = db.session.scalars(db.select(Signup.click_id)).all()
    assert kept == [click_row(click_id)]

"""Risk signals: each flags the referral and its rewards, explained; self-referral is refused."""

import logging
import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from referral_service.cli import main
from referral_service.domain import fraud
from referral_service.extensions import db
from referral_service.logs import redact
from referral_service.models import Click, Customer, Referral, Signup, utcnow
from tests.journey_helpers import ago, buy, enrol, set_program, sign_up

UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"
OTHER_UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) Safari/604.1"


@pytest.fixture
def auto(client, admin):
    """Rewards mature at once and would be auto-approved up to 100.00, were they not flagged."""
    set_program(client, admin, hold_days=0, auto_approve_max_amount="100.00")


def referrer(client, shop, external_id="ref-1", name=None, **seen) -> str:
    """A referrer who signed up through the shop themselves (with what the shop saw); their code."""
    body = sign_up(client, shop, external_id, name=name, **seen)
    assert body.status_code == 201, body.json
    return client.get(f"/api/v1/customers/{external_id}", headers=shop).json["referral"]["code"]


def friend(client, shop, external_id, code=None, **fields) -> dict:
    response = sign_up(client, shop, external_id, referral_code=code, **fields)
    assert response.status_code == 201, response.json
    assert response.json["attributed"] is True, response.json
    return response.json


def risk_of(app, friend_external_id) -> dict:
    with app.app_context():
        referral = db.session.scalar(
            select(Referral)
            .join(Customer, Referral.friend_id == Customer.id)
            .where(Customer.external_id == friend_external_id)
        )
        return {"score": referral.risk_score, "reasons": list(referral.risk_reasons)}


def first_purchase(client, shop, external_id, amount="50.00") -> dict:
    response = buy(client, shop, f"o-{external_id}", external_id, amount)
    assert response.status_code == 201, response.json
    return response.json


def test_a_clean_friend_carries_no_risk_and_is_auto_approved(app, client, shop, auto):
    code = referrer(client, shop, device_id="dev-ref", ip="203.0.113.7", user_agent=UA)
    friend(client, shop, "f-1", code, device_id="dev-f1", ip="198.51.100.4", user_agent=UA)
    assert risk_of(app, "f-1") == {"score": 0, "reasons": []}
    assert first_purchase(client, shop, "f-1")["rewards"][0]["status"] == "approved"


@pytest.mark.parametrize(
    "email", ["x@mailinator.com", "x@MAILINATOR.COM", "x@sub.guerrillamail.com", "x@yopmail.com"]
)
def test_disposable_email(app, client, shop, auto, email):
    code = referrer(client, shop)
    friend(client, shop, "f-1", code, email=email)
    assert risk_of(app, "f-1") == {"score": 40, "reasons": ["disposable_email"]}
    assert first_purchase(client, shop, "f-1")["rewards"][0]["status"] == "awaiting_approval"


def test_disposable_domains_file_is_read_again_when_it_changes(app, client, shop, tmp_path):
    path = tmp_path / "disposable.txt"
    app.extensions["disposable_domains"].path = str(path)
    code = referrer(client, shop)
    friend(client, shop, "f-1", code, email="a@throwaway.example")
    assert risk_of(app, "f-1")["reasons"] == []
    path.write_text("# added by the operator\nthrowaway.example\n")
    friend(client, shop, "f-2", code, email="b@throwaway.example")
    assert risk_of(app, "f-2")["reasons"] == ["disposable_email"]


def test_same_device_as_the_referrer(app, client, shop):
    code = referrer(client, shop, device_id="phone-1")
    friend(client, shop, "f-1", code, device_id="phone-1")
    assert risk_of(app, "f-1") == {"score": 60, "reasons": ["same_device"]}


def test_same_device_as_another_friend_of_the_referrer(app, client, shop):
    code = enrol(client, shop, "ref-1")
    other = enrol(client, shop, "ref-2")
    friend(client, shop, "f-1", code, device_id="farm-phone")
    friend(client, shop, "f-2", other, device_id="farm-phone")  # another referrer's friend: fine
    friend(client, shop, "f-3", code, device_id="farm-phone")
    assert risk_of(app, "f-1")["reasons"] == []
    assert risk_of(app, "f-2")["reasons"] == []
    assert risk_of(app, "f-3")["reasons"] == ["same_device"]


def test_same_ip_and_user_agent_as_the_referrer(app, client, shop):
    code = referrer(client, shop, ip="203.0.113.7", user_agent=UA)
    friend(client, shop, "f-1", code, ip="203.0.113.7", user_agent=UA)
    friend(client, shop, "f-2", code, ip="203.0.113.7", user_agent=OTHER_UA)
    friend(client, shop, "f-3", code, ip="::ffff:203.0.113.7", user_agent=UA)  # same address
    assert risk_of(app, "f-1") == {"score": 40, "reasons": ["same_network"]}
    assert risk_of(app, "f-2")["reasons"] == []  # one shared IP (an office, a campus) is no sign
    assert risk_of(app, "f-3")["reasons"] == ["same_network"]


def test_velocity(app, client, shop, admin):
    set_program(client, admin, velocity_max_signups=2, velocity_window_hours=1)
    code = enrol(client, shop)
    friend(client, shop, "f-old", code, occurred_at=ago(hours=3))
    for n in range(1, 4):
        friend(client, shop, f"f-{n}", code)
    assert [risk_of(app, f"f-{n}")["reasons"] for n in range(1, 4)] == [[], [], ["velocity"]]
    assert risk_of(app, "f-old")["reasons"] == []


def test_conversion_velocity_at_purchase(app, client, shop, admin, auto):
    set_program(client, admin, velocity_max_signups=1, velocity_window_hours=48)
    code = enrol(client, shop)
    friend(client, shop, "f-1", code, occurred_at=ago(days=5))
    friend(client, shop, "f-2", code, occurred_at=ago(days=2))  # not within 48 h of f-1
    assert first_purchase(client, shop, "f-1")["rewards"][0]["status"] == "approved"
    answer = first_purchase(client, shop, "f-2")
    assert answer["rewards"][0]["status"] == "awaiting_approval"
    assert risk_of(app, "f-2")["reasons"] == ["conversion_velocity"]


@pytest.mark.parametrize(
    "referer, flagged",
    [
        ("https://www.retailmenot.com/view/shop.example", True),
        ("https://slickdeals.net/f/123?x=1", True),
        ("https://www.pepper.pl/promocje/shop", True),
        ("https://deals.shop-coupons.example/page", True),  # from the program's own list
        ("https://www.google.com/search?q=shop", False),
        ("https://notretailmenot.com/", False),
        ("not a url", False),
    ],
)
def test_coupon_site_visit(app, client, shop, admin, referer, flagged):
    set_program(client, admin, coupon_sites=["Shop-Coupons.example"])
    code = enrol(client, shop)
    response = client.get(f"/r/{code}", headers={"Referer": referer})
    click_id = parse_qs(urlsplit(response.headers["Location"]).query)["click_id"][0]
    friend(client, shop, "f-1", click_id=click_id)
    assert risk_of(app, "f-1")["reasons"] == (["coupon_site"] if flagged else [])


def test_coupon_sites_setting_is_validated(client, admin):
    response = client.patch(
        "/api/v1/program", json={"coupon_sites": ["ok.example", "not a host"]}, headers=admin
    )
    assert response.status_code == 422
    assert "coupon_sites" in response.json["error"]["fields"]


@pytest.mark.parametrize(
    "referrer_name, friend_name, flagged",
    [
        ("Anna Kowalska", "anna KOWALSKA", True),
        ("Anna Kowalska", "Kowalska, Anna", True),
        ("Zoë Éva Nagy", "zoe eva nagy", True),
        ("Anna Kowalska", "Anna Nowak", False),
        (None, "Anna Kowalska", False),
    ],
)
def test_similar_name(app, client, shop, referrer_name, friend_name, flagged):
    code = referrer(client, shop, name=referrer_name)
    friend(client, shop, "f-1", code, name=friend_name)
    assert risk_of(app, "f-1")["reasons"] == (["similar_name"] if flagged else [])


def test_signals_add_up_and_show_on_the_rewards(app, client, shop, admin, auto):
    code = referrer(client, shop, name="Jan Kowal", device_id="phone-1")
    friend(
        client, shop, "f-1", code, email="jan@mailinator.com", name="jan kowal", device_id="phone-1"
    )
    # same_device 60 + disposable_email 40 + similar_name 30, capped at 100
    assert risk_of(app, "f-1") == {
        "score": 100,
        "reasons": ["same_device", "disposable_email", "similar_name"],
    }
    reward = first_purchase(client, shop, "f-1")["rewards"][0]
    assert reward["status"] == "awaiting_approval"
    listed = client.get("/api/v1/rewards", headers=admin).json["items"]
    assert listed[0]["risk"] == {
        "score": 100,
        "reasons": ["same_device", "disposable_email", "similar_name"],
    }


def test_flagged_rewards_are_never_auto_approved_when_they_mature(app, client, shop, admin):
    set_program(client, admin, hold_days=1, auto_approve_max_amount="1000.00")
    code = enrol(client, shop)
    friend(client, shop, "f-1", code, email="a@mailinator.com", occurred_at=ago(days=3))
    friend(client, shop, "f-2", code, occurred_at=ago(days=3))
    for who in ("f-1", "f-2"):
        answer = buy(client, shop, f"o-{who}", who, "50.00", occurred_at=ago(hours=1)).json
        assert answer["rewards"][0]["status"] == "pending"
    from referral_service.domain import rewards

    with app.app_context():
        assert rewards.mature(now=utcnow() + timedelta(days=1)) == {
            "awaiting_approval": 1,
            "approved": 1,
        }


def test_late_attribution_is_checked_too(app, client, shop):
    code = referrer(client, shop, device_id="phone-1")
    assert sign_up(client, shop, "f-1", device_id="phone-1").json["reason"] == "no_referral"
    again = sign_up(client, shop, "f-1", device_id="phone-1", referral_code=code)
    assert again.json["attributed"] is True
    assert risk_of(app, "f-1")["reasons"] == ["same_device"]


# --- privacy -------------------------------------------------------------------------------------


def test_only_keyed_hashes_are_stored(app, client, shop):
    code = enrol(client, shop)
    client.get(f"/r/{code}", headers={"User-Agent": UA}, environ_base={"REMOTE_ADDR": "192.0.2.55"})
    friend(client, shop, "f-1", code, ip="198.51.100.9", user_agent=UA, device_id="device-xyz")
    with app.app_context():
        app.extensions["clicks"].flush()
        signup = db.session.scalar(select(Signup).order_by(Signup.id.desc()))
        stored = [signup.ip_hash, signup.ua_hash, signup.device_hash]
        visit = db.session.scalar(select(Click))
        stored += [visit.ip_hash, visit.ua_hash]
        dump = "\n".join(
            str(row)
            for table in ("signups", "clicks", "referrals", "customers")
            for row in db.session.execute(db.text(f"SELECT * FROM {table}"))
        )
    assert all(re.fullmatch(r"[0-9a-f]{64}", value) for value in stored)
    for raw in ("198.51.100.9", "192.0.2.55", "device-xyz", "Firefox"):
        assert raw not in dump


def test_hashes_depend_on_the_secret_key():
    one, two = fraud.EvidenceKeys("key-one"), fraud.EvidenceKeys("key-two")
    assert one.hash("ip", "192.0.2.1") == one.hash("ip", "192.0.2.1")
    assert one.hash("ip", "192.0.2.1") != two.hash("ip", "192.0.2.1")
    assert one.hash("ip", "x") != one.hash("device", "x")  # each kind has its own space
    assert one.hash("ip", None) is None


def test_an_ip_that_is_not_an_address_is_refused(app, client, shop):
    response = sign_up(client, shop, "f-1", ip="999.1.1.1")
    assert response.status_code == 422
    assert "ip" in response.json["error"]["fields"]
    with app.app_context():
        assert db.session.scalar(select(Customer).where(Customer.external_id == "f-1")) is None


def test_purge_empties_evidence_older_than_the_retention(app, client, shop, admin, runner):
    set_program(client, admin, risk_retention_days=30)
    code = enrol(client, shop)
    friend(client, shop, "old", code, device_id="d1", ip="192.0.2.1", occurred_at=ago(days=31))
    friend(client, shop, "new", code, device_id="d2", ip="192.0.2.2", occurred_at=ago(days=29))
    client.get(f"/r/{code}")
    with app.app_context():
        app.extensions["clicks"].flush()
        db.session.execute(
            db.update(Click).values(occurred_at=utcnow() - timedelta(days=40), ip_hash="0" * 64)
        )
        db.session.commit()
    result = runner.invoke(main, ["risk", "purge"])
    assert result.exit_code == 0, result.output
    assert "1 sign-ups and 1 clicks older than 30 days" in result.output
    with app.app_context():
        rows = {
            c.external_id: (s.ip_hash, s.device_hash)
            for s, c in db.session.execute(
                select(Signup, Customer).join(Customer, Signup.customer_id == Customer.id)
            )
        }
        assert db.session.scalar(select(Click.ip_hash)) is None
    assert rows["old"] == (None, None)
    assert None not in rows["new"]


def test_logs_show_no_email_or_ip(app, caplog):
    caplog.set_level(logging.INFO)
    logging.getLogger("referral_service.test").warning(
        "sign-up of %s from %s and %s", "anna.k+x@example.org", "203.0.113.9", "2001:db8::7"
    )
    try:
        raise ValueError("bad address anna.k+x@example.org at 203.0.113.9")
    except ValueError:
        logging.getLogger("gunicorn.error").exception("failed")
    text = caplog.text
    assert "anna.k" not in text and "203.0.113.9" not in text and "2001:db8::7" not in text
    assert "[email]" in text and "[ip]" in text


def test_an_unexpected_error_logs_no_email(app, client, shop, caplog, monkeypatch):
    from referral_service.domain import attribution

    def broken(*args, **kwargs):
        raise RuntimeError(f"cannot sign up {args[1]}")

    monkeypatch.setattr(attribution, "signup", broken)
    response = sign_up(client, shop, "f-1", email="secret.person@example.org")
    assert response.status_code == 500
    assert "secret.person" not in response.get_data(as_text=True)
    assert "secret.person" not in caplog.text and "RuntimeError" in caplog.text


def test_redact_keeps_what_is_not_an_address():
    assert redact("at 12:30:45 version 1.2.3") == "at 12:30:45 version 1.2.3"
    assert redact("to a@b.example from 10.0.0.1") == "to [email] from [ip]"

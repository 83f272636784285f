"""Sign-up attribution: by typed code or share-link click, every refusal reason, replays."""

from datetime import timedelta

import pytest
from sqlalchemy import update

from referral_service.domain.codes import display, signer
from referral_service.extensions import db
from referral_service.models import Click, Customer, Referral, Signup, utcnow
from tests.factories import click_row
from tests.journey_helpers import ago, click, count, enrol, set_program, sign_up


def refused(response, reason: str) -> None:
    assert response.json == {
        "attributed": False,
        "reason": reason,
        "referral": None,
        "friend_offer": None,
    }


def age_clicks(app, days: float) -> None:
    """Move every recorded click `days` into the past."""
    with app.app_context():
        app.extensions["clicks"].flush()
        db.session.execute(update(Click).values(occurred_at=utcnow() - timedelta(days=days)))
        db.session.commit()


# --- attributed ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    [
        lambda code: code,
        lambda code: code.lower(),
        lambda code: display(code).lower(),
        lambda code: " " + display(code).replace("-", " ") + " ",
    ],
    ids=["canonical", "lower", "grouped-lower", "spaced"],
)
def test_typed_code_in_any_spelling_attributes(app, client, shop, spelling):
    code = enrol(client, shop, "ref-1")
    response = sign_up(client, shop, "friend-1", referral_code=spelling(code))
    assert response.status_code == 201
    body = response.json
    assert body["attributed"] is True and body["reason"] is None
    assert body["referral"]["referrer_external_id"] == "ref-1"
    assert body["referral"]["status"] == "attributed"
    assert body["friend_offer"] is None  # the program has none by default
    with app.app_context():
        referral = db.session.get(Referral, body["referral"]["id"])
        assert referral.channel == "code" and referral.click_id is None


def test_friend_becomes_a_customer_with_a_code_of_their_own(client, shop):
    code = enrol(client, shop, "ref-1")
    sign_up(client, shop, "friend-1", email="Friend@Example.org", referral_code=code)
    friend = client.get("/api/v1/customers/friend-1", headers=shop)
    assert friend.status_code == 200
    assert friend.json["email"] == "Friend@example.org"
    assert len(friend.json["referral"]["code"]) == 16
    assert friend.json["referral"]["code"] != code
    # and the friend can refer in turn
    second = sign_up(client, shop, "friend-2", referral_code=friend.json["referral"]["code"])
    assert second.json["referral"]["referrer_external_id"] == "friend-1"


def test_click_attributes_with_its_channel(app, client, shop):
    code = enrol(client, shop, "ref-1")
    click_id = click(client, code, via="whatsapp")
    response = sign_up(client, shop, "friend-1", click_id=click_id)
    assert response.status_code == 201
    assert response.json["attributed"] is True
    assert response.json["referral"]["referrer_external_id"] == "ref-1"
    with app.app_context():
        referral = db.session.get(Referral, response.json["referral"]["id"])
        assert referral.channel == "whatsapp" and referral.click_id == click_row(click_id)


def test_typed_code_wins_over_click(app, client, shop):
    typed = enrol(client, shop, "ref-typed")
    clicked = enrol(client, shop, "ref-clicked")
    click_id = click(client, clicked, via="qr")
    response = sign_up(client, shop, "friend-1", referral_code=typed, click_id=click_id)
    assert response.json["referral"]["referrer_external_id"] == "ref-typed"
    with app.app_context():
        referral = db.session.get(Referral, response.json["referral"]["id"])
        assert referral.channel == "code" and referral.click_id is None


def test_click_just_inside_the_window_attributes(app, client, shop):
    code = enrol(client, shop, "ref-1")
    click_id = click(client, code)
    age_clicks(app, days=29.9)
    assert sign_up(client, shop, "friend-1", click_id=click_id).json["attributed"] is True


def test_friend_offer_is_returned_when_attributed(client, shop, admin):
    offer = {"type": "percent", "value": "15", "description": "15% off your first order"}
    set_program(client, admin, friend_offer=offer)
    code = enrol(client, shop, "ref-1")
    attributed = sign_up(client, shop, "friend-1", referral_code=code)
    assert attributed.json["friend_offer"] == offer
    refused(sign_up(client, shop, "friend-2"), "no_referral")


def test_fixed_friend_offer_carries_the_currency(client, shop, admin):
    set_program(client, admin, friend_offer={"type": "fixed", "value": "5"})
    code = enrol(client, shop, "ref-1")
    body = sign_up(client, shop, "friend-1", referral_code=code).json
    assert body["friend_offer"] == {"type": "fixed", "value": "5.00", "currency": "EUR"}


# --- refused: every reason -----------------------------------------------------------------------


def test_no_referral(app, client, shop):
    response = sign_up(client, shop, "friend-1")
    assert response.status_code == 201
    refused(response, "no_referral")
    assert client.get("/api/v1/customers/friend-1", headers=shop).status_code == 200
    assert count(app, Referral) == 0


@pytest.mark.parametrize(
    "typed",
    ["hello", "ABCD-EFGH-JKMN-PQRS", "0000000000000000", "x" * 40],
    ids=["short", "bad-mac", "zeros", "long"],
)
def test_invalid_code(app, client, shop, typed):
    enrol(client, shop, "ref-1")
    response = sign_up(client, shop, "friend-1", referral_code=typed)
    assert response.status_code == 201
    refused(response, "invalid_code")
    assert count(app, Referral) == 0


def test_signed_code_that_was_never_issued_is_invalid(app, client, shop):
    with app.app_context():
        forged = signer().issue()  # valid signature, but no customer holds it
    refused(sign_up(client, shop, "friend-1", referral_code=forged), "invalid_code")


def test_mistyped_code_one_character_off_is_invalid(client, shop):
    code = enrol(client, shop, "ref-1")
    swapped = code[:-1] + ("A" if code[-1] != "A" else "B")
    refused(sign_up(client, shop, "friend-1", referral_code=swapped), "invalid_code")


def test_revoked_code_typed(client, shop):
    old = enrol(client, shop, "ref-1")
    rotated = client.post("/api/v1/customers/ref-1/referral-code/rotate", headers=shop)
    assert rotated.status_code == 200
    refused(sign_up(client, shop, "friend-1", referral_code=old), "revoked_code")
    new = sign_up(client, shop, "friend-2", referral_code=rotated.json["code"])
    assert new.json["attributed"] is True


def test_revoked_code_behind_a_click(client, shop):
    code = enrol(client, shop, "ref-1")
    click_id = click(client, code)
    client.post("/api/v1/customers/ref-1/referral-code/rotate", headers=shop)
    refused(sign_up(client, shop, "friend-1", click_id=click_id), "revoked_code")


@pytest.mark.parametrize("click_id", ["nope", "A" * 22, "z" * 40, "x" * 64])
def test_unknown_click(app, client, shop, click_id):
    enrol(client, shop, "ref-1")
    response = sign_up(client, shop, "friend-1", click_id=click_id)
    assert response.status_code == 201, response.json
    refused(response, "unknown_click")
    replay = sign_up(client, shop, "friend-1", click_id=click_id)
    assert (replay.status_code, replay.json) == (200, response.json)


def test_window_expired(app, client, shop):
    code = enrol(client, shop, "ref-1")
    click_id = click(client, code)
    age_clicks(app, days=30.1)
    refused(sign_up(client, shop, "friend-1", click_id=click_id), "window_expired")


def test_window_is_the_program_setting(app, client, shop, admin):
    set_program(client, admin, attribution_window_days=2)
    code = enrol(client, shop, "ref-1")
    click_id = click(client, code)
    age_clicks(app, days=1.5)
    # the sign-up time decides, not the time the shop reports it
    refused(
        sign_up(client, shop, "friend-1", click_id=click_id, occurred_at=ago(days=-0.75)),
        "window_expired",
    )
    attributed = sign_up(client, shop, "friend-2", click_id=click_id)
    assert attributed.json["attributed"] is True


def test_self_referral_by_the_referrer_themselves(app, client, shop):
    code = enrol(client, shop, "ref-1")
    refused(sign_up(client, shop, "ref-1", referral_code=code), "self_referral")
    assert count(app, Referral) == 0


def test_self_referral_by_click(client, shop):
    code = enrol(client, shop, "ref-1", email="ref@example.com")
    click_id = click(client, code)
    refused(
        sign_up(client, shop, "ref-1-alt", email="REF@example.com", click_id=click_id),
        "self_referral",
    )


@pytest.mark.parametrize(
    ("referrer_email", "friend_email"),
    [
        ("ab@gmail.com", "A.B+x@googlemail.com"),
        ("a.b@googlemail.com", "ab+promo@gmail.com"),
        ("ada@example.com", "Ada+friend@EXAMPLE.com"),
        ("anna.k@gmail.com", "A.n.n.a.K+promo@Gmail.com"),
        ("anna@shop.example", "ANNA@SHOP.EXAMPLE"),
    ],
)
def test_self_referral_by_the_same_normalized_email(
    app, client, shop, referrer_email, friend_email
):
    code = enrol(client, shop, "ref-1", email=referrer_email)
    response = sign_up(client, shop, "someone-new", email=friend_email, referral_code=code)
    refused(response, "self_referral")
    # the new account still becomes a customer
    assert client.get("/api/v1/customers/someone-new", headers=shop).status_code == 200
    assert count(app, Referral) == 0


def test_different_gmail_address_is_not_self_referral(client, shop):
    code = enrol(client, shop, "ref-1", email="ab@gmail.com")
    assert sign_up(client, shop, "f", email="abc@gmail.com", referral_code=code).json["attributed"]


def test_existing_customer_enrolled_before(app, client, shop):
    code = enrol(client, shop, "ref-1")
    friend_code = enrol(client, shop, "old-customer")
    response = sign_up(client, shop, "old-customer", referral_code=code)
    assert response.status_code == 201
    refused(response, "existing_customer")
    assert count(app, Referral) == 0
    again = client.get("/api/v1/customers/old-customer", headers=shop).json
    assert again["referral"]["code"] == friend_code  # their code is untouched


def test_existing_customer_by_click(client, shop):
    code = enrol(client, shop, "ref-1")
    enrol(client, shop, "old-customer")
    refused(
        sign_up(client, shop, "old-customer", click_id=click(client, code)), "existing_customer"
    )


def test_first_attribution_wins(app, client, shop):
    first = enrol(client, shop, "ref-1")
    second = enrol(client, shop, "ref-2")
    won = sign_up(client, shop, "friend-1", referral_code=first)
    assert won.status_code == 201
    later = sign_up(client, shop, "friend-1", referral_code=second)
    assert later.status_code == 200
    refused(later, "already_referred")
    later_click = sign_up(client, shop, "friend-1", click_id=click(client, second))
    assert later_click.status_code == 200
    refused(later_click, "already_referred")
    with app.app_context():
        referral = db.session.get(Referral, won.json["referral"]["id"])
        assert referral.referrer.external_id == "ref-1"
    assert count(app, Referral) == 1


def test_program_paused(app, client, shop, admin):
    set_program(client, admin, paused=True)
    code = enrol(client, shop, "ref-1")
    response = sign_up(client, shop, "friend-1", referral_code=code)
    assert response.status_code == 201
    refused(response, "program_paused")
    assert client.get("/api/v1/customers/friend-1", headers=shop).status_code == 200
    set_program(client, admin, paused=False)
    assert sign_up(client, shop, "friend-2", referral_code=code).json["attributed"] is True


# --- replays -------------------------------------------------------------------------------------


def test_replay_with_the_same_body_is_200_with_the_same_answer(app, client, shop):
    code = enrol(client, shop, "ref-1")
    first = sign_up(client, shop, "friend-1", referral_code=code)
    assert first.status_code == 201
    replay = sign_up(client, shop, "friend-1", referral_code=code)
    assert replay.status_code == 200
    assert replay.get_data() == first.get_data()
    spelled = sign_up(client, shop, "friend-1", referral_code=display(code).lower())
    assert (spelled.status_code, spelled.json) == (200, first.json)
    assert count(app, Referral) == 1
    assert count(app, Signup) == 1
    assert count(app, Customer) == 2


@pytest.mark.parametrize(
    "fields",
    [{}, {"referral_code": "not-a-code"}, {"click_id": "nope"}],
    ids=["no_referral", "invalid_code", "unknown_click"],
)
def test_replay_of_a_refusal_gets_the_same_refusal(client, shop, fields):
    enrol(client, shop, "ref-1")
    first = sign_up(client, shop, "friend-1", **fields)
    replay = sign_up(client, shop, "friend-1", **fields)
    assert first.status_code == 201 and replay.status_code == 200
    assert replay.json == first.json


def test_replay_by_click_is_the_same_answer(client, shop):
    click_id = click(client, enrol(client, shop, "ref-1"))
    first = sign_up(client, shop, "friend-1", click_id=click_id)
    replay = sign_up(client, shop, "friend-1", click_id=click_id)
    assert (replay.status_code, replay.json) == (200, first.json)


# --- input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"external_id": "f"}, "email"),
        ({"email": "f@example.org"}, "external_id"),
        ({"external_id": "f", "email": "not-an-email"}, "email"),
        (
            {"external_id": "f", "email": "f@example.org", "occurred_at": "2026-01-01T10:00:00"},
            None,
        ),
        ({"external_id": "f", "email": "f@example.org", "occurred_at": ago(days=-3)}, None),
        (
            {"external_id": "f", "email": "f@example.org", "occurred_at": "0001-01-01T00:00+01:00"},
            "occurred_at",
        ),
        ({"external_id": "f", "email": "f@example.org", "referral_code": 7}, "referral_code"),
        ({"external_id": "f", "email": "f@example.org", "coupon": "x"}, "coupon"),
    ],
)
def test_bad_signups_are_422_and_record_nothing(app, client, shop, body, field):
    response = client.post("/api/v1/signups", json=body, headers=shop)
    assert response.status_code == 422, response.json
    assert response.json["error"]["code"] == "validation_error"
    if field:
        assert field in response.json["error"]["fields"]
    assert count(app, Customer) == 0


# --- the referrals list --------------------------------------------------------------------------


def test_referrals_list_pages_and_filters_with_a_shop_key(client, shop):
    code_1 = enrol(client, shop, "ref-1")
    code_2 = enrol(client, shop, "ref-2")
    for n in range(3):
        sign_up(client, shop, f"friend-{n}", referral_code=code_1)
    sign_up(client, shop, "friend-x", click_id=click(client, code_2, via="sms"))
    first = client.get("/api/v1/referrals?limit=3", headers=shop)
    assert first.status_code == 200
    assert [i["friend_external_id"] for i in first.json["items"]] == [
        "friend-x",
        "friend-2",
        "friend-1",
    ]
    assert first.json["next_cursor"]
    second = client.get(
        f"/api/v1/referrals?limit=3&cursor={first.json['next_cursor']}", headers=shop
    ).json
    assert [i["friend_external_id"] for i in second["items"]] == ["friend-0"]
    assert second["next_cursor"] is None
    item = first.json["items"][0]
    assert item["referrer_external_id"] == "ref-2"
    assert item["channel"] == "sms" and item["status"] == "attributed"
    assert item["risk"] == {"score": 0, "reasons": []}
    assert item["converted_at"] is None and item["order_id"] is None
    mine = client.get("/api/v1/referrals?referrer=ref-2", headers=shop).json["items"]
    assert [i["friend_external_id"] for i in mine] == ["friend-x"]
    converted = client.get("/api/v1/referrals?status=converted", headers=shop).json
    assert converted == {"items": [], "next_cursor": None}
    assert client.get("/api/v1/referrals?cursor=bogus!", headers=shop).status_code == 422
    assert client.get("/api/v1/referrals?status=nope", headers=shop).status_code == 422


# --- a code typed after the sign-up ------------------------------------------------------------


def test_code_typed_after_an_unattributed_sign_up_still_attributes(app, client, shop):
    code = enrol(client, shop, "ref-1")
    refused(sign_up(client, shop, "friend-1"), "no_referral")
    refused(sign_up(client, shop, "friend-1", referral_code="WRONG-CODE"), "invalid_code")
    late = sign_up(client, shop, "friend-1", referral_code=code)
    assert late.status_code == 201
    assert late.json["attributed"] is True
    assert late.json["referral"]["referrer_external_id"] == "ref-1"
    replay = sign_up(client, shop, "friend-1", referral_code=code)
    assert (replay.status_code, replay.json) == (200, late.json)
    assert count(app, Signup) == 1 and count(app, Referral) == 1


def test_no_late_attribution_after_a_first_purchase(app, client, shop):
    from tests.journey_helpers import buy

    code = enrol(client, shop, "ref-1")
    refused(sign_up(client, shop, "friend-1"), "no_referral")
    assert buy(client, shop, "o-1", "friend-1", "20.00").status_code == 201
    refused(sign_up(client, shop, "friend-1", referral_code=code), "existing_customer")
    assert count(app, Referral) == 0

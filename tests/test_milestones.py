"""Loyalty milestones: the program's `milestones`, the extra reward at the referrer's Nth
converted friend (once per milestone, whatever the race), its reversal by a refund before payout,
and the progress the share page shows."""

import json
import re
from datetime import timedelta
from html import unescape

import pytest
from sqlalchemy import select

from referral_service.extensions import db
from referral_service.models import Clawback, OutboxEvent, Reward, utcnow
from tests.journey_helpers import (
    buy,
    converted_friend,
    count,
    pay,
    ready_for_payout,
    referred_friend,
    refund,
    set_program,
    together,
)
from tests.test_idempotency_races import post_from_thread
from tests.test_share_page import portal_path, put_customer, text_of

FIVE = {"friends": 5, "reward": {"type": "fixed", "value": "20.00"}}
TEN = {"friends": 10, "reward": {"type": "percent", "value": "50"}}


def milestone_rewards(app, *where) -> list[tuple]:
    """`(milestone_friends, status, amount_minor)` of the milestone rewards, oldest first."""
    with app.app_context():
        return db.session.execute(
            select(Reward.milestone_friends, Reward.status, Reward.amount_minor)
            .where(Reward.kind == "milestone", *where)
            .order_by(Reward.id)
        ).all()


def event_types(app, reward_id: int) -> list[str]:
    with app.app_context():
        events = db.session.scalars(select(OutboxEvent).order_by(OutboxEvent.id)).all()
    return [
        event.type
        for event in events
        if event.type.startswith("reward.") and event.data.get("id") == reward_id
    ]


# --- the setting ---------------------------------------------------------------------------------


def test_milestones_are_empty_by_default_and_shown_sorted(client, shop, admin):
    assert client.get("/api/v1/program", headers=shop).json["milestones"] == []
    saved = set_program(
        client, admin, milestones=[TEN, {"friends": 5, "reward": {"type": "fixed", "value": "20"}}]
    )
    assert saved["milestones"] == [FIVE, TEN]
    assert client.get("/api/v1/program", headers=shop).json["milestones"] == [FIVE, TEN]
    assert set_program(client, admin, milestones=[])["milestones"] == []


def test_fixed_milestones_follow_the_currency(client, admin):
    saved = set_program(client, admin, milestones=[FIVE])
    assert saved["milestones"][0]["reward"]["value"] == "20.00"
    saved = set_program(client, admin, currency="JPY")  # checked and shown in yen
    assert saved["milestones"][0]["reward"] == {"type": "fixed", "value": "20"}
    response = client.patch(
        "/api/v1/program",
        json={"milestones": [{"friends": 5, "reward": {"type": "fixed", "value": "20.50"}}]},
        headers=admin,
    )
    assert response.status_code == 422
    assert "milestones.0.reward.value" in response.json["error"]["fields"]


def reward_of(friends=5, kind="fixed", value="20.00") -> dict:
    return {"friends": friends, "reward": {"type": kind, "value": value}}


@pytest.mark.parametrize(
    ("milestones", "field"),
    [
        ("5 friends", "milestones"),
        ({"friends": 5}, "milestones"),
        (None, "milestones"),
        ([reward_of(friends="5")], "milestones.0.friends"),
        ([reward_of(friends=0)], "milestones.0.friends"),
        ([reward_of(friends=-3)], "milestones.0.friends"),
        ([reward_of(friends=10_001)], "milestones.0.friends"),
        ([reward_of(friends=2.5)], "milestones.0.friends"),
        ([reward_of(friends=True)], "milestones.0.friends"),
        ([reward_of(5), reward_of(3), reward_of(5)], "milestones.2.friends"),
        ([reward_of(n) for n in range(1, 22)], "milestones"),
        ([reward_of(kind="none", value=None)], "milestones.0.reward.type"),
        ([reward_of(kind="free_shipping")], "milestones.0.reward.type"),
        ([reward_of(value="-5")], "milestones.0.reward.value"),
        ([reward_of(value="0")], "milestones.0.reward.value"),
        ([reward_of(value="abc")], "milestones.0.reward.value"),
        ([reward_of(value="NaN")], "milestones.0.reward.value"),
        ([reward_of(value=None)], "milestones.0.reward.value"),
        ([reward_of(value="20.001")], "milestones.0.reward.value"),
        ([reward_of(kind="percent", value="150")], "milestones.0.reward.value"),
        ([reward_of(kind="percent", value="0")], "milestones.0.reward.value"),
        ([{"friends": 5}], "milestones.0.reward"),
        ([{"friends": 5, "reward": "20.00"}], "milestones.0.reward"),
        ([{**reward_of(), "colour": "red"}], "milestones.0.colour"),
        (["5"], "milestones.0"),
        ([reward_of(1), 7], "milestones.1"),
    ],
)
def test_bad_milestones_are_422_naming_the_part_and_change_nothing(
    client, admin, milestones, field
):
    set_program(client, admin, milestones=[FIVE])
    response = client.patch("/api/v1/program", json={"milestones": milestones}, headers=admin)
    assert response.status_code == 422, response.json
    error = response.json["error"]
    assert error["code"] == "validation_error"
    # the part named, or its own `_schema` (marshmallow's name for a part of the wrong type)
    assert field in error["fields"] or f"{field}._schema" in error["fields"], error
    assert client.get("/api/v1/program", headers=admin).json["milestones"] == [FIVE]


def test_the_domain_checks_what_the_schema_lets_through(app):
    """The console and the CLI reach the domain without the API's schema: it names the same
    parts, duplicates and 'none' included."""
    from referral_service.domain import program
    from referral_service.errors import ValidationFailed

    with app.app_context():
        for milestones, field in (
            ([reward_of(5), reward_of(5)], "milestones.1.friends"),
            ([reward_of(kind="none", value=None)], "milestones.0.reward.type"),
            ([reward_of(friends="5")], "milestones.0.friends"),
            ([reward_of(n) for n in range(1, 22)], "milestones"),
            ("x", "milestones"),
        ):
            with pytest.raises(ValidationFailed) as raised:
                program.update({"milestones": milestones})
            assert field in raised.value.fields, raised.value.fields


# --- granting ------------------------------------------------------------------------------------


def test_the_nth_conversion_grants_exactly_one_milestone_reward(app, client, shop, admin):
    set_program(client, admin, milestones=[FIVE, TEN])
    for n in range(1, 5):
        body = converted_friend(client, shop, f"f-{n}", "ref-1", amount="40.00")
        assert [r["kind"] for r in body["rewards"]] == ["referral"]
        assert body["rewards"][0]["milestone_friends"] is None
    fifth = converted_friend(client, shop, "f-5", "ref-1", amount="40.00")
    referral_reward, milestone = fifth["rewards"]
    assert referral_reward["kind"] == "referral"
    assert milestone == {
        "id": milestone["id"],
        "beneficiary": "referrer",
        "kind": "milestone",
        "milestone_friends": 5,
        "amount": "20.00",
        "currency": "EUR",
        "status": "pending",
        "available_at": referral_reward["available_at"],  # the same hold
    }
    assert event_types(app, milestone["id"]) == ["reward.created"]
    for n in range(6, 10):
        assert len(converted_friend(client, shop, f"f-{n}", "ref-1")["rewards"]) == 1
    tenth = converted_friend(client, shop, "f-10", "ref-1", amount="30.00")
    assert [(r["kind"], r["milestone_friends"], r["amount"]) for r in tenth["rewards"]] == [
        ("referral", None, "10.00"),
        ("milestone", 10, "15.00"),  # 50 % of the order that reached it
    ]
    assert milestone_rewards(app) == [(5, "pending", 2000), (10, "pending", 1500)]
    # GET /rewards shows the kind; the referrer's own rewards are their customer's
    items = client.get("/api/v1/rewards?referrer=ref-1&limit=100", headers=admin).json["items"]
    shown = [(i["kind"], i["milestone_friends"], i["customer_external_id"]) for i in items]
    assert shown.count(("milestone", 5, "ref-1")) == 1
    assert shown.count(("referral", None, "ref-1")) == 10
    # a replay of the order that reached it answers the same and grants nothing more
    again = buy(client, shop, "o-f-5", "f-5", "40.00")
    assert again.status_code == 200 and again.json["rewards"] == fifth["rewards"]
    assert len(milestone_rewards(app)) == 2


def test_a_program_set_later_grants_every_milestone_already_reached_at_the_next_conversion(
    app, client, shop, admin
):
    for n in range(1, 7):
        converted_friend(client, shop, f"f-{n}", "ref-1")
    set_program(client, admin, milestones=[reward_of(2), reward_of(5)])
    body = converted_friend(client, shop, "f-7", "ref-1")
    assert [r["milestone_friends"] for r in body["rewards"]] == [None, 2, 5]


def test_milestones_count_the_referrers_friends_only(app, client, shop, admin):
    set_program(client, admin, milestones=[reward_of(2)])
    converted_friend(client, shop, "a-1", "ref-a")
    converted_friend(client, shop, "b-1", "ref-b")
    assert milestone_rewards(app) == []
    body = converted_friend(client, shop, "a-2", "ref-a")
    assert body["rewards"][-1]["kind"] == "milestone"
    assert count(app, Reward, Reward.kind == "milestone") == 1


def test_the_monthly_cap_neither_counts_nor_withholds_milestones(app, client, shop, admin):
    set_program(client, admin, max_rewards_per_referrer_per_month=1, milestones=[reward_of(2)])
    converted_friend(client, shop, "f-1", "ref-1")
    second = converted_friend(client, shop, "f-2", "ref-1")
    assert second["reason"] == "monthly_cap_reached"
    assert [(r["kind"], r["milestone_friends"]) for r in second["rewards"]] == [("milestone", 2)]
    set_program(client, admin, max_rewards_per_referrer_per_month=2)
    third = converted_friend(client, shop, "f-3", "ref-1")  # the milestone does not use the cap
    assert third["reason"] is None
    assert [r["kind"] for r in third["rewards"]] == ["referral"]


def test_a_milestone_follows_the_hold_and_auto_approval(app, client, shop, admin):
    set_program(
        client,
        admin,
        hold_days=0,
        auto_approve_max_amount="25.00",
        milestones=[reward_of(1, value="20.00"), reward_of(2, value="30.00")],
    )
    first = converted_friend(client, shop, "f-1", "ref-1")
    assert [(r["kind"], r["status"]) for r in first["rewards"]] == [
        ("referral", "approved"),
        ("milestone", "approved"),
    ]
    second = converted_friend(client, shop, "f-2", "ref-1")
    assert [(r["kind"], r["status"]) for r in second["rewards"]] == [
        ("referral", "approved"),
        ("milestone", "awaiting_approval"),  # above the auto-approval limit
    ]
    assert event_types(app, first["rewards"][1]["id"]) == ["reward.created", "reward.approved"]


# --- races ---------------------------------------------------------------------------------------


def purchase_from_thread(app, shop, order_id: str, friend: str):
    body = {
        "order_id": order_id,
        "customer_external_id": friend,
        "amount": "50.00",
        "currency": "EUR",
    }
    status, raw = post_from_thread(app, "/api/v1/purchases", body, shop)
    assert status == 201, raw
    return json.loads(raw)


def test_sixteen_friends_converting_at_once_reach_each_milestone_once(app, client, shop, admin):
    """Friends 5 to 20 buy at once: milestones 5, 10 and 20 are each granted once."""
    set_program(client, admin, milestones=[FIVE, TEN, reward_of(20), reward_of(21)])
    for n in range(1, 5):
        converted_friend(client, shop, f"f-{n}", "ref-1")
    for n in range(5, 21):
        referred_friend(client, shop, f"f-{n}", "ref-1")
    bodies = together(16, lambda i: purchase_from_thread(app, shop, f"o-{i}", f"f-{i + 5}"))
    granted = sorted(
        r["milestone_friends"]
        for body in bodies
        for r in body["rewards"]
        if r["kind"] != "referral"
    )
    assert granted == [5, 10, 20]
    assert sorted(m for m, _, _ in milestone_rewards(app)) == [5, 10, 20]
    assert count(app, Reward, Reward.kind == "referral") == 20


def test_sixteen_purchases_of_the_nth_friend_at_once_grant_the_milestone_once(
    app, client, shop, admin
):
    set_program(client, admin, milestones=[FIVE])
    for n in range(1, 5):
        converted_friend(client, shop, f"f-{n}", "ref-1")
    referred_friend(client, shop, "f-5", "ref-1")
    bodies = together(16, lambda i: purchase_from_thread(app, shop, f"o-5-{i}", "f-5"))
    granted = [r for body in bodies for r in body["rewards"] if r["kind"] == "milestone"]
    assert len(granted) == 1
    assert milestone_rewards(app) == [(5, "pending", 2000)]


def test_the_index_refuses_a_second_live_milestone_reward(app, client, shop, admin):
    """The database itself holds a referrer to one live reward per milestone."""
    from sqlalchemy.exc import IntegrityError

    set_program(client, admin, milestones=[reward_of(1)])
    converted_friend(client, shop, "f-1", "ref-1")
    with app.app_context():
        reward = db.session.scalar(select(Reward).where(Reward.kind == "milestone"))
        copy = Reward(
            **{
                column: getattr(reward, column)
                for column in Reward.__table__.columns.keys()  # noqa: SIM118 (names)
                if column != "id"
            }
        )
        db.session.add(copy)
        with pytest.raises(IntegrityError):
            db.session.commit()
        db.session.rollback()


# --- refunds -------------------------------------------------------------------------------------


def test_a_refund_below_n_before_payout_reverses_it_and_a_requalifying_order_grants_it_again(
    app, client, shop, admin
):
    set_program(client, admin, milestones=[FIVE])
    bodies = [converted_friend(client, shop, f"f-{n}", "ref-1") for n in range(1, 6)]
    milestone_id = bodies[-1]["rewards"][-1]["id"]
    # an unpaid batch holds it: the refund takes it out, as it does a referral reward
    ready_for_payout(app, client, admin, {"rewards": [bodies[-1]["rewards"][-1]]})
    batch = client.post("/api/v1/payouts", json={"reward_ids": [milestone_id]}, headers=admin)
    assert batch.status_code == 201, batch.json
    # friend 2's order (not the one that reached it) refunded in full: four friends remain
    answer = refund(client, shop, "o-f-2")
    assert answer.status_code == 200, answer.json
    assert milestone_rewards(app) == [(5, "reversed", 2000)]
    assert event_types(app, milestone_id) == [
        "reward.created",
        "reward.matured",
        "reward.approved",
        "reward.reversed",
    ]
    with app.app_context():
        assert db.session.get(Reward, milestone_id).payout_id is None
    shown = client.get(f"/api/v1/payouts/{batch.json['id']}", headers=admin).json
    assert shown["lines"] == [], shown
    # friend 2 buys again within the window: five friends again, a new milestone reward
    again = buy(client, shop, "o-f-2-again", "f-2", "50.00")
    assert again.status_code == 201, again.json
    assert [(r["kind"], r["milestone_friends"]) for r in again.json["rewards"]] == [
        ("referral", None),
        ("milestone", 5),
    ]
    assert milestone_rewards(app) == [(5, "reversed", 2000), (5, "pending", 2000)]


def test_refunding_the_order_that_reached_it_reverses_it(app, client, shop, admin):
    set_program(client, admin, milestones=[reward_of(2)])
    converted_friend(client, shop, "f-1", "ref-1")
    second = converted_friend(client, shop, "f-2", "ref-1")
    answer = refund(client, shop, "o-f-2")
    assert answer.status_code == 200, answer.json
    assert [(r["kind"], r["status"]) for r in answer.json["rewards"]] == [
        ("referral", "reversed"),
        ("milestone", "reversed"),
    ]
    assert event_types(app, second["rewards"][1]["id"])[-1] == "reward.reversed"


def test_a_partial_refund_that_keeps_the_friend_converted_keeps_the_milestone(
    app, client, shop, admin
):
    set_program(client, admin, milestones=[reward_of(1, kind="percent", value="10")])
    converted_friend(client, shop, "f-1", "ref-1", amount="100.00")
    assert refund(client, shop, "o-f-1", "40.00").status_code == 200
    assert milestone_rewards(app) == [(1, "pending", 1000)]


def test_a_paid_milestone_stays_paid_after_such_a_refund(app, client, shop, admin):
    set_program(client, admin, milestones=[reward_of(2)])
    converted_friend(client, shop, "f-1", "ref-1")
    second = converted_friend(client, shop, "f-2", "ref-1")
    milestone = second["rewards"][1]
    pay(client, admin, ready_for_payout(app, client, admin, {"rewards": [milestone]}))
    answer = refund(client, shop, "o-f-1")
    assert answer.status_code == 200, answer.json
    assert milestone_rewards(app) == [(2, "paid", 2000)]
    assert answer.json["clawbacks"] == []
    refund(client, shop, "o-f-2")  # the order that reached it: its referral reward reversed
    assert milestone_rewards(app) == [(2, "paid", 2000)]
    assert count(app, Clawback) == 0
    # two friends again: the paid one still stands for the milestone, none is added
    buy(client, shop, "o-f-1-again", "f-1", "50.00")
    buy(client, shop, "o-f-2-again", "f-2", "50.00")
    assert milestone_rewards(app) == [(2, "paid", 2000)]


def test_a_rejected_milestone_is_not_granted_again(app, client, shop, admin):
    set_program(client, admin, milestones=[reward_of(1)], hold_days=0)
    body = converted_friend(client, shop, "f-1", "ref-1")
    milestone_id = body["rewards"][1]["id"]
    response = client.post(
        f"/api/v1/rewards/{milestone_id}/reject", json={"reason": "test shop"}, headers=admin
    )
    assert response.status_code == 200, response.json
    converted_friend(client, shop, "f-2", "ref-1")
    assert milestone_rewards(app) == [(1, "rejected", 2000)]


def test_maturing_moves_a_milestone_reward_like_any_other(app, client, shop, admin):
    from tests.journey_helpers import mature

    set_program(client, admin, milestones=[reward_of(1)])
    converted_friend(client, shop, "f-1", "ref-1")
    mature(app, utcnow() + timedelta(days=30))
    assert milestone_rewards(app) == [(1, "awaiting_approval", 2000)]


# --- the share page ------------------------------------------------------------------------------


def test_the_share_page_shows_the_way_to_the_next_bonus(app, client, shop, admin):
    set_program(
        client,
        admin,
        milestones=[reward_of(2, value="5.00"), FIVE, reward_of(10, kind="percent", value="50")],
    )
    put_customer(client, shop)
    for n in range(1, 4):
        converted_friend(client, shop, f"f-{n}", "ref-1")
    referred_friend(client, shop, "f-4", "ref-1")  # signed up, not converted: not counted
    page = client.get(portal_path(client, shop))
    text = text_of(page)
    assert "Your bonuses" in text
    assert "3 of 5 friends to your bonus: €20.00" in text
    assert "Bonus for 2 friends reached: €5.00" in text
    assert "Bonus for 2 friends" in text  # the milestone reward in the rewards list
    assert '<progress value="3" max="5"' in page.text
    polish = text_of(client.get(portal_path(client, shop) + "?lang=pl"))
    assert "3 z 5 znajomych do Twojej premii: 20,00 €" in polish
    assert "Premia za 2 znajomych zdobyta: 5,00 €" in polish
    assert buy(client, shop, "o-f-4", "f-4", "50.00").status_code == 201
    converted_friend(client, shop, "f-5", "ref-1")
    text = text_of(client.get(portal_path(client, shop)))
    assert "5 of 10 friends to your bonus: 50% of that friend's order" in text
    greek = text_of(client.get(portal_path(client, shop) + "?lang=el"))
    assert "5 από 10 φίλους για το μπόνους σου" in greek  # noqa: RUF001


def test_the_share_page_says_nothing_of_milestones_without_them(client, shop):
    put_customer(client, shop)
    converted_friend(client, shop, "f-1", "ref-1")
    page = client.get(portal_path(client, shop))
    assert 'id="milestones"' not in page.text and "bonus" not in text_of(page).lower()


def test_every_bonus_reached(client, shop, admin):
    set_program(client, admin, milestones=[reward_of(1)])
    converted_friend(client, shop, "f-1", "ref-1")
    put_customer(client, shop, locale="bg")
    text = text_of(client.get(portal_path(client, shop)))
    assert "Постигна всички бонуси. Благодарим ти!" in text
    assert "Бонус за 1 приятел – постигнат:" in text  # noqa: RUF001


@pytest.mark.parametrize(("friends", "form"), [(1, 0), (2, 1), (5, 2), (22, 1)])
def test_polish_milestones_take_the_right_plural_form(client, shop, admin, friends, form):
    from babel.messages.pofile import read_po

    from tests.test_translations import TRANSLATIONS

    with open(TRANSLATIONS / "pl" / "LC_MESSAGES" / "messages.po", "rb") as po:
        catalog = read_po(po, locale="pl")
    forms = catalog["%(count)d of %(num)d friend to your bonus: %(bonus)s"].string
    set_program(client, admin, milestones=[reward_of(friends)])
    put_customer(client, shop, locale="pl")
    text = text_of(client.get(portal_path(client, shop)))
    # (the page's text with its no-break spaces read as spaces)
    assert forms[form] % {"count": 0, "num": friends, "bonus": "20,00 €"} in text


# --- the console ---------------------------------------------------------------------------------


def test_the_console_edits_milestones_one_a_line(app, client):
    from tests.test_admin_console import signed_in_as
    from tests.test_admin_settings import save, saved

    signed_in_as(app, client, "owner")
    response = save(client, milestones="10: 50%\r\n\r\n5: 20\r\n")
    assert response.status_code == 302, response.get_data(as_text=True)
    assert saved(app)["milestones"] == [FIVE, TEN]
    page = client.get("/admin/settings").get_data(as_text=True)
    assert ">5: 20.00\n10: 50%</textarea>" in page
    assert save(client, milestones="5: 20.00\n10: 50%").status_code == 302
    assert "Nothing to save" in client.get("/admin/settings").get_data(as_text=True)
    for typed, message in (
        ("5: 20\n5: 30", "Line 2: Another milestone is at 5 friends already"),
        ("five: 20", "Line 1: Not a valid integer."),
        ("0: 20", "Line 1: Must be greater than or equal to 1"),
        ("5: lots", "Line 1: A plain decimal string"),
        ("5", "Line 1:"),
        ("\n".join(f"{n}: 1" for n in range(1, 22)), "Longer than maximum length 20."),
    ):
        response = save(client, milestones=typed)
        assert response.status_code == 422, typed
        html = response.get_data(as_text=True)
        error = re.search(r'<p id="set-milestones-error" class="field-error">([^<]*)</p>', html)
        assert error and message in unescape(error.group(1)), (typed, html)
        assert saved(app)["milestones"] == [FIVE, TEN]
    assert save(client, milestones="").status_code == 302
    assert saved(app)["milestones"] == []

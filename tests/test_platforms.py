"""Platform events onto the ledger (domain/platforms.py): signatures, Stripe's minor units, and
each event applied once, even when a platform sends it again at the same moment."""

import base64
import hashlib
import hmac
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from referral_service.domain import platforms
from referral_service.domain.platforms import (
    BadSignature,
    Ignore,
    Purchase,
    Redact,
    Refund,
    from_stripe_amount,
)
from referral_service.extensions import db
from referral_service.models import Purchase as PurchaseRow
from referral_service.models import Reward, utcnow
from referral_service.models.platform import PlatformEvent
from tests.journey_helpers import count, enrol, referred_friend, together

NOW = 1_700_000_000
BODY = b'{"id":"evt_1","type":"checkout.session.completed"}'
SECRET = "whsec_test_secret"


def stripe_header(body: bytes, secret: str, t: int = NOW, extra: str = "") -> str:
    """As Stripe's documentation shows: t=<time>,v1=<hex HMAC-SHA256 of "t.body">."""
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}{extra}"


def shopify_header(body: bytes, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


# --- signatures -------------------------------------------------------------------------------


def test_a_stripe_signature_verifies_with_any_secret_of_a_rotation():
    platforms.verify_stripe(stripe_header(BODY, SECRET), BODY, [SECRET], NOW)
    platforms.verify_stripe(stripe_header(BODY, SECRET), BODY, ["whsec_new", SECRET], NOW)
    # several v1 (Stripe signs with each secret of the endpoint during its own rotation)
    other = stripe_header(BODY, "whsec_other").split(",")[1]
    platforms.verify_stripe(stripe_header(BODY, SECRET) + "," + other, BODY, [SECRET], NOW)
    platforms.verify_stripe(
        f"t={NOW},{other},v0=ignored,{stripe_header(BODY, SECRET).split(',')[1]}",
        BODY,
        [SECRET],
        NOW,
    )
    # within the tolerance either way
    platforms.verify_stripe(stripe_header(BODY, SECRET, NOW - 300), BODY, [SECRET], NOW)
    platforms.verify_stripe(stripe_header(BODY, SECRET, NOW + 300), BODY, [SECRET], NOW)


@pytest.mark.parametrize(
    "header, secrets, why",
    [
        (stripe_header(BODY + b" ", SECRET), [SECRET], "matches"),  # tampered body
        (stripe_header(BODY, SECRET, NOW - 301), [SECRET], "from now"),  # stale
        (stripe_header(BODY, SECRET, NOW + 301), [SECRET], "from now"),  # future
        (None, [SECRET], "No Stripe-Signature"),  # unsigned
        ("", [SECRET], "No Stripe-Signature"),
        (stripe_header(BODY, "whsec_wrong"), [SECRET], "matches"),  # wrong secret
        (stripe_header(BODY, SECRET), [], "not set"),  # no secret configured
        (f"t={NOW}", [SECRET], "no v1"),
        (stripe_header(BODY, SECRET).replace("v1=", "v0="), [SECRET], "no v1"),
        ("t=abc,v1=00", [SECRET], "no timestamp"),
        ("t=١٧٠٠٠٠٠٠٠٠,v1=00", [SECRET], "no timestamp"),  # noqa: RUF001 (non-ASCII digits)
        ("garbage", [SECRET], "no timestamp"),
        ("t=99999999999999999999999,v1=00", [SECRET], "no timestamp"),
    ],
)
def test_a_bad_stripe_signature_is_refused(header, secrets, why):
    with pytest.raises(BadSignature, match=why) as refused:
        platforms.verify_stripe(header, BODY, secrets, NOW)
    assert refused.value.status == 401 and refused.value.code == "invalid_signature"


def test_a_shopify_signature_verifies_and_a_bad_one_is_refused():
    platforms.verify_shopify(shopify_header(BODY, "shpss_1"), BODY, ["shpss_0", "shpss_1"])
    for header, secrets in [
        (shopify_header(BODY + b"x", "shpss_1"), ["shpss_1"]),
        (shopify_header(BODY, "shpss_2"), ["shpss_1"]),
        (None, ["shpss_1"]),
        ("not base64 at all", ["shpss_1"]),
        (shopify_header(BODY, "shpss_1"), []),
    ]:
        with pytest.raises(BadSignature):
            platforms.verify_shopify(header, BODY, secrets)


def test_secrets_of_a_setting():
    assert platforms.secrets_of(None) == []
    assert platforms.secrets_of(" whsec_a , ,whsec_b ") == ["whsec_a", "whsec_b"]


# --- Stripe's minor units ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "amount, currency, expected",
    [
        (1999, "eur", Decimal("19.99")),
        (1999, "EUR", Decimal("19.99")),
        (500, "jpy", Decimal("500")),  # zero-decimal: whole yen
        (12345, "huf", Decimal("123.45")),  # two-decimal in Stripe's API and in ISO 4217
        (5120, "kwd", Decimal("5.120")),  # three-decimal
        (500, "isk", Decimal("5")),  # Stripe keeps ISK two-decimal; ISO 4217 has whole krónur
        (550, "isk", "unrepresentable_amount"),  # 5.50 ISK: ISO's krónur cannot hold it
        (7000, "ugx", Decimal("7000")),  # zero-decimal in both
        (0, "eur", Decimal("0.00")),
        (-1, "eur", "unreadable_amount"),
        (19.99, "eur", "unreadable_amount"),
        ("1999", "eur", "unreadable_amount"),
        (True, "eur", "unreadable_amount"),
        (100, "xyz", "unknown_currency"),
        (100, None, "unknown_currency"),
    ],
)
def test_stripe_amounts_by_stripes_own_rules(amount, currency, expected):
    assert from_stripe_amount(amount, currency) == expected


# --- applying events once ---------------------------------------------------------------------


def purchase(friend="friend-1", order="o-1", amount="50.00", **fields) -> Purchase:
    return Purchase(order, friend, Decimal(amount), "EUR", **fields)


def test_a_purchase_converts_once_and_a_retry_changes_nothing(app, client, shop):
    referred_friend(client, shop)
    with app.app_context():
        first = platforms.apply("stripe", "evt_1", "checkout.session.completed", purchase())
        again = platforms.apply("stripe", "evt_1", "checkout.session.completed", purchase())
        assert first.outcome == "mapped" and "converted the referral" in first.message
        assert again.outcome == "duplicate"
        assert count(app, Reward) == 1
        record = db.session.scalar(select(PlatformEvent))
        assert (record.platform, record.event_id, record.outcome) == ("stripe", "evt_1", "mapped")
        assert (record.order_id, record.customer_external_id) == ("o-1", "friend-1")
        # the same event id on the other platform is another event
        other = platforms.apply("shopify", "evt_1", "orders/paid", purchase(order="o-2"))
        assert other.outcome == "mapped" and "no reward" in other.message


def test_an_unknown_customer_with_a_referral_is_signed_up_first(app, client, shop):
    code = enrol(client, shop, "ref-1")
    with app.app_context():
        outcome = platforms.apply(
            "shopify",
            "1",
            "orders/paid",
            purchase("new-friend", email="new@mail.example", referral_code=code),
        )
        assert outcome.outcome == "mapped", outcome
        assert "signed up first, attributed" in outcome.message
        assert count(app, Reward) == 1
    body = client.get("/api/v1/customers/new-friend", headers=shop).json
    assert body["email"] == "new@mail.example"


def test_an_unknown_customer_without_a_referral_is_signed_up_and_buys_unreferred(app, client, shop):
    with app.app_context():
        outcome = platforms.apply(
            "shopify", "2", "orders/paid", purchase("walk-in", email="w@mail.example")
        )
        assert outcome.outcome == "mapped" and "not attributed" in outcome.message
        assert count(app, PurchaseRow) == 1 and count(app, Reward) == 0


def test_what_the_ledger_refuses_is_recorded_as_ignored_and_not_retried(app, client, shop):
    referred_friend(client, shop)
    with app.app_context():
        no_email = platforms.apply("stripe", "evt_a", "checkout.session.completed", purchase("x"))
        assert (no_email.outcome, no_email.reason) == ("ignored", "no_email")
        unknown_order = platforms.apply("stripe", "evt_b", "charge.refunded", Refund("o-none"))
        assert (unknown_order.outcome, unknown_order.reason) == ("ignored", "not_found")
        platforms.apply("stripe", "evt_c", "checkout.session.completed", purchase())
        conflict = platforms.apply(
            "stripe", "evt_d", "checkout.session.completed", purchase(amount="60.00")
        )
        assert (conflict.outcome, conflict.reason) == ("ignored", "order_conflict")
        too_much = platforms.apply(
            "stripe", "evt_e", "charge.refunded", Refund("o-1", refunded_total=Decimal("99.00"))
        )
        assert (too_much.outcome, too_much.reason) == ("ignored", "ledger_refused")
        assert "refunded_total" in too_much.message
        told = platforms.apply("stripe", "evt_f", "customer.created", Ignore("unused", "Not used."))
        assert (told.outcome, told.reason) == ("ignored", "unused")
        redact = platforms.apply("shopify", "r-1", "customers/redact", Redact("nobody"))
        assert (redact.outcome, redact.reason) == ("ignored", "not_found")
        # each recorded once, a retry of an ignored event too
        assert platforms.apply("stripe", "evt_a", "x", purchase("x")).outcome == "duplicate"
        rows = db.session.execute(
            select(PlatformEvent.event_id, PlatformEvent.outcome, PlatformEvent.reason).order_by(
                PlatformEvent.id
            )
        ).all()
        assert [tuple(row) for row in rows] == [
            ("evt_a", "ignored", "no_email"),
            ("evt_b", "ignored", "not_found"),
            ("evt_c", "mapped", None),
            ("evt_d", "ignored", "order_conflict"),
            ("evt_e", "ignored", "ledger_refused"),
            ("evt_f", "ignored", "unused"),
            ("r-1", "ignored", "not_found"),
        ]
        assert count(app, Reward) == 1


def test_a_refund_reverses_the_reward_once(app, client, shop):
    referred_friend(client, shop)
    with app.app_context():
        platforms.apply("stripe", "evt_buy", "checkout.session.completed", purchase())
        refund = Refund("o-1", refunded_total=Decimal("50.00"))
        first = platforms.apply("stripe", "evt_refund", "charge.refunded", refund)
        assert first.outcome == "mapped" and "refunded 50.00" in first.message
        assert db.session.scalar(select(Reward.status)) == "reversed"
        # a later event with the same total (a platform's other event) changes nothing either
        later = platforms.apply("stripe", "evt_refund_2", "charge.refunded", refund)
        assert later.outcome == "mapped"
        assert db.session.scalar(select(Reward.status)) == "reversed"


@pytest.mark.parametrize("same_event", [True, False])
def test_sixteen_deliveries_at_once_have_one_effect(app, client, shop, same_event):
    """A platform's retries racing (the same event id), or two events of one order racing."""
    code = enrol(client, shop, "ref-1")
    event = purchase("racer", email="racer@mail.example", referral_code=code)

    def deliver(i):
        with app.app_context():
            name = "evt_race" if same_event else f"evt_race_{i}"
            return platforms.apply("stripe", name, "checkout.session.completed", event).outcome

    outcomes = together(16, deliver)
    with app.app_context():
        assert count(app, Reward) == 1 and count(app, PurchaseRow) == 1
        records = db.session.scalars(select(PlatformEvent)).all()
    if same_event:
        assert sorted(outcomes) == ["duplicate"] * 15 + ["mapped"]
        assert len(records) == 1
    else:
        assert outcomes == ["mapped"] * 16  # the later ones replay the order: recorded, no effect
        assert len(records) == 16


def test_the_time_of_an_order_is_the_platforms(app, client, shop):
    referred_friend(client, shop)
    placed = utcnow() - timedelta(days=2)
    with app.app_context():
        platforms.apply("shopify", "9", "orders/paid", purchase(occurred_at=placed))
        assert db.session.scalar(select(PurchaseRow.occurred_at)) == placed.replace(
            microsecond=placed.microsecond
        )


def test_hostile_ids_are_kept_cut_and_without_nul(app, client, shop):
    with app.app_context():
        outcome = platforms.apply(
            "stripe",
            "evt_\x00" + "x" * 400,
            "t\x00" * 80,
            Ignore("unused", "m\x00" * 400, order_id="o\x00" * 100, customer_external_id="c" * 300),
        )
        assert outcome.outcome == "ignored"
        record = db.session.scalar(select(PlatformEvent))
        assert "\x00" not in record.event_id + record.type + record.message + record.order_id
        assert len(record.event_id) == 255 and len(record.customer_external_id) == 128
        assert len(record.order_id) == 128 and len(record.message) == platforms.MAX_MESSAGE
    assert from_stripe_amount(10**30, "eur") == "amount_too_large"


def test_a_refund_in_another_currency_than_its_order_is_not_applied(app, client, shop):
    referred_friend(client, shop)
    with app.app_context():
        platforms.apply("shopify", "buy", "orders/paid", purchase())
        other = Refund("o-1", refund_id="r-1", amount=Decimal("50.00"), currency="USD")
        outcome = platforms.apply("shopify", "refund", "refunds/create", other)
        assert (outcome.outcome, outcome.reason) == ("ignored", "currency_mismatch")
        assert db.session.scalar(select(Reward.status)) != "reversed"
        same = Refund("o-1", refund_id="r-1", amount=Decimal("50.00"), currency="EUR")
        assert platforms.apply("shopify", "refund-2", "refunds/create", same).outcome == "mapped"
        assert db.session.scalar(select(Reward.status)) == "reversed"


@pytest.mark.parametrize("given", ["é", "\udcff", "ü" * 64, "00\x00"])
def test_a_stripe_signature_with_other_than_ascii_is_refused_not_a_fault(given):
    with pytest.raises(BadSignature):
        platforms.verify_stripe(f"t={NOW},v1={given}", BODY, [SECRET], NOW)
    with pytest.raises(BadSignature):
        platforms.verify_shopify(given, BODY, [SECRET])

"""Stripe's webhooks in (`POST /integrations/stripe/webhook`), over HTTP.

Signatures are cross-checked with the `stripe` package itself: what its own signing helper makes
is accepted, and what we sign as Stripe's documentation shows verifies with its
`Webhook.construct_event`. The real fixtures (../shared/fixtures/webhooks, see SOURCES.md there)
are mapped end to end with their ids edited to name this test's customers; each event is sent
twice and by 16 threads at once, on SQLite and PostgreSQL.
"""

import ast
import hashlib
import hmac
import json
import os
import time
from decimal import Decimal
from pathlib import Path

import pytest
import stripe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from referral_service.domain import customers
from referral_service.domain.platforms import Ignore, Purchase, Refund
from referral_service.domain.rewards import check_order_id
from referral_service.extensions import db
from referral_service.integrations.stripe import action_for, read_event
from referral_service.models import Customer, Referral, Reward
from referral_service.models import Purchase as PurchaseRow
from referral_service.models.platform import PlatformEvent
from tests.conftest import IN_CI
from tests.journey_helpers import count, enrol, referred_friend, set_program, together

URL = "/integrations/stripe/webhook"
SECRET = "whsec_test_5f2b8c0e9d1a4f6b"
FIXTURES = Path(
    os.environ.get("FIXTURES_DIR")
    or Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "webhooks"
)


# --- helpers ----------------------------------------------------------------------------------


def fixture(name: str) -> dict:
    """A Stripe fixture (`stripe-<name>.json`), as a fresh dict."""
    path = FIXTURES / f"stripe-{name}.json"
    if not path.is_file():
        message = f"the webhook fixtures are not at {FIXTURES} (set FIXTURES_DIR)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return json.loads(path.read_text(encoding="utf-8"))


def stripe_signed(body: bytes, secret: str = SECRET, t: int | None = None) -> str:
    """The header made by the stripe package's own signing helper for tests."""
    payload = body.decode("utf-8")
    helper = getattr(stripe.WebhookSignature, "generate_signature_header", None)
    if helper is not None:
        return helper(payload, secret, timestamp=t)
    t = int(time.time()) if t is None else t
    return f"t={t},v1={stripe.WebhookSignature._compute_signature(f'{t}.{payload}', secret)}"


def documented(body: bytes, secret: str = SECRET, t: int | None = None) -> str:
    """The header as Stripe's documentation describes it: hex HMAC-SHA256 of `t.body`."""
    t = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def encode(event) -> bytes:
    return event if isinstance(event, bytes) else json.dumps(event).encode()


def send(client, event, header: str | None = "sign", secret: str = SECRET):
    """POST an event (a dict, or raw bytes) signed with the stripe package's helper (default),
    with the given header, or (None) with none."""
    body = encode(event)
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if header == "sign":
        try:
            header = stripe_signed(body, secret)
        except UnicodeDecodeError:  # the package signs text only; Stripe signs the bytes
            header = documented(body, secret)
    if header is not None:
        headers["Stripe-Signature"] = header
    return client.post(URL, data=body, headers=headers)


def checkout(event_id: str, customer: str | None = None, **session) -> dict:
    """The real checkout.session.completed fixture with its own event id, dated now, naming
    `customer` (client_reference_id) and with `session`'s fields set on the session."""
    event = fixture("checkout.session.completed")
    event["id"] = event_id
    event["created"] = int(time.time())
    thing = event["data"]["object"]
    thing["created"] = int(time.time()) - 60
    thing["client_reference_id"] = customer
    thing.update(session)
    return event


def refunded(event_id: str, payment_intent: str | None, amount_refunded: int, **charge) -> dict:
    """The real charge.refunded fixture, linked to an order by its `payment_intent`."""
    event = fixture("charge.refunded")
    event["id"] = event_id
    event["created"] = int(time.time())
    thing = event["data"]["object"]
    thing.update(payment_intent=payment_intent, amount_refunded=amount_refunded, **charge)
    return event


def acknowledged(response, outcome: str, reason: str | None = None) -> None:
    """A 200 with this outcome (and, for `ignored`, this reason; any when None)."""
    assert response.status_code == 200, response.get_data(as_text=True)
    if outcome == "ignored" and reason is None:
        reason = response.json.get("reason")
        assert reason
    assert response.json == {"received": True, "outcome": outcome, "reason": reason}


def refused(response) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.json["error"]["code"] == "invalid_signature"


def recorded(app) -> list[tuple]:
    with app.app_context():
        return [
            (row.event_id, row.type, row.outcome, row.reason, row.order_id)
            for row in db.session.scalars(select(PlatformEvent).order_by(PlatformEvent.id))
        ]


def nothing_recorded(app) -> None:
    assert count(app, PlatformEvent) == 0
    assert count(app, PurchaseRow) == 0
    assert count(app, Customer) == 0


def purchase(app, order_id: str) -> PurchaseRow | None:
    with app.app_context():
        return db.session.scalar(select(PurchaseRow).where(PurchaseRow.order_id == order_id))


def referral_status(app, friend: str) -> str | None:
    with app.app_context():
        return db.session.scalar(
            select(Referral.status)
            .join(Customer, Customer.id == Referral.friend_id)
            .where(Customer.external_id == friend)
        )


def reward_states(app) -> list[str]:
    with app.app_context():
        return sorted(db.session.scalars(select(Reward.status)))


@pytest.fixture
def stripe_app(app, client, admin):
    """The app with a Stripe secret, its program in USD (the fixtures' currency)."""
    app.config["STRIPE_WEBHOOK_SECRETS"] = SECRET
    set_program(client, admin, currency="USD")
    return app


@pytest.fixture
def code(client, shop) -> str:
    """The referral code of an enrolled referrer, `ref-1`."""
    return enrol(client, shop, "ref-1")


# --- signatures -------------------------------------------------------------------------------


def test_events_signed_by_the_stripe_package_are_accepted(stripe_app, client):
    event = {"id": "evt_stripe_signed", "object": "event", "type": "customer.created"}
    acknowledged(send(client, event), "ignored", "unused_event_type")
    # several v1, as Stripe sends during its own secret rotation: one matching is enough
    body = encode({**event, "id": "evt_two_signatures"})
    other = stripe_signed(body, "whsec_other").split(",")[1]
    acknowledged(send(client, body, stripe_signed(body) + "," + other), "ignored")
    assert [row[0] for row in recorded(stripe_app)] == ["evt_stripe_signed", "evt_two_signatures"]


def test_our_documented_header_verifies_with_the_stripe_package(stripe_app, client):
    body = encode(checkout("evt_cross_check"))
    header = documented(body)
    event = stripe.Webhook.construct_event(body, header, SECRET)
    assert event["id"] == "evt_cross_check"
    assert header == stripe_signed(body, SECRET, int(header.split(",")[0][2:]))
    acknowledged(send(client, body, header), "ignored", "no_customer")


def test_either_secret_of_a_rotation_signs(stripe_app, client):
    stripe_app.config["STRIPE_WEBHOOK_SECRETS"] = " whsec_old_1 , whsec_new_2 "
    for n, secret in enumerate(["whsec_old_1", "whsec_new_2"]):
        event = {"id": f"evt_rotation_{n}", "type": "customer.created"}
        acknowledged(send(client, event, secret=secret), "ignored", "unused_event_type")
    refused(send(client, {"id": "evt_rotation_x", "type": "customer.created"}, secret=SECRET))
    assert len(recorded(stripe_app)) == 2


def signed_at(offset: int):
    return lambda body: stripe_signed(body, SECRET, int(time.time()) + offset)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(lambda body: stripe_signed(body + b" "), id="tampered"),
        pytest.param(signed_at(-400), id="stale"),
        pytest.param(signed_at(400), id="future"),
        pytest.param(lambda body: None, id="unsigned"),
        pytest.param(lambda body: "", id="empty"),
        pytest.param(lambda body: stripe_signed(body, "whsec_wrong"), id="wrong-secret"),
        pytest.param(lambda body: stripe_signed(body).replace("v1=", "v0="), id="v0-only"),
        pytest.param(lambda body: "t=now,v1=" + "0" * 64, id="garbage"),
        pytest.param(lambda body: "\x00" * 100, id="control"),
    ],
)
def test_a_bad_signature_is_refused_and_changes_nothing(stripe_app, client, code, header):
    body = encode(checkout("evt_bad", "friend-new", metadata={"referral_code": code}))
    before = count(stripe_app, Customer)
    refused(send(client, body, header(body)))
    assert count(stripe_app, PlatformEvent) == 0
    assert count(stripe_app, PurchaseRow) == 0
    assert count(stripe_app, Customer) == before


def test_a_stale_or_future_signature_is_refused_by_the_stripe_package_too():
    """Our 300 s tolerance is Stripe's (the package refuses only stale ones: we refuse both)."""
    body = b'{"id":"evt_1","type":"customer.created"}'
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, signed_at(-301)(body), SECRET)
    stripe.Webhook.construct_event(body, signed_at(-250)(body), SECRET)


def test_without_a_secret_configured_every_event_is_refused(app, client):
    app.config["STRIPE_WEBHOOK_SECRETS"] = ""
    event = checkout("evt_no_secret", "friend-new", metadata={"referral_code": "ANY"})
    response = send(client, event)
    refused(response)
    assert "STRIPE_WEBHOOK_SECRETS" in response.json["error"]["message"]
    nothing_recorded(app)


def test_a_get_is_not_an_event(stripe_app, client):
    response = client.get(URL)
    assert response.status_code == 405
    assert "error" in response.json


# --- the real fixtures end to end -------------------------------------------------------------


def test_a_paid_checkout_converts_the_referral_and_its_refund_reverses_the_reward(
    stripe_app, client, shop
):
    referred_friend(client, shop, "friend-1", "ref-1")
    event = checkout("evt_checkout_1", "friend-1", payment_intent="pi_friend_1")
    acknowledged(send(client, event), "mapped")
    row = purchase(stripe_app, "pi_friend_1")
    assert (row.amount_minor, row.currency) == (3000, "USD")  # amount_total 3000 usd
    assert referral_status(stripe_app, "friend-1") == "converted"
    states = reward_states(stripe_app)
    assert states and "reversed" not in states

    acknowledged(send(client, event), "duplicate")  # Stripe's retry: nothing changes
    assert count(stripe_app, PurchaseRow) == 1
    assert reward_states(stripe_app) == states

    refund = refunded("evt_refund_1", "pi_friend_1", 3000)  # all of it
    acknowledged(send(client, refund), "mapped")
    assert purchase(stripe_app, "pi_friend_1").refunded_minor == 3000
    assert set(reward_states(stripe_app)) == {"reversed"}
    acknowledged(send(client, refund), "duplicate")
    assert [(r[0], r[2], r[4]) for r in recorded(stripe_app)] == [
        ("evt_checkout_1", "mapped", "pi_friend_1"),
        ("evt_refund_1", "mapped", "pi_friend_1"),
    ]


def test_an_unknown_customer_carrying_a_referral_code_is_signed_up_as_a_friend(
    stripe_app, client, shop, code
):
    event = checkout(
        "evt_checkout_new",
        "friend-new",
        payment_intent="pi_new",
        metadata={"referral_code": code},
        customer_details={"email": "New.Friend@Example.org", "name": "Nova Friend"},
    )
    acknowledged(send(client, event), "mapped")
    card = client.get("/api/v1/customers/friend-new", headers=shop).json
    assert (card["email"], card["name"]) == ("New.Friend@example.org", "Nova Friend")
    assert referral_status(stripe_app, "friend-new") == "converted"
    assert reward_states(stripe_app)
    acknowledged(send(client, event), "duplicate")
    assert count(stripe_app, Customer) == 2


def test_a_click_id_in_the_metadata_attributes_too(stripe_app, client, shop, code):
    from tests.journey_helpers import click

    click_id = click(client, code)
    event = checkout(
        "evt_checkout_click",
        "friend-click",
        payment_intent="pi_click",
        metadata={"click_id": click_id},
    )
    acknowledged(send(client, event), "mapped")
    assert referral_status(stripe_app, "friend-click") == "converted"


def test_the_customer_is_found_by_the_metadata_or_by_a_known_email(stripe_app, client, shop):
    referred_friend(client, shop, "friend-meta", "ref-1")
    enrol(client, shop, "by-email", email="dora.shop@gmail.com")
    by_meta = checkout(
        "evt_meta", None, payment_intent="pi_meta", metadata={"customer_external_id": "friend-meta"}
    )
    acknowledged(send(client, by_meta), "mapped")
    by_email = checkout(
        "evt_email",
        None,
        payment_intent="pi_email",
        customer_details={"email": "DoraShop+x@gmail.com"},
    )
    acknowledged(send(client, by_email), "mapped")
    with stripe_app.app_context():
        owners = dict(
            db.session.execute(
                select(PurchaseRow.order_id, Customer.external_id).join(
                    Customer, Customer.id == PurchaseRow.customer_id
                )
            ).all()
        )
    assert owners == {"pi_meta": "friend-meta", "pi_email": "by-email"}


def test_an_async_payment_succeeding_records_the_purchase(stripe_app, client, shop):
    referred_friend(client, shop, "friend-async", "ref-1")
    unpaid = checkout(
        "evt_async_1", "friend-async", payment_intent="pi_async", payment_status="unpaid"
    )
    acknowledged(send(client, unpaid), "ignored", "not_paid")
    assert count(stripe_app, PurchaseRow) == 0
    paid = checkout("evt_async_2", "friend-async", payment_intent="pi_async")
    paid["type"] = "checkout.session.async_payment_succeeded"
    acknowledged(send(client, paid), "mapped")
    assert purchase(stripe_app, "pi_async").amount_minor == 3000


def test_a_session_without_payment_intent_is_the_order_of_its_own_id(stripe_app, client, shop):
    referred_friend(client, shop, "friend-sub", "ref-1")
    event = checkout("evt_no_pi", "friend-sub", payment_intent=None, id="cs_test_subscription_1")
    acknowledged(send(client, event), "mapped")
    assert purchase(stripe_app, "cs_test_subscription_1") is not None
    refund = refunded("evt_refund_charge", None, 3000, id="ch_unknown_order")
    acknowledged(send(client, refund), "ignored", "not_found")  # the ledger: no such order


def test_sixteen_deliveries_at_once_have_one_effect(stripe_app, shop):
    client = stripe_app.test_client()
    referred_friend(client, shop, "friend-race", "ref-1")
    event = encode(checkout("evt_race", "friend-race", payment_intent="pi_race"))
    refund = encode(refunded("evt_race_refund", "pi_race", 3000))

    def deliver(body):
        def work(i):
            response = send(stripe_app.test_client(), body)
            assert response.status_code == 200, response.get_data(as_text=True)
            return response.json["outcome"]

        return work

    outcomes = together(16, deliver(event))
    assert sorted(outcomes) == ["duplicate"] * 15 + ["mapped"]
    assert count(stripe_app, PurchaseRow) == 1
    rewards = reward_states(stripe_app)
    assert rewards and count(stripe_app, Reward) == len(rewards)
    assert count(stripe_app, PlatformEvent) == 1

    outcomes = together(16, deliver(refund))
    assert sorted(outcomes) == ["duplicate"] * 15 + ["mapped"]
    assert set(reward_states(stripe_app)) == {"reversed"}
    assert purchase(stripe_app, "pi_race").refunded_minor == 3000
    assert count(stripe_app, PlatformEvent) == 2


# --- Stripe's minor units ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "currency, amount_total, amount, minor",
    [
        ("eur", 1999, "19.99", 1999),  # two decimals
        ("jpy", 5000, "5000", 5000),  # zero-decimal: whole yen
        ("huf", 150000, "1500.00", 150000),  # two decimals in Stripe's API (ISO's too)
        ("kwd", 12345, "12.345", 12345),  # three decimals
        ("isk", 50000, "500", 500),  # Stripe's ISK is two-decimal; ISO's none: 500 krónur
    ],
)
def test_stripe_amounts_become_the_right_purchase_amounts(
    stripe_app, client, shop, currency, amount_total, amount, minor
):
    customer = f"buyer-{currency}"
    enrol(client, shop, customer)
    order = f"pi_{currency}"
    event = checkout(
        f"evt_{currency}",
        customer,
        payment_intent=order,
        currency=currency,
        amount_total=amount_total,
    )
    acknowledged(send(client, event), "mapped")
    row = purchase(stripe_app, order)
    assert (row.currency, row.amount_minor) == (currency.upper(), minor)
    assert Decimal(amount) == Decimal(minor).scaleb(-customers_digits(currency))
    card = client.get(f"/api/v1/customers/{customer}", headers=shop)
    assert card.status_code == 200


def customers_digits(currency: str) -> int:
    from referral_service.domain.money import minor_digits

    return minor_digits(currency.upper())


# --- what cannot be mapped --------------------------------------------------------------------


def session_with(**fields):
    return lambda: checkout("evt_odd", "buyer-1", **{"payment_intent": "pi_odd", **fields})


def event_with(**fields):
    def make():
        event = checkout("evt_odd", "buyer-1", payment_intent="pi_odd")
        event.update(fields)
        return event

    return make


UNMAPPABLE = {
    "unused type": (event_with(type="customer.created"), "unused_event_type"),
    "no customer": (
        lambda: checkout("evt_odd", None, customer_details={"email": "nobody@example.org"}),
        "no_customer",
    ),
    "no customer, no email": (
        lambda: checkout("evt_odd", None, customer_details=None),
        "no_customer",
    ),
    "unknown currency": (session_with(currency="xyz"), "unknown_currency"),
    "ISK 550": (session_with(currency="isk", amount_total=550), "unrepresentable_amount"),
    "unpaid": (session_with(payment_status="unpaid"), "not_paid"),
    "payment status a list": (session_with(payment_status=["paid"]), "not_paid"),
    "amount a string": (session_with(amount_total="3000"), "unreadable_amount"),
    "amount negative": (session_with(amount_total=-1), "unreadable_amount"),
    "amount a float": (session_with(amount_total=30.5), "unreadable_amount"),
    "amount null": (session_with(amount_total=None), "unreadable_amount"),
    "amount true": (session_with(amount_total=True), "unreadable_amount"),
    "amount beyond decimals": (session_with(amount_total=10**40), "amount_too_large"),
    "amount beyond the ledger": (session_with(amount_total=10**16), "ledger_refused"),
    "currency a list": (session_with(currency=["usd"]), "unknown_currency"),
    "customer a number": (
        lambda: checkout("evt_odd", 42, payment_intent="pi_odd"),
        "unreadable_customer",
    ),
    "customer too long": (
        lambda: checkout("evt_odd", "c" * 5000, payment_intent="pi_odd"),
        "unreadable_customer",
    ),
    "customer with NUL": (
        lambda: checkout("evt_odd", "buy\x00er", payment_intent="pi_odd"),
        "unreadable_customer",
    ),
    "customer with a slash": (
        lambda: checkout("evt_odd", "../admin", payment_intent="pi_odd"),
        "unreadable_customer",
    ),
    "payment intent a number": (session_with(payment_intent=123), "no_order"),
    "payment intent with NUL": (session_with(payment_intent="pi_\x00"), "no_order"),
    "order id too long": (session_with(payment_intent="p" * 129), "no_order"),
    "no order at all": (session_with(payment_intent=None, id=None), "no_order"),
    "referral code an object": (
        session_with(metadata={"referral_code": {"a": 1}}),
        "unreadable_referral",
    ),
    "click id with controls": (
        session_with(metadata={"click_id": "\x1b[2J"}),
        "unreadable_referral",
    ),
    "data.object a string": (event_with(data={"object": "cs_1"}), "unreadable_event"),
    "data a list": (event_with(data=[1, 2]), "unreadable_event"),
    "type a number": (event_with(type=5), "unreadable_event"),
    "no id": (event_with(id=None), "unreadable_event"),
    "id with NUL": (event_with(id="evt_\x00"), "unreadable_event"),
    "id too long": (event_with(id="e" * 256), "unreadable_event"),
    "type too long": (event_with(type="t" * 101), "unreadable_event"),
    "not an object": (lambda: b"[1, 2, 3]", "unreadable_event"),
    "not JSON": (lambda: b"\xff\xfe not json", "unreadable_event"),
    "JSON null": (lambda: b"null", "unreadable_event"),
    "too deep": (lambda: b"[" * 100_000 + b"]" * 100_000, "unreadable_event"),
    "refund amount null": (
        lambda: refunded("evt_odd", "pi_odd", None),
        "unreadable_amount",
    ),
    "refund of an unknown order": (lambda: refunded("evt_odd", "pi_unknown", 100), "not_found"),
    "refund in an unknown currency": (
        lambda: refunded("evt_odd", "pi_odd", 100, currency="???"),
        "unknown_currency",
    ),
}


@pytest.mark.parametrize("make, reason", UNMAPPABLE.values(), ids=UNMAPPABLE.keys())
def test_an_unmappable_event_is_acknowledged_and_recorded_with_why(
    stripe_app, client, shop, make, reason
):
    enrol(client, shop, "buyer-1")
    customers_before = count(stripe_app, Customer)
    event = make()
    response = send(client, event)
    acknowledged(response, "ignored", reason)
    [(event_id, _type, outcome, why, _order)] = recorded(stripe_app)
    assert (outcome, why) == ("ignored", reason)
    if isinstance(event, bytes) or not isinstance(event.get("id"), str) or event["id"] != "evt_odd":
        assert event_id in ("evt_odd", hashlib.sha256(encode(event)).hexdigest())
    else:
        assert event_id == "evt_odd"
    assert count(stripe_app, PurchaseRow) == 0
    assert count(stripe_app, Customer) == customers_before
    with stripe_app.app_context():
        message = db.session.scalar(select(PlatformEvent.message))
    assert message and message.isprintable()
    acknowledged(send(client, event), "duplicate")  # Stripe's retry of it: nothing more


def test_an_event_without_an_id_is_named_by_its_body(stripe_app, client):
    body = b'{"type": "checkout.session.completed"}'
    acknowledged(send(client, body), "ignored", "unreadable_event")
    assert recorded(stripe_app)[0][0] == hashlib.sha256(body).hexdigest()


def test_odd_optional_fields_never_stop_a_purchase(stripe_app, client, shop):
    enrol(client, shop, "buyer-odd", email="buyer-odd@example.org")
    event = checkout(
        "evt_odd_fields",
        "buyer-odd",
        payment_intent="pi_odd_fields",
        created="yesterday",
        customer_details={"email": ["a@b.c"], "name": "Bad\x00Name" * 100},
        metadata={"referral_code": "", "unrelated": [1, {"x": None}]},
    )
    acknowledged(send(client, event), "mapped")
    assert purchase(stripe_app, "pi_odd_fields") is not None


# --- the mapping alone ------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    [
        "id",
        "payment_intent",
        "client_reference_id",
        "amount_total",
        "amount_refunded",
        "currency",
        "payment_status",
        "customer_details",
        "metadata",
        "created",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(
        [
            "checkout.session.completed",
            "checkout.session.async_payment_succeeded",
            "charge.refunded",
        ]
    ),
    changes=st.dictionaries(FIELDS, JSON, max_size=5),
    metadata=st.dictionaries(
        st.sampled_from(["referral_code", "click_id", "customer_external_id"]), JSON, max_size=3
    ),
)
def test_any_payload_maps_to_an_action_without_raising(kind, changes, metadata):
    thing = {
        "id": "cs_1",
        "payment_intent": "pi_1",
        "client_reference_id": "c-1",
        "amount_total": 100,
        "amount_refunded": 100,
        "currency": "eur",
        "payment_status": "paid",
        "customer_details": {"email": "a@example.org"},
        "metadata": metadata,
        **changes,
    }
    action = action_for({"id": "evt_1", "type": kind, "data": {"object": thing}}, lambda key: [])
    assert isinstance(action, Purchase | Refund | Ignore)
    if isinstance(action, Ignore):
        assert action.reason.replace("_", "").isalpha() and action.reason.islower()
        assert action.message.isprintable()
    else:
        check_order_id(action.order_id)
    if isinstance(action, Purchase):
        customers.check_external_id(action.customer_external_id)
        assert action.amount >= 0


def test_read_event_names_an_unreadable_event_by_its_body():
    body = b"[]"
    event_id, kind, action = read_event(None, body, lambda key: [])
    assert (event_id, kind, action.reason) == (
        hashlib.sha256(body).hexdigest(),
        "unreadable",
        "unreadable_event",
    )


def test_the_stripe_package_is_not_used_by_the_service():
    """No module of the service imports the `stripe` package (the tests' signing helper only);
    `referral_service.integrations.stripe` is the service's own module."""
    source = Path(__file__).resolve().parents[1] / "referral_service"
    for path in source.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            assert not any(name.split(".")[0] == "stripe" for name in names), path


def test_a_refund_in_another_currency_than_the_order_is_not_applied(stripe_app, client, shop):
    referred_friend(client, shop, "friend-1", "ref-1")
    acknowledged(send(client, checkout("evt_c", "friend-1", payment_intent="pi_1")), "mapped")
    in_yen = refunded("evt_r", "pi_1", 3000, currency="jpy")
    acknowledged(send(client, in_yen), "ignored", "currency_mismatch")
    assert purchase(stripe_app, "pi_1").refunded_minor == 0
    assert "reversed" not in reward_states(stripe_app)

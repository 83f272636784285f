"""Shopify's webhooks in (integrations/shopify.py): signatures as Shopify documents them, the real
payloads of Shopify's API reference mapped end to end, each event applied once however often and
however concurrently it comes, and hostile payloads acknowledged and recorded, never an error."""

import base64
import copy
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from referral_service.domain.platforms import Ignore, Purchase, Redact, Refund
from referral_service.extensions import db
from referral_service.integrations.shopify import action_of
from referral_service.models import AuditRecord, Customer, Referral, Reward, utcnow
from referral_service.models import Purchase as PurchaseRow
from referral_service.models.platform import PlatformEvent
from tests.conftest import IN_CI
from tests.journey_helpers import ago, click, count, enrol, referred_friend, set_program, together

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "webhooks"
URL = "/integrations/shopify/webhook"
SECRET = "shpss_test_client_secret_0123456789"
NEW_SECRET = "shpss_rotated_client_secret_abcdef"
ORDER_ID = "450789469"  # the fixture's order, which its refund names


def shopify_hmac(body: bytes, secret: str = SECRET) -> str:
    """As Shopify's documentation shows: base64 of the HMAC-SHA256 digest of the raw body."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def encoded(payload) -> bytes:
    """A body as Shopify sends one: UTF-8 JSON, non-ASCII characters as they are (escaped only
    where UTF-8 cannot carry them: a lone surrogate)."""
    try:
        return json.dumps(payload, ensure_ascii=False, indent=2).encode()
    except UnicodeEncodeError:
        return json.dumps(payload, indent=2).encode()


def send(client, topic: str, payload=None, event_id="evt-1", secret=SECRET, body=None, **headers):
    """POST a webhook signed with `secret` (None: unsigned); `body` replaces the payload's bytes."""
    body = encoded(payload) if body is None else body
    sent = {"X-Shopify-Topic": topic, "X-Shopify-Shop-Domain": "shop.myshopify.com"}
    if event_id is not None:
        sent["X-Shopify-Event-Id"] = event_id
    if secret is not None:
        sent["X-Shopify-Hmac-SHA256"] = shopify_hmac(body, secret)
    sent.update(headers)
    return client.post(URL, data=body, headers=sent, content_type="application/json")


def fixture_bytes(name: str) -> bytes:
    """A real payload from the shared fixtures (see SOURCES.md there), byte for byte; the test
    is skipped without it (failed under CI=true)."""
    path = FIXTURES / name
    if not path.exists():
        message = f"the webhook fixture {name} is not at {path}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path.read_bytes()


def fixture(name: str) -> dict:
    return json.loads(fixture_bytes(name))


def paid_order(customer_id: str, **changes) -> dict:
    """The fixture's order, paid by `customer_id` an hour ago, with `changes` on top."""
    order = fixture("shopify-orders-paid.json")
    order["customer"]["id"] = int(customer_id) if customer_id.isdigit() else customer_id
    order["processed_at"] = (utcnow() - timedelta(hours=1)).astimezone(UTC).isoformat()
    order.update(changes)
    return order


def refund_of(order_id: str, *amounts: str) -> dict:
    """The fixture's refund of `order_id`, its transaction repeated with each of `amounts`."""
    refund = fixture("shopify-refunds-create.json")
    refund["order_id"] = int(order_id)
    model = refund["transactions"][0]
    refund["transactions"] = [
        {**model, "id": model["id"] + i, "amount": a} for i, a in enumerate(amounts)
    ]
    return refund


def recorded(app) -> list[tuple]:
    with app.app_context():
        rows = db.session.execute(
            select(
                PlatformEvent.platform,
                PlatformEvent.event_id,
                PlatformEvent.type,
                PlatformEvent.outcome,
                PlatformEvent.reason,
            ).order_by(PlatformEvent.id)
        ).all()
    return [tuple(row) for row in rows]


def referral_status(app, friend: str) -> str:
    with app.app_context():
        return db.session.scalar(
            select(Referral.status)
            .join(Customer, Customer.id == Referral.friend_id)
            .where(Customer.external_id == friend)
        )


@pytest.fixture
def shopify(app):
    """The app with the Shopify client secret set."""
    app.config["SHOPIFY_WEBHOOK_SECRETS"] = SECRET
    return app


@pytest.fixture
def usd(client, admin):
    """The program in US dollars, the fixtures' currency."""
    set_program(client, admin, currency="USD")


def acknowledged(response, outcome: str, reason=None) -> None:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json == {"received": True, "outcome": outcome, "reason": reason}


# --- signatures -------------------------------------------------------------------------------


def test_the_published_order_signed_as_shopify_documents_is_accepted(shopify, client, usd):
    """The fixture's bytes exactly as published (UTF-8, `Léon, Noël`), signed independently."""
    raw = fixture_bytes("shopify-orders-paid.json")
    assert "Noël".encode() in raw
    response = send(client, "orders/paid", body=raw)
    acknowledged(response, "mapped")
    # the signature is of the bytes, not of the JSON they hold: the same order re-encoded fails
    compact = json.dumps(json.loads(raw), separators=(",", ":")).encode()
    assert json.loads(compact) == json.loads(raw)
    resent = client.post(
        URL,
        data=compact,
        headers={"X-Shopify-Topic": "orders/paid", "X-Shopify-Hmac-SHA256": shopify_hmac(raw)},
        content_type="application/json",
    )
    assert resent.status_code == 401
    assert recorded(shopify) == [("shopify", "evt-1", "orders/paid", "mapped", None)]


@pytest.mark.parametrize(
    "case",
    ["tampered", "wrong secret", "no header", "empty header", "hex instead of base64"],
)
def test_a_bad_signature_is_refused_and_records_nothing(shopify, client, case):
    order = paid_order("207119551")
    body = encoded(order)
    headers = {"X-Shopify-Topic": "orders/paid", "X-Shopify-Event-Id": "evt-bad"}
    signature = {
        "tampered": shopify_hmac(body),
        "wrong secret": shopify_hmac(body, "shpss_someone_else"),
        "no header": None,
        "empty header": "",
        "hex instead of base64": hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
    }[case]
    if signature is not None:
        headers["X-Shopify-Hmac-SHA256"] = signature
    if case == "tampered":
        body = body.replace(b'"199.65"', b'"1.00"')
    response = client.post(URL, data=body, headers=headers, content_type="application/json")
    assert response.status_code == 401
    assert response.json["error"]["code"] == "invalid_signature"
    assert recorded(shopify) == []
    assert count(shopify, Customer) == 0 and count(shopify, PurchaseRow) == 0


@pytest.mark.parametrize("setting", [None, "", " , "])
def test_no_secret_configured_accepts_nothing(app, client, setting):
    app.config["SHOPIFY_WEBHOOK_SECRETS"] = setting
    response = send(client, "orders/paid", paid_order("207119551"))
    assert response.status_code == 401
    assert "SHOPIFY_WEBHOOK_SECRETS" in response.json["error"]["message"]
    assert recorded(app) == [] and count(app, Customer) == 0


def test_either_secret_of_a_rotation_verifies(app, client):
    app.config["SHOPIFY_WEBHOOK_SECRETS"] = f"{NEW_SECRET},{SECRET}"
    acknowledged(
        send(client, "shop/update", {}, "evt-old", secret=SECRET), "ignored", "unused_topic"
    )
    acknowledged(
        send(client, "shop/update", {}, "evt-new", secret=NEW_SECRET), "ignored", "unused_topic"
    )
    assert send(client, "shop/update", {}, "evt-x", secret="shpss_other").status_code == 401
    assert [row[1] for row in recorded(app)] == ["evt-old", "evt-new"]


def test_the_event_is_named_by_its_event_id_else_its_webhook_id_else_its_body(shopify, client):
    send(client, "shop/update", {"n": 1}, event_id="e-1", **{"X-Shopify-Webhook-Id": "w-1"})
    send(client, "shop/update", {"n": 2}, event_id=None, **{"X-Shopify-Webhook-Id": "w-2"})
    body = encoded({"n": 3})
    send(client, "shop/update", event_id=None, body=body)
    again = send(client, "shop/update", event_id=None, body=body)
    acknowledged(again, "duplicate")
    ids = [row[1] for row in recorded(shopify)]
    assert ids == ["e-1", "w-2", hashlib.sha256(body).hexdigest()]


# --- the real payloads end to end ----------------------------------------------------------


def test_a_paid_order_of_a_referred_friend_converts_once(shopify, client, shop, usd):
    referred_friend(client, shop, friend="207119551", occurred_at=ago(days=1))
    order = paid_order("207119551")
    acknowledged(send(client, "orders/paid", order, "evt-paid"), "mapped")
    acknowledged(send(client, "orders/paid", order, "evt-paid"), "duplicate")
    assert referral_status(shopify, "207119551") == "converted"
    assert count(shopify, Reward) == 1
    with shopify.app_context():
        purchase = db.session.scalar(select(PurchaseRow))
        assert (purchase.order_id, purchase.amount_minor, purchase.currency) == (
            ORDER_ID,
            19965,  # current_total_price, the order as it stands
            "USD",
        )
        assert purchase.occurred_at == datetime.fromisoformat(order["processed_at"])
    assert recorded(shopify) == [("shopify", "evt-paid", "orders/paid", "mapped", None)]


def test_a_refund_of_the_whole_order_reverses_the_reward_once(shopify, client, shop, usd):
    referred_friend(client, shop, friend="207119551", occurred_at=ago(days=1))
    acknowledged(send(client, "orders/paid", paid_order("207119551"), "evt-paid"), "mapped")
    refund = refund_of(ORDER_ID, "150.00", "49.65")  # two successful transactions, in full
    refund["transactions"].append({**refund["transactions"][0], "id": 1, "status": "failure"})
    refund["transactions"].append({**refund["transactions"][0], "id": 2, "kind": "sale"})
    acknowledged(send(client, "refunds/create", refund, "evt-refund"), "mapped")
    acknowledged(send(client, "refunds/create", refund, "evt-refund"), "duplicate")
    with shopify.app_context():
        assert db.session.scalar(select(Reward.status)) == "reversed"
        assert db.session.scalar(select(PurchaseRow.refunded_minor)) == 19965
    # the refund reported again under another event id: the refund's own id makes it a replay
    acknowledged(send(client, "refunds/create", refund, "evt-refund-again"), "mapped")
    with shopify.app_context():
        assert db.session.scalar(select(PurchaseRow.refunded_minor)) == 19965


def test_the_fixtures_refund_as_published_is_partial(shopify, client, shop, usd):
    referred_friend(client, shop, friend="207119551", occurred_at=ago(days=1))
    send(client, "orders/paid", paid_order("207119551"), "evt-paid")
    refund = fixture("shopify-refunds-create.json")  # 209.00 of an order now at 199.65
    response = send(client, "refunds/create", refund, "evt-refund")
    acknowledged(response, "ignored", "ledger_refused")  # more than the order: the ledger says no
    refund["transactions"][0]["amount"] = "9.00"
    acknowledged(send(client, "refunds/create", refund, "evt-refund-2"), "mapped")
    with shopify.app_context():
        assert db.session.scalar(select(PurchaseRow.refunded_minor)) == 900
        assert db.session.scalar(select(Reward.status)) != "reversed"


def test_an_unknown_customer_with_the_code_in_a_cart_attribute_is_signed_up_and_converts(
    shopify, client, shop, usd
):
    code = enrol(client, shop, "ref-1")
    attributes = [{"name": "colour", "value": "green"}, {"name": "referral_code", "value": code}]
    order = paid_order("900000001", note_attributes=attributes, discount_codes=[])
    acknowledged(send(client, "orders/paid", order, "evt-new"), "mapped")
    friend = client.get("/api/v1/customers/900000001", headers=shop).json
    assert (friend["email"], friend["name"]) == ("bob.norman@mail.example.com", "Bob Norman")
    assert referral_status(shopify, "900000001") == "converted"
    assert count(shopify, Reward) == 1


def test_a_referral_code_typed_as_a_discount_code_attributes(shopify, client, shop, usd):
    code = enrol(client, shop, "ref-1")
    typed = "-".join(code[i : i + 4] for i in range(0, 16, 4)).lower()  # as a person types it
    discounts = [{"code": "TENOFF", "amount": "10.00", "type": "fixed_amount"}]
    discounts.append({"code": typed, "amount": "5.00", "type": "fixed_amount"})
    order = paid_order("900000002", discount_codes=discounts)
    acknowledged(send(client, "orders/paid", order, "evt-discount"), "mapped")
    assert referral_status(shopify, "900000002") == "converted"
    assert count(shopify, Reward) == 1


def test_a_click_id_in_a_hidden_cart_attribute_attributes(shopify, client, shop, usd):
    code = enrol(client, shop, "ref-1")
    click_id = click(client, code)
    hidden = [{"name": "_click_id", "value": click_id}]
    # paid after the click (the sign-up the order brings is dated by it)
    order = paid_order("900000003", note_attributes=hidden, processed_at=utcnow().isoformat())
    acknowledged(send(client, "orders/paid", order, "evt-click"), "mapped")
    assert referral_status(shopify, "900000003") == "converted"


def test_an_unknown_customer_without_a_referral_buys_unreferred(shopify, client, usd):
    order = paid_order("900000004", discount_codes=[{"code": "A" * 16}])  # not a signed code
    acknowledged(send(client, "orders/paid", order, "evt-walk-in"), "mapped")
    assert count(shopify, PurchaseRow) == 1 and count(shopify, Reward) == 0
    assert count(shopify, Referral) == 0


def test_a_test_order_is_mapped_like_any_other(shopify, client, shop, usd):
    referred_friend(client, shop, friend="207119551", occurred_at=ago(days=1))
    acknowledged(send(client, "orders/paid", paid_order("207119551", test=True)), "mapped")
    assert count(shopify, Reward) == 1


@pytest.mark.parametrize("topic", ["orders/paid", "refunds/create"])
def test_sixteen_deliveries_of_one_event_at_once_have_one_effect(shopify, client, shop, usd, topic):
    code = enrol(client, shop, "ref-1")
    attributes = [{"name": "referral_code", "value": code}]
    order = paid_order("900000005", note_attributes=attributes)
    if topic == "refunds/create":
        acknowledged(send(client, "orders/paid", order, "evt-paid"), "mapped")
    body = encoded(order if topic == "orders/paid" else refund_of(ORDER_ID, "199.65"))

    def deliver(_):
        return send(shopify.test_client(), topic, body=body, event_id="evt-race")

    responses = together(16, deliver)
    assert all(response.status_code == 200 for response in responses)
    outcomes = sorted(response.json["outcome"] for response in responses)
    assert outcomes == ["duplicate"] * 15 + ["mapped"]
    assert count(shopify, PurchaseRow) == 1 and count(shopify, Reward) == 1
    assert count(shopify, PlatformEvent, PlatformEvent.event_id == "evt-race") == 1
    assert count(shopify, Customer) == 2  # the referrer and the friend, signed up once
    if topic == "refunds/create":
        with shopify.app_context():
            assert db.session.scalar(select(PurchaseRow.refunded_minor)) == 19965
            assert db.session.scalar(select(Reward.status)) == "reversed"


def test_a_redaction_erases_the_customer_as_customers_erase_does(shopify, client, shop):
    enrol(client, shop, "191167", "John.Smith@Example.com")
    payload = {
        "shop_id": 954889,
        "shop_domain": "shop.myshopify.com",
        "customer": {"id": 191167, "email": "john.smith@example.com", "phone": "555-625-1199"},
        "orders_to_redact": [299938, 280263, 220458],
    }
    response = send(client, "customers/redact", payload, "evt-redact")
    acknowledged(response, "mapped")
    shown = client.get("/api/v1/customers/191167", headers=shop).json
    assert (shown["email"], shown["name"], shown["erased_at"] is not None) == (None, None, True)
    with shopify.app_context():
        record = db.session.scalar(select(PlatformEvent))
        assert record.customer_external_id == "191167"
        assert record.message == "Customer 191167 erased."
        erased = db.session.scalar(
            select(AuditRecord).where(AuditRecord.action == "customer.erase")
        )
        assert (erased.actor, erased.subject_type) == ("platform:shopify", "customer")
    # the same request again (another event) changes nothing; an unknown customer is not found
    acknowledged(send(client, "customers/redact", payload, "evt-redact-2"), "mapped")
    payload["customer"]["id"] = 404
    acknowledged(send(client, "customers/redact", payload, "evt-redact-3"), "ignored", "not_found")


# --- payloads that cannot be mapped ----------------------------------------------------------


def _set(path: str, value):
    """A change to a payload: `path` is dotted keys, e.g. `customer.id`."""

    def change(payload):
        *parents, last = path.split(".")
        node = payload
        for key in parents:
            node = node[key]
        node[last] = value
        return payload

    return change


def _drop(key: str):
    def change(payload):
        payload.pop(key)
        return payload

    return change


ORDER_CASES = [
    ("guest checkout", _set("customer", None), "no_customer"),
    ("customer a string", _set("customer", "207119551"), "no_customer"),
    ("customer id null", _set("customer.id", None), "no_customer"),
    ("customer id a list", _set("customer.id", [1, 2]), "no_customer"),
    ("customer id a float", _set("customer.id", 2.5), "no_customer"),
    ("customer id true", _set("customer.id", True), "no_customer"),
    ("customer id huge", _set("customer.id", "9" * 5000), "no_customer"),
    ("customer id with NUL", _set("customer.id", "12\x0034"), "no_customer"),
    ("customer id negative", _set("customer.id", -5), "no_customer"),
    ("order id null", _set("id", None), "unreadable_order"),
    ("order id an object", _set("id", {"$gt": 1}), "unreadable_order"),
    ("order id with a newline", _set("id", "45\n0"), "unreadable_order"),
    ("order id huge", _set("id", 10**200), "unreadable_order"),
    ("amount a number", _set("current_total_price", 199.65), "unreadable_amount"),
    ("amount with an exponent", _set("current_total_price", "1e3"), "unreadable_amount"),
    ("amount negative", _set("current_total_price", "-5.00"), "unreadable_amount"),
    ("amount with spaces", _set("current_total_price", " 5.00"), "unreadable_amount"),
    ("amount NaN", _set("current_total_price", "NaN"), "unreadable_amount"),
    ("amount huge", _set("current_total_price", "9" * 100), "unreadable_amount"),
    ("amount in Arabic digits", _set("current_total_price", "١٢"), "unreadable_amount"),
    ("amount finer than cents", _set("current_total_price", "199.655"), "unrepresentable_amount"),
    (
        "no amount at all",
        lambda o: {**o, "current_total_price": None, "total_price": None},
        "unreadable_amount",
    ),
    ("currency unknown", _set("currency", "XYZ"), "unknown_currency"),
    ("currency withdrawn", _set("currency", "DEM"), "unknown_currency"),
    ("currency a number", _set("currency", 840), "unknown_currency"),
    ("currency null", _set("currency", None), "unknown_currency"),
    ("time without offset", _set("processed_at", "2026-01-10T11:00:00"), "unreadable_time"),
    ("time a number", _set("processed_at", 1700000000), "unreadable_time"),
    ("time nonsense", _set("processed_at", "yesterday"), "unreadable_time"),
    ("time of year 1", _set("processed_at", "0001-01-01T00:00:00+01:00"), "unreadable_time"),
    ("time before 2000", _set("processed_at", "1999-12-31T00:00:00Z"), "ledger_refused"),
]


def test_an_order_that_cannot_be_mapped_is_acknowledged_and_recorded(shopify, client, usd):
    """Each case of ORDER_CASES in turn (one app for all: each event recorded, none mapped)."""
    for number, (name, change, reason) in enumerate(ORDER_CASES):
        order = change(paid_order("207119551"))
        response = send(client, "orders/paid", order, f"evt-{number}")
        assert (response.status_code, response.json["reason"]) == (200, reason), name
        acknowledged(response, "ignored", reason)
        acknowledged(send(client, "orders/paid", order, f"evt-{number}"), "duplicate")
    expected = [("ignored", reason) for _, _, reason in ORDER_CASES]
    assert [row[3:] for row in recorded(shopify)] == expected
    assert count(shopify, PurchaseRow) == 0 and count(shopify, Customer) == 0


HOSTILE_OPTIONAL = [
    ("email null, the customer's used", _set("email", None)),
    ("name with control characters", _set("customer.first_name", "Bob\x1b[31m")),
    ("name a number", _set("customer.last_name", 42)),
    ("name huge", _set("customer.first_name", "B" * 100_000)),
    ("note attributes not a list", _set("note_attributes", {"referral_code": "X"})),
    (
        "note attribute value a list",
        _set("note_attributes", [{"name": "referral_code", "value": []}]),
    ),
    ("note attribute name a list", _set("note_attributes", [{"name": ["referral_code"]}])),
    ("note attributes of strings", _set("note_attributes", ["referral_code", None, 3])),
    ("click id with NUL", _set("note_attributes", [{"name": "click_id", "value": "ab\x00cd"}])),
    (
        "referral code huge",
        _set("note_attributes", [{"name": "referral_code", "value": "Z" * 10**5}]),
    ),
    ("discount codes a string", _set("discount_codes", "TENOFF")),
    ("discount code null", _set("discount_codes", [{"code": None}, None, 7])),
    ("lone surrogate in a name", _set("customer.first_name", "\ud800")),
]


def test_a_hostile_optional_field_is_left_out_and_the_order_maps(shopify, client, usd):
    """Each case of HOSTILE_OPTIONAL: a customer and an order of its own, mapped."""
    for number, (name, change) in enumerate(HOSTILE_OPTIONAL):
        order = change(paid_order(f"90000{number:04d}", id=number + 1))
        response = send(client, "orders/paid", order, f"evt-{number}")
        assert (response.status_code, response.json["outcome"]) == (200, "mapped"), name
    assert count(shopify, PurchaseRow) == len(HOSTILE_OPTIONAL)
    with shopify.app_context():
        emails = set(db.session.scalars(select(Customer.email)))
        names = set(db.session.scalars(select(Customer.name)))
    assert emails == {"bob.norman@mail.example.com"}
    assert names == {"Bob Norman", "Bob", "Norman"}  # the unreadable part left out


def test_an_unknown_customer_without_a_valid_email_is_ignored(shopify, client, usd):
    order = paid_order("900000007", email="not an address")
    order["customer"]["email"] = "bob\x00@mail.example.com"
    acknowledged(send(client, "orders/paid", order), "ignored", "no_email")
    assert count(shopify, Customer) == 0


REFUND_CASES = [
    ("restock only", lambda r: {**r, "transactions": []}, "no_refunded_amount"),
    ("transactions null", lambda r: {**r, "transactions": None}, "no_refunded_amount"),
    (
        "transactions an object",
        lambda r: {**r, "transactions": {"amount": "5"}},
        "no_refunded_amount",
    ),
    (
        "a failed refund",
        lambda r: {**r, "transactions": [{**r["transactions"][0], "status": "failure"}]},
        "no_refunded_amount",
    ),
    (
        "amount a number",
        lambda r: {**r, "transactions": [{**r["transactions"][0], "amount": 5}]},
        "unreadable_amount",
    ),
    (
        "amount finer than cents",
        lambda r: {**r, "transactions": [{**r["transactions"][0], "amount": "5.001"}]},
        "unrepresentable_amount",
    ),
    (
        "currency a list",
        lambda r: {**r, "transactions": [{**r["transactions"][0], "currency": ["USD"]}]},
        "unknown_currency",
    ),
    (
        "two currencies",
        lambda r: {
            **r,
            "transactions": [r["transactions"][0], {**r["transactions"][0], "currency": "EUR"}],
        },
        "unknown_currency",
    ),
    (
        "order id missing",
        lambda r: {k: v for k, v in r.items() if k != "order_id"},
        "unreadable_order",
    ),
    ("refund id an object", lambda r: {**r, "id": {}}, "unreadable_refund"),
    ("an order never recorded", lambda r: {**r, "order_id": 1}, "not_found"),
]


def test_a_refund_that_cannot_be_mapped_is_acknowledged_and_recorded(shopify, client, shop, usd):
    """Each case of REFUND_CASES in turn, on one converted order that none of them touches."""
    referred_friend(client, shop, friend="207119551", occurred_at=ago(days=1))
    acknowledged(send(client, "orders/paid", paid_order("207119551"), "evt-paid"), "mapped")
    for number, (name, change, reason) in enumerate(REFUND_CASES):
        refund = change(refund_of(ORDER_ID, "199.65"))
        response = send(client, "refunds/create", refund, f"evt-{number}")
        assert (response.status_code, response.json["reason"]) == (200, reason), name
        acknowledged(response, "ignored", reason)
    expected = [("ignored", reason) for _, _, reason in REFUND_CASES]
    assert [row[3:] for row in recorded(shopify)[1:]] == expected
    with shopify.app_context():
        assert db.session.scalar(select(PurchaseRow.refunded_minor)) == 0
        assert db.session.scalar(select(Reward.status)) != "reversed"


BODIES = [
    ("a list", b"[1, 2]", "unreadable_event"),
    ("a string", b'"orders/paid"', "unreadable_event"),
    ("not JSON", b"{'id': 1}", "unreadable_event"),
    ("empty", b"", "unreadable_event"),
    ("not UTF-8", b'{"id": "\xff\xfe"}', "unreadable_event"),
    ("nested too deep", b"[" * 100_000 + b"]" * 100_000, "unreadable_event"),
    ("a number too long", b'{"id": ' + b"9" * 5000 + b"}", "unreadable_event"),
    ("an empty object", b"{}", "unreadable_order"),
]


def test_a_signed_body_that_is_no_order_is_acknowledged(shopify, client):
    for number, (name, body, reason) in enumerate(BODIES):
        response = send(client, "orders/paid", body=body, event_id=f"evt-{number}")
        assert (response.status_code, response.json["reason"]) == (200, reason), name
    assert [row[3:] for row in recorded(shopify)] == [("ignored", r) for _, _, r in BODIES]


def test_other_topics_and_odd_headers_are_acknowledged(shopify, client):
    for number, (sent, topic) in enumerate(
        [
            ("products/update", "products/update"),
            ("", "unreadable"),
            ("orders/paid\x7f", "unreadable"),
            ("t" * 300, "unreadable"),
        ]
    ):
        response = send(client, sent, {"id": 1}, event_id=f"evt-{number}")
        assert response.status_code == 200
        assert recorded(shopify)[-1][1:4] == (f"evt-{number}", topic, "ignored")
    # an unprintable event id: the body names the event
    body = encoded({"id": 2})
    acknowledged(send(client, "orders/paid", body=body, event_id="e\x01"), "ignored", "no_customer")
    assert recorded(shopify)[-1][1] == hashlib.sha256(body).hexdigest()


def test_a_redaction_naming_no_customer_is_ignored(shopify, client):
    for i, payload in enumerate([{}, {"customer": None}, {"customer": {"id": "a/b"}}]):
        response = send(client, "customers/redact", payload, f"evt-{i}")
        acknowledged(response, "ignored", "no_customer")


# --- the mapping alone ------------------------------------------------------------------------


def never_a_code(_text):
    return None


def test_the_mapping_of_the_fixtures():
    order = fixture("shopify-orders-paid.json")
    purchase = action_of("orders/paid", order, never_a_code)
    assert purchase == Purchase(
        ORDER_ID,
        "207119551",
        Decimal("199.65"),
        "USD",
        occurred_at=purchase.occurred_at,
        email="bob.norman@mail.example.com",
        name="Bob Norman",
    )
    assert purchase.occurred_at.isoformat() == "2008-01-10T16:00:00+00:00"
    order["current_total_price"] = None  # else the total before refunds
    assert action_of("orders/paid", order, never_a_code).amount == Decimal("598.94")
    order["processed_at"] = None  # else the order's creation
    assert action_of("orders/paid", order, never_a_code).occurred_at.hour == 16
    refund = action_of("refunds/create", fixture("shopify-refunds-create.json"))
    assert refund == Refund(
        ORDER_ID, refund_id="509562969", amount=Decimal("209.00"), currency="USD"
    )
    assert action_of("customers/redact", {"customer": {"id": 7}}) == Redact("7")
    assert action_of("app/uninstalled", order).reason == "unused_topic"


def test_a_note_attribute_code_comes_before_a_discount_code():
    order = fixture("shopify-orders-paid.json")
    order["note_attributes"] = [{"name": "referral_code", "value": "note-code"}]
    order["discount_codes"] = [{"code": "discount-code"}]
    codes = {"note-code": "A" * 16, "discount-code": "B" * 16}
    assert action_of("orders/paid", order, codes.get).referral_code == "A" * 16
    order["note_attributes"] = []
    assert action_of("orders/paid", order, codes.get).referral_code == "B" * 16
    # a note attribute code that does not verify: the discount code's, else the typed one
    order["note_attributes"] = [{"name": "referral_code", "value": "0000-0000-0000-0000"}]
    assert action_of("orders/paid", order, codes.get).referral_code == "B" * 16
    order["discount_codes"] = []
    assert action_of("orders/paid", order, codes.get).referral_code == "0" * 16


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
KEYS = [
    "id",
    "order_id",
    "customer",
    "email",
    "currency",
    "current_total_price",
    "total_price",
    "processed_at",
    "created_at",
    "note_attributes",
    "discount_codes",
    "transactions",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    topic=st.sampled_from(["orders/paid", "refunds/create", "customers/redact", "x"]),
    payload=st.dictionaries(st.sampled_from(KEYS), JSON, max_size=8),
    customer=st.dictionaries(
        st.sampled_from(["id", "email", "first_name", "last_name"]), JSON, max_size=4
    ),
)
def test_any_payload_maps_to_an_action_and_never_raises(topic, payload, customer):
    payload = copy.deepcopy(payload)
    if "customer" in payload and isinstance(payload["customer"], dict):
        payload["customer"].update(customer)
    action = action_of(topic, payload, never_a_code)
    assert isinstance(action, Purchase | Refund | Redact | Ignore)
    for value in (getattr(action, "order_id", None), getattr(action, "customer_external_id", None)):
        assert value is None or (isinstance(value, str) and 0 < len(value) <= 128)


def test_a_mistyped_code_in_a_cart_attribute_says_invalid_code(shopify, client, shop, usd):
    enrol(client, shop, "ref-1")
    attributes = [{"name": "referral_code", "value": "BADCODE"}]
    order = paid_order("900000002", note_attributes=attributes, discount_codes=[])
    response = send(client, "orders/paid", order, "evt-typo")
    acknowledged(response, "mapped")
    with shopify.app_context():
        message = db.session.scalar(select(PlatformEvent.message))
    assert "not attributed (invalid_code)" in message

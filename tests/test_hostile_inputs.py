"""A table of hostile requests across the endpoints: each is a 4xx in the envelope, writing nothing.

The database holds a small journey first (a referrer, two converted friends, rewards in several
states and payout 1), so that the hostile requests name things that exist. Every table is read
whole before and after each request, and must not change.
"""

import json
import unicodedata
from collections import Counter
from typing import NamedTuple
from urllib.parse import quote, unquote, urlencode, urlsplit

import pytest
from flask import url_for
from sqlalchemy import select
from werkzeug.routing import BuildError

from referral_service.admin import settings as settings_form
from referral_service.domain import audit, rewards, stats, timeline, webhooks
from referral_service.domain.unit import unit_of_work
from referral_service.extensions import db
from referral_service.models import ApiKey, Base, Click, OutboxEvent, Referral, utcnow
from tests import test_webhooks
from tests.journey_helpers import rewards_in_every_state
from tests.test_admin_console import PASSWORD, sign_in, signed_in_as, token


class Hostile(NamedTuple):
    """A request and what it must get: a status and, for validation, the field named."""

    method: str
    path: str
    body: object = None  # sent as JSON (surrogates escaped as `\\ud800`, as JSON allows)
    status: int = 422
    field: str | None = None
    raw: bytes | None = None  # sent as it is, as application/json
    headers: dict | None = None
    key: str = "admin"  # which key: admin, shop or none


SIGNUP = {"external_id": "new-friend", "email": "new@example.com"}
PURCHASE = {
    "order_id": "o-new",
    "customer_external_id": "friend-1",
    "amount": "10.00",
    "currency": "EUR",
}
DEEP = b"[" * 100_000 + b"]" * 100_000
LONG_INT = b'{"reward_ids": [' + b"9" * 5000 + b"]}"
# the referrer's code and ids of the journey, filled in by the test (ids differ by database)
CODE = "{code}"


def signup(field: str, value, expected_field: str | None = None, status: int = 422) -> Hostile:
    return Hostile("post", "/api/v1/signups", {**SIGNUP, field: value}, status, expected_field)


def purchase(field: str, value, expected_field: str | None = None) -> Hostile:
    return Hostile("post", "/api/v1/purchases", {**PURCHASE, field: value}, 422, expected_field)


def program(change: dict, field: str | None) -> Hostile:
    return Hostile("patch", "/api/v1/program", change, 422, field)


def query(path: str, field: str | None, key: str = "admin") -> Hostile:
    return Hostile("get", path, status=422, field=field, key=key)


TABLE = {
    # --- sign-ups: identifiers, text, types, times, the body as a whole
    "signup NUL in external_id": signup("external_id", "a\x00b", "external_id"),
    "signup external_id of 129": signup("external_id", "x" * 129, "external_id"),
    "signup external_id padded": signup("external_id", " friend ", "external_id"),
    "signup slash in external_id": signup("external_id", "a/b", "external_id"),
    "signup RTL override in id": signup("external_id", "ab\u202ecd", "external_id"),
    "signup email as a list": signup("email", ["a@example.com"], "email"),
    "signup email on .test": signup("email", "a@example.test", "email"),
    "signup email of 300": signup("email", "a" * 290 + "@example.com", "email"),
    "signup lone surrogate name": signup("name", "Ada\ud800", "name"),
    "signup isolate in name": signup("name", "Ada\u2067x\u2069", "name"),
    "signup tags smuggled in name": signup("name", "Ada\U000e0041\U000e0042", "name"),
    "signup line break in name": signup("name", "Ada\nLovelace", "name"),
    "signup lone surrogate agent": signup("user_agent", "\udfff", "user_agent"),
    "signup lone surrogate code": signup("referral_code", "\ud800", "referral_code"),
    "signup not an IP": signup("ip", "999.1.1.1", "ip"),
    "signup locale nonsense": signup("locale", "xx-QQ-nonsense", "locale"),
    "signup unknown field": signup("is_admin", True, "is_admin"),
    "signup naive time": signup("occurred_at", "2026-01-01T10:00:00", "occurred_at"),
    "signup time before 2000": signup("occurred_at", "1999-12-31T23:59:59Z", "occurred_at"),
    "signup time past year 9999": signup("occurred_at", "9999-12-31T23:59:59-05:00", "occurred_at"),
    "signup time far ahead": signup("occurred_at", "2099-01-01T00:00:00Z", "occurred_at"),
    "signup body is an array": Hostile("post", "/api/v1/signups", [SIGNUP], 422, "_schema"),
    "signup body is a string": Hostile("post", "/api/v1/signups", "hello", 422, "_schema"),
    "signup nested 100000 deep": Hostile("post", "/api/v1/signups", status=400, raw=DEEP),
    "signup not JSON": Hostile("post", "/api/v1/signups", status=400, raw=b'{"email": '),
    "signup invalid UTF-8": Hostile(
        "post", "/api/v1/signups", status=400, raw=b'{"external_id": "\xff\xfe"}'
    ),
    "signup 2 MB body": Hostile(
        "post", "/api/v1/signups", status=413, raw=json.dumps({"x": "y" * 2_100_000}).encode()
    ),
    # --- purchases: money and currencies
    "purchase amount NaN": purchase("amount", "NaN", "amount"),
    "purchase amount Infinity": purchase("amount", "Infinity", "amount"),
    "purchase amount exponent": purchase("amount", "1e3", "amount"),
    "purchase amount float": purchase("amount", 10.5, "amount"),
    "purchase amount over-precise": purchase("amount", "10.001", "amount"),
    "purchase amount negative": purchase("amount", "-1.00", "amount"),
    "purchase amount 10^12": purchase("amount", "1000000000000", "amount"),
    "purchase amount full-width": purchase("amount", "\uff11\uff10", "amount"),
    "purchase amount with spaces": purchase("amount", " 10.00 ", "amount"),
    "purchase currency unknown": purchase("currency", "XXX", "currency"),
    "purchase currency lower case": purchase("currency", "eur", "currency"),
    "purchase empty order_id": purchase("order_id", "", "order_id"),
    "purchase customer id NUL": purchase(
        "customer_external_id", "friend-1\x00", "customer_external_id"
    ),
    "purchase non-ASCII idempotency key": Hostile(
        "post",
        "/api/v1/purchases",
        PURCHASE,
        422,
        "Idempotency-Key",
        None,
        {"Idempotency-Key": "k\xe9y"},
    ),
    "purchase huge integer": Hostile("post", "/api/v1/purchases", status=400, raw=LONG_INT),
    # --- refunds
    "refund over-precise": Hostile(
        "post",
        "/api/v1/refunds",
        {"order_id": "o-friend-1", "amount": "0.001", "refund_id": "r-1"},
        422,
        "amount",
    ),
    "refund more than paid": Hostile(
        "post",
        "/api/v1/refunds",
        {"order_id": "o-friend-1", "amount": "999.00", "refund_id": "r-1"},
        422,
        "amount",
    ),
    "refund order_id object": Hostile(
        "post", "/api/v1/refunds", {"order_id": {"$ne": None}}, 422, "order_id"
    ),
    # --- customers
    "customer control char in path": Hostile(
        "put", "/api/v1/customers/ref%01", {"email": "a@example.com"}, 422, "external_id"
    ),
    "customer name as boolean": Hostile(
        "put", "/api/v1/customers/ref-9", {"email": "a@example.com", "name": True}, 422, "name"
    ),
    "customer zero-width name": Hostile(
        "put", "/api/v1/customers/ref-9", {"email": "a@e.com", "name": "A\u200bda"}, 422, "name"
    ),
    "customer bidi override name": Hostile(
        "put", "/api/v1/customers/ref-9", {"email": "a@e.com", "name": "Ada\u202e"}, 422, "name"
    ),
    # --- program settings
    "program paused as string": program({"paused": "true"}, "paused"),
    "program paused as 1": program({"paused": 1}, "paused"),
    "program hold_days as string": program({"hold_days": "3"}, "hold_days"),
    "program hold_days infinite": program({"hold_days": 1e400}, "hold_days"),
    "program javascript landing": program({"landing_url": "javascript:alert(1)"}, "landing_url"),
    "program unclosed IPv6 landing": program({"landing_url": "http://[::1"}, "landing_url"),
    "program percent exponent": program(
        {"referrer_reward": {"type": "percent", "value": "1e1"}}, "referrer_reward.value"
    ),
    "program nothing to change": program({}, "_schema"),
    "program coupon site not a host": program({"coupon_sites": ["not a host"]}, "coupon_sites"),
    "program shop key": Hostile("patch", "/api/v1/program", {"paused": True}, 403, key="shop"),
    "program landing mode unknown": program({"landing_mode": "iframe"}, "landing_mode"),
    "program default locale unknown": program({"default_locale": "xx"}, "default_locale"),
    "program share message language": program(
        {"share_messages": {"../etc": "hi"}}, "share_messages.../etc"
    ),
    "program share message bidi": program(
        {"share_messages": {"pl": "a\u202eb"}}, "share_messages.pl"
    ),
    "program share message surrogate": program(
        {"share_messages": {"hu": "\ud800"}}, "share_messages.hu"
    ),
    # --- portal links
    "portal link expiry as string": Hostile(
        "post", "/api/v1/customers/ref-1/portal-link", {"expires_in": "60"}, 422, "expires_in"
    ),
    "portal link expiry too long": Hostile(
        "post", "/api/v1/customers/ref-1/portal-link", {"expires_in": 10**12}, 422, "expires_in"
    ),
    "portal link body an array": Hostile(
        "post", "/api/v1/customers/ref-1/portal-link", [60], 422, "_schema"
    ),
    "portal link unknown customer": Hostile(
        "post", "/api/v1/customers/nobody/portal-link", {}, 404
    ),
    # --- rewards and payouts
    "approve note as number": Hostile(
        "post", "/api/v1/rewards/{pending}/approve", {"note": 5}, 422, "note"
    ),
    "approve already approved": Hostile("post", "/api/v1/rewards/{approved}/approve", {}, 409),
    "reject blank reason": Hostile(
        "post", "/api/v1/rewards/{pending}/reject", {"reason": "  "}, 422, "reason"
    ),
    "reject id past MAX_ID": Hostile(
        "post", "/api/v1/rewards/2147483648/reject", {"reason": "x"}, 404
    ),
    "payout all_approved as string": Hostile(
        "post", "/api/v1/payouts", {"all_approved": "true"}, 422, "all_approved"
    ),
    "payout ids as booleans": Hostile(
        "post", "/api/v1/payouts", {"reward_ids": [True]}, 422, "reward_ids.0"
    ),
    "payout both ways": Hostile(
        "post", "/api/v1/payouts", {"reward_ids": [1], "all_approved": True}, 422, "reward_ids"
    ),
    "payout no ids": Hostile("post", "/api/v1/payouts", {"reward_ids": []}, 422, "reward_ids"),
    "payout id past MAX_ID": Hostile(
        "post", "/api/v1/payouts", {"reward_ids": [2**31]}, 422, "reward_ids.0"
    ),
    "mark paid empty reference": Hostile(
        "post", "/api/v1/payouts/{payout}/mark-paid", {"reference": ""}, 422, "reference"
    ),
    "payout csv of no number": Hostile("get", "/api/v1/payouts/abc.csv", status=404),
    "no key at all": Hostile("get", "/api/v1/payouts/{payout}", status=401, key="none"),
    # --- query strings
    "referrals limit 0": query("/api/v1/referrals?limit=0", "limit"),
    "referrals limit 201": query("/api/v1/referrals?limit=201", "limit"),
    "referrals limit exponent": query("/api/v1/referrals?limit=1e3", "limit"),
    "referrals limit true": query("/api/v1/referrals?limit=true", "limit"),
    "referrals limit full-width": query("/api/v1/referrals?limit=%EF%BC%95", "limit"),
    "referrals limit with underscore": query("/api/v1/referrals?limit=1_0", "limit"),
    "referrals cursor garbage": query("/api/v1/referrals?cursor=bm90LWFuLWlk", "cursor"),
    "referrals cursor NUL": query("/api/v1/referrals?cursor=%00", "cursor", key="shop"),
    "referrals status of rewards": query("/api/v1/referrals?status=paid", "status"),
    "referrals unknown parameter": query("/api/v1/referrals?admin=1", "admin"),
    "rewards referrer control": query("/api/v1/rewards?referrer=%1B%5B2J", "referrer"),
    "rewards limit huge": query("/api/v1/rewards?limit=" + "9" * 5000, "limit"),
    "stats from yesterday": query("/api/v1/stats?from=yesterday", "from"),
    "stats naive date": query("/api/v1/stats?from=2026-01-01", "from"),
    "stats from after to": query(
        "/api/v1/stats?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"
    ),
    "stats before year 1": query("/api/v1/stats?from=0001-01-01T00:00:00%2B01:00", "from"),
    "insights naive date": query("/api/v1/insights?from=2026-01-01", "from"),
    "insights reversed range": query(
        "/api/v1/insights?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"
    ),
    "insights before year 1": query("/api/v1/insights?to=0001-01-01T00:00:00%2B01:00", "to"),
    # --- public links
    "qr size too small": Hostile("get", f"/r/{CODE}/qr.png?size=63", status=422, field="size"),
    "qr size too big": Hostile("get", f"/r/{CODE}/qr.svg?size=2049", status=422, field="size"),
    "qr size exponent": Hostile("get", f"/r/{CODE}/qr.png?size=1e3", status=422, field="size"),
    "qr size full-width": Hostile(
        "get", f"/r/{CODE}/qr.png?size=%EF%BC%95%EF%BC%91%EF%BC%92", status=422, field="size"
    ),
    "qr size with plus": Hostile("get", f"/r/{CODE}/qr.png?size=%2B512", status=422, field="size"),
    "qr of a forged code": Hostile("get", "/r/AAAA-AAAA-AAAA-AAAA/qr.svg", status=404),
    "share link posted to": Hostile("post", f"/r/{CODE}", status=405),
}


@pytest.fixture
def journey(app, client, admin, shop) -> dict:
    return rewards_in_every_state(app, client, admin, shop)


def snapshot(app) -> dict:
    """Every row of every table."""
    with app.app_context():
        app.extensions["clicks"].flush()
        return {
            table.name: sorted((tuple(row) for row in db.session.execute(table.select())), key=repr)
            for table in Base.metadata.sorted_tables
        }


def send(client, hostile: Hostile, journey: dict, keys: dict):
    headers = {**keys[hostile.key], **(hostile.headers or {})}
    path = hostile.path.format(**journey) if "{" in hostile.path else hostile.path
    call = getattr(client, hostile.method)
    if hostile.raw is not None:
        return call(path, data=hostile.raw, content_type="application/json", headers=headers)
    if hostile.body is not None:
        return call(path, json=hostile.body, headers=headers)
    return call(path, headers=headers)


TRIED: Counter[str] = Counter()  # hostile requests sent, by database


@pytest.fixture(scope="module", autouse=True)
def hostile_summary(request):
    """Print how many hostile inputs the table tried."""
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # shown with or without `-s`
        tried = ", ".join(f"{count} on {backend}" for backend, count in sorted(TRIED.items()))
        print(f"\nHOSTILE: {len(TABLE)} hostile inputs in the table, tried {tried}")


def test_the_table_is_large_enough():
    assert len(TABLE) >= 40


@pytest.mark.parametrize("hostile", TABLE.values(), ids=TABLE.keys())
def test_hostile_input_is_refused_and_writes_nothing(
    app, client, admin, shop, backend, journey, hostile
):
    keys = {"admin": admin, "shop": shop, "none": {}}
    before = snapshot(app)
    response = send(client, hostile, journey, keys)
    TRIED[backend] += 1
    assert response.status_code == hostile.status, response.get_data(as_text=True)[:500]
    assert response.is_json
    error = response.json["error"]
    assert set(error) <= {"code", "message", "fields", "request_id"}
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    if hostile.field is not None:
        assert error["code"] == "validation_error"
        assert hostile.field in error["fields"], error
        assert all(isinstance(m, str) for ms in error["fields"].values() for m in ms)
    assert snapshot(app) == before


@pytest.mark.parametrize(
    "via", ["%00", "x" * 5000, "%3Cscript%3E", "%ED%A0%80", "WhatsApp%0D%0ASet-Cookie:%20a=b"]
)
def test_hostile_channel_still_lands_and_counts_as_other(app, client, journey, via):
    """A share link never breaks for a friend: a malformed `via` is a click of channel `other`."""
    response = client.get(f"/r/{journey['code']}?via={via}")
    assert response.status_code == 302
    assert "ref=" in response.headers["Location"] and "\n" not in response.headers["Location"]
    with app.app_context():
        app.extensions["clicks"].flush()
        channels = db.session.scalars(Click.__table__.select().with_only_columns(Click.channel))
        assert list(channels) == ["other"]


# --- the console: every route, signed in, each hostile value in each parameter it reads ----------


class Reads(NamedTuple):
    """What a console endpoint reads: sample path arguments (naming things of the journey), and
    the query parameters and form fields with a sample value each (the rest of a form sent with
    one hostile field)."""

    path: dict = {}
    query: tuple = ()
    form: dict = {}


SIGNED_IN = {"email": "owner@example.com", "password": PASSWORD, "next": "/admin/rewards"}
CUSTOMER = {"external_id": "ref-1"}
PAYOUT = {"payout_id": "{payout}"}
KEY = {"key_id": "{key}"}
HOOK = {"endpoint_id": "{webhook}"}
HOOK_FORM = {"url": "https://hooks.example/in", "events": "*", "description": "ERP"}
CONSOLE = {
    "admin.login": Reads(query=("next",), form=SIGNED_IN),
    "admin.logout": Reads(),
    "admin.dashboard": Reads(query=("days",)),
    "admin.insights_csv": Reads(query=("days",)),
    "admin.reward_queue": Reads(query=("status", "referrer", "risk", "cursor")),
    "admin.decide": Reads(
        form={
            "approve": "{pending}",
            "reject": "",
            "bulk": "approve",
            "reward": "{approved}",
            "reason": "checked",
            "back": "/admin/rewards",
        }
    ),
    "admin.customer_search": Reads(query=("q",)),
    "admin.customer_page": Reads(path=CUSTOMER),
    "admin.rotate_code": Reads(path=CUSTOMER, form={"confirm": "yes"}),
    "admin.share_page_link": Reads(path=CUSTOMER),
    "admin.referral_page": Reads(path={"referral_id": "{referral}"}),
    "admin.payouts_list": Reads(query=("before",)),
    "admin.payout_create": Reads(form={"reward_ids": "{approved}"}),
    "admin.payout_page": Reads(path=PAYOUT),
    "admin.payout_csv": Reads(path=PAYOUT),
    "admin.payout_approve": Reads(path=PAYOUT),
    "admin.payout_mark_paid": Reads(path=PAYOUT, form={"reference": "SEPA-9"}),
    "admin.settings": Reads(form=dict.fromkeys((name for name, *_ in settings_form.INPUTS), "")),
    "admin.keys": Reads(),
    "admin.create_key": Reads(form={"name": "till", "scope": "shop"}),
    "admin.confirm_revoke": Reads(path=KEY),
    "admin.revoke_key": Reads(path=KEY),
    "admin.audit_log": Reads(query=("action", "actor", "subject_type", "subject_id", "cursor")),
    "admin.webhooks_list": Reads(query=("cursor",)),
    "admin.webhook_create": Reads(form=HOOK_FORM),
    "admin.webhook_page": Reads(path=HOOK, query=("cursor",)),
    "admin.webhook_update": Reads(path=HOOK, form=HOOK_FORM),
    "admin.webhook_disable": Reads(path=HOOK),
    "admin.webhook_enable": Reads(path=HOOK),
    "admin.webhook_rotate": Reads(path=HOOK),
    "admin.webhook_confirm_delete": Reads(path=HOOK),
    "admin.webhook_delete": Reads(path=HOOK),
    "admin.webhook_redeliver": Reads(path={**HOOK, "delivery_id": "{delivery}"}),
    "admin.integrations": Reads(query=("platform", "outcome", "cursor")),
}
REDIRECT_TARGETS = {"next", "back"}
UNREAD = "unread"  # a parameter no view reads: refused all the same
CONSOLE_VALUES = {
    "NUL": "a\x00b",
    "CRLF header": "/admin/\r\nX-Injected: 1",
    "escape sequence": "\x1b[2J",
    "DEL": "x\x7f",
    "C1 next line": "x\x85",
    "replacement character": "\ufffd",
    "over-long": "x" * 5000,
    "over-long number": "9" * 5000,
    "markup": "<script>alert(1)</script>",
    "other host": "//evil.example/admin",
    "backslash host": "/\\evil.example",
    "way out": "/admin/../login",
    "encoded way out": "/admin/%2e%2e/%2e%2e/r/x",
    "encoded header": "/admin/%0d%0aX-Injected:%201",
    "scheme": "javascript:alert(1)",
}
# sent as they are: percent-escapes of bytes that are not UTF-8 (refused in a query; in a form,
# Werkzeug hands them on as their escapes, `%FF`, text that names nothing)
CONSOLE_RAW = {"not UTF-8": "%FF%FE", "surrogate in UTF-8": "%ED%A0%80"}
CONSOLE_TRIED: Counter[str] = Counter()


def console_routes(app) -> dict[str, set[str]]:
    """Each console endpoint with the methods its rule answers (GET, POST)."""
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/admin"):
            routes.setdefault(rule.endpoint, set()).update(rule.methods & {"GET", "POST"})
    return routes


def test_every_console_route_is_in_the_table(app):
    """A new console route fails here until the table says what it reads."""
    assert set(console_routes(app)) == set(CONSOLE)


def safe_console_target(location: str) -> bool:
    """A redirect that stays in the console: a path, no control, no `..` (encoded or not)."""
    parts = urlsplit(location)
    path = unquote(parts.path)
    return (
        not parts.scheme
        and not parts.netloc
        and (path == "/admin" or path.startswith("/admin/"))
        and not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in unquote(location))
        and ".." not in path.split("/")
        and "\\" not in location
    )


# webhook endpoints on a public name (resolution stubbed: no DNS query, no connection but to
# loopback) and no task queue (deliveries stay planned: nothing is sent)
loopback_only, names, no_task_queue = (
    test_webhooks.loopback_only,
    test_webhooks.names,
    test_webhooks.no_task_queue,
)


@pytest.fixture(autouse=True)
def _public_hooks(names):
    names["hooks.example"] = ["93.184.216.34"]


def console_journey(app, journey: dict) -> dict:
    """The journey's ids, with a webhook endpoint and a planned delivery of one of its events."""
    with app.app_context():
        referral = db.session.scalar(select(Referral.id).order_by(Referral.id))
        key = db.session.scalar(select(ApiKey.id).order_by(ApiKey.id))
        hook = webhooks.create_endpoint("https://hooks.example/in", ["*"], None, "test").endpoint.id
        event = db.session.scalar(select(OutboxEvent).order_by(OutboxEvent.id))
        with unit_of_work():
            (delivery,) = webhooks.plan_deliveries(event, utcnow())
    return {
        **journey,
        "referral": referral,
        "key": key,
        "webhook": hook,
        "delivery": delivery,
    }


def refused_in(where: str, value: str) -> bool:
    """Whether the console refuses `value` in a query parameter (any control character) or in
    a form field (a control character but tab and line breaks)."""
    allowed = "\t\r\n" if where == "form" else ""
    return any(unicodedata.category(char) == "Cc" and char not in allowed for char in value)


def console_requests(query: tuple, form: dict, methods: set[str]):
    """(label, method, query string, form body, whether the console must refuse it with its
    400 page) of each hostile request of an endpoint; `form` holds the sample fields."""
    for label, value in CONSOLE_VALUES.items():
        if "GET" in methods:
            for name in (*query, UNREAD):
                refused = refused_in("query", value) and name not in REDIRECT_TARGETS
                yield f"{name}={label}", "GET", urlencode({name: value}), "", refused
        if "POST" in methods:
            for name in (*form, UNREAD):
                refused = refused_in("form", value) and name not in REDIRECT_TARGETS
                yield f"form {name}={label}", "POST", "", urlencode({**form, name: value}), refused
    for label, raw in CONSOLE_RAW.items():
        if "GET" in methods:
            for name in (*query, UNREAD):
                yield f"{name}={label}", "GET", f"{name}={raw}", "", name not in REDIRECT_TARGETS
        if "POST" in methods:
            for name in (*form, UNREAD):
                others = urlencode({k: v for k, v in form.items() if k != name})
                body = f"{others}&{name}={raw}".lstrip("&")
                yield f"form {name}={label}", "POST", "", body, False


@pytest.mark.parametrize("endpoint", CONSOLE)
def test_console_answers_every_hostile_input_without_a_server_error(
    app, client, admin, shop, backend, journey, endpoint
):
    """Signed in as an owner, each hostile value in each query parameter and form field the
    route reads (and in one it does not): never a 5xx; a control character (or, in a query, a
    byte that is not UTF-8) is the console's 400 page, or the 422 of a form that checks its
    fields itself (the settings), but in a redirect target, which falls back to a path inside
    the console instead. Path arguments get each value too."""
    signed_in_as(app, client)
    names = console_journey(app, journey)
    methods = console_routes(app)[endpoint]
    reads = CONSOLE[endpoint]
    csrf = token(client, "/admin/customers")
    problems = []

    def send(method, path, query, form):
        nonlocal csrf
        if endpoint in ("admin.login", "admin.logout"):  # each request starts signed in anew
            client.delete_cookie(app.config["SESSION_COOKIE_NAME"])
            sign_in(client)
            csrf = token(client, "/admin/customers")
        url = f"{path}?{query}" if query else path
        if method == "GET":
            return client.get(url)
        body = f"csrf_token={quote(csrf)}&{form}"
        return client.post(url, data=body, content_type="application/x-www-form-urlencoded")

    with app.test_request_context():
        path = url_for(endpoint, **{k: v.format(**names) for k, v in reads.path.items()})
    form = {name: value.format(**names) for name, value in reads.form.items()}
    for label, method, query, body, refused in console_requests(reads.query, form, methods):
        response = send(method, path, query, body)
        CONSOLE_TRIED[backend] += 1
        status, text = response.status_code, response.get_data(as_text=True)
        if status >= 500:
            problems.append(f"{method} {label}: {status}")
        elif refused and status != 422 and (status != 400 or "Request refused" not in text):
            problems.append(f"{method} {label}: {status}, neither the 400 page nor a 422")
        elif 300 <= status < 400 and not safe_console_target(response.headers["Location"]):
            problems.append(f"{method} {label}: sent to {response.headers['Location']!r}")
    for name in reads.path:  # text arguments (an int converter only matches digits)
        for label, value in CONSOLE_VALUES.items():
            hostile = url_for_path(app, endpoint, reads.path, names, name, value)
            for method in methods:
                response = send(method, hostile, "", "")
                CONSOLE_TRIED[backend] += 1
                if response.status_code >= 500:
                    problems.append(f"{method} path {name}={label}: {response.status_code}")
    assert not problems, "\n".join(problems)


def url_for_path(app, endpoint, path: dict, names: dict, name: str, value: str) -> str:
    """The endpoint's path with `value` (percent-escaped) as its argument `name`."""
    with app.test_request_context():
        sample = {k: v.format(**names) for k, v in path.items()}
        marker = "HOSTILE-ARGUMENT"
        try:
            url = url_for(endpoint, **{**sample, name: marker})
        except (BuildError, ValueError):  # an int converter
            url = url_for(endpoint, **sample)
            return url.replace(str(sample[name]), quote(value, safe=""), 1)
        return url.replace(marker, quote(value, safe=""))


@pytest.fixture(scope="module", autouse=True)
def console_summary(request):
    """Print how many hostile console requests were sent."""
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        tried = ", ".join(f"{n} on {backend}" for backend, n in sorted(CONSOLE_TRIED.items()))
        print(f"\nHOSTILE CONSOLE: {len(CONSOLE)} console routes, requests sent: {tried}")


KEPT = "kept"  # the target itself is where the console sends the admin
TARGETS = {
    "a console page with its query": ("/admin/rewards%3Fstatus%3Dall", KEPT),
    "a console path in UTF-8": ("/admin/customers/%25C5%25BC", KEPT),
    "a line break (the issue's)": ("/admin/%0d%0aX:1", None),
    "an encoded line break": ("/admin/%250d%250aX:1", None),
    "NUL": ("/admin/%00", None),
    "an encoded NUL in its query": ("/admin/rewards%3Fstatus%3D%2500", None),
    "bytes that are not UTF-8 in its query": ("/admin/rewards%3Fstatus%3D%25FF", None),
    "another host": ("//evil.example/admin", None),
    "a backslash host": ("/%5Cevil.example/admin", None),
    "an absolute URL": ("https://evil.example/admin", None),
    "a way out": ("/admin/../r/x", None),
    "an encoded way out": ("/admin/%252e%252e/r/x", None),
    "a path that only starts like the console": ("/administrator", None),
}


@pytest.mark.parametrize(("target", "kept"), TARGETS.values(), ids=TARGETS.keys())
def test_redirect_targets_stay_in_the_console(app, client, target, kept):
    """`next` of the sign-in page and `back` of the queue's decisions: a target that is not a
    path inside the console falls back to one (the dashboard, the queue)."""
    signed_in_as(app, client)
    decoded = unquote(target)
    response = client.get(f"/admin/login?next={target}")
    assert response.status_code == 302
    assert response.headers["Location"] == (decoded if kept else "/admin")
    form = f"csrf_token={quote(token(client, '/admin/rewards'))}&approve=1&back={target}"
    response = client.post(
        "/admin/rewards/decide", data=form, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 302
    assert response.headers["Location"] == (decoded if kept else "/admin/rewards")


def test_a_filter_with_a_control_character_finds_nothing(app, journey):
    """The domain's list and search functions, whoever calls them: no query reaches the database
    with a control character (PostgreSQL refuses NUL in text)."""
    with app.app_context():
        assert timeline.search_customers("ref-1") != []
        assert rewards.list_rewards(referrer="ref-1")[0] != []
        assert stats.list_referrals(referrer="ref-1")[0] != []
        assert audit.entries(action="payout.create")[0] != []
        assert timeline.search_customers("ref-1\x00") == []
        assert timeline.search_customers("\x00@example.com") == []
        assert rewards.list_rewards(referrer="ref-1\x00") == ([], None)
        assert rewards.list_rewards(status="paid\x00") == ([], None)
        assert stats.list_referrals(referrer="\x00", status="converted") == ([], None)
        assert stats.list_referrals(status="converted\x1b") == ([], None)
        for name in ("action", "actor", "subject_type", "subject_id"):
            assert audit.entries(**{name: "a\x00b"}) == ([], None)

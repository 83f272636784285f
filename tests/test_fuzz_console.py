"""Fuzzing of the admin console's forms, as tests/test_fuzz_api.py fuzzes the API.

The forms are not listed by hand: they are read from the console's own pages (every `<form>`
with its action, method, inputs, selects with their options, textareas and named buttons), so a
new form is fuzzed as soon as a page shows it. Signed in as an owner, with a valid CSRF token,
Hypothesis sends each form with generated values (any Unicode text, control characters included,
the form's own options, hostile snippets; fields left out at random) and every answer must be
below 500. The seed is fixed (derandomized) so that CI sees the same cases on every run; it runs
on SQLite and PostgreSQL (PostgreSQL refuses NUL in text: that is where a 500 hid). The number
of cases is printed at the end (`FUZZ CONSOLE: ...`).
"""

import time
from collections import Counter
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from referral_service.domain import webhooks
from referral_service.domain.unit import unit_of_work
from referral_service.extensions import db
from referral_service.models import ApiKey, OutboxEvent, Referral, utcnow
from tests import test_webhooks
from tests.conftest import print_past_capture
from tests.journey_helpers import rewards_in_every_state
from tests.test_admin_console import signed_in_as, token

# no connection but to loopback, name resolution stubbed, no task queue (fixtures)
loopback_only, names, no_task_queue = (
    test_webhooks.loopback_only,
    test_webhooks.names,
    test_webhooks.no_task_queue,
)

EXAMPLES_PER_FORM = 40
# The pages whose forms are fuzzed (`{name}`: an id of the journey's).
PAGES = (
    "/admin",
    "/admin/rewards",
    "/admin/customers",
    "/admin/customers/ref-1",
    "/admin/customers/ref-1/rotate",
    "/admin/referrals/{referral}",
    "/admin/payouts",
    "/admin/payouts/{payout}",
    "/admin/settings",
    "/admin/keys",
    "/admin/keys/{key}/revoke",
    "/admin/audit",
    "/admin/webhooks",
    "/admin/webhooks/{webhook}",
    "/admin/webhooks/{webhook_off}",
    "/admin/webhooks/{webhook}/delete",
    "/admin/integrations",
)
SIGN_OUT = "/admin/logout"  # not fuzzed: it ends the session the other forms need
SIGN_IN = "/admin/login"  # fuzzed signed out
HOSTILE = (
    "\x00",
    "a\x00b",
    "\r\nX-Injected: 1",
    "\x1b[2J",
    "\u202e",
    "\ufffd",
    "%00",
    "%FF%FE",
    "9" * 5000,
    "-1",
    "0",
    "2147483648",
    "1e3",
    "NaN",
    "<script>alert(1)</script>",
    "//evil.example",
    "/admin/../login",
    "' OR 1=1 --",
)
CASES: Counter[str] = Counter()


class Forms(HTMLParser):
    """The forms of a page: `{action, method, fields: {name: [options]}}` each."""

    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []
        self._form: dict | None = None
        self._select: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self._form = {
                "action": attrs.get("action") or "",
                "method": (attrs.get("method") or "get").upper(),
                "fields": {},
            }
            self.forms.append(self._form)
        elif self._form is None:
            return
        elif tag in ("input", "textarea", "select", "button") and attrs.get("name"):
            options = self._form["fields"].setdefault(attrs["name"], [])
            if attrs.get("value") is not None:
                options.append(attrs["value"])
            self._select = attrs["name"] if tag == "select" else None
        elif tag == "option" and self._select and attrs.get("value") is not None:
            self._form["fields"][self._select].append(attrs["value"])

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None
        elif tag == "select":
            self._select = None


def forms_of(html: str) -> list[dict]:
    parser = Forms()
    parser.feed(html)
    return parser.forms


def journey_names(app, client, admin, shop) -> dict:
    """The journey's ids, and two webhook endpoints (one disabled) with deliveries of its
    events (the task queue is taken away by `no_task_queue`: nothing is sent)."""
    with app.app_context():
        hooks = webhooks.create_endpoint("https://hooks.example/in", ["*"], None, "test")
        off = webhooks.create_endpoint("https://hooks.example/off", ["*"], None, "test")
        hooks_id, off_id = hooks.endpoint.id, off.endpoint.id
    found = rewards_in_every_state(app, client, admin, shop)
    with app.app_context():
        found["referral"] = db.session.scalar(select(Referral.id).order_by(Referral.id))
        found["key"] = db.session.scalar(select(ApiKey.id).order_by(ApiKey.id))
        for event in db.session.scalars(select(OutboxEvent).limit(3)):
            with unit_of_work():
                webhooks.plan_deliveries(event, utcnow())
        webhooks.update_endpoint(off_id, {"disabled": True}, "test")
        found["webhook"], found["webhook_off"] = hooks_id, off_id
    return found


@pytest.fixture(autouse=True)
def _public_hooks(names):
    """The webhook endpoints' host resolves to a public address (stubbed: no DNS query)."""
    names["hooks.example"] = ["93.184.216.34"]


def console_forms(app, client, names: dict) -> dict[tuple, dict]:
    """Every form of the console's pages, by (method, action path), with the union of the
    fields (and options) that pages show for it. The payout's page is read a second time with
    a threshold that makes it ask for a second approver (its approval form shows then)."""
    found = forms_on(client, [page.format(**names) for page in PAGES])
    threshold = app.config["PAYOUT_APPROVAL_THRESHOLD"]
    app.config["PAYOUT_APPROVAL_THRESHOLD"] = "0.00"
    for key, fields in forms_on(client, [f"/admin/payouts/{names['payout']}"]).items():
        found.setdefault(key, fields)
    app.config["PAYOUT_APPROVAL_THRESHOLD"] = threshold
    return found


def forms_on(client, urls: list[str]) -> dict[tuple, dict]:
    found: dict[tuple, dict] = {}
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        for form in forms_of(response.get_data(as_text=True)):
            path = urlsplit(form["action"]).path or urlsplit(url).path
            known = found.setdefault((form["method"], path), {})
            for name, options in form["fields"].items():
                known.setdefault(name, [])
                known[name] += [o for o in options if o not in known[name]]
    return found


def values(options: list[str]):
    """A field's value: one of its options, any text (controls included) or a hostile one."""
    text = st.text(st.characters(codec="utf-8"), max_size=40)
    choices = [st.sampled_from(options)] if options else []
    return st.one_of(*choices, text, st.sampled_from(HOSTILE))


def form_data(fields: dict[str, list[str]]):
    """A form's body: each field present or left out, with a generated value."""
    return st.fixed_dictionaries({}, optional={name: values(o) for name, o in fields.items()})


@pytest.fixture(scope="module", autouse=True)
def fuzz_summary(request):
    """Print how many cases ran over how many forms, and how long it took."""
    started = time.monotonic()
    yield
    line = (
        f"FUZZ CONSOLE: {sum(CASES.values())} cases over {len(CASES)} forms and backends "
        f"in {time.monotonic() - started:.1f}s"
    )
    print_past_capture(request, line)


def test_the_pages_show_a_form_for_every_console_post(app, client, admin, shop):
    """Each console route that takes a POST has a form on the pages fuzzed below."""
    signed_in_as(app, client)
    forms = console_forms(app, client, journey_names(app, client, admin, shop))
    forms.update(forms_on(app.test_client(), [SIGN_IN]))
    urls = app.url_map.bind("shop.test")
    shown = {urls.match(path, method)[0] for method, path in forms if method == "POST"}
    routes = {
        rule.endpoint
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/admin") and "POST" in rule.methods
    }
    assert shown == routes


def test_console_forms_never_answer_a_server_error(app, client, admin, shop, backend):
    """Every form of the console, fuzzed: never a 5xx, whatever the values."""
    signed_in_as(app, client)
    forms = console_forms(app, client, journey_names(app, client, admin, shop))
    failures = fuzz_forms(client, forms, token(client, "/admin/customers"), backend)
    signed_out = app.test_client()
    sign_in = forms_on(signed_out, [SIGN_IN])
    failures += fuzz_forms(signed_out, sign_in, token(signed_out), backend)
    assert not failures, "\n".join(failures)


def fuzz_forms(client, forms: dict, csrf: str, backend: str) -> list[str]:
    """Fuzz each form (but the sign-out) with `client`; the failures found."""
    failures = []
    for (method, path), fields in sorted(forms.items()):
        if path == SIGN_OUT:
            continue
        fields = {name: options for name, options in fields.items() if name != "csrf_token"}
        try:
            fuzz_form(client, method, path, fields, csrf, backend)
        except AssertionError as error:
            failures.append(str(error))
    return failures


def fuzz_form(client, method: str, path: str, fields: dict, csrf: str, backend: str) -> None:
    """Send one form `EXAMPLES_PER_FORM` times with generated values; each answer below 500."""

    @settings(max_examples=EXAMPLES_PER_FORM, deadline=None, derandomize=True, database=None)
    @given(form_data(fields))
    def fuzz(data):
        CASES[f"{backend} {method} {path}"] += 1
        if method == "GET":
            response = client.get(path, query_string=data)
        else:
            response = client.post(path, data={**data, "csrf_token": csrf})
        assert response.status_code < 500, (method, path, data, response.status_code)

    fuzz()

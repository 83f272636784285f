"""Schemathesis over every operation of the app's own OpenAPI spec, in-process, with its checks.

The spec is loaded from `/api/openapi.json` of an app (no server, no network); each case is sent
to the test's own app with an admin key. Every operation runs Schemathesis's examples, coverage
and fuzzing phases, positive and negative data, with its default checks: no server error,
documented statuses, content types, response schemas and headers, negative data rejected,
positive data accepted, authentication enforced. The seed is fixed (derandomized) so that CI
sees the same cases on every run. The numbers of cases and operations are printed at the end of
the module (`FUZZ: ... cases over ... operations`).
"""

import re
import time
from collections import Counter
from urllib.parse import unquote

import pytest
import schemathesis
from babel.localedata import locale_identifiers
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    AcceptedNegativeData,
    negative_data_rejection,
    positive_data_acceptance,
)

from referral_service import create_app
from referral_service.domain.customers import check_locale
from referral_service.errors import ValidationFailed
from tests import test_webhooks
from tests.conftest import app_config, print_past_capture
from tests.journey_helpers import rewards_in_every_state

# no connection but to loopback, name resolution stubbed, no task queue (fixtures)
loopback_only, names, no_task_queue = (
    test_webhooks.loopback_only,
    test_webhooks.names,
    test_webhooks.no_task_queue,
)

pytestmark = pytest.mark.sqlite_only  # the spec and validation do not depend on the backend

EXAMPLES_PER_OPERATION = 150  # fuzzing phase; the coverage phase adds its own deterministic cases

CASES: Counter[str] = Counter()

# Rules that the OpenAPI 3.0 schema language cannot state (they depend on the clock, on another
# field or on stored data); each is written in the field's description. A schema-valid request
# may still be refused with 422 on these fields of its operation, and on no other.
REUSED_KEY = "Idempotency-Key"  # a key already used for another body (stored data)
BEYOND_THE_SPEC = {
    "PUT /api/v1/customers/{external_id}": {"locale"},  # one Babel knows
    "POST /api/v1/signups": {"locale", "occurred_at", REUSED_KEY},  # at most a day from now
    "POST /api/v1/purchases": {"occurred_at", "amount", REUSED_KEY},  # the currency's decimals
    "POST /api/v1/refunds": {"amount", REUSED_KEY},  # the order's currency and what is left
    "POST /api/v1/payouts": {REUSED_KEY},
    "GET /api/v1/referrals": {"cursor"},  # only a `next_cursor` this service gave out
    "GET /api/v1/rewards": {"cursor"},
    "GET /api/v1/events": {"cursor"},
    "GET /api/v1/stats": {"from", "to"},  # `from` before `to` (default now); a date in UTC
    "GET /api/v1/insights": {"from", "to"},
    "GET /api/v1/webhook-endpoints": {"cursor"},
    "GET /api/v1/webhook-endpoints/{endpoint_id}/deliveries": {"cursor"},
    # a host that resolves to public addresses only (domain/webhooks.check_url)
    "POST /api/v1/webhook-endpoints": {"url"},
    "PATCH /api/v1/webhook-endpoints/{endpoint_id}": {"url"},
    # settings are checked as a whole: a value's meaning depends on its rule's `type`, an
    # amount's decimals on the program currency
    "PATCH /api/v1/program": {
        "referrer_reward.value",
        "friend_reward.value",
        "friend_offer.value",
        "min_order_amount",
        "auto_approve_max_amount",
        "landing_url",  # a port in digits 0-9 from 0 to 65535, which the URL pattern does not say
        # a milestone's value as a reward's; its number of friends once in the list
        "milestones.*.reward.value",
        "milestones.*.friends",
    },
}


# --- the custom string formats of the spec (see referral_service/api/schemas.py) ---------------

_PRINTABLE = st.characters(
    codec="utf-8",
    exclude_categories=["Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"],
    include_characters=" ",
)


def _locales() -> list[str]:
    known = []
    for name in sorted(locale_identifiers()):
        try:
            check_locale(name)
        except ValidationFailed:
            continue
        known += [name, name.replace("_", "-")]
    return known


schemathesis.openapi.format("printable", st.text(_PRINTABLE, max_size=60))
schemathesis.openapi.format(
    "identifier", st.text(_PRINTABLE, min_size=1, max_size=60).map(str.strip).filter(bool)
)
schemathesis.openapi.format("locale", st.sampled_from(["", *_locales()]))


# --- the run -------------------------------------------------------------------------------------


def accepted_unless_beyond_the_spec(ctx, response, case):
    """Schemathesis's `positive_data_acceptance`, but for a 422 on a field of BEYOND_THE_SPEC."""
    if response.status_code == 422:
        # an item of a list by `*` (`milestones.3.friends` -> `milestones.*.friends`)
        fields = {
            re.sub(r"\.[0-9]+(?=\.|$)", ".*", field)
            for field in response.json()["error"].get("fields") or {}
        }
        if fields and fields <= BEYOND_THE_SPEC.get(case.operation.label, set()):
            return None
    if response.status_code == 400 and response.json()["error"]["code"] == "bad_url":
        # an API path holding U+FFFD is refused on purpose (security.register_url_check: what
        # Werkzeug makes of bytes that are not UTF-8), as the spec's 400 of every operation says
        url = unquote(str(getattr(getattr(response, "request", None), "url", "")))
        if "\ufffd" in url:
            return None
    return positive_data_acceptance(ctx, response, case)


# A field whose spec is `anyOf: [{format: ipv4}, {format: ipv6}, {enum: [""]}]` (api/schemas.py
# IP_SPEC): Schemathesis negates one branch's `format` and may shrink the value to "", which the
# `enum` branch admits; such a case is positive data, and accepting it is right.
_FORMAT_IN_BRANCH = re.compile(r"violates `format` at /properties/(\w+)/anyOf/")


def rejected_unless_another_branch_admits(ctx, response, case):
    """Schemathesis's `negative_data_rejection`, but for an empty string in a field whose spec
    has an `enum: [""]` branch beside the `format` one it negated."""
    try:
        return negative_data_rejection(ctx, response, case)
    except AcceptedNegativeData as failure:
        found = _FORMAT_IN_BRANCH.search(str(failure))
        body = case.body if isinstance(case.body, dict) else {}
        if found and body.get(found[1]) == "" and found[1] in ADMITS_EMPTY:
            return None
        raise


ADMITS_EMPTY = {"ip"}  # the body fields with IP_SPEC


@pytest.fixture(scope="module", autouse=True)
def fuzz_summary(request):
    """Print how many cases ran over how many operations, and how long it took."""
    started = time.monotonic()
    yield
    line = (
        f"FUZZ: {sum(CASES.values())} schemathesis cases over {len(CASES)} operations "
        f"in {time.monotonic() - started:.1f}s"
    )
    print_past_capture(request, line)


# The spec comes from an app of its own (it does not depend on the database; pytest 9.2 also
# breaks Schemathesis's lazy `from_fixture` loader); each case is sent to the test's `app`.
schema = schemathesis.openapi.from_wsgi("/api/openapi.json", create_app(app_config("sqlite://")))
# The admin key is sent with every case (`headers=admin` below), so the fuzzer must not generate,
# drop or garble the `Authorization` header itself: the `ignored_auth` check still sends each
# operation without a key and with a wrong one, and expects a 401.
schema.config.generation.update(
    max_examples=EXAMPLES_PER_OPERATION,
    deterministic=True,
    database="none",
    with_security_parameters=False,
)
schema.config.update(continue_on_failure=True)


@pytest.fixture
def journey(app, client, admin, shop) -> dict:
    """Rewards in every state and a payout, so that small ids (on SQLite, 1 to 4) name things."""
    return rewards_in_every_state(app, client, admin, shop)


# One app (and database) per operation, shared by its cases on purpose: the state they build up
# (customers, sign-ups, ...) is what later cases meet, as a live service's would be.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@schema.parametrize()
def test_every_operation_honours_its_spec(case, app, admin, journey):
    CASES[case.operation.label] += 1
    case.call_and_validate(
        app=app,
        headers=admin,
        excluded_checks=[positive_data_acceptance, negative_data_rejection],
        additional_checks=[accepted_unless_beyond_the_spec, rejected_unless_another_branch_admits],
    )

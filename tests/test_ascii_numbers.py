"""Numbers are ASCII digits wherever they are read: ids in paths, amounts, limits and cursors.

Python's int() and Decimal() read any script's decimal digits (`int("\\u0661\\u0662") == 12`),
full-width ones, underscores (`1_000`) and spaces around them, and Werkzeug's `int` converter
matches Unicode digits. None of that names an id, an amount or a page here: a path whose id is
so written is an unknown path (404, as any other), an amount, limit or cursor so written is a
validation error (422 with the field), and a console filter so written falls back to its
default; the command line's number types refuse them.
"""

import base64
import re

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from werkzeug.exceptions import NotFound
from werkzeug.routing import IntegerConverter

from referral_service.cli_types import AsciiFloatRange, AsciiIntRange
from referral_service.converters import AsciiIntegerConverter
from referral_service.domain.money import parse_amount
from referral_service.errors import ValidationFailed
from referral_service.extensions import db
from referral_service.models import Payout
from tests.test_admin_payouts import console, flashed, page, post

# 1 in other scripts and forms: Arabic-Indic, full-width, superscript, mathematical bold, NKo,
# Devanagari; and the ASCII forms int() also reads
NOT_ASCII_IDS = ["\u0661", "\uff11", "\u00b2", "\U0001d7cf", "\u07c1", "\u0967", "\u0661\u0662"]
ODD_IDS = ["1_0", "+1", "%201", "1%20", "-1", "1.0", "01", "001"]  # a leading zero names nothing
# amounts int() or Decimal() would read as 10 or 1000, and other near misses
BAD_AMOUNTS = [
    "\u0661\u0660.\u0660\u0660",
    "\uff110.00",
    "10.\uff100",
    "\U0001d7cf\U0001d7ce.00",
    "1_000",
    "1_000.00",
    " 10.00",
    "10.00 ",
    "10.00\n",
    "\u200910.00",
    "10\u066b00",
    "+10.00",
    "1e3",
    "Infinity",
]
BAD_WHOLE = ["\u0661\u0660", "\uff110", "1_0", " 10", "10 ", "+10", "\u00b2", "10\n", "1e1", "0x10"]


def _int_rules(app) -> list:
    return [
        rule
        for rule in app.url_map.iter_rules()
        if any(isinstance(c, IntegerConverter) for c in rule._converters.values())
    ]


def _paths(rule, bad: str) -> list[str]:
    """The rule's path with `bad` in each integer argument in turn (`1` in the others)."""
    names = [name for name, c in rule._converters.items() if isinstance(c, IntegerConverter)]
    paths = []
    for wrong in names:

        def value(match, wrong=wrong):
            name = match.group(1).rpartition(":")[2]
            return bad if name == wrong else "1"

        paths.append(re.sub(r"<([^>]+)>", value, rule.rule))
    return paths


def test_every_int_in_a_path_is_the_ascii_converter(app):
    rules = _int_rules(app)
    assert len(rules) >= 20  # API and console: rewards, payouts, webhooks, keys
    for rule in rules:
        for converter in rule._converters.values():
            if isinstance(converter, IntegerConverter):
                assert isinstance(converter, AsciiIntegerConverter), rule.rule


def _same_answer(response):
    """What two 404s must share: the body, but for the API envelope's own `request_id`."""
    if response.is_json:
        error = dict(response.get_json()["error"])
        assert error.pop("request_id") == response.headers["Request-Id"]
        return error
    return response.data


@pytest.mark.parametrize("bad", NOT_ASCII_IDS + ODD_IDS)
def test_an_id_not_in_ascii_digits_is_an_unknown_path(app, client, admin, bad):
    """Every rule with an integer in its path, by every method it allows: with the id written
    otherwise it is the 404 of a path that names nothing (never a view's answer, a 200 or a
    500), in the JSON envelope for the API and as the console's own 404 for /admin."""
    owner = console(app, "owner@example.com", "owner")
    unknown_api = client.get("/api/v1/no-such-thing", headers=admin)
    unknown_console = owner.get("/admin/no-such-page", headers={"Accept": "text/html"})
    assert unknown_api.status_code == unknown_console.status_code == 404
    adapter = app.url_map.bind("localhost")
    wrong = []
    for rule in _int_rules(app):
        for path in _paths(rule, bad):
            for method in sorted(rule.methods):
                try:
                    adapter.match(path, method)
                    wrong.append((method, path, "matched a rule"))
                    continue
                except NotFound:
                    pass
                if path.startswith("/api/"):
                    response = client.open(path, method=method, headers=admin)
                    expected = unknown_api
                else:
                    response = owner.open(path, method=method, headers={"Accept": "text/html"})
                    expected = unknown_console
                if response.status_code != 404:
                    wrong.append((method, path, response.status_code))
                elif method != "HEAD" and _same_answer(response) != _same_answer(expected):
                    wrong.append((method, path, response.get_data(as_text=True)[:200]))
    assert wrong == []


def test_the_api_404_is_the_envelope(client, admin):
    response = client.get("/api/v1/webhook-endpoints/\u0661", headers=admin)
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"
    assert set(response.json) == {"error"}
    assert "webhook endpoint 1" not in response.json["error"]["message"]


def test_ordinary_ids_keep_working(app, client, admin):
    app.config["WEBHOOKS_ALLOW_PRIVATE"] = True
    created = client.post(
        "/api/v1/webhook-endpoints",
        headers=admin,
        json={"url": "http://127.0.0.1:9/hooks", "events": ["*"]},
    )
    assert created.status_code == 201, created.json
    endpoint_id = created.json["id"]
    found = client.get(f"/api/v1/webhook-endpoints/{endpoint_id}", headers=admin)
    assert found.status_code == 200 and found.json["id"] == endpoint_id
    assert client.get("/api/v1/webhook-endpoints/\u0669\u0669", headers=admin).status_code == 404
    missing = client.get("/api/v1/webhook-endpoints/99", headers=admin)
    assert missing.status_code == 404 and "99" in missing.json["error"]["message"]
    # the bounds still hold: past the largest id is an unknown path
    assert client.get("/api/v1/webhook-endpoints/2147483648", headers=admin).status_code == 404
    owner = console(app, "owner@example.com", "owner")
    assert owner.get(f"/admin/webhooks/{endpoint_id}").status_code == 200
    assert owner.get("/admin/webhooks/\u0661").status_code == 404
    with app.test_request_context():
        assert app.url_for("admin.webhook_page", endpoint_id=12) == "/admin/webhooks/12"


# --- amounts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
def test_parse_amount_takes_ascii_digits_only(amount):
    with pytest.raises(ValidationFailed) as raised:
        parse_amount(amount, "EUR", "amount")
    assert list(raised.value.fields) == ["amount"]


def test_parse_amount_still_takes_plain_amounts():
    assert str(parse_amount("10.00", "EUR", "amount")) == "10.00"
    assert str(parse_amount("10", "EUR", "amount")) == "10.00"
    assert str(parse_amount(7, "JPY", "amount")) == "7"


def _validation_error(response, field: str) -> None:
    assert response.status_code == 422, response.get_data(as_text=True)
    error = response.json["error"]
    assert error["code"] == "validation_error" and error["message"]
    assert any(key == field or key.startswith(field + ".") for key in error["fields"]), error
    assert all(isinstance(m, str) for ms in error["fields"].values() for m in ms)


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
def test_amounts_in_bodies_are_ascii_decimals(client, shop, admin, amount):
    client.put("/api/v1/customers/c1", json={"email": "c1@example.com"}, headers=shop)
    before = client.get("/api/v1/program", headers=admin).json
    purchase = {"order_id": "o1", "customer_external_id": "c1", "currency": "EUR"}
    _validation_error(
        client.post("/api/v1/purchases", json={**purchase, "amount": amount}, headers=shop),
        "amount",
    )
    for body, field in (
        ({"order_id": "o1", "refund_id": "r1", "amount": amount}, "amount"),
        ({"order_id": "o1", "refunded_total": amount}, "refunded_total"),
    ):
        _validation_error(client.post("/api/v1/refunds", json=body, headers=shop), field)
    for change, field in (
        ({"min_order_amount": amount}, "min_order_amount"),
        ({"auto_approve_max_amount": amount}, "auto_approve_max_amount"),
        ({"referrer_reward": {"type": "fixed", "value": amount}}, "referrer_reward"),
        ({"friend_reward": {"type": "percent", "value": amount}}, "friend_reward"),
        ({"friend_offer": {"type": "fixed", "value": amount}}, "friend_offer"),
    ):
        _validation_error(client.patch("/api/v1/program", json=change, headers=admin), field)
    assert client.get("/api/v1/program", headers=admin).json == before


def test_plain_amounts_keep_working(client, shop, admin):
    changed = client.patch(
        "/api/v1/program",
        json={
            "min_order_amount": "10.00",
            "referrer_reward": {"type": "fixed", "value": "5.50"},
            "friend_reward": {"type": "percent", "value": "10"},
        },
        headers=admin,
    )
    assert changed.status_code == 200, changed.json
    assert changed.json["min_order_amount"] == "10.00"
    client.put("/api/v1/customers/c1", json={"email": "c1@example.com"}, headers=shop)
    bought = client.post(
        "/api/v1/purchases",
        json={"order_id": "o1", "customer_external_id": "c1", "amount": "10.00", "currency": "EUR"},
        headers=shop,
    )
    assert bought.status_code == 201, bought.json


# --- limits and cursors --------------------------------------------------------------------------


def _list_paths(client, admin) -> list[str]:
    endpoint = client.post(
        "/api/v1/webhook-endpoints",
        headers=admin,
        json={"url": "http://127.0.0.1:9/hooks", "events": ["*"]},
    ).json
    return [
        "/api/v1/referrals",
        "/api/v1/rewards",
        "/api/v1/events",
        "/api/v1/webhook-endpoints",
        f"/api/v1/webhook-endpoints/{endpoint['id']}/deliveries",
    ]


@pytest.mark.parametrize("limit", BAD_WHOLE)
def test_limits_are_ascii_digits(app, client, admin, limit):
    app.config["WEBHOOKS_ALLOW_PRIVATE"] = True
    for path in _list_paths(client, admin):
        response = client.get(path, query_string={"limit": limit}, headers=admin)
        _validation_error(response, "limit")
        assert client.get(f"{path}?limit=1", headers=admin).status_code == 200


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_cursors_are_the_tokens_given_out(app, client, admin):
    app.config["WEBHOOKS_ALLOW_PRIVATE"] = True
    for port in (9, 10):
        client.post(
            "/api/v1/webhook-endpoints",
            headers=admin,
            json={"url": f"http://127.0.0.1:{port}/hooks", "events": ["*"]},
        )
    first = client.get("/api/v1/webhook-endpoints?limit=1", headers=admin).json
    token = first["next_cursor"]
    last_id = first["items"][0]["id"]
    second = client.get(
        "/api/v1/webhook-endpoints", query_string={"limit": 1, "cursor": token}, headers=admin
    )
    assert second.status_code == 200 and second.json["items"][0]["id"] == last_id - 1
    for forged in (
        token + "=",  # padded
        token[:1] + "\u0661" + token[1:],  # a character base64 would skip
        token + " ",
        _cursor(" " + str(last_id)),
        _cursor(f"{last_id}\n"),
        _cursor("0" + str(last_id)),
        _cursor("1_" + str(last_id)),
        _cursor("\u0661"),
        _cursor("\uff11"),
        _cursor("+1"),
    ):
        response = client.get(
            "/api/v1/webhook-endpoints", query_string={"cursor": forged}, headers=admin
        )
        _validation_error(response, "cursor")


# --- the console ---------------------------------------------------------------------------------


def test_console_filters_read_ascii_digits_only(app):
    viewer = console(app, "viewer@example.com", "viewer")
    assert "Funnel, last 7 days" in page(viewer, "/admin?days=7")
    for days in ("\u0667", "\uff17", " 7", "7 ", "+7", "0_7"):
        assert "Funnel, last 30 days" in page(viewer, f"/admin?days={days}"), days
    assert "First page" in page(viewer, "/admin/payouts?before=5")
    for before in ("\u0665", "\uff15", " 5", "+5", "5_0"):
        assert "First page" not in page(viewer, f"/admin/payouts?before={before}"), before


@pytest.mark.parametrize("typed", ["\u0661", "\uff11", "1_2", "\u00b2", "\u0661, \u0662"])
def test_console_reward_ids_are_ascii_digits(app, typed):
    approver = console(app, "approver@example.com", "approver")
    response = post(approver, "/admin/payouts", "/admin/payouts", reward_ids=typed)
    assert "Reward ids are whole numbers" in flashed(approver, response)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Payout)) == 0


@pytest.mark.parametrize(
    ("field", "typed"),
    [
        ("hold_days", "\u0661\u0664"),
        ("hold_days", "\uff114"),
        ("hold_days", "1_4"),
        ("hold_days", "+14"),
        ("min_order_amount", "\u0661\u0660.\u0660\u0660"),
        ("min_order_amount", "\uff110.00"),
        ("min_order_amount", "1_000"),
        ("auto_approve_max_amount", "\u0665\u0660"),
    ],
)
def test_console_settings_take_ascii_digits_only(app, client, admin, field, typed):
    owner = console(app, "owner@example.com", "owner")
    before = client.get("/api/v1/program", headers=admin).json
    response = post(owner, "/admin/settings", "/admin/settings", **{field: typed})
    assert response.status_code == 422, response.status_code
    assert 'aria-invalid="true"' in response.get_data(as_text=True)
    assert client.get("/api/v1/program", headers=admin).json == before
    saved = post(owner, "/admin/settings", "/admin/settings", hold_days="21")
    assert saved.status_code == 302
    assert client.get("/api/v1/program", headers=admin).json["hold_days"] == 21


# --- the command line's number types -------------------------------------------------------------


@click.command()
@click.option("--port", type=AsciiIntRange(1, 65535))
@click.option("--seconds", type=AsciiIntRange())
@click.option("--poll", type=AsciiFloatRange(0.1, 60))
def numbers(port, seconds, poll):
    click.echo(f"{port!r} {seconds!r} {poll!r}")


@pytest.mark.parametrize("option", ["--port", "--seconds", "--poll"])
@pytest.mark.parametrize(
    "value", ["\u0661\u0662", "\uff11\uff12", "1_2", " 12", "12 ", "+12", "\u00b2", "-12", "0x1"]
)
def test_cli_number_types_refuse_other_digits(option, value):
    result = CliRunner().invoke(numbers, [option, value])
    assert result.exit_code == 2, result.output
    assert "digits 0-9" in result.output and option in result.output


@pytest.mark.parametrize("value", ["nan", "inf", "1e1", ".5e1"])
def test_cli_decimal_type_refuses_non_plain_decimals(value):
    result = CliRunner().invoke(numbers, ["--poll", value])
    assert result.exit_code == 2 and "digits 0-9" in result.output


def test_cli_number_types_take_plain_numbers():
    result = CliRunner().invoke(numbers, ["--port", "8080", "--seconds", "3600", "--poll", "0.5"])
    assert result.exit_code == 0, result.output
    assert result.output == "8080 3600 0.5\n"
    assert CliRunner().invoke(numbers, ["--port", "70000"]).exit_code == 2
    assert CliRunner().invoke(numbers, ["--poll", "61"]).exit_code == 2


def test_every_number_option_of_the_command_line_reads_ascii_digits_only():
    """Each option or argument of `referral-service` that takes a number uses the ASCII types."""
    import click

    from referral_service.cli import main
    from referral_service.cli_types import AsciiFloatRange, AsciiIntRange

    def commands(group, prefix=()):
        for name, command in group.commands.items():
            yield (*prefix, name), command
            if isinstance(command, click.Group):
                yield from commands(command, (*prefix, name))

    checked = []
    for path, command in commands(main):
        if not (command.callback and command.callback.__module__.startswith("referral_service")):
            continue  # Flask's and Flask-Migrate's own commands (`run --port`) read as they do
        for param in command.params:
            if isinstance(param.type, click.types.IntParamType | click.types.FloatParamType):
                assert isinstance(param.type, AsciiIntRange | AsciiFloatRange), (path, param.name)
                checked.append((path, param.name))
    assert (("worker",), "workers") in checked and (("serve",), "port") in checked
    assert (("customers", "portal-link"), "expires_in") in checked

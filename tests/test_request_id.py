"""Every answer carries its request id in `Request-Id`, every error body in `error.request_id`:
the client's `X-Request-ID` when it is a sane token, else one the service makes; log records
made while a request is served carry it too."""

import logging
import re

import pytest

from referral_service.request_id import OUTSIDE

MADE = re.compile(r"[0-9a-f]{32}")


def error_of(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.json["error"]
    assert error["code"] == code
    assert error["request_id"] == response.headers["Request-Id"]
    return error


def test_a_success_carries_a_made_id(client, shop):
    response = client.get("/api/v1/program", headers=shop)
    assert response.status_code == 200
    assert MADE.fullmatch(response.headers["Request-Id"])
    again = client.get("/api/v1/program", headers=shop)
    assert again.headers["Request-Id"] != response.headers["Request-Id"]


@pytest.mark.parametrize(
    "given",
    ["abc-123", "trace=00-4bf92f35-01;x:y/z", "x" * 128, "anna@example.com", "!~"],
)
def test_a_sane_id_is_echoed(client, shop, given):
    response = client.get("/api/v1/program", headers={**shop, "X-Request-ID": given})
    assert response.headers["Request-Id"] == given
    missing = client.get("/api/v1/nothing-here", headers={"X-Request-ID": given})
    assert error_of(missing, 404, "not_found")["request_id"] == given


@pytest.mark.parametrize(
    "given",
    ["", "has space", "x" * 129, "caf\u00e9", "tab\there", "\x7f", " lead", "<script>" * 20],
)
def test_a_hostile_id_is_replaced(client, shop, given):
    response = client.get("/api/v1/program", headers={**shop, "X-Request-ID": given})
    assert response.status_code == 200
    assert MADE.fullmatch(response.headers["Request-Id"])
    missing = client.get("/api/v1/nothing-here", headers={"X-Request-ID": given})
    assert MADE.fullmatch(error_of(missing, 404, "not_found")["request_id"])


def test_every_error_envelope_names_the_request(app, client, shop):
    @app.get("/api/v1/test-boom")
    def boom():
        raise RuntimeError("internals")

    answers = {
        404: client.get("/api/v1/nothing-here"),
        422: client.put("/api/v1/customers/c1", json={"email": "nope"}, headers=shop),
        401: client.get("/api/v1/program"),
        405: client.delete("/api/v1/program", headers=shop),
        413: client.put(
            "/api/v1/customers/c1",
            data="x" * (2 * 1024 * 1024),
            content_type="application/json",
            headers=shop,
        ),
        500: client.get("/api/v1/test-boom"),
    }
    codes = {
        404: "not_found",
        422: "validation_error",
        401: "unauthorized",
        405: "method_not_allowed",
        413: "payload_too_large",
        500: "internal_error",
    }
    for status, response in answers.items():
        error = error_of(response, status, codes[status])
        assert MADE.fullmatch(error["request_id"])
        assert list(error)[:2] == ["code", "message"]  # the envelope's fields as before
    assert "fields" in answers[422].json["error"]
    assert "internals" not in answers[500].get_data(as_text=True)


def test_a_public_page_carries_the_header(client):
    response = client.get("/no-such-page", headers={"Accept": "text/html", "X-Request-ID": "p-1"})
    assert response.status_code == 404 and response.mimetype == "text/html"
    assert response.headers["Request-Id"] == "p-1"


def test_log_records_carry_the_id(app, client, caplog):
    log = logging.getLogger("referral_service.tests")

    @app.get("/api/v1/test-log")
    def logs_a_line():
        log.warning("inside")
        return {"ok": True}

    with caplog.at_level(logging.WARNING, logger="referral_service.tests"):
        client.get("/api/v1/test-log", headers={"X-Request-ID": "req-42"})
        client.get("/api/v1/test-log", headers={"X-Request-ID": "anna@example.com"})
        log.warning("outside")
    inside = [record for record in caplog.records if record.getMessage() == "inside"]
    assert [record.request_id for record in inside] == ["req-42", "[email]"]
    [outside] = [record for record in caplog.records if record.getMessage() == "outside"]
    assert outside.request_id == OUTSIDE


def test_the_spec_describes_request_id(client):
    schemas = client.get("/api/openapi.json").json["components"]["schemas"]
    body = schemas["ErrorBody"]
    assert {"code", "message", "request_id"} <= set(body["required"])
    assert body["properties"]["request_id"]["type"] == "string"
    assert "fields" in body["properties"] and "fields" not in body["required"]

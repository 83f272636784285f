"""A pattern rule covers the whole value: Python's `$` also matches before a final line break,
so every field checked by a pattern is checked with `fullmatch` (api/schemas.py `WholeMatch`)."""

from pathlib import Path

import pytest

from referral_service.api import schemas


@pytest.mark.parametrize(
    "path, method, body, field",
    [
        ("/api/v1/customers/ref-1", "put", {"email": "a@mail.example\n"}, "email"),
        ("/api/v1/customers/ref-1", "put", {"email": "a@mail.example", "locale": "pl\n"}, "locale"),
        (
            "/api/v1/signups",
            "post",
            {"external_id": "friend-1\n", "email": "f@mail.example"},
            "external_id",
        ),
        ("/api/v1/program", "patch", {"landing_url": "https://shop.example/\n"}, "landing_url"),
        (
            "/api/v1/purchases",
            "post",
            {"order_id": "o-1", "customer_external_id": "c", "amount": "1.00\n", "currency": "EUR"},
            "amount",
        ),
    ],
)
def test_a_final_line_break_does_not_pass_a_pattern(client, admin, path, method, body, field):
    response = getattr(client, method)(path, json=body, headers=admin)
    assert response.status_code == 422, response.json
    assert field in response.json["error"]["fields"], response.json


def test_every_pattern_rule_of_the_api_matches_whole_values():
    """No plain `validate.Regexp` is left in the API's schemas."""
    from marshmallow import validate

    from referral_service.api import webhooks

    for module in (schemas, webhooks):
        source = Path(module.__file__).read_text(encoding="utf-8")
        assert "validate.Regexp(" not in source, module.__name__
    assert issubclass(schemas.WholeMatch, validate.Regexp)  # the OpenAPI `pattern` is kept

"""What the OpenAPI spec says beyond the fields: object-level rules, and answers any body can get.

A request schema may carry an `OPENAPI` dict of JSON Schema keywords about the object as a whole
(`anyOf`, `minProperties`, ...), which marshmallow cannot express field by field; a nullable
nested object admits null alone (see `_null_means_null`). Every operation that reads a JSON body
may also answer 400 (the body is not JSON) and 413 (the body is too large), and every one with a
path parameter 404 (a path that names nothing), and every API operation 400 for an address that
is not UTF-8 and 503 (with `Retry-After`) while the database is away; those come from the app,
not from a view, so they are documented here once for all. A platform's webhook
(`/integrations/...`) reads its body raw, so it has no 400 for it, and may answer 503 too.
"""

from apispec import BasePlugin

NOT_FOUND = "Nothing there (`not_found`): no such resource, or a path that names none."
BODY_ERRORS = {
    "400": "The body is not readable JSON (`invalid_json`).",
    "413": "The body is larger than the service accepts (`payload_too_large`).",
}
BAD_URL = "The address (path or query) is not valid UTF-8 once percent-decoded (`bad_url`)."
UNAVAILABLE = {
    "description": "The service's database is away or did not answer in time (`unavailable`); "
    "nothing is wrong with the request: send it again after the seconds in `Retry-After` (a "
    "retry is safe: the same `external_id`, `order_id`, `refund_id` or `Idempotency-Key` is "
    "recorded once).",
    "headers": {
        "Retry-After": {
            "description": "Seconds to wait before sending the request again.",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
    "content": {"application/json": {"schema": "ErrorEnvelope"}},
}


def _error(description: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": "ErrorEnvelope"}},
    }


def _null_means_null(node) -> None:
    """Make apispec's OpenAPI 3.0 "null" branch of a nullable nested object admit null alone.

    For `Nested(..., allow_none=True)` apispec writes `anyOf: [{type: object, nullable: true},
    {$ref: ...}]`, whose first branch admits any object at all; `enum: [null]` narrows it.
    """
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "anyOf" and {"type": "object", "nullable": True} in value:
                value[value.index({"type": "object", "nullable": True})]["enum"] = [None]
            _null_means_null(value)
    elif isinstance(node, list):
        for item in node:
            _null_means_null(item)


class SpecRules(BasePlugin):
    """An apispec plugin adding the object-level rules and the body errors."""

    def schema_helper(self, name, definition, **kwargs):
        _null_means_null(definition)
        return getattr(kwargs.get("schema"), "OPENAPI", None)

    def operation_helper(self, path=None, operations=None, **kwargs):
        for operation in (operations or {}).values():
            responses = operation.setdefault("responses", {})
            platform = (path or "").startswith("/integrations/")
            if "requestBody" in operation:
                for status, description in BODY_ERRORS.items():
                    # a platform's webhook body is read raw: one that is not JSON is acknowledged
                    if not (platform and status == "400"):
                        responses.setdefault(status, _error(description))
            if platform:  # the platform sends it again later, as it does for any 5xx
                responses.setdefault("503", UNAVAILABLE)
            if "{" in (path or ""):
                responses.setdefault("404", _error(NOT_FOUND))
            if (path or "").startswith("/api/"):
                if "400" in responses:
                    described = responses["400"]["description"]
                    if "bad_url" not in described:
                        responses["400"]["description"] = f"{described} {BAD_URL}"
                else:
                    responses["400"] = _error(BAD_URL)
                responses.setdefault("503", UNAVAILABLE)

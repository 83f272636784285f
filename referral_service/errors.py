"""The domain's exception tree, and the one place that maps errors to HTTP answers.

Every error leaves the service as `{"error": {"code", "message", "fields"?, "request_id"}}`,
except on the public pages: a browser there gets an HTML page with the same status (see
`wants_page`). `request_id` is the request's id, also in the `Request-Id` header (request_id.py).
"""

import logging

import psycopg
from flask import Flask, current_app, has_request_context, jsonify, request
from marshmallow import Schema, fields
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from referral_service.request_id import request_id

log = logging.getLogger(__name__)


class ReferralError(Exception):
    """Base of every error the service raises on purpose."""

    status = 400
    code = "bad_request"
    message = "The request could not be understood."

    def __init__(self, message: str | None = None, fields: dict | None = None):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.fields = fields


class BadUrl(ReferralError):
    """The request's address does not decode as UTF-8 (RFC 3986 percent-escapes of its bytes)."""

    code = "bad_url"


class ValidationFailed(ReferralError):
    """Input that breaks a rule; `fields` says which field and why."""

    status = 422
    code = "validation_error"
    message = "The request has invalid fields."


class InvalidCode(ReferralError):
    """A referral code that fails its signature: forged or mistyped."""

    status = 404
    code = "invalid_code"
    message = "This referral code is not valid."


class NotFound(ReferralError):
    """The thing asked for does not exist."""

    status = 404
    code = "not_found"
    message = "Not found."


class RevokedCode(NotFound):
    """A referral code that was valid but has been replaced."""

    code = "revoked_code"
    message = "This referral code has been revoked."


class InvalidLink(NotFound):
    """A share-page link that fails its signature: forged, mistyped or cut short."""

    code = "invalid_link"
    message = "This link is not valid."


class LinkExpired(ReferralError):
    """A share-page link whose time is up; the shop can send a new one.

    `customer_id` names whom it was for (its signature held), so that the page can say it in
    their language.
    """

    status = 410
    code = "link_expired"
    message = "This link has expired."

    def __init__(self, message: str | None = None, customer_id: int | None = None):
        super().__init__(message)
        self.customer_id = customer_id


class Conflict(ReferralError):
    """The request clashes with the current state (or with another request in flight)."""

    status = 409
    code = "conflict"
    message = "The request conflicts with the current state."


class OrderConflict(Conflict):
    """An `order_id` already recorded with another customer, amount or currency."""

    code = "order_conflict"
    message = "This order_id was already recorded for another order."


class RefundConflict(Conflict):
    """A `refund_id` already applied to the order with another amount."""

    code = "refund_conflict"
    message = "This refund_id was already applied with another amount."


class Unauthorized(ReferralError):
    """No API key, or one that is unknown or revoked."""

    status = 401
    code = "unauthorized"
    message = "A valid API key is required: send 'Authorization: Bearer <key>'."


class Forbidden(ReferralError):
    """A valid API key whose scope does not allow the request."""

    status = 403
    code = "forbidden"
    message = "This API key's scope does not allow this request."


class Throttled(ReferralError):
    """Too many attempts in a short time; `retry_after` says in how many seconds to try again."""

    status = 429
    code = "rate_limited"
    message = "Too many attempts; try again later."

    def __init__(self, message: str | None = None, retry_after: int = 60):
        super().__init__(message)
        self.retry_after = retry_after


RETRY_AFTER = 5  # seconds a client waits before it retries a request the database could not serve


class Unavailable(ReferralError):
    """The database is away or did not answer in time (see `is_outage`); nothing the client did
    is wrong, and the same request can be sent again after `retry_after` seconds."""

    status = 503
    code = "unavailable"
    message = (
        "The service cannot reach its database right now. Send the same request again after "
        "the seconds in Retry-After: a retry is safe (the same external_id, order_id, refund_id "
        "or Idempotency-Key is recorded once)."
    )

    def __init__(self, message: str | None = None, retry_after: int = RETRY_AFTER):
        super().__init__(message)
        self.retry_after = retry_after


# PostgreSQL error codes (SQLSTATE) of a server that cannot serve now: its connection classes
# (08...), a statement cancelled by statement_timeout or a lock not got in time, a server
# shutting down or starting, too many connections, out of resources.
OUTAGE_SQLSTATES = ("08", "57014", "55P03", "57P01", "57P02", "57P03", "53")
# SQLite's (Python 3.11 `sqlite_errorname`): the database locked past the busy timeout, its file
# not there or not readable, the disk failing or full.
OUTAGE_SQLITE_ERRORS = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_IOERR")
OUTAGE_SQLITE_ERRORS += ("SQLITE_FULL", "SQLITE_PROTOCOL")


def is_outage(error: BaseException) -> bool:
    """Whether a database error means the database cannot serve now (unreachable, hung, timed
    out, shutting down, locked too long), rather than a fault of the request or of the code.

    True for the pool's checkout timeout, a connection SQLAlchemy found broken, PostgreSQL
    errors without a SQLSTATE (the client's own: refused, reset, timed out) or with one of
    OUTAGE_SQLSTATES, and the SQLite errors of OUTAGE_SQLITE_ERRORS. False for everything else:
    an integrity error, a syntax error or a missing table is no outage.
    """
    if isinstance(error, PoolTimeout):
        return True
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    driver_error = error.orig
    sqlite_name = getattr(driver_error, "sqlite_errorname", None)
    if sqlite_name is not None:
        return sqlite_name.startswith(OUTAGE_SQLITE_ERRORS)
    if not isinstance(driver_error, psycopg.Error):
        return False
    if driver_error.sqlstate is None:  # raised by the client, not the server
        return isinstance(driver_error, psycopg.OperationalError)  # refused, reset, timed out
    return driver_error.sqlstate.startswith(OUTAGE_SQLSTATES)


class ErrorBody(Schema):
    """The inside of the error envelope."""

    code = fields.String(required=True, metadata={"example": "validation_error"})
    message = fields.String(required=True)
    request_id = fields.String(
        required=True,
        metadata={
            "description": "The request's id, as in the `Request-Id` response header: the "
            "request's `X-Request-ID` when that is printable ASCII without spaces, at most 128 "
            "characters, else one the service made. Quote it when reporting a problem.",
            "example": "9f1c2e4b7a6d4f0e8b3c5a2d1e0f9a8b",
        },
    )
    fields = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        metadata={"description": "Only for validation errors: the problems of each field."},
    )


class ErrorEnvelope(Schema):
    """Every error: `{"error": {"code", "message", "fields"?, "request_id"}}`."""

    error = fields.Nested(ErrorBody, required=True)


HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


# Paths of the machine-facing doors: their errors are always the JSON envelope.
API_PREFIXES = ("/api/", "/integrations/")


def wants_page() -> bool:
    """Whether an error goes to a browser on a public page: a path outside the API (`/r/...`,
    `/share/...`, `/landing`, an unknown path) asked by a client that prefers HTML to JSON."""
    if not has_request_context() or "error_page" not in current_app.extensions:
        return False
    if request.path == "/api" or request.path.startswith(API_PREFIXES):
        return False
    return request.accept_mimetypes.best_match(("application/json", "text/html")) == "text/html"


def error_response(status: int, code: str, message: str, fields: dict | None = None, headers=None):
    """The error envelope as a Flask response, or the public error page for a browser (the
    public blueprint provides it as `app.extensions["error_page"]`: status -> response)."""
    if wants_page():
        response = current_app.extensions["error_page"](status)
    else:
        body = {"code": code, "message": message}
        if fields:
            body["fields"] = fields
        current_id = request_id()
        if current_id is not None:  # always, in a request
            body["request_id"] = current_id
        response = jsonify({"error": body})
        response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def flatten_messages(messages, prefix: str = "") -> dict[str, list[str]]:
    """Turn marshmallow's nested messages into `{"a.b": ["problem"]}`."""
    if isinstance(messages, dict):
        flat: dict[str, list[str]] = {}
        for key, value in messages.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            flat.update(flatten_messages(value, name))
        return flat
    if isinstance(messages, list) and all(isinstance(item, str) for item in messages):
        return {prefix or "_schema": list(messages)}
    return {prefix or "_schema": [str(messages)]}


def _handle_referral_error(error: ReferralError):
    retry_after = getattr(error, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return error_response(error.status, error.code, error.message, error.fields, headers)


def _handle_http_exception(error: HTTPException):
    status = error.code or 500
    data = getattr(error, "data", None) or {}
    headers = dict(data.get("headers") or {})
    if status == 405 and error.valid_methods:
        headers["Allow"] = ", ".join(sorted(error.valid_methods))
    messages = data.get("messages")
    if messages is not None:  # webargs / flask-smorest validation
        if status == 400 and "json" in messages and isinstance(messages["json"], list):
            return error_response(400, "invalid_json", "The body is not valid JSON.", None, headers)
        fields: dict[str, list[str]] = {}
        for location_messages in messages.values():
            fields.update(flatten_messages(location_messages))
        return error_response(status, "validation_error", ValidationFailed.message, fields, headers)
    code = HTTP_CODES.get(status, "error")
    message = data.get("message") or error.description or error.name
    return error_response(status, code, message, None, headers)


def _handle_database_error(error: Exception):
    """A database error: 503 `unavailable` (with Retry-After) for an outage, else unexpected."""
    if is_outage(error):
        return _handle_referral_error(Unavailable())
    return _handle_unexpected(error)


def _handle_unexpected(error: Exception):
    log.exception("unexpected error")
    return error_response(500, "internal_error", "Something went wrong on our side.")


def register_error_handlers(app: Flask) -> None:
    """Answer every error, expected or not, with the envelope."""
    app.register_error_handler(ReferralError, _handle_referral_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(DBAPIError, _handle_database_error)
    app.register_error_handler(PoolTimeout, _handle_database_error)
    app.register_error_handler(Exception, _handle_unexpected)

"""Gunicorn's workers, answering the requests gunicorn itself refuses with the service's error
envelope (`{"error": {"code", "message", "request_id"}}`, see errors.py) instead of its HTML
page, with the service's security headers and a `Request-Id` (request_id.py).

Gunicorn refuses a request before the application sees it when the request line is longer than
`limit_request_line` (4094 bytes: 414), a header field is larger than
`limit_request_field_size` (8190 bytes) or there are more than `limit_request_fields` (100) of
them (431), or the request is not well-formed HTTP (400). Those answers keep gunicorn's status,
its log line and its access-log line; the body is JSON, with `Connection: close`.
Anything else (a fault of the application, of gunicorn's configuration, of TLS) is gunicorn's
own answer as before. gunicorn_conf.py picks `SyncWorker` for one thread per worker process,
`ThreadWorker` (gthread) for more.
"""

import json
import uuid
from datetime import datetime

from gunicorn import util
from gunicorn.http import errors
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers import gthread, sync

from referral_service.request_id import INCOMING, OUTGOING, SANE
from referral_service.security import HEADERS, NOTHING


def _kinds(*names: str) -> tuple[type, ...]:
    """Gunicorn's error classes of these names that this version has (22 to 27 differ)."""
    return tuple(kind for name in names if isinstance(kind := getattr(errors, name, None), type))


# Not the client's doing: gunicorn answers these itself (500), as before.
NOT_THE_CLIENTS = _kinds(
    "ConfigurationProblem", "InvalidResponseHeader", "InvalidResponseHeaderName"
)

# (gunicorn's errors, status, reason phrase, code, message): the first that matches; any other
# error of parsing the request is a 400 `bad_request`.
ANSWERS = (
    (
        _kinds("LimitRequestLine"),
        414,
        "URI Too Long",
        "uri_too_long",
        "The request line (method, address and version) is longer than the server accepts.",
    ),
    (
        _kinds("LimitRequestHeaders"),
        431,
        "Request Header Fields Too Large",
        "request_header_fields_too_large",
        "A header field of the request is larger than the server accepts, or there are more "
        "header fields than it accepts.",
    ),
    (
        _kinds("ExpectationFailed"),
        417,
        "Expectation Failed",
        "expectation_failed",
        "The server cannot meet the request's Expect header (only 100-continue is known).",
    ),
    (
        _kinds("UnsupportedTransferCoding"),
        501,
        "Not Implemented",
        "not_implemented",
        "The request's Transfer-Encoding is not one the server supports (chunked is).",
    ),
    (
        _kinds("ForbiddenProxyRequest"),
        403,
        "Forbidden",
        "forbidden",
        "The server takes PROXY protocol lines only from its trusted proxies.",
    ),
)
BAD_REQUEST = (
    400,
    "Bad Request",
    "bad_request",
    "The request is not well-formed HTTP: its request line, a header or the chunks of its body.",
)


def answer_for(error: BaseException) -> tuple[int, str, str, str] | None:
    """`(status, reason, code, message)` for an error of parsing a request (the client's), or
    None for an error gunicorn answers itself."""
    if not isinstance(error, errors.ParseException) or isinstance(error, NOT_THE_CLIENTS):
        return None
    for kinds, *answer in ANSWERS:
        if kinds and isinstance(error, kinds):
            return tuple(answer)
    return BAD_REQUEST


def error_bytes(status: int, reason: str, code: str, message: str, request_id: str) -> bytes:
    """The whole HTTP answer: status line, headers (the service's security headers and the
    `Request-Id`, as on every answer of the application) and the JSON envelope."""
    body = json.dumps(
        {"error": {"code": code, "message": message, "request_id": request_id}}
    ).encode()
    headers = {
        "Connection": "close",
        "Content-Type": "application/json",
        "Cache-Control": "no-store",
        **HEADERS,
        "Content-Security-Policy": NOTHING,
        OUTGOING: request_id,
        "Content-Length": str(len(body)),
    }
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()
    )
    return (head + "\r\n").encode("latin-1") + body


def given_request_id(req) -> str:
    """The refused request's `X-Request-ID` when gunicorn parsed its headers and it is a sane
    token (request_id.py), else a new id."""
    for name, value in getattr(req, "headers", None) or ():
        if isinstance(name, str) and name.upper() == INCOMING.upper() and SANE.fullmatch(value):
            return value
    return uuid.uuid4().hex


class JsonErrors:
    """`handle_error` of gunicorn's workers, with the envelope for the client's errors."""

    def handle_error(self, req, client, addr, exc):
        answer = answer_for(exc)
        if answer is None:
            return super().handle_error(req, client, addr, exc)
        status, reason, code, message = answer
        started = datetime.now()
        addr = addr or ("", -1)  # a unix socket
        self.log.warning("Invalid request from ip=%s: %s", addr[0], exc)
        if req is None:
            req = getattr(exc, "req", None) if isinstance(exc, errors.InvalidHeader) else None
        parsed = req is not None and not isinstance(req, str | bytes)
        data = error_bytes(status, reason, code, message, given_request_id(req if parsed else None))
        if parsed:  # a parsed request: its log line
            environ = default_environ(req, client, self.cfg)
            environ["REMOTE_ADDR"] = addr[0]
            environ["REMOTE_PORT"] = str(addr[1])
            response = Response(req, client, self.cfg)
            response.status = f"{status} {reason}"
            response.response_length = len(data)
            self.log.access(response, req, environ, datetime.now() - started)
        try:
            util.write_nonblock(client, data)
        except Exception:  # the client went away: nothing to tell it
            self.log.debug("Failed to send error message.")
        return None


class SyncWorker(JsonErrors, sync.SyncWorker):
    """Gunicorn's sync worker (one request at a time per process)."""


class ThreadWorker(JsonErrors, gthread.ThreadWorker):
    """Gunicorn's gthread worker (`THREADS` requests at a time per process)."""

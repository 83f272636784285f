"""The request id: one token per request that ties a client's report to the service's logs.

It is the request's `X-Request-ID` header when that is a sane token (printable ASCII without
spaces, at most 128 characters: what a proxy or a client's tracing puts there), else a new one
(32 hex digits). Every response carries it in a `Request-Id` header, every error body in the
envelope's `error.request_id` (errors.py), and every log record made while the request is served
as the attribute `request_id` (`-` outside a request), masked as log messages are (logs.py): a
client's header may hold an address.
"""

import logging
import re
import uuid

from flask import Flask, g, has_request_context, request

INCOMING = "X-Request-ID"
OUTGOING = "Request-Id"
MAX_LENGTH = 128
SANE = re.compile(rf"[\x21-\x7e]{{1,{MAX_LENGTH}}}")  # printable ASCII, no space
OUTSIDE = "-"  # a log record's request_id when no request is being served


def request_id() -> str | None:
    """The current request's id (made on first use, then kept for the request), or None
    outside a request."""
    if not has_request_context():
        return None
    found = g.get("request_id")
    if found is None:
        given = request.headers.get(INCOMING, "")
        found = given if SANE.fullmatch(given) else uuid.uuid4().hex
        g.request_id = found
    return found


def _logged_id() -> str:
    """The id as log records carry it: masked like a log message (made once per request)."""
    if not has_request_context():
        return OUTSIDE
    found = g.get("request_id_logged")
    if found is None:
        from referral_service.logs import redact

        found = g.request_id_logged = redact(request_id())
    return found


def _add_header(response):
    response.headers[OUTGOING] = request_id()
    return response


def _with_request_id(make_record):
    def make(*args, **kwargs):
        record = make_record(*args, **kwargs)
        try:
            record.request_id = _logged_id()
        except Exception:  # never let a log line fail over its id
            record.request_id = OUTSIDE
        return record

    make.adds_request_id = True
    # the other layers below it (logs.py's masking): each is installed once, whatever the order
    make.masks_addresses = getattr(make_record, "masks_addresses", False)
    return make


def install_log_records() -> None:
    """Give every log record of this process a `request_id` (once, however often called)."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "adds_request_id", False):
        logging.setLogRecordFactory(_with_request_id(factory))


def register_request_id(app: Flask) -> None:
    """Every response, errors included, leaves with its `Request-Id`; log records carry it."""
    app.after_request(_add_header)
    install_log_records()

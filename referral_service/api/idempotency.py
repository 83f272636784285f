"""The `Idempotency-Key` header: a retried request gets the first answer, byte for byte."""

import hashlib
import json
from functools import wraps

from flask import g, make_response, request
from sqlalchemy.exc import IntegrityError

from referral_service.domain import idempotency
from referral_service.domain.unit import unit_of_work

HEADER = "Idempotency-Key"


def _request_hash() -> str:
    raw = request.get_data(cache=True)
    try:  # the same JSON with other spacing or key order is the same request
        canonical = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, UnicodeDecodeError):
        canonical = raw
    return hashlib.sha256(
        request.method.encode() + b" " + request.path.encode() + b"\n" + canonical
    ).hexdigest()


class _NotSaved(Exception):
    """A server error's answer: never saved for the key (the step is rolled back)."""

    def __init__(self, response):
        self.response = response


def idempotent(blp, joins: bool = True):
    """Honour `Idempotency-Key` on a view (put it under `requires`, above `@blp.arguments`).

    The key is claimed in a transaction of its own (a retry meanwhile is a 409). With `joins`,
    the view's step and the saving of its answer are one unit of work, so that they commit
    together; should the step lose a race on a unique key, the unit is run once more (the step
    answers as a replay). `joins=False` saves the answer in a unit of its own after the step,
    for a view that does work outside its step's transaction first.
    """

    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            key = request.headers.get(HEADER)
            if key is None:
                return view(*args, **kwargs)
            owner = f"key:{g.api_key.id}"
            saved = idempotency.claim(owner, key, _request_hash())
            if saved is not None:
                response = make_response(saved.body, saved.status)
                response.mimetype = "application/json"
                response.headers["Idempotent-Replayed"] = "true"
                return response
            try:
                return _answer(owner, key, lambda: make_response(view(*args, **kwargs)), joins)
            except _NotSaved as error:
                idempotency.release(owner, key)
                return error.response
            except BaseException:
                idempotency.release(owner, key)
                raise

        return blp.doc(
            parameters=[
                {
                    "in": "header",
                    "name": HEADER,
                    "required": False,
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 255,
                        "pattern": "^[\\x20-\\x7e]+$",  # printable ASCII
                    },
                    "description": "Retry-safe requests: the same key and body get the saved "
                    "answer (kept 24 hours); the same key with another body is a 422; while the "
                    "first request runs, a retry is a 409.",
                }
            ]
        )(wrapper)

    return decorator


def _answer(owner: str, key: str, answer, joins: bool):
    """The view's answer, saved for the key; raises _NotSaved for a server error's answer."""
    if not joins:
        return _saved(owner, key, answer())
    try:
        return _joined(owner, key, answer)
    except IntegrityError:  # a race lost on a unique key: once more, the step answers as a replay
        return _joined(owner, key, answer)


def _joined(owner: str, key: str, answer):
    with unit_of_work():  # the view's step joins this unit, and its answer is saved in it
        return _saved(owner, key, answer())


def _saved(owner: str, key: str, response):
    if response.status_code >= 500:
        raise _NotSaved(response)
    idempotency.save(owner, key, response.status_code, response.get_data())
    return response

"""The `Idempotency-Key` header: a retried request gets the first answer, byte for byte."""

import hashlib
import json
from functools import wraps

from flask import g, make_response, request

from referral_service.domain import idempotency

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


def idempotent(blp):
    """Honour `Idempotency-Key` on a view (put it under `requires`, above `@blp.arguments`)."""

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
                response = make_response(view(*args, **kwargs))
            except BaseException:
                idempotency.release(owner, key)
                raise
            if response.status_code >= 500:
                idempotency.release(owner, key)
            else:
                idempotency.save(owner, key, response.status_code, response.get_data())
            return response

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

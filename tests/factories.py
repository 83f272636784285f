"""Test data: API keys and customers made through the domain, as the service makes them."""

import base64
import itertools

from referral_service.domain import api_keys, customers

_counter = itertools.count(1)


def api_key(scope: str = "shop", name: str | None = None) -> str:
    return api_keys.create(name or f"{scope}-key", scope).secret


def customer(external_id: str | None = None, email: str | None = None, **fields):
    n = next(_counter)
    return customers.enrol(
        external_id or f"cust-{n}", email or f"customer{n}@example.com", **fields
    )


def auth(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def click_row(click_id: str | None) -> str | None:
    """The `clicks.id` inside a signed click id (domain/clicks.py `sign_click`), read without
    checking its MAC: for comparing the ids the service hands out with the rows it keeps."""
    if click_id is None:
        return None
    raw = base64.urlsafe_b64decode(click_id + "=" * (-len(click_id) % 4))
    return base64.urlsafe_b64encode(raw[1:17]).rstrip(b"=").decode()

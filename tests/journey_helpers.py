"""Steps of the referral journey through the API, shared by the attribution and reward tests.

Times are controlled with `occurred_at` (sign-ups and purchases) and with the `now` of
`rewards.mature`; `ago(days=...)` gives an ISO time relative to the real clock.
"""

import itertools
import threading
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import func, select

from referral_service.extensions import db
from referral_service.models import utcnow


def ago(**delta) -> str:
    """An ISO 8601 time (UTC, with zone) `delta` before now."""
    return (utcnow() - timedelta(**delta)).isoformat()


def at(when: datetime) -> str:
    return when.isoformat()


def set_program(client, admin, **settings) -> dict:
    response = client.patch("/api/v1/program", json=settings, headers=admin)
    assert response.status_code == 200, response.json
    return response.json


def enrol(client, shop, external_id: str = "ref-1", email: str | None = None) -> str:
    """Enrol an existing customer; returns their referral code."""
    response = client.put(
        f"/api/v1/customers/{external_id}",
        json={"email": email or f"{external_id}@example.com"},
        headers=shop,
    )
    assert response.status_code in (200, 201), response.json
    return response.json["referral"]["code"]


_visitors = itertools.count(1)


def click(client, code: str, via: str | None = None, address: str | None = None) -> str:
    """Open the share link as a new visitor (an address of its own, unless `address` is given:
    the same visitor within an hour gets the same click); returns the click id the landing
    page receives."""
    address = address or f"2001:db8::{next(_visitors):x}"
    response = client.get(
        f"/r/{code}" + (f"?via={via}" if via else ""), environ_base={"REMOTE_ADDR": address}
    )
    assert response.status_code == 302
    return parse_qs(urlsplit(response.headers["Location"]).query)["click_id"][0]


def sign_up(client, shop, external_id: str, email: str | None = None, **fields):
    """POST /signups; `fields` are the optional body fields (referral_code, click_id, ...)."""
    body = {"external_id": external_id, "email": email or f"{external_id}@example.org", **fields}
    return client.post("/api/v1/signups", json=body, headers=shop)


def buy(client, shop, order_id: str, customer: str, amount: str, currency="EUR", **fields):
    """POST /purchases; `fields` may hold `occurred_at`, `headers` adds request headers."""
    headers = {**shop, **fields.pop("headers", {})}
    body = {
        "order_id": order_id,
        "customer_external_id": customer,
        "amount": amount,
        "currency": currency,
        **fields,
    }
    return client.post("/api/v1/purchases", json=body, headers=headers)


def refund(client, shop, order_id: str, amount: str | None = None, refund_id=None, **fields):
    """POST /refunds: in full (no amount), or `amount` with its `refund_id` (default: one made
    from the amount, so that the same call twice is a replay); `fields` such as
    `refunded_total` go in the body as they are."""
    body = {"order_id": order_id, **fields}
    if amount is not None:
        body.update(amount=amount, refund_id=refund_id or f"re-{order_id}-{amount}")
    return client.post("/api/v1/refunds", json=body, headers=shop)


def referred_friend(
    client, shop, friend: str = "friend-1", referrer: str = "ref-1", **fields
) -> dict:
    """Enrol `referrer` (if new) and sign `friend` up with the referrer's code; returns the body."""
    code = enrol(client, shop, referrer)
    response = sign_up(client, shop, friend, referral_code=code, **fields)
    assert response.status_code == 201, response.json
    assert response.json["attributed"] is True, response.json
    return response.json


def converted_friend(
    client,
    shop,
    friend: str = "friend-1",
    referrer: str = "ref-1",
    amount: str = "50.00",
    signed_up_at: str | None = None,
    **fields,
) -> dict:
    """A referred friend whose first purchase (order `o-<friend>`) converts; returns its body.

    The sign-up is dated `signed_up_at` (default: 60 days ago, so that a purchase dated
    in the past still follows it); `fields` go with the purchase.
    """
    referred_friend(client, shop, friend, referrer, occurred_at=signed_up_at or ago(days=60))
    response = buy(client, shop, f"o-{friend}", friend, amount, **fields)
    assert response.status_code == 201, response.json
    assert response.json["referral"]["status"] == "converted", response.json
    return response.json


def rewards_by_beneficiary(purchase_body: dict) -> dict:
    """`{beneficiary: (amount, status)}` of a purchase answer."""
    return {r["beneficiary"]: (r["amount"], r["status"]) for r in purchase_body["rewards"]}


def count(app, model, *where) -> int:
    with app.app_context():
        query = select(func.count()).select_from(model)
        for condition in where:
            query = query.where(condition)
        return db.session.scalar(query)


def mature(app, now: datetime) -> dict:
    from referral_service.domain import rewards

    with app.app_context():
        return rewards.mature(now=now)


def approve(client, admin, reward_id: int, **body):
    return client.post(f"/api/v1/rewards/{reward_id}/approve", json=body, headers=admin)


def ready_for_payout(app, client, admin, purchase_body: dict) -> list[int]:
    """Mature and approve the rewards of a purchase; returns their ids."""
    ids = [r["id"] for r in purchase_body["rewards"]]
    mature(app, utcnow() + timedelta(days=400))
    for reward_id in ids:
        response = approve(client, admin, reward_id)
        assert response.status_code == 200, response.json
    return ids


def pay(client, admin, reward_ids: list[int], reference: str = "SEPA-1") -> dict:
    """A payout of these rewards, marked paid; returns the paid batch."""
    created = client.post("/api/v1/payouts", json={"reward_ids": reward_ids}, headers=admin)
    assert created.status_code == 201, created.json
    paid = client.post(
        f"/api/v1/payouts/{created.json['id']}/mark-paid",
        json={"reference": reference},
        headers=admin,
    )
    assert paid.status_code == 200, paid.json
    return paid.json


def together(n: int, work) -> list:
    """Run `work(i)` in `n` threads released at once by a barrier; returns results in order."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list = []

    def run(i):
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except BaseException as error:  # reported by the test, not lost in the thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return results


def rewards_in_every_state(app, client, admin, shop) -> dict:
    """Two converted friends of `ref-1` and their four rewards: the first two batched in a
    payout, the third approved, the fourth awaiting approval.

    Returns `{code, approved, pending, payout}`: the referrer's code and those ids.
    """
    set_program(client, admin, friend_reward={"type": "fixed", "value": "5.00"})
    bodies = [converted_friend(client, shop, f"friend-{n}", "ref-1") for n in (1, 2)]
    ids = ready_for_payout(app, client, admin, bodies[0])
    ids += ready_for_payout(app, client, admin, {"rewards": bodies[1]["rewards"][:1]})
    payout = client.post("/api/v1/payouts", json={"reward_ids": ids[:2]}, headers=admin)
    assert payout.status_code == 201, payout.json
    return {
        "code": client.get("/api/v1/customers/ref-1", headers=shop).json["referral"]["code"],
        "approved": ids[2],
        "pending": bodies[1]["rewards"][1]["id"],
        "payout": payout.json["id"],
    }

"""First purchases earn rewards; the hold, maturing, approval and rejection of rewards.

A reward is `pending` until `available_at` (purchase time + `hold_days`), then
`awaiting_approval`, or `approved` at once when `auto_approve_max_amount` allows it and the
referral carries no risk flag. An admin approves or rejects; a payout makes it `paid`. A refund of
the qualifying order (domain/refunds.py) before payout makes it `reversed`; after payout it
records a clawback.
Exactly one reward per friend and beneficiary is guaranteed by a unique key on
(referral, beneficiary), and purchases of one customer are serialized by a lock on that customer.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from referral_service.domain import audit, customers, fraud, payouts, program
from referral_service.domain.attribution import referral_block
from referral_service.domain.clock import CLOCK_SKEW, check_time
from referral_service.domain.money import (
    check_currency,
    from_minor,
    parse_amount,
    percent_of,
    to_minor,
)
from referral_service.domain.pages import page
from referral_service.errors import Conflict, NotFound, ValidationFailed
from referral_service.extensions import db
from referral_service.models import Customer, Purchase, Referral, Reward, utcnow
from referral_service.models.base import begin_write
from referral_service.models.referral import REWARD_STATUSES

OPEN = ("pending", "awaiting_approval", "approved")
MAX_ORDER_ID = 128


@dataclass
class PurchaseAnswer:
    """The answer to a purchase; `created` is False for a replay of the same order."""

    body: dict
    created: bool


def check_order_id(value: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ORDER_ID or not value.isprintable():
        raise ValidationFailed(fields={"order_id": ["Must be 1 to 128 printable characters."]})
    return value


def reward_dict(reward: Reward, with_referral: bool = False) -> dict:
    """A reward as the API shows it."""
    body = {
        "id": reward.id,
        "beneficiary": reward.beneficiary,
        "amount": from_minor(reward.amount_minor, reward.currency),
        "currency": reward.currency,
        "status": reward.status,
        "available_at": reward.available_at,
    }
    if with_referral:
        referral = reward.referral
        body.update(
            customer_external_id=reward.customer.external_id,
            order_id=referral.order_id,
            created_at=reward.created_at,
            updated_at=reward.updated_at,
            note=reward.note,
            payout_id=reward.payout_id,
            referral={
                **referral_block(referral),
                "friend_external_id": referral.friend.external_id,
                "channel": referral.channel,
                "attributed_at": referral.attributed_at,
                "converted_at": referral.converted_at,
            },
            risk={"score": referral.risk_score, "reasons": list(referral.risk_reasons or [])},
        )
    return body


# --- purchases -----------------------------------------------------------------------------------


def record_purchase(
    order_id: str,
    customer_external_id: str,
    amount,
    currency: str,
    occurred_at: datetime | None = None,
    now: datetime | None = None,
) -> PurchaseAnswer:
    """Record an order; the friend's first qualifying purchase converts their referral.

    A replay of the same `order_id` returns the saved answer and changes nothing. Raises
    ValidationFailed for bad fields and NotFound for an unknown customer.
    """
    now = now or utcnow()
    order_id = check_order_id(order_id)
    currency = check_currency(currency)
    amount_minor = to_minor(parse_amount(amount, currency, "amount"), currency)
    occurred_at = check_time(occurred_at, now)
    customers.check_external_id(customer_external_id)
    try:
        return _record_purchase(
            order_id, customer_external_id, amount_minor, currency, occurred_at, now
        )
    except IntegrityError:  # the same order recorded concurrently: answer as a replay
        db.session.rollback()
        return _record_purchase(
            order_id, customer_external_id, amount_minor, currency, occurred_at, now
        )


def _record_purchase(order_id, external_id, amount_minor, currency, occurred_at, now):
    settings = program.settings()
    saved = db.session.connection().execute(_SAVED, {"order_id": order_id}).scalar()
    if saved is not None:
        db.session.rollback()
        return PurchaseAnswer(saved, created=False)
    begin_write(db.session)
    connection = db.session.connection()
    friend = connection.execute(
        _FRIEND_FOR_UPDATE if connection.dialect.name != "sqlite" else _FRIEND,
        {"external_id": external_id},
    ).first()
    if friend is None:
        db.session.rollback()
        raise NotFound(
            f"No customer with external_id {external_id!r}: enrol them or record "
            "their sign-up first."
        )
    first_purchase = connection.execute(_HAS_PURCHASED, {"customer_id": friend.id}).first() is None
    purchase = {
        "order_id": order_id,
        "customer_id": friend.id,
        "amount_minor": amount_minor,
        "refunded_minor": 0,
        "currency": currency,
        "occurred_at": occurred_at,
        "created_at": now,
        "response": {},
    }
    purchase["id"] = connection.execute(_INSERT_PURCHASE, purchase).inserted_primary_key[0]
    referral = None
    rewards = []
    if friend.referral_id is not None:
        referral = {
            "id": friend.referral_id,
            "referrer_external_id": friend.referrer_external_id,
            "status": friend.status,
        }
        if _qualifies(friend, purchase, settings):
            reasons = fraud.merged(
                friend.risk_reasons or [],
                fraud.purchase_signals(
                    connection, friend.referrer_id, friend.email, settings, occurred_at
                ),
            )
            converted = connection.execute(
                _CONVERT,
                {
                    "referral_id": friend.referral_id,
                    "converted_at": occurred_at,
                    "order_id": order_id,
                    "risk_score": fraud.score(reasons),
                    "risk_reasons": reasons,
                },
            ).rowcount
            if converted:
                referral["status"] = "converted"
                rewards = _grant(connection, friend, purchase, settings, now, fraud.score(reasons))
            else:  # converted meanwhile by another order (a PostgreSQL join can read it late)
                referral["status"] = connection.execute(
                    _REFERRAL_STATUS, {"id": friend.referral_id}
                ).scalar()
    body = {
        "order_id": order_id,
        "first_purchase": first_purchase,
        "referral": referral,
        "rewards": [_jsonable(reward) for reward in rewards],
    }
    connection.execute(_SAVE_RESPONSE, {"purchase_id": purchase["id"], "response": body})
    db.session.commit()
    return PurchaseAnswer(body, created=True)


def _jsonable(body: dict) -> dict:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in body.items()}


def _qualifies(friend, purchase: dict, settings: dict) -> bool:
    """A paid order (more than zero, at least the minimum, in the program currency) placed
    within the conversion window after the sign-up (allowing for clocks a little apart)."""
    if friend.status != "attributed" or purchase["currency"] != settings["currency"]:
        return False
    minimum = to_minor(Decimal(settings["min_order_amount"]), purchase["currency"])
    age = purchase["occurred_at"] - friend.attributed_at
    window = timedelta(days=settings["conversion_window_days"])
    return purchase["amount_minor"] >= max(minimum, 1) and -CLOCK_SKEW <= age <= window


def _rule_amount(rule: dict, order_minor: int, currency: str) -> int:
    if rule["type"] == "fixed":
        return to_minor(Decimal(rule["value"]), currency)
    return percent_of(order_minor, Decimal(rule["value"]))


def _grant(connection, friend, purchase: dict, settings: dict, now: datetime, risk: int) -> list:
    """The rewards of a conversion, within the referrer's monthly cap, as the API shows them."""
    available_at = purchase["occurred_at"] + timedelta(days=settings["hold_days"])
    currency = purchase["currency"]
    cap = settings["max_rewards_per_referrer_per_month"]
    rewards = []
    for beneficiary, customer_id in (("referrer", friend.referrer_id), ("friend", friend.id)):
        rule = settings[f"{beneficiary}_reward"]
        if rule["type"] == "none":
            continue
        if (
            beneficiary == "referrer"
            and cap is not None
            and _earned_this_month(connection, friend.referrer_id, now) >= cap
        ):
            continue
        amount = _rule_amount(rule, purchase["amount_minor"], currency)
        if amount <= 0:
            continue
        status = "pending"
        if available_at <= now:
            status = _matured_status(amount, currency, risk, settings)
        reward_id = connection.execute(
            _INSERT_REWARD,
            {
                "referral_id": friend.referral_id,
                "purchase_id": purchase["id"],
                "customer_id": customer_id,
                "beneficiary": beneficiary,
                "rule_type": rule["type"],
                "rule_value": rule["value"],
                "amount_minor": amount,
                "currency": currency,
                "status": status,
                "available_at": available_at,
                "created_at": now,
                "updated_at": now,
            },
        ).inserted_primary_key[0]
        rewards.append(
            {
                "id": reward_id,
                "beneficiary": beneficiary,
                "amount": from_minor(amount, currency),
                "currency": currency,
                "status": status,
                "available_at": available_at,
            }
        )
    return rewards


def _earned_this_month(connection, referrer_id: int, now: datetime) -> int:
    """The referrer's rewards created this calendar month (UTC), reversed or rejected ones aside.

    On PostgreSQL the referrer's row is locked first, so that two of their friends converting at
    once count one after the other (SQLite's write lock already orders them).
    """
    if connection.dialect.name != "sqlite":
        connection.execute(_LOCK_CUSTOMER, {"id": referrer_id})
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return connection.execute(_EARNED, {"customer_id": referrer_id, "since": month}).scalar()


def _matured_status(amount_minor: int, currency: str, risk_score: int, settings: dict) -> str:
    limit = settings["auto_approve_max_amount"]
    if limit is not None and risk_score == 0 and amount_minor <= to_minor(Decimal(limit), currency):
        return "approved"
    return "awaiting_approval"


# Statements of the purchase path, built once (their compiled form is cached by SQLAlchemy).
_purchases = Purchase.__table__
_customers = Customer.__table__
_referrals = Referral.__table__
_rewards = Reward.__table__
_referrers = _customers.alias("referrers")
_SAVED = select(_purchases.c.response).where(_purchases.c.order_id == bindparam("order_id"))
_FRIEND = (
    select(
        _customers.c.id,
        _customers.c.email,
        _referrals.c.id.label("referral_id"),
        _referrals.c.referrer_id,
        _referrals.c.status,
        _referrals.c.attributed_at,
        _referrals.c.risk_reasons,
        _referrers.c.external_id.label("referrer_external_id"),
    )
    .select_from(_customers)
    .outerjoin(_referrals, _referrals.c.friend_id == _customers.c.id)
    .outerjoin(_referrers, _referrers.c.id == _referrals.c.referrer_id)
    .where(_customers.c.external_id == bindparam("external_id"))
)
# purchases of one customer are serialized by a lock on that customer (PostgreSQL)
_FRIEND_FOR_UPDATE = _FRIEND.with_for_update(of=_customers)
_HAS_PURCHASED = (
    select(_purchases.c.id).where(_purchases.c.customer_id == bindparam("customer_id")).limit(1)
)
_INSERT_PURCHASE = insert(_purchases)
_CONVERT = (
    update(_referrals)
    .where(_referrals.c.id == bindparam("referral_id"), _referrals.c.status == "attributed")
    .values(
        status="converted",
        converted_at=bindparam("converted_at"),
        order_id=bindparam("order_id"),
        risk_score=bindparam("risk_score"),
        risk_reasons=bindparam("risk_reasons"),
    )
)
_REFERRAL_STATUS = select(_referrals.c.status).where(_referrals.c.id == bindparam("id"))
_INSERT_REWARD = insert(_rewards)
_SAVE_RESPONSE = (
    update(_purchases)
    .where(_purchases.c.id == bindparam("purchase_id"))
    .values(response=bindparam("response"))
)
_LOCK_CUSTOMER = select(_customers.c.id).where(_customers.c.id == bindparam("id")).with_for_update()
_EARNED = select(func.count()).where(
    _rewards.c.customer_id == bindparam("customer_id"),
    _rewards.c.beneficiary == "referrer",
    _rewards.c.created_at >= bindparam("since"),
    _rewards.c.status.not_in(("rejected", "reversed")),
)


# --- the hold ------------------------------------------------------------------------------------


def mature(now: datetime | None = None) -> dict:
    """Move rewards whose hold has passed on; returns `{awaiting_approval: n, approved: n}`.

    Safe to run from cron and concurrently: each reward moves in one conditional UPDATE whose
    condition is on the reward row itself (PostgreSQL re-checks such a condition on a row another
    transaction changed meanwhile; a condition in a subquery would see the old row).
    """
    now = now or utcnow()
    settings = program.settings()
    begin_write(db.session)
    due = (Reward.status == "pending", Reward.available_at <= now)
    approved = 0
    limit = settings["auto_approve_max_amount"]
    if limit is not None:
        clean = select(Referral.id).where(Referral.risk_score == 0)
        approved = db.session.execute(
            update(Reward)
            .where(
                *due,
                Reward.referral_id.in_(clean),
                Reward.currency == settings["currency"],
                Reward.amount_minor <= to_minor(Decimal(limit), settings["currency"]),
            )
            .values(status="approved", updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
    waiting = db.session.execute(
        update(Reward)
        .where(*due)
        .values(status="awaiting_approval", updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    return {"awaiting_approval": waiting, "approved": approved}


# --- admin decisions -----------------------------------------------------------------------------


def _reward_for_update(reward_id: int) -> Reward:
    reward = db.session.scalar(select(Reward).where(Reward.id == reward_id).with_for_update())
    if reward is None:
        db.session.rollback()
        raise NotFound(f"No reward {reward_id}.")
    return reward


def _decide(reward_id: int, actor: str, action: str, allowed: tuple, status: str, note, now):
    begin_write(db.session)
    reward = _reward_for_update(reward_id)
    if reward.status not in allowed:
        current = reward.status
        db.session.rollback()
        raise Conflict(
            f"Reward {reward_id} is {current}; only a reward that is "
            f"{' or '.join(allowed)} can be {status}."
        )
    before = {"status": reward.status, "note": reward.note}
    reward.status, reward.note, reward.updated_at = status, note, now
    if status == "rejected" and reward.payout_id is not None:
        batch, reward.payout_id = reward.payout_id, None  # out of its batch, not yet paid
        payouts.resettle(batch)
    audit.record(
        actor, action, "reward", reward.id, before, {"status": status, "note": note}, at=now
    )
    db.session.commit()
    return reward_dict(reward, with_referral=True)


def approve(reward_id: int, actor: str, note: str | None = None, now=None) -> dict:
    """Approve a reward awaiting approval; raises NotFound, or Conflict for another status."""
    return _decide(
        reward_id,
        actor,
        "reward.approve",
        ("awaiting_approval",),
        "approved",
        note,
        now or utcnow(),
    )


def reject(reward_id: int, actor: str, reason: str, now=None) -> dict:
    """Reject a reward not yet paid, with a reason; raises NotFound, Conflict, ValidationFailed."""
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationFailed(fields={"reason": ["Say why the reward is rejected."]})
    return _decide(
        reward_id, actor, "reward.reject", OPEN, "rejected", reason.strip(), now or utcnow()
    )


def list_rewards(
    status=None, referrer=None, cursor=None, limit=None, risk=None
) -> tuple[list, str | None]:
    """A page of rewards, newest first, each with its referral and risk; `risk` is `flagged`
    (a risk signal on the referral) or `clean` (none), or None for both."""
    query = select(Reward)
    if status:
        query = query.where(Reward.status == status)
    if risk in ("flagged", "clean"):
        scored = select(Referral.id).where(
            Referral.risk_score > 0 if risk == "flagged" else Referral.risk_score == 0
        )
        query = query.where(Reward.referral_id.in_(scored))
    if referrer:  # the rewards of this referrer's referrals: their own and their friends'
        query = query.where(
            Reward.referral_id.in_(
                select(Referral.id)
                .join(Customer, Customer.id == Referral.referrer_id)
                .where(Customer.external_id == referrer)
            )
        )
    items, next_cursor = page(query, Reward.id, cursor, limit)
    return [reward_dict(r, with_referral=True) for r in items], next_cursor


def totals_by_status() -> dict:
    """Every reward counted by status: `{status: {"count", "amounts": {currency: "12.50"}}}`."""
    totals = {status: {"count": 0, "amounts": {}} for status in REWARD_STATUSES}
    for status, currency, count, total in db.session.execute(
        select(Reward.status, Reward.currency, func.count(), func.sum(Reward.amount_minor))
        .group_by(Reward.status, Reward.currency)
        .order_by(Reward.currency)
    ):
        totals[status]["count"] += count
        totals[status]["amounts"][currency] = from_minor(int(total), currency)
    return totals

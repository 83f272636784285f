"""First purchases earn rewards; the hold, maturing, approval and rejection of rewards.

A reward is `pending` until `available_at` (purchase time + `hold_days`), then
`awaiting_approval`, or `approved` at once when `auto_approve_max_amount` allows it and the
referral carries no risk flag. An admin approves or rejects; a payout makes it `paid`. A refund of
the qualifying order (domain/refunds.py) before payout makes it `reversed`; after payout it
records a clawback.
At most one live referral reward per friend and beneficiary is guaranteed by a unique index on
(referral, beneficiary) over the rewards not reversed (a referral requalified after its
qualifying order was refunded earns anew), and purchases of one customer are serialized by a lock
on that customer.

Loyalty milestones (program setting `milestones`): the conversion that brings the referrer's
converted friends to N or more grants, in its unit of work, a reward of kind `milestone` for
each milestone of at most N friends the referrer holds no live (not reversed) milestone reward
for: a fixed amount, or a percent of that order, with the hold and approval of a referral reward
(and that conversion's risk). The monthly cap neither counts nor withholds them. One live
milestone reward per referrer and milestone is guaranteed by a partial unique index, its insert
doing nothing on a conflict; on PostgreSQL the referrer's row is locked before the count, so two
friends converting at once count one after the other (SQLite's write lock orders them already).
A refund that takes the count back below N reverses an unpaid one (domain/refunds.py).

Every purchase, referred or not, recomputes the customer's first-order summary in its currency
(domain/cohorts.py) in its unit of work, under the lock on the customer.

An `order_id` names one order for ever: sent again with the same customer, amount and currency it
gets the saved answer; with another, it is refused (OrderConflict), never answered as the first.
A purchase that earns nothing says why (`reason`, one of PURCHASE_REASONS).

Each step is one unit of work (domain/unit.py) and writes its events in its transaction: a
conversion `referral.converted` and `reward.created` for each reward; `mature` a
`reward.matured` for each reward it moved; an admin's decision `reward.approved` or
`reward.rejected`. A reward approved without an admin (by `auto_approve_max_amount`) is told
`reward.approved` as well. A replay writes nothing, so it tells nothing.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import selectinload

from referral_service.domain import cohorts, customers, fraud, idempotency, payouts, program
from referral_service.domain.clock import CLOCK_SKEW, check_time, utc_month
from referral_service.domain.money import (
    check_currency,
    from_minor,
    parse_amount,
    percent_of,
    to_minor,
)
from referral_service.domain.pages import page
from referral_service.domain.text import findable
from referral_service.domain.unit import unit_of_work
from referral_service.errors import Conflict, NotFound, OrderConflict, ValidationFailed
from referral_service.extensions import db
from referral_service.models import Customer, Purchase, Referral, Reward, utcnow
from referral_service.models.referral import LIVE_MILESTONE_REWARD

OPEN = ("pending", "awaiting_approval", "approved")
MAX_ORDER_ID = 128
# Why a purchase earns nothing, in order of precedence: the first that applies is the answer's
# `reason`. Reasons no other order of the friend could change come first (no referral, one
# already converted, a paused program, a date outside the conversion window), then those of this
# order (its currency, its amount). `monthly_cap_reached` is the one reason of a purchase that
# converts: the referrer's monthly cap withheld their reward (the friend's is still granted).
PURCHASE_REASONS = (
    "not_referred",
    "already_converted",
    "program_paused",
    "outside_conversion_window",
    "currency_mismatch",
    "below_minimum",
    "monthly_cap_reached",
)


@dataclass
class PurchaseAnswer:
    """The answer to a purchase; `created` is False for a replay of the same order."""

    body: dict
    created: bool


def check_order_id(value: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ORDER_ID or not value.isprintable():
        raise ValidationFailed(fields={"order_id": ["Must be 1 to 128 printable characters."]})
    return value


def reward_dict(reward: Reward) -> dict:
    """A reward as a checkout answer shows it (a refund's answer is made in the refund's
    transaction, so it shows the rewards as that refund left them)."""
    return {
        "id": reward.id,
        "beneficiary": reward.beneficiary,
        "kind": reward.kind,
        "milestone_friends": reward.milestone_friends,
        "amount": from_minor(reward.amount_minor, reward.currency),
        "currency": reward.currency,
        "status": reward.status,
        "available_at": reward.available_at,
    }


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

    `amount` is a decimal string in major units of `currency`; `occurred_at` (aware, default
    `now`) dates the order, and every rule counts by it: the conversion window, the hold
    (`available_at` = `occurred_at` + `hold_days`), velocity and the referrer's monthly cap (the
    UTC calendar month of `occurred_at`). The answer's body is `{order_id, first_purchase,
    referral, rewards, reason}`, `reason` None or one of PURCHASE_REASONS.

    A replay of the same `order_id` with the same customer, amount and currency returns the saved
    answer and changes nothing. Raises ValidationFailed for bad fields, NotFound for an unknown
    customer and OrderConflict for an `order_id` recorded with another customer, amount or
    currency.
    """
    now = now or utcnow()
    order_id = check_order_id(order_id)
    currency = check_currency(currency)
    amount_minor = to_minor(parse_amount(amount, currency, "amount"), currency)
    occurred_at = check_time(occurred_at, now)
    customers.check_external_id(customer_external_id)
    # the same order id recorded concurrently: the second run is a replay or a conflict
    return idempotency.retried_once(
        _record_purchase, order_id, customer_external_id, amount_minor, currency, occurred_at, now
    )


def _record_purchase(order_id, external_id, amount_minor, currency, occurred_at, now):
    settings = program.settings()
    # the replay is answered from a read, before the write transaction begins (which ends it)
    saved = db.session.connection().execute(_SAVED, {"order_id": order_id}).first()
    if saved is not None:
        _same_order(saved, order_id, external_id, amount_minor, currency)
        return PurchaseAnswer(saved.response, created=False)
    with unit_of_work(now) as unit:
        connection = db.session.connection()
        friend = connection.execute(
            _FRIEND_FOR_UPDATE if connection.dialect.name != "sqlite" else _FRIEND,
            {"external_id": external_id},
        ).first()
        if friend is None:
            raise NotFound(
                f"No customer with external_id {external_id!r}: enrol them or record "
                "their sign-up first."
            )
        first_purchase = (
            connection.execute(_HAS_PURCHASED, {"customer_id": friend.id}).first() is None
        )
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
        cohorts.refresh(connection, friend.id, currency)
        referral = None
        rewards = []
        reason = _why_not(friend, purchase, settings)
        if friend.referral_id is not None:
            referral = {
                "id": friend.referral_id,
                "referrer_external_id": friend.referrer_external_id,
                "status": friend.status,
            }
            if reason is None:
                reasons = fraud.merged(
                    friend.risk_reasons or [],
                    fraud.purchase_signals(
                        connection, friend.referrer_id, friend.email, settings, occurred_at
                    ),
                )
                risk = fraud.score(reasons)
                converted = connection.execute(
                    _CONVERT,
                    {
                        "referral_id": friend.referral_id,
                        "converted_at": occurred_at,
                        "order_id": order_id,
                        "risk_score": risk,
                        "risk_reasons": reasons,
                    },
                ).rowcount
                if converted:
                    referral["status"] = "converted"
                    rewards, reason = _grant(connection, friend, purchase, settings, now, risk)
                    rewards += _grant_milestones(connection, friend, purchase, settings, now, risk)
                    _emit_conversion(unit, friend, external_id, purchase, rewards, reasons)
                else:  # converted meanwhile by another order (a PostgreSQL join can read it late)
                    referral["status"] = connection.execute(
                        _REFERRAL_STATUS, {"id": friend.referral_id}
                    ).scalar()
                    reason = (
                        "not_referred" if referral["status"] == "rejected" else "already_converted"
                    )
        body = {
            "order_id": order_id,
            "first_purchase": first_purchase,
            "referral": referral,
            "rewards": [_jsonable(reward) for reward in rewards],
            "reason": reason,
        }
        connection.execute(_SAVE_RESPONSE, {"purchase_id": purchase["id"], "response": body})
    return PurchaseAnswer(body, created=True)


def _emit_conversion(unit, friend, external_id, purchase, rewards, reasons) -> None:
    """The events of a conversion: `referral.converted`, then `reward.created` for each reward
    (and `reward.approved` for one approved at once). On this hot path the data is built from
    what the step already holds, in the API's shape (GET /referrals and GET /rewards items)."""
    risk = {"score": fraud.score(reasons), "reasons": list(reasons)}
    referral = {
        "id": friend.referral_id,
        "referrer_external_id": friend.referrer_external_id,
        "friend_external_id": external_id,
        "status": "converted",
        "channel": friend.channel,
        "attributed_at": friend.attributed_at,
        "converted_at": purchase["occurred_at"],
        "order_id": purchase["order_id"],
        "risk": risk,
    }
    unit.emit("referral.converted", referral)
    for reward in rewards:
        shown = {
            **reward,
            "customer_external_id": friend.referrer_external_id
            if reward["beneficiary"] == "referrer"
            else external_id,
            "order_id": purchase["order_id"],
            "created_at": purchase["created_at"],
            "updated_at": purchase["created_at"],
            "note": None,
            "payout_id": None,
            "referral": {
                key: referral[key]
                for key in (
                    "id",
                    "referrer_external_id",
                    "status",
                    "friend_external_id",
                    "channel",
                    "attributed_at",
                    "converted_at",
                )
            },
            "risk": risk,
        }
        unit.emit("reward.created", shown)
        if reward["status"] == "approved":
            unit.emit("reward.approved", shown)


def _jsonable(body: dict) -> dict:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in body.items()}


def _same_order(saved, order_id: str, external_id: str, amount_minor: int, currency: str):
    """Raises OrderConflict unless a request names the saved order's customer, amount, currency."""
    differs = [
        name
        for name, same in (
            ("customer_external_id", saved.external_id == external_id),
            ("amount", saved.amount_minor == amount_minor and saved.currency == currency),
            ("currency", saved.currency == currency),
        )
        if not same
    ]
    if differs:
        raise OrderConflict(
            f"Order {order_id!r} was already recorded with another {', '.join(differs)}. "
            "A new order needs an order_id of its own; a retry of this order must send the "
            "customer, amount and currency it was first sent with."
        )


def _why_not(friend, purchase: dict, settings: dict) -> str | None:
    """Why this order cannot convert the friend's referral (the first of PURCHASE_REASONS that
    applies), or None when it qualifies: a paid order (more than zero, at least the minimum, in
    the program currency) dated within the conversion window after the sign-up (allowing for
    clocks a little apart), while the program runs. A paused program converts nothing, as it
    attributes nothing: the referral stays `attributed` for a later order."""
    if friend.referral_id is None or friend.status == "rejected":
        return "not_referred"
    if friend.status != "attributed":
        return "already_converted"
    if settings["paused"]:
        return "program_paused"
    age = purchase["occurred_at"] - friend.attributed_at
    if not -CLOCK_SKEW <= age <= timedelta(days=settings["conversion_window_days"]):
        return "outside_conversion_window"
    if purchase["currency"] != settings["currency"]:
        return "currency_mismatch"
    minimum = to_minor(Decimal(settings["min_order_amount"]), purchase["currency"])
    if purchase["amount_minor"] < max(minimum, 1):
        return "below_minimum"
    return None


def _rule_amount(rule: dict, order_minor: int, currency: str) -> int:
    if rule["type"] == "fixed":
        return to_minor(Decimal(rule["value"]), currency)
    return percent_of(order_minor, Decimal(rule["value"]))


def _grant(connection, friend, purchase: dict, settings: dict, now: datetime, risk: int):
    """The rewards of a conversion as the API shows them, and the reason of one withheld:
    `monthly_cap_reached` when the referrer's cap for the order's month is used up, else None.

    The hold runs from the order's date (a shop's refund window does), so an order reported
    after its hold is over matures at once.
    """
    available_at = purchase["occurred_at"] + timedelta(days=settings["hold_days"])
    currency = purchase["currency"]
    cap = settings["max_rewards_per_referrer_per_month"]
    rewards, reason = [], None
    for beneficiary, customer_id in (("referrer", friend.referrer_id), ("friend", friend.id)):
        rule = settings[f"{beneficiary}_reward"]
        if rule["type"] == "none":
            continue
        if (
            beneficiary == "referrer"
            and cap is not None
            and _earned_in_month(connection, friend.referrer_id, purchase["occurred_at"]) >= cap
        ):
            reason = "monthly_cap_reached"
            continue
        amount = _rule_amount(rule, purchase["amount_minor"], currency)
        if amount <= 0:
            continue
        status = "pending"
        if available_at <= now:
            status = _matured_status(amount, currency, risk, settings)
        row = _reward_row(friend, purchase, customer_id, beneficiary, rule, amount, status, now)
        row.update(kind="referral", milestone_friends=None, available_at=available_at)
        reward_id = connection.execute(_INSERT_REWARD, row).inserted_primary_key[0]
        rewards.append(_shown(reward_id, row))
    return rewards, reason


def _reward_row(friend, purchase, customer_id, beneficiary, rule, amount, status, now) -> dict:
    """The columns of a reward earned by `purchase` (its referral the friend's), but its kind,
    milestone and `available_at`."""
    return {
        "referral_id": friend.referral_id,
        "purchase_id": purchase["id"],
        "customer_id": customer_id,
        "beneficiary": beneficiary,
        "rule_type": rule["type"],
        "rule_value": rule["value"],
        "amount_minor": amount,
        "currency": purchase["currency"],
        "status": status,
        "created_at": now,
        "updated_at": now,
    }


def _shown(reward_id: int, row: dict) -> dict:
    """A reward just inserted, as the purchase answer shows it."""
    return {
        "id": reward_id,
        "beneficiary": row["beneficiary"],
        "kind": row["kind"],
        "milestone_friends": row["milestone_friends"],
        "amount": from_minor(row["amount_minor"], row["currency"]),
        "currency": row["currency"],
        "status": row["status"],
        "available_at": row["available_at"],
    }


def _grant_milestones(
    connection, friend, purchase: dict, settings: dict, now: datetime, risk: int
) -> list[dict]:
    """The milestone rewards this conversion grants the referrer, as the API shows them: one
    for each milestone reached (at most as many friends as the referrer has converted, this one
    included) that they hold no live milestone reward for. A reward another conversion of theirs
    inserted meanwhile is left to it (the insert does nothing) and not listed here."""
    milestones = settings["milestones"]
    if not milestones:
        return []
    referrer_id = friend.referrer_id
    lock_referrer(connection, referrer_id)
    converted = connection.execute(_CONVERTED_FRIENDS, {"referrer_id": referrer_id}).scalar()
    reached = [milestone for milestone in milestones if milestone["friends"] <= converted]
    if not reached:
        return []
    held = set(connection.execute(_LIVE_MILESTONES, {"customer_id": referrer_id}).scalars())
    available_at = purchase["occurred_at"] + timedelta(days=settings["hold_days"])
    currency = purchase["currency"]
    insert_milestone = _INSERT_MILESTONE[connection.dialect.name == "postgresql"]
    granted = []
    for milestone in reached:
        rule, friends = milestone["reward"], milestone["friends"]
        amount = _rule_amount(rule, purchase["amount_minor"], currency)
        if friends in held or amount <= 0:
            continue
        status = "pending"
        if available_at <= now:
            status = _matured_status(amount, currency, risk, settings)
        row = _reward_row(friend, purchase, referrer_id, "referrer", rule, amount, status, now)
        row.update(kind="milestone", milestone_friends=friends, available_at=available_at)
        reward_id = connection.execute(insert_milestone, row).scalar()
        if reward_id is None:  # granted by another conversion meanwhile
            continue
        granted.append(_shown(reward_id, row))
    return granted


def lock_referrer(connection, referrer_id: int) -> None:
    """On PostgreSQL, lock the referrer's row: their friends' conversions (and refunds) that
    count or cap their rewards then run one after the other (SQLite's write lock already orders
    them)."""
    if connection.dialect.name != "sqlite":
        connection.execute(_LOCK_CUSTOMER, {"id": referrer_id})


def _earned_in_month(connection, referrer_id: int, ordered_at: datetime) -> int:
    """The referrer's referral rewards for orders dated in the UTC calendar month of `ordered_at`,
    reversed or rejected ones aside: the month of the order, not of its processing, so that an
    order reported late or replayed counts where it belongs.

    Milestone rewards are not counted. On PostgreSQL the referrer's row is locked first
    (`lock_referrer`), so that two of their friends converting at once count one after the other.
    """
    lock_referrer(connection, referrer_id)
    start, end = utc_month(ordered_at)
    return connection.execute(
        _EARNED, {"customer_id": referrer_id, "start": start, "end": end}
    ).scalar()


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
# the saved answer, with what decides whether a request is the same order
_SAVED = (
    select(
        _purchases.c.response,
        _purchases.c.amount_minor,
        _purchases.c.currency,
        _customers.c.external_id,
    )
    .join_from(_purchases, _customers, _customers.c.id == _purchases.c.customer_id)
    .where(_purchases.c.order_id == bindparam("order_id"))
)
_FRIEND = (
    select(
        _customers.c.id,
        _customers.c.email,
        _referrals.c.id.label("referral_id"),
        _referrals.c.referrer_id,
        _referrals.c.status,
        _referrals.c.attributed_at,
        _referrals.c.risk_reasons,
        _referrals.c.channel,
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
# FOR NO KEY UPDATE: it orders the referrer's friends' conversions among themselves (and after
# the referrer's own purchase, which locks the row FOR UPDATE), but not against the key-share
# locks that inserting their rewards takes on the row (its foreign key): a conversion that
# inserted its referral reward before asking for this lock would otherwise deadlock with another
_LOCK_CUSTOMER = (
    select(_customers.c.id)
    .where(_customers.c.id == bindparam("id"))
    .with_for_update(key_share=True)
)
_EARNED = (
    select(func.count())
    .select_from(_rewards.join(_purchases, _purchases.c.id == _rewards.c.purchase_id))
    .where(
        _rewards.c.customer_id == bindparam("customer_id"),
        _rewards.c.beneficiary == "referrer",
        _rewards.c.kind == "referral",
        _rewards.c.status.not_in(("rejected", "reversed")),
        _purchases.c.occurred_at >= bindparam("start"),
        _purchases.c.occurred_at < bindparam("end"),
    )
)

_CONVERTED_FRIENDS = (
    select(func.count())
    .select_from(_referrals)
    .where(
        _referrals.c.referrer_id == bindparam("referrer_id"),
        _referrals.c.converted_at.is_not(None),  # a range of ix_referrals_referrer_converted
        _referrals.c.status == "converted",
    )
)
_LIVE_MILESTONES = select(_rewards.c.milestone_friends).where(
    _rewards.c.customer_id == bindparam("customer_id"),
    _rewards.c.kind == "milestone",
    _rewards.c.status != "reversed",
)
# a milestone already granted (by a conversion committed meanwhile) makes the insert do nothing
_INSERT_MILESTONE = {
    is_postgresql: (postgresql if is_postgresql else sqlite)
    .insert(_rewards)
    .on_conflict_do_nothing(
        index_elements=["customer_id", "milestone_friends"],
        index_where=text(LIVE_MILESTONE_REWARD),
    )
    .returning(_rewards.c.id)
    for is_postgresql in (False, True)
}


# --- the hold ------------------------------------------------------------------------------------


def mature(now: datetime | None = None) -> dict:
    """Move rewards whose hold has passed on; returns `{awaiting_approval: n, approved: n}`.

    Each moved reward gets its `reward.matured` event (and `reward.approved` when it is approved
    at once), in the same transaction. Safe to run from cron and concurrently: each reward moves
    in one conditional UPDATE whose condition is on the reward row itself (PostgreSQL re-checks
    such a condition on a row another transaction changed meanwhile; a condition in a subquery
    would see the old row), and the UPDATE returns the ids it changed (`RETURNING`), so a reward
    moved by a concurrent run, or decided by an admin meanwhile, is neither counted nor told.
    """
    now = now or utcnow()
    settings = program.settings()
    with unit_of_work(now) as unit:
        due = (Reward.status == "pending", Reward.available_at <= now)
        approved: list[int] = []
        limit = settings["auto_approve_max_amount"]
        if limit is not None:
            clean = select(Referral.id).where(Referral.risk_score == 0)
            approved = _moved(
                update(Reward)
                .where(
                    *due,
                    Reward.referral_id.in_(clean),
                    Reward.currency == settings["currency"],
                    Reward.amount_minor <= to_minor(Decimal(limit), settings["currency"]),
                )
                .values(status="approved", updated_at=now)
            )
        waiting = _moved(
            update(Reward).where(*due).values(status="awaiting_approval", updated_at=now)
        )
        for reward in _with_referrals(sorted(approved + waiting)):
            unit.emit("reward.matured", reward)
            if reward.status == "approved":
                unit.emit("reward.approved", reward)
    return {"awaiting_approval": len(waiting), "approved": len(approved)}


def _moved(statement) -> list[int]:
    """The ids of the rewards an UPDATE changed."""
    return list(
        db.session.scalars(
            statement.returning(Reward.id).execution_options(synchronize_session=False)
        )
    )


def _with_referrals(reward_ids: list[int]) -> list[Reward]:
    """These rewards as they stand now, with what their events show loaded in a few queries."""
    if not reward_ids:
        return []
    return list(
        db.session.scalars(
            select(Reward)
            .where(Reward.id.in_(reward_ids))
            .order_by(Reward.id)
            .options(
                selectinload(Reward.customer),
                selectinload(Reward.referral).selectinload(Referral.referrer),
                selectinload(Reward.referral).selectinload(Referral.friend),
            )
            .execution_options(populate_existing=True)
        )
    )


# --- admin decisions -----------------------------------------------------------------------------


def _reward_for_update(reward_id: int) -> Reward:
    reward = db.session.scalar(select(Reward).where(Reward.id == reward_id).with_for_update())
    if reward is None:
        raise NotFound(f"No reward {reward_id}.")
    return reward


def _decide(reward_id: int, actor: str, action: str, allowed: tuple, status: str, note, now):
    with unit_of_work(now) as unit:
        reward = _reward_for_update(reward_id)
        if reward.status not in allowed:
            raise Conflict(
                f"Reward {reward_id} is {reward.status}; only a reward that is "
                f"{' or '.join(allowed)} can be {status}."
            )
        before = {"status": reward.status, "note": reward.note}
        reward.status, reward.note, reward.updated_at = status, note, now
        if status == "rejected" and reward.payout_id is not None:
            batch, reward.payout_id = reward.payout_id, None  # out of its batch, not yet paid
            payouts.resettle(batch)
        unit.audit(actor, action, "reward", reward.id, before, {"status": status, "note": note})
        unit.emit(f"reward.{status}", reward)
    return reward


def approve(reward_id: int, actor: str, note: str | None = None, now=None) -> Reward:
    """Approve a reward awaiting approval (event `reward.approved`); returns the reward; raises
    NotFound, or Conflict for another status."""
    return _decide(
        reward_id,
        actor,
        "reward.approve",
        ("awaiting_approval",),
        "approved",
        note,
        now or utcnow(),
    )


def reject(reward_id: int, actor: str, reason: str, now=None) -> Reward:
    """Reject a reward not yet paid, with a reason (event `reward.rejected`); returns the reward;
    raises NotFound, Conflict, ValidationFailed."""
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationFailed(fields={"reason": ["Say why the reward is rejected."]})
    return _decide(
        reward_id, actor, "reward.reject", OPEN, "rejected", reason.strip(), now or utcnow()
    )


def list_rewards(
    status=None, referrer=None, cursor=None, limit=None, risk=None
) -> tuple[list[Reward], str | None]:
    """A page of rewards, newest first: `(rewards, next_cursor)`, each reward with its referral,
    friend and referrer loaded. `risk` is `flagged` (a risk signal on the referral) or `clean`
    (none), or None for both. A filter holding a control character finds nothing."""
    if not (findable(status) and findable(referrer)):
        return [], None
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
    query = query.options(
        selectinload(Reward.customer),
        selectinload(Reward.referral).selectinload(Referral.referrer),
        selectinload(Reward.referral).selectinload(Referral.friend),
    )
    return page(query, Reward.id, cursor, limit)

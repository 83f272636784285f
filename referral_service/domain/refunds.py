"""Refunds of orders, each applied once; the order's rewards are reversed, recomputed, clawed back.

A refund is one of three kinds, as shops and payment platforms report them:

* full (no amount): all that is left of the order;
* `refund_id` + `amount`: one partial refund, named by the shop; the same id again is a replay
  (recorded in `refunds`, unique per order for ever), and with another amount a conflict;
* `refunded_total`: the order's cumulative refunded amount; a figure at or below what is already
  applied (a retry, or an older figure arriving late) changes nothing.

Every refund of one order is applied under a lock on that order (PostgreSQL row lock, SQLite's
write lock), so two deliveries of the same refund at once apply it once. Rewards not yet paid
are reversed (the order no longer qualifies: refunded in full, or below `min_order_amount`) or,
for percent rewards, recomputed on what remains; a paid reward gets a clawback instead, netted
off the beneficiary's later payouts. When the friend's qualifying order no longer qualifies and
none of its rewards was paid (all reversed), the referral goes back to `attributed`, so that a
later qualifying order within the conversion window converts it again (audited as
`referral.requalified`).

Milestone rewards (kind `milestone`, domain/rewards.py) follow the count of the referrer's
converted friends, not the amount of an order: a refund that takes a referral back to
`attributed` recounts them in its unit of work (under a lock on the referrer's row on
PostgreSQL, as a conversion counts), and each of the referrer's milestone rewards for more
friends than remain that is not yet paid (pending, awaiting approval or approved, in an unpaid
batch or not) is reversed. A paid one stays paid, with no clawback; a partial refund that leaves
the order qualifying changes none.

A refund also recomputes the customer's first-order summary in the order's currency
(domain/cohorts.py), under a lock on the customer's row on PostgreSQL (the lock their purchases
take), so that a purchase and a refund of one customer at once leave it right.

A refund is one unit of work (domain/unit.py); its events are `reward.reversed` for each reward
it reverses, `clawback.created` for each clawback and `referral.requalified`. A percent reward
recomputed on what remains has no event of its own; a replay writes none.
"""

from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select, update

from referral_service.domain import cohorts, idempotency, payouts, program
from referral_service.domain.money import from_minor, parse_amount, percent_of, to_minor
from referral_service.domain.rewards import OPEN, check_order_id, lock_referrer, reward_dict
from referral_service.domain.unit import Unit, unit_of_work
from referral_service.errors import NotFound, RefundConflict, ValidationFailed
from referral_service.extensions import db
from referral_service.models import Clawback, Purchase, Referral, Refund, Reward, utcnow

MAX_REFUND_ID = 128
SHOP = "shop"  # the actor of a refund whose caller is not named

HOW_TO_SEND = (
    "A partial refund needs its `refund_id` (the refund's own id at the shop or payment "
    "platform, so that a retry is never applied twice) with its `amount`, or instead "
    "`refunded_total`: the order's refunded amount so far. A full refund needs neither."
)


def check_refund_id(value) -> str:
    """A shop's refund id: 1 to 128 printable characters; raises ValidationFailed."""
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_REFUND_ID
        or not value.isprintable()
    ):
        raise ValidationFailed(fields={"refund_id": ["Must be 1 to 128 printable characters."]})
    return value


def _check_kind(amount, refund_id, refunded_total) -> None:
    if refunded_total is not None and (amount is not None or refund_id is not None):
        raise ValidationFailed(
            fields={
                "refunded_total": [
                    "Send either `refunded_total` alone, or `refund_id` with `amount`; not both."
                ]
            }
        )
    if amount is not None and refund_id is None:
        raise ValidationFailed(fields={"amount": [HOW_TO_SEND]})
    if refund_id is not None and amount is None:
        raise ValidationFailed(
            fields={"amount": ["Send the refund's `amount` with its `refund_id`. " + HOW_TO_SEND]}
        )
    if refund_id is not None:
        check_refund_id(refund_id)


def refund(
    order_id: str,
    amount=None,
    refund_id: str | None = None,
    refunded_total=None,
    actor: str = SHOP,
    now: datetime | None = None,
) -> dict:
    """Apply a refund of an order once: full (no `amount`), `refund_id` + `amount`, or the
    cumulative `refunded_total` (amounts: decimal strings in major units of the order's currency).

    Returns the order after it: `{order_id, currency, refunded_total, remaining, rewards,
    clawbacks}` with the order's rewards as the API shows them and every clawback recorded on
    them (`{reward_id, amount, currency}`). A replay (the same `refund_id` and amount, a
    `refunded_total` at or below what is applied, a full refund of a fully refunded order)
    changes nothing and returns the same. Raises ValidationFailed for a bad or missing field,
    or an amount or total beyond the order; NotFound for an unknown order; RefundConflict for a
    `refund_id` already applied with another amount.
    """
    now = now or utcnow()
    order_id = check_order_id(order_id)
    _check_kind(amount, refund_id, refunded_total)
    # the same refund id applied concurrently: the second run answers as a replay
    return idempotency.retried_once(
        _refund, order_id, amount, refund_id, refunded_total, actor, now
    )


def _refund(order_id, amount, refund_id, refunded_total, actor, now) -> dict:
    settings = program.settings()
    with unit_of_work(now) as unit:
        purchase = db.session.scalar(
            select(Purchase)
            .where(Purchase.order_id == order_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if purchase is None:
            raise NotFound(f"No purchase with order_id {order_id!r}.")
        refund_minor = _to_apply(purchase, amount, refund_id, refunded_total)
        if refund_minor == 0:  # a replay: nothing changes
            return _answer(purchase)
        purchase.refunded_minor += refund_minor
        db.session.add(
            Refund(
                purchase_id=purchase.id,
                refund_id=refund_id,
                amount_minor=refund_minor,
                refunded_total_minor=purchase.refunded_minor,
                created_at=now,
            )
        )
        db.session.flush()  # a refund id applied meanwhile fails here, before any other change
        # the customer's first-order summary, after their purchases running at once (the lock)
        connection = db.session.connection()
        lock_referrer(connection, purchase.customer_id)
        cohorts.refresh(connection, purchase.customer_id, purchase.currency)
        _follow(unit, purchase, settings, actor)
        return _answer(purchase)


def _to_apply(purchase: Purchase, amount, refund_id, refunded_total) -> int:
    """What this refund adds to the order's refunded amount, in minor units (0: a replay)."""
    currency = purchase.currency
    remaining = purchase.amount_minor - purchase.refunded_minor
    if refunded_total is not None:
        total = to_minor(parse_amount(refunded_total, currency, "refunded_total"), currency)
        if total > purchase.amount_minor:
            raise ValidationFailed(
                fields={
                    "refunded_total": [
                        f"The order is of {from_minor(purchase.amount_minor, currency)} "
                        f"{currency}; no more of it can be refunded."
                    ]
                }
            )
        return max(0, total - purchase.refunded_minor)
    if refund_id is None:  # full
        return remaining
    asked = to_minor(parse_amount(amount, currency, "amount", allow_zero=False), currency)
    applied = db.session.scalar(
        select(Refund.amount_minor).where(
            Refund.purchase_id == purchase.id, Refund.refund_id == refund_id
        )
    )
    if applied is not None:
        if applied != asked:
            raise RefundConflict(
                f"Refund {refund_id!r} of order {purchase.order_id!r} was applied with "
                f"{from_minor(applied, currency)} {currency}, not "
                f"{from_minor(asked, currency)}: a refund id names one refund for ever. Send "
                "another refund with a new `refund_id`."
            )
        return 0
    if asked > remaining:
        raise ValidationFailed(
            fields={
                "amount": [
                    f"Only {from_minor(remaining, currency)} {currency} of this order is left "
                    "to refund."
                ]
            }
        )
    return asked


def _follow(unit: Unit, purchase: Purchase, settings: dict, actor: str) -> None:
    """The order's referral rewards follow its refunded amount (see the module's docstring;
    milestone rewards follow the count of converted friends, `_reverse_milestones`); events
    `reward.reversed` and `clawback.created`, and `referral.requalified`."""
    now = unit.now
    left = purchase.amount_minor - purchase.refunded_minor
    minimum = (
        to_minor(Decimal(settings["min_order_amount"]), purchase.currency)
        if settings["currency"] == purchase.currency
        else 0
    )
    reverse_all = left == 0 or left < minimum
    # the rewards first, then their batches (payouts.resettle): the order mark_paid locks them in
    rewards = db.session.scalars(
        select(Reward)
        .where(
            Reward.purchase_id == purchase.id,
            Reward.kind == "referral",
            Reward.status.in_((*OPEN, "paid")),
        )
        .order_by(Reward.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    clawed = payouts.clawed_back([reward.id for reward in rewards])
    changed_batches = set()  # unpaid batches whose rewards left or shrank
    for reward in rewards:
        target = 0 if reverse_all else _target(reward, left)
        if reward.status == "paid":
            owed = reward.amount_minor - clawed.get(reward.id, 0)
            if owed > target:
                clawback = Clawback(
                    customer_id=reward.customer_id,
                    reward_id=reward.id,
                    amount_minor=owed - target,
                    settled_minor=0,
                    currency=reward.currency,
                    created_at=now,
                )
                db.session.add(clawback)
                unit.emit("clawback.created", clawback)
        elif reverse_all:
            if reward.payout_id is not None:
                changed_batches.add(reward.payout_id)
            reward.status, reward.updated_at, reward.payout_id = "reversed", now, None
            unit.emit("reward.reversed", reward)
        elif target != reward.amount_minor:
            if reward.payout_id is not None:
                changed_batches.add(reward.payout_id)
            reward.amount_minor, reward.updated_at = target, now
    for batch in sorted(changed_batches):
        payouts.resettle(batch)
    if reverse_all:
        _requalify(unit, purchase, actor)


def _target(reward: Reward, left_minor: int) -> int:
    """What a reward is worth on what remains of its order."""
    if reward.rule_type == "percent":
        return percent_of(left_minor, Decimal(reward.rule_value))
    return reward.amount_minor


def _requalify(unit: Unit, purchase: Purchase, actor: str) -> None:
    """The referral this order converted goes back to `attributed` when none of the order's
    referral rewards is left (all reversed: none paid, approved or rejected by an admin); the
    referrer's milestone rewards beyond the friends still converted are reversed."""
    db.session.flush()
    kept = db.session.scalar(
        select(Reward.id)
        .where(
            Reward.purchase_id == purchase.id,
            Reward.kind == "referral",
            Reward.status != "reversed",
        )
        .limit(1)
    )
    if kept is not None:
        return
    referral = db.session.execute(
        select(Referral.id, Referral.referrer_id, Referral.converted_at).where(
            Referral.friend_id == purchase.customer_id,
            Referral.order_id == purchase.order_id,
            Referral.status == "converted",
        )
    ).first()
    if referral is None:
        return
    changed = db.session.execute(
        update(Referral)
        .where(Referral.id == referral.id, Referral.status == "converted")
        .values(status="attributed", converted_at=None, order_id=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    if changed:
        unit.audit(
            actor,
            "referral.requalified",
            "referral",
            referral.id,
            {
                "status": "converted",
                "order_id": purchase.order_id,
                "converted_at": referral.converted_at.isoformat(),
            },
            {"status": "attributed", "order_id": None, "converted_at": None},
        )
        requalified = db.session.get(Referral, referral.id, populate_existing=True)
        unit.emit("referral.requalified", requalified)
        _reverse_milestones(unit, referral.referrer_id)


def _reverse_milestones(unit: Unit, referrer_id: int) -> None:
    """Reverse the referrer's unpaid milestone rewards for more friends than they have
    converted now (event `reward.reversed` each); a paid one stays."""
    connection = db.session.connection()
    lock_referrer(connection, referrer_id)
    converted = db.session.scalar(
        select(func.count())
        .select_from(Referral)
        .where(
            Referral.referrer_id == referrer_id,
            Referral.converted_at.is_not(None),
            Referral.status == "converted",
        )
    )
    beyond = db.session.scalars(
        select(Reward)
        .where(
            Reward.customer_id == referrer_id,
            Reward.kind == "milestone",
            Reward.milestone_friends > converted,
            Reward.status.in_(OPEN),
        )
        .order_by(Reward.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    batches = set()
    for reward in beyond:
        if reward.payout_id is not None:
            batches.add(reward.payout_id)
        reward.status, reward.updated_at, reward.payout_id = "reversed", unit.now, None
        unit.emit("reward.reversed", reward)
    for batch in sorted(batches):
        payouts.resettle(batch)


def _answer(purchase: Purchase) -> dict:
    rewards = db.session.scalars(
        select(Reward)
        .where(Reward.purchase_id == purchase.id)
        .order_by(Reward.id)
        .execution_options(populate_existing=True)
    ).all()
    clawbacks = db.session.execute(
        select(Clawback.reward_id, Clawback.amount_minor, Clawback.currency)
        .join(Reward, Reward.id == Clawback.reward_id)
        .where(Reward.purchase_id == purchase.id)
        .order_by(Clawback.id)
    ).all()
    return {
        "order_id": purchase.order_id,
        "currency": purchase.currency,
        "refunded_total": from_minor(purchase.refunded_minor, purchase.currency),
        "remaining": from_minor(purchase.amount_minor - purchase.refunded_minor, purchase.currency),
        "rewards": [reward_dict(reward) for reward in rewards],
        "clawbacks": [
            {"reward_id": r, "amount": from_minor(a, c), "currency": c} for r, a, c in clawbacks
        ],
    }

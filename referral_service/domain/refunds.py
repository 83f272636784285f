"""Refunds of orders: their rewards are reversed or recomputed, or clawed back once paid."""

from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select

from referral_service.domain import payouts, program
from referral_service.domain.money import from_minor, parse_amount, percent_of, to_minor
from referral_service.domain.rewards import OPEN, check_order_id, reward_dict
from referral_service.errors import NotFound, ValidationFailed
from referral_service.extensions import db
from referral_service.models import Clawback, Purchase, Reward, utcnow
from referral_service.models.base import begin_write


def refund(order_id: str, amount=None, now: datetime | None = None) -> dict:
    """Refund all (no `amount`) or part of an order; its rewards follow.

    A full refund, or one that leaves less than `min_order_amount`, reverses the order's rewards
    not yet paid; otherwise percent rewards are recomputed on what remains. A reward already
    paid gets a clawback instead, netted off the beneficiary's next payout. Raises NotFound for
    an unknown order and ValidationFailed for an amount above what remains.
    """
    now = now or utcnow()
    order_id = check_order_id(order_id)
    settings = program.settings()
    begin_write(db.session)
    purchase = db.session.scalar(
        select(Purchase).where(Purchase.order_id == order_id).with_for_update()
    )
    if purchase is None:
        db.session.rollback()
        raise NotFound(f"No purchase with order_id {order_id!r}.")
    remaining = purchase.amount_minor - purchase.refunded_minor
    if amount is None:
        refund_minor = remaining
    else:
        try:
            refund_minor = to_minor(
                parse_amount(amount, purchase.currency, "amount", allow_zero=False),
                purchase.currency,
            )
        except ValidationFailed:
            db.session.rollback()
            raise
        if refund_minor > remaining:
            db.session.rollback()
            raise ValidationFailed(
                fields={
                    "amount": [
                        f"Only {from_minor(remaining, purchase.currency)} {purchase.currency} "
                        "of this "
                        "order is left to refund."
                    ]
                }
            )
    purchase.refunded_minor += refund_minor
    left = purchase.amount_minor - purchase.refunded_minor
    minimum = (
        to_minor(Decimal(settings["min_order_amount"]), purchase.currency)
        if settings["currency"] == purchase.currency
        else 0
    )
    reverse_all = left == 0 or left < minimum
    reversed_rewards, clawbacks = [], []
    changed_batches = set()  # unpaid batches whose rewards left or shrank
    rewards = db.session.scalars(
        select(Reward)
        .where(Reward.purchase_id == purchase.id, Reward.status.in_((*OPEN, "paid")))
        .order_by(Reward.id)
    ).all()
    for reward in rewards:
        target = (
            0
            if reverse_all
            else (
                percent_of(left, Decimal(reward.rule_value))
                if reward.rule_type == "percent"
                else reward.amount_minor
            )
        )
        owed = reward.amount_minor - _clawed_back(reward.id)
        if reward.status == "paid":
            if owed > target:
                db.session.add(
                    Clawback(
                        customer_id=reward.customer_id,
                        reward_id=reward.id,
                        amount_minor=owed - target,
                        currency=reward.currency,
                        created_at=now,
                    )
                )
                clawbacks.append(
                    {
                        "reward_id": reward.id,
                        "amount": from_minor(owed - target, reward.currency),
                        "currency": reward.currency,
                    }
                )
        elif reverse_all:
            if reward.payout_id is not None:
                changed_batches.add(reward.payout_id)
            reward.status, reward.updated_at, reward.payout_id = "reversed", now, None
            reversed_rewards.append(reward_dict(reward))
        elif target != reward.amount_minor:
            if reward.payout_id is not None:
                changed_batches.add(reward.payout_id)
            reward.amount_minor, reward.updated_at = target, now
    for batch in sorted(changed_batches):
        payouts.resettle(batch)
    db.session.commit()
    return {
        "order_id": order_id,
        "refunded": from_minor(refund_minor, purchase.currency),
        "remaining": from_minor(left, purchase.currency),
        "currency": purchase.currency,
        "reversed_rewards": reversed_rewards,
        "clawbacks": clawbacks,
    }


def _clawed_back(reward_id: int) -> int:
    return db.session.scalar(
        select(func.coalesce(func.sum(Clawback.amount_minor), 0)).where(
            Clawback.reward_id == reward_id
        )
    )

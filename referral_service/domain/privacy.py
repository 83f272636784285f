"""A person's data rights: the export of everything held about them, and their erasure.

`export` gathers what the service holds about one customer as JSON-ready data: their details,
codes, the visits of their links (counted, never the visitors), their sign-up with its risk
evidence (keyed hashes), the referrals they are in (other people named by id only), purchases,
refunds, rewards, clawbacks, their lines of payouts, their emails and opt-out, and the audit
records naming them.

`erase` anonymizes the person in one unit of work: email, its key, name and locale emptied, the
keyed hashes of their evidence (their sign-up and their own visits) emptied, their referral's
email key emptied, their opt-out and the personal content of their emails removed, and the
events that showed their details (`customer.enrolled`, the payout events' lines) rewritten
without them. The money ledger stays whole: purchases, refunds, rewards, clawbacks and payouts
keep their amounts, and the audit log keeps its records. The erasure is itself audited
(`customer.erase`, without the erased details). No event type of the contract tells of it.
"""

from datetime import datetime

from sqlalchemy import delete, or_, select, update

from referral_service.domain import customers, events, payouts, rollups
from referral_service.domain.clicks import flush_pending
from referral_service.domain.money import from_minor
from referral_service.domain.unit import current, unit_of_work
from referral_service.errors import NotFound
from referral_service.extensions import db
from referral_service.models import (
    AuditRecord,
    Clawback,
    Click,
    Customer,
    OutboxEvent,
    Purchase,
    Referral,
    ReferralCode,
    Refund,
    Reward,
    Signup,
    utcnow,
)
from referral_service.models.base import scrub_sqlite_log
from referral_service.models.notification import EmailOptOut, Notification

PERSONAL = ("email", "name", "locale")  # what an event's customer or payout line may show
PAYOUT_EVENTS = ("payout.created", "payout.approved", "payout.paid")
ERASE_ACTION = "customer.erase"
CLI_ACTOR = "cli"  # the audit actor of an erasure typed on the command line


def _customer(external_id: str, lock: bool = False) -> Customer:
    query = select(Customer).where(Customer.external_id == customers.check_external_id(external_id))
    customer = db.session.scalar(query.with_for_update() if lock else query)
    if customer is None:
        raise NotFound(f"No customer with external_id {external_id!r}.")
    return customer


# --- export --------------------------------------------------------------------------------------


def export(external_id: str) -> dict:
    """Everything held about the customer, as JSON-ready data (times as ISO 8601, money as
    decimal strings); other people appear by their ids only. Raises NotFound, ValidationFailed
    for a malformed id."""
    customer = _customer(external_id)
    cid = customer.id
    signup = db.session.scalar(select(Signup).where(Signup.customer_id == cid))
    as_friend = db.session.scalar(select(Referral).where(Referral.friend_id == cid))
    made = list(
        db.session.scalars(
            select(Referral).where(Referral.referrer_id == cid).order_by(Referral.id)
        )
    )
    purchases = list(
        db.session.scalars(
            select(Purchase).where(Purchase.customer_id == cid).order_by(Purchase.id)
        )
    )
    rewards = list(
        db.session.scalars(select(Reward).where(Reward.customer_id == cid).order_by(Reward.id))
    )
    data = {
        "exported_at": utcnow(),
        "customer": {
            "external_id": customer.external_id,
            "email": customer.email,
            "name": customer.name,
            "locale": customer.locale,
            "origin": customer.origin,
            "created_at": customer.created_at,
            "updated_at": customer.updated_at,
            "erased_at": customer.erased_at,
        },
        "referral_codes": [
            {"code": code.code, "created_at": code.created_at, "revoked_at": code.revoked_at}
            for code in db.session.scalars(
                select(ReferralCode)
                .where(ReferralCode.customer_id == cid)
                .order_by(ReferralCode.id)
            )
        ],
        "link_visits": _visits_of_links(cid),
        "signup": _signup(signup),
        "own_visits": _own_visits(signup, as_friend),
        "referred_by": _referred_by(as_friend),
        "referrals_made": [
            {
                "id": referral.id,
                "friend_external_id": referral.friend.external_id,
                "status": referral.status,
                "channel": referral.channel,
                "attributed_at": referral.attributed_at,
                "converted_at": referral.converted_at,
            }
            for referral in made
        ],
        "purchases": [
            {
                "order_id": purchase.order_id,
                "amount": from_minor(purchase.amount_minor, purchase.currency),
                "refunded": from_minor(purchase.refunded_minor, purchase.currency),
                "currency": purchase.currency,
                "occurred_at": purchase.occurred_at,
                "created_at": purchase.created_at,
            }
            for purchase in purchases
        ],
        "refunds": _refunds(purchases),
        "rewards": [_reward(reward) for reward in rewards],
        "clawbacks": [
            {
                "id": clawback.id,
                "reward_id": clawback.reward_id,
                "amount": from_minor(clawback.amount_minor, clawback.currency),
                "settled": from_minor(clawback.settled_minor, clawback.currency),
                "currency": clawback.currency,
                "created_at": clawback.created_at,
            }
            for clawback in db.session.scalars(
                select(Clawback).where(Clawback.customer_id == cid).order_by(Clawback.id)
            )
        ],
        "payouts": _payouts(customer, rewards),
        "emails": [
            {
                "id": note.id,
                "kind": note.kind,
                "event_id": note.event_id,
                "amounts": note.amounts,
                "status": note.status,
                "attempts": note.attempts,
                "created_at": note.created_at,
                "sent_at": note.sent_at,
                "last_error": note.last_error,
            }
            for note in db.session.scalars(
                select(Notification)
                .where(Notification.customer_id == cid)
                .order_by(Notification.id)
            )
        ],
        "email_opt_out": _opt_out(cid),
        "audit": _audit(cid, as_friend, rewards),
    }
    return events.jsonable(data)


def _visits_of_links(customer_id: int) -> dict:
    """How often the customer's links were visited, by channel, and when first and last: the
    visitors themselves are other people, never shown (the roll-ups count the pruned ones)."""
    visits = rollups.referrer_visits(customer_id)
    return {
        "count": sum(v["count"] for v in visits.values()),
        "by_channel": {channel: v["count"] for channel, v in visits.items()},
        "first_at": min((v["first_at"] for v in visits.values()), default=None),
        "last_at": max((v["last_at"] for v in visits.values()), default=None),
    }


def _signup(signup: Signup | None) -> dict | None:
    if signup is None:
        return None
    return {
        "occurred_at": signup.occurred_at,
        "attributed": signup.attributed,
        "reason": signup.reason,
        "referral_id": signup.referral_id,
        "code": signup.code,
        "click_id": signup.click_id,
        "evidence": {
            "ip_hash": signup.ip_hash,
            "ua_hash": signup.ua_hash,
            "device_hash": signup.device_hash,
        },
    }


def _own_click_ids(signup: Signup | None, as_friend: Referral | None) -> set[str]:
    """The share-link visits the customer made themselves (the one their sign-up names)."""
    return {
        click_id
        for click_id in (signup and signup.click_id, as_friend and as_friend.click_id)
        if click_id
    }


def _own_visits(signup, as_friend) -> list[dict]:
    ids = _own_click_ids(signup, as_friend)
    if not ids:
        return []
    return [
        {
            "click_id": click.id,
            "channel": click.channel,
            "occurred_at": click.occurred_at,
            "referer_host": click.referer_host,
            "evidence": {"ip_hash": click.ip_hash, "ua_hash": click.ua_hash},
        }
        for click in db.session.scalars(select(Click).where(Click.id.in_(ids)).order_by(Click.id))
    ]


def _referred_by(referral: Referral | None) -> dict | None:
    if referral is None:
        return None
    return {
        "id": referral.id,
        "referrer_external_id": referral.referrer.external_id,
        "status": referral.status,
        "channel": referral.channel,
        "click_id": referral.click_id,
        "attributed_at": referral.attributed_at,
        "converted_at": referral.converted_at,
        "order_id": referral.order_id,
        "risk": {"score": referral.risk_score, "reasons": list(referral.risk_reasons or [])},
    }


def _refunds(purchases: list[Purchase]) -> list[dict]:
    orders = {purchase.id: purchase for purchase in purchases}
    if not orders:
        return []
    return [
        {
            "order_id": orders[refund.purchase_id].order_id,
            "refund_id": refund.refund_id,
            "amount": from_minor(refund.amount_minor, orders[refund.purchase_id].currency),
            "refunded_total": from_minor(
                refund.refunded_total_minor, orders[refund.purchase_id].currency
            ),
            "currency": orders[refund.purchase_id].currency,
            "created_at": refund.created_at,
        }
        for refund in db.session.scalars(
            select(Refund).where(Refund.purchase_id.in_(orders)).order_by(Refund.id)
        )
    ]


def _reward(reward: Reward) -> dict:
    return {
        "id": reward.id,
        "referral_id": reward.referral_id,
        "beneficiary": reward.beneficiary,
        "rule": {"type": reward.rule_type, "value": reward.rule_value},
        "amount": from_minor(reward.amount_minor, reward.currency),
        "currency": reward.currency,
        "status": reward.status,
        "available_at": reward.available_at,
        "created_at": reward.created_at,
        "updated_at": reward.updated_at,
        "note": reward.note,
        "payout_id": reward.payout_id,
    }


def _payouts(customer: Customer, rewards: list[Reward]) -> list[dict]:
    """The batches paying the customer's rewards, with the customer's own lines only."""
    found = []
    for payout_id in sorted({reward.payout_id for reward in rewards if reward.payout_id}):
        batch = payouts.get(payout_id)
        found.append(
            {
                "id": batch["id"],
                "status": batch["status"],
                "created_at": batch["created_at"],
                "paid_at": batch["paid_at"],
                "reference": batch["reference"],
                "lines": [
                    line
                    for line in batch["lines"]
                    if line["customer_external_id"] == customer.external_id
                ],
            }
        )
    return found


def _opt_out(customer_id: int) -> dict | None:
    opted_out_at = db.session.scalar(
        select(EmailOptOut.opted_out_at).where(EmailOptOut.customer_id == customer_id)
    )
    return None if opted_out_at is None else {"opted_out_at": opted_out_at}


def _audit(customer_id: int, as_friend: Referral | None, rewards: list[Reward]) -> list[dict]:
    """Audit records about the customer, their referral (as the friend) and their rewards."""
    subjects = [
        (AuditRecord.subject_type == "customer") & (AuditRecord.subject_id == str(customer_id))
    ]
    if as_friend is not None:
        subjects.append(
            (AuditRecord.subject_type == "referral") & (AuditRecord.subject_id == str(as_friend.id))
        )
    if rewards:
        subjects.append(
            (AuditRecord.subject_type == "reward")
            & AuditRecord.subject_id.in_([str(reward.id) for reward in rewards])
        )
    return [
        {
            "at": record.at,
            "actor": record.actor,
            "action": record.action,
            "subject_type": record.subject_type,
            "subject_id": record.subject_id,
            "before": record.before,
            "after": record.after,
        }
        for record in db.session.scalars(
            select(AuditRecord).where(or_(*subjects)).order_by(AuditRecord.id)
        )
    ]


# --- erasure -------------------------------------------------------------------------------------


def erase(external_id: str, actor: str, now: datetime | None = None) -> customers.CustomerCard:
    """Anonymize the customer in one unit of work (see the module) and return them as the API
    shows them after (no email, name or locale; `erased_at` set). Erasing an erased customer
    changes nothing and returns the same. Inside an open unit (a platform's redaction), joins it.

    Raises NotFound for an unknown customer, ValidationFailed for a malformed id.
    """
    flush_pending()  # a visit of theirs still in this process's buffer lands before the step
    with unit_of_work(now) as unit:
        customer = _customer(external_id, lock=True)
        if customer.erased_at is None:
            _erase(customer, unit.now)
            unit.audit(
                actor,
                ERASE_ACTION,
                "customer",
                customer.id,
                {"external_id": customer.external_id, "erased_at": None},
                {"external_id": customer.external_id, "erased_at": unit.now.isoformat()},
            )
    if current() is None:  # the step is committed: no copy of the old values in SQLite's log
        scrub_sqlite_log(db.engine)
    return customers.get(external_id)


def _erase(customer: Customer, now: datetime) -> None:
    cid = customer.id
    signup = db.session.scalar(select(Signup).where(Signup.customer_id == cid))
    as_friend = db.session.scalar(select(Referral).where(Referral.friend_id == cid))
    own_clicks = _own_click_ids(signup, as_friend)
    customer.email = customer.email_key = customer.name = customer.locale = None
    customer.erased_at = customer.updated_at = now
    db.session.execute(
        update(Referral).where(Referral.friend_id == cid).values(friend_email_key=None)
    )
    db.session.execute(
        update(Signup)
        .where(Signup.customer_id == cid)
        .values(ip_hash=None, ua_hash=None, device_hash=None)
    )
    if own_clicks:
        db.session.execute(
            update(Click).where(Click.id.in_(own_clicks)).values(ip_hash=None, ua_hash=None)
        )
    db.session.execute(delete(EmailOptOut).where(EmailOptOut.customer_id == cid))
    # the emails stay counted (what was told and when); what named the person goes, and one
    # not sent yet has no one to go to any more
    db.session.execute(
        update(Notification).where(Notification.customer_id == cid).values(last_error=None)
    )
    db.session.execute(
        update(Notification)
        .where(Notification.customer_id == cid, Notification.status == "pending")
        .values(status="skipped", lease_until=None)
    )
    _scrub_events(customer.external_id)
    db.session.flush()


def _scrub_events(external_id: str) -> None:
    """Rewrite the events that showed the person's details: their `customer.enrolled`, and
    their lines in the payout events (the amounts stay)."""
    enrolled = select(OutboxEvent).where(
        OutboxEvent.type == "customer.enrolled",
        OutboxEvent.data["external_id"].as_string() == external_id,
    )
    for event in db.session.scalars(enrolled):
        event.data = {**event.data, **dict.fromkeys(PERSONAL, None)}
    for event in db.session.scalars(select(OutboxEvent).where(OutboxEvent.type.in_(PAYOUT_EVENTS))):
        lines = event.data.get("lines") if isinstance(event.data, dict) else None
        if not any(_names(line, external_id) for line in lines or ()):
            continue
        event.data = {
            **event.data,
            "lines": [
                {**line, **{key: None for key in PERSONAL if key in line}}
                if _names(line, external_id)
                else line
                for line in lines
            ],
        }


def _names(line, external_id: str) -> bool:
    return isinstance(line, dict) and line.get("customer_external_id") == external_id

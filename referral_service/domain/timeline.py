"""Read-only views for the admin console: customer search, a customer's page, a referral's story.

Nothing here writes. The story of a referral is put together from the rows the service keeps
(click, sign-up, purchases, refunds, rewards, clawbacks) and from the audit log (decisions on its
rewards, payouts of them, the referral's requalification when its qualifying order was refunded).
Refunds applied before refunds were recorded one by one are known only by the amount refunded so
far, not by their time.
"""

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import or_, select

from referral_service.domain import codes, customers
from referral_service.domain.clicks import flush_pending
from referral_service.domain.money import from_minor
from referral_service.domain.rewards import OPEN
from referral_service.domain.text import findable
from referral_service.errors import NotFound, ValidationFailed
from referral_service.extensions import db
from referral_service.models import (
    AuditRecord,
    Clawback,
    Click,
    Customer,
    Purchase,
    Referral,
    ReferralCode,
    Refund,
    Reward,
    Signup,
    utcnow,
)

SEARCH_LIMIT = 50
LIST_LIMIT = 200


# --- search --------------------------------------------------------------------------------------


def search_customers(query: str, limit: int = SEARCH_LIMIT) -> list[dict]:
    """Customers whose external id starts with `query`, whose email is `query` (whatever the case,
    or the same email key: `+tags`, Gmail dots) or who hold or held the code `query` (typed any
    case, with or without dashes). Each `{external_id, name, email, code, matched}`; exact
    matches first, at most `limit`. A query holding a control character finds nothing."""
    query = (query or "").strip()[:320]
    if not query or not findable(query):
        return []
    found: dict[int, set[str]] = {}
    exact = db.session.scalars(select(Customer.id).where(Customer.external_id == query)).all()
    for customer_id in exact:
        found.setdefault(customer_id, set()).add("external id")
    for customer_id in db.session.scalars(
        select(Customer.id)
        .where(Customer.external_id.startswith(query, autoescape=True))
        .order_by(Customer.external_id)
        .limit(limit)
    ):
        found.setdefault(customer_id, set()).add("external id")
    if "@" in query:
        key = customers.email_key(query)
        for customer_id, email in db.session.execute(
            select(Customer.id, Customer.email).where(Customer.email_key == key).limit(limit)
        ):
            how = "email" if email.lower() == query.lower() else "email (same address key)"
            found.setdefault(customer_id, set()).add(how)
    code = codes.normalize(query)
    if code is not None:
        for customer_id, revoked_at in db.session.execute(
            select(ReferralCode.customer_id, ReferralCode.revoked_at).where(
                ReferralCode.code == code
            )
        ):
            found.setdefault(customer_id, set()).add("code" if revoked_at is None else "old code")
    if not found:
        return []
    rows = db.session.execute(
        select(Customer, ReferralCode.code)
        .outerjoin(
            ReferralCode,
            (ReferralCode.customer_id == Customer.id) & ReferralCode.revoked_at.is_(None),
        )
        .where(Customer.id.in_(found))
    ).all()

    def rank(row):
        customer = row[0]
        return (customer.external_id != query, customer.external_id)

    return [
        {
            "external_id": customer.external_id,
            "name": customer.name,
            "email": customer.email,
            "code": codes.display(code) if code else None,
            "matched": sorted(found[customer.id]),
        }
        for customer, code in sorted(rows, key=rank)[:limit]
    ]


# --- a customer ----------------------------------------------------------------------------------


def _customer(external_id: str) -> Customer:
    try:
        customers.check_external_id(external_id)
    except ValidationFailed:
        raise NotFound(f"No customer with external_id {external_id!r}.") from None
    customer = db.session.scalar(select(Customer).where(Customer.external_id == external_id))
    if customer is None:
        raise NotFound(f"No customer with external_id {external_id!r}.")
    return customer


def customer_page(external_id: str, limit: int = LIST_LIMIT) -> dict:
    """A customer, their card (code, stats), their friends, their rewards and who referred them.

    Raises NotFound (also for an external id that could not exist)."""
    customer = _customer(external_id)
    card = customers.get(customer.external_id)
    friends = [
        {
            "referral_id": referral.id,
            "external_id": friend.external_id,
            "name": friend.name,
            "status": referral.status,
            "channel": referral.channel,
            "attributed_at": referral.attributed_at,
            "converted_at": referral.converted_at,
            "risk_score": referral.risk_score,
            "risk_reasons": list(referral.risk_reasons or []),
        }
        for referral, friend in db.session.execute(
            select(Referral, Customer)
            .join(Customer, Customer.id == Referral.friend_id)
            .where(Referral.referrer_id == customer.id)
            .order_by(Referral.attributed_at.desc(), Referral.id.desc())
            .limit(limit)
        )
    ]
    rewards = [
        {
            "id": reward.id,
            "referral_id": reward.referral_id,
            "beneficiary": reward.beneficiary,
            "kind": reward.kind,
            "milestone_friends": reward.milestone_friends,
            "amount": from_minor(reward.amount_minor, reward.currency),
            "currency": reward.currency,
            "status": reward.status,
            "created_at": reward.created_at,
            "available_at": reward.available_at,
            "note": reward.note,
        }
        for reward in db.session.scalars(
            select(Reward)
            .where(Reward.customer_id == customer.id)
            .order_by(Reward.created_at.desc(), Reward.id.desc())
            .limit(limit)
        )
    ]
    referred_by = db.session.execute(
        select(Referral.id, Customer.external_id)
        .join(Customer, Customer.id == Referral.referrer_id)
        .where(Referral.friend_id == customer.id)
    ).first()
    return {
        "card": card,
        "origin": customer.origin,
        "friends": friends,
        "rewards": rewards,
        "referred_by": (
            {"referral_id": referred_by.id, "external_id": referred_by.external_id}
            if referred_by
            else None
        ),
        "limit": limit,
    }


# --- a referral's story --------------------------------------------------------------------------


@dataclass
class Event:
    """One line of a referral's timeline."""

    at: datetime
    kind: str  # click, signup, purchase, refund, reward, clawback, decision, referral, payout
    title: str
    details: list[str] = field(default_factory=list)
    actor: str | None = None
    note: str | None = None
    order: int = 0  # ties at the same time: the order things happen in


def _person(customer: Customer) -> dict:
    return {"external_id": customer.external_id, "name": customer.name, "email": customer.email}


def _money(minor: int, currency: str) -> str:
    return f"{from_minor(minor, currency)} {currency}"


AUDIT_TITLES = {
    "reward.approve": "Reward #{id} approved",
    "reward.reject": "Reward #{id} rejected",
    "payout.create": "Payout #{id} created with reward {rewards}",
    "payout.approve": "Payout #{id} approved",
    "payout.mark_paid": "Payout #{id} marked paid: reward {rewards} paid",
    "referral.requalified": "Referral back to attributed: its qualifying order was refunded "
    "before payout, so a later qualifying order converts it again",
}


def referral_story(referral_id: int, now: datetime | None = None) -> dict:
    """Everything about one referral, its events in time order; raises NotFound."""
    referral = db.session.get(Referral, referral_id) if 0 < referral_id < 2**31 else None
    if referral is None:
        raise NotFound(f"No referral {referral_id}.")
    now = now or utcnow()
    referrer, friend = referral.referrer, referral.friend
    events: list[Event] = []

    if referral.click_id:
        flush_pending()
        click = db.session.get(Click, referral.click_id)
        if click is not None:
            details = [f"Channel: {click.channel}"]
            if click.referer_host:
                details.append(f"Came from {click.referer_host}")
            events.append(Event(click.occurred_at, "click", "Share link opened", details, order=0))
        else:
            details = [f"Click {referral.click_id} is no longer kept"]
            events.append(Event(referral.attributed_at, "click", "Share link opened", details))

    signup = db.session.scalar(select(Signup).where(Signup.customer_id == friend.id))
    how = "through a click on the share link" if referral.click_id else "with the code typed in"
    if signup is not None:
        if signup.attributed:
            title = f"Signed up, credited to {referrer.external_id}"
            details = [f"Attributed {how}", f"Channel: {referral.channel}"]
        else:
            title = "Signed up, not credited"
            details = [f"Reason: {(signup.reason or 'unknown').replace('_', ' ')}"]
        events.append(Event(signup.occurred_at, "signup", title, details, order=1))
    else:
        events.append(
            Event(
                referral.attributed_at,
                "signup",
                f"Credited to {referrer.external_id}",
                [f"Attributed {how}", f"Channel: {referral.channel}"],
                order=1,
            )
        )

    purchases = db.session.scalars(
        select(Purchase)
        .where(Purchase.customer_id == friend.id)
        .order_by(Purchase.occurred_at, Purchase.id)
        .limit(LIST_LIMIT)
    ).all()
    earning = set(
        db.session.scalars(select(Reward.purchase_id).where(Reward.referral_id == referral.id))
    )
    refunds: dict[int, list[Refund]] = {}
    for item in db.session.scalars(
        select(Refund)
        .where(Refund.purchase_id.in_([purchase.id for purchase in purchases]))
        .order_by(Refund.id)
    ):
        refunds.setdefault(item.purchase_id, []).append(item)
    for purchase in purchases:
        details = []
        if purchase.order_id == referral.order_id:
            first = " first" if purchase is purchases[0] else ""
            details.append(f"The qualifying{first} purchase: the referral converted")
        elif purchase.id in earning:
            details.append("Converted the referral, until it was refunded")
        if purchase.refunded_minor:
            whole = purchase.refunded_minor == purchase.amount_minor
            recorded = sum(item.amount_minor for item in refunds.get(purchase.id, []))
            details.append(
                f"Refunded {_money(purchase.refunded_minor, purchase.currency)}"
                + (" (all of it)" if whole else "")
                + (
                    " (the time of a refund is not recorded)"
                    if recorded < purchase.refunded_minor
                    else ""
                )
            )
        currency = purchase.currency
        for item in refunds.get(purchase.id, []):
            events.append(
                Event(
                    item.created_at,
                    "refund",
                    f"Refund of {purchase.order_id}: {_money(item.amount_minor, currency)}",
                    [
                        f"Refund id {item.refund_id}" if item.refund_id else "No refund id",
                        f"Refunded so far: {_money(item.refunded_total_minor, purchase.currency)}"
                        f" of {_money(purchase.amount_minor, purchase.currency)}",
                    ],
                    order=2,
                )
            )
        events.append(
            Event(
                purchase.occurred_at,
                "purchase",
                f"Purchase {purchase.order_id}: {_money(purchase.amount_minor, purchase.currency)}",
                details,
                order=2,
            )
        )

    rewards = db.session.scalars(
        select(Reward).where(Reward.referral_id == referral.id).order_by(Reward.id)
    ).all()
    by_payout: dict[int, list[int]] = {}
    for reward in rewards:
        owner = referrer if reward.beneficiary == "referrer" else friend
        details = [f"Held until {reward.available_at:%Y-%m-%d %H:%M} UTC"]
        if reward.kind == "milestone":
            n = reward.milestone_friends
            details.append(f"Milestone: {n} converted friend{'' if n == 1 else 's'}")
        if reward.rule_type == "percent":
            details.append(f"{reward.rule_value} % of the order")
        events.append(
            Event(
                reward.created_at,
                "reward",
                f"Reward #{reward.id} created: {_money(reward.amount_minor, reward.currency)} "
                f"for the {reward.beneficiary} ({owner.external_id})",
                details,
                order=3,
            )
        )
        if reward.payout_id is not None:
            by_payout.setdefault(reward.payout_id, []).append(reward.id)
    for clawback in db.session.scalars(
        select(Clawback)
        .where(Clawback.reward_id.in_([reward.id for reward in rewards]))
        .order_by(Clawback.id)
    ):
        events.append(
            Event(
                clawback.created_at,
                "clawback",
                f"Clawback of {_money(clawback.amount_minor, clawback.currency)} on paid reward "
                f"#{clawback.reward_id}",
                [
                    "Its order was refunded after payout",
                    f"Netted off later payouts so far: "
                    f"{_money(clawback.settled_minor, clawback.currency)}",
                ],
                order=3,
            )
        )

    reward_ids = [str(reward.id) for reward in rewards]
    subjects = [
        (AuditRecord.subject_type == "referral") & (AuditRecord.subject_id == str(referral.id))
    ]
    if reward_ids:
        subjects.append(
            (AuditRecord.subject_type == "reward") & AuditRecord.subject_id.in_(reward_ids)
        )
    if by_payout:
        subjects.append(
            (AuditRecord.subject_type == "payout")
            & AuditRecord.subject_id.in_([str(p) for p in by_payout])
        )
    records = db.session.scalars(
        select(AuditRecord).where(or_(*subjects)).order_by(AuditRecord.at, AuditRecord.id)
    ).all()
    for record in records:
        rewards_of = (
            by_payout.get(int(record.subject_id), []) if record.subject_type == "payout" else []
        )
        template = AUDIT_TITLES.get(record.action)
        title = (
            template.format(id=record.subject_id, rewards=", ".join(f"#{r}" for r in rewards_of))
            if template
            else f"{record.action} on {record.subject_type} #{record.subject_id}"
        )
        details = []
        before, after = record.before or {}, record.after or {}
        if "status" in before or "status" in after:
            details.append(
                f"Status: {before.get('status', '?')} → {after.get('status', '?')}".replace(
                    "_", " "
                )
            )
        if after.get("reference"):
            details.append(f"Reference: {after['reference']}")
        if after.get("order_id") is None and before.get("order_id"):
            details.append(f"Refunded order: {before['order_id']}")
        kind = {"payout": "payout", "referral": "referral"}.get(record.subject_type, "decision")
        events.append(
            Event(record.at, kind, title, details, record.actor, after.get("note"), order=4)
        )

    events.sort(key=lambda event: (event.at, event.order))
    return {
        "referral": referral,
        "referrer": _person(referrer),
        "friend": _person(friend),
        "events": events,
        "rewards": [
            {
                "id": reward.id,
                "beneficiary": reward.beneficiary,
                "customer": (referrer if reward.beneficiary == "referrer" else friend).external_id,
                "kind": reward.kind,
                "milestone_friends": reward.milestone_friends,
                "amount": from_minor(reward.amount_minor, reward.currency),
                "currency": reward.currency,
                "status": reward.status,
                "note": reward.note,
                "payout_id": reward.payout_id,
                "open": reward.status in OPEN,
            }
            for reward in rewards
        ],
        "now": now,
    }

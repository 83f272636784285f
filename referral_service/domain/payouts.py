"""Payout batches: approved rewards grouped per beneficiary, net of open clawbacks, then paid.

A clawback (a refund after its reward was paid) takes what each later batch's line of its
beneficiary and currency can give, never below zero, and carries the rest to the next batch; the
parts are settlements. A batch left with no rewards (all reversed or rejected) cannot be paid.

Four eyes: a batch whose total is above `PAYOUT_APPROVAL_THRESHOLD` (an amount in the program
currency, default 500.00) is marked paid only after a second approver, never its creator, has
approved it. A total in any other currency cannot be compared with the threshold, so such a batch
always needs the second approver. Actors are the audit log's: `api-key:<id>:<name>` for the API,
`admin:<email>` for the console.
"""

import csv
import io
from collections import defaultdict
from decimal import Decimal

from flask import current_app
from sqlalchemy import delete, func, insert, select, update

from referral_service.domain import program
from referral_service.domain.money import from_minor, to_minor
from referral_service.domain.text import spreadsheet_safe
from referral_service.domain.unit import unit_of_work
from referral_service.errors import Conflict, NotFound, ValidationFailed
from referral_service.extensions import db
from referral_service.models import (
    Clawback,
    ClawbackSettlement,
    Customer,
    Payout,
    Reward,
)

MAX_REFERENCE = 200
EMPTY = (
    "holds no rewards any more (each was reversed by a refund of its order, or rejected, "
    "after the batch was made)"
)


def create(
    actor: str, reward_ids: list[int] | None = None, all_approved: bool = False, now=None
) -> dict:
    """A batch of approved rewards not yet in a batch: the ones named, or all of them.

    Each reward joins at most one batch (a conditional UPDATE claims it, and says which it
    took). One step: the batch, its clawback settlements, its audit record and its
    `payout.created` event. Raises ValidationFailed when nothing is chosen, and Conflict when a
    named reward is not approved or already batched (nothing is batched then).
    """
    if bool(reward_ids) == bool(all_approved):
        raise ValidationFailed(
            fields={"reward_ids": ['Send either "reward_ids": [...] or "all_approved": true.']}
        )
    with unit_of_work(now) as unit:
        payout = Payout(status="created", created_at=unit.now, created_by=actor)
        db.session.add(payout)
        db.session.flush()
        claim = update(Reward).where(Reward.status == "approved", Reward.payout_id.is_(None))
        if reward_ids:
            claim = claim.where(Reward.id.in_(reward_ids))
        claimed = db.session.scalars(
            claim.values(payout_id=payout.id, updated_at=unit.now)
            .returning(Reward.id)
            .execution_options(synchronize_session=False)
        ).all()
        if reward_ids and len(claimed) != len(set(reward_ids)):
            raise Conflict(
                "Some of these rewards are not approved, are already in a payout, or do "
                "not exist; nothing was batched."
            )
        if not claimed:
            raise Conflict("No approved rewards are waiting for a payout.")
        _settle_clawbacks(payout.id)
        body = _summary(payout)
        unit.audit(
            actor,
            "payout.create",
            "payout",
            payout.id,
            None,
            {"rewards": len(claimed), "totals": body["totals"]},
        )
        unit.emit("payout.created", payout)
    return body


def _settle_clawbacks(payout_id: int) -> None:
    """Net open clawbacks off the batch's lines, oldest first, each taking what its beneficiary's
    line in its currency can still give (never below zero); the rest stays open for later
    batches. Each part is a settlement; the clawback's `settled_minor` is raised by a conditional
    UPDATE, so that the database never lets a clawback be taken beyond its amount."""
    gross: dict[tuple[int, str], int] = defaultdict(int)
    for customer_id, currency, amount in db.session.execute(
        select(Reward.customer_id, Reward.currency, Reward.amount_minor).where(
            Reward.payout_id == payout_id
        )
    ):
        gross[(customer_id, currency)] += amount
    if not gross:
        return
    open_clawbacks = db.session.execute(
        select(Clawback.id, Clawback.customer_id, Clawback.currency)
        .where(
            Clawback.customer_id.in_({c for c, _ in gross}),
            Clawback.settled_minor < Clawback.amount_minor,
        )
        .order_by(Clawback.id)
        .with_for_update()
    ).all()
    for clawback_id, customer_id, currency in open_clawbacks:
        key = (customer_id, currency)
        if gross.get(key, 0) <= 0:
            continue
        # read after the lock: what other batches took meanwhile is counted
        amount, settled = db.session.execute(
            select(Clawback.amount_minor, Clawback.settled_minor).where(Clawback.id == clawback_id)
        ).one()
        take = min(amount - settled, gross[key])
        if take <= 0:
            continue
        taken = db.session.execute(
            update(Clawback)
            .where(
                Clawback.id == clawback_id, Clawback.settled_minor + take <= Clawback.amount_minor
            )
            .values(settled_minor=Clawback.settled_minor + take)
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken:
            db.session.execute(
                insert(ClawbackSettlement).values(
                    clawback_id=clawback_id, payout_id=payout_id, amount_minor=take
                )
            )
            gross[key] -= take


def resettle(payout_id: int) -> None:
    """Net the clawbacks of an unpaid batch again, after one of its rewards left it or shrank.

    Runs inside the unit of work of the step that changed the reward (which holds that reward's
    lock) and commits nothing itself, so a batch never nets more clawbacks than its rewards
    cover: what it no longer covers is open again for the beneficiary's next batch. Raises
    Conflict if the batch is already paid (a reward of a paid batch is paid and never leaves it).
    """
    db.session.flush()
    payout = db.session.scalar(select(Payout).where(Payout.id == payout_id).with_for_update())
    if payout is None or payout.status != "created":
        raise Conflict(f"Payout {payout_id} is already paid; its lines cannot change.")
    settlements = db.session.execute(
        select(
            ClawbackSettlement.id, ClawbackSettlement.clawback_id, ClawbackSettlement.amount_minor
        )
        .where(ClawbackSettlement.payout_id == payout_id)
        .order_by(ClawbackSettlement.clawback_id)
    ).all()
    for settlement_id, clawback_id, amount in settlements:
        db.session.execute(
            update(Clawback)
            .where(Clawback.id == clawback_id)
            .values(settled_minor=Clawback.settled_minor - amount)
            .execution_options(synchronize_session=False)
        )
        db.session.execute(delete(ClawbackSettlement).where(ClawbackSettlement.id == settlement_id))
    _settle_clawbacks(payout_id)


def clawed_back(reward_ids: list[int]) -> dict[int, int]:
    """`{reward id: minor units clawed back so far}` of these rewards (settled or not)."""
    if not reward_ids:
        return {}
    return {
        reward_id: int(total)
        for reward_id, total in db.session.execute(
            select(Clawback.reward_id, func.sum(Clawback.amount_minor))
            .where(Clawback.reward_id.in_(reward_ids))
            .group_by(Clawback.reward_id)
        )
    }


def _lines(payout_id: int) -> list[dict]:
    lines: dict[tuple[int, str], dict] = {}
    rows = db.session.execute(
        select(
            Reward.customer_id,
            Reward.currency,
            Reward.amount_minor,
            Customer.external_id,
            Customer.email,
            Customer.name,
        )
        .join(Customer, Customer.id == Reward.customer_id)
        .where(Reward.payout_id == payout_id)
        .order_by(Customer.external_id)
    )
    for customer_id, currency, amount, external_id, email, name in rows:
        line = lines.setdefault(
            (customer_id, currency),
            {
                "customer_external_id": external_id,
                "email": email,
                "name": name,
                "currency": currency,
                "rewards": 0,
                "gross_minor": 0,
                "clawbacks_minor": 0,
            },
        )
        line["rewards"] += 1
        line["gross_minor"] += amount
    for customer_id, currency, amount in db.session.execute(
        select(Clawback.customer_id, Clawback.currency, ClawbackSettlement.amount_minor)
        .join(Clawback, Clawback.id == ClawbackSettlement.clawback_id)
        .where(ClawbackSettlement.payout_id == payout_id)
    ):
        lines[(customer_id, currency)]["clawbacks_minor"] += amount
    return list(lines.values())


def approval_threshold() -> tuple[str, str]:
    """`(amount, currency)`: the threshold above which a batch needs a second approver."""
    currency = program.settings()["currency"]
    amount = Decimal(str(current_app.config["PAYOUT_APPROVAL_THRESHOLD"]))
    return from_minor(to_minor(amount, currency), currency), currency


def needs_approval(totals_minor: dict[str, int]) -> bool:
    """Whether a batch with these net totals (`{currency: minor units}`) needs a second approver:
    its total in the program currency is above the threshold, or it holds another currency."""
    amount, currency = approval_threshold()
    limit = to_minor(Decimal(amount), currency)
    return any(
        total > limit if code == currency else total > 0 for code, total in totals_minor.items()
    )


def _summary(payout: Payout) -> dict:
    lines = _lines(payout.id)
    totals: dict[str, int] = defaultdict(int)
    for line in lines:
        totals[line["currency"]] += line["gross_minor"] - line["clawbacks_minor"]
    return {
        "id": payout.id,
        "status": payout.status,
        "created_at": payout.created_at,
        "created_by": payout.created_by,
        "approved_by": payout.approved_by,
        "approved_at": payout.approved_at,
        "needs_approval": needs_approval(totals),
        "paid_at": payout.paid_at,
        "reference": payout.reference,
        "reward_count": sum(line["rewards"] for line in lines),
        "reward_ids": list(
            db.session.scalars(
                select(Reward.id).where(Reward.payout_id == payout.id).order_by(Reward.id)
            )
        ),
        "totals": [{"currency": c, "amount": from_minor(a, c)} for c, a in sorted(totals.items())],
        "lines": [
            {
                "customer_external_id": line["customer_external_id"],
                "email": line["email"],
                "name": line["name"],
                "rewards": line["rewards"],
                "currency": line["currency"],
                "gross": from_minor(line["gross_minor"], line["currency"]),
                "clawbacks": from_minor(line["clawbacks_minor"], line["currency"]),
                "net": from_minor(line["gross_minor"] - line["clawbacks_minor"], line["currency"]),
            }
            for line in lines
        ],
    }


def _find(payout_id: int) -> Payout:
    payout = db.session.get(Payout, payout_id)
    if payout is None:
        raise NotFound(f"No payout {payout_id}.")
    return payout


def get(payout_id: int) -> dict:
    """The batch with its lines and totals; raises NotFound."""
    return _summary(_find(payout_id))


def as_csv(payout_id: int) -> str:
    """The batch as CSV for the bank: one row per beneficiary and currency, then the totals."""
    summary = get(payout_id)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(
        [
            "customer_external_id",
            "email",
            "name",
            "rewards",
            "currency",
            "gross",
            "clawbacks",
            "net",
        ]
    )
    for line in summary["lines"]:
        writer.writerow(
            [
                spreadsheet_safe(line["customer_external_id"]),
                spreadsheet_safe(line["email"] or ""),
                spreadsheet_safe(line["name"] or ""),
                line["rewards"],
                line["currency"],
                line["gross"],
                line["clawbacks"],
                line["net"],
            ]
        )
    for total in summary["totals"]:
        writer.writerow(
            ["TOTAL", "", "", summary["reward_count"], total["currency"], "", "", total["amount"]]
        )
    return out.getvalue()


def waiting() -> dict:
    """Approved rewards not yet in a batch: `{"count": n, "amounts": {currency: "12.50"}}`."""
    body: dict = {"count": 0, "amounts": {}}
    for currency, count, amount in db.session.execute(
        select(Reward.currency, func.count(), func.sum(Reward.amount_minor))
        .where(Reward.status == "approved", Reward.payout_id.is_(None))
        .group_by(Reward.currency)
        .order_by(Reward.currency)
    ):
        body["count"] += count
        body["amounts"][currency] = from_minor(int(amount), currency)
    return body


def list_payouts(before: int | None = None, limit: int = 50) -> tuple[list[dict], int | None]:
    """A page of batches, newest first, with their net totals; and the `before` of the next page.

    Each item has no lines (see `get`): id, status, created/approved/paid, reference, counts.
    """
    query = select(Payout).order_by(Payout.id.desc()).limit(limit + 1)
    if before is not None:
        query = query.where(Payout.id < before)
    batches = list(db.session.scalars(query))
    next_before = batches[limit - 1].id if len(batches) > limit else None
    batches = batches[:limit]
    ids = [payout.id for payout in batches]
    totals: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    counts: dict[int, int] = defaultdict(int)
    for payout_id, currency, count, amount in db.session.execute(
        select(Reward.payout_id, Reward.currency, func.count(), func.sum(Reward.amount_minor))
        .where(Reward.payout_id.in_(ids))
        .group_by(Reward.payout_id, Reward.currency)
    ):
        totals[payout_id][currency] += int(amount)
        counts[payout_id] += count
    for payout_id, currency, amount in db.session.execute(
        select(
            ClawbackSettlement.payout_id,
            Clawback.currency,
            func.sum(ClawbackSettlement.amount_minor),
        )
        .join(Clawback, Clawback.id == ClawbackSettlement.clawback_id)
        .where(ClawbackSettlement.payout_id.in_(ids))
        .group_by(ClawbackSettlement.payout_id, Clawback.currency)
    ):
        totals[payout_id][currency] -= int(amount)
    items = [
        {
            "id": payout.id,
            "status": payout.status,
            "created_at": payout.created_at,
            "created_by": payout.created_by,
            "approved_by": payout.approved_by,
            "approved_at": payout.approved_at,
            "paid_at": payout.paid_at,
            "reference": payout.reference,
            "reward_count": counts[payout.id],
            "needs_approval": needs_approval(totals[payout.id]),
            "totals": [
                {"currency": c, "amount": from_minor(a, c)}
                for c, a in sorted(totals[payout.id].items())
            ],
        }
        for payout in batches
    ]
    return items, next_before


def _locked(payout_id: int) -> Payout:
    """The batch, locked until the step ends; raises NotFound."""
    payout = db.session.scalar(select(Payout).where(Payout.id == payout_id).with_for_update())
    if payout is None:
        raise NotFound(f"No payout {payout_id}.")
    return payout


def approval_refusal(summary: dict, actor: str) -> str | None:
    """Why `actor` may not approve this batch (as `get` returns it), or None when they may."""
    if summary["status"] == "paid":
        return f"Payout {summary['id']} is already paid; there is nothing left to approve."
    if summary["reward_count"] == 0:
        return f"Payout {summary['id']} {EMPTY}; there is nothing to approve."
    if summary["approved_by"] is not None:
        return f"Payout {summary['id']} is already approved by {summary['approved_by']}."
    if summary["created_by"] == actor:
        return (
            f"Payout {summary['id']} was created by you ({actor}): a second approver, "
            "not its creator, must approve it."
        )
    return None


def approve(payout_id: int, actor: str, now=None) -> dict:
    """The second pair of eyes: `actor` approves an unpaid batch that someone else created.

    One step with its audit record and its `payout.approved` event. Raises NotFound, and
    Conflict when the actor created the batch, when it is already approved, or when it is
    already paid. Whether the actor's role may approve at all is the caller's decision (an
    admin API key; an approver in the console).
    """
    with unit_of_work(now) as unit:
        payout = _locked(payout_id)
        summary = _summary(payout)
        refusal = approval_refusal(summary, actor)
        if refusal:
            raise Conflict(refusal)
        payout.approved_by, payout.approved_at = actor, unit.now
        unit.audit(
            actor,
            "payout.approve",
            "payout",
            payout_id,
            {"approved_by": None},
            {"approved_by": actor, "created_by": payout.created_by, "totals": summary["totals"]},
        )
        unit.emit("payout.approved", payout)
        db.session.flush()
        body = _summary(payout)
    return body


def paid_refusal(summary: dict) -> str | None:
    """Why this batch (as `get` returns it) cannot be marked paid now, or None when it can."""
    if summary["status"] == "paid":
        return f"Payout {summary['id']} is already paid."
    if summary["reward_count"] == 0:
        return (
            f"Payout {summary['id']} {EMPTY}: there is nothing to pay. Rewards approved since "
            "go into a new batch."
        )
    if summary["needs_approval"] and summary["approved_by"] is None:
        amount, currency = approval_threshold()
        totals = ", ".join(f"{t['amount']} {t['currency']}" for t in summary["totals"])
        return (
            f"Payout {summary['id']} totals {totals}, above the approval threshold of "
            f"{amount} {currency}: it needs a second approver before it can be marked paid."
        )
    return None


def mark_paid(payout_id: int, reference: str, actor: str, now=None) -> dict:
    """Mark a batch paid with the bank's reference; its rewards become `paid`.

    One step with its audit record (naming the rewards paid) and its `payout.paid` event (the
    batch shows its rewards; the contract has no event per reward paid). Raises
    ValidationFailed for an empty reference, NotFound, and Conflict when already paid, when no
    reward is left in it (all reversed or rejected), or when its total is above the approval
    threshold and no second approver has approved it. A batch whose lines net to zero
    (clawbacks took all) is paid all the same: that settles its rewards and clawbacks.
    """
    if not isinstance(reference, str) or not 1 <= len(reference.strip()) <= MAX_REFERENCE:
        raise ValidationFailed(fields={"reference": ["Give the payment's reference (1-200)."]})
    with unit_of_work(now) as unit:
        # its rewards first, then the batch: the order in which a refund or a rejection locks them
        db.session.execute(select(Reward.id).where(Reward.payout_id == payout_id).with_for_update())
        payout = _locked(payout_id)
        refusal = paid_refusal(_summary(payout))
        if refusal:
            raise Conflict(refusal)
        changed = db.session.execute(
            update(Payout)
            .where(Payout.id == payout_id, Payout.status == "created")
            .values(status="paid", paid_at=unit.now, reference=reference.strip())
            .execution_options(synchronize_session=False)
        ).rowcount
        if changed == 0:
            raise Conflict(f"Payout {payout_id} is already paid.")
        paid = db.session.scalars(
            update(Reward)
            .where(Reward.payout_id == payout_id, Reward.status == "approved")
            .values(status="paid", updated_at=unit.now)
            .returning(Reward.id)
            .execution_options(synchronize_session=False)
        ).all()
        db.session.refresh(payout)
        unit.audit(
            actor,
            "payout.mark_paid",
            "payout",
            payout_id,
            {"status": "created"},
            {"status": "paid", "reference": payout.reference, "reward_ids": sorted(paid)},
        )
        unit.emit("payout.paid", payout)
        body = _summary(payout)
    return body

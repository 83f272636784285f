"""Payout batches: approved rewards grouped per beneficiary, net of open clawbacks, then paid."""

import csv
import io
from collections import defaultdict

from sqlalchemy import select, update

from referral_service.domain import audit
from referral_service.domain.money import from_minor
from referral_service.errors import Conflict, NotFound, ValidationFailed
from referral_service.extensions import db
from referral_service.models import Clawback, Customer, Payout, Reward, utcnow
from referral_service.models.base import begin_write

MAX_REFERENCE = 200


def create(
    actor: str, reward_ids: list[int] | None = None, all_approved: bool = False, now=None
) -> dict:
    """A batch of approved rewards not yet in a batch: the ones named, or all of them.

    Each reward joins at most one batch (a conditional UPDATE claims it). Raises ValidationFailed
    when nothing is chosen, and Conflict when a named reward is not approved or already batched.
    """
    now = now or utcnow()
    if bool(reward_ids) == bool(all_approved):
        raise ValidationFailed(
            fields={"reward_ids": ['Send either "reward_ids": [...] or "all_approved": true.']}
        )
    begin_write(db.session)
    payout = Payout(status="created", created_at=now, created_by=actor)
    db.session.add(payout)
    db.session.flush()
    claim = update(Reward).where(Reward.status == "approved", Reward.payout_id.is_(None))
    if reward_ids:
        claim = claim.where(Reward.id.in_(reward_ids))
    claimed = db.session.execute(
        claim.values(payout_id=payout.id, updated_at=now).execution_options(
            synchronize_session=False
        )
    ).rowcount
    if reward_ids and claimed != len(set(reward_ids)):
        db.session.rollback()
        raise Conflict(
            "Some of these rewards are not approved, are already in a payout, or do "
            "not exist; nothing was batched."
        )
    if claimed == 0:
        db.session.rollback()
        raise Conflict("No approved rewards are waiting for a payout.")
    _settle_clawbacks(payout.id)
    body = _summary(payout)
    audit.record(
        actor,
        "payout.create",
        "payout",
        payout.id,
        None,
        {"rewards": body["reward_count"], "totals": body["totals"]},
        at=now,
    )
    db.session.commit()
    return body


def _settle_clawbacks(payout_id: int) -> None:
    """Net open clawbacks off the batch, oldest first, as far as each beneficiary's gross allows."""
    gross: dict[tuple[int, str], int] = defaultdict(int)
    for customer_id, currency, amount in db.session.execute(
        select(Reward.customer_id, Reward.currency, Reward.amount_minor).where(
            Reward.payout_id == payout_id
        )
    ):
        gross[(customer_id, currency)] += amount
    open_clawbacks = db.session.scalars(
        select(Clawback)
        .where(Clawback.payout_id.is_(None), Clawback.customer_id.in_([c for c, _ in gross]))
        .order_by(Clawback.id)
        .with_for_update()
    )
    for clawback in open_clawbacks:
        key = (clawback.customer_id, clawback.currency)
        if gross.get(key, 0) >= clawback.amount_minor:
            gross[key] -= clawback.amount_minor
            clawback.payout_id = payout_id


def resettle(payout_id: int) -> None:
    """Net the clawbacks of an unpaid batch again, after one of its rewards left it or shrank.

    Runs in the transaction that changed the reward, so a batch never nets more clawbacks than
    its rewards cover: what no longer fits waits, open, for the beneficiary's next batch.
    """
    db.session.flush()
    db.session.execute(
        update(Clawback)
        .where(Clawback.payout_id == payout_id)
        .values(payout_id=None)
        .execution_options(synchronize_session="fetch")
    )
    _settle_clawbacks(payout_id)


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
        select(Clawback.customer_id, Clawback.currency, Clawback.amount_minor).where(
            Clawback.payout_id == payout_id
        )
    ):
        lines[(customer_id, currency)]["clawbacks_minor"] += amount
    return list(lines.values())


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
                _safe(line["customer_external_id"]),
                _safe(line["email"]),
                _safe(line["name"] or ""),
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


def _safe(text: str) -> str:
    """Defuse spreadsheet formulas in text cells (CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def mark_paid(payout_id: int, reference: str, actor: str, now=None) -> dict:
    """Mark a batch paid with the bank's reference; its rewards become `paid`.

    Raises ValidationFailed for an empty reference, NotFound, and Conflict when already paid.
    """
    now = now or utcnow()
    if not isinstance(reference, str) or not 1 <= len(reference.strip()) <= MAX_REFERENCE:
        raise ValidationFailed(fields={"reference": ["Give the payment's reference (1-200)."]})
    begin_write(db.session)
    payout = db.session.scalar(select(Payout).where(Payout.id == payout_id).with_for_update())
    if payout is None:
        db.session.rollback()
        raise NotFound(f"No payout {payout_id}.")
    changed = db.session.execute(
        update(Payout)
        .where(Payout.id == payout_id, Payout.status == "created")
        .values(status="paid", paid_at=now, reference=reference.strip())
        .execution_options(synchronize_session=False)
    ).rowcount
    if changed == 0:
        db.session.rollback()
        raise Conflict(f"Payout {payout_id} is already paid.")
    db.session.execute(
        update(Reward)
        .where(Reward.payout_id == payout_id, Reward.status == "approved")
        .values(status="paid", updated_at=now)
        .execution_options(synchronize_session=False)
    )
    db.session.refresh(payout)
    audit.record(
        actor,
        "payout.mark_paid",
        "payout",
        payout_id,
        {"status": "created"},
        {"status": "paid", "reference": payout.reference},
        at=now,
    )
    db.session.commit()
    return _summary(payout)

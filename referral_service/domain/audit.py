"""The audit log: every admin action, with who, what, when, and the state before and after."""

from datetime import datetime

from sqlalchemy import select

from referral_service.domain import pages
from referral_service.domain.text import findable
from referral_service.extensions import db
from referral_service.models import AuditRecord, utcnow


def record(
    actor: str,
    action: str,
    subject_type: str,
    subject_id,
    before=None,
    after=None,
    at: datetime | None = None,
) -> None:
    """Add an audit record to the current transaction (it commits with the action it records)."""
    db.session.add(
        AuditRecord(
            at=at or utcnow(),
            actor=actor,
            action=action,
            subject_type=subject_type,
            subject_id=str(subject_id),
            before=before,
            after=after,
        )
    )


def entries(
    action: str | None = None,
    actor: str | None = None,
    subject_type: str | None = None,
    subject_id: str | None = None,
    cursor: str | None = None,
    limit: int | None = None,
):
    """`(records, next_cursor)`, newest first: `action`, `subject_type` and `subject_id` match
    exactly, `actor` anywhere in the actor (any case); a filter holding a control character finds
    nothing. Raises ValidationFailed for a bad cursor."""
    if not all(findable(value) for value in (action, actor, subject_type, subject_id)):
        return [], None
    query = select(AuditRecord)
    if action:
        query = query.where(AuditRecord.action == action)
    if actor:
        query = query.where(AuditRecord.actor.icontains(actor, autoescape=True))
    if subject_type:
        query = query.where(AuditRecord.subject_type == subject_type)
    if subject_id:
        query = query.where(AuditRecord.subject_id == subject_id)
    return pages.page(query, AuditRecord.id, cursor, limit)


def actions() -> list[str]:
    """The actions the log holds, for a filter's choices."""
    return list(db.session.scalars(select(AuditRecord.action).distinct().order_by("action")))

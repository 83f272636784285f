"""The audit log: every admin action, with who, what, when, and the state before and after."""

from datetime import datetime

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

"""Emails to referrers: one row per event and recipient, so that none is sent twice."""

from datetime import datetime

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from referral_service.models.base import Base, UTCDateTime

# what a referrer can be told, each with its program switch (`notifications.<kind>`)
NOTIFICATION_KINDS = ("reward_earned", "reward_approved", "reward_paid")
# pending (to send, maybe after a failed attempt), sent, failed (retries used up or refused for
# good), skipped (nothing to send any more: unsubscribed, switched off, customer gone)
NOTIFICATION_STATUSES = ("pending", "sent", "failed", "skipped")


def _sql_list(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{value}'" for value in values) + ")"


class Notification(Base):
    """One email to one customer about one event (`event_id`, `customer_id` unique).

    `amounts` is what the email says was earned, approved or paid (`[{amount, currency}]`, as
    planned). A worker claims a pending row with a lease (`lease_until`, `attempts` raised) before
    it talks to the mail server, and records the outcome only while its claim still holds.
    """

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("event_id", "customer_id", name="uq_notifications_event_customer"),
        CheckConstraint(f"kind IN {_sql_list(NOTIFICATION_KINDS)}", name="kind"),
        CheckConstraint(f"status IN {_sql_list(NOTIFICATION_STATUSES)}", name="status"),
        # the worker's sweep: pending rows by when they are due
        Index("ix_notifications_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(40))
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(20))
    amounts: Mapped[list] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(10), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(500))


class EmailOptOut(Base):
    """A customer who asked for no more emails (the unsubscribe link); one row per customer."""

    __tablename__ = "email_opt_outs"

    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True
    )
    opted_out_at: Mapped[datetime] = mapped_column(UTCDateTime)

"""Events received from the shop's platforms (Stripe, Shopify): the dedupe record and the log."""

from datetime import datetime

from sqlalchemy import CheckConstraint, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from referral_service.models.base import Base, UTCDateTime

PLATFORMS = ("stripe", "shopify")
OUTCOMES = ("mapped", "ignored")


class PlatformEvent(Base):
    """One platform event, recorded once (unique per platform and its event id) in the same
    transaction as its effect on the ledger, or alone when it was ignored.

    `outcome` is `mapped` (it changed or confirmed the ledger) or `ignored` (nothing to do, or
    nothing we could map), with `reason` (a snake_case word) and `message` saying why. No payload
    is kept: it holds personal data the ledger does not need.
    """

    __tablename__ = "platform_events"
    __table_args__ = (
        UniqueConstraint("platform", "event_id", name="uq_platform_events_platform_event_id"),
        CheckConstraint(f"platform IN {PLATFORMS!r}", name="platform"),
        CheckConstraint(f"outcome IN {OUTCOMES!r}", name="outcome"),
        Index("ix_platform_events_platform_id", "platform", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    platform: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(100))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(String(500))
    order_id: Mapped[str | None] = mapped_column(String(128))
    customer_external_id: Mapped[str | None] = mapped_column(String(128))

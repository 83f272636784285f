"""The transactional outbox: every business event, written in the transaction of its change."""

from datetime import datetime

from sqlalchemy import JSON, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from referral_service.models.base import Base, UTCDateTime


class OutboxEvent(Base):
    """One event (`evt_...`), kept for good: the worker's relay sets `relayed_at` once it has
    planned the event's webhook deliveries and emails, and never deletes a row before that.

    `data` is the event's object as the API shows it (JSON). `id` orders the events as they were
    committed within one process; `event_id` is the public id (the Standard Webhooks `webhook-id`).
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_type_id", "type", "id"),
        # the relay's queue: only rows not yet relayed are in this index
        Index(
            "ix_outbox_unrelayed",
            "id",
            sqlite_where=text("relayed_at IS NULL"),
            postgresql_where=text("relayed_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(40), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    data: Mapped[dict] = mapped_column(JSON)
    relayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

"""Clicks: one visit of a share link, with the channel it came through."""

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from referral_service.models.base import Base, UTCDateTime


class Click(Base):
    """A visit of `/r/<code>`; its `id` is the `click_id` handed to the landing page."""

    __tablename__ = "clicks"
    __table_args__ = (
        Index("ix_clicks_referrer_occurred", "referrer_id", "occurred_at"),
        Index("ix_clicks_occurred", "occurred_at"),
        # the clicks not rolled up yet (domain/rollups.py): the funnel's and a referrer's
        # counters read these beside the roll-ups
        Index(
            "ix_clicks_unrolled_occurred",
            "occurred_at",
            "channel",
            sqlite_where=text("rolled_up_at IS NULL"),
            postgresql_where=text("rolled_up_at IS NULL"),
        ),
        Index(
            "ix_clicks_unrolled_referrer",
            "referrer_id",
            "channel",
            sqlite_where=text("rolled_up_at IS NULL"),
            postgresql_where=text("rolled_up_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    code_id: Mapped[int] = mapped_column(ForeignKey("referral_codes.id", ondelete="CASCADE"))
    referrer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(32))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # the site the visitor came from (its host name only), for spotting coupon sites
    referer_host: Mapped[str | None] = mapped_column(String(255))
    ip_hash: Mapped[str | None] = mapped_column(String(64))  # keyed hashes (domain/fraud.py)
    ua_hash: Mapped[str | None] = mapped_column(String(64))
    # when the click was counted into the roll-ups (models/click_rollup.py); None: not yet
    rolled_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

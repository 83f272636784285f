"""The program settings: one row, created with the contract's defaults."""

from decimal import Decimal

from sqlalchemy import JSON, Boolean, CheckConstraint, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from referral_service.models.base import Base, DecimalString

REWARD_TYPES = ("fixed", "percent", "none")
LANDING_MODES = ("redirect", "welcome")


class Program(Base):
    """The referral program's settings (the row with id 1)."""

    __tablename__ = "program"
    __table_args__ = (
        CheckConstraint("id = 1", name="single_row"),
        CheckConstraint("attribution_window_days >= 0", name="attribution_window"),
        CheckConstraint("conversion_window_days >= 0", name="conversion_window"),
        CheckConstraint("hold_days >= 0", name="hold_days"),
        CheckConstraint("referrer_reward_type IN ('fixed', 'percent', 'none')", name="ref_type"),
        CheckConstraint("friend_reward_type IN ('fixed', 'percent', 'none')", name="friend_type"),
        CheckConstraint(
            "max_rewards_per_referrer_per_month IS NULL OR max_rewards_per_referrer_per_month >= 0",
            name="monthly_cap",
        ),
        CheckConstraint("landing_mode IN ('redirect', 'welcome')", name="landing_mode"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, default=1)
    landing_url: Mapped[str | None] = mapped_column(String(2048))
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    referrer_reward_type: Mapped[str] = mapped_column(String(10), default="fixed")
    referrer_reward_value: Mapped[Decimal | None] = mapped_column(
        DecimalString, default=Decimal("10.00")
    )
    friend_reward_type: Mapped[str] = mapped_column(String(10), default="none")
    friend_reward_value: Mapped[Decimal | None] = mapped_column(DecimalString)
    friend_offer: Mapped[dict | None] = mapped_column(JSON)
    min_order_amount: Mapped[Decimal] = mapped_column(DecimalString, default=Decimal("0.00"))
    attribution_window_days: Mapped[int] = mapped_column(Integer, default=30)
    conversion_window_days: Mapped[int] = mapped_column(Integer, default=90)
    hold_days: Mapped[int] = mapped_column(Integer, default=14)
    auto_approve_max_amount: Mapped[Decimal | None] = mapped_column(DecimalString)
    max_rewards_per_referrer_per_month: Mapped[int | None] = mapped_column(Integer)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    # extra rewards at the referrer's Nth converted friend (domain/program.py `milestones`):
    # [{"friends": N, "reward": {"type": "fixed"|"percent", "value": "..."}}], by N ascending
    milestones: Mapped[list] = mapped_column(JSON, default=list, server_default="[]")
    # fraud defences (domain/fraud.py)
    velocity_max_signups: Mapped[int] = mapped_column(Integer, default=10)
    velocity_window_hours: Mapped[int] = mapped_column(Integer, default=24)
    coupon_sites: Mapped[list] = mapped_column(JSON, default=list)
    risk_retention_days: Mapped[int] = mapped_column(Integer, default=90)
    # the pages customers and their friends see (public/)
    landing_mode: Mapped[str] = mapped_column(String(10), default="redirect")
    default_locale: Mapped[str] = mapped_column(String(5), default="en")
    share_messages: Mapped[dict] = mapped_column(JSON, default=dict)
    # emails to referrers (domain/notifications.py), each kind off until switched on
    notify_reward_earned: Mapped[bool] = mapped_column(Boolean, default=False)
    notify_reward_approved: Mapped[bool] = mapped_column(Boolean, default=False)
    notify_reward_paid: Mapped[bool] = mapped_column(Boolean, default=False)

"""Sign-ups, referrals, purchases, refunds, rewards, clawbacks, payouts, idempotency, audit log."""

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from referral_service.models.base import Base, UTCDateTime
from referral_service.models.customer import Customer

REFERRAL_STATUSES = ("attributed", "converted", "rejected")
REWARD_STATUSES = ("pending", "awaiting_approval", "approved", "paid", "rejected", "reversed")
# a reward for one friend's first purchase, or for the referrer's Nth converted friend
REWARD_KINDS = ("referral", "milestone")


class Signup(Base):
    """The answer given to a customer's sign-up, kept so that a replay gets the same answer."""

    __tablename__ = "signups"
    __table_args__ = (
        Index("ix_signups_device_hash", "device_hash"),
        Index("ix_signups_ip_hash", "ip_hash"),
        Index("ix_signups_occurred_at", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), unique=True
    )
    attributed: Mapped[bool]
    reason: Mapped[str | None] = mapped_column(String(32))
    referral_id: Mapped[int | None] = mapped_column(ForeignKey("referrals.id"))
    code: Mapped[str | None] = mapped_column(String(16))
    click_id: Mapped[str | None] = mapped_column(String(32))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # risk evidence, as keyed hashes only (domain/fraud.py), emptied after the retention period
    ip_hash: Mapped[str | None] = mapped_column(String(64))
    ua_hash: Mapped[str | None] = mapped_column(String(64))
    device_hash: Mapped[str | None] = mapped_column(String(64))


class Referral(Base):
    """One referrer and one friend; a friend is referred at most once (first attribution wins).

    One person, one referral: `friend_email_key` is the friend's normalized email when they were
    attributed (domain/customers.py `email_key`), unique, so that the same person signing up again
    under another `external_id` is never referred twice, whatever the race. It is NULL only for
    referrals older than the key that repeated an earlier one's email, and must be emptied with
    the friend's email when a person is erased.
    """

    __tablename__ = "referrals"
    __table_args__ = (
        CheckConstraint("status IN ('attributed', 'converted', 'rejected')", name="status"),
        CheckConstraint("referrer_id <> friend_id", name="not_self"),
        UniqueConstraint("friend_email_key", name="uq_referrals_friend_email_key"),
        Index("ix_referrals_referrer_id", "referrer_id", "id"),
        Index("ix_referrals_referrer_attributed", "referrer_id", "attributed_at"),
        # a referrer's recent conversions, the velocity risk signal (domain/fraud.py)
        Index("ix_referrals_referrer_converted", "referrer_id", "converted_at"),
        Index("ix_referrals_status", "status", "id"),
        Index("ix_referrals_attributed_at", "attributed_at"),
        Index("ix_referrals_converted_at", "converted_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    referrer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    friend_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), unique=True
    )
    code_id: Mapped[int | None] = mapped_column(ForeignKey("referral_codes.id"))
    click_id: Mapped[str | None] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(32))
    friend_email_key: Mapped[str | None] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(16), default="attributed")
    attributed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    converted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    order_id: Mapped[str | None] = mapped_column(String(128))
    risk_score: Mapped[int] = mapped_column(Integer, default=0)
    risk_reasons: Mapped[list] = mapped_column(JSON, default=list)

    referrer: Mapped[Customer] = relationship(foreign_keys=[referrer_id])
    friend: Mapped[Customer] = relationship(foreign_keys=[friend_id])


class Purchase(Base):
    """An order reported by the shop; `response` is the answer given, replayed on a retry."""

    __tablename__ = "purchases"
    __table_args__ = (
        CheckConstraint("amount_minor >= 0", name="amount"),
        CheckConstraint("refunded_minor >= 0 AND refunded_minor <= amount_minor", name="refunded"),
        Index("ix_purchases_customer_id", "customer_id", "occurred_at"),
        Index("ix_purchases_occurred_at", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[str] = mapped_column(String(128), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    refunded_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(String(3))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    response: Mapped[dict] = mapped_column(JSON)


# the rewards each partial unique index of `rewards` holds to one (the migrations say the same)
LIVE_REFERRAL_REWARD = "kind = 'referral' AND status <> 'reversed'"
LIVE_MILESTONE_REWARD = "kind = 'milestone' AND status <> 'reversed'"
MILESTONE_SHAPE = (
    "(kind = 'referral' AND milestone_friends IS NULL) OR "
    "(kind = 'milestone' AND beneficiary = 'referrer' AND milestone_friends >= 1)"
)


class Reward(Base):
    """A bonus owed to the referrer or the friend.

    Of kind `referral` (a friend's first purchase), one live (not reversed) per referral and
    beneficiary at most; of kind `milestone` (the referrer's `milestone_friends`-th converted
    friend, program setting `milestones`), one live per referrer and milestone at most. The
    referral and purchase of a milestone reward are those of the conversion that reached it.
    """

    __tablename__ = "rewards"
    __table_args__ = (
        # one live reward per friend and beneficiary; a reversed one (its order refunded before
        # payout) makes way for the reward of the order that requalifies the referral
        Index(
            "uq_rewards_live_referral_beneficiary",
            "referral_id",
            "beneficiary",
            unique=True,
            sqlite_where=text(LIVE_REFERRAL_REWARD),
            postgresql_where=text(LIVE_REFERRAL_REWARD),
        ),
        # one live milestone reward per referrer and milestone; a reversed one (the count fell
        # below it before payout) makes way for the one of a conversion that reaches it again
        Index(
            "uq_rewards_live_milestone",
            "customer_id",
            "milestone_friends",
            unique=True,
            sqlite_where=text(LIVE_MILESTONE_REWARD),
            postgresql_where=text(LIVE_MILESTONE_REWARD),
        ),
        CheckConstraint("beneficiary IN ('referrer', 'friend')", name="beneficiary"),
        CheckConstraint("kind IN ('referral', 'milestone')", name="kind"),
        CheckConstraint(MILESTONE_SHAPE, name="milestone"),
        CheckConstraint(
            "status IN ('pending', 'awaiting_approval', 'approved', 'paid', 'rejected', "
            "'reversed')",
            name="status",
        ),
        CheckConstraint("amount_minor >= 0", name="amount"),
        Index("ix_rewards_status", "status", "id"),
        Index("ix_rewards_customer_id", "customer_id", "id"),
        Index("ix_rewards_available_at", "status", "available_at"),
        Index("ix_rewards_created_at", "created_at"),
        Index("ix_rewards_payout_id", "payout_id"),
        Index("ix_rewards_purchase_id", "purchase_id"),  # a refund's rewards, the funnel's
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    referral_id: Mapped[int] = mapped_column(ForeignKey("referrals.id", ondelete="CASCADE"))
    purchase_id: Mapped[int] = mapped_column(ForeignKey("purchases.id", ondelete="CASCADE"))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    beneficiary: Mapped[str] = mapped_column(String(10))
    kind: Mapped[str] = mapped_column(String(10), default="referral", server_default="referral")
    milestone_friends: Mapped[int | None] = mapped_column(Integer)
    rule_type: Mapped[str] = mapped_column(String(10))
    rule_value: Mapped[str] = mapped_column(String(40))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20))
    available_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    note: Mapped[str | None] = mapped_column(String(500))
    payout_id: Mapped[int | None] = mapped_column(ForeignKey("payouts.id"))

    referral: Mapped[Referral] = relationship()
    customer: Mapped[Customer] = relationship()


class Refund(Base):
    """A refund applied to an order, once: a shop's `refund_id` is unique per order for ever.

    A full refund or a cumulative `refunded_total` has no `refund_id` (NULLs are distinct): the
    order's `refunded_minor`, changed under a lock on the order, makes those idempotent.
    """

    __tablename__ = "refunds"
    __table_args__ = (
        UniqueConstraint("purchase_id", "refund_id", name="uq_refunds_purchase_refund_id"),
        CheckConstraint("amount_minor > 0", name="amount"),
        CheckConstraint("refunded_total_minor >= amount_minor", name="total"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    purchase_id: Mapped[int] = mapped_column(ForeignKey("purchases.id", ondelete="CASCADE"))
    refund_id: Mapped[str | None] = mapped_column(String(128))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    refunded_total_minor: Mapped[int] = mapped_column(BigInteger)  # the order's, after this one
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Clawback(Base):
    """Money to take back from a customer's later payouts: a refund after the reward was paid.

    Payouts settle it in parts (`ClawbackSettlement`), each taking what its lines can give;
    `settled_minor` is their sum, never above the amount.
    """

    __tablename__ = "clawbacks"
    __table_args__ = (
        CheckConstraint("amount_minor > 0", name="amount"),
        CheckConstraint("settled_minor >= 0 AND settled_minor <= amount_minor", name="settled"),
        Index("ix_clawbacks_customer_id", "customer_id", "id"),
        Index("ix_clawbacks_reward_id", "reward_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    reward_id: Mapped[int] = mapped_column(ForeignKey("rewards.id", ondelete="CASCADE"))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    settled_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(String(3))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ClawbackSettlement(Base):
    """The part of a clawback that one payout batch nets off its beneficiary's line."""

    __tablename__ = "clawback_settlements"
    __table_args__ = (
        UniqueConstraint("clawback_id", "payout_id", name="uq_clawback_settlements_clawback_id"),
        CheckConstraint("amount_minor > 0", name="amount"),
        Index("ix_clawback_settlements_payout_id", "payout_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    clawback_id: Mapped[int] = mapped_column(ForeignKey("clawbacks.id", ondelete="CASCADE"))
    payout_id: Mapped[int] = mapped_column(ForeignKey("payouts.id", ondelete="CASCADE"))
    amount_minor: Mapped[int] = mapped_column(BigInteger)


class Payout(Base):
    """A batch of approved rewards to pay, net of clawbacks; `paid` once marked with a reference.

    Four eyes: a batch whose total is above `PAYOUT_APPROVAL_THRESHOLD` is paid only once a
    second approver (`approved_by`, never its creator) has approved it.
    """

    __tablename__ = "payouts"
    __table_args__ = (
        CheckConstraint("status IN ('created', 'paid')", name="status"),
        CheckConstraint(
            "approved_by IS NULL OR approved_by <> created_by", name="approver_not_creator"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(10), default="created")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(120))
    approved_by: Mapped[str | None] = mapped_column(String(120))
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reference: Mapped[str | None] = mapped_column(String(200))


class IdempotencyKey(Base):
    """A request made with an `Idempotency-Key`: in flight, or done with its saved answer."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("owner", "key", name="uq_idempotency_keys_owner_key"),
        Index("ix_idempotency_keys_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(40))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)


class AuditRecord(Base):
    """Who did what to which thing, when, with the state before and after."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_subject", "subject_type", "subject_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(120))
    action: Mapped[str] = mapped_column(String(60))
    subject_type: Mapped[str] = mapped_column(String(30))
    subject_id: Mapped[str] = mapped_column(String(64))
    before: Mapped[dict | None] = mapped_column(JSON)
    after: Mapped[dict | None] = mapped_column(JSON)

"""Customers and their referral codes."""

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from referral_service.models.base import Base, UTCDateTime, utcnow


class Customer(Base):
    """A person known to the shop, named by the shop's own `external_id`."""

    __tablename__ = "customers"
    __table_args__ = (
        # the customers known before a moment (insight's customers at the start of a period)
        Index("ix_customers_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    external_id: Mapped[str] = mapped_column(String(128), unique=True)
    # email, its key, name and locale are NULL once the person is erased (`erased_at`)
    email: Mapped[str | None] = mapped_column(String(320))
    email_key: Mapped[str | None] = mapped_column(String(320), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    locale: Mapped[str | None] = mapped_column(String(35))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    origin: Mapped[str] = mapped_column(String(10), default="enrolled")
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    codes: Mapped[list["ReferralCode"]] = relationship(
        back_populates="customer", order_by="ReferralCode.id"
    )


class ReferralCode(Base):
    """A signed referral code; a customer has at most one that is not revoked."""

    __tablename__ = "referral_codes"
    __table_args__ = (
        Index(
            "uq_referral_codes_active_customer",
            "customer_id",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    code: Mapped[str] = mapped_column(String(16), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    customer: Mapped[Customer] = relationship(back_populates="codes")

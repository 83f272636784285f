"""Each customer's first order in each currency, with their orders of the 90 days from it: the
summary insight's cohorts read as one index range (domain/cohorts.py keeps it up to date)."""

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from referral_service.models.base import Base, UTCDateTime


class CustomerFirstOrder(Base):
    """A customer's first counted order in `currency` (fully refunded orders aside) and, over
    their counted orders from it to 90 days after it, how many (`orders_90d`) and their revenue
    net of refunds in minor units (`revenue_90d_minor`). No row: no counted order."""

    __tablename__ = "customer_first_orders"
    __table_args__ = (
        CheckConstraint("orders_90d >= 1", name="orders"),
        CheckConstraint("revenue_90d_minor >= 0", name="revenue"),
        Index("ix_customer_first_orders_currency", "currency", "first_order_at"),
    )

    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True
    )
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    first_order_at: Mapped[datetime] = mapped_column(UTCDateTime)
    orders_90d: Mapped[int]
    revenue_90d_minor: Mapped[int] = mapped_column(BigInteger)

"""Roll-ups of clicks: counts per UTC day and channel, per hour and channel, and per referrer and
channel.

The clicks table grows by one row a visit; the funnel and a referrer's counters read these
roll-ups for the clicks already rolled up (`clicks.rolled_up_at` set) and the clicks table only
for the rest, so that old click rows can be pruned without changing a figure
(domain/rollups.py).
"""

from datetime import date, datetime

from sqlalchemy import CheckConstraint, Date, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from referral_service.models.base import Base, UTCDateTime


class ClickDay(Base):
    """The rolled-up clicks of one UTC day through one channel."""

    __tablename__ = "click_days"
    __table_args__ = (CheckConstraint("clicks >= 0", name="clicks"),)

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32), primary_key=True)
    clicks: Mapped[int]


class ClickHour(Base):
    """The rolled-up clicks of one hour (its start, UTC) through one channel: a period's partial
    days are read from these."""

    __tablename__ = "click_hours"
    __table_args__ = (CheckConstraint("clicks >= 0", name="clicks"),)

    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32), primary_key=True)
    clicks: Mapped[int]


class ClickTotal(Base):
    """A referrer's rolled-up clicks through one channel, with the first and the last visit."""

    __tablename__ = "click_totals"
    __table_args__ = (CheckConstraint("clicks >= 0", name="clicks"),)

    referrer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True
    )
    channel: Mapped[str] = mapped_column(String(32), primary_key=True)
    clicks: Mapped[int]
    first_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ClickMark(Base):
    """A named point in time of the roll-ups: `pruned_until`, before which the rolled-up click
    rows are gone (a midnight, UTC); also the row the roll-up and pruning jobs lock."""

    __tablename__ = "click_marks"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    at: Mapped[datetime | None] = mapped_column(UTCDateTime)

"""Admins of the console (passwords stored only as scrypt hashes) and their failed sign-ins.

`Admin.session_generation` is part of every console session's check: raising it by one ends all
of that admin's sessions at their next request (signing out, a new password, a new role,
disabling).
"""

from datetime import datetime

from sqlalchemy import CheckConstraint, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from referral_service.models.base import Base, UTCDateTime, utcnow

ROLES = ("viewer", "approver", "owner")


class Admin(Base):
    """A person who signs in to /admin: viewers read, approvers decide, owners also configure."""

    __tablename__ = "admins"
    __table_args__ = (CheckConstraint("role IN ('viewer', 'approver', 'owner')", name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # lower case
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_sign_in_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    session_generation: Mapped[int] = mapped_column(default=0, server_default="0")


class SignInFailure(Base):
    """One refused sign-in for an email (known or not), counted by the sign-in throttle per
    email and per client address (None when the caller named none)."""

    __tablename__ = "admin_sign_in_failures"
    __table_args__ = (
        Index("ix_admin_sign_in_failures_email_at", "email", "at"),
        Index("ix_admin_sign_in_failures_address_at", "address", "at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    address: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)

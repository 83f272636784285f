"""API keys: only a SHA-256 digest of each key is stored."""

from datetime import datetime

from sqlalchemy import CheckConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from referral_service.models.base import Base, UTCDateTime, utcnow

SCOPES = ("shop", "admin")


class ApiKey(Base):
    """A bearer key for the API, with its scope; revoked keys are kept for the record."""

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint("scope IN ('shop', 'admin')", name="scope"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    scope: Mapped[str] = mapped_column(String(10))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

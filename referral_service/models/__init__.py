"""SQLAlchemy models of the service; constraints make wrong states impossible."""

from referral_service.models import notification, platform, webhook  # noqa: F401 (their tables)
from referral_service.models.admin import Admin, SignInFailure
from referral_service.models.api_key import ApiKey
from referral_service.models.base import Base, utcnow
from referral_service.models.click import Click
from referral_service.models.click_rollup import ClickDay, ClickHour, ClickMark, ClickTotal
from referral_service.models.cohort import CustomerFirstOrder
from referral_service.models.customer import Customer, ReferralCode
from referral_service.models.outbox import OutboxEvent
from referral_service.models.program import Program
from referral_service.models.referral import (
    AuditRecord,
    Clawback,
    ClawbackSettlement,
    IdempotencyKey,
    Payout,
    Purchase,
    Referral,
    Refund,
    Reward,
    Signup,
)

__all__ = [
    "Admin",
    "ApiKey",
    "AuditRecord",
    "Base",
    "Clawback",
    "ClawbackSettlement",
    "Click",
    "ClickDay",
    "ClickHour",
    "ClickMark",
    "ClickTotal",
    "Customer",
    "CustomerFirstOrder",
    "IdempotencyKey",
    "OutboxEvent",
    "Payout",
    "Program",
    "Purchase",
    "Referral",
    "ReferralCode",
    "Refund",
    "Reward",
    "SignInFailure",
    "Signup",
    "utcnow",
]

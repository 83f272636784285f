"""Admins of the console: created with a role, passwords hashed with scrypt, sign-in throttled.

Passwords are stored as `scrypt$N$r$p$salt$hash` (salt and hash in base64) with OWASP's
parameters: N=2**17, r=8, p=1, a 16-byte random salt and a 64-byte key. A stored hash names its
own parameters, so raising them later keeps older hashes verifiable.

Sign-in throttle: after `MAX_FAILURES` refused sign-ins for one email within `FAILURE_WINDOW`,
that email may not sign in until the oldest of those failures is `FAILURE_WINDOW` old, even
with the right password. Failures are rows in the database, so every process and host counts
the same ones; a successful sign-in forgets them.
"""

import base64
import hashlib
import hmac
import math
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from referral_service.domain.customers import check_email
from referral_service.errors import Conflict, NotFound, Throttled, Unauthorized, ValidationFailed
from referral_service.extensions import db
from referral_service.models import Admin, SignInFailure, utcnow
from referral_service.models.admin import ROLES
from referral_service.models.base import begin_write

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**17, 8, 1
SALT_BYTES, KEY_BYTES = 16, 64
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # scrypt takes any length; this only bounds the work of a hostile form
MAX_FAILURES = 5
FAILURE_WINDOW = timedelta(minutes=15)
WRONG = "Wrong email or password."
RANK = {role: rank for rank, role in enumerate(ROLES)}


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=length,
        maxmem=2 * 128 * n * r * p + 1024 * 1024,  # scrypt needs 128*N*r*p bytes; room to spare
    )


def hash_password(password: str) -> str:
    """The stored form of a password: `scrypt$N$r$p$salt_b64$hash_b64`."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_BYTES)
    encoded = [base64.b64encode(part).decode() for part in (salt, key)]
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encoded[0]}${encoded[1]}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` is the one `stored` was made from (compared in constant time)."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(key)
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p), len(expected))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


_decoy: dict[int, str] = {}


def _decoy_hash() -> str:
    """A hash to verify against when the email is unknown, so that it takes as long."""
    if SCRYPT_N not in _decoy:
        _decoy[SCRYPT_N] = hash_password(secrets.token_urlsafe(16))
    return _decoy[SCRYPT_N]


def normalize_email(email: str) -> str:
    """The address in lower case, if it is a valid address; raises ValidationFailed."""
    return check_email((email or "").strip()).lower()


def check_password(password: str) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValidationFailed(
            fields={"password": [f"Must be {MIN_PASSWORD} to {MAX_PASSWORD} characters."]}
        )
    return password


def create(email: str, password: str, role: str = "owner", now: datetime | None = None) -> Admin:
    """Create an admin; raises ValidationFailed (email, password of fewer than 12 characters,
    role) or Conflict when an admin with this email exists."""
    email = normalize_email(email)
    check_password(password)
    if role not in ROLES:
        raise ValidationFailed(fields={"role": [f"Must be one of {', '.join(ROLES)}."]})
    password_hash = hash_password(password)  # before the write lock: it takes a while
    begin_write(db.session)
    if db.session.scalar(select(Admin.id).where(Admin.email == email)) is not None:
        db.session.rollback()
        raise Conflict(f"An admin with the email {email} exists already.")
    admin = Admin(email=email, password_hash=password_hash, role=role, created_at=now or utcnow())
    db.session.add(admin)
    db.session.commit()
    return admin


def all_admins() -> list[Admin]:
    return list(db.session.scalars(select(Admin).order_by(Admin.id)))


def _throttled_for(email: str, now: datetime) -> int:
    """Seconds until `email` may try again; 0 when it may now."""
    recent = list(
        db.session.scalars(
            select(SignInFailure.at)
            .where(SignInFailure.email == email, SignInFailure.at > now - FAILURE_WINDOW)
            .order_by(SignInFailure.at.desc())
            .limit(MAX_FAILURES)
        )
    )
    if len(recent) < MAX_FAILURES:
        return 0
    return max(1, math.ceil((recent[-1] + FAILURE_WINDOW - now).total_seconds()))


def authenticate(email: str, password: str, now: datetime | None = None) -> Admin:
    """The active admin with this email and password; records the sign-in.

    Raises Throttled (with `retry_after`) after too many failures for this email, and
    Unauthorized for a wrong email or password or a disabled admin (the same message for each).
    """
    now = now or utcnow()
    try:
        email = normalize_email(email)
    except ValidationFailed:
        raise Unauthorized(WRONG) from None
    wait = _throttled_for(email, now)
    db.session.rollback()
    if wait:
        minutes = math.ceil(wait / 60)
        raise Throttled(
            f"Too many failed sign-ins for this email: try again in {minutes} minutes.", wait
        )
    admin = db.session.scalar(select(Admin).where(Admin.email == email))
    stored = admin.password_hash if admin is not None else _decoy_hash()
    right = verify_password((password or "")[:MAX_PASSWORD], stored)
    begin_write(db.session)
    if not right or admin is None or admin.disabled_at is not None:
        db.session.add(SignInFailure(email=email, at=now))
        db.session.execute(delete(SignInFailure).where(SignInFailure.at < now - FAILURE_WINDOW))
        db.session.commit()
        raise Unauthorized(WRONG)
    db.session.execute(delete(SignInFailure).where(SignInFailure.email == email))
    admin = db.session.get(Admin, admin.id)
    admin.last_sign_in_at = now
    db.session.commit()
    return admin


def session_check(admin: Admin) -> str:
    """A value kept in the admin's session; it changes when their password does."""
    return hashlib.blake2b(
        admin.password_hash.encode(), digest_size=16, person=b"admin-session"
    ).hexdigest()


def signed_in(admin_id, check) -> Admin | None:
    """The active admin a session names, if its check still matches; else None."""
    if not isinstance(admin_id, int) or not isinstance(check, str):
        return None
    admin = db.session.get(Admin, admin_id)
    if admin is None or admin.disabled_at is not None:
        return None
    if not hmac.compare_digest(session_check(admin), check):
        return None
    return admin


def disable(email: str, now: datetime | None = None) -> Admin:
    """Disable an admin: their sessions end at their next request. Raises NotFound."""
    email = (email or "").strip().lower()
    begin_write(db.session)
    admin = db.session.scalar(select(Admin).where(Admin.email == email).with_for_update())
    if admin is None:
        db.session.rollback()
        raise NotFound(f"No admin with the email {email}.")
    admin.disabled_at = admin.disabled_at or now or utcnow()
    db.session.commit()
    return admin


def may(admin: Admin, role: str) -> bool:
    """Whether `admin`'s role includes what `role` may do (owner > approver > viewer)."""
    return RANK[admin.role] >= RANK[role]

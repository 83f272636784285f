"""Admins of the console: created with a role, passwords hashed with scrypt, sign-in throttled.

Passwords are stored as `scrypt$N$r$p$salt$hash` (salt and hash in base64) with OWASP's
parameters: N=2**17, r=8, p=1, a 16-byte random salt and a 64-byte key. A stored hash names its
own parameters, so raising them later keeps older hashes verifiable.

Sign-in throttle: after `MAX_FAILURES` refused sign-ins for one email within `FAILURE_WINDOW`,
that email may not sign in until the oldest of those failures is `FAILURE_WINDOW` old, even
with the right password; likewise after `MAX_ADDRESS_FAILURES` refused sign-ins from one client
address (whatever the emails), nobody signs in from that address meanwhile. Failures are rows
in the database, so every process and host counts the same ones; a successful sign-in forgets
the failures of its email (not those of its address: one known password must not reset the
count of guesses at the others).

Sessions: a console session keeps `session_check(admin)`, a digest of the admin's password hash
and session generation. Signing out, a new password, a new role and disabling raise the
generation by one in the database (`UPDATE ... SET session_generation = session_generation + 1`,
so concurrent ones all count), which ends every session of that admin, on every device, at its
next request.
"""

import base64
import hashlib
import hmac
import math
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from referral_service.domain.customers import check_email
from referral_service.domain.unit import unit_of_work
from referral_service.errors import Conflict, NotFound, Throttled, Unauthorized, ValidationFailed
from referral_service.extensions import db
from referral_service.models import Admin, SignInFailure, utcnow
from referral_service.models.admin import ROLES

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**17, 8, 1
SALT_BYTES, KEY_BYTES = 16, 64
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # scrypt takes any length; this only bounds the work of a hostile form
MAX_FAILURES = 5  # per email
MAX_ADDRESS_FAILURES = 10  # per client address, whatever the emails
FAILURE_WINDOW = timedelta(minutes=15)
MAX_ADDRESS = 64  # characters of a client address kept with a failure
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


def check_role(role: str) -> str:
    """`role` if it is one of ROLES; raises ValidationFailed."""
    if role not in ROLES:
        raise ValidationFailed(fields={"role": [f"Must be one of {', '.join(ROLES)}."]})
    return role


def create(email: str, password: str, role: str = "owner", now: datetime | None = None) -> Admin:
    """Create an admin; raises ValidationFailed (email, password of fewer than 12 characters,
    role) or Conflict when an admin with this email exists."""
    email = normalize_email(email)
    check_password(password)
    check_role(role)
    password_hash = hash_password(password)  # before the write lock: it takes a while
    with unit_of_work(now) as unit:
        if db.session.scalar(select(Admin.id).where(Admin.email == email)) is not None:
            raise Conflict(f"An admin with the email {email} exists already.")
        admin = Admin(email=email, password_hash=password_hash, role=role, created_at=unit.now)
        db.session.add(admin)
    return admin


def all_admins() -> list[Admin]:
    return list(db.session.scalars(select(Admin).order_by(Admin.id)))


def _wait(condition, limit: int, now: datetime) -> int:
    """Seconds until fewer than `limit` failures matching `condition` are in the window."""
    recent = list(
        db.session.scalars(
            select(SignInFailure.at)
            .where(condition, SignInFailure.at > now - FAILURE_WINDOW)
            .order_by(SignInFailure.at.desc())
            .limit(limit)
        )
    )
    if len(recent) < limit:
        return 0
    return max(1, math.ceil((recent[-1] + FAILURE_WINDOW - now).total_seconds()))


def _throttled(email: str, address: str | None, now: datetime) -> None:
    """Raise Throttled when `email`, or else `address`, has failed too often lately."""
    wait = _wait(SignInFailure.email == email, MAX_FAILURES, now)
    whom = "this email"
    if not wait and address is not None:
        wait = _wait(SignInFailure.address == address, MAX_ADDRESS_FAILURES, now)
        whom = "this address"
    if wait:
        minutes = math.ceil(wait / 60)
        raise Throttled(
            f"Too many failed sign-ins for {whom}: try again in {minutes} minutes.", wait
        )


def authenticate(
    email: str, password: str, address: str | None = None, now: datetime | None = None
) -> Admin:
    """The active admin with this email and password; records the sign-in.

    `address` is the client's address as the rate limits see it (None: not counted by address;
    longer than 64 characters: its first 64). Raises Throttled (with `retry_after` in seconds)
    after `MAX_FAILURES` failures for this email or `MAX_ADDRESS_FAILURES` from this address
    within `FAILURE_WINDOW`, and Unauthorized for a wrong email or password or a disabled admin
    (the same message for each).
    """
    now = now or utcnow()
    address = address[:MAX_ADDRESS] if address is not None else None
    try:
        email = normalize_email(email)
    except ValidationFailed:
        raise Unauthorized(WRONG) from None  # no admin has it: no password was tried
    _throttled(email, address, now)
    admin = db.session.scalar(select(Admin).where(Admin.email == email))
    stored = admin.password_hash if admin is not None else _decoy_hash()
    right = verify_password((password or "")[:MAX_PASSWORD], stored)
    if not right or admin is None or admin.disabled_at is not None:
        _record_failure(email, address, now)
        raise Unauthorized(WRONG)
    with unit_of_work(now):
        db.session.execute(delete(SignInFailure).where(SignInFailure.email == email))
        admin = db.session.get(Admin, admin.id)
        admin.last_sign_in_at = now
    return admin


def _record_failure(email: str, address: str | None, now: datetime) -> None:
    with unit_of_work(now):
        db.session.add(SignInFailure(email=email, address=address, at=now))
        db.session.execute(delete(SignInFailure).where(SignInFailure.at < now - FAILURE_WINDOW))


def session_check(admin: Admin) -> str:
    """A value kept in the admin's session: a digest of their password hash and session
    generation, so it changes when either does (and every session holding the old one ends)."""
    material = f"{admin.session_generation}:{admin.password_hash}".encode()
    return hashlib.blake2b(material, digest_size=16, person=b"admin-session").hexdigest()


def signed_in(admin_id, check) -> Admin | None:
    """The active admin a session names, if its check still matches; else None."""
    if not isinstance(admin_id, int) or not isinstance(check, str):
        return None
    admin = db.session.get(Admin, admin_id)
    if admin is None or admin.disabled_at is not None:
        return None
    if not hmac.compare_digest(session_check(admin).encode(), check.encode()):
        return None
    return admin


NEXT_GENERATION = Admin.session_generation + 1  # computed by the database: no update is lost


def sign_out(admin_id: int) -> None:
    """End every session of the admin with this id, on every device (an unknown id changes
    nothing)."""
    with unit_of_work():
        db.session.execute(
            update(Admin).where(Admin.id == admin_id).values(session_generation=NEXT_GENERATION)
        )


def _change(email: str, change=lambda admin: None) -> Admin:
    """Apply `change` to the admin with this email (locked) and end their sessions, in one
    transaction; raises NotFound."""
    email = (email or "").strip().lower()
    with unit_of_work():
        admin = db.session.scalar(select(Admin).where(Admin.email == email).with_for_update())
        if admin is None:
            raise NotFound(f"No admin with the email {email}.")
        change(admin)
        admin.session_generation = NEXT_GENERATION
    return admin


def sign_out_everywhere(email: str) -> Admin:
    """End every session of the admin with this email; raises NotFound."""
    return _change(email)


def set_password(email: str, password: str) -> Admin:
    """Give an admin a new password and end their sessions. Raises ValidationFailed (fewer than
    12 or more than 1024 characters) or NotFound."""
    password_hash = hash_password(check_password(password))  # before the write lock: it is slow
    return _change(email, lambda admin: setattr(admin, "password_hash", password_hash))


def set_role(email: str, role: str) -> Admin:
    """Give an admin another role and end their sessions (they sign in again under it).
    Raises ValidationFailed for an unknown role, NotFound for an unknown email."""
    check_role(role)
    return _change(email, lambda admin: setattr(admin, "role", role))


def disable(email: str, now: datetime | None = None) -> Admin:
    """Disable an admin: they can no longer sign in and their sessions end. Raises NotFound."""

    def disabled(admin: Admin) -> None:
        admin.disabled_at = admin.disabled_at or now or utcnow()

    return _change(email, disabled)


def may(admin: Admin, role: str) -> bool:
    """Whether `admin`'s role includes what `role` may do (owner > approver > viewer)."""
    return RANK[admin.role] >= RANK[role]

"""API keys: created with a scope, shown once, stored as a SHA-256 digest, revoked by id or name."""

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import or_, select

from referral_service.domain.unit import unit_of_work
from referral_service.errors import Forbidden, NotFound, Unauthorized, ValidationFailed
from referral_service.extensions import db
from referral_service.models import ApiKey
from referral_service.models.api_key import SCOPES

KEY_PREFIX = "rsk_"


@dataclass
class NewKey:
    """A key just created: `secret` is the only copy of the key there will ever be."""

    id: int
    name: str
    scope: str
    secret: str


def digest(secret: str) -> str:
    """The stored form of a key (keys are 256 random bits, so a plain SHA-256 suffices)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def create(name: str, scope: str, actor: str | None = None) -> NewKey:
    """Create a key; raises ValidationFailed for an empty name or an unknown scope.

    With an `actor`, the creation is audited (the key's name, scope and prefix: never the key).
    """
    name = (name or "").strip()
    if not 1 <= len(name) <= 100:
        raise ValidationFailed(fields={"name": ["Must be 1 to 100 characters."]})
    if scope not in SCOPES:
        raise ValidationFailed(fields={"scope": [f"Must be one of {', '.join(SCOPES)}."]})
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    with unit_of_work() as unit:
        key = ApiKey(
            name=name, scope=scope, prefix=secret[:12], key_hash=digest(secret), created_at=unit.now
        )
        db.session.add(key)
        if actor is not None:
            db.session.flush()
            unit.audit(actor, "api_key.create", "api_key", key.id, None, _audited(key))
    return NewKey(id=key.id, name=name, scope=scope, secret=secret)


def all_keys() -> list[ApiKey]:
    return list(db.session.scalars(select(ApiKey).order_by(ApiKey.id)))


def _audited(key: ApiKey) -> dict:
    revoked = key.revoked_at.isoformat() if key.revoked_at else None
    return {"name": key.name, "scope": key.scope, "prefix": key.prefix, "revoked_at": revoked}


def revoke(ident: str, actor: str | None = None) -> list[ApiKey]:
    """Revoke the active key(s) named by id, name or the prefix shown by `list`.

    Raises NotFound when nothing active matches. With an `actor`, each revocation is audited.
    """
    conditions = [ApiKey.name == ident, ApiKey.prefix == ident, ApiKey.key_hash == digest(ident)]
    if ident.isascii() and ident.isdecimal() and len(ident) <= 18:
        conditions.append(ApiKey.id == int(ident))
    with unit_of_work() as unit:
        keys = list(
            db.session.scalars(select(ApiKey).where(or_(*conditions), ApiKey.revoked_at.is_(None)))
        )
        if not keys:
            raise NotFound(f"No active API key matches {ident!r}.")
        for key in keys:
            before = _audited(key)
            key.revoked_at = unit.now
            if actor is not None:
                unit.audit(actor, "api_key.revoke", "api_key", key.id, before, _audited(key))
    return keys


def revoke_id(key_id: int, actor: str | None = None) -> ApiKey:
    """Revoke the active key with this id only (not one whose name happens to be that number).

    Raises NotFound when no active key has this id. With an `actor`, it is audited.
    """
    with unit_of_work() as unit:
        key = db.session.get(ApiKey, key_id) if 0 < key_id < 2**31 else None
        if key is None or key.revoked_at is not None:
            raise NotFound(f"No active API key has the id {key_id}.")
        before = _audited(key)
        key.revoked_at = unit.now
        if actor is not None:
            unit.audit(actor, "api_key.revoke", "api_key", key.id, before, _audited(key))
    return key


def find(secret: str | None):
    """The active key (a row of `id`, `name`, `scope`) for a bearer secret; None for a missing,
    unknown or revoked one."""
    if not secret:
        return None
    keys = ApiKey.__table__.c
    return (
        db.session.connection()
        .execute(
            select(keys.id, keys.name, keys.scope).where(
                keys.key_hash == digest(secret), keys.revoked_at.is_(None)
            )
        )
        .first()
    )


def authorize(key, needed: str, sent: bool = True):
    """`key` (as `find` returns it) if its scope covers `needed` (`admin` covers all).

    Raises Unauthorized when `key` is None (`sent` says whether a secret came at all, for the
    message) and Forbidden for a narrower scope.
    """
    if key is None:
        if not sent:
            raise Unauthorized()
        raise Unauthorized("This API key is unknown or has been revoked.")
    if needed == "admin" and key.scope != "admin":
        raise Forbidden("This request needs an API key with the admin scope.")
    return key

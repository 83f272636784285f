"""Signed referral codes: issue, verify, and the code of a customer.

A code is 16 characters of Crockford's base32 (no I, L, O or U; `O` reads as 0 and `I`/`L` as 1):
a random 5-character payload (25 bits) followed by 11 characters (55 bits) of an HMAC-SHA256 of
the payload, keyed by itsdangerous under the secret key with the code's own salt. A forged or
mistyped code fails the MAC check in memory, before any database lookup; a random guess passes it
with odds of 1 in 2^55. Keys listed in `SECRET_KEY_FALLBACKS` still verify the codes they issued.
"""

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass

from flask import current_app
from itsdangerous import Signer
from sqlalchemy import select

from referral_service.errors import InvalidCode, NotFound, RevokedCode
from referral_service.extensions import db
from referral_service.models import ReferralCode

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
PAYLOAD_LENGTH = 5
MAC_LENGTH = 11
CODE_LENGTH = PAYLOAD_LENGTH + MAC_LENGTH
MAC_BITS = 5 * MAC_LENGTH
SALT = "referral-service.referral-code"

_FOLD = str.maketrans({"O": "0", "I": "1", "L": "1"})
_SEPARATORS = re.compile(r"[\s\-_.]+")
_CANONICAL = re.compile(f"[{ALPHABET}]{{{CODE_LENGTH}}}")


def normalize(text: str) -> str | None:
    """A typed code in canonical form (upper case, no separators, look-alikes folded), or None."""
    if not isinstance(text, str) or len(text) > 64:
        return None
    candidate = _SEPARATORS.sub("", text).upper().translate(_FOLD)
    return candidate if _CANONICAL.fullmatch(candidate) else None


def display(code: str) -> str:
    """A canonical code grouped by four for reading aloud: `ABCD-EFGH-JKMN-PQRS`."""
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


def _encode(number: int, length: int) -> str:
    chars = []
    for _ in range(length):
        number, digit = divmod(number, 32)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


class CodeSigner:
    """Issues and verifies codes under the current key and the fallback keys."""

    def __init__(self, secret_key: str, fallbacks: list[str] | tuple[str, ...] = ()):
        # itsdangerous takes keys oldest first and signs with the last one
        signer = Signer([*reversed(fallbacks), secret_key], salt=SALT, digest_method=hashlib.sha256)
        self._algorithm = signer.algorithm
        self._keys = [signer.derive_key(key) for key in reversed(signer.secret_keys)]

    def _mac(self, key: bytes, payload: str) -> str:
        digest = self._algorithm.get_signature(key, payload.encode("ascii"))
        return _encode(int.from_bytes(digest[:7], "big") >> (56 - MAC_BITS), MAC_LENGTH)

    def issue(self) -> str:
        """A new code with a random payload, signed with the current key."""
        payload = _encode(secrets.randbits(5 * PAYLOAD_LENGTH), PAYLOAD_LENGTH)
        return payload + self._mac(self._keys[0], payload)

    def verify(self, text: str) -> str:
        """The canonical code if `text` carries a valid signature under any key.

        Raises InvalidCode for anything else: wrong length or characters, or a failed MAC.
        """
        code = normalize(text)
        if code is None:
            raise InvalidCode("A referral code has 16 letters and digits; this one does not.")
        payload, mac = code[:PAYLOAD_LENGTH], code[PAYLOAD_LENGTH:]
        for key in self._keys:
            if hmac.compare_digest(self._mac(key, payload), mac):
                return code
        raise InvalidCode("This referral code is not valid: it may be mistyped.")


@dataclass(frozen=True)
class ActiveCode:
    """A verified code that names a referrer."""

    code: str
    code_id: int
    referrer_id: int


class CodeCache:
    """What a process knows of codes: `code -> ActiveCode or None (revoked/unknown)`, kept a while.

    The share link is hot, so a process remembers each code it has looked up for
    `CACHE_SECONDS`. A rotation in this process forgets at once; another process may go on
    redirecting with a just-revoked code for at most that long (attribution checks the database).
    """

    def __init__(self, seconds: float, max_items: int = 50_000):
        self.seconds = seconds
        self.max_items = max_items
        self._items: dict[str, tuple[float, ActiveCode | None]] = {}
        self._lock = threading.Lock()

    def get(self, code: str):
        item = self._items.get(code)
        if item is None or item[0] < time.monotonic():
            return _MISSING
        return item[1]

    def put(self, code: str, value: ActiveCode | None) -> None:
        with self._lock:
            if len(self._items) >= self.max_items:
                self._items.clear()
            self._items[code] = (time.monotonic() + self.seconds, value)

    def forget_referrer(self, referrer_id: int) -> None:
        with self._lock:
            for code, (_, value) in list(self._items.items()):
                if value is None or value.referrer_id == referrer_id:
                    self._items.pop(code, None)


_MISSING = object()


def signer() -> CodeSigner:
    """The application's code signer, built once from SECRET_KEY and SECRET_KEY_FALLBACKS."""
    return current_app.extensions["referral_codes"]


def lookup(text: str, fresh: bool = False) -> ActiveCode:
    """The active code that `text` names; with `fresh`, read from the database, not the cache.

    Raises InvalidCode (forged or mistyped; no database lookup is made), RevokedCode (replaced by a
    newer code) or NotFound (a well-signed code this database never issued).
    """
    code = signer().verify(text)
    cache: CodeCache = current_app.extensions["code_cache"]
    found = _MISSING if fresh else cache.get(code)
    if found is _MISSING:
        row = db.session.execute(
            select(ReferralCode.id, ReferralCode.customer_id, ReferralCode.revoked_at).where(
                ReferralCode.code == code
            )
        ).first()
        if row is None:
            raise NotFound("This referral code is not known.")
        found = ActiveCode(code, row.id, row.customer_id) if row.revoked_at is None else None
        cache.put(code, found)
    if found is None:
        raise RevokedCode()
    return found


def forget_code(referrer_id: int) -> None:
    """Drop what this process cached of a referrer's codes (after a rotation)."""
    current_app.extensions["code_cache"].forget_referrer(referrer_id)

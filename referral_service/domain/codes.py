"""Signed referral codes: issue, verify, and the code of a customer.

A code is 16 characters of Crockford's base32 (no I, L, O or U; `O` reads as 0 and `I`/`L` as 1):
a random 5-character payload (25 bits) followed by 11 characters (55 bits) of an HMAC-SHA256 of
the payload, keyed by itsdangerous under the secret key with the code's own salt. A forged or
mistyped code fails the MAC check in memory, before any database lookup; a random guess passes it
with odds of 1 in 2^55. Keys listed in `SECRET_KEY_FALLBACKS` still verify the codes they issued.
Typed, pasted or mangled codes are read by `normalize`, the one reading every door uses.
"""

import hashlib
import hmac
import re
import secrets
import threading
import time
import unicodedata
from dataclasses import dataclass

from flask import current_app
from itsdangerous import Signer
from sqlalchemy import select

from referral_service import database
from referral_service.errors import InvalidCode, NotFound, RevokedCode, Unavailable
from referral_service.extensions import db
from referral_service.models import ReferralCode

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
PAYLOAD_LENGTH = 5
MAC_LENGTH = 11
CODE_LENGTH = PAYLOAD_LENGTH + MAC_LENGTH
MAC_BITS = 5 * MAC_LENGTH
SALT = "referral-service.referral-code"

MAX_TYPED = 100  # characters of typed or pasted text read as a code at most

# Letters read as the digit or Latin letter they look like: O is 0, I and L are 1, and the
# Cyrillic and Greek capitals of Bulgarian and Greek keyboards that look like Latin ones.
_FOLD = str.maketrans(
    {
        "O": "0",
        "I": "1",
        "L": "1",
        # Cyrillic A, Ve, Ie, Ze, Ukrainian I, Je, Ka, Em, En, O, Er, Es, Dze, Te, Ha
        **dict(
            zip(
                "\u0410\u0412\u0415\u0417\u0406\u0408\u041a\u041c"
                "\u041d\u041e\u0420\u0421\u0405\u0422\u0425",
                "ABE31JKMH0PCSTX",
                strict=True,
            )
        ),
        # Greek Alpha, Beta, Epsilon, Zeta, Eta, Iota, Kappa, Mu, Nu, Omicron, Rho, Tau,
        # Upsilon, Chi
        **dict(
            zip(
                "\u0391\u0392\u0395\u0396\u0397\u0399\u039a"
                "\u039c\u039d\u039f\u03a1\u03a4\u03a5\u03a7",
                "ABEZH1KMN0PTYX",
                strict=True,
            )
        ),
    }
)
# Dashes that Unicode does not file as dash punctuation (category Pd): minus signs, hyphen bullet.
_OTHER_DASHES = frozenset("\u2212\u2043\u2796\u02d7\u207b\u208b")
# Invisible characters that are not format characters (category Cf): the combining grapheme
# joiner, Hangul fillers and the variation selectors.
_OTHER_INVISIBLES = frozenset(
    "\u034f\u115f\u1160\u3164\uffa0"
    + "".join(map(chr, range(0xFE00, 0xFE10)))
    + "".join(map(chr, range(0xE0100, 0xE01F0)))
)
_CANONICAL = re.compile(f"[{ALPHABET}]{{{CODE_LENGTH}}}")


def _is_separator(char: str) -> bool:
    """Spaces, hyphens and every look-alike dash, `_` and `.` between groups of a code."""
    category = unicodedata.category(char)
    return char in "_." or char.isspace() or category == "Pd" or char in _OTHER_DASHES


def normalize(text: str) -> str | None:
    """A typed or pasted code in canonical form, or None when no code can be read from it.

    The one reading of a code, whatever door it comes by (share link, QR image, welcome page,
    sign-up): Unicode NFKC (full-width letters, no-break spaces), invisible characters dropped
    (zero-width space and joiners, BOM, soft hyphen, variation selectors), anything that is not a
    letter or digit stripped from both ends (a link followed by `)`, `,`, `.`, `!`, `?`, quotes
    or an emoji), spaces, hyphens, look-alike dashes (en dash, em dash, minus sign, ...), `_` and
    `.` dropped as separators, upper case, look-alikes folded (O as 0, I and L as 1, Cyrillic and
    Greek capitals as the Latin ones). Returns the 16 characters of the alphabet, or None for
    anything else (not a string, more than MAX_TYPED characters, other characters inside).
    """
    if not isinstance(text, str) or len(text) > MAX_TYPED:
        return None
    if _CANONICAL.fullmatch(text):  # the share link as issued: the hot path
        return text
    visible = [
        char
        for char in unicodedata.normalize("NFKC", text)
        if unicodedata.category(char) != "Cf" and char not in _OTHER_INVISIBLES
    ]
    start, end = 0, len(visible)
    while start < end and not visible[start].isalnum():
        start += 1
    while end > start and not visible[end - 1].isalnum():
        end -= 1
    candidate = "".join(c for c in visible[start:end] if not _is_separator(c))
    candidate = candidate.upper().translate(_FOLD)
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
    redirecting with a just-revoked code for at most that long (attribution checks the database),
    or for as long as the database cannot answer (`last_known`).
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

    def last_known(self, code: str):
        """What was cached of `code`, however old (for when the database cannot answer)."""
        item = self._items.get(code)
        return _MISSING if item is None else item[1]

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
    """The active code that `text` names, for the share link and its QR images; with `fresh`,
    read from the database, not the cache.

    Raises InvalidCode (forged or mistyped; no database lookup is made), RevokedCode (replaced by a
    newer code) or NotFound (a well-signed code this database never issued). When the database
    cannot answer (database.py `attempt`, a quick read), what this process last knew of the code
    is used however old it is (attribution checks revocation again); Unavailable when it knew
    nothing (or with `fresh`): the code's signature did verify (`signer().verify(text)`).
    """
    code = signer().verify(text)
    cache: CodeCache = current_app.extensions["code_cache"]
    found = _MISSING if fresh else cache.get(code)
    if found is _MISSING:
        try:
            with database.attempt(quick=True):
                row = db.session.execute(
                    select(
                        ReferralCode.id, ReferralCode.customer_id, ReferralCode.revoked_at
                    ).where(ReferralCode.code == code)
                ).first()
        except Unavailable:
            found = _MISSING if fresh else cache.last_known(code)
            if found is _MISSING:
                raise
        else:
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

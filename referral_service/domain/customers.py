"""Enrolling customers, their referral codes, their stats, and the import of existing customers."""

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from babel import Locale, UnknownLocaleError
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import bindparam, select, update

from referral_service.domain import idempotency
from referral_service.domain.codes import forget_code, signer
from referral_service.domain.stats import customer_stats
from referral_service.domain.unit import unit_of_work
from referral_service.errors import NotFound, ValidationFailed
from referral_service.extensions import db
from referral_service.models import Customer, ReferralCode, utcnow

MAX_EXTERNAL_ID = 128
MAX_NAME = 200
GMAIL_DOMAINS = ("gmail.com", "googlemail.com")  # one mailbox; the first is its key
ISSUE_ATTEMPTS = 12


@dataclass
class CustomerCard:
    """A customer as the outside world sees it: its fields, its active code, and maybe its stats.

    An erased customer (`erased_at`) has no email, name or locale."""

    external_id: str
    email: str | None
    name: str | None
    locale: str | None
    created_at: datetime
    updated_at: datetime
    code: str
    created: bool = False
    stats: dict | None = None
    erased_at: datetime | None = None


@dataclass
class ImportReport:
    """What an import did: rows created, updated and rejected (with their line numbers)."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)


# --- rules shared by the API schemas and the import ----------------------------------------------


def check_external_id(value: str) -> str:
    """The external id if it is 1-128 printable characters; raises ValidationFailed.

    No `/`: the id is a segment of the customer's address (`/api/v1/customers/<external_id>`).
    """
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_EXTERNAL_ID:
        raise ValidationFailed(fields={"external_id": ["Must be 1 to 128 characters."]})
    if not value.isprintable() or value != value.strip() or "/" in value:
        raise ValidationFailed(
            fields={"external_id": ["Must not hold control characters, '/' or surrounding spaces."]}
        )
    return value


def check_email(value: str) -> str:
    """The address with its domain normalized, if it is a valid address; raises ValidationFailed."""
    try:
        return validate_email(value, check_deliverability=False).normalized
    except (EmailNotValidError, TypeError) as error:
        raise ValidationFailed(fields={"email": [f"Not a valid email address: {error}"]}) from None


def email_key(email: str) -> str:
    """The mailbox an address reaches, for spotting one person behind two spellings.

    `email` is an address as `check_email` returns it (its domain lower case, in Unicode rather
    than `xn--` form). The key is the address in Unicode NFKC (full-width and other compatibility
    forms of letters are the letters themselves) and lower case, without a
    sub-address (`+tag`, kept when nothing comes before the `+`), for every provider; Gmail also
    ignores dots in the local part and answers to googlemail.com. So `Dora+2@Example.org` and
    `dora@example.org` are one person; `D.o.r.a@googlemail.com` and `dora@gmail.com` too.
    """
    local, _, domain = unicodedata.normalize("NFKC", email.strip()).lower().rpartition("@")
    base, plus, _tag = local.partition("+")
    if plus and base:
        local = base
    if domain in GMAIL_DOMAINS:
        local, domain = local.replace(".", ""), GMAIL_DOMAINS[0]
    return f"{local}@{domain}"


def _class_char(code_point: int) -> str:
    # `\uXXXX` in the BMP, the character itself above it: read alike by Python's `re` and by
    # ECMA-262 with the `u` flag (as JSON Schema validators compile patterns)
    return f"\\u{code_point:04X}" if code_point <= 0xFFFF else chr(code_point)


def _class(ranges) -> str:
    return "".join(
        _class_char(low) + ("" if low == high else "-" + _class_char(high)) for low, high in ranges
    )


# The rule for people's names, in one place (every door that takes a name calls `check_name`;
# the API's OpenAPI `pattern` is NAME_PATTERN itself). A name may hold any letter, mark, digit,
# punctuation, symbol or space of any script, and the invisible characters that scripts and emoji
# need: the zero-width non-joiner and joiner (Persian, Indic scripts, emoji ZWJ sequences),
# variation selectors (marks already), the bidirectional *marks* LRM, RLM and ALM (they cannot
# reorder letters), the Mongolian vowel separator, and the tag characters of an emoji tag sequence
# (the flags of England, Scotland, Wales). It may not hold control characters (tab and line breaks
# included), line or paragraph separators, surrogates, private-use characters, noncharacters,
# bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069), nor any other
# invisible format character (soft hyphen, zero-width space, word joiner, byte order mark, ...),
# nor the unassigned code points Unicode keeps for such characters, nor the compatibility Hangul
# fillers (blank letters).
# Lone surrogates (which JSON can smuggle in as `\ud800`) are no Unicode text at all: refused
# before the pattern, which speaks of Unicode characters (regex engines cannot name surrogates).
NAME_REFUSED = (
    (0x0000, 0x001F),  # C0 controls
    (0x007F, 0x009F),  # DEL, C1 controls
    (0x00AD, 0x00AD),  # soft hyphen
    (0x0600, 0x0605),  # Arabic number signs
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x200B, 0x200B),  # zero-width space
    (0x2028, 0x2029),  # line and paragraph separators
    (0x202A, 0x202E),  # bidirectional embeddings and overrides
    (0x2060, 0x206F),  # word joiner, invisible operators, bidirectional isolates, deprecated
    (0xE000, 0xF8FF),  # private use
    (0xFDD0, 0xFDEF),  # noncharacters
    (0xFEFF, 0xFEFF),  # byte order mark
    (0x3164, 0x3164),  # Hangul filler (compatibility): only ever used to make a name look blank
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler, likewise
    (0xFFF0, 0xFFFB),  # interlinear annotation, and unassigned code points kept for formats
    (0xFFFE, 0xFFFF),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),  # Egyptian hieroglyph format controls
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical symbol format controls
    (0xE0000, 0xE00FF),  # tags (allowed in an emoji tag sequence only), language tag, reserved
    (0xE01F0, 0xE0FFF),  # unassigned, kept for format characters
    (0xF0000, 0x10FFFF),  # supplementary private use areas
    *((plane + 0xFFFE, plane + 0xFFFF) for plane in range(0x10000, 0xF0000, 0x10000)),
)
# a subdivision flag (UTS #51): the black flag, the subdivision's id in tag letters (its region's
# two letters and one to four letters or digits: `gbsct`), and the cancel tag
_TAG_LETTERS = _class(((0xE0061, 0xE007A),))
_EMOJI_TAG_SEQUENCE = (
    f"\U0001f3f4[{_TAG_LETTERS}]{{2}}[{_class(((0xE0030, 0xE0039),))}{_TAG_LETTERS}]{{1,4}}"
    "\U000e007f"
)
_NAME_BODY = f"(?:{_EMOJI_TAG_SEQUENCE}|[^{_class(NAME_REFUSED)}])*"  # the sequence first
NAME_PATTERN = f"^{_NAME_BODY}$"
NAME_RULE = (
    "Any letters, marks, digits, punctuation, symbols, spaces and emoji of any script, with the "
    "zero-width (non-)joiners, variation selectors and bidirectional marks (LRM, RLM, ALM) that "
    "scripts and emoji need; no control characters or line breaks, no bidirectional embeddings, "
    "overrides or isolates (U+202A-U+202E, U+2066-U+2069), no other invisible format characters "
    "(soft hyphen, zero-width space, word joiner, byte order mark, tags outside an emoji flag, "
    "blank Hangul fillers), no private-use characters or noncharacters."
)
_NAME = re.compile(_NAME_BODY)
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_name(value: str | None) -> str | None:
    """A person's name (at most 200 characters, NAME_RULE), without spaces at either end.

    Returns the name, or None for None or a blank one; raises ValidationFailed, naming the first
    character refused (by its code point: it may be invisible).
    """
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_NAME:
        raise ValidationFailed(fields={"name": [f"At most {MAX_NAME} characters."]})
    if _SURROGATE.search(value):
        raise ValidationFailed(fields={"name": ["Must be valid Unicode text (no lone surrogate)."]})
    position = _NAME.match(value).end()  # how far the name follows the rule
    if position < len(value):
        char = value[position]
        called = unicodedata.name(char, "")
        char = f"U+{ord(char):04X}" + (f" ({called})" if called else "")
        raise ValidationFailed(
            fields={
                "name": [f"{char} at position {position + 1} is not allowed in a name. {NAME_RULE}"]
            }
        )
    return value.strip() or None


def check_locale(value: str | None) -> str | None:
    """A locale Babel knows (`pl`, `pl-PL`, `en_GB`), as `pl_PL`; raises ValidationFailed."""
    if value is None or value == "":
        return None
    try:
        return str(Locale.parse(value.replace("-", "_")))
    except (UnknownLocaleError, ValueError, TypeError):
        raise ValidationFailed(
            fields={"locale": [f"Unknown locale {value!r}: use a code such as 'pl' or 'en-GB'."]}
        ) from None


# --- codes ---------------------------------------------------------------------------------------


_CODE_TAKEN = select(ReferralCode.__table__.c.id).where(
    ReferralCode.__table__.c.code == bindparam("code")
)


def unused_code() -> str:
    """A newly issued code that no customer holds yet.

    A code already taken is drawn again (with 33 million payloads, rarely). Should another
    transaction take the same code between this check and the insert, the unique key fails that
    insert's transaction as a whole, and the caller's retry draws anew.
    """
    connection = db.session.connection()
    for _ in range(ISSUE_ATTEMPTS):
        code = signer().issue()
        if connection.execute(_CODE_TAKEN, {"code": code}).first() is None:
            return code
    raise RuntimeError("could not issue a unique referral code")


def add_code(customer_id: int) -> str:
    """Issue a fresh code for a customer inside the current transaction."""
    code = unused_code()
    db.session.add(ReferralCode(customer_id=customer_id, code=code, created_at=utcnow()))
    return code


def active_code(customer_id: int) -> str | None:
    """The customer's code that is not revoked, if any."""
    return db.session.scalar(
        select(ReferralCode.code).where(
            ReferralCode.customer_id == customer_id, ReferralCode.revoked_at.is_(None)
        )
    )


def card_of(customer: Customer, code: str, created: bool = False, stats=None) -> CustomerCard:
    """The customer as the doors show it, with their active `code`."""
    return CustomerCard(
        external_id=customer.external_id,
        email=customer.email,
        name=customer.name,
        locale=customer.locale,
        created_at=customer.created_at,
        updated_at=customer.updated_at,
        code=code,
        created=created,
        stats=stats,
        erased_at=customer.erased_at,
    )


def find(external_id: str) -> Customer:
    """The customer with this external id; raises NotFound."""
    customer = db.session.scalar(select(Customer).where(Customer.external_id == external_id))
    if customer is None:
        raise NotFound(f"No customer with external_id {external_id!r}.")
    return customer


# --- the business steps --------------------------------------------------------------------------


def enrol(external_id: str, email: str, name: str | None = None, locale: str | None = None):
    """Create or replace a customer; a new one gets a referral code (event `customer.enrolled`,
    its data the card). Returns a CustomerCard.

    Raises ValidationFailed for a bad field. Concurrent calls for the same id create one customer:
    the loser of the race on the unique `external_id` retries as an update.
    """
    external_id = check_external_id(external_id)
    values = {"email": check_email(email), "name": check_name(name), "locale": check_locale(locale)}
    values["email_key"] = email_key(values["email"])
    return idempotency.retried_once(_enrol, external_id, values)  # the loser updates


def _enrol(external_id: str, values: dict) -> CustomerCard:
    with unit_of_work() as unit:
        now = unit.now
        customer = db.session.scalar(
            select(Customer).where(Customer.external_id == external_id).with_for_update()
        )
        created = customer is None
        if created:
            customer = Customer(external_id=external_id, created_at=now, updated_at=now, **values)
            db.session.add(customer)
            db.session.flush()
            code = add_code(customer.id)
        else:
            if any(getattr(customer, key) != value for key, value in values.items()):
                for key, value in values.items():
                    setattr(customer, key, value)
                customer.updated_at = now
                customer.erased_at = None  # enrolled again, with the details given now
            code = active_code(customer.id) or add_code(customer.id)
        card = card_of(customer, code, created=created)
        if created:
            unit.emit("customer.enrolled", card)
    return card


def get(external_id: str) -> CustomerCard:
    """The customer with its active code and stats; raises NotFound."""
    customer = find(check_external_id(external_id))
    return card_of(customer, active_code(customer.id), stats=customer_stats(customer.id))


def names_of(external_ids) -> dict[str, str | None]:
    """The names of these customers, by external id (the unknown ones are left out)."""
    wanted = set(external_ids)
    if not wanted:
        return {}
    rows = db.session.execute(
        select(Customer.external_id, Customer.name).where(Customer.external_id.in_(wanted))
    )
    return {external_id: name for external_id, name in rows}


def rotate_code(external_id: str, actor: str | None = None) -> CustomerCard:
    """Revoke the customer's active code and issue a new one; raises NotFound.

    With an `actor` (an admin of the console, `admin:<email>`), the rotation is audited.
    """
    check_external_id(external_id)
    with unit_of_work() as unit:
        customer = db.session.scalar(
            select(Customer).where(Customer.external_id == external_id).with_for_update()
        )
        if customer is None:
            raise NotFound(f"No customer with external_id {external_id!r}.")
        old_code = active_code(customer.id)
        db.session.execute(
            update(ReferralCode)
            .where(ReferralCode.customer_id == customer.id, ReferralCode.revoked_at.is_(None))
            .values(revoked_at=unit.now)
        )
        code = add_code(customer.id)
        if actor is not None:
            unit.audit(
                actor,
                "customer.rotate_code",
                "customer",
                customer.id,
                {"external_id": external_id, "code": old_code},
                {"external_id": external_id, "code": code},
            )
        card = card_of(customer, code)
    forget_code(customer.id)
    return card


# --- import --------------------------------------------------------------------------------------


def _clean_row(row: dict) -> dict:
    """The row's values checked by the same rules as the API; raises ValidationFailed.

    A row the reader could not parse comes as `{"_error": "why"}`.
    """
    if row.get("_error"):
        raise ValidationFailed(fields={"row": [row["_error"]]})
    email = check_email((row.get("email") or "").strip())
    return {
        "external_id": check_external_id((row.get("external_id") or "").strip()),
        "email": email,
        "email_key": email_key(email),
        "name": check_name(row.get("name")),
        "locale": check_locale((row.get("locale") or "").strip() or None),
    }


def _chunks(rows: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def import_customers(rows: Iterable[tuple[int, dict]], batch_size: int = 1000, progress=None):
    """Enrol existing customers from `(line_number, row)` pairs; returns an ImportReport.

    Bad rows are reported with their line numbers and skipped; good rows are kept. A customer
    already enrolled is updated and keeps their code, so running the same file twice is safe.
    Each batch is one transaction. `progress(n)` is called with the rows done after each batch.
    """
    report = ImportReport()
    first_line: dict[str, int] = {}  # external id -> the line that named it first
    for chunk in _chunks(rows, batch_size):
        good: list[dict] = []
        for line, row in chunk:
            try:
                values = _clean_row(row)
            except ValidationFailed as error:
                problems = "; ".join(f"{k}: {' '.join(v)}" for k, v in (error.fields or {}).items())
                report.errors.append((line, problems))
                continue
            external_id = values["external_id"]
            if external_id in first_line:
                report.errors.append(
                    (line, f"external_id {external_id!r} repeats line {first_line[external_id]}")
                )
                continue
            first_line[external_id] = line
            good.append(values)
        _import_batch(good, report)
        if progress:
            progress(len(chunk))
    return report


def _import_batch(batch: list[dict], report: ImportReport) -> None:
    """One batch in one unit of work; each customer it creates gets its `customer.enrolled`."""
    with unit_of_work() as unit:
        now = unit.now
        existing = {
            customer.external_id: customer
            for customer in db.session.scalars(
                select(Customer).where(Customer.external_id.in_([v["external_id"] for v in batch]))
            )
        }
        new_rows = []
        for values in batch:
            customer = existing.get(values["external_id"])
            if customer is None:
                new_rows.append({**values, "created_at": now, "updated_at": now})
            elif any(getattr(customer, k) != v for k, v in values.items() if k != "external_id"):
                for key, value in values.items():
                    setattr(customer, key, value)
                customer.updated_at = now
                customer.erased_at = None  # enrolled again, with the details given now
                report.updated += 1
            else:
                report.unchanged += 1
        if not new_rows:
            return
        db.session.execute(db.insert(Customer).execution_options(render_nulls=True), new_rows)
        ids = dict(
            db.session.execute(
                select(Customer.external_id, Customer.id).where(
                    Customer.external_id.in_([row["external_id"] for row in new_rows])
                )
            ).all()
        )
        codes = _add_codes(list(ids.values()), now)
        for row in new_rows:
            card = CustomerCard(
                external_id=row["external_id"],
                email=row["email"],
                name=row["name"],
                locale=row["locale"],
                created_at=now,
                updated_at=now,
                code=codes[ids[row["external_id"]]],
                created=True,
            )
            unit.emit("customer.enrolled", card)
        report.created += len(new_rows)


def _add_codes(customer_ids: list[int], now: datetime) -> dict[int, str]:
    """Issue one code per customer in bulk, returned by customer id; collisions with codes
    already stored are re-drawn."""
    codes: dict[int, str] = {customer_id: signer().issue() for customer_id in customer_ids}
    for _ in range(ISSUE_ATTEMPTS):
        taken = set(
            db.session.scalars(
                select(ReferralCode.code).where(ReferralCode.code.in_(codes.values()))
            )
        )
        seen: set[str] = set()
        clashes = []
        for customer_id, code in codes.items():
            if code in taken or code in seen:
                clashes.append(customer_id)
            seen.add(code)
        if not clashes:
            break
        for customer_id in clashes:
            codes[customer_id] = signer().issue()
    db.session.execute(
        db.insert(ReferralCode),
        [{"customer_id": cid, "code": code, "created_at": now} for cid, code in codes.items()],
    )
    return codes

"""Bulk rows for the benchmark suite, written straight into the service's tables (SQLite or
PostgreSQL), bypassing the service: referrers with valid codes, a pool of attributed friends for
the purchase load, and a history of referrals (the 1,000,000-referral checkout).

The rows are what the service itself would have written for the same story (a customer, its
code, its sign-up, its referral, a purchase and the referrer's reward), through SQLAlchemy Core
on the service's own table definitions (`referral_service.models`), so that the column types
(UTC times, JSON, exact decimals) are bound as the service binds them, on either database.
Inserts go in chunks of `CHUNK` rows, one transaction per chunk; ids are given explicitly (the
next free ones) and PostgreSQL's id sequences are moved past them at the end.

Names: referrers `ref-0000000`, ... (codes signed under the given secret key, as the service
issues them); pool friends `pool-00000000`, ... (attributed an hour ago, no purchase yet: each
converts on its first purchase); history friends `fr-00000000`, ... with lower-case placeholder
codes no code the service issues can equal.

Used by bench/suite.py; the functions take an SQLAlchemy Engine on a database whose schema is at
the latest migration (`referral-service db upgrade`).
"""

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice

from sqlalchemy import Engine, func, insert, select, text

from referral_service.domain.codes import CodeSigner
from referral_service.models import Base

CHUNK = 5000  # rows per INSERT transaction
CHANNELS = ("code", "link", "qr", "email", "whatsapp", "sms", "facebook", "copy")
REWARD_STATUSES = ("pending", "awaiting_approval", "approved", "rejected", "reversed")
SEEDED_TABLES = ("customers", "referral_codes", "referrals", "signups", "purchases", "rewards")


@dataclass(frozen=True)
class Referrer:
    """An enrolled customer with a valid referral code."""

    customer_id: int
    code_id: int
    code: str


def _table(name: str):
    return Base.metadata.tables[name]


def next_ids(engine: Engine, *tables: str) -> list[int]:
    """The next free id of each table (max(id) + 1, 1 for an empty table)."""
    with engine.connect() as connection:
        return [
            connection.execute(select(func.coalesce(func.max(_table(t).c.id), 0))).scalar_one() + 1
            for t in tables
        ]


def _chunks(rows: Iterable[dict], size: int = CHUNK) -> Iterator[list[dict]]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk


def insert_rows(engine: Engine, table: str, rows: Iterable[dict]) -> int:
    """Insert `rows` (dicts of column values) in chunks, a transaction each; the count written."""
    written = 0
    statement = insert(_table(table))
    for chunk in _chunks(rows):
        with engine.begin() as connection:
            connection.execute(statement, chunk)
        written += len(chunk)
    return written


def fix_sequences(engine: Engine, tables: Iterable[str] = SEEDED_TABLES) -> None:
    """PostgreSQL only: move each table's id sequence past the ids written explicitly."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as connection:
        for name in tables:
            connection.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                    f"(SELECT coalesce(max(id), 0) + 1 FROM {name}), false)"
                )
            )


def seed_referrers(engine: Engine, count: int, secret_key: str, start: int = 0) -> list[Referrer]:
    """`count` enrolled customers (`ref-<start>`, ...) with codes signed under `secret_key`."""
    signer = CodeSigner(secret_key)
    codes: dict[str, None] = {}
    while len(codes) < count:
        codes[signer.issue()] = None
    customer0, code0 = next_ids(engine, "customers", "referral_codes")
    created = datetime.now(UTC) - timedelta(days=400)
    referrers = [Referrer(customer0 + i, code0 + i, code) for i, code in enumerate(codes)]
    insert_rows(
        engine,
        "customers",
        (
            {
                "id": r.customer_id,
                "external_id": f"ref-{start + i:07d}",
                "email": f"ref-{start + i:07d}@example.com",
                "email_key": f"ref-{start + i:07d}@example.com",
                "name": f"Referrer {start + i}",
                "locale": "pl",
                "created_at": created,
                "updated_at": created,
                "origin": "enrolled",
            }
            for i, r in enumerate(referrers)
        ),
    )
    insert_rows(
        engine,
        "referral_codes",
        (
            {"id": r.code_id, "customer_id": r.customer_id, "code": r.code, "created_at": created}
            for r in referrers
        ),
    )
    fix_sequences(engine)
    return referrers


def seed_pool(engine: Engine, referrers: list[Referrer], start: int, count: int) -> None:
    """Pool friends `pool-<start>` ... `pool-<start + count - 1>`, attributed an hour ago to the
    referrers in turn, with no purchase: each converts (and earns a reward) on its first."""
    if not referrers:
        raise ValueError("seed referrers before the pool")
    customer0, code0, referral0, signup0 = next_ids(
        engine, "customers", "referral_codes", "referrals", "signups"
    )
    at = datetime.now(UTC) - timedelta(hours=1)

    def referrer(i: int) -> Referrer:
        return referrers[(start + i) % len(referrers)]

    def customers():
        for i in range(count):
            external = f"pool-{start + i:08d}"
            email = f"{external}@example.com"
            yield {
                "id": customer0 + i,
                "external_id": external,
                "email": email,
                "email_key": email,
                "created_at": at,
                "updated_at": at,
                "origin": "signup",
            }

    insert_rows(engine, "customers", customers())
    insert_rows(
        engine,
        "referral_codes",
        (
            {
                "id": code0 + i,
                "customer_id": customer0 + i,
                "code": f"y{start + i:015x}",
                "created_at": at,
            }
            for i in range(count)
        ),
    )
    insert_rows(
        engine,
        "referrals",
        (
            {
                "id": referral0 + i,
                "referrer_id": referrer(i).customer_id,
                "friend_id": customer0 + i,
                "code_id": referrer(i).code_id,
                "channel": "code",
                "friend_email_key": f"pool-{start + i:08d}@example.com",
                "status": "attributed",
                "attributed_at": at,
                "risk_score": 0,
                "risk_reasons": [],
            }
            for i in range(count)
        ),
    )
    insert_rows(
        engine,
        "signups",
        (
            {
                "id": signup0 + i,
                "customer_id": customer0 + i,
                "attributed": True,
                "referral_id": referral0 + i,
                "code": referrer(i).code,
                "occurred_at": at,
            }
            for i in range(count)
        ),
    )
    fix_sequences(engine)


def seed_history(
    engine: Engine, referrers: list[Referrer], count: int, start: int = 0, seed: int = 1
) -> None:
    """`count` friends (`fr-<start>`, ...) referred over the past year: about 55% converted (one
    purchase, a fifth of them a second one, and one reward for the referrer), 40% still
    attributed, 5% rejected; their customers, codes, sign-ups, referrals, purchases (with their
    first-order summaries), rewards."""
    if not referrers:
        raise ValueError("seed referrers before the history")
    rng = random.Random(seed)
    now = datetime.now(UTC)
    customer0, code0, referral0, signup0, purchase0, reward0 = next_ids(engine, *SEEDED_TABLES)
    # per friend: its referrer, its status (0 attributed, 1 converted, 2 converted twice over,
    # 3 rejected) and its age in minutes
    who = [rng.randrange(len(referrers)) for _ in range(count)]
    status = [
        0 if x < 0.40 else 1 if x < 0.84 else 2 if x < 0.95 else 3
        for x in (rng.random() for _ in range(count))
    ]
    age = [rng.randrange(1440, 365 * 1440) for _ in range(count)]
    minute = timedelta(minutes=1)

    def attributed(i: int) -> datetime:
        return now - minute * age[i]

    def converted(i: int) -> datetime:
        return now - minute * (age[i] - age[i] // 2)

    def external(i: int) -> str:
        return f"fr-{start + i:08d}"

    insert_rows(
        engine,
        "customers",
        (
            {
                "id": customer0 + i,
                "external_id": external(i),
                "email": f"{external(i)}@example.com",
                "email_key": f"{external(i)}@example.com",
                "created_at": attributed(i),
                "updated_at": attributed(i),
                "origin": "signup",
            }
            for i in range(count)
        ),
    )
    insert_rows(
        engine,
        "referral_codes",
        (
            {
                "id": code0 + i,
                "customer_id": customer0 + i,
                "code": f"x{start + i:015x}",
                "created_at": attributed(i),
            }
            for i in range(count)
        ),
    )

    def referrals():
        for i in range(count):
            r, state = referrers[who[i]], status[i]
            done = state in (1, 2)
            yield {
                "id": referral0 + i,
                "referrer_id": r.customer_id,
                "friend_id": customer0 + i,
                "code_id": r.code_id,
                "channel": CHANNELS[i % len(CHANNELS)],
                "friend_email_key": f"{external(i)}@example.com",
                "status": "converted" if done else "rejected" if state == 3 else "attributed",
                "attributed_at": attributed(i),
                "converted_at": converted(i) if done else None,
                "order_id": f"pre-{start + i:08d}" if done else None,
                "risk_score": 60 if state == 3 else 0,
                "risk_reasons": ["same_device"] if state == 3 else [],
            }

    insert_rows(engine, "referrals", referrals())
    insert_rows(
        engine,
        "signups",
        (
            {
                "id": signup0 + i,
                "customer_id": customer0 + i,
                "attributed": True,
                "referral_id": referral0 + i,
                "code": referrers[who[i]].code,
                "occurred_at": attributed(i),
            }
            for i in range(count)
        ),
    )
    first_purchase: dict[int, int] = {}  # friend index -> id of its first purchase

    def purchases():
        number = purchase0
        for i in range(count):
            if status[i] not in (1, 2):
                continue
            order, at = f"pre-{start + i:08d}", converted(i)
            amount = 1000 + (i * 7919) % 20000
            first_purchase[i] = number
            yield {
                "id": number,
                "order_id": order,
                "customer_id": customer0 + i,
                "amount_minor": amount,
                "refunded_minor": 0,
                "currency": "EUR",
                "occurred_at": at,
                "created_at": at,
                "response": {
                    "order_id": order,
                    "first_purchase": True,
                    "referral": {
                        "id": referral0 + i,
                        "referrer_external_id": f"ref-{who[i]:07d}",
                        "status": "converted",
                    },
                    "rewards": [],
                },
            }
            number += 1
            if status[i] == 2:
                again = f"{order}-2"
                yield {
                    "id": number,
                    "order_id": again,
                    "customer_id": customer0 + i,
                    "amount_minor": amount,
                    "refunded_minor": 0,
                    "currency": "EUR",
                    "occurred_at": at,
                    "created_at": at,
                    "response": {
                        "order_id": again,
                        "first_purchase": False,
                        "referral": None,
                        "rewards": [],
                    },
                }
                number += 1

    insert_rows(engine, "purchases", purchases())
    # each converted friend's first-order summary, as the service keeps it (domain/cohorts.py):
    # one order, or two at the same time, of the same amount, in EUR, none refunded
    insert_rows(
        engine,
        "customer_first_orders",
        (
            {
                "customer_id": customer0 + i,
                "currency": "EUR",
                "first_order_at": converted(i),
                "orders_90d": status[i],
                "revenue_90d_minor": status[i] * (1000 + (i * 7919) % 20000),
            }
            for i in range(count)
            if status[i] in (1, 2)
        ),
    )
    insert_rows(
        engine,
        "rewards",
        (
            {
                "id": reward0 + n,
                "referral_id": referral0 + i,
                "purchase_id": purchase_id,
                "customer_id": referrers[who[i]].customer_id,
                "beneficiary": "referrer",
                "rule_type": "fixed",
                "rule_value": "10.00",
                "amount_minor": 1000,
                "currency": "EUR",
                "status": REWARD_STATUSES[i % len(REWARD_STATUSES)],
                "available_at": converted(i) + timedelta(days=14),
                "created_at": converted(i),
                "updated_at": converted(i),
            }
            for n, (i, purchase_id) in enumerate(first_purchase.items())
        ),
    )
    fix_sequences(engine)


def counts(engine: Engine, tables: Iterable[str] = SEEDED_TABLES) -> dict[str, int]:
    """Rows per table."""
    with engine.connect() as connection:
        return {
            name: connection.execute(select(func.count()).select_from(_table(name))).scalar_one()
            for name in tables
        }

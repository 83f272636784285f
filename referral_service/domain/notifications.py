"""Emails to referrers: planned from the outbox's events, sent by the worker, never twice.

Three kinds, each off until the program's switch (`notifications.<kind>`) is on:
`reward_earned` (event `reward.created`: a friend's purchase earned the referrer a reward, or
their Nth converted friend a milestone reward: `Email.milestone_friends` then says N),
`reward_approved` (`reward.approved`) and `reward_paid` (`payout.paid`: one email per referrer
the batch paid, with what it paid them). Only the referrer's rewards are told: a friend's own
reward is the shop's offer at its checkout, and the friend never asked to hear from the program.

`plan_emails` runs inside the relay's transaction and only adds rows: one per (event,
customer), unique, so an event relayed twice still has one email. `send` makes one attempt:
it claims the row with a lease in one unit of work, talks to the mail server outside any
transaction, and records the outcome in a second unit only while its claim holds; a failure is
retried after 1 min, 5 min, 30 min, 2 h, 6 h and 24 h, then the row is `failed`. A row that is
sent is never claimed again. A process that dies after the server took the message but before
the outcome is recorded sends it again once its lease is over (with the same Message-ID).

What an email says is written by a door (`register_writer`, public/emails.py), in the
customer's language; the domain hands it plain values (`Email`).
"""

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage

from flask import current_app
from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from referral_service import mail
from referral_service.domain import program
from referral_service.domain.money import from_minor
from referral_service.domain.unit import unit_of_work
from referral_service.errors import InvalidLink
from referral_service.extensions import db
from referral_service.models import (
    Clawback,
    ClawbackSettlement,
    Customer,
    OutboxEvent,
    ReferralCode,
    Reward,
    utcnow,
)
from referral_service.models.base import end_read
from referral_service.models.notification import EmailOptOut, Notification

logger = logging.getLogger(__name__)

# the event that tells each kind of email
KIND_OF_EVENT = {
    "reward.created": "reward_earned",
    "reward.approved": "reward_approved",
    "payout.paid": "reward_paid",
}
# the wait after each failed attempt; after the last one the email is given up (`failed`)
RETRY_DELAYS = tuple(
    timedelta(seconds=s) for s in (60, 5 * 60, 30 * 60, 2 * 3600, 6 * 3600, 24 * 3600)
)
# how long a claim holds: far beyond one attempt (each SMTP command times out in 10 s)
LEASE = timedelta(minutes=5)
MAX_ERROR = 500
UNSUBSCRIBE_SALT = "referral-service.unsubscribe"


@dataclass(frozen=True)
class Email:
    """What an email says, as plain values, for the door that writes it."""

    notification_id: int
    event_id: str
    kind: str
    amounts: list[dict]  # [{"amount": "12.50", "currency": "EUR"}]
    to: str
    name: str | None
    locale: str | None  # the customer's own, else None
    default_locale: str  # the program's
    code: str | None  # the customer's active referral code
    external_id: str
    unsubscribe_token: str
    at: datetime  # when this attempt began
    attempt: int  # 1 for the first
    # N of a milestone reward (kind `milestone`: the referrer's Nth converted friend earned it)
    # for an "earned" or "approved" email; None for a referral reward and for a payout
    milestone_friends: int | None = None


# writes the message of an Email (subject, text and HTML bodies, headers but From/To/Date)
Writer = Callable[[Email, mail.MailServer], EmailMessage]
_writer: list[Writer] = []


def register_writer(writer: Writer) -> None:
    """The door that writes emails (public/emails.py registers itself)."""
    _writer[:] = [writer]


# --- planning ------------------------------------------------------------------------------------


def mail_server() -> mail.MailServer | None:
    """The configured mail server, or None when `MAIL_URL` is not set (said in the log once per
    process). Raises SettingsError for a bad `MAIL_URL` or `MAIL_FROM` (refused at start)."""
    server = mail.server_of(current_app.config)
    if server is None and not current_app.extensions.get("mail_off_said"):
        current_app.extensions["mail_off_said"] = True
        logger.info("MAIL_URL is not set: no emails to referrers are planned or sent")
    return server


def plan_emails(event: OutboxEvent, now: datetime) -> list[int]:
    """Add the emails an event asks for (inside the caller's transaction; no commit) and return
    their ids; an email already planned for the event and customer is not added again.

    Nothing is planned for other event types, with the kind's switch off, without `MAIL_URL`,
    for a customer without an email address or one who unsubscribed.
    """
    kind = KIND_OF_EVENT.get(event.type)
    if kind is None or not program.settings()["notifications"][kind]:
        return []
    try:
        if mail_server() is None:
            return []
    except mail.SettingsError as error:  # the start refuses it; an app made by hand may not
        logger.error("no emails are planned: %s", error)
        return []
    subject_id = (event.data or {}).get("id")
    if isinstance(subject_id, bool) or not isinstance(subject_id, int):
        logger.warning("event %s names no %s id; no email planned", event.event_id, event.type)
        return []
    recipients = _paid_by(subject_id) if kind == "reward_paid" else _rewarded(subject_id)
    if not recipients:
        return []
    reachable = set(
        db.session.scalars(
            select(Customer.id).where(
                Customer.id.in_(recipients),
                Customer.email.is_not(None),
                Customer.email != "",
                ~select(EmailOptOut.customer_id)
                .where(EmailOptOut.customer_id == Customer.id)
                .exists(),
            )
        )
    )
    rows = [
        {
            "event_id": event.event_id,
            "customer_id": customer_id,
            "kind": kind,
            "amounts": amounts,
            "status": "pending",
            "attempts": 0,
            "created_at": now,
            "next_attempt_at": now,
        }
        for customer_id, amounts in sorted(recipients.items())
        if customer_id in reachable
    ]
    if not rows:
        return []
    statement = _PLAN[db.session.get_bind().dialect.name == "postgresql"]
    return sorted(db.session.scalars(statement, rows))


# the insert of planned emails, built once per dialect (the relay plans for every event)
_PLAN = {
    is_postgresql: (postgresql if is_postgresql else sqlite)
    .insert(Notification.__table__)
    .on_conflict_do_nothing(index_elements=["event_id", "customer_id"])
    .returning(Notification.__table__.c.id)
    for is_postgresql in (False, True)
}


def _insert(model):
    """An INSERT that can say ON CONFLICT DO NOTHING, in the database's own dialect."""
    dialect = postgresql if db.session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(model)


def _rewarded(reward_id: int) -> dict[int, list[dict]]:
    """The referrer a reward is owed to, with its amount (a friend's reward tells nobody)."""
    reward = db.session.get(Reward, reward_id)
    if reward is None or reward.beneficiary != "referrer":
        return {}
    amount = from_minor(reward.amount_minor, reward.currency)
    return {reward.customer_id: [{"amount": amount, "currency": reward.currency}]}


def _paid_by(payout_id: int) -> dict[int, list[dict]]:
    """Each referrer a paid batch holds a reward of, with what it paid them per currency (their
    rewards in it, net of the clawbacks it settled); a referrer it paid nothing is left out."""
    paid: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    referrers = set()
    for customer_id, currency, beneficiary, amount in db.session.execute(
        select(Reward.customer_id, Reward.currency, Reward.beneficiary, Reward.amount_minor).where(
            Reward.payout_id == payout_id, Reward.status == "paid"
        )
    ):
        paid[customer_id][currency] += amount
        if beneficiary == "referrer":
            referrers.add(customer_id)
    for customer_id, currency, amount in db.session.execute(
        select(Clawback.customer_id, Clawback.currency, func.sum(ClawbackSettlement.amount_minor))
        .join(Clawback, Clawback.id == ClawbackSettlement.clawback_id)
        .where(ClawbackSettlement.payout_id == payout_id)
        .group_by(Clawback.customer_id, Clawback.currency)
    ):
        if customer_id in paid:
            paid[customer_id][currency] -= amount
    return {
        customer_id: amounts
        for customer_id in referrers
        if (
            amounts := [
                {"amount": from_minor(minor, currency), "currency": currency}
                for currency, minor in sorted(paid[customer_id].items())
                if minor > 0
            ]
        )
    }


# --- sending -------------------------------------------------------------------------------------


def due_emails(now: datetime | None = None, limit: int = 100) -> list[int]:
    """Ids of pending emails whose attempt is due and that no worker holds, oldest due first.

    Ends its read transaction: call it outside a unit of work (the worker's sweep does)."""
    now = now or utcnow()
    ids = list(
        db.session.scalars(
            select(Notification.id)
            .where(
                Notification.status == "pending",
                Notification.next_attempt_at <= now,
                or_(Notification.lease_until.is_(None), Notification.lease_until <= now),
            )
            .order_by(Notification.next_attempt_at, Notification.id)
            .limit(limit)
        )
    )
    end_read(db.session)  # each send begins its own transaction
    return ids


def _told_reward(row: Notification) -> tuple[Reward | None, dict]:
    """The reward an "earned" or "approved" email tells of (None if it is gone) and its event's
    data; (None, {}) for a payout's email."""
    if row.kind == "reward_paid":
        return None, {}
    data = db.session.scalar(select(OutboxEvent.data).where(OutboxEvent.event_id == row.event_id))
    data = data if isinstance(data, dict) else {}
    reward_id = data.get("id")
    if isinstance(reward_id, bool) or not isinstance(reward_id, int):
        return None, data
    return db.session.get(Reward, reward_id), data


def _reward_withdrawn(reward: Reward | None) -> bool:
    """Whether the reward an "earned" or "approved" email tells of was reversed or rejected
    since it was planned (a refund within the hold, say): such an email is not sent."""
    return reward is not None and reward.status in ("reversed", "rejected")


def _milestone_friends(reward: Reward | None, data: dict) -> int | None:
    """N of the milestone reward an email tells of (the reward's own, else its event's), None
    for a referral reward or a payout."""
    if reward is not None:
        return reward.milestone_friends if reward.kind == "milestone" else None
    if data.get("kind") != "milestone":
        return None
    friends = data.get("milestone_friends")
    if isinstance(friends, bool) or not isinstance(friends, int) or friends < 1:
        return None
    return friends


def send(notification_id: int, now: datetime | None = None) -> datetime | None:
    """Make one attempt at an email if it is due and no other worker holds it.

    Returns the time of the next attempt after a failure that will be retried, else None (sent,
    given up, skipped, not due, held elsewhere, or no `MAIL_URL`: it then waits, pending).
    An email whose customer unsubscribed, was erased or whose kind was switched off since it
    was planned is `skipped`, not sent.
    """
    server = mail_server()
    if server is None:
        return None
    email = _claim(notification_id, now or utcnow())
    if email is None:
        return None
    try:
        if not _writer:
            raise RuntimeError("no email writer is registered")
        message = _writer[0](email, server)
        message["From"] = server.sender
    except Exception as error:  # a bug: said in full, and tried again on the schedule
        logger.exception(
            "email %s (attempt %s) could not be written", email.notification_id, email.attempt
        )
        return _record(email, now, error=_describe(error), retry=True)
    try:
        message["To"] = mail.recipient(email.to, email.name)
    except (ValueError, IndexError) as error:  # an address email's headers cannot carry
        return _record(email, now, error=f"unusable address ({_describe(error)})", retry=False)
    try:
        mail.send(server, message)
    except mail.PermanentFailure as refusal:
        return _record(email, now, error=str(refusal), retry=False)
    except (OSError, mail.TemporaryFailure) as error:  # refused, cut, timed out, a 4xx answer
        logger.warning(
            "email %s (attempt %s) failed: %s", notification_id, email.attempt, _describe(error)
        )
        return _record(email, now, error=_describe(error), retry=True)
    except Exception as error:  # a bug: said in full, and tried again on the schedule
        logger.exception("email %s (attempt %s) failed", notification_id, email.attempt)
        return _record(email, now, error=_describe(error), retry=True)
    return _record(email, now)


def _claim(notification_id: int, now: datetime) -> Email | None:
    """Take the email for one attempt (a lease of LEASE) and read what it says, in one unit;
    None when it is not due, held by another worker, or done. Skips it (recorded) when it
    should no longer be sent."""
    with unit_of_work(now) as unit:
        claimed = db.session.execute(
            update(Notification)
            .where(
                Notification.id == notification_id,
                Notification.status == "pending",
                Notification.next_attempt_at <= unit.now,
                or_(Notification.lease_until.is_(None), Notification.lease_until <= unit.now),
            )
            .values(lease_until=unit.now + LEASE, attempts=Notification.attempts + 1)
            .execution_options(synchronize_session=False)
        ).rowcount
        if claimed != 1:
            return None
        row = db.session.get(Notification, notification_id, populate_existing=True)
        customer = db.session.get(Customer, row.customer_id)
        opted_out = db.session.get(EmailOptOut, row.customer_id) is not None
        settings = program.settings()
        reward, data = _told_reward(row)
        reason = (
            "unsubscribed"
            if opted_out
            else "no email address"
            if not customer.email
            else "switched off"
            if not settings["notifications"][row.kind]
            else "reward no longer owed"
            if _reward_withdrawn(reward)
            else None
        )
        if reason is not None:
            row.status, row.lease_until, row.last_error = "skipped", None, reason
            return None
        code = db.session.scalar(
            select(ReferralCode.code).where(
                ReferralCode.customer_id == customer.id, ReferralCode.revoked_at.is_(None)
            )
        )
        return Email(
            notification_id=row.id,
            event_id=row.event_id,
            kind=row.kind,
            amounts=list(row.amounts),
            to=customer.email,
            name=customer.name,
            locale=customer.locale,
            default_locale=settings["default_locale"],
            code=code,
            external_id=customer.external_id,
            unsubscribe_token=unsubscribe_token(customer.id),
            at=unit.now,
            attempt=row.attempts,
            milestone_friends=_milestone_friends(reward, data),
        )


def _record(
    email: Email, now: datetime | None, error: str | None = None, retry: bool = False
) -> datetime | None:
    """Record an attempt's outcome, only while this attempt's claim holds (a row already sent
    is never touched again); returns the next attempt's time, if any."""
    with unit_of_work(now) as unit:
        if error is None:
            values = {"status": "sent", "sent_at": unit.now, "last_error": None}
            next_attempt = None
        elif retry and email.attempt <= len(RETRY_DELAYS):
            next_attempt = unit.now + RETRY_DELAYS[email.attempt - 1]
            values = {"next_attempt_at": next_attempt, "last_error": error[:MAX_ERROR]}
        else:
            values = {"status": "failed", "last_error": error[:MAX_ERROR]}
            next_attempt = None
        changed = db.session.execute(
            update(Notification)
            .where(
                Notification.id == email.notification_id,
                Notification.status == "pending",
                Notification.attempts == email.attempt,
            )
            .values(lease_until=None, **values)
            .execution_options(synchronize_session=False)
        ).rowcount
    if changed != 1:
        logger.warning(
            "email %s: its claim ended before attempt %s was recorded",
            email.notification_id,
            email.attempt,
        )
        return None
    return next_attempt


def _describe(error: Exception) -> str:
    """An error in a line: its kind, and its words for the errors of the connection or of
    mail.py (which never carry an address); a server's own text is never quoted."""
    if isinstance(error, OSError | mail.TemporaryFailure):
        text = " ".join(str(error).split())
        return f"{type(error).__name__}: {text}"[:MAX_ERROR] if text else type(error).__name__
    return type(error).__name__


# --- unsubscribing -------------------------------------------------------------------------------


def _unsubscribe_serializer() -> URLSafeSerializer:
    serializer = current_app.extensions.get("unsubscribe_links")
    if serializer is None:
        keys = [
            *reversed(current_app.config.get("SECRET_KEY_FALLBACKS") or []),
            current_app.secret_key,
        ]
        serializer = URLSafeSerializer(keys, salt=UNSUBSCRIBE_SALT)
        current_app.extensions["unsubscribe_links"] = serializer
    return serializer


def unsubscribe_token(customer_id: int) -> str:
    """The signed token of a customer's unsubscribe link (it does not expire)."""
    return _unsubscribe_serializer().dumps(customer_id)


@dataclass(frozen=True)
class Subscriber:
    """Whom an unsubscribe link names, and whether they already unsubscribed."""

    customer_id: int
    locale: str | None
    opted_out: bool


def _customer_of(token: str) -> int:
    """The customer id an unsubscribe token names (its signature checked, no database read);
    raises InvalidLink."""
    try:
        customer_id = _unsubscribe_serializer().loads(token)
    except (BadSignature, ValueError, TypeError):
        raise InvalidLink() from None
    if isinstance(customer_id, bool) or not isinstance(customer_id, int):
        raise InvalidLink()
    return customer_id


def subscriber(token: str) -> Subscriber:
    """The customer of an unsubscribe link; raises InvalidLink for a forged or damaged token,
    or one naming a customer who is gone."""
    customer_id = _customer_of(token)
    locale = db.session.execute(
        select(Customer.locale).where(Customer.id == customer_id)
    ).one_or_none()
    if locale is None:
        raise InvalidLink()
    opted_out = db.session.get(EmailOptOut, customer_id) is not None
    return Subscriber(customer_id, locale[0], opted_out)


def unsubscribe(token: str, now: datetime | None = None) -> Subscriber:
    """Record that the customer of an unsubscribe link wants no more emails (once; again changes
    nothing). Raises InvalidLink as `subscriber` does."""
    _customer_of(token)  # a forged token never waits for the write lock
    with unit_of_work(now) as unit:
        found = subscriber(token)
        added = db.session.scalar(
            _insert(EmailOptOut)
            .values(customer_id=found.customer_id, opted_out_at=unit.now)
            .on_conflict_do_nothing(index_elements=["customer_id"])
            .returning(EmailOptOut.customer_id)
        )
        if added is not None:  # the first time only, whoever else is unsubscribing at once
            unit.audit(
                "customer",
                "customer.unsubscribe",
                "customer",
                found.customer_id,
                None,
                {"emails": False},
            )
    return Subscriber(found.customer_id, found.locale, True)

"""Sign-ups: a friend becomes a customer, and is credited to a referrer by a code or a click.

A typed code wins over a click. The reasons an attribution fails, in the order they are decided:
`program_paused`; `no_referral`; for a code `invalid_code` / `revoked_code`; for a click
`unknown_click` / `click_after_signup` (the click is dated after the sign-up, beyond CLOCK_SKEW) /
`window_expired` / `revoked_code`; `self_referral` (the referrer themselves, or the same
normalized email); `already_referred` (this friend, or their normalized email under any
`external_id`, was attributed before: first attribution wins); `existing_customer` (enrolled
before, bought before, or known under another `external_id` with the same normalized email).

One person, one referral: the normalized email (`customers.email_key`) of every attributed friend
is kept on their referral under a unique key, so that of two sign-ups of one person racing under
two `external_id`s exactly one is attributed, and the other answers `already_referred`.

Only a click dates how the friend arrived. A typed code is not refused for having been issued
after the sign-up's `occurred_at`: a code is often typed at checkout, after the account was made,
and still attributes until the friend's first purchase.

A sign-up is one unit of work (domain/unit.py); an attribution writes its `referral.attributed`
event in it (a sign-up that attributes nothing, and a replay, write none).
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, exists, insert, select

from referral_service.domain import customers, fraud, idempotency, program
from referral_service.domain.clicks import ClickClaim, flush_pending, read_click_id
from referral_service.domain.clock import CLOCK_SKEW, check_time
from referral_service.domain.codes import normalize, signer
from referral_service.domain.unit import unit_of_work
from referral_service.errors import InvalidCode
from referral_service.extensions import db
from referral_service.models import (
    Click,
    Customer,
    Purchase,
    Referral,
    ReferralCode,
    Signup,
    utcnow,
)

CODE_CHANNEL = "code"


@dataclass
class ReferralRef:
    """Which referral a sign-up made or found: its id, its referrer and its status."""

    id: int
    referrer_external_id: str
    status: str


@dataclass
class SignupAnswer:
    """The answer to a sign-up; `created` is False for a replay or a later call."""

    attributed: bool
    reason: str | None
    referral: ReferralRef | None
    friend_offer: dict | None
    created: bool


@dataclass
class _Source:
    """Where an attribution would come from: the referrer's code, and the click if any."""

    code_id: int
    referrer_id: int
    channel: str
    click_id: str | None
    referrer_external_id: str
    referrer_email_key: str
    referrer_name: str | None
    email_referred: bool  # the friend's normalized email was attributed before
    email_known: bool  # a customer under another external id has the friend's normalized email
    visit_host: str | None = None  # where the share-link visit came from (`Referer`)


class _Refused(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def signup(
    external_id: str,
    email: str,
    referral_code: str | None = None,
    click_id: str | None = None,
    occurred_at: datetime | None = None,
    name: str | None = None,
    locale: str | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
    device_id: str | None = None,
    now: datetime | None = None,
) -> SignupAnswer:
    """Record a sign-up and attribute it when a code or click allows it.

    The friend becomes a customer (with a code of their own) whatever the outcome. A replay with
    the same `external_id` gets the same answer; the first attribution wins. What the shop saw
    (`ip`, `user_agent`, `device_id`) is kept as keyed hashes and feeds the risk signals
    (domain/fraud.py). Raises ValidationFailed for bad fields.
    """
    now = now or utcnow()
    external_id = customers.check_external_id(external_id)
    email = customers.check_email(email)
    occurred_at = check_time(occurred_at, now)
    code = normalize(referral_code) if referral_code else None
    if referral_code and code is None:
        code = referral_code.strip()[:16] or None  # keep what was typed, to compare replays
    # the click's row; a forged id is unknown either way, and is kept as far as the column holds
    click = read_click_id(click_id) if click_id else None
    if click is not None and not click.forged:
        flush_pending()  # the click may still wait in this process's buffer
    values = {
        "email": email,
        "email_key": customers.email_key(email),
        "name": customers.check_name(name),
        "locale": customers.check_locale(locale),
    }
    seen = fraud.evidence(ip, user_agent, device_id)
    # a concurrent sign-up of the same friend won: the second run answers as a replay
    return idempotency.retried_once(
        _signup, external_id, values, seen, referral_code, code, click, occurred_at, now
    )


def _signup(external_id, values, seen, typed_code, code, click, occurred_at, now):
    settings = program.settings()
    connection = db.session.connection()
    if connection.execute(_KNOWN, {"external_id": external_id}).first() is None:
        return _new_friend(external_id, values, seen, typed_code, code, click, occurred_at, now)
    with unit_of_work(now) as unit:
        customer = db.session.scalar(
            select(Customer).where(Customer.external_id == external_id).with_for_update()
        )
        if customer is not None:
            answer = _known_friend(
                unit, customer, values, seen, typed_code, code, click, occurred_at, settings
            )
    if customer is None:  # gone since: start again as a friend never seen
        return _new_friend(external_id, values, seen, typed_code, code, click, occurred_at, now)
    return answer


def _known_friend(unit, customer, values, seen, typed_code, code, click, occurred_at, settings):
    """A sign-up of a customer already known: a replay, a later call, or a late attribution."""
    prior = db.session.scalar(select(Signup).where(Signup.customer_id == customer.id))
    if prior is not None and prior.code == code and prior.click_id == _row(click):
        return _answer(prior, settings, created=False)  # a replay: nothing written
    email_key = customer.email_key  # the person as known, whatever this call's email says
    source, reason = _decide(
        settings,
        typed_code,
        code,
        click,
        occurred_at,
        customer,
        customer.external_id,
        email_key,
        prior,
    )
    if prior is not None and source is None:  # a later call that attributes nothing
        return SignupAnswer(False, reason, None, None, created=False)
    referral = None
    if source is not None:
        reasons = _risk(db.session.connection(), source, values, seen, settings, occurred_at)
        referral = Referral(
            referrer_id=source.referrer_id,
            friend_id=customer.id,
            code_id=source.code_id,
            click_id=source.click_id,
            channel=source.channel,
            friend_email_key=email_key,
            status="attributed",
            attributed_at=occurred_at,
            risk_score=fraud.score(reasons),
            risk_reasons=reasons,
        )
        db.session.add(referral)
        db.session.flush()
        unit.emit("referral.attributed", referral)
    record = prior or Signup(customer_id=customer.id)
    for key, value in seen.items():
        if value is not None:
            setattr(record, key, value)
    record.attributed = referral is not None
    record.reason = reason
    record.referral_id = referral.id if referral else None
    record.code = code
    record.click_id = _row(click)
    record.occurred_at = occurred_at
    db.session.add(record)
    db.session.flush()
    return _fresh_answer(source, referral.id if referral else None, reason, settings)


def _new_friend(external_id, values, seen, typed_code, code, click, occurred_at, now):
    """The common case, kept short: someone never seen before signs up.

    Everything is read and decided first; the write transaction then only inserts (the customer,
    their code, the referral, the sign-up). Should someone with this `external_id` be written in
    between, the customer's unique key fails the insert and the caller answers as a replay.
    """
    settings = program.settings()
    source, reason = _decide(
        settings,
        typed_code,
        code,
        click,
        occurred_at,
        None,
        external_id,
        values["email_key"],
        None,
    )
    reasons = []
    if source is not None:
        reasons = _risk(db.session.connection(), source, values, seen, settings, occurred_at)
    own_code = customers.unused_code()
    with unit_of_work(now) as unit:
        connection = db.session.connection()
        customer_id = connection.execute(
            _INSERT_CUSTOMER,
            {"external_id": external_id, "created_at": now, "updated_at": now, **values},
        ).inserted_primary_key[0]
        connection.execute(
            _INSERT_CODE, {"customer_id": customer_id, "code": own_code, "created_at": now}
        )
        referral_id = None
        if source is not None:
            risk = {"score": fraud.score(reasons), "reasons": reasons}
            referral_id = connection.execute(
                _INSERT_REFERRAL,
                {
                    "referrer_id": source.referrer_id,
                    "friend_id": customer_id,
                    "code_id": source.code_id,
                    "click_id": source.click_id,
                    "channel": source.channel,
                    "friend_email_key": values["email_key"],
                    "attributed_at": occurred_at,
                    "risk_score": risk["score"],
                    "risk_reasons": reasons,
                },
            ).inserted_primary_key[0]
            # on this hot path the event's data is built from what the step holds, in the shape
            # of an item of GET /api/v1/referrals
            unit.emit(
                "referral.attributed",
                {
                    "id": referral_id,
                    "referrer_external_id": source.referrer_external_id,
                    "friend_external_id": external_id,
                    "status": "attributed",
                    "channel": source.channel,
                    "attributed_at": occurred_at,
                    "converted_at": None,
                    "order_id": None,
                    "risk": risk,
                },
            )
        connection.execute(
            _INSERT_SIGNUP,
            {
                "customer_id": customer_id,
                "attributed": source is not None,
                "reason": reason,
                "referral_id": referral_id,
                "code": code,
                "click_id": _row(click),
                "occurred_at": occurred_at,
                **seen,
            },
        )
    return _fresh_answer(source, referral_id, reason, settings)


def _risk(connection, source: _Source, values: dict, seen: dict, settings, occurred_at) -> list:
    return fraud.signup_signals(
        connection,
        {"id": source.referrer_id, "name": source.referrer_name},
        {"email": values["email"], "name": values["name"]},
        seen,
        source.visit_host,
        settings,
        occurred_at,
    )


def _fresh_answer(source: "_Source | None", referral_id, reason, settings) -> SignupAnswer:
    return SignupAnswer(
        attributed=source is not None,
        reason=reason,
        referral=None
        if source is None
        else ReferralRef(referral_id, source.referrer_external_id, "attributed"),
        friend_offer=settings["friend_offer"] if source is not None else None,
        created=True,
    )


def _answer(record: Signup, settings: dict, created: bool) -> SignupAnswer:
    referral = db.session.get(Referral, record.referral_id) if record.referral_id else None
    return SignupAnswer(
        attributed=record.attributed,
        reason=record.reason,
        referral=None
        if referral is None
        else ReferralRef(referral.id, referral.referrer.external_id, referral.status),
        friend_offer=settings["friend_offer"] if record.attributed else None,
        created=created,
    )


def _row(click: ClickClaim | None) -> str | None:
    """The click row id a sign-up keeps (`signups.click_id`, `referrals.click_id`)."""
    return click.row_id if click is not None else None


def _decide(
    settings, typed_code, code, click, occurred_at, customer, external_id, email_key, prior
):
    """`(source, None)` when the sign-up can be attributed, else `(None, reason)`."""
    try:
        people = {"email_key": email_key, "external_id": external_id}
        source = _source(settings, typed_code, code, click, occurred_at, people)
        _check_people(source, customer, external_id, email_key, prior)
    except _Refused as refused:
        return None, refused.reason
    return source, None


def _source(settings, typed_code, code, click: ClickClaim | None, occurred_at, people: dict):
    """The code (preferred) or click that names a referrer (a _Source); raises _Refused with the
    reason.

    Attribution trusts only the database about revocations, never the share link's cache. The
    same statement tells whether the friend's normalized email (`people`: `{email_key,
    external_id}`) was referred or known before, so that the sign-up costs no extra query. A
    click is its row when the row is written (its channel, time and the site it came from);
    a signed click id whose row is not written yet (it waits in another instance's buffer)
    vouches for its code, channel and time itself (`clicks.read_click_id`).
    """
    if settings["paused"]:
        raise _Refused("program_paused")
    connection = db.session.connection()
    if typed_code:
        try:
            verified = signer().verify(typed_code)
        except InvalidCode:
            raise _Refused("invalid_code") from None
        found = connection.execute(_BY_CODE, {"code": verified, **people}).first()
        if found is None:
            raise _Refused("invalid_code")
        if found.revoked_at is not None:
            raise _Refused("revoked_code")
        return _source_of(found, CODE_CHANNEL, None, None)
    if click is None:
        raise _Refused("no_referral")
    if click.forged:
        raise _Refused("unknown_click")
    found = connection.execute(_BY_CLICK, {"click_id": click.row_id, **people}).first()
    if found is not None:
        channel, clicked_at, visit_host = found.channel, found.occurred_at, found.referer_host
    elif click.signed:
        found = connection.execute(_BY_CODE_ID, {"code_id": click.code_id, **people}).first()
        channel, clicked_at, visit_host = click.channel, click.occurred_at, None
    if found is None:
        raise _Refused("unknown_click")
    if clicked_at - occurred_at > CLOCK_SKEW:
        raise _Refused("click_after_signup")
    window = timedelta(days=settings["attribution_window_days"])
    if occurred_at - clicked_at > window:
        raise _Refused("window_expired")
    if found.revoked_at is not None:
        raise _Refused("revoked_code")
    return _source_of(found, channel, click.row_id, visit_host)


def _source_of(found, channel: str, click_id: str | None, visit_host: str | None) -> _Source:
    return _Source(
        code_id=found.code_id,
        referrer_id=found.referrer_id,
        channel=channel,
        click_id=click_id,
        referrer_external_id=found.external_id,
        referrer_email_key=found.email_key,
        referrer_name=found.name,
        email_referred=bool(found.email_referred),
        email_known=bool(found.email_known),
        visit_host=visit_host,
    )


def _check_people(source: _Source, customer, external_id: str, email_key: str, prior) -> None:
    """Refuse the referrer themselves, a friend already referred (under any external id with the
    same normalized email), or someone who was a customer before (enrolled, bought, or known under
    another external id with the same normalized email).

    A friend whose own sign-up was not attributed (no code yet, or a mistyped one) may still be
    attributed by a later call until their first purchase: the code is often typed at checkout.
    """
    if source.referrer_external_id == external_id or source.referrer_email_key == email_key:
        raise _Refused("self_referral")
    if (prior is not None and prior.attributed) or source.email_referred:
        raise _Refused("already_referred")
    if source.email_known:
        raise _Refused("existing_customer")
    if customer is not None and (
        prior is None
        or customer.origin != "signup"
        or db.session.scalar(select(exists().where(Purchase.customer_id == customer.id)))
    ):
        raise _Refused("existing_customer")


# Statements of the sign-up path, built once (their compiled form is cached by SQLAlchemy).
_customers = Customer.__table__
_codes = ReferralCode.__table__
_clicks = Click.__table__
_referrals = Referral.__table__
_others = _customers.alias("others")
_KNOWN = select(_customers.c.id).where(_customers.c.external_id == bindparam("external_id"))
# whether the friend's normalized email was attributed before, or is a customer's under another id
_EMAIL_REFERRED = (
    exists().where(_referrals.c.friend_email_key == bindparam("email_key")).label("email_referred")
)
_EMAIL_KNOWN = (
    exists()
    .where(
        _others.c.email_key == bindparam("email_key"),
        _others.c.external_id != bindparam("external_id"),
    )
    .label("email_known")
)
_BY_CODE = (
    select(
        _codes.c.id.label("code_id"),
        _codes.c.customer_id.label("referrer_id"),
        _codes.c.revoked_at,
        _customers.c.external_id,
        _customers.c.email_key,
        _customers.c.name,
        _EMAIL_REFERRED,
        _EMAIL_KNOWN,
    )
    .join_from(_codes, _customers, _codes.c.customer_id == _customers.c.id)
    .where(_codes.c.code == bindparam("code"))
)
_BY_CODE_ID = (
    select(*_BY_CODE.selected_columns)
    .join_from(_codes, _customers, _codes.c.customer_id == _customers.c.id)
    .where(_codes.c.id == bindparam("code_id"))
)
_BY_CLICK = (
    select(
        _clicks.c.code_id,
        _clicks.c.referrer_id,
        _clicks.c.channel,
        _clicks.c.occurred_at,
        _clicks.c.referer_host,
        _codes.c.revoked_at,
        _customers.c.external_id,
        _customers.c.email_key,
        _customers.c.name,
        _EMAIL_REFERRED,
        _EMAIL_KNOWN,
    )
    .join_from(_clicks, _codes, _clicks.c.code_id == _codes.c.id)
    .join(_customers, _clicks.c.referrer_id == _customers.c.id)
    .where(_clicks.c.id == bindparam("click_id"))
)
_INSERT_CUSTOMER = insert(_customers).values(origin="signup")
_INSERT_CODE = insert(_codes)
_INSERT_REFERRAL = insert(Referral.__table__).values(status="attributed")
_INSERT_SIGNUP = insert(Signup.__table__)

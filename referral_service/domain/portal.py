"""The customer's share page: signed, expiring links to it, and what it shows.

A link names the customer and its expiry, signed with itsdangerous under the secret key and
a salt of its own (keys in `SECRET_KEY_FALLBACKS` still verify). Nothing is stored: a link lives
until it expires, and the page always shows the customer's current code. Friends' names are
masked (`Anna Kowalska` -> `A*** K.`), since a referrer need not know their friends' full names.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

import regex
from flask import current_app
from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from referral_service.domain import stats
from referral_service.domain.customers import active_code, check_external_id, find
from referral_service.domain.money import from_minor
from referral_service.domain.unit import unit_of_work
from referral_service.errors import InvalidLink, LinkExpired, ValidationFailed
from referral_service.extensions import db
from referral_service.models import Customer, Referral, Reward, utcnow
from referral_service.models.referral import REWARD_STATUSES

SALT = "referral-service.portal-link"
DEFAULT_EXPIRES_IN = 30 * 86400
MIN_EXPIRES_IN = 60
MAX_EXPIRES_IN = 365 * 86400
LIST_LIMIT = 50
_GRAPHEME = regex.compile(r"\X")  # an extended grapheme cluster (Unicode UAX #29)
_FORMAT_ONLY = regex.compile(r"\p{Cf}+")
# how a reward's status counts in the totals of the page
TOTALS = {
    "pending": "in_progress",
    "awaiting_approval": "in_progress",
    "approved": "approved",
    "paid": "paid",
}


@dataclass
class PortalLink:
    """A signed link's token and the time it stops working."""

    token: str
    expires_at: datetime


@dataclass
class FriendProgress:
    """One friend as their referrer sees them."""

    name: str
    status: str  # the referral's: attributed, converted, rejected
    signed_up_at: datetime
    converted_at: datetime | None
    reward_status: str | None


@dataclass
class RewardLine:
    """One of the customer's rewards."""

    amount: Decimal
    currency: str
    status: str
    beneficiary: str  # referrer: for a friend's purchase; friend: the customer's own welcome
    friend: str | None
    created_at: datetime
    available_at: datetime
    milestone_friends: int | None = None  # N of a milestone reward (kind `milestone`)


@dataclass
class Milestone:
    """A milestone of the program: its number of friends and its reward rule `{type, value}`."""

    friends: int
    reward: dict


@dataclass
class MilestoneProgress:
    """The customer's way through the program's milestones: their converted friends, the
    milestones reached (by N ascending) and the next one, None when all are reached."""

    converted: int
    reached: list[Milestone]
    next: Milestone | None


@dataclass
class SharePage:
    """What the share page shows, in plain values (the page formats them for its language)."""

    first_name: str | None
    locale: str | None
    code: str
    friends: list[FriendProgress]
    friends_total: int
    rewards: list[RewardLine]
    rewards_total: int
    friends_converted: int = 0  # friends whose referral is converted now (milestones count them)
    # "in_progress" / "approved" / "paid" -> [(amount, currency)], one per currency
    totals: dict[str, list[tuple[Decimal, str]]] = field(default_factory=dict)


def _serializer() -> URLSafeSerializer:
    serializer = current_app.extensions.get("portal_links")
    if serializer is None:
        keys = [
            *reversed(current_app.config.get("SECRET_KEY_FALLBACKS") or []),
            current_app.secret_key,
        ]
        serializer = current_app.extensions["portal_links"] = URLSafeSerializer(keys, salt=SALT)
    return serializer


def check_expires_in(value) -> int:
    """Seconds from 60 to a year (30 days when absent); raises ValidationFailed."""
    if value is None:
        return DEFAULT_EXPIRES_IN
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationFailed(fields={"expires_in": ["Must be a whole number of seconds."]})
    if not MIN_EXPIRES_IN <= value <= MAX_EXPIRES_IN:
        raise ValidationFailed(
            fields={
                "expires_in": [f"Must be {MIN_EXPIRES_IN} to {MAX_EXPIRES_IN} seconds (a year)."]
            }
        )
    return value


def issue_link(
    external_id: str, expires_in: int | None = None, actor: str | None = None
) -> PortalLink:
    """A signed link to a customer's share page.

    With an `actor` (an admin of the console), the link's making is audited: it opens the
    customer's page to whoever holds it. Raises NotFound for an unknown customer and
    ValidationFailed for an `expires_in` out of range.
    """
    seconds = check_expires_in(expires_in)
    customer = find(check_external_id(external_id))
    expires_at = (utcnow() + timedelta(seconds=seconds)).replace(microsecond=0)
    token = _serializer().dumps([customer.id, int(expires_at.timestamp())])
    if actor is not None:
        with unit_of_work() as unit:
            unit.audit(
                actor,
                "customer.portal_link",
                "customer",
                customer.id,
                None,
                {"external_id": customer.external_id, "expires_at": expires_at.isoformat()},
            )
    return PortalLink(token=token, expires_at=expires_at)


def open_link(token: str) -> int:
    """The id of the customer a link names.

    Raises InvalidLink for a forged or damaged token (or one naming a deleted customer) and
    LinkExpired for one past its time.
    """
    try:
        customer_id, expires = _serializer().loads(token)
    except (BadSignature, ValueError, TypeError):
        raise InvalidLink() from None
    if not isinstance(customer_id, int) or not isinstance(expires, int):
        raise InvalidLink()
    if utcnow().timestamp() >= expires:
        raise LinkExpired(customer_id=customer_id)
    return customer_id


def _initial(word: str) -> str:
    """The first grapheme cluster of `word` that shows something, or "".

    A cluster is what a reader sees as one character: a flag (two regional indicators), an emoji
    ZWJ sequence, a letter with its combining accents; it is never cut. Clusters of format
    characters alone (a bidirectional mark, a stray joiner) show nothing and are passed over.
    """
    for cluster in _GRAPHEME.findall(word):
        if not _FORMAT_ONLY.fullmatch(cluster):
            return cluster
    return ""


def _upper(cluster: str) -> str:
    upper = cluster.upper()  # `ß` would become `SS`, two letters: such a cluster stays as it is
    return upper if len(_GRAPHEME.findall(upper)) == 1 else cluster


def mask_name(name: str | None, email: str | None) -> str:
    """A friend's name as their referrer sees it: `A*** K.` (the initials of the first and last
    words), or `a***` from the email when there is no name; `***` for a friend erased (no name,
    no email); initials are grapheme clusters."""
    initials = [initial for initial in map(_initial, (name or "").split()) if initial]
    if not initials:
        return _initial(email or "").lower() + "***"
    masked = _upper(initials[0]) + "***"
    return f"{masked} {_upper(initials[-1])}." if len(initials) > 1 else masked


def first_name(name: str | None) -> str | None:
    """The first word of a customer's name, shown to the friends they invite."""
    words = (name or "").split()
    return words[0] if words else None


def milestone_progress(converted: int, milestones: list[dict]) -> MilestoneProgress | None:
    """Where `converted` friends stand among the program's `milestones` (its setting: `{friends,
    reward}`, by friends ascending); None when the program has none."""
    if not milestones:
        return None
    ordered = sorted(
        (Milestone(item["friends"], item["reward"]) for item in milestones),
        key=lambda milestone: milestone.friends,
    )
    reached = [milestone for milestone in ordered if milestone.friends <= converted]
    ahead = [milestone for milestone in ordered if milestone.friends > converted]
    return MilestoneProgress(converted, reached, ahead[0] if ahead else None)


def share_page(customer_id: int) -> SharePage:
    """What a customer's share page shows: their code, their friends' progress, how many of
    them are converted (for the milestones, `milestone_progress`) and their rewards.

    The newest LIST_LIMIT friends and rewards are listed; the totals count them all. Raises
    InvalidLink when the customer is gone.
    """
    customer = db.session.get(Customer, customer_id)
    code = active_code(customer_id) if customer is not None else None
    if customer is None or code is None:
        raise InvalidLink()
    friend = aliased(Customer)
    earlier = aliased(Reward)
    # a friend's latest referral reward tells their state: after a refund and a new purchase,
    # the new reward, not the reversed one beside it (one row a friend)
    latest = (
        select(func.max(earlier.id))
        .where(
            earlier.referral_id == Referral.id,
            earlier.customer_id == customer_id,
            earlier.kind == "referral",  # a milestone reward shares its referral
        )
        .scalar_subquery()
    )
    friends = db.session.execute(
        select(
            friend.name,
            friend.email,
            Referral.status,
            Referral.attributed_at,
            Referral.converted_at,
            Reward.status,
        )
        .join(friend, friend.id == Referral.friend_id)
        .outerjoin(Reward, Reward.id == latest)
        .where(Referral.referrer_id == customer_id)
        .order_by(Referral.attributed_at.desc(), Referral.id.desc())
        .limit(LIST_LIMIT)
    ).all()
    friends_total = db.session.scalar(
        select(func.count()).select_from(Referral).where(Referral.referrer_id == customer_id)
    )
    friends_converted = db.session.scalar(
        select(func.count())
        .select_from(Referral)
        .where(
            Referral.referrer_id == customer_id,
            Referral.converted_at.is_not(None),
            Referral.status == "converted",
        )
    )
    rewards = db.session.execute(
        select(
            Reward.amount_minor,
            Reward.currency,
            Reward.status,
            Reward.beneficiary,
            Reward.created_at,
            Reward.available_at,
            Reward.milestone_friends,
            friend.name,
            friend.email,
        )
        .join(Referral, Referral.id == Reward.referral_id)
        .join(friend, friend.id == Referral.friend_id)
        .where(Reward.customer_id == customer_id)
        .order_by(Reward.created_at.desc(), Reward.id.desc())
        .limit(LIST_LIMIT)
    ).all()
    sums = stats.reward_totals(Reward.customer_id == customer_id)  # `paid` net of clawbacks
    totals: dict[str, dict[str, Decimal]] = {}
    for status, group_name in TOTALS.items():
        for currency, amount in sums[status]["amounts"].items():
            group = totals.setdefault(group_name, {})
            group[currency] = group.get(currency, Decimal(0)) + Decimal(amount)
    return SharePage(
        first_name=first_name(customer.name),
        locale=customer.locale,
        code=code,
        friends=[
            FriendProgress(
                name=mask_name(name, email),
                status=status,
                signed_up_at=attributed_at,
                converted_at=converted_at,
                reward_status=reward_status,
            )
            for name, email, status, attributed_at, converted_at, reward_status in friends
        ],
        friends_total=friends_total or 0,
        rewards=[
            RewardLine(
                amount=Decimal(from_minor(minor, currency)),
                currency=currency,
                status=status,
                beneficiary=beneficiary,
                friend=mask_name(name, email) if beneficiary == "referrer" else None,
                created_at=created_at,
                available_at=available_at,
                milestone_friends=milestone_friends,
            )
            for (
                minor,
                currency,
                status,
                beneficiary,
                created_at,
                available_at,
                milestone_friends,
                name,
                email,
            ) in rewards
        ],
        rewards_total=sum(sums[status]["count"] for status in REWARD_STATUSES),
        friends_converted=friends_converted or 0,
        totals={
            group: [(amount, currency) for currency, amount in sorted(by_currency.items())]
            for group, by_currency in totals.items()
        },
    )


def first_name_of(customer_id: int) -> str | None:
    """A referrer's first name, for the welcome page their friends see."""
    return first_name(db.session.scalar(select(Customer.name).where(Customer.id == customer_id)))


def locale_of(customer_id: int | None) -> str | None:
    """A customer's locale (None for an unknown one), for the pages said in their language."""
    if customer_id is None:
        return None
    return db.session.scalar(select(Customer.locale).where(Customer.id == customer_id))

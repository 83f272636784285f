"""The program settings: read (cached briefly per process, the last good copy kept for the public
pages while the database is away) and changed as one validated whole."""

import re
import time
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

from flask import current_app
from sqlalchemy import select

from referral_service import database
from referral_service.domain.money import check_currency, format_amount, parse_amount
from referral_service.domain.text import plain_port
from referral_service.domain.unit import current, unit_of_work
from referral_service.errors import Unavailable, ValidationFailed
from referral_service.extensions import db
from referral_service.models import Program
from referral_service.models.notification import NOTIFICATION_KINDS
from referral_service.models.program import LANDING_MODES, REWARD_TYPES

OFFER_TYPES = ("fixed", "percent", "free_shipping")
MAX_DAYS = 3650
MAX_COUPON_SITES = 500
_HOST = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
_PERCENT_MAX = Decimal(100)
# the languages of the share page and the welcome page (each has a catalog in translations/)
LANGUAGES = ("en", "pl", "hu", "el", "bg")
MAX_SHARE_MESSAGE = 280
# loyalty milestones: an extra reward at the referrer's Nth converted friend
MAX_MILESTONES = 20
MAX_MILESTONE_FRIENDS = 10_000
MILESTONE_REWARD_TYPES = ("fixed", "percent")


def _program() -> Program:
    program = db.session.get(Program, 1)
    if program is None:  # the migration inserts it; this covers a database made without one
        with unit_of_work():
            if db.session.get(Program, 1) is None:
                db.session.add(Program(id=1))
        program = db.session.get(Program, 1)
    return program


def settings(last_known: bool = False) -> dict:
    """The program settings as plain values.

    By default they are read from the database, inside the caller's transaction: a business step
    (a sign-up, a purchase, a refund, a payout, the worker's jobs) and the admin API always decide
    by the settings as they are now, whichever process changed them. Within one transaction the
    row is read once (the session's identity map).

    With `last_known` (the public pages: share links, QR codes, the share page's language), a copy
    cached in this process for `CACHE_SECONDS` serves; a change made by another process shows
    there within that time. A refresh the database cannot serve (errors.py `is_outage`, or the
    database known to be away) keeps the last good copy for another `CACHE_SECONDS`, and raises
    Unavailable only when this process never read the settings. Without `last_known` the
    failure is raised as it is (a business step needs the database anyway, and its open
    transaction is left alone).
    """
    if not last_known:
        return _current()
    cache = current_app.extensions["program_cache"]
    if cache.get("expires", 0) > time.monotonic():
        return cache["value"]
    seconds = current_app.config["CACHE_SECONDS"]
    try:
        with database.attempt(quick=True):
            value = as_dict(_program())
    except Unavailable:
        if "value" not in cache:
            raise
        cache["expires"] = time.monotonic() + seconds
        return cache["value"]
    cache.update(value=value, expires=time.monotonic() + seconds)
    return value


_CURRENT = select(Program.__table__).where(Program.__table__.c.id == 1)


def _current() -> dict:
    """The settings as the caller's transaction reads them: one small Core read of the row, and
    its values shaped again only when they changed (the last shaped copy is kept per process).
    The copy is shared: callers read it, never change it."""
    unit = current()
    if unit is not None and "program_settings" in unit.memo:  # read once per step
        return unit.memo["program_settings"]
    row = db.session.execute(_CURRENT).first()
    if row is None:
        return as_dict(_program())
    values = repr(tuple(row))  # exact: Decimal("12.5") == Decimal("12.50"), and True == 1
    cache = current_app.extensions["program_cache"]
    seen = cache.get("current")
    if seen is not None and seen[0] == values:
        shaped = seen[1]
    else:
        shaped = as_dict(row)
        cache["current"] = (values, shaped)
    if unit is not None:
        unit.memo["program_settings"] = shaped
    return shaped


def as_dict(program: Program) -> dict:
    """The settings of `program` (a Program, or a row of its table) as the API shows them."""
    currency = program.currency

    def reward(kind, value):
        if kind == "none":
            return {"type": "none", "value": None}
        return {
            "type": kind,
            "value": format_amount(value, currency) if kind == "fixed" else str(value),
        }

    return {
        "landing_url": program.landing_url,
        "currency": currency,
        "referrer_reward": reward(program.referrer_reward_type, program.referrer_reward_value),
        "friend_reward": reward(program.friend_reward_type, program.friend_reward_value),
        "friend_offer": program.friend_offer,
        "min_order_amount": format_amount(program.min_order_amount, currency),
        "attribution_window_days": program.attribution_window_days,
        "conversion_window_days": program.conversion_window_days,
        "hold_days": program.hold_days,
        "auto_approve_max_amount": None
        if program.auto_approve_max_amount is None
        else format_amount(program.auto_approve_max_amount, currency),
        "max_rewards_per_referrer_per_month": program.max_rewards_per_referrer_per_month,
        "paused": program.paused,
        "milestones": [dict(milestone) for milestone in program.milestones or []],
        "velocity_max_signups": program.velocity_max_signups,
        "velocity_window_hours": program.velocity_window_hours,
        "coupon_sites": list(program.coupon_sites or []),
        "risk_retention_days": program.risk_retention_days,
        "landing_mode": program.landing_mode,
        "default_locale": program.default_locale,
        "share_messages": dict(sorted((program.share_messages or {}).items())),
        "notifications": {kind: getattr(program, f"notify_{kind}") for kind in NOTIFICATION_KINDS},
    }


# --- validation of a whole set of settings -------------------------------------------------------


def check_url(value, field: str) -> str | None:
    """An http(s) URL with a host and a valid port, or None; raises ValidationFailed."""
    if value is None:
        return None
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
        if parts is not None:
            parts.port  # noqa: B018 (raises ValueError for a port out of 0-65535 or not a number)
    except ValueError:  # "http://[" (an unclosed IPv6 host), "https://shop.example:99999/"
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or not plain_port(value)
        or len(value) > 2048
    ):
        raise ValidationFailed(
            fields={
                field: [
                    "Must be an http(s) URL with a host (and a port from 0 to 65535 in digits "
                    "0-9, if any) of at most 2048 characters."
                ]
            }
        )
    return value


def _check_days(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DAYS:
        raise ValidationFailed(
            fields={field: [f"Must be a whole number of days, 0 to {MAX_DAYS}."]}
        )
    return value


def _check_percent(value, field: str) -> Decimal:
    try:
        percent = Decimal(str(value).strip()) if isinstance(value, str | int) else None
    except InvalidOperation:
        percent = None
    if (
        percent is None
        or isinstance(value, bool)
        or not percent.is_finite()
        or not 0 < percent <= _PERCENT_MAX
        or percent != round(percent, 2)
    ):
        raise ValidationFailed(
            fields={
                field: [
                    "A percent is a decimal string above 0 and at most 100, "
                    "with at most 2 decimals."
                ]
            }
        )
    return Decimal(format(percent.normalize(), "f"))  # "12.50" -> 12.5, "10" stays 10


def _check_reward(value, currency: str, field: str) -> tuple[str, Decimal | None]:
    if not isinstance(value, dict) or set(value) - {"type", "value"}:
        raise ValidationFailed(
            fields={field: ['Must be {"type": "fixed"|"percent"|"none", "value": "..."}.']}
        )
    kind = value.get("type")
    if kind not in REWARD_TYPES:
        raise ValidationFailed(
            fields={f"{field}.type": [f"Unknown reward type {kind!r}: use fixed, percent or none."]}
        )
    amount = value.get("value")
    if kind == "none":
        if amount not in (None, "", "0", "0.00"):
            raise ValidationFailed(
                fields={f"{field}.value": ["A reward of type none has no value."]}
            )
        return "none", None
    if kind == "fixed":
        return "fixed", parse_amount(amount, currency, f"{field}.value", allow_zero=False)
    return "percent", _check_percent(amount, f"{field}.value")


def _check_milestone(value, index: int, currency: str) -> dict:
    """One milestone, `{friends, reward: {type, value}}`, with its value as the API shows it."""
    field = f"milestones.{index}"
    if not isinstance(value, dict) or set(value) != {"friends", "reward"}:
        raise ValidationFailed(
            fields={
                field: ['Must be {"friends": N, "reward": {"type": "fixed"|"percent", "value"}}.']
            }
        )
    problems: dict[str, list[str]] = {}
    friends = value["friends"]
    if (
        isinstance(friends, bool)
        or not isinstance(friends, int)
        or not 1 <= friends <= MAX_MILESTONE_FRIENDS
    ):
        problems[f"{field}.friends"] = [
            f"Must be a whole number of friends, 1 to {MAX_MILESTONE_FRIENDS}."
        ]
    reward = value["reward"]
    if isinstance(reward, dict) and reward.get("type") not in MILESTONE_REWARD_TYPES:
        problems[f"{field}.reward.type"] = [
            f"Unknown milestone reward type {reward.get('type')!r}: use fixed or percent."
        ]
    else:
        try:
            kind, amount = _check_reward(reward, currency, f"{field}.reward")
        except ValidationFailed as error:
            problems.update(error.fields or {})
    if problems:
        raise ValidationFailed(fields=problems)
    shown = format_amount(amount, currency) if kind == "fixed" else str(amount)
    return {"friends": friends, "reward": {"type": kind, "value": shown}}


def check_milestones(value, currency: str) -> list[dict]:
    """The program's milestones: a list of at most MAX_MILESTONES `{friends: N, reward: {type:
    fixed|percent, value}}` (N from 1 to MAX_MILESTONE_FRIENDS, each N once; a fixed value in
    `currency`, a percent above 0 and at most 100), sorted by N. Raises ValidationFailed naming
    each bad part (`milestones.0.friends`, `milestones.2.reward.value`)."""
    field = "milestones"
    if not isinstance(value, list) or len(value) > MAX_MILESTONES:
        raise ValidationFailed(
            fields={field: [f"Must be a list of at most {MAX_MILESTONES} milestones."]}
        )
    milestones, problems, seen = [], {}, set()
    for index, item in enumerate(value):
        try:
            milestone = _check_milestone(item, index, currency)
        except ValidationFailed as error:
            problems.update(error.fields or {})
            continue
        friends = milestone["friends"]
        if friends in seen:
            problems[f"{field}.{index}.friends"] = [
                f"Another milestone is at {friends} friends already: each number once."
            ]
            continue
        seen.add(friends)
        milestones.append(milestone)
    if problems:
        raise ValidationFailed(fields=problems)
    return sorted(milestones, key=lambda milestone: milestone["friends"])


def _check_offer(value, currency: str) -> dict | None:
    field = "friend_offer"
    if value is None:
        return None
    # `currency` is what a stored fixed offer carries (set anew below), never what a client sends
    if not isinstance(value, dict) or set(value) - {"type", "value", "description", "currency"}:
        raise ValidationFailed(fields={field: ["Must be null or {type, value, description}."]})
    kind = value.get("type")
    if kind not in OFFER_TYPES:
        raise ValidationFailed(fields={f"{field}.type": ["Use fixed, percent or free_shipping."]})
    offer: dict = {"type": kind}
    if kind == "fixed":
        offer["value"] = format_amount(
            parse_amount(value.get("value"), currency, f"{field}.value", allow_zero=False),
            currency,
        )
        offer["currency"] = currency
    elif kind == "percent":
        offer["value"] = str(_check_percent(value.get("value"), f"{field}.value"))
    description = value.get("description")
    if description is not None:
        if not isinstance(description, str) or len(description) > 500:
            raise ValidationFailed(fields={f"{field}.description": ["At most 500 characters."]})
        offer["description"] = description
    return offer


def _check_cap(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1_000_000:
        raise ValidationFailed(
            fields={"max_rewards_per_referrer_per_month": ["Must be null or a whole number >= 0."]}
        )
    return value


def _check_whole(value, field: str, low: int, high: int, unit: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationFailed(
            fields={field: [f"Must be a whole number of {unit}, {low} to {high}."]}
        )
    return value


def _check_sites(value) -> list[str]:
    """Host names such as `deals.example` (a site's subdomains count too), lower case."""
    field = "coupon_sites"
    if not isinstance(value, list) or len(value) > MAX_COUPON_SITES:
        raise ValidationFailed(
            fields={field: [f"Must be a list of at most {MAX_COUPON_SITES} host names."]}
        )
    sites = []
    for site in value:
        host = site.strip().lower().rstrip(".") if isinstance(site, str) else ""
        if not _HOST.fullmatch(host):
            raise ValidationFailed(fields={field: [f"Not a host name: {site!r}."]})
        sites.append(host)
    return sorted(set(sites))


def _check_choice(value, field: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValidationFailed(fields={field: [f"Must be one of: {', '.join(choices)}."]})
    return value


def _check_messages(value) -> dict[str, str]:
    """The share message per language: `{"pl": "..."}`; a language left out (or null) gets the
    built-in message of its catalog."""
    field = "share_messages"
    if not isinstance(value, dict):
        raise ValidationFailed(fields={field: ['Must be an object such as {"pl": "..."}.']})
    messages, problems = {}, {}
    for language, text in value.items():
        if language not in LANGUAGES:
            problems[f"{field}.{language}"[:80]] = [
                f"Not a language of the pages: use {', '.join(LANGUAGES)}."
            ]
            continue
        if text is not None and not isinstance(text, str):
            problems[f"{field}.{language}"] = ["Must be a string, or null for the built-in one."]
            continue
        text = (text or "").replace("\r\n", "\n").strip()
        if not text:
            continue  # blank: the built-in message
        if len(text) > MAX_SHARE_MESSAGE or not text.replace("\n", " ").isprintable():
            problems[f"{field}.{language}"] = [
                f"At most {MAX_SHARE_MESSAGE} printable characters (line breaks allowed); "
                "the share link is added after the message."
            ]
        else:
            messages[language] = text
    if problems:
        raise ValidationFailed(fields=problems)
    return messages


def _check_notifications(value) -> dict[str, bool]:
    """The email switches: `{"reward_earned": true, ...}`, each true or false."""
    field = "notifications"
    if not isinstance(value, dict):
        raise ValidationFailed(
            fields={field: ['Must be an object such as {"reward_earned": true}.']}
        )
    problems = {}
    for kind, switch in value.items():
        if kind not in NOTIFICATION_KINDS:
            problems[f"{field}.{kind}"[:80]] = [
                f"Not a kind of email: use {', '.join(NOTIFICATION_KINDS)}."
            ]
        elif not isinstance(switch, bool):
            problems[f"{field}.{kind}"] = ["Must be true or false."]
    if problems:
        raise ValidationFailed(fields=problems)
    return value


def update(changes: dict, actor: str | None = None) -> dict:
    """Apply some settings; the result is validated as a whole and saved at once, or not at all.

    Nested settings that are sets of parts (`share_messages`, `notifications`) are merged: a
    part left out keeps its value. Raises ValidationFailed naming every bad field (a fixed
    amount is checked against the currency, so changing the currency to JPY with a reward of
    "10.50" fails). With an `actor`, the change is audited: the settings sent, before and after.
    """
    with unit_of_work() as unit:
        after = _update(unit, changes, actor)
        unit.memo.pop("program_settings", None)  # a step that goes on in the unit reads anew
    current_app.extensions["program_cache"].pop("expires", None)  # read anew; kept if it cannot be
    return after


def _update(unit, changes: dict, actor: str | None) -> dict:
    program = _program()
    before = as_dict(program)
    merged = {**before, **changes}
    for field in ("share_messages", "notifications"):  # a part left out keeps its value
        if isinstance(changes.get(field), dict):
            merged[field] = {**before[field], **changes[field]}
    problems: dict[str, list[str]] = {}

    def check(fn, *args):
        try:
            return fn(*args)
        except ValidationFailed as error:
            problems.update(error.fields or {})
            return None

    currency = check(check_currency, merged["currency"]) or program.currency
    values = {
        "landing_url": check(check_url, merged["landing_url"], "landing_url"),
        "currency": currency,
        "friend_offer": check(_check_offer, merged["friend_offer"], currency),
        "min_order_amount": check(
            parse_amount, merged["min_order_amount"], currency, "min_order_amount"
        ),
        "auto_approve_max_amount": None
        if merged["auto_approve_max_amount"] is None
        else check(
            parse_amount, merged["auto_approve_max_amount"], currency, "auto_approve_max_amount"
        ),
        "max_rewards_per_referrer_per_month": check(
            _check_cap, merged["max_rewards_per_referrer_per_month"]
        ),
    }
    for field in ("attribution_window_days", "conversion_window_days", "hold_days"):
        values[field] = check(_check_days, merged[field], field)
    for who in ("referrer", "friend"):
        checked = check(_check_reward, merged[f"{who}_reward"], currency, f"{who}_reward")
        if checked:
            values[f"{who}_reward_type"], values[f"{who}_reward_value"] = checked
    values["milestones"] = check(check_milestones, merged["milestones"], currency)
    values["velocity_max_signups"] = check(
        _check_whole, merged["velocity_max_signups"], "velocity_max_signups", 1, 100_000, "sign-ups"
    )
    values["velocity_window_hours"] = check(
        _check_whole, merged["velocity_window_hours"], "velocity_window_hours", 1, 24 * 90, "hours"
    )
    values["risk_retention_days"] = check(
        _check_whole, merged["risk_retention_days"], "risk_retention_days", 1, MAX_DAYS, "days"
    )
    values["coupon_sites"] = check(_check_sites, merged["coupon_sites"])
    values["landing_mode"] = check(
        _check_choice, merged["landing_mode"], "landing_mode", LANDING_MODES
    )
    values["default_locale"] = check(
        _check_choice, merged["default_locale"], "default_locale", LANGUAGES
    )
    values["share_messages"] = check(_check_messages, merged["share_messages"])
    if not isinstance(merged["paused"], bool):
        problems["paused"] = ["Must be true or false."]
    values["paused"] = merged["paused"]
    switches = check(_check_notifications, merged["notifications"]) or {}
    for kind, switch in switches.items():
        values[f"notify_{kind}"] = switch
    if problems:
        raise ValidationFailed(fields=problems)
    for key, value in values.items():
        setattr(program, key, value)
    after = as_dict(program)
    if actor is not None:
        unit.audit(
            actor,
            "program.update",
            "program",
            program.id,
            {key: before[key] for key in changes},
            {key: after[key] for key in changes},
        )
    return after

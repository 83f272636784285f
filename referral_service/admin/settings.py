"""Settings, API keys and the audit log of the admin console.

The settings form goes through the same two checks as `PATCH /api/v1/program`: the API's
`ProgramPatch` schema, then `domain.program.update` (which validates the whole set and audits
the change). Viewers read the settings and the audit log; only owners change settings and see,
create or revoke API keys.
"""

import json
import re

from flask import abort, current_app, flash, g, redirect, render_template, request, url_for

from referral_service.admin.inputs import checks_fields
from referral_service.admin.views import blp, requires
from referral_service.api.schemas import ProgramPatch
from referral_service.domain import admins, api_keys, audit, program
from referral_service.errors import NotFound, ValidationFailed, flatten_messages
from referral_service.i18n import LANGUAGE_NAMES
from referral_service.models.api_key import SCOPES
from referral_service.models.notification import NOTIFICATION_KINDS

AUDIT_PAGE_SIZE = 50
REWARD_TYPES = (
    ("fixed", "A fixed amount"),
    ("percent", "A percent of the order"),
    ("none", "None"),
)
OFFER_TYPES = (
    ("", "No offer"),
    ("fixed", "A fixed amount off"),
    ("percent", "A percent off"),
    ("free_shipping", "Free shipping"),
)
LANDING_MODES = (
    ("redirect", "Redirect straight to the landing page"),
    ("welcome", "Show a welcome page first"),
)
# each language by its own name (marked with its `lang`, so that it is read out in it)
LANGUAGE_CHOICES = tuple((code, LANGUAGE_NAMES[code], code) for code in program.LANGUAGES)
_WHOLE = re.compile(r"-?[0-9]{1,12}")
SHARE_MESSAGE_HINT = (
    f"At most {program.MAX_SHARE_MESSAGE} characters; line breaks allowed. The share link is "
    "added after the text. Blank: the built-in message."
)
# the switch of each kind of email (models/notification.py NOTIFICATION_KINDS), in words
EMAIL_KINDS = tuple(
    zip(
        NOTIFICATION_KINDS,
        (
            "Reward earned: a friend's purchase earned the referrer a reward",
            "Reward approved",
            "Reward paid: a payout batch paid the referrer",
        ),
        strict=True,
    )
)
MILESTONES_HINT = (
    "One milestone a line: the number of the referrer's converted friends, a colon, then the "
    "bonus: an amount in the program currency (5: 20.00) or a percent of the order that "
    f"reaches it (10: 50%). At most {program.MAX_MILESTONES} lines, each number once. A bonus "
    "is granted once per milestone, reversed if a refund takes the count back below it before "
    "it is paid; the monthly cap does not apply. Empty: no milestones."
)
EMAILS_GROUP = "Emails to referrers"
EMAILS_HINT = (
    "Sent by the worker in the customer's language, with an unsubscribe link; only while "
    "MAIL_URL is set."
)

# The form, in groups: (input name, label, kind, hint). An input's name is the API's field name,
# or `group.part` for a part of a nested one: the names of the API's validation messages.
# Kinds: text, url, number, checkbox, lines (a list, one item a line), milestones (one milestone a
# line, `friends: bonus`), message (a text of several lines) and choice (a select of the options
# in CHOICES).
FORM = (
    (
        "Program",
        (
            ("landing_url", "Landing page URL", "url", "Empty: the built-in /landing page."),
            ("currency", "Currency", "text", "An ISO 4217 code such as EUR."),
            ("paused", "Paused (no new rewards while paused)", "checkbox", None),
        ),
    ),
    (
        "Rewards",
        (
            ("referrer_reward.type", "Referrer's reward type", "choice", None),
            ("referrer_reward.value", "Referrer's reward value", "text", "An amount or percent."),
            ("friend_reward.type", "Friend's reward type", "choice", None),
            ("friend_reward.value", "Friend's reward value", "text", "An amount or percent."),
        ),
    ),
    (
        "Loyalty milestones",
        (("milestones", "Bonuses at the Nth converted friend", "milestones", MILESTONES_HINT),),
    ),
    (
        "Friend's offer at checkout",
        (
            ("friend_offer.type", "Offer type", "choice", None),
            ("friend_offer.value", "Offer value", "text", "For a fixed or percent offer."),
            ("friend_offer.description", "Offer description", "text", "Optional."),
        ),
    ),
    (
        "Orders and timing",
        (
            ("min_order_amount", "Minimum order amount", "text", None),
            ("attribution_window_days", "Attribution window (days)", "number", None),
            ("conversion_window_days", "Conversion window (days)", "number", None),
            ("hold_days", "Hold before approval (days)", "number", None),
        ),
    ),
    (
        "Approval and limits",
        (
            (
                "auto_approve_max_amount",
                "Auto-approve rewards up to",
                "text",
                "Empty: every reward waits for an admin.",
            ),
            (
                "max_rewards_per_referrer_per_month",
                "Monthly cap of rewards per referrer",
                "number",
                "Empty: no cap.",
            ),
        ),
    ),
    (
        "Risk",
        (
            ("velocity_max_signups", "Velocity: most sign-ups per referrer", "number", None),
            ("velocity_window_hours", "Velocity: within (hours)", "number", None),
            (
                "coupon_sites",
                "Coupon and deal sites",
                "lines",
                "One host name per line, such as deals.example.",
            ),
            ("risk_retention_days", "Keep IP and device hashes (days)", "number", None),
        ),
    ),
    (
        "Pages for customers and friends",
        (
            ("landing_mode", "Where a share link goes", "choice", None),
            (
                "default_locale",
                "Default language of the pages",
                "choice",
                "When neither the link, the customer nor the browser picks one of the pages' "
                "languages.",
            ),
            *(
                (
                    f"share_messages.{code}",
                    f"Share message: {LANGUAGE_NAMES[code]} ({code})",
                    "message",
                    SHARE_MESSAGE_HINT,
                )
                for code in program.LANGUAGES
            ),
        ),
    ),
    (
        EMAILS_GROUP,
        tuple(
            (f"notifications.{kind}", label, "checkbox", EMAILS_HINT if n == 0 else None)
            for n, (kind, label) in enumerate(EMAIL_KINDS)
        ),
    ),
)
INPUTS = [spec for _, specs in FORM for spec in specs]
# the options of each choice: (value, words) or (value, words, the language of the words)
CHOICES = {
    "referrer_reward.type": REWARD_TYPES,
    "friend_reward.type": REWARD_TYPES,
    "friend_offer.type": OFFER_TYPES,
    "landing_mode": LANDING_MODES,
    "default_locale": LANGUAGE_CHOICES,
}
# a language of each share message's input (for the browser's spelling checks)
INPUT_LANGUAGES = {f"share_messages.{code}": code for code in program.LANGUAGES}
# nested settings sent whole (from all of their inputs), and those sent per part (merged)
GROUPS = ("referrer_reward", "friend_reward", "friend_offer")
MERGED = ("share_messages", "notifications")


def input_id(name: str) -> str:
    return "set-" + name.replace(".", "-").replace("_", "-")


def form_values(settings: dict) -> dict[str, str]:
    """The settings as the strings of the form's inputs."""
    values: dict[str, str] = {}
    for name, _, kind, _ in INPUTS:
        top, _, part = name.partition(".")
        value = settings.get(top)
        if part:
            value = (value or {}).get(part)
        if kind == "checkbox":
            values[name] = "true" if value else ""
        elif kind == "lines":
            values[name] = "\n".join(value or [])
        elif kind == "milestones":
            values[name] = "\n".join(map(milestone_line, value or []))
        else:
            values[name] = "" if value is None else str(value)
    return values


def milestone_line(milestone: dict) -> str:
    """A milestone as a line of the form: `5: 20.00`, or `10: 50%` for a percent."""
    reward = milestone["reward"]
    percent = "%" if reward["type"] == "percent" else ""
    return f"{milestone['friends']}: {reward['value']}{percent}"


def parse_milestones(text: str) -> list:
    """The milestones typed, one a line (`friends: bonus`), as the API takes them; a line that
    does not read so is passed on as it is, for the checks to say what is wrong with it."""
    milestones = []
    for line in filter(None, (line.strip() for line in text.splitlines())):
        friends, _, bonus = (part.strip() for part in line.partition(":"))
        percent = bonus.endswith("%")
        milestones.append(
            {
                "friends": _whole(friends) if friends else line,
                "reward": {
                    "type": "percent" if percent else "fixed",
                    "value": bonus.removesuffix("%").strip() or None,
                },
            }
        )
    return milestones


def _whole(text: str):
    """A whole number if the text is one, else the text (the checks then say what is wrong)."""
    return int(text) if _WHOLE.fullmatch(text) else (text or None)


def parse_form(form, current: dict) -> tuple[dict[str, str], dict]:
    """`(typed, changes)`: the strings typed, and the settings that differ from `current`.

    An input missing from the form leaves its setting alone; an empty one means null.
    """
    typed = form_values(current)
    present = set()
    for name, _, kind, _ in INPUTS:
        if kind == "checkbox":
            if name in form:  # a hidden "false" comes first, the ticked box's "true" after it
                typed[name] = "true" if "true" in form.getlist(name) else ""
                present.add(name)
        elif name in form:
            text = form.get(name, "")
            if kind == "message":  # a browser sends a textarea's line breaks as CRLF
                text = text.replace("\r\n", "\n")
            typed[name] = text if kind in ("lines", "milestones") else text.strip()
            present.add(name)
    wanted: dict = {}
    for name, _, kind, _ in INPUTS:
        top, _, part = name.partition(".")
        if top in MERGED and name in present:
            # only the parts that differ; an empty one means null (back to the built-in value)
            value = bool(typed[name]) if kind == "checkbox" else typed[name] or None
            if value != (current.get(top) or {}).get(part):
                wanted.setdefault(top, {})[part] = value
            continue
        if top in GROUPS or top in MERGED or name not in present:
            continue
        text = typed[name]
        if kind == "checkbox":
            wanted[name] = bool(text)
        elif kind == "number":
            wanted[name] = _whole(text)
        elif kind == "lines":
            wanted[name] = [line.strip() for line in text.splitlines() if line.strip()]
        elif kind == "milestones":
            wanted[name] = parse_milestones(text)
        elif name == "currency":
            wanted[name] = text.upper()
        else:
            wanted[name] = text or None
    for who in ("referrer_reward", "friend_reward"):
        if f"{who}.type" in present or f"{who}.value" in present:
            kind = typed[f"{who}.type"]
            value = None if kind == "none" else typed[f"{who}.value"] or None
            wanted[who] = {"type": kind, "value": value}
    if any(f"friend_offer.{part}" in present for part in ("type", "value", "description")):
        kind = typed["friend_offer.type"]
        offer = {"type": kind} if kind else None
        if offer and kind != "free_shipping":
            offer["value"] = typed["friend_offer.value"] or None
        if offer and typed["friend_offer.description"]:
            offer["description"] = typed["friend_offer.description"]
        wanted["friend_offer"] = offer
    changes = {
        key: value
        for key, value in wanted.items()
        if key in MERGED or not _same(value, current.get(key))
    }
    return typed, changes


def _same(value, saved) -> bool:
    if isinstance(saved, dict) and isinstance(value, dict):
        saved = {key: item for key, item in saved.items() if key != "currency"}
    return value == saved


def field_messages(problems: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each problem under the input it belongs to: `coupon_sites.3` under `coupon_sites`, a
    whole `friend_offer` under its type; problems of no input under `_form`."""
    names = [name for name, _, _, _ in INPUTS]
    placed: dict[str, list[str]] = {}
    for key, messages in problems.items():
        target = next(
            (n for n in names if key == n or key.startswith(n + ".")),
            next((n for n in names if n == f"{key}.type"), "_form"),
        )
        line = re.match(r"milestones\.(\d+)", key)  # a milestone's problem names its line
        if line:
            messages = [f"Line {int(line.group(1)) + 1}: {message}" for message in messages]
        placed.setdefault(target, []).extend(messages)
    return placed


@blp.route("/settings", methods=["GET", "POST"])
@checks_fields(*(name for name, _, _, _ in INPUTS))  # the API's schema, at each input
def settings():
    current = program.settings()
    if request.method == "GET":
        return render_template(
            "admin/settings.html", form=FORM, values=form_values(current), errors={}, **_choices()
        )
    if not admins.may(g.admin, "owner"):
        abort(403)
    typed, changes = parse_form(request.form, current)
    if not changes:
        flash("Nothing to save: the settings are as they were.")
        return redirect(url_for("admin.settings"))
    problems = flatten_messages(ProgramPatch().validate(changes))
    if not problems:
        try:
            program.update(changes, f"admin:{g.admin.email}")
        except ValidationFailed as error:
            problems = error.fields or {"_form": [error.message]}
    if problems:
        errors = field_messages(problems)
        page = render_template(
            "admin/settings.html", form=FORM, values=typed, errors=errors, **_choices()
        )
        return page, 422
    changed = ", ".join(sorted(key.replace("_", " ") for key in changes))
    flash(f"Settings saved. Changed: {changed}.")
    return redirect(url_for("admin.settings"))


def _choices() -> dict:
    return {
        "choices": CHOICES,
        "input_languages": INPUT_LANGUAGES,
        "input_id": input_id,
        "labels": {name: label for name, label, _, _ in INPUTS},
        "emails_group": EMAILS_GROUP,
        "mail_ready": bool(current_app.config.get("MAIL_URL")),
    }


# --- API keys ------------------------------------------------------------------------------------


@blp.get("/keys")
@requires("owner")
def keys():
    return render_template("admin/keys.html", keys=api_keys.all_keys(), scopes=SCOPES, errors={})


@blp.post("/keys")
@requires("owner")
def create_key():
    name = request.form.get("name", "").strip()
    scope = request.form.get("scope", "")
    try:
        key = api_keys.create(name, scope, f"admin:{g.admin.email}")
    except ValidationFailed as error:
        page = render_template(
            "admin/keys.html",
            keys=api_keys.all_keys(),
            scopes=SCOPES,
            errors=error.fields or {},
            name=name,
            scope=scope,
        )
        return page, 422
    # shown on this response only: the secret is neither stored nor put in the session
    return render_template("admin/key_created.html", key=key), 201


@blp.get("/keys/<int:key_id>/revoke")
@requires("owner")
def confirm_revoke(key_id: int):
    key = next((k for k in api_keys.all_keys() if k.id == key_id), None)
    if key is None:
        abort(404)
    return render_template("admin/key_revoke.html", key=key)


@blp.post("/keys/<int:key_id>/revoke")
@requires("owner")
def revoke_key(key_id: int):
    try:
        key = api_keys.revoke_id(key_id, f"admin:{g.admin.email}")
    except NotFound as error:
        flash(error.message, "error")
    else:
        flash(f"Revoked API key {key.id} “{key.name}”: requests with it are now refused.")
    return redirect(url_for("admin.keys"))


# --- the audit log -------------------------------------------------------------------------------


def compact(value) -> str:
    """JSON on one line (the template escapes it)."""
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str)


@blp.get("/audit")
def audit_log():
    filters = {
        name: request.args.get(name, "").strip()[:120]
        for name in ("action", "actor", "subject_type", "subject_id")
    }
    cursor = request.args.get("cursor") or None
    active = {name: value for name, value in filters.items() if value}
    try:
        records, next_cursor = audit.entries(**active, cursor=cursor, limit=AUDIT_PAGE_SIZE)
    except ValidationFailed:
        flash("That page of the log no longer exists; here is the first one.")
        return redirect(url_for("admin.audit_log", **active))
    rows = [
        {
            "id": record.id,
            "at": record.at,
            "actor": record.actor,
            "action": record.action,
            "subject_type": record.subject_type,
            "subject_id": record.subject_id,
            "before": compact(record.before),
            "after": compact(record.after),
        }
        for record in records
    ]
    return render_template(
        "admin/audit.html",
        rows=rows,
        filters=filters,
        active=active,
        actions=audit.actions(),
        next_cursor=next_cursor,
        first=cursor is not None,
    )

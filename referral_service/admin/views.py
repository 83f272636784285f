"""Views of the admin console: each parses a form or query, calls one domain function, renders.

Every request but the sign-in page needs a signed-in, active admin whose session check still
matches: signing out, a new password, a new role and disabling end every session of that admin,
on the server (see domain/admins.py). A query or form holding control characters is refused
with a 400 page before any view reads it. Every POST carries
a CSRF token (Flask-WTF). Roles: a viewer reads; an approver also approves and rejects; an
owner may also change settings and keys.
"""

import functools
import time
from datetime import datetime, timedelta
from urllib.parse import unquote, urlsplit

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf.csrf import CSRFError

from referral_service.admin import inputs
from referral_service.domain import admins, customers, rewards, stats
from referral_service.domain.text import has_control
from referral_service.errors import Conflict, NotFound, Throttled, Unauthorized, ValidationFailed
from referral_service.extensions import csrf
from referral_service.models import utcnow
from referral_service.models.referral import REWARD_STATUSES
from referral_service.rate_limits import client_address

blp = Blueprint("admin", __name__, url_prefix="/admin")

OPEN_ENDPOINTS = {"admin.login"}
SESSION_KEYS = ("admin_id", "admin_check", "admin_since")
PAGE_SIZE = 50
RISK_FILTERS = {"flagged": "flagged only", "clean": "no risk signal"}
PERIODS = (7, 30, 90)

# The risk reasons of domain/fraud.py, in words an admin reads at a glance.
RISK_WORDS = {
    "same_device": "The friend signed up from the referrer's own device.",
    "same_network": "The friend signed up from the referrer's network (same IP address).",
    "disposable_email": "The friend's email is at a throwaway-mail domain.",
    "velocity": "The referrer brought in unusually many sign-ups in a short time.",
    "conversion_velocity": "The referrer's friends bought unusually fast after signing up.",
    "coupon_site": "The friend came from a coupon or deal site.",
    "similar_name": "The friend's name or email looks like the referrer's.",
}


# --- the guard: CSRF, sign-in, roles -------------------------------------------------------------


@blp.before_request
def guard():
    csrf.protect()  # POST, PUT, PATCH, DELETE need the form's token; GET passes
    g.admin = None
    since = session.get("admin_since")
    hours = current_app.config["ADMIN_SESSION_HOURS"]
    if isinstance(since, int | float) and time.time() - since < hours * 3600:
        g.admin = admins.signed_in(session.get("admin_id"), session.get("admin_check"))
    if g.admin is None:
        for key in SESSION_KEYS:
            session.pop(key, None)
        if request.endpoint not in OPEN_ENDPOINTS:
            wanted = request.full_path.rstrip("?") if request.method == "GET" else None
            return redirect(url_for("admin.login", next=wanted))
    return None


@blp.after_request
def no_store(response):
    response.headers["Cache-Control"] = "no-store"
    return response


@blp.before_request
def refuse_unreadable_input():
    """A query or form the console cannot read (see admin/inputs.py) is a 400 page."""
    raw_query = request.environ.get("QUERY_STRING", "")
    view = current_app.view_functions.get(request.endpoint)
    message = inputs.problem(raw_query, request.args, request.form, view)
    if message is not None:
        return render_template("admin/error.html", title="Request refused", message=message), 400
    return None


def requires(role: str):
    """Refuse the view (403) to admins whose role does not include `role`."""

    def decorate(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            if not admins.may(g.admin, role):
                abort(403)
            return view(*args, **kwargs)

        return wrapped

    return decorate


@blp.app_template_global()
def may(role: str) -> bool:
    return g.get("admin") is not None and admins.may(g.admin, role)


@blp.errorhandler(CSRFError)
def csrf_refused(error):
    message = "The form was missing its security token or it expired. Reload the page and retry."
    return render_template("admin/error.html", title="Form refused", message=message), 400


@blp.errorhandler(403)
def forbidden(error):
    message = "Your role does not allow this. Ask an owner for a role that does."
    return render_template("admin/error.html", title="Not allowed", message=message), 403


def _local(target: str | None, default: str) -> str:
    """`target` if it is a path inside the console, else `default`: no other host (a scheme,
    `//`, a backslash), no way out of the console (`..`, percent-encoded too) and no control
    character, percent-encoded or not (a line break would split the `Location` header)."""
    if not target or not target.startswith("/admin") or "\\" in target:
        return default
    try:
        decoded = unquote(target, errors="strict")
    except UnicodeDecodeError:  # bytes that are not UTF-8: no console page is named so
        return default
    if has_control(target) or has_control(decoded):  # in its query too
        return default
    path = unquote(urlsplit(target).path)
    inside = path == "/admin" or path.startswith("/admin/")
    if not inside or "\\" in path or has_control(path) or {".", ".."} & set(path.split("/")):
        return default
    return target


# --- sign-in and sign-out ------------------------------------------------------------------------


@blp.route("/login", methods=["GET", "POST"])
def login():
    if g.admin is not None and request.method == "GET":
        return redirect(_local(request.args.get("next"), url_for("admin.dashboard")))
    error, status, retry_after = None, 200, None
    email = request.form.get("email", "")
    if request.method == "POST":
        try:
            admin = admins.authenticate(
                email, request.form.get("password", ""), address=client_address()
            )
        except Throttled as refused:
            error, status = refused.message, 429
            retry_after = refused.retry_after
        except Unauthorized as refused:
            error, status = refused.message, 401
        else:
            session.clear()  # a fresh session: nothing from before the sign-in carries over
            session["admin_id"] = admin.id
            session["admin_check"] = admins.session_check(admin)
            session["admin_since"] = int(time.time())
            return redirect(_local(request.form.get("next"), url_for("admin.dashboard")))
    next_path = _local(request.values.get("next"), "")
    response = render_template("admin/login.html", error=error, email=email, next=next_path)
    return response, status, {"Retry-After": str(retry_after)} if retry_after else {}


@blp.post("/logout")
def logout():
    admins.sign_out(g.admin.id)  # every session of this admin ends, copied cookies too
    session.clear()
    flash("You are signed out (on every device).")
    return redirect(url_for("admin.login"))


# --- dashboard -----------------------------------------------------------------------------------


@blp.get("", strict_slashes=False)  # `/admin/` is the console too
def dashboard():
    days = inputs.whole_number(request.args.get("days", ""))  # ASCII digits, no spaces or signs
    days = days if days in PERIODS else 30
    now = utcnow()
    funnel = stats.funnel(now - timedelta(days=days), now)
    leaders = stats.top_referrers(now - timedelta(days=days), now)
    totals = stats.reward_totals()
    reward_count = sum(s["count"] for s in funnel["rewards"].values())
    steps = [
        ("Clicks", funnel["clicks"]),
        ("Sign-ups", funnel["signups"]),
        ("Conversions", funnel["conversions"]),
        ("Rewards", reward_count),
    ]
    return render_template(
        "admin/dashboard.html",
        days=days,
        periods=PERIODS,
        waiting=totals["awaiting_approval"]["count"],
        owed=totals["approved"]["amounts"],
        owed_count=totals["approved"]["count"],
        chart=bar_chart(steps),
        steps=steps,
        by_channel=funnel["by_channel"],
        leaders=leaders,
    )


def bar_chart(steps: list[tuple[str, int]]) -> dict:
    """Geometry of a horizontal bar chart: one bar per step, widths relative to the largest."""
    # narrow enough that a phone (about 350 px) shows the labels near their real size
    label_width, bar_space, bar_height, gap = 110, 220, 28, 12
    largest = max((value for _, value in steps), default=0) or 1
    bars = [
        {
            "label": label,
            "value": value,
            "y": index * (bar_height + gap),
            "width": round(bar_space * value / largest, 1),
        }
        for index, (label, value) in enumerate(steps)
    ]
    return {
        "bars": bars,
        "label_width": label_width,
        "bar_height": bar_height,
        "width": label_width + bar_space + 80,
        "height": len(steps) * (bar_height + gap) - gap,
    }


# --- the rewards queue ---------------------------------------------------------------------------


def age(since: datetime, now: datetime) -> str:
    seconds = max(0, int((now - since).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return "just now"


@blp.get("/rewards")
def reward_queue():
    status = request.args.get("status", "awaiting_approval")
    status = status if status in (*REWARD_STATUSES, "all") else "awaiting_approval"
    referrer = request.args.get("referrer", "").strip()[:128]
    risk = request.args.get("risk") if request.args.get("risk") in RISK_FILTERS else ""
    cursor = request.args.get("cursor") or None
    try:
        items, next_cursor = rewards.list_rewards(
            None if status == "all" else status, referrer or None, cursor, PAGE_SIZE, risk or None
        )
    except ValidationFailed:
        flash("That page of the queue no longer exists; here is the first one.")
        return redirect(
            url_for(
                "admin.reward_queue", status=status, referrer=referrer or None, risk=risk or None
            )
        )
    names = customers.names_of(reward.referral.friend.external_id for reward in items)
    now = utcnow()
    rows = [
        {
            **rewards.reward_dict(reward),
            "note": reward.note,
            "order_id": reward.referral.order_id,
            "referral": {"id": reward.referral_id},
            "friend": reward.referral.friend.external_id,
            "friend_name": names.get(reward.referral.friend.external_id),
            "referrer": reward.referral.referrer.external_id,
            "age": age(reward.created_at, now),
            "risk": {"score": reward.referral.risk_score},
            "risks": [RISK_WORDS.get(code, code) for code in reward.referral.risk_reasons or []],
            "open": reward.status in rewards.OPEN,
        }
        for reward in items
    ]
    return render_template(
        "admin/rewards.html",
        rows=rows,
        status=status,
        statuses=("all", *REWARD_STATUSES),
        referrer=referrer,
        risk=risk,
        risk_filters=RISK_FILTERS,
        next_cursor=next_cursor,
        here=request.full_path.rstrip("?"),
    )


@blp.post("/rewards/decide")
@requires("approver")
def decide():
    """One form for the queue: a row's Approve / Reject button, or the bulk buttons with the
    ticked rows. Rejecting asks for the reason typed in the form's reason field."""
    back = _local(request.form.get("back"), url_for("admin.reward_queue"))
    if request.form.get("approve"):
        action, chosen = "approve", [request.form["approve"]]
    elif request.form.get("reject"):
        action, chosen = "reject", [request.form["reject"]]
    elif request.form.get("bulk") in ("approve", "reject"):
        action, chosen = request.form["bulk"], request.form.getlist("reward")
    else:
        abort(400)
    ids = sorted({number for number in map(inputs.whole_number, chosen) if number is not None})
    if not ids:
        flash("Tick at least one reward first.", "error")
        return redirect(back)
    reason = request.form.get("reason", "").strip()
    if action == "reject" and not reason:
        flash("Say why the reward is rejected: write the reason, then reject.", "error")
        return redirect(back)
    actor = f"admin:{g.admin.email}"
    done, problems = [], []
    for reward_id in ids:
        try:
            if action == "approve":  # the reason field, if filled, is the approval's note
                rewards.approve(reward_id, actor, reason[:500] or None)
            else:
                rewards.reject(reward_id, actor, reason[:500])
            done.append(reward_id)
        except (Conflict, NotFound, ValidationFailed) as error:
            problems.append(error.message)
    verb = "Approved" if action == "approve" else "Rejected"
    if done:
        flash(
            f"{verb} {len(done)} reward{'s' if len(done) != 1 else ''}: "
            + ", ".join(f"#{i}" for i in done)
            + "."
        )
    for problem in problems:
        flash(problem, "error")
    return redirect(back)

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
from decimal import Decimal
from urllib.parse import unquote, urlsplit

from flask import (
    Blueprint,
    Response,
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

from referral_service.admin import charts, inputs
from referral_service.domain import admins, customers, insights, rewards, stats
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
PERIODS = (7, 30, 90, 365)  # the dashboard's periods, in days

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


def _period() -> int:
    """The dashboard's period in days, from `?days=` (one of PERIODS, else 30)."""
    days = inputs.whole_number(request.args.get("days", ""))  # ASCII digits, no spaces or signs
    return days if days in PERIODS else 30


@blp.get("", strict_slashes=False)  # `/admin/` is the console too
def dashboard():
    """Rewards waiting and owed, and the insight of the last `days` days (domain/insights.py)
    with its charts: the funnel, the K-factor by month, channels, cohorts, time to convert."""
    days = _period()
    now = utcnow()
    report = insights.insights(now - timedelta(days=days), now)
    totals = stats.reward_totals()
    return render_template(
        "admin/dashboard.html",
        days=days,
        periods=PERIODS,
        waiting=totals["awaiting_approval"]["count"],
        owed=totals["approved"]["amounts"],
        owed_count=totals["approved"]["count"],
        report=report,
        **dashboard_figures(report),
    )


@blp.get("/insights.csv")
def insights_csv():
    """The dashboard's insight of the same period as CSV (`insights.as_csv`), to download."""
    days = _period()
    now = utcnow()
    report = insights.insights(now - timedelta(days=days), now)
    name = f"insights-{report['from']:%Y-%m-%d}-to-{report['to']:%Y-%m-%d}.csv"
    return Response(
        insights.as_csv(report),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def dashboard_figures(report: dict) -> dict:
    """What the dashboard shows of an insight report, ready to draw: the headline figures in
    words (`headline`), the best channel, the referred customers' worth against the others',
    and the charts' geometry (admin/charts.py)."""
    funnel = [
        charts.Bar("Unique visitors", report["unique_visitors"]),
        charts.Bar("Sign-ups", report["friends_signed_up"]),
        charts.Bar("Conversions", report["friends_converted"]),
    ]
    funnel = [bar._replace(text=charts.number(bar.value)) for bar in funnel]
    months = [
        charts.Bar(charts.month_label(m["month"]), m["k_factor"], charts.ratio(m["k_factor"]))
        for m in report["by_month"]
    ]
    channels = [
        (
            channel["channel"] or "unknown",
            [
                charts.Bar(
                    "",
                    channel["unique_visitors"],
                    charts.number(channel["unique_visitors"]),
                    "visitors",
                ),
                charts.Bar(
                    "",
                    channel["conversions"],
                    f"{charts.number(channel['conversions'])}"
                    + (
                        f" ({charts.percent(channel['conversion_rate'])})"
                        if channel["conversion_rate"] is not None
                        else ""
                    ),
                    "conversions",
                ),
            ],
        )
        for channel in report["by_channel"]
    ]
    times = report["time_to_signup_hours"], report["time_to_convert_hours"]
    time_bars = [
        charts.Bar(label, span[key], charts.hours(span[key]), kind)
        for span, what in zip(times, ("Sign-up", "Purchase"), strict=True)
        for key, label, kind in (
            ("p50", f"{what}: half", "p50"),
            ("p90", f"{what}: 90 %", "p90"),
        )
    ]
    cohorts = report["cohorts"]
    return {
        "headline": headline(report),
        "best": best_channel(report["by_channel"]),
        "worth": worth(cohorts),
        "funnel": funnel,
        "funnel_chart": charts.bars(funnel),
        "months": months,
        "months_chart": charts.columns(months),
        "channels_chart": charts.bar_groups(channels),
        "channel_rows": [
            {**channel, "rate": charts.percent(channel["conversion_rate"])}
            for channel in report["by_channel"]
        ],
        "cohort_charts": cohort_charts(cohorts),
        "times_chart": charts.bars(time_bars, label_width=130),
        "time_bars": time_bars,
    }


def headline(report: dict) -> dict:
    """The four headline figures, each `{value, words}`: the K-factor, invites per customer,
    invite conversion rate and unique visitors, with a sentence in plain words."""
    at_start, converted = report["customers_at_start"], report["friends_converted"]
    visitors = report["unique_visitors"]
    k = report["k_factor"]
    if k is None:
        k_words = "No customers before this period, so nothing to compare the new ones with yet."
    else:
        brought = charts.ratio(k * 100, 0 if (k * 100) >= 10 or k == 0 else 1)
        k_words = f"Each 100 customers brought {brought} new customers in this period."
    per_customer = report["invites_per_customer"]
    invite_words = (
        "No customers before this period yet."
        if per_customer is None
        else f"{charts.number(visitors)} visits of share links for "
        f"{charts.number(at_start)} customers at the start."
    )
    rate = report["invite_conversion_rate"]
    rate_words = (
        "No visits of share links yet."
        if rate is None
        else f"{charts.number(converted)} of {charts.number(visitors)} visitors became buying "
        "customers."
    )
    return {
        "k_factor": {"value": charts.ratio(k), "words": k_words},
        "invites": {"value": charts.ratio(per_customer, 1), "words": invite_words},
        "rate": {"value": charts.percent(rate), "words": rate_words},
        "visitors": {
            "value": charts.number(visitors),
            "words": "People who opened a share link (bots, and the same person again within "
            "an hour, not counted).",
        },
    }


def best_channel(channels: list[dict]) -> dict | None:
    """The channel with the most conversions (insights orders them so), or None without any:
    `{channel, conversions, words}`."""
    if not channels or channels[0]["conversions"] == 0:
        return None
    best = channels[0]
    conversions = best["conversions"]
    words = f"{charts.number(conversions)} conversion{'' if conversions == 1 else 's'}"
    if best["conversion_rate"] is not None:
        words += (
            f", {charts.percent(best['conversion_rate'])} of its "
            f"{charts.number(best['unique_visitors'])} visitors"
        )
    else:
        words += " (a code typed in, no visit of a link counted)"
    return {"channel": best["channel"] or "unknown", "conversions": conversions, "words": words}


def worth(cohorts: dict) -> dict:
    """Whether referred customers are worth more than the others: `{known, revenue_change,
    words}` (`revenue_change`: of the revenue per customer, `+23 %`); `known` False when a
    cohort has fewer than insights.MIN_COHORT customers (its figures are None)."""
    referred, others = cohorts["referred"], cohorts["not_referred"]
    if referred["revenue_per_customer"] is None or others["revenue_per_customer"] is None:
        return {
            "known": False,
            "words": f"Not enough customers yet (at least {insights.MIN_COHORT} per group; "
            f"{charts.number(referred['customers'])} referred and "
            f"{charts.number(others['customers'])} others bought for the first time in this "
            "period).",
        }
    currency = referred["currency"]
    more = Decimal(referred["revenue_per_customer"]) - Decimal(others["revenue_per_customer"])
    answer = "Yes" if more > 0 else "No" if more < 0 else "The same"
    words = (
        f"{answer}: referred customers spent "
        f"{charts.money(referred['revenue_per_customer'], currency)} each in their first 90 "
        f"days, the others {charts.money(others['revenue_per_customer'], currency)}. "
        f"{charts.percent(referred['repeat_purchase_rate_90d'])} of them bought again within "
        f"90 days, against {charts.percent(others['repeat_purchase_rate_90d'])}."
    )
    return {
        "known": True,
        "revenue_change": charts.change(
            referred["revenue_per_customer"], others["revenue_per_customer"]
        ),
        "words": words,
    }


COHORT_MEASURES = (
    ("repeat_purchase_rate_90d", "Bought again within 90 days"),
    ("average_order_value", "Average order value"),
    ("revenue_per_customer", "Revenue per customer (90 days)"),
)


def cohort_charts(cohorts: dict) -> list[dict]:
    """One small chart per measure, referred beside not referred: `{key, title, chart, rows}`
    (`rows`: `(label, text)` for the table)."""
    out = []
    for key, title in COHORT_MEASURES:
        rows = []
        for name, label in (("referred", "Referred"), ("not_referred", "Not referred")):
            cohort = cohorts[name]
            value = cohort[key]
            if key == "repeat_purchase_rate_90d":
                text = charts.percent(value)
            else:
                text = charts.money(value, cohort["currency"])
            rows.append(charts.Bar(label, value, text, name.replace("_", "-")))
        out.append({"key": key, "title": title, "chart": charts.bars(rows), "rows": rows})
    return out


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

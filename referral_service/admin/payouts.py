"""Console pages for payouts: the batches, one batch with its lines and CSV, and four eyes.

Everyone signed in reads (the list, a batch, its CSV). An approver creates a batch from the
approved rewards not yet in one (all of them, or the ids typed in), approves a batch someone else
created, and marks a batch paid with the bank's reference. A batch whose total is above
`PAYOUT_APPROVAL_THRESHOLD` is paid only after a second approver's approval: the rules live in
`domain/payouts.py`, the same for the console and the API; here they only decide which buttons
show and why one does not. Each action is audited as `admin:<email>`.
"""

import re

from flask import Response, flash, g, redirect, render_template, request, url_for

from referral_service.admin.inputs import whole_number
from referral_service.admin.views import blp, requires
from referral_service.domain import payouts
from referral_service.domain.pages import MAX_ID
from referral_service.errors import Conflict, NotFound, ValidationFailed

PAGE_SIZE = 50
MAX_CHOSEN = 1000
ID = f"int(min=1, max={MAX_ID})"  # a larger id names nothing: 404 before any query
_SEPARATORS = re.compile(r"[\s,;]+")


def actor() -> str:
    return f"admin:{g.admin.email}"


def problem(error: Conflict | NotFound | ValidationFailed) -> str:
    """An error of the domain in one sentence, the fields' problems included."""
    parts = [message for messages in (error.fields or {}).values() for message in messages]
    return " ".join(parts) if parts else error.message


def not_found(message: str):
    return render_template("admin/error.html", title="Not found", message=message), 404


def chosen_ids(text: str) -> list[int] | None:
    """Reward ids typed in the form (`12, 13 14`); None when the text is not a list of ids."""
    words = [word for word in _SEPARATORS.split(text.strip()) if word]
    if len(words) > MAX_CHOSEN:
        return None
    ids = [whole_number(word) for word in words]
    return None if None in ids else sorted(set(ids))


@blp.get("/payouts")
def payouts_list():
    before = whole_number(request.args.get("before", ""))  # 1 to MAX_ID in ASCII digits, or None
    items, next_before = payouts.list_payouts(before, PAGE_SIZE)
    threshold, currency = payouts.approval_threshold()
    return render_template(
        "admin/payouts.html",
        items=items,
        next_before=next_before,
        first_page=before is None,
        waiting=payouts.waiting(),
        threshold=threshold,
        currency=currency,
    )


@blp.post("/payouts")
@requires("approver")
def payout_create():
    """A batch of all approved rewards not yet in one, or of the reward ids typed in."""
    typed = request.form.get("reward_ids", "")
    ids = chosen_ids(typed)
    if ids is None:
        flash(
            "Reward ids are whole numbers separated by commas or spaces, such as 12, 15.",
            "error",
        )
        return redirect(url_for("admin.payouts_list"))
    try:
        body = payouts.create(actor(), ids or None, all_approved=not ids)
    except (Conflict, ValidationFailed) as error:
        flash(problem(error), "error")
        return redirect(url_for("admin.payouts_list"))
    totals = ", ".join(f"{t['amount']} {t['currency']}" for t in body["totals"]) or "nothing"
    count = body["reward_count"]
    flash(f"Created payout #{body['id']}: {count} reward{'s' if count != 1 else ''}, {totals}.")
    return redirect(url_for("admin.payout_page", payout_id=body["id"]))


@blp.get(f"/payouts/<{ID}:payout_id>")
def payout_page(payout_id: int):
    try:
        batch = payouts.get(payout_id)
    except NotFound as error:
        return not_found(error.message)
    threshold, currency = payouts.approval_threshold()
    return render_template(
        "admin/payouts_detail.html",
        batch=batch,
        threshold=threshold,
        currency=currency,
        approve_refusal=payouts.approval_refusal(batch, actor()),
        paid_refusal=payouts.paid_refusal(batch),
    )


@blp.get(f"/payouts/<{ID}:payout_id>.csv")
def payout_csv(payout_id: int):
    """The same CSV as `GET /api/v1/payouts/<id>.csv`, for the bank."""
    try:
        text = payouts.as_csv(payout_id)
    except NotFound as error:
        return not_found(error.message)
    return Response(
        text,
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="payout-{payout_id}.csv"'},
    )


@blp.post(f"/payouts/<{ID}:payout_id>/approve")
@requires("approver")
def payout_approve(payout_id: int):
    try:
        payouts.approve(payout_id, actor())
    except NotFound as error:
        return not_found(error.message)
    except Conflict as error:
        flash(problem(error), "error")
    else:
        flash(f"Approved payout #{payout_id}: it may now be marked paid.")
    return redirect(url_for("admin.payout_page", payout_id=payout_id))


@blp.post(f"/payouts/<{ID}:payout_id>/mark-paid")
@requires("approver")
def payout_mark_paid(payout_id: int):
    reference = request.form.get("reference", "")
    try:
        batch = payouts.mark_paid(payout_id, reference, actor())
    except NotFound as error:
        return not_found(error.message)
    except (Conflict, ValidationFailed) as error:
        flash(problem(error), "error")
    else:
        flash(f"Payout #{payout_id} is paid, reference {batch['reference']}.")
    return redirect(url_for("admin.payout_page", payout_id=payout_id))

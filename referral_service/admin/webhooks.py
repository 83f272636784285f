"""Console pages for outbound webhooks: the endpoints, one endpoint with its delivery log.

Everyone signed in reads the endpoints (their state: active, failing since when, or disabled
and why) and each endpoint's deliveries. Owners register an endpoint (its secret is shown on
that answer only), change its URL, description and event filter, disable or enable it, rotate
its secret (shown once as well), delete it, and redeliver an event. The rules (the SSRF check,
the event types, the secret) are domain/webhooks.py's, the same as the API's; each change is
audited as `admin:<email>`.
"""

from flask import current_app, flash, g, redirect, render_template, request, url_for

from referral_service.admin.views import blp, requires
from referral_service.api.webhooks import queue_delivery
from referral_service.domain import events, webhooks
from referral_service.domain.pages import MAX_ID
from referral_service.errors import Conflict, NotFound, ValidationFailed

PAGE_SIZE = 50
ID = f"int(min=1, max={MAX_ID})"  # a larger id names nothing: 404 before any query
EVENT_CHOICES = (events.ALL, *events.EVENT_TYPES)
# the URL field's help, by WEBHOOKS_ALLOW_PRIVATE: what domain/webhooks.check_url takes
URL_HINTS = {
    False: f"An https address on the internet, such as {webhooks.EXAMPLE_URL} (private, "
    "loopback and link-local addresses are refused).",
    True: f"An http or https address, such as {webhooks.EXAMPLE_URL}. Private, loopback and "
    "link-local addresses are taken too: WEBHOOKS_ALLOW_PRIVATE is set (for development).",
}


def actor() -> str:
    return f"admin:{g.admin.email}"


def not_found(message: str):
    return render_template("admin/error.html", title="Not found", message=message), 404


def problem(error: Conflict | NotFound | ValidationFailed) -> str:
    parts = [message for messages in (error.fields or {}).values() for message in messages]
    return " ".join(parts) if parts else error.message


def url_hint() -> str:
    """The URL field's help for the running configuration."""
    return URL_HINTS[bool(current_app.config.get("WEBHOOKS_ALLOW_PRIVATE"))]


def typed() -> dict:
    """The endpoint form as typed: url, description, and the event types ticked."""
    return {
        "url": request.form.get("url", "").strip(),
        "description": request.form.get("description", ""),
        "events": [kind for kind in request.form.getlist("events") if kind in EVENT_CHOICES],
    }


def _list_page(form: dict | None = None, errors: dict | None = None, status: int = 200):
    cursor = request.args.get("cursor") or None
    try:
        items, next_cursor = webhooks.list_endpoints(cursor, PAGE_SIZE)
    except ValidationFailed:
        items, next_cursor = webhooks.list_endpoints(None, PAGE_SIZE)
    page = render_template(
        "admin/webhooks.html",
        endpoints=items,
        next_cursor=next_cursor,
        first_page=cursor is None,
        choices=EVENT_CHOICES,
        form=form or {"url": "", "description": "", "events": [events.ALL]},
        errors=errors or {},
        url_hint=url_hint(),
    )
    return page, status


@blp.get("/webhooks")
def webhooks_list():
    return _list_page()


@blp.post("/webhooks")
@requires("owner")
def webhook_create():
    form = typed()
    try:
        created = webhooks.create_endpoint(
            form["url"], form["events"], form["description"], actor()
        )
    except ValidationFailed as error:
        return _list_page(form, error.fields or {"url": [error.message]}, 422)
    # shown on this response only: the secret is stored sealed and never shown again
    page = render_template(
        "admin/webhooks_secret.html", endpoint=created.endpoint, secret=created.secret, new=True
    )
    return page, 201


def _detail_page(endpoint_id: int, form: dict | None = None, errors: dict | None = None):
    try:
        endpoint = webhooks.get_endpoint(endpoint_id)
    except NotFound as error:
        return not_found(error.message)
    cursor = request.args.get("cursor") or None
    try:
        log, next_cursor = webhooks.list_deliveries(endpoint_id, cursor, PAGE_SIZE)
    except ValidationFailed:
        log, next_cursor = webhooks.list_deliveries(endpoint_id, None, PAGE_SIZE)
    shown = form or {
        "url": endpoint.url,
        "description": endpoint.description,
        "events": list(endpoint.events),
    }
    page = render_template(
        "admin/webhooks_detail.html",
        endpoint=endpoint,
        log=log,
        next_cursor=next_cursor,
        first_page=cursor is None,
        choices=EVENT_CHOICES,
        form=shown,
        errors=errors or {},
        url_hint=url_hint(),
    )
    return page, 422 if errors else 200


@blp.get(f"/webhooks/<{ID}:endpoint_id>")
def webhook_page(endpoint_id: int):
    return _detail_page(endpoint_id)


@blp.post(f"/webhooks/<{ID}:endpoint_id>")
@requires("owner")
def webhook_update(endpoint_id: int):
    form = typed()
    try:
        webhooks.update_endpoint(endpoint_id, form, actor())
    except NotFound as error:
        return not_found(error.message)
    except ValidationFailed as error:
        return _detail_page(endpoint_id, form, error.fields or {"url": [error.message]})
    flash("Endpoint saved.")
    return redirect(url_for("admin.webhook_page", endpoint_id=endpoint_id))


@blp.post(f"/webhooks/<{ID}:endpoint_id>/disable")
@requires("owner")
def webhook_disable(endpoint_id: int):
    return _switch(endpoint_id, True, "Endpoint disabled: nothing is sent to it until enabled.")


@blp.post(f"/webhooks/<{ID}:endpoint_id>/enable")
@requires("owner")
def webhook_enable(endpoint_id: int):
    return _switch(endpoint_id, False, "Endpoint enabled: its waiting deliveries go on.")


def _switch(endpoint_id: int, disabled: bool, message: str):
    try:
        webhooks.update_endpoint(endpoint_id, {"disabled": disabled}, actor())
    except NotFound as error:
        return not_found(error.message)
    flash(message)
    return redirect(url_for("admin.webhook_page", endpoint_id=endpoint_id))


@blp.post(f"/webhooks/<{ID}:endpoint_id>/rotate")
@requires("owner")
def webhook_rotate(endpoint_id: int):
    try:
        rotated = webhooks.rotate_secret(endpoint_id, actor())
    except NotFound as error:
        return not_found(error.message)
    return render_template(
        "admin/webhooks_secret.html", endpoint=rotated.endpoint, secret=rotated.secret, new=False
    )


@blp.get(f"/webhooks/<{ID}:endpoint_id>/delete")
@requires("owner")
def webhook_confirm_delete(endpoint_id: int):
    try:
        endpoint = webhooks.get_endpoint(endpoint_id)
    except NotFound as error:
        return not_found(error.message)
    return render_template("admin/webhooks_delete.html", endpoint=endpoint)


@blp.post(f"/webhooks/<{ID}:endpoint_id>/delete")
@requires("owner")
def webhook_delete(endpoint_id: int):
    try:
        webhooks.delete_endpoint(endpoint_id, actor())
    except NotFound as error:
        flash(error.message, "error")
    else:
        flash(f"Deleted webhook endpoint {endpoint_id} and its delivery log.")
    return redirect(url_for("admin.webhooks_list"))


@blp.post(f"/webhooks/<{ID}:endpoint_id>/deliveries/<{ID}:delivery_id>/redeliver")
@requires("owner")
def webhook_redeliver(endpoint_id: int, delivery_id: int):
    try:
        delivery = webhooks.redeliver(endpoint_id, delivery_id, actor())
    except NotFound as error:
        return not_found(error.message)
    except Conflict as error:
        flash(problem(error), "error")
    else:
        queue_delivery(delivery.id)
        flash(f"Event {delivery.event_id} will be sent again shortly (the same webhook-id).")
    return redirect(url_for("admin.webhook_page", endpoint_id=endpoint_id))

"""`/api/v1/webhook-endpoints`: where events are sent, their secrets and their delivery logs."""

from flask import current_app
from flask.views import MethodView
from marshmallow import RAISE, Schema, fields, pre_dump, validate

from referral_service.api.admin import ID, actor
from referral_service.api.auth import requires
from referral_service.api.blueprint import Blueprint
from referral_service.api.schemas import (
    PageQuery,
    StrictBoolean,
    StrictSchema,
    WholeMatch,
    domain_rule,
    no_surrogates,
)
from referral_service.domain import events, webhooks
from referral_service.errors import ErrorEnvelope

blp = Blueprint(
    "webhook_endpoints",
    __name__,
    url_prefix="/api/v1/webhook-endpoints",
    description="Outbound webhooks (Standard Webhooks): endpoints, secrets, delivery logs.",
)

EVENT_CHOICES = [events.ALL, *events.EVENT_TYPES]
URL_RULE = (
    "An https URL on a public address (http and private, loopback or link-local addresses only "
    "with WEBHOOKS_ALLOW_PRIVATE=1); no user name or password, no fragment; at most "
    f"{webhooks.MAX_URL} characters."
)


def url_field(**kwargs):
    """A webhook target; the domain checks it (domain/webhooks.check_url: it resolves the host)."""
    return fields.String(
        validate=validate.Length(min=1, max=webhooks.MAX_URL),
        metadata={
            "format": "uri",
            "example": "https://shop.example/hooks",
            "description": URL_RULE,
        },
        **kwargs,
    )


def events_field(**kwargs):
    """The event filter: known types, or `["*"]`."""
    return fields.List(
        fields.String(validate=validate.Length(max=64), metadata={"enum": EVENT_CHOICES}),
        validate=[
            validate.Length(min=1, max=len(EVENT_CHOICES)),
            domain_rule(webhooks.check_events),
        ],
        metadata={
            "description": 'The event types sent to the endpoint, or `["*"]` for every type '
            "(`*` beside other types means every type too).",
            "example": ["reward.created", "reward.approved"],
        },
        **kwargs,
    )


ONE_LINE_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"  # no control character (domain/text.py)


def description_field(**kwargs):
    """One line of text, as the domain takes it (webhooks.check_description)."""
    return fields.String(
        validate=[
            validate.Length(max=webhooks.MAX_DESCRIPTION),
            WholeMatch(ONE_LINE_PATTERN, error="Must not contain control characters."),
            no_surrogates,
        ],
        metadata={"description": "A note for admins, such as what receives the events."},
        **kwargs,
    )


class EndpointIn(StrictSchema):
    """`POST /webhook-endpoints`."""

    url = url_field(required=True)
    events = events_field(required=True)
    description = description_field()


class EndpointPatch(StrictSchema):
    """`PATCH /webhook-endpoints/<id>`: the fields to change."""

    url = url_field()
    events = events_field()
    description = description_field()
    disabled = StrictBoolean(
        metadata={"description": "true stops deliveries; false starts them again."}
    )


class EndpointOut(Schema):
    """An endpoint (never its secret)."""

    id = fields.Integer(required=True)
    url = fields.String(required=True)
    events = fields.List(fields.String(), required=True)
    description = fields.String(required=True)
    disabled = fields.Boolean(required=True)
    disabled_reason = fields.String(
        allow_none=True, metadata={"description": "Why it was disabled (410, 5 days of failures)."}
    )
    disabled_at = fields.AwareDateTime(allow_none=True)
    failing_since = fields.AwareDateTime(
        allow_none=True,
        metadata={"description": "The first failed attempt since the last success, if any."},
    )
    previous_secret_until = fields.AwareDateTime(
        allow_none=True,
        metadata={"description": "Until when the secret before the last rotation also signs."},
    )
    created_at = fields.AwareDateTime(required=True)
    updated_at = fields.AwareDateTime(required=True)


class EndpointWithSecret(EndpointOut):
    """An endpoint just created, or its secret just rotated: `secret` is shown this once."""

    secret = fields.String(
        required=True,
        metadata={
            "description": "`whsec_` and the base64 of the key: copy it now.",
            "example": "whsec_...",
        },
    )

    @pre_dump
    def flatten(self, created: webhooks.CreatedEndpoint, **kwargs):
        shown = {name: getattr(created.endpoint, name) for name in EndpointOut._declared_fields}
        return {**shown, "secret": created.secret}


class EndpointPage(Schema):
    """A page of endpoints, newest first."""

    items = fields.List(fields.Nested(EndpointOut), required=True)
    next_cursor = fields.String(allow_none=True)


class AttemptOut(Schema):
    """One HTTP attempt of a delivery."""

    attempted_at = fields.AwareDateTime(required=True)
    status_code = fields.Integer(allow_none=True, metadata={"description": "None: no answer."})
    duration_ms = fields.Integer(required=True)
    error = fields.String(allow_none=True)
    next_retry_at = fields.AwareDateTime(allow_none=True, attribute="next_attempt_at")


class DeliveryOut(Schema):
    """One event to the endpoint: its state, its last attempt, and its attempts newest first."""

    id = fields.Integer(required=True, attribute="delivery.id")
    event_id = fields.String(required=True, attribute="delivery.event_id")
    event_type = fields.String(required=True, attribute="delivery.event_type")
    status = fields.String(
        required=True,
        attribute="delivery.status",
        metadata={"enum": ["pending", "delivered", "failed"]},
    )
    attempt_count = fields.Integer(required=True, attribute="delivery.attempts")
    status_code = fields.Method("_last_status", allow_none=True)
    duration_ms = fields.Method("_last_duration", allow_none=True)
    error = fields.Method("_last_error", allow_none=True)
    next_retry_at = fields.AwareDateTime(allow_none=True, attribute="delivery.next_attempt_at")
    delivered_at = fields.AwareDateTime(allow_none=True, attribute="delivery.delivered_at")
    created_at = fields.AwareDateTime(required=True, attribute="delivery.created_at")
    attempts = fields.List(fields.Nested(AttemptOut), required=True)

    def _last(self, log, name):
        return getattr(log.attempts[0], name) if log.attempts else None

    def _last_status(self, log):
        return self._last(log, "status_code")

    def _last_duration(self, log):
        return self._last(log, "duration_ms")

    def _last_error(self, log):
        return self._last(log, "error")


class DeliveryPage(Schema):
    """A page of deliveries, newest first."""

    items = fields.List(fields.Nested(DeliveryOut), required=True)
    next_cursor = fields.String(allow_none=True)


class Accepted(Schema):
    """A redelivery queued."""

    delivery_id = fields.Integer(required=True)
    status = fields.String(required=True)
    next_retry_at = fields.AwareDateTime(allow_none=True)


def queue_delivery(delivery_id: int) -> None:
    """Ask the task queue for an attempt now, when the app has one (else the worker's sweep of
    due deliveries finds it)."""
    tasks = current_app.extensions.get("tasks")
    if tasks is not None:
        tasks.deliver(delivery_id)


NOT_FOUND = {"schema": ErrorEnvelope, "description": "No such endpoint."}


@blp.route("")
class Endpoints(MethodView):
    """Webhook endpoints."""

    @requires(blp, "admin")
    @blp.arguments(PageQuery(), location="query", unknown=RAISE)
    @blp.response(200, EndpointPage)
    def get(self, query):
        """A page of endpoints, newest first."""
        items, next_cursor = webhooks.list_endpoints(**query)
        return {"items": items, "next_cursor": next_cursor}

    @requires(blp, "admin")
    @blp.arguments(EndpointIn())
    @blp.response(201, EndpointWithSecret)
    def post(self, body):
        """Register an endpoint; the answer holds its signing `secret`, shown this once
        (audited)."""
        return webhooks.create_endpoint(
            body["url"], body["events"], body.get("description"), actor()
        )


@blp.route(f"/<{ID}:endpoint_id>")
class Endpoint(MethodView):
    """One webhook endpoint."""

    @requires(blp, "admin")
    @blp.response(200, EndpointOut)
    @blp.alt_response(404, **NOT_FOUND)
    def get(self, endpoint_id):
        """The endpoint (never its secret)."""
        return webhooks.get_endpoint(endpoint_id)

    @requires(blp, "admin")
    @blp.arguments(EndpointPatch())
    @blp.response(200, EndpointOut)
    @blp.alt_response(404, **NOT_FOUND)
    def patch(self, changes, endpoint_id):
        """Change the URL, the event filter, the description, or disable / enable it (audited).
        Enabling clears its failing time and reason; deliveries paused meanwhile go on."""
        return webhooks.update_endpoint(endpoint_id, changes, actor())

    @requires(blp, "admin")
    @blp.response(204)
    @blp.alt_response(404, **NOT_FOUND)
    def delete(self, endpoint_id):
        """Delete the endpoint, its deliveries and their log (audited)."""
        webhooks.delete_endpoint(endpoint_id, actor())
        return ""


@blp.route(f"/<{ID}:endpoint_id>/rotate-secret")
class RotateSecret(MethodView):
    """A new signing secret."""

    @requires(blp, "admin")
    @blp.response(200, EndpointWithSecret)
    @blp.alt_response(404, **NOT_FOUND)
    def post(self, endpoint_id):
        """A new `secret`, shown this once; for 24 hours deliveries carry a signature by each
        (audited)."""
        return webhooks.rotate_secret(endpoint_id, actor())


@blp.route(f"/<{ID}:endpoint_id>/deliveries")
class Deliveries(MethodView):
    """The endpoint's delivery log."""

    @requires(blp, "admin")
    @blp.arguments(PageQuery(), location="query", unknown=RAISE)
    @blp.response(200, DeliveryPage)
    @blp.alt_response(404, **NOT_FOUND)
    def get(self, query, endpoint_id):
        """Deliveries newest first, each with its attempts: status code, duration, error and
        the next retry."""
        items, next_cursor = webhooks.list_deliveries(endpoint_id, **query)
        return {"items": items, "next_cursor": next_cursor}


@blp.route(f"/<{ID}:endpoint_id>/deliveries/<{ID}:delivery_id>/redeliver")
class Redeliver(MethodView):
    """Manual redelivery."""

    @requires(blp, "admin")
    @blp.response(202, Accepted)
    @blp.alt_response(404, schema=ErrorEnvelope, description="No such delivery of the endpoint.")
    @blp.alt_response(
        409,
        schema=ErrorEnvelope,
        description="The endpoint is disabled, or an attempt is under way.",
    )
    def post(self, endpoint_id, delivery_id):
        """Send the event again with the same `webhook-id`: the delivery is due now and starts
        the retry schedule again; its earlier attempts stay in the log (audited)."""
        delivery = webhooks.redeliver(endpoint_id, delivery_id, actor())
        queue_delivery(delivery.id)
        return {
            "delivery_id": delivery.id,
            "status": delivery.status,
            "next_retry_at": delivery.next_attempt_at,
        }

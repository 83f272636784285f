"""`/api/v1/events`: the business events, newest first; and how each object is shown in them.

An event's `data` is the object as the API shows it: the shapes registered here are the API's
own (the items of GET /rewards and GET /referrals, the customer of PUT/GET /customers/<id>
without its stats, the payout of GET /payouts/<id>), so an event and the API never disagree.
"""

import re

from flask.views import MethodView
from marshmallow import RAISE, Schema, fields, validate

from referral_service.api import schemas
from referral_service.api.admin import referral_out, reward_out
from referral_service.api.auth import requires
from referral_service.api.blueprint import Blueprint
from referral_service.api.customers import present
from referral_service.domain import customers, events, payouts
from referral_service.domain.money import from_minor
from referral_service.errors import ErrorEnvelope, NotFound
from referral_service.extensions import db
from referral_service.models import Clawback, Customer, Payout, Referral, Reward

blp = Blueprint(
    "events",
    __name__,
    url_prefix="/api/v1/events",
    description="Every business change, as an event (the body of an outbound webhook).",
)


# --- how each object is shown in an event --------------------------------------------------------


def _customer(customer: Customer) -> dict:
    return _card(customers.card_of(customer, customers.active_code(customer.id)))


def _card(card: customers.CustomerCard) -> dict:
    return schemas.CustomerOut().dump(present(card))


def _clawback(clawback: Clawback) -> dict:
    currency = clawback.currency
    return ClawbackOut().dump(
        {
            "id": clawback.id,
            "reward_id": clawback.reward_id,
            "customer_external_id": db.session.get(Customer, clawback.customer_id).external_id,
            "amount": from_minor(clawback.amount_minor, currency),
            "settled": from_minor(clawback.settled_minor, currency),
            "currency": currency,
            "created_at": clawback.created_at,
        }
    )


class ClawbackOut(schemas.Clawback):
    """A clawback as its event shows it: money to take back from a paid reward's beneficiary,
    netted off their later payouts (`settled` of it so far)."""

    id = fields.Integer(required=True)
    customer_external_id = fields.String(required=True)
    settled = fields.String(required=True)
    created_at = fields.AwareDateTime(required=True)


events.register_shape(Reward, lambda reward: schemas.RewardOut().dump(reward_out(reward)))
events.register_shape(Referral, lambda referral: schemas.ReferralOut().dump(referral_out(referral)))
events.register_shape(Customer, _customer)
events.register_shape(customers.CustomerCard, _card)
events.register_shape(Clawback, _clawback)
events.register_shape(Payout, lambda payout: schemas.PayoutOut().dump(payouts.get(payout.id)))


# --- the API -------------------------------------------------------------------------------------

EVENT_ID = re.compile(r"evt_[0-9A-Z]{26}\Z")  # anything else names no event: 404 without a query


class EventsQuery(schemas.PageQuery):
    """Filters of the events list."""

    type = fields.String(
        validate=validate.OneOf(events.EVENT_TYPES),
        metadata={
            "description": "One event type; another value is a 422 whose `fields.type` lists "
            "the valid ones.",
            "enum": list(events.EVENT_TYPES),
        },
    )


class EventOut(Schema):
    """An event: its id (the `webhook-id` of its deliveries), type, time and object."""

    id = fields.String(required=True, metadata={"example": "evt_01JD7X3V6Q9K2M4N8P0R5S7T9W"})
    type = fields.String(required=True, metadata={"enum": list(events.EVENT_TYPES)})
    created_at = fields.AwareDateTime(required=True)
    data = fields.Dict(
        required=True,
        metadata={"description": "The object as the API shows it (a reward, referral, ...)."},
    )


class EventPage(Schema):
    """A page of events."""

    items = fields.List(fields.Nested(EventOut), required=True)
    next_cursor = fields.String(allow_none=True)


@blp.route("")
class Events(MethodView):
    """Events."""

    @requires(blp, "admin")
    @blp.arguments(EventsQuery(), location="query", unknown=RAISE)
    @blp.response(200, EventPage)
    def get(self, query):
        """A page of events, newest first, of one `type` or all. Each event is what an outbound
        webhook delivers: `{id, type, created_at, data}`."""
        items, next_cursor = events.recent(**query)
        return {"items": [events.as_dict(event) for event in items], "next_cursor": next_cursor}


@blp.route("/<event_id>")
class Event(MethodView):
    """One event."""

    @requires(blp, "admin")
    @blp.response(200, EventOut)
    @blp.alt_response(404, schema=ErrorEnvelope, description="No event with this id.")
    def get(self, event_id):
        """An event by its id (`evt_...`)."""
        event = events.get(event_id) if EVENT_ID.match(event_id) else None
        if event is None:
            raise NotFound(f"No event {event_id!r}.")
        return events.as_dict(event)

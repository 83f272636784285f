"""`/api/v1/signups`, `/purchases`, `/refunds`: what the shop's checkout calls."""

from dataclasses import asdict

from flask import jsonify, make_response
from flask.views import MethodView

from referral_service.api import schemas
from referral_service.api.admin import actor
from referral_service.api.auth import requires
from referral_service.api.blueprint import Blueprint
from referral_service.api.idempotency import idempotent
from referral_service.domain import attribution, refunds, rewards
from referral_service.errors import ErrorEnvelope

blp = Blueprint(
    "checkout",
    __name__,
    url_prefix="/api/v1",
    description="Sign-ups, purchases and refunds, as the shop's checkout reports them.",
)


@blp.route("/signups")
class Signups(MethodView):
    """Sign-ups."""

    @requires(blp, "shop")
    @idempotent(blp, joins=False)  # a sign-up writes the buffered clicks first, outside its step
    @blp.arguments(schemas.SignupIn())
    @blp.response(201, schemas.SignupOut, description="Recorded.")
    @blp.alt_response(200, schema=schemas.SignupOut, description="A replay, or a later call.")
    def post(self, body):
        """Record a sign-up; attribute it to a referrer by code (preferred) or click.

        The new customer gets a referral code of their own. The same `external_id` sent again
        gets the same answer (200); the first attribution wins.
        """
        answer = attribution.signup(
            body["external_id"],
            body["email"],
            referral_code=body.get("referral_code"),
            click_id=body.get("click_id"),
            occurred_at=body.get("occurred_at"),
            name=body.get("name"),
            locale=body.get("locale"),
            ip=body.get("ip"),
            user_agent=body.get("user_agent"),
            device_id=body.get("device_id"),
        )
        data = asdict(answer)
        created = data.pop("created")
        return data, (201 if created else 200)


@blp.route("/purchases")
class Purchases(MethodView):
    """Purchases."""

    @requires(blp, "shop")
    @idempotent(blp)
    @blp.arguments(schemas.PurchaseIn())
    @blp.response(201, schemas.PurchaseOut, description="Recorded.")
    @blp.alt_response(
        200,
        schema=schemas.PurchaseOut,
        description="A replay of the same `order_id` with the same customer, amount and "
        "currency: the first answer, `reason` included.",
    )
    @blp.alt_response(404, schema=ErrorEnvelope, description="Unknown customer.")
    @blp.alt_response(
        409,
        schema=ErrorEnvelope,
        description="`order_conflict`: the `order_id` was already recorded with another "
        "customer, amount or currency (a new order needs a new `order_id`); or `conflict`: "
        "a request with the same `Idempotency-Key` is still running.",
    )
    def post(self, body):
        """Record an order; the friend's first qualifying purchase converts their referral.

        Rewards are computed exactly (fixed, or percent of the order rounded half-up to the
        currency's minor unit). Later purchases earn nothing; a purchase that earns nothing says
        why in `reason`. An `order_id` names one order for ever: sent again with the same
        customer, amount and currency it gets the first answer (200), with another it is a 409
        `order_conflict`. `occurred_at` may differ on a retry (it is not part of the order's
        identity); the first one recorded stands.
        """
        answer = rewards.record_purchase(
            body["order_id"],
            body["customer_external_id"],
            body["amount"],
            body["currency"],
            occurred_at=body.get("occurred_at"),
        )
        # the saved answer, as saved: a replay gets the very same body
        return make_response(jsonify(answer.body), 201 if answer.created else 200)


@blp.route("/refunds")
class Refunds(MethodView):
    """Refunds."""

    @requires(blp, "shop")
    @idempotent(blp)
    @blp.arguments(schemas.RefundIn())
    @blp.response(200, schemas.RefundOut, description="Applied, or a replay that changed nothing.")
    @blp.alt_response(404, schema=ErrorEnvelope, description="Unknown order.")
    @blp.alt_response(
        409, schema=ErrorEnvelope, description="A `refund_id` already applied with another amount."
    )
    @blp.alt_response(
        422,
        schema=ErrorEnvelope,
        description="An `amount` without `refund_id`, or beyond what is left of the order.",
    )
    def post(self, body):
        """Refund an order once: in full (no amount), one partial refund (`refund_id` +
        `amount`), or up to the order's cumulative `refunded_total`. Retries and late figures
        change nothing, for ever. Rewards not yet paid are reversed or recomputed; paid ones
        are clawed back from later payouts. If the friend's qualifying order is refunded in
        full before payout, the referral goes back to `attributed`."""
        return refunds.refund(
            body["order_id"],
            body.get("amount"),
            refund_id=body.get("refund_id"),
            refunded_total=body.get("refunded_total"),
            actor=actor(),
        )

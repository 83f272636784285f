"""Reading and deciding: `/referrals`, `/rewards`, `/payouts`, `/stats`."""

from flask import Response, g
from flask.views import MethodView
from marshmallow import RAISE

from referral_service.api import schemas
from referral_service.api.auth import requires
from referral_service.api.blueprint import Blueprint
from referral_service.api.idempotency import idempotent
from referral_service.domain import payouts, rewards, stats
from referral_service.domain.pages import MAX_ID
from referral_service.errors import ErrorEnvelope
from referral_service.models import Referral, Reward

blp = Blueprint(
    "admin_api",
    __name__,
    url_prefix="/api/v1",
    description="Referrals, rewards, payouts and the funnel.",
)


ID = f"int(min=1, max={MAX_ID})"  # a larger id names nothing: 404 before any query


def actor() -> str:
    """Who is acting, for the audit log: the API key's id and name."""
    return f"api-key:{g.api_key.id}:{g.api_key.name}"


def reward_out(reward: Reward) -> dict:
    """A reward as the API shows it (an item of GET /rewards): with its referral and risk."""
    referral = reward.referral
    return {
        **rewards.reward_dict(reward),
        "customer_external_id": reward.customer.external_id,
        "order_id": referral.order_id,
        "created_at": reward.created_at,
        "updated_at": reward.updated_at,
        "note": reward.note,
        "payout_id": reward.payout_id,
        "referral": {
            "id": referral.id,
            "referrer_external_id": referral.referrer.external_id,
            "status": referral.status,
            "friend_external_id": referral.friend.external_id,
            "channel": referral.channel,
            "attributed_at": referral.attributed_at,
            "converted_at": referral.converted_at,
        },
        "risk": {"score": referral.risk_score, "reasons": list(referral.risk_reasons or [])},
    }


def referral_out(referral: Referral) -> dict:
    """A referral as the API shows it (an item of GET /referrals)."""
    return stats.referral_dict(referral)


@blp.route("/referrals")
class Referrals(MethodView):
    """Referrals."""

    @requires(blp, "shop")
    @blp.arguments(schemas.ReferralsQuery(), location="query", unknown=RAISE)
    @blp.response(200, schemas.ReferralPage)
    def get(self, query):
        """A page of referrals, newest first."""
        items, next_cursor = stats.list_referrals(**query)
        return {"items": items, "next_cursor": next_cursor}


@blp.route("/rewards")
class Rewards(MethodView):
    """Rewards."""

    @requires(blp, "admin")
    @blp.arguments(schemas.RewardsQuery(), location="query", unknown=RAISE)
    @blp.response(200, schemas.RewardPage)
    def get(self, query):
        """A page of rewards, newest first, each with its referral and risk."""
        items, next_cursor = rewards.list_rewards(**query)
        return {"items": [reward_out(reward) for reward in items], "next_cursor": next_cursor}


@blp.route(f"/rewards/<{ID}:reward_id>/approve")
class Approve(MethodView):
    """Approval."""

    @requires(blp, "admin")
    @blp.arguments(schemas.ApproveIn())
    @blp.response(200, schemas.RewardOut)
    @blp.alt_response(409, schema=ErrorEnvelope, description="Not awaiting approval.")
    def post(self, body, reward_id):
        """Approve a reward that awaits approval (audited)."""
        return reward_out(rewards.approve(reward_id, actor(), body.get("note")))


@blp.route(f"/rewards/<{ID}:reward_id>/reject")
class Reject(MethodView):
    """Rejection."""

    @requires(blp, "admin")
    @blp.arguments(schemas.RejectIn())
    @blp.response(200, schemas.RewardOut)
    @blp.alt_response(409, schema=ErrorEnvelope, description="Already paid, rejected, reversed.")
    def post(self, body, reward_id):
        """Reject a reward not yet paid, with a reason (audited)."""
        return reward_out(rewards.reject(reward_id, actor(), body["reason"]))


@blp.route("/payouts")
class Payouts(MethodView):
    """Payout batches."""

    @requires(blp, "admin")
    @idempotent(blp)
    @blp.arguments(schemas.PayoutIn())
    @blp.response(201, schemas.PayoutOut)
    @blp.alt_response(
        409,
        schema=ErrorEnvelope,
        description="Nothing to pay, or a reward that is not approved or already in a batch.",
    )
    def post(self, body):
        """Batch approved rewards: `reward_ids`, or `{"all_approved": true}` (audited)."""
        return payouts.create(actor(), body.get("reward_ids"), body.get("all_approved", False))


@blp.route(f"/payouts/<{ID}:payout_id>")
class PayoutView(MethodView):
    """One payout batch."""

    @requires(blp, "admin")
    @blp.response(200, schemas.PayoutOut)
    def get(self, payout_id):
        """The batch, with one line per beneficiary and its totals."""
        return payouts.get(payout_id)


@blp.route(f"/payouts/<{ID}:payout_id>.csv")
class PayoutCsv(MethodView):
    """One payout batch as CSV."""

    @requires(blp, "admin")
    @blp.response(
        200,
        description="text/csv: one row per beneficiary, then the totals.",
        content_type="text/csv",
    )
    def get(self, payout_id):
        """The batch as CSV for the bank."""
        return Response(
            payouts.as_csv(payout_id),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="payout-{payout_id}.csv"'},
        )


@blp.route(f"/payouts/<{ID}:payout_id>/approve")
class ApprovePayout(MethodView):
    """The second approver of a batch (four eyes)."""

    @requires(blp, "admin")
    @blp.response(200, schemas.PayoutOut)
    @blp.alt_response(
        409,
        schema=ErrorEnvelope,
        description="Created with this same key, already approved, or already paid.",
    )
    def post(self, payout_id):
        """Approve a batch created by someone else, so that it may be marked paid when its
        total is above `PAYOUT_APPROVAL_THRESHOLD` (audited). Its creator cannot approve it."""
        return payouts.approve(payout_id, actor())


@blp.route(f"/payouts/<{ID}:payout_id>/mark-paid")
class MarkPaid(MethodView):
    """Payment of a batch."""

    @requires(blp, "admin")
    @blp.arguments(schemas.MarkPaidIn())
    @blp.response(200, schemas.PayoutOut)
    @blp.alt_response(
        409,
        schema=ErrorEnvelope,
        description="Already paid, or above the approval threshold and not yet approved by a "
        "second approver.",
    )
    def post(self, body, payout_id):
        """Mark the batch paid with the payment's reference; its rewards become paid. A batch
        whose total is above `PAYOUT_APPROVAL_THRESHOLD` must be approved first."""
        return payouts.mark_paid(payout_id, body["reference"], actor())


@blp.route("/stats")
class Stats(MethodView):
    """The funnel."""

    @requires(blp, "admin")
    @blp.arguments(schemas.StatsQuery(), location="query", unknown=RAISE)
    @blp.response(200, schemas.StatsOut)
    def get(self, query):
        """Clicks, sign-ups, conversions and rewards, by channel, over `[from, to)`."""
        return stats.funnel(query.get("from_"), query.get("to"))

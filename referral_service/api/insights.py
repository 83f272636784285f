"""`/api/v1/insights`: the K-factor, channels, time to convert and the referred customers' value,
as JSON or as CSV (`Accept: text/csv`)."""

from flask import Response, request
from flask.views import MethodView
from marshmallow import RAISE, Schema, fields

from referral_service.api import schemas
from referral_service.api.auth import requires
from referral_service.api.blueprint import Blueprint
from referral_service.domain import insights

blp = Blueprint(
    "insights",
    __name__,
    url_prefix="/api/v1/insights",
    description="Word-of-mouth insight: the K-factor (viral coefficient) and its two factors, the "
    "funnel by channel, time to convert, top referrers and the referred customers' value against "
    "the others'.",
)

CSV = "text/csv"


def _rate(description: str):
    return fields.Float(allow_none=True, required=True, metadata={"description": description})


class Percentiles(Schema):
    """Nearest-rank percentiles of hours (each an observed value, rounded to 0.01)."""

    p50 = fields.Float(allow_none=True, required=True)
    p90 = fields.Float(allow_none=True, required=True)
    referrals = fields.Integer(required=True, metadata={"description": "How many referrals."})


class ChannelInsight(Schema):
    """One channel's funnel."""

    channel = fields.String(required=True)
    unique_visitors = fields.Integer(required=True)
    signups = fields.Integer(required=True)
    conversions = fields.Integer(required=True)
    conversion_rate = _rate("`conversions / unique_visitors`; null without visitors.")


class MonthInsight(Schema):
    """One calendar month (UTC) of the period, cut to it."""

    month = fields.String(required=True, metadata={"description": "YYYY-MM"})
    from_ = fields.AwareDateTime(data_key="from", attribute="from", required=True)
    to = fields.AwareDateTime(required=True)
    customers_at_start = fields.Integer(required=True)
    unique_visitors = fields.Integer(required=True)
    friends_converted = fields.Integer(required=True)
    k_factor = _rate("`friends_converted / customers_at_start` of the month.")


class Cohort(Schema):
    """Customers whose first order is in the period, over their first 90 days of orders."""

    customers = fields.Integer(required=True)
    orders = fields.Integer(allow_none=True, required=True)
    repeat_purchase_rate_90d = _rate(
        "The share of the customers with a second order within 90 days of their first."
    )
    average_order_value = fields.String(
        allow_none=True,
        required=True,
        metadata={"description": "Net of refunds, in major units of `currency`."},
    )
    revenue_per_customer = fields.String(
        allow_none=True,
        required=True,
        metadata={"description": "Net of refunds, in major units of `currency`."},
    )
    currency = fields.String(required=True, metadata={"description": "The program currency."})


class Cohorts(Schema):
    """Referred customers against the others."""

    referred = fields.Nested(Cohort, required=True)
    not_referred = fields.Nested(Cohort, required=True)


class TopReferrer(Schema):
    """A referrer with conversions in the period."""

    external_id = fields.String(required=True)
    name = fields.String(allow_none=True, required=True)
    conversions = fields.Integer(required=True)


class InsightsOut(Schema):
    """The insight of a period: see the README's "Insight" section for every definition."""

    from_ = fields.AwareDateTime(data_key="from", attribute="from", required=True)
    to = fields.AwareDateTime(required=True)
    k_factor = _rate(
        "The viral coefficient: `friends_converted / customers_at_start` = "
        "`invites_per_customer * invite_conversion_rate`; null when no customer existed before "
        "`from`."
    )
    invites_per_customer = _rate("`unique_visitors / customers_at_start`.")
    invite_conversion_rate = _rate("`friends_converted / unique_visitors`.")
    customers_at_start = fields.Integer(
        required=True,
        metadata={"description": "Customers known (enrolled or signed up) before `from`."},
    )
    unique_visitors = fields.Integer(
        required=True,
        metadata={
            "description": "Human visits of share links: bots and crawlers are not counted, "
            "nor a visitor's repeat visits of the same code within an hour."
        },
    )
    friends_signed_up = fields.Integer(
        required=True, metadata={"description": "Referrals attributed in the period."}
    )
    friends_converted = fields.Integer(
        required=True,
        metadata={"description": "Referrals converted (first qualifying purchase) in the period."},
    )
    time_to_signup_hours = fields.Nested(
        Percentiles,
        required=True,
        metadata={"description": "From the visit to the sign-up, referrals attributed in it."},
    )
    time_to_convert_hours = fields.Nested(
        Percentiles,
        required=True,
        metadata={
            "description": "From the visit (the sign-up for a typed code) to the first "
            "qualifying purchase, referrals converted in the period."
        },
    )
    by_channel = fields.List(fields.Nested(ChannelInsight), required=True)
    by_month = fields.List(fields.Nested(MonthInsight), required=True)
    cohorts = fields.Nested(
        Cohorts,
        required=True,
        metadata={"description": "Every figure but `customers` is null below 5 customers."},
    )
    top_referrers = fields.List(fields.Nested(TopReferrer), required=True)


@blp.route("")
class Insights(MethodView):
    """The insight of a period."""

    @requires(blp, "admin")
    @blp.arguments(schemas.StatsQuery(), location="query", unknown=RAISE)
    @blp.response(200, InsightsOut)
    @blp.doc(
        responses={
            "200": {
                "description": "The insight, as JSON or (`Accept: text/csv`) as CSV.",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/InsightsOut"}},
                    CSV: {
                        "schema": {
                            "type": "string",
                            "description": "With `Accept: text/csv`: one figure a row, "
                            "`figure,segment,value`.",
                        }
                    },
                },
            }
        }
    )
    def get(self, query):
        """The K-factor and its factors, the funnel by channel and by month, time to convert,
        the cohorts and the top referrers of `[from, to)` (default: the last 30 days)."""
        report = insights.insights(query.get("from_"), query.get("to"))
        if request.accept_mimetypes.best_match(["application/json", CSV]) == CSV:
            return Response(
                insights.as_csv(report),
                mimetype=CSV,
                headers={"Content-Disposition": 'attachment; filename="insights.csv"'},
            )
        return report

"""`/api/v1/insights`: the K-factor, channels, time to convert and the referred customers' value,
as JSON or as CSV (`Accept: text/csv`)."""

from flask import Response, request
from flask.views import MethodView
from marshmallow import RAISE

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


@blp.route("")
class Insights(MethodView):
    """The insight of a period."""

    @requires(blp, "admin")
    @blp.arguments(schemas.StatsQuery(), location="query", unknown=RAISE)
    @blp.response(200, schemas.InsightsOut)
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

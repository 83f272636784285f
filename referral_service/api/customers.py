"""`/api/v1/customers`: enrol a customer, read them with their stats, rotate their code; and,
for admins, export everything held about them or erase them (data rights)."""

from dataclasses import asdict

from flask.views import MethodView

from referral_service.api import schemas
from referral_service.api.admin import actor
from referral_service.api.auth import requires
from referral_service.api.blueprint import Blueprint
from referral_service.domain import customers, portal, privacy
from referral_service.errors import ErrorEnvelope
from referral_service.links import portal_url, referral_block

blp = Blueprint(
    "customers",
    __name__,
    url_prefix="/api/v1/customers",
    description="Customers, their referral codes and their stats.",
)


def present(card: customers.CustomerCard) -> dict:
    """A customer card with the addresses of its code."""
    return {**asdict(card), "referral": referral_block(card.code)}


BAD_ID = {"schema": ErrorEnvelope, "description": "A malformed `external_id`."}
UNKNOWN = {"schema": ErrorEnvelope, "description": "No customer with this `external_id`."}


@blp.route("/<external_id>", parameters=[schemas.customer_id_parameter("external_id")])
class Customer(MethodView):
    """One customer, named by the shop's own id."""

    @requires(blp, "shop")
    @blp.arguments(schemas.CustomerIn())
    @blp.response(200, schemas.CustomerOut, description="Updated.")
    @blp.alt_response(201, schema=schemas.CustomerOut, description="Enrolled.")
    def put(self, body, external_id):
        """Enrol a customer, or replace their details; a new customer gets a referral code."""
        card = customers.enrol(external_id, body["email"], body.get("name"), body.get("locale"))
        return present(card), (201 if card.created else 200)

    @requires(blp, "shop")
    @blp.response(200, schemas.CustomerWithStats)
    @blp.alt_response(404, **UNKNOWN)
    @blp.alt_response(422, **BAD_ID)
    def get(self, external_id):
        """A customer, their referral block and their stats."""
        return present(customers.get(external_id))

    @requires(blp, "admin")
    @blp.response(200, schemas.CustomerWithStats, description="Erased (or erased before).")
    @blp.alt_response(404, **UNKNOWN)
    @blp.alt_response(422, **BAD_ID)
    def delete(self, external_id):
        """Erase the person (admin): their email, name, locale and risk evidence are removed
        everywhere, payouts and their CSV included, while the money ledger (rewards, payouts,
        clawbacks, audit log) stays whole. Answers the customer as `GET` shows them from now on:
        `email` and `name` null, `erased_at` set. Erasing again changes nothing (audited once).
        """
        return present(privacy.erase(external_id, actor()))


@blp.route("/<external_id>/export", parameters=[schemas.customer_id_parameter("external_id")])
class Export(MethodView):
    """Everything held about a customer."""

    @requires(blp, "admin")
    @blp.response(200, schemas.CustomerExport)
    @blp.alt_response(404, **UNKNOWN)
    @blp.alt_response(422, **BAD_ID)
    def get(self, external_id):
        """Everything held about the person, as JSON (admin): their details, codes, the visits
        of their links (counted), their sign-up and its risk evidence (keyed hashes), referrals
        (other people by id only), purchases, refunds, rewards, clawbacks, their payout lines,
        emails, opt-out and the audit records about them."""
        return privacy.export(external_id)


@blp.route(
    "/<external_id>/referral-code/rotate",
    parameters=[schemas.customer_id_parameter("external_id")],
)
class RotateCode(MethodView):
    """A customer's code rotation."""

    @requires(blp, "shop")
    @blp.response(200, schemas.ReferralBlock)
    @blp.alt_response(404, **UNKNOWN)
    @blp.alt_response(422, **BAD_ID)
    def post(self, external_id):
        """Revoke the customer's code and issue a new one; the old code no longer attributes."""
        return referral_block(customers.rotate_code(external_id).code)


@blp.route(
    "/<external_id>/portal-link",
    parameters=[schemas.customer_id_parameter("external_id")],
)
class PortalLink(MethodView):
    """A link to the customer's share page."""

    @requires(blp, "shop")
    @blp.arguments(schemas.PortalLinkIn(), required=False)
    @blp.response(200, schemas.PortalLinkOut)
    @blp.alt_response(404, **UNKNOWN)
    @blp.alt_response(422, schema=ErrorEnvelope, description="A malformed id or `expires_in`.")
    def post(self, body, external_id):
        """A signed link to the customer's share page that works for `expires_in` seconds.

        The page shows the customer's code, share link, QR code and share buttons, their friends'
        progress and their rewards, in their language. Links are not stored: send a new one
        whenever the customer needs it. An expired or forged link shows a friendly page (410 or
        404).
        """
        link = portal.issue_link(external_id, (body or {}).get("expires_in"))
        return {"url": portal_url(link.token), "expires_at": link.expires_at}

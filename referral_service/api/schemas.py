"""Request and response schemas of the API; field rules come from the domain."""

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from referral_service.domain import customers, program
from referral_service.domain.money import CURRENCIES
from referral_service.errors import ValidationFailed


class StrictSchema(Schema):
    """Unknown fields are an error, not silently dropped."""

    class Meta:
        unknown = RAISE


def domain_rule(check):
    """A marshmallow validator from a domain check that raises ValidationFailed."""

    def validator(value):
        try:
            check(value)
        except ValidationFailed as error:
            raise ValidationError([m for ms in (error.fields or {}).values() for m in ms]) from None

    return validator


def text(max_length: int, validate_also=None, **kwargs):
    """A string with no NUL or other control characters, of at most `max_length` characters."""
    rules = [
        validate.Length(max=max_length),
        validate.Regexp(
            r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$", error="Must not contain control characters."
        ),
    ]
    return fields.String(validate=[*rules, *([validate_also] if validate_also else [])], **kwargs)


# --- customers ------------------------------------------------------------------------------------


class CustomerIn(StrictSchema):
    """`PUT /customers/<external_id>`: the whole customer (fields left out are cleared)."""

    email = text(
        320,
        required=True,
        validate_also=domain_rule(customers.check_email),
        metadata={"example": "ada@example.com"},
    )
    name = text(customers.MAX_NAME, allow_none=True, metadata={"example": "Ada Kowalska"})
    locale = text(
        35,
        allow_none=True,
        validate_also=domain_rule(customers.check_locale),
        metadata={"example": "pl"},
    )


class ReferralBlock(Schema):
    """A customer's code and where to share it."""

    code = fields.String(required=True, metadata={"example": "7KQ3M9XTW2HNB4RP"})
    display_code = fields.String(
        required=True,
        metadata={
            "description": "The code grouped for reading aloud.",
            "example": "7KQ3-M9XT-W2HN-B4RP",
        },
    )
    share_url = fields.Url(required=True)
    qr_png_url = fields.Url(required=True)
    qr_svg_url = fields.Url(required=True)


class RewardCounts(Schema):
    """How many of the customer's rewards are in each state."""

    pending = fields.Integer(required=True)
    awaiting_approval = fields.Integer(required=True)
    approved = fields.Integer(required=True)
    paid = fields.Integer(required=True)


class CustomerStats(Schema):
    """A referrer's counters."""

    clicks = fields.Integer(required=True)
    signups = fields.Integer(required=True)
    conversions = fields.Integer(required=True)
    rewards = fields.Nested(RewardCounts, required=True)


class CustomerOut(Schema):
    """A customer with their referral block."""

    external_id = fields.String(required=True)
    email = fields.String(required=True)
    name = fields.String(allow_none=True)
    locale = fields.String(allow_none=True)
    created_at = fields.AwareDateTime(required=True)
    updated_at = fields.AwareDateTime(required=True)
    referral = fields.Nested(ReferralBlock, required=True)


class CustomerWithStats(CustomerOut):
    """A customer with their referral block and stats."""

    stats = fields.Nested(CustomerStats, required=True)


# --- program --------------------------------------------------------------------------------------


class RewardRule(StrictSchema):
    """A reward: a fixed amount in the program currency, a percent of the order, or none."""

    type = fields.String(required=True, validate=validate.OneOf(["fixed", "percent", "none"]))
    value = fields.String(
        allow_none=True, validate=validate.Length(max=32), metadata={"example": "10.00"}
    )


class FriendOffer(StrictSchema):
    """What the shop should give the friend at checkout."""

    type = fields.String(
        required=True, validate=validate.OneOf(["fixed", "percent", "free_shipping"])
    )
    value = fields.String(allow_none=True, validate=validate.Length(max=32))
    description = text(500, allow_none=True)
    currency = fields.String(dump_only=True)


class ProgramSettings(Schema):
    """The program settings (every field has a default)."""

    landing_url = fields.String(
        allow_none=True,
        metadata={"description": "Where share links land; null means the built-in /landing page."},
    )
    currency = fields.String(metadata={"example": "EUR"})
    referrer_reward = fields.Nested(RewardRule)
    friend_reward = fields.Nested(RewardRule)
    friend_offer = fields.Nested(FriendOffer, allow_none=True)
    min_order_amount = fields.String(metadata={"example": "0.00"})
    attribution_window_days = fields.Integer()
    conversion_window_days = fields.Integer()
    hold_days = fields.Integer()
    auto_approve_max_amount = fields.String(allow_none=True)
    max_rewards_per_referrer_per_month = fields.Integer(allow_none=True)
    paused = fields.Boolean()


class ProgramPatch(StrictSchema):
    """`PATCH /program`: any subset of the settings; the result is validated as a whole."""

    landing_url = text(2048, allow_none=True)
    currency = fields.String(
        validate=validate.OneOf(sorted(CURRENCIES), error="Unknown currency: use ISO 4217.")
    )
    referrer_reward = fields.Nested(RewardRule)
    friend_reward = fields.Nested(RewardRule)
    friend_offer = fields.Nested(FriendOffer, allow_none=True)
    min_order_amount = fields.String(validate=validate.Length(max=32))
    attribution_window_days = fields.Integer(
        strict=True, validate=validate.Range(0, program.MAX_DAYS)
    )
    conversion_window_days = fields.Integer(
        strict=True, validate=validate.Range(0, program.MAX_DAYS)
    )
    hold_days = fields.Integer(strict=True, validate=validate.Range(0, program.MAX_DAYS))
    auto_approve_max_amount = fields.String(allow_none=True, validate=validate.Length(max=32))
    max_rewards_per_referrer_per_month = fields.Integer(
        strict=True, allow_none=True, validate=validate.Range(0, 1_000_000)
    )
    paused = fields.Boolean()

    @validates_schema
    def not_empty(self, data, **kwargs):
        if not data:
            raise ValidationError("Send at least one setting to change.", "_schema")

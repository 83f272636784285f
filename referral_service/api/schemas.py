"""Request and response schemas of the API; field rules come from the domain."""

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from referral_service.domain import customers, program
from referral_service.domain.money import CURRENCIES
from referral_service.domain.pages import MAX_ID
from referral_service.errors import ValidationFailed
from referral_service.models.referral import REFERRAL_STATUSES, REWARD_STATUSES


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


# --- customers -----------------------------------------------------------------------------------


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


# --- program -------------------------------------------------------------------------------------


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


# --- checkout: sign-ups, purchases, refunds -----------------------------------------------------


class SignupIn(StrictSchema):
    """`POST /signups`: a new customer of the shop, maybe a referred friend."""

    external_id = text(128, required=True)
    email = text(320, required=True)
    name = text(200, allow_none=True)
    locale = text(35, allow_none=True)
    referral_code = text(
        64,
        allow_none=True,
        metadata={"description": "The code the friend typed (any case, with or without `-`)."},
    )
    click_id = text(
        64,
        allow_none=True,
        metadata={"description": "`click_id` from the share link's landing URL or cookie."},
    )
    ip = text(64, allow_none=True)
    user_agent = text(512, allow_none=True)
    device_id = text(128, allow_none=True)
    occurred_at = fields.AwareDateTime(allow_none=True)


class ReferralRef(Schema):
    """A referral, briefly."""

    id = fields.Integer(required=True)
    referrer_external_id = fields.String(required=True)
    status = fields.String(required=True)


class SignupOut(Schema):
    """The sign-up's attribution."""

    attributed = fields.Boolean(required=True)
    reason = fields.String(
        allow_none=True,
        metadata={
            "enum": [
                "no_referral",
                "invalid_code",
                "revoked_code",
                "unknown_click",
                "window_expired",
                "self_referral",
                "existing_customer",
                "already_referred",
                "program_paused",
            ]
        },
    )
    referral = fields.Nested(ReferralRef, allow_none=True)
    friend_offer = fields.Dict(allow_none=True)


class PurchaseIn(StrictSchema):
    """`POST /purchases`: an order of a customer."""

    order_id = text(128, required=True, validate_also=validate.Length(min=1))
    customer_external_id = text(128, required=True)
    amount = fields.Raw(
        required=True,
        metadata={
            "type": "string",
            "example": "49.90",
            "description": "Decimal string, major units.",
        },
    )
    currency = fields.String(
        required=True, validate=validate.Length(equal=3), metadata={"example": "EUR"}
    )
    occurred_at = fields.AwareDateTime(allow_none=True)


class RewardBrief(Schema):
    """A reward as the checkout sees it."""

    id = fields.Integer(required=True)
    beneficiary = fields.String(required=True, metadata={"enum": ["referrer", "friend"]})
    amount = fields.String(required=True)
    currency = fields.String(required=True)
    status = fields.String(required=True)
    available_at = fields.AwareDateTime(required=True)


class PurchaseOut(Schema):
    """The purchase's outcome."""

    order_id = fields.String(required=True)
    first_purchase = fields.Boolean(required=True)
    referral = fields.Nested(ReferralRef, allow_none=True)
    rewards = fields.List(fields.Nested(RewardBrief), required=True)


class RefundIn(StrictSchema):
    """`POST /refunds`: all of an order (no amount) or part of it."""

    order_id = text(128, required=True)
    amount = fields.Raw(allow_none=True, metadata={"type": "string", "example": "10.00"})


class Clawback(Schema):
    """Money to take back from a paid reward."""

    reward_id = fields.Integer(required=True)
    amount = fields.String(required=True)
    currency = fields.String(required=True)


class RefundOut(Schema):
    """What the refund did to the order's rewards."""

    order_id = fields.String(required=True)
    refunded = fields.String(required=True)
    remaining = fields.String(required=True)
    currency = fields.String(required=True)
    reversed_rewards = fields.List(fields.Nested(RewardBrief), required=True)
    clawbacks = fields.List(fields.Nested(Clawback), required=True)


# --- reading: referrals, rewards, stats ----------------------------------------------------------


class PageQuery(StrictSchema):
    """Cursor pagination."""

    cursor = text(64)
    limit = fields.Integer(validate=validate.Range(1, 200), metadata={"default": 50})


class ReferralsQuery(PageQuery):
    """Filters of the referrals list."""

    referrer = text(128)
    status = fields.String(validate=validate.OneOf(REFERRAL_STATUSES))


class Risk(Schema):
    """The risk signals of a referral."""

    score = fields.Integer(required=True)
    reasons = fields.List(fields.Raw(), required=True)


class ReferralOut(Schema):
    """A referral."""

    id = fields.Integer(required=True)
    referrer_external_id = fields.String(required=True)
    friend_external_id = fields.String(required=True)
    status = fields.String(required=True)
    channel = fields.String(required=True)
    attributed_at = fields.AwareDateTime(required=True)
    converted_at = fields.AwareDateTime(allow_none=True)
    order_id = fields.String(allow_none=True)
    risk = fields.Nested(Risk, required=True)


class ReferralPage(Schema):
    """A page of referrals."""

    items = fields.List(fields.Nested(ReferralOut), required=True)
    next_cursor = fields.String(allow_none=True)


class RewardsQuery(PageQuery):
    """Filters of the rewards list."""

    status = fields.String(validate=validate.OneOf(REWARD_STATUSES))
    referrer = text(
        128,
        metadata={
            "description": "The referrer's external id: the rewards of "
            "their referrals, theirs and their friends'."
        },
    )


class RewardReferral(ReferralRef):
    """The referral behind a reward."""

    friend_external_id = fields.String(required=True)
    channel = fields.String(required=True)
    attributed_at = fields.AwareDateTime(required=True)
    converted_at = fields.AwareDateTime(allow_none=True)


class RewardOut(RewardBrief):
    """A reward with its referral and risk."""

    customer_external_id = fields.String(required=True)
    order_id = fields.String(allow_none=True)
    created_at = fields.AwareDateTime(required=True)
    updated_at = fields.AwareDateTime(required=True)
    note = fields.String(allow_none=True)
    payout_id = fields.Integer(allow_none=True)
    referral = fields.Nested(RewardReferral, required=True)
    risk = fields.Nested(Risk, required=True)


class RewardPage(Schema):
    """A page of rewards."""

    items = fields.List(fields.Nested(RewardOut), required=True)
    next_cursor = fields.String(allow_none=True)


class ApproveIn(StrictSchema):
    """An optional note with an approval."""

    note = text(500, allow_none=True)


class RejectIn(StrictSchema):
    """The reason of a rejection."""

    reason = text(500, required=True, validate_also=validate.Length(min=1))


class PayoutIn(StrictSchema):
    """The rewards to pay: named, or every approved one."""

    reward_ids = fields.List(
        fields.Integer(strict=True, validate=validate.Range(1, MAX_ID)),
        validate=validate.Length(min=1, max=10000),
    )
    all_approved = fields.Boolean()


class PayoutLine(Schema):
    """What one beneficiary gets in one currency."""

    customer_external_id = fields.String(required=True)
    email = fields.String(required=True)
    name = fields.String(allow_none=True)
    rewards = fields.Integer(required=True)
    currency = fields.String(required=True)
    gross = fields.String(required=True)
    clawbacks = fields.String(required=True)
    net = fields.String(required=True)


class Money(Schema):
    """An amount in a currency."""

    amount = fields.String(required=True)
    currency = fields.String(required=True)


class PayoutOut(Schema):
    """A payout batch."""

    id = fields.Integer(required=True)
    status = fields.String(required=True, metadata={"enum": ["created", "paid"]})
    created_at = fields.AwareDateTime(required=True)
    created_by = fields.String(required=True)
    paid_at = fields.AwareDateTime(allow_none=True)
    reference = fields.String(allow_none=True)
    reward_count = fields.Integer(required=True)
    reward_ids = fields.List(fields.Integer(), required=True)
    totals = fields.List(fields.Nested(Money), required=True)
    lines = fields.List(fields.Nested(PayoutLine), required=True)


class MarkPaidIn(StrictSchema):
    """The payment's reference."""

    reference = text(200, required=True, validate_also=validate.Length(min=1))


class StatsQuery(StrictSchema):
    """The range of the funnel (default: the last 30 days)."""

    from_ = fields.AwareDateTime(data_key="from")
    to = fields.AwareDateTime()


class ChannelCounts(Schema):
    """The funnel of one channel."""

    clicks = fields.Integer(required=True)
    signups = fields.Integer(required=True)
    conversions = fields.Integer(required=True)


class RewardTotals(Schema):
    """How many rewards in a status, and their sums per currency."""

    count = fields.Integer(required=True)
    amounts = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


class StatsOut(Schema):
    """The funnel."""

    from_ = fields.AwareDateTime(data_key="from", attribute="from", required=True)
    to = fields.AwareDateTime(required=True)
    clicks = fields.Integer(required=True)
    signups = fields.Integer(required=True)
    conversions = fields.Integer(required=True)
    rewards = fields.Dict(keys=fields.String(), values=fields.Nested(RewardTotals), required=True)
    by_channel = fields.Dict(
        keys=fields.String(), values=fields.Nested(ChannelCounts), required=True
    )

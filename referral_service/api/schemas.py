"""Request and response schemas of the API; field rules come from the domain.

Every string a client sends has a maximum length and no NUL or other control characters (lone
UTF-16 surrogates, which JSON can smuggle in as `\\ud800`, are refused too). Three kinds of
string carry a custom OpenAPI `format` that says what JSON Schema cannot:

* `identifier` (ids of customers and orders): printable characters only, as Python's
  `str.isprintable` (no control, formatting or separator characters but the plain space), and no
  space at either end; a customer's id has no `/` either (it is a segment of their address);
* `printable` (share messages): printable characters only;
* `person-name` (people's names): the domain's one rule for names (customers.NAME_RULE), which
  lets in the joiners, variation selectors and bidirectional marks that scripts and emoji need;
  its `pattern` states it exactly (ECMA-262 with the `u` flag);
* `locale`: a locale Babel knows, such as `pl`, `pl-PL` or `en_GB`.
"""

import re

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from referral_service.domain import customers, fraud, portal, program
from referral_service.domain.clock import CLOCK_SKEW
from referral_service.domain.money import AMOUNT_PATTERN, CURRENCIES
from referral_service.domain.pages import MAX_ID, MAX_LIMIT
from referral_service.domain.refunds import MAX_REFUND_ID
from referral_service.domain.rewards import MAX_ORDER_ID, PURCHASE_REASONS
from referral_service.errors import ValidationFailed
from referral_service.models.notification import NOTIFICATION_KINDS
from referral_service.models.program import LANDING_MODES
from referral_service.models.referral import REFERRAL_STATUSES, REWARD_KINDS, REWARD_STATUSES

# C0 controls but tab, newline and carriage return; DEL
_CONTROL = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f"
TEXT_PATTERN = rf"^[^{_CONTROL}]*$"
NOT_BLANK_PATTERN = rf"^[^{_CONTROL}]*[^{_CONTROL}\s][^{_CONTROL}]*$"
# what JSON Schema can say of `identifier`: no C0/C1 control, DEL or end spaces
IDENTIFIER_PATTERN = r"^[^\x00-\x20\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\x9f])?$"
EXTERNAL_ID_PATTERN = r"^[^\x00-\x20\x7f-\x9f/]([^\x00-\x1f\x7f-\x9f/]*[^\x00-\x20\x7f-\x9f/])?$"
MESSAGE_PATTERN = r"^[^\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"  # printable, and line breaks
LOCALE_PATTERN = r"^([A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*)?$"
EMAIL_PATTERN = (  # what email-validator adds to `format: email`: no quotes, no IP, no test TLDs
    r"^(?!.*\.(arpa|invalid|local|localhost|onion|test)$)"
    r'[^"\s@\[\]\x00-\x1f\x7f]+@[^"\s@\[\]\x00-\x1f\x7f]+\.[^"\s@\[\].\x00-\x1f\x7f]+$'
)
RULE_VALUE_PATTERN = r"^([0-9]{1,12}(\.[0-9]{1,12})?)?$"
HOST_PATTERN = r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\.?$"
URL_PATTERN = (
    r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9._~%!$&'()*+,;=:@-]+([/?#][^\x00-\x20\x7f-\x9f]*)?$"
)
SORTED_CURRENCIES = sorted(CURRENCIES)


class StrictSchema(Schema):
    """Unknown fields are an error, not silently dropped."""

    class Meta:
        unknown = RAISE


class StrictBoolean(fields.Boolean):
    """`true` or `false` only: not `"true"`, `1` or `"yes"`."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class WholeMatch(validate.Regexp):
    """validate.Regexp over the whole text: Python's `$` also matches before a final line
    break, so `^[0-9]+$` alone would take `"10\n"` (the OpenAPI `pattern` is the same)."""

    def __call__(self, value):
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class QueryInteger(fields.Integer):
    """A whole number in a query string: ASCII digits only (not `1_000`, ` 5` or `+5`)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and not (value.isascii() and value.isdigit() and len(value) < 16):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


def domain_rule(check):
    """A marshmallow validator from a domain check that raises ValidationFailed."""

    def validator(value):
        try:
            check(value)
        except ValidationFailed as error:
            raise ValidationError([m for ms in (error.fields or {}).values() for m in ms]) from None

    return validator


def no_surrogates(value: str) -> None:
    """Refuse lone UTF-16 surrogates (`"\\ud800"` in JSON): no database or hash can hold them."""
    if any("\ud800" <= char <= "\udfff" for char in value):
        raise ValidationError("Must be valid Unicode text (a lone surrogate is not).")


def printable(value: str) -> None:
    """Refuse control, formatting and separator characters other than the plain space."""
    if not value.isprintable():
        raise ValidationError("Must hold printable characters only.")


def printable_lines(value: str) -> None:
    """Printable characters and line breaks."""
    if not value.replace("\r\n", "\n").replace("\n", " ").isprintable():
        raise ValidationError("Must hold printable characters and line breaks only.")


def no_end_spaces(value: str) -> None:
    if value != value.strip():
        raise ValidationError("Must not start or end with a space.")


def text(max_length: int, validate_also=None, **kwargs):
    """A string with no NUL or other control characters, of at most `max_length` characters."""
    rules = [
        validate.Length(max=max_length),
        WholeMatch(TEXT_PATTERN, error="Must not contain control characters."),
        no_surrogates,
    ]
    return fields.String(validate=[*rules, *([validate_also] if validate_also else [])], **kwargs)


def not_blank_value(value: str) -> None:
    if not value.strip():
        raise ValidationError("Must not be blank.")


def not_blank(max_length: int, **kwargs):
    """Free text with at least one character that is not a space."""
    metadata = {"pattern": NOT_BLANK_PATTERN, **kwargs.pop("metadata", {})}
    return text(max_length, validate_also=not_blank_value, metadata=metadata, **kwargs)


def identifier(max_length: int, pattern: str = IDENTIFIER_PATTERN, **kwargs):
    """An id the shop chose: 1 to `max_length` printable characters, no space at either end."""
    metadata = {"format": "identifier", **kwargs.pop("metadata", {})}
    return fields.String(
        validate=[
            validate.Length(min=1, max=max_length),
            WholeMatch(pattern, error="Must not contain control characters or '/'."),
            printable,
            no_end_spaces,
        ],
        metadata=metadata,
        **kwargs,
    )


def customer_id(**kwargs):
    """A customer's id: an identifier without `/` (it is a segment of the customer's address)."""
    return identifier(customers.MAX_EXTERNAL_ID, pattern=EXTERNAL_ID_PATTERN, **kwargs)


def customer_id_parameter(name: str) -> dict:
    """The OpenAPI path parameter of a customer's id (flask routes cannot say its rules)."""
    return {
        "in": "path",
        "name": name,
        "required": True,
        "schema": {
            "type": "string",
            "format": "identifier",
            "minLength": 1,
            "maxLength": customers.MAX_EXTERNAL_ID,
            "pattern": EXTERNAL_ID_PATTERN,
        },
    }


def email_address(**kwargs):
    """An email address, checked as the domain checks it (at most 254 characters)."""
    return fields.String(
        validate=[
            validate.Length(max=254),
            WholeMatch(EMAIL_PATTERN, error="Not a valid email address."),
            no_surrogates,
            domain_rule(customers.check_email),
        ],
        metadata={"format": "email", "example": "ada@example.com"},
        **kwargs,
    )


def display_name(**kwargs):
    """A person's name, by the domain's one rule (customers.check_name, NAME_PATTERN).

    Its length is said in words, not as `maxLength`: a tool that folds `maxLength` into the
    pattern (Schemathesis) writes characters beyond the BMP as `\\U...` escapes, which no
    ECMA-262 validator reads.
    """
    return fields.String(
        validate=domain_rule(customers.check_name),
        metadata={
            "format": "person-name",
            "pattern": customers.NAME_PATTERN,
            "example": "Ada Kowalska",
            "description": f"A person's name of at most {customers.MAX_NAME} characters. "
            f"{customers.NAME_RULE} Spaces at either end are dropped; blank is none. The "
            "pattern is ECMA-262 with the `u` flag.",
        },
        **kwargs,
    )


def locale_code(**kwargs):
    """A locale Babel knows (`pl`, `pl-PL`, `en_GB`); empty means none."""
    return fields.String(
        validate=[
            validate.Length(max=35),
            WholeMatch(LOCALE_PATTERN, error="Not a locale code such as 'pl' or 'en-GB'."),
            domain_rule(customers.check_locale),
        ],
        metadata={"format": "locale", "example": "pl"},
        **kwargs,
    )


def money_amount(description: str, **kwargs):
    """Money in major units as a plain decimal string; its currency decides how many decimals."""
    return fields.String(
        validate=WholeMatch(
            AMOUNT_PATTERN, error='A plain decimal string in major units, e.g. "12.50".'
        ),
        metadata={"example": "49.90", "description": description},
        **kwargs,
    )


def host_names(values: list[str]) -> None:
    """Every item a host name such as `deals.example` (HOST_PATTERN)."""
    for value in values:
        if not re.fullmatch(HOST_PATTERN, value):
            raise ValidationError(f"Not a host name: {value!r}.")


def rule_value(description: str, **kwargs):
    """The value of a reward or offer rule: a decimal string whose meaning its `type` decides."""
    return fields.String(
        allow_none=True,
        validate=WholeMatch(RULE_VALUE_PATTERN, error='A plain decimal string, e.g. "10.00".'),
        metadata={"description": description, **kwargs.pop("metadata", {})},
        **kwargs,
    )


def currency_code(**kwargs):
    """A current ISO 4217 currency code, upper case (withdrawn codes such as DEM are refused)."""
    return fields.String(
        validate=validate.OneOf(
            SORTED_CURRENCIES,
            error="Unknown or withdrawn currency: use a current ISO 4217 code, e.g. EUR.",
        ),
        metadata={"example": "EUR"},
        **kwargs,
    )


def client_time(description: str, **kwargs):
    """A time the client saw, ISO 8601 with a zone."""
    return fields.AwareDateTime(metadata={"description": description}, **kwargs)


def ip_address(value: str) -> None:
    """An IPv4 or IPv6 address as written, or empty (none)."""
    no_end_spaces(value)
    domain_rule(fraud.normalize_ip)(value)


IP_SPEC = {"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}, {"enum": [""]}]}


# --- customers -----------------------------------------------------------------------------------


class CustomerIn(StrictSchema):
    """`PUT /customers/<external_id>`: the whole customer (fields left out are cleared)."""

    email = email_address(required=True)
    name = display_name(allow_none=True)
    locale = locale_code(allow_none=True)


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
    clawed_back = fields.Integer(
        required=True,
        metadata={"description": "Paid rewards with money taken back: their order was refunded."},
    )


def amounts_by_currency(description: str):
    """`{currency: "12.50"}`: sums of money per ISO 4217 currency."""
    return fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        required=True,
        metadata={"description": description},
    )


class RewardAmounts(Schema):
    """The customer's rewards in each state, summed per currency."""

    pending = amounts_by_currency("Held: refunds can still reverse them.")
    awaiting_approval = amounts_by_currency("Waiting for an admin.")
    approved = amounts_by_currency("Approved, not yet paid.")
    paid = amounts_by_currency("Paid, net of what was clawed back.")
    clawed_back = amounts_by_currency(
        "Taken back from paid rewards (refunds after payout), netted off later payouts."
    )


class CustomerStats(Schema):
    """A referrer's counters."""

    clicks = fields.Integer(required=True)
    signups = fields.Integer(required=True)
    conversions = fields.Integer(required=True)
    rewards = fields.Nested(RewardCounts, required=True)
    amounts = fields.Nested(RewardAmounts, required=True)


class CustomerOut(Schema):
    """A customer with their referral block; an erased customer (`erased_at`) has no email,
    name or locale."""

    external_id = fields.String(required=True)
    email = fields.String(
        required=True, allow_none=True, metadata={"description": "null once erased."}
    )
    name = fields.String(allow_none=True)
    locale = fields.String(allow_none=True)
    created_at = fields.AwareDateTime(required=True)
    updated_at = fields.AwareDateTime(required=True)
    erased_at = fields.AwareDateTime(
        required=True,
        allow_none=True,
        metadata={"description": "When the person's data was erased; null if it was not."},
    )
    referral = fields.Nested(ReferralBlock, required=True)


class CustomerExport(Schema):
    """Everything held about a person (times ISO 8601, money decimal strings); other people
    appear by their ids only."""

    exported_at = fields.String(required=True)
    customer = fields.Dict(
        required=True,
        metadata={
            "description": "external_id, email, name, locale, origin, created_at, updated_at, "
            "erased_at."
        },
    )
    referral_codes = fields.List(fields.Dict(), required=True)
    link_visits = fields.Dict(
        required=True,
        metadata={"description": "Visits of their links: count, by_channel, first_at, last_at."},
    )
    signup = fields.Dict(
        required=True, allow_none=True, metadata={"description": "With its evidence hashes."}
    )
    own_visits = fields.List(
        fields.Dict(), required=True, metadata={"description": "The visits they made."}
    )
    referred_by = fields.Dict(required=True, allow_none=True)
    referrals_made = fields.List(fields.Dict(), required=True)
    purchases = fields.List(fields.Dict(), required=True)
    refunds = fields.List(fields.Dict(), required=True)
    rewards = fields.List(fields.Dict(), required=True)
    clawbacks = fields.List(fields.Dict(), required=True)
    payouts = fields.List(
        fields.Dict(), required=True, metadata={"description": "With their own lines only."}
    )
    emails = fields.List(fields.Dict(), required=True)
    email_opt_out = fields.Dict(required=True, allow_none=True)
    audit = fields.List(fields.Dict(), required=True)


class PortalLinkIn(StrictSchema):
    """`POST /customers/<id>/portal-link`: how long the link works."""

    expires_in = fields.Integer(
        strict=True,
        allow_none=True,
        validate=validate.Range(portal.MIN_EXPIRES_IN, portal.MAX_EXPIRES_IN),
        metadata={
            "description": "Seconds until the link stops working: 60 to 31536000 (a year); "
            "absent or null: 30 days."
        },
    )


class PortalLinkOut(Schema):
    """A signed, expiring link to the customer's share page."""

    url = fields.String(required=True)
    expires_at = fields.AwareDateTime(required=True)


class CustomerWithStats(CustomerOut):
    """A customer with their referral block and stats."""

    stats = fields.Nested(CustomerStats, required=True)


# --- program -------------------------------------------------------------------------------------


class RewardRule(StrictSchema):
    """A reward: a fixed amount in the program currency, a percent of the order, or none."""

    type = fields.String(required=True, validate=validate.OneOf(["fixed", "percent", "none"]))
    value = rule_value(
        "fixed: an amount in the program currency; percent: above 0, at most 100, 2 decimals; "
        "none: null.",
        metadata={"example": "10.00"},
    )


class MilestoneReward(StrictSchema):
    """A milestone's reward: a fixed amount in the program currency, or a percent of the order
    that reaches the milestone."""

    type = fields.String(required=True, validate=validate.OneOf(program.MILESTONE_REWARD_TYPES))
    value = fields.String(
        required=True,
        validate=WholeMatch(RULE_VALUE_PATTERN, error='A plain decimal string, e.g. "20.00".'),
        metadata={
            "description": "fixed: an amount in the program currency; percent: above 0, at "
            "most 100, 2 decimals.",
            "example": "20.00",
        },
    )


class Milestone(StrictSchema):
    """An extra reward for the referrer at their Nth converted friend."""

    friends = fields.Integer(
        required=True,
        strict=True,
        validate=validate.Range(1, program.MAX_MILESTONE_FRIENDS),
        metadata={"description": "N: the number of the referrer's converted friends."},
    )
    reward = fields.Nested(MilestoneReward, required=True)


MILESTONES_DESCRIPTION = (
    "Loyalty milestones (“the tenth one free”): when a referrer's Nth friend converts "
    f"(N = `friends`, each N once, at most {program.MAX_MILESTONES} milestones), the referrer "
    "gets an extra reward of kind `milestone`, once per milestone, beside the referral reward: "
    "fixed, or a percent of the order that reached it, with the same hold and approval. It is "
    "reversed if a refund takes the count of converted friends back below N before it is paid "
    "(a paid one stays paid), and granted anew when the count reaches N again. The monthly cap "
    "does not apply to it. Listed by `friends` ascending."
)


class FriendOffer(StrictSchema):
    """What the shop should give the friend at checkout."""

    type = fields.String(
        required=True, validate=validate.OneOf(["fixed", "percent", "free_shipping"])
    )
    value = rule_value("fixed: an amount in the program currency; percent: above 0, at most 100.")
    description = text(500, allow_none=True)
    currency = fields.String(dump_only=True)


NotificationSwitches = StrictSchema.from_dict(
    {kind: StrictBoolean() for kind in NOTIFICATION_KINDS}, name="NotificationSwitches"
)
NotificationSwitches.__doc__ = "A switch per kind of email to referrers: true sends it."


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
    milestones = fields.List(
        fields.Nested(Milestone), metadata={"description": MILESTONES_DESCRIPTION}
    )
    velocity_max_signups = fields.Integer(
        metadata={
            "description": "More sign-ups than this through one referrer within "
            "`velocity_window_hours` flag the referral (`velocity`)."
        }
    )
    velocity_window_hours = fields.Integer()
    coupon_sites = fields.List(
        fields.String(),
        metadata={
            "description": "Host names of coupon or deal sites, beside the built-in list: "
            "a share-link visit coming from one flags the referral (`coupon_site`)."
        },
    )
    risk_retention_days = fields.Integer(
        metadata={
            "description": "Days that IP address and device hashes are kept "
            "(`referral-service risk purge` empties older ones)."
        }
    )
    landing_mode = fields.String(
        metadata={
            "description": "`redirect`: a share link goes straight to the landing page; "
            "`welcome`: it first shows the friend a welcome page naming the referrer and the "
            "friend's offer, with a button to the landing page.",
            "enum": ["redirect", "welcome"],
        }
    )
    default_locale = fields.String(
        metadata={
            "description": "The language of the share and welcome pages when neither `?lang=`, "
            "the customer's locale nor the browser's languages pick one.",
            "enum": list(program.LANGUAGES),
        }
    )
    share_messages = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        metadata={
            "description": 'The share message per language (`{"pl": "..."}`); a language '
            "not listed uses the built-in message. Share buttons add the link after it."
        },
    )
    notifications = fields.Nested(
        NotificationSwitches,
        metadata={
            "description": "Emails to referrers (sent by the worker when `MAIL_URL` is set), "
            "each off by default: `reward_earned` (a friend's purchase earned them a reward), "
            "`reward_approved`, `reward_paid` (a payout batch paid them)."
        },
    )


def share_message():
    return fields.String(
        allow_none=True,
        validate=[
            validate.Length(max=program.MAX_SHARE_MESSAGE),
            WholeMatch(MESSAGE_PATTERN, error="Must not contain control characters."),
            no_surrogates,
            printable_lines,
        ],
        metadata={"format": "printable"},
    )


ShareMessages = StrictSchema.from_dict(
    {language: share_message() for language in program.LANGUAGES}, name="ShareMessages"
)
ShareMessages.__doc__ = (
    "The share message of each language: at most 280 printable characters, line breaks allowed; "
    "the share link is added after it."
)


class ProgramPatch(StrictSchema):
    """`PATCH /program`: any subset of the settings; the result is validated as a whole."""

    landing_url = fields.String(
        allow_none=True,
        validate=[
            validate.Length(max=2048),
            WholeMatch(URL_PATTERN, error="Must be an http(s) URL."),
            no_surrogates,
        ],
        metadata={"description": "Where share links land (an http(s) URL); null: /landing."},
    )
    currency = currency_code()
    referrer_reward = fields.Nested(RewardRule)
    friend_reward = fields.Nested(RewardRule)
    friend_offer = fields.Nested(FriendOffer, allow_none=True)
    min_order_amount = money_amount("In the program currency, with at most its decimals.")
    attribution_window_days = fields.Integer(
        strict=True, validate=validate.Range(0, program.MAX_DAYS)
    )
    conversion_window_days = fields.Integer(
        strict=True, validate=validate.Range(0, program.MAX_DAYS)
    )
    hold_days = fields.Integer(strict=True, validate=validate.Range(0, program.MAX_DAYS))
    auto_approve_max_amount = money_amount(
        "In the program currency, with at most its decimals; null: every reward waits for an "
        "admin.",
        allow_none=True,
    )
    max_rewards_per_referrer_per_month = fields.Integer(
        strict=True, allow_none=True, validate=validate.Range(0, 1_000_000)
    )
    paused = StrictBoolean()
    milestones = fields.List(
        fields.Nested(Milestone),
        validate=validate.Length(max=program.MAX_MILESTONES),
        metadata={"description": "The whole list of milestones (it replaces the saved one)."},
    )
    velocity_max_signups = fields.Integer(strict=True, validate=validate.Range(1, 100_000))
    velocity_window_hours = fields.Integer(strict=True, validate=validate.Range(1, 24 * 90))
    coupon_sites = fields.List(
        fields.String(validate=validate.Length(max=253), metadata={"pattern": HOST_PATTERN}),
        validate=[validate.Length(max=program.MAX_COUPON_SITES), host_names],
    )
    risk_retention_days = fields.Integer(strict=True, validate=validate.Range(1, program.MAX_DAYS))
    landing_mode = fields.String(validate=validate.OneOf(LANDING_MODES))
    default_locale = fields.String(validate=validate.OneOf(program.LANGUAGES))
    share_messages = fields.Nested(
        ShareMessages,
        metadata={
            "description": "Share messages by language; a language left out keeps its message, "
            "null or blank gives it the built-in one."
        },
    )
    notifications = fields.Nested(
        NotificationSwitches,
        metadata={"description": "Email switches to change; a kind left out keeps its value."},
    )

    OPENAPI = {"minProperties": 1}

    @validates_schema
    def not_empty(self, data, **kwargs):
        if not data:
            raise ValidationError("Send at least one setting to change.", "_schema")


# --- checkout: sign-ups, purchases, refunds -----------------------------------------------------


class SignupIn(StrictSchema):
    """`POST /signups`: a new customer of the shop, maybe a referred friend."""

    external_id = customer_id(required=True)
    email = email_address(required=True)
    name = display_name(allow_none=True)
    locale = locale_code(allow_none=True)
    referral_code = text(
        64,
        allow_none=True,
        metadata={"description": "The code the friend typed (any case, with or without `-`)."},
    )
    click_id = text(
        128,
        allow_none=True,
        metadata={"description": "`click_id` from the share link's landing URL or cookie."},
    )
    ip = text(
        64,
        allow_none=True,
        validate_also=ip_address,
        metadata={"description": "The friend's IPv4 or IPv6 address.", **IP_SPEC},
    )
    user_agent = text(512, allow_none=True)
    device_id = text(128, allow_none=True)
    occurred_at = client_time(
        "When the friend signed up (default: now): from 2000 to at most a day from now.",
        allow_none=True,
    )


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

    order_id = identifier(MAX_ORDER_ID, required=True)
    customer_external_id = customer_id(required=True)
    amount = money_amount(
        "Decimal string in major units, with at most the currency's decimals "
        "(EUR 2, JPY 0, KWD 3).",
        required=True,
    )
    currency = currency_code(required=True)
    occurred_at = client_time(
        "When the order was placed (default: now): from 2000 to at most a day from now. The "
        "conversion window, the hold, risk signals and the referrer's monthly cap (by UTC "
        "calendar month) count by this date, not by when the order is reported.",
        allow_none=True,
    )


class RewardBrief(Schema):
    """A reward as the checkout sees it."""

    id = fields.Integer(required=True)
    beneficiary = fields.String(required=True, metadata={"enum": ["referrer", "friend"]})
    kind = fields.String(
        required=True,
        metadata={
            "enum": list(REWARD_KINDS),
            "description": "`referral`: for a friend's first purchase; `milestone`: the "
            "referrer's extra reward at their Nth converted friend (program `milestones`).",
        },
    )
    milestone_friends = fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "N of a milestone reward; null for a referral reward."},
    )
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
    reason = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "enum": [*PURCHASE_REASONS, None],
            "description": "Why the purchase earns nothing, or null when it converted the "
            "friend's referral with every reward the program gives. When several apply, the "
            "first in this order: `not_referred` (the customer was not referred, or their "
            "referral was rejected), "
            "`already_converted` (an earlier order converted the referral), `program_paused`, "
            "`outside_conversion_window` (dated before the sign-up, beyond "
            f"{CLOCK_SKEW.seconds // 60} minutes of clock skew, or after "
            "`conversion_window_days`), `currency_mismatch` (not the program's "
            "currency), `below_minimum` (under `min_order_amount`, or zero), and "
            "`monthly_cap_reached`: the referral converts and the friend's reward is granted, "
            "but the referrer already has `max_rewards_per_referrer_per_month` rewards for "
            "orders dated in that UTC month. A paused program converts nothing; the referral "
            "stays `attributed` for a later order.",
        },
    )


REFUND_FIELDS = ("refund_id", "amount", "refunded_total")


class RefundIn(StrictSchema):
    """`POST /refunds`: all of an order, one partial refund by its id, or the refunded total."""

    order_id = identifier(MAX_ORDER_ID, required=True)
    refund_id = identifier(
        MAX_REFUND_ID,
        metadata={
            "description": "The partial refund's own id at the shop or payment platform, sent "
            "with its `amount`: applied once for ever; the same id again changes nothing (200), "
            "with another amount it is a 409 `refund_conflict`."
        },
        allow_none=True,
    )
    amount = money_amount(
        "What this partial refund gives back (with its `refund_id`), at most what is left of "
        "the order, with at most its currency's decimals.",
        allow_none=True,
    )
    refunded_total = money_amount(
        "Instead of `refund_id` + `amount`: the order's refunded amount so far, as payment "
        "platforms report it. A figure at or below what is already applied changes nothing.",
        allow_none=True,
    )

    OPENAPI = {  # full (none of them), `refund_id` + `amount`, or `refunded_total` alone
        "oneOf": [
            {"not": {"anyOf": [{"required": [f]} for f in REFUND_FIELDS]}},
            {"required": ["refund_id", "amount"], "not": {"required": ["refunded_total"]}},
            {
                "required": ["refunded_total"],
                "not": {"anyOf": [{"required": ["refund_id"]}, {"required": ["amount"]}]},
            },
        ]
    }


class Clawback(Schema):
    """Money to take back from a paid reward, netted off the beneficiary's later payouts."""

    reward_id = fields.Integer(required=True)
    amount = fields.String(required=True)
    currency = fields.String(required=True)


class RefundOut(Schema):
    """The order after the refund (a replay answers the same): its rewards and clawbacks."""

    order_id = fields.String(required=True)
    currency = fields.String(required=True)
    refunded_total = fields.String(
        required=True, metadata={"description": "All that was refunded of the order so far."}
    )
    remaining = fields.String(required=True, metadata={"description": "What is left of it."})
    rewards = fields.List(
        fields.Nested(RewardBrief),
        required=True,
        metadata={"description": "The order's rewards after the refund."},
    )
    clawbacks = fields.List(
        fields.Nested(Clawback),
        required=True,
        metadata={"description": "Every clawback recorded on the order's paid rewards."},
    )


# --- reading: referrals, rewards, stats ----------------------------------------------------------


class PageQuery(StrictSchema):
    """Cursor pagination."""

    cursor = text(
        64, metadata={"description": "`next_cursor` of the previous page (an opaque token)."}
    )
    limit = QueryInteger(validate=validate.Range(1, MAX_LIMIT), metadata={"default": 50})


class ReferralsQuery(PageQuery):
    """Filters of the referrals list."""

    referrer = customer_id()
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
    referrer = customer_id(
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

    reason = not_blank(500, required=True)


class PayoutIn(StrictSchema):
    """The rewards to pay: named, or every approved one."""

    reward_ids = fields.List(
        fields.Integer(strict=True, validate=validate.Range(1, MAX_ID)),
        validate=validate.Length(min=1, max=10000),
    )
    all_approved = StrictBoolean()

    OPENAPI = {  # either `reward_ids`, or `all_approved: true` alone
        "anyOf": [
            {"required": ["reward_ids"], "properties": {"all_approved": {"enum": [False]}}},
            {
                "required": ["all_approved"],
                "properties": {"all_approved": {"enum": [True]}},
                "not": {"required": ["reward_ids"]},
            },
        ]
    }


class PayoutLine(Schema):
    """What one beneficiary gets in one currency."""

    customer_external_id = fields.String(required=True)
    email = fields.String(
        required=True, allow_none=True, metadata={"description": "null once erased."}
    )
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
    created_by = fields.String(
        required=True,
        metadata={"description": "Who created it: `api-key:<id>:<name>`, `admin:<email>`."},
    )
    approved_by = fields.String(
        allow_none=True,
        metadata={
            "description": "The second approver (never the creator); a batch above "
            "`PAYOUT_APPROVAL_THRESHOLD` is paid only once approved."
        },
    )
    approved_at = fields.AwareDateTime(allow_none=True)
    paid_at = fields.AwareDateTime(allow_none=True)
    reference = fields.String(allow_none=True)
    reward_count = fields.Integer(required=True)
    reward_ids = fields.List(fields.Integer(), required=True)
    totals = fields.List(fields.Nested(Money), required=True)
    lines = fields.List(fields.Nested(PayoutLine), required=True)


class MarkPaidIn(StrictSchema):
    """The payment's reference."""

    reference = not_blank(200, required=True)


class StatsQuery(StrictSchema):
    """The range of the funnel (default: the last 30 days)."""

    from_ = client_time(
        "Start of the range (default: 30 days before `to`), before `to`.", data_key="from"
    )
    to = client_time("End of the range, excluded (default: now).")


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
    rewards = fields.Dict(
        keys=fields.String(),
        values=fields.Nested(RewardTotals),
        required=True,
        metadata={
            "description": "By reward status, and `clawed_back`: the paid rewards with money "
            "taken back by a refund and how much. `paid` amounts are net of it."
        },
    )
    by_channel = fields.Dict(
        keys=fields.String(), values=fields.Nested(ChannelCounts), required=True
    )


# --- insight -------------------------------------------------------------------------------------


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

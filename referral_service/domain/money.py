"""Money: ISO 4217 currencies and exact decimal amounts in their minor units."""

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from babel.numbers import get_currency_precision, list_currencies

from referral_service.errors import ValidationFailed

# ISO 4217 codes for money (Babel also lists historic codes, funds and metals: leave those out)
_NOT_MONEY = {
    "XAG",
    "XAU",
    "XBA",
    "XBB",
    "XBC",
    "XBD",
    "XDR",
    "XPD",
    "XPT",
    "XSU",
    "XTS",
    "XUA",
    "XXX",
}
CURRENCIES = frozenset(code for code in list_currencies() if code not in _NOT_MONEY)
# an amount as the API takes it: digits, maybe a point and more digits; no sign, exponent or space
AMOUNT_PATTERN = r"^[0-9]{1,12}(\.[0-9]{1,12})?$"
_PLAIN_DECIMAL = re.compile(r"-?[0-9]{1,12}(\.[0-9]{1,12})?")  # the sign only for a clear message


def check_currency(value: str, field: str = "currency") -> str:
    """The upper-case ISO 4217 code; raises ValidationFailed for anything else."""
    code = value.upper() if isinstance(value, str) else ""
    if code not in CURRENCIES:
        raise ValidationFailed(
            fields={field: [f"Unknown currency {value!r}: use an ISO 4217 code."]}
        )
    return code


def minor_digits(currency: str) -> int:
    """How many decimals the currency's minor unit has (EUR 2, JPY 0, KWD 3)."""
    return get_currency_precision(currency)


def parse_amount(value, currency: str, field: str, allow_zero: bool = True) -> Decimal:
    """An exact, non-negative amount in major units with at most the currency's decimals.

    Accepts a plain decimal string ("12.50", matching AMOUNT_PATTERN but for a sign) or an int;
    raises ValidationFailed for floats, exponents ("1e3"), spaces, non-finite or negative
    numbers, too many decimals, or absurd sizes.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValidationFailed(fields={field: ['Send money as a decimal string, e.g. "12.50".']})
    if isinstance(value, str) and not _PLAIN_DECIMAL.fullmatch(value):
        raise ValidationFailed(fields={field: [f"Not a plain decimal amount: {value!r}."]})
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValidationFailed(fields={field: [f"Not a decimal amount: {value!r}."]}) from None
    if not amount.is_finite():
        raise ValidationFailed(fields={field: ["Must be a finite amount."]})
    if amount < 0 or (amount == 0 and not allow_zero):
        raise ValidationFailed(
            fields={
                field: ["Must be more than zero." if not allow_zero else "Must not be negative."]
            }
        )
    if amount >= Decimal(10) ** 12:
        raise ValidationFailed(fields={field: ["Too large."]})
    digits = minor_digits(currency)
    if amount != amount.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP):
        raise ValidationFailed(
            fields={field: [f"{currency} amounts have at most {digits} decimals."]}
        )
    return amount.quantize(Decimal(1).scaleb(-digits))


def format_amount(amount: Decimal, currency: str) -> str:
    """The amount as the API sends it: a decimal string with the currency's decimals."""
    return str(amount.quantize(Decimal(1).scaleb(-minor_digits(currency))))


def to_minor(amount: Decimal, currency: str) -> int:
    """An amount in major units as an integer of minor units (12.50 EUR -> 1250).

    An amount finer than the minor unit is rounded half-up (0.005 EUR -> 1), like every other
    rounding of money here.
    """
    return int(amount.scaleb(minor_digits(currency)).to_integral_value(rounding=ROUND_HALF_UP))


def from_minor(minor: int, currency: str) -> str:
    """Integer minor units as the API's decimal string (1250 EUR -> "12.50", 5 JPY -> "5")."""
    return str(Decimal(minor).scaleb(-minor_digits(currency)))


def percent_of(minor: int, percent: Decimal) -> int:
    """`percent` % of an amount in minor units, rounded half-up to a whole minor unit."""
    return int((Decimal(minor) * percent / 100).to_integral_value(rounding=ROUND_HALF_UP))

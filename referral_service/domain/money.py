"""Money: ISO 4217 currencies and exact decimal amounts in their minor units."""

import re
from copy import copy
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from babel import Locale
from iso4217 import Currency

from referral_service.errors import ValidationFailed

# The minor unit (decimals) of every current ISO 4217 currency, from the maintained `iso4217`
# package's copy of the ISO list. Codes with no minor unit (gold, silver, XDR, test codes) are not
# money. A display library's rounding rules are not used here: they differ from the ISO list
# (HUF, IDR and COP have 2 decimals in ISO 4217 and 0 in CLDR) and change between versions, and a
# stored amount in minor units must mean the same after every upgrade.
EXPONENTS: dict[str, int] = {
    currency.code: currency.exponent for currency in Currency if currency.exponent is not None
}
# Currencies withdrawn from ISO 4217 (its "List Three") in the last decades that a shop may still
# hold rewards in, with the minor unit they had: amounts in them are still shown, never taken.
WITHDRAWN_EXPONENTS: dict[str, int] = {
    "ANG": 2,  # Netherlands Antillean guilder, to XCG in 2025
    "BGN": 2,  # Bulgarian lev, to EUR in 2026
    "BYR": 0,  # Belarusian ruble, to BYN in 2016
    "CUC": 2,  # Cuban convertible peso, 2021
    "EEK": 2,  # Estonian kroon, to EUR in 2011
    "HRK": 2,  # Croatian kuna, to EUR in 2023
    "LTL": 2,  # Lithuanian litas, to EUR in 2015
    "LVL": 2,  # Latvian lats, to EUR in 2014
    "MRO": 2,  # Mauritanian ouguiya, to MRU in 2018
    "SKK": 2,  # Slovak koruna, to EUR in 2009
    "SLL": 2,  # Sierra Leonean leone, to SLE in 2024
    "STD": 2,  # Sao Tome and Principe dobra, to STN in 2018
    "VEF": 2,  # Venezuelan bolivar fuerte, to VES in 2018
    "ZWL": 2,  # Zimbabwe dollar, to ZWG in 2024
}
CURRENCIES = frozenset(EXPONENTS)
# an amount as the API takes it: digits, maybe a point and more digits; no sign, exponent or space
AMOUNT_PATTERN = r"^[0-9]{1,12}(\.[0-9]{1,12})?$"
_PLAIN_DECIMAL = re.compile(r"-?[0-9]{1,12}(\.[0-9]{1,12})?")  # the sign only for a clear message


def check_currency(value: str, field: str = "currency") -> str:
    """The upper-case code of a current ISO 4217 currency; raises ValidationFailed for anything
    else, withdrawn codes (DEM, HRK, BGN, ...) included."""
    code = value.upper() if isinstance(value, str) else ""
    if code not in CURRENCIES:
        if code in WITHDRAWN_EXPONENTS or _is_known_to_display(code):
            problem = f"{code} is no longer a current ISO 4217 currency: use its successor."
        else:
            problem = f"Unknown currency {value!r}: use an ISO 4217 code such as EUR."
        raise ValidationFailed(fields={field: [problem]})
    return code


def _is_known_to_display(code: str) -> bool:
    """Whether the display library knows the code (historic ones such as DEM included)."""
    return len(code) == 3 and code.isalpha() and code in Locale("en").currencies


def minor_digits(currency: str) -> int:
    """How many decimals the currency's minor unit has, from ISO 4217 (EUR 2, HUF 2, JPY 0,
    KWD 3); a withdrawn currency has the minor unit it last had. Raises KeyError for a code
    that never was a currency here (every stored code was checked by `check_currency`)."""
    digits = EXPONENTS.get(currency)
    return WITHDRAWN_EXPONENTS[currency] if digits is None else digits


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


def format_money(amount, currency: str, locale) -> str:
    """An amount in major units (a Decimal or decimal string) in a language's currency format,
    with exactly the ISO 4217 decimals of the currency: `1 234,50 Ft` in Hungarian, `¥1,234` in
    English. Babel gives the symbol, separators and pattern; the decimals are never Babel's own
    (CLDR rounds HUF to whole forints, which would hide the fillér an amount holds)."""
    locale = Locale.parse(locale)
    digits = minor_digits(currency)
    pattern = copy(locale.currency_formats["standard"])
    pattern.frac_prec = (digits, digits)
    return pattern.apply(Decimal(amount), locale, currency=currency, currency_digits=False)

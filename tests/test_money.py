import pytest
from iso4217 import Currency

from referral_service.domain import money
from referral_service.domain.money import (
    CURRENCIES,
    WITHDRAWN_EXPONENTS,
    check_currency,
    format_money,
    from_minor,
    minor_digits,
    to_minor,
)
from referral_service.errors import ValidationFailed
from tests.journey_helpers import converted_friend, enrol, set_program

# ISO 4217's minor units, where display libraries (CLDR) differ or have differed
ISO_MINOR_UNITS = {
    "HUF": 2,
    "IDR": 2,
    "COP": 2,
    "EUR": 2,
    "PLN": 2,
    "JPY": 0,
    "ISK": 0,
    "CLP": 0,
    "UGX": 0,
    "KWD": 3,
    "BHD": 3,
}


@pytest.mark.parametrize(("code", "digits"), sorted(ISO_MINOR_UNITS.items()))
def test_minor_units_are_iso_4217s(code, digits):
    assert minor_digits(code) == digits
    assert code in CURRENCIES
    assert len(from_minor(12345, code).partition(".")[2]) == digits


def test_a_forint_amount_keeps_its_filler():
    """CLDR (Babel) rounds HUF to whole forints; ISO 4217, and so a stored amount, does not."""
    assert to_minor(money.parse_amount("1234.50", "HUF", "amount"), "HUF") == 123450
    assert from_minor(123450, "HUF") == "1234.50"


@pytest.mark.parametrize("code", ["DEM", "FRF", "HRK", "ITL", "ESP", "dem"])
def test_withdrawn_currencies_are_refused(code):
    with pytest.raises(ValidationFailed) as refused:
        check_currency(code)
    [message] = refused.value.fields["currency"]
    assert "no longer a current ISO 4217 currency" in message


@pytest.mark.parametrize("code", ["XAU", "XAG", "XXX", "XTS", "XDR", "ZZZ", "EU", "", "EURO"])
def test_codes_that_are_not_money_are_refused(code):
    with pytest.raises(ValidationFailed):
        check_currency(code)


def test_withdrawn_currencies_are_read_with_their_last_minor_unit():
    """Rewards stored in a currency ISO has since withdrawn still show (never taken anew)."""
    current = {currency.code for currency in Currency}
    for code, digits in WITHDRAWN_EXPONENTS.items():
        assert code not in current, f"{code} is current again: drop it from WITHDRAWN_EXPONENTS"
        assert code not in CURRENCIES
        assert minor_digits(code) == digits
    assert from_minor(1999, "HRK") == "19.99"
    assert from_minor(7, "BYR") == "7"


@pytest.mark.parametrize(
    ("amount", "code", "locale", "shown"),
    [
        ("1234.50", "HUF", "hu", "1\xa0234,50\xa0Ft"),
        ("1234", "JPY", "en", "¥1,234"),
        ("1.234", "KWD", "en", "KWD1.234"),
        ("10.00", "EUR", "pl", "10,00\xa0€"),
        ("10.5", "EUR", "en", "€10.50"),
        ("1000", "CLP", "es_CL", "$1.000"),
    ],
)
def test_amounts_are_shown_with_their_iso_decimals(amount, code, locale, shown):
    assert format_money(amount, code, locale) == shown


def test_a_forint_purchase_earns_to_the_filler(client, admin, shop):
    set_program(
        client,
        admin,
        currency="HUF",
        min_order_amount="0",
        referrer_reward={"type": "percent", "value": "10"},
        friend_reward={"type": "none"},
    )
    enrol(client, shop, "ref-1")
    body = converted_friend(client, shop, amount="1234.50", currency="HUF")
    assert [(r["amount"], r["currency"]) for r in body["rewards"]] == [("123.45", "HUF")]


def test_a_purchase_in_a_withdrawn_currency_is_a_422(client, shop):
    response = client.post(
        "/api/v1/purchases",
        json={
            "order_id": "o-1",
            "customer_external_id": "nobody",
            "amount": "10.00",
            "currency": "HRK",
        },
        headers=shop,
    )
    assert response.status_code == 422
    assert "currency" in response.json["error"]["fields"]


def test_the_program_refuses_a_withdrawn_currency(client, admin):
    response = client.patch("/api/v1/program", json={"currency": "DEM"}, headers=admin)
    assert response.status_code == 422
    assert "currency" in response.json["error"]["fields"]

"""Signed referral codes: format, look-alikes, signature, key rotation and lookup."""

from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import event

from referral_service import create_app
from referral_service.domain import codes
from referral_service.domain.codes import (
    ALPHABET,
    CODE_LENGTH,
    MAC_BITS,
    MAC_LENGTH,
    PAYLOAD_LENGTH,
    CodeSigner,
    display,
    lookup,
    normalize,
)
from referral_service.errors import InvalidCode, NotFound, RevokedCode
from referral_service.extensions import db
from tests import factories

SIGNER = CodeSigner("unit-test-key")
payloads = st.text(alphabet=ALPHABET, min_size=PAYLOAD_LENGTH, max_size=PAYLOAD_LENGTH)


def issued(payload: str, signer: CodeSigner = SIGNER) -> str:
    """The code `signer.issue()` makes when its random draw yields `payload`."""
    drawn = 0
    for char in payload:
        drawn = drawn * 32 + ALPHABET.index(char)
    with mock.patch.object(codes.secrets, "randbits", return_value=drawn):
        code = signer.issue()
    assert code.startswith(payload)
    return code


def count_queries(engine) -> list:
    statements = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    return statements


# --- format ----------------------------------------------------------------------------------


def test_issued_codes_are_16_characters_of_the_alphabet():
    assert CODE_LENGTH == 16
    assert not set("ILOU") & set(ALPHABET) and len(set(ALPHABET)) == 32
    for _ in range(200):
        code = SIGNER.issue()
        assert len(code) == 16 and set(code) <= set(ALPHABET)
        assert SIGNER.verify(code) == code


def test_mac_is_at_least_55_bits_so_guessing_takes_2_to_the_40_tries():
    assert MAC_BITS >= 55 and MAC_BITS == 5 * MAC_LENGTH
    assert CODE_LENGTH - PAYLOAD_LENGTH == MAC_LENGTH
    assert 2**MAC_BITS >= 2**40
    # every MAC character carries entropy (no constant padding where bits are missing)
    codes = {SIGNER.issue() for _ in range(600)}  # a repeated payload repeats its MAC: one each
    macs = [code[PAYLOAD_LENGTH:] for code in codes]
    assert len(set(macs)) == len(macs)
    for position in range(MAC_LENGTH):
        assert len({mac[position] for mac in macs}) >= 28


def test_display_groups_by_four_and_verifies():
    code = SIGNER.issue()
    shown = display(code)
    assert shown == f"{code[:4]}-{code[4:8]}-{code[8:12]}-{code[12:]}"
    assert SIGNER.verify(shown) == code


def test_case_separators_and_look_alikes_fold():
    code = issued("00111")  # typed with O for 0, I and L for 1
    for typed in (
        code.lower(),
        display(code).lower(),
        " ".join(display(code).split("-")),
        f"  {code[:8]} - {code[8:]}  ",
        "0o1il" + code[5:].lower(),
        "OO1Il" + code[5:],
    ):
        assert normalize(typed) == code
        assert SIGNER.verify(typed) == code


# How links and typed codes get mangled on the way: chat apps, word processors, phone keyboards.
MANGLINGS = {
    "trailing slash": lambda c: c + "/",
    "closing parenthesis": lambda c: c + ")",
    "in parentheses": lambda c: f"({c})",
    "comma": lambda c: c + ",",
    "full stop": lambda c: c + ".",
    "exclamation mark": lambda c: c + "!",
    "question mark": lambda c: c + "?",
    "ellipsis": lambda c: c + "\u2026",
    "curly quotes": lambda c: f"\u201c{c}\u201d",
    "guillemets": lambda c: f"\u00ab{c}\u00bb",
    "emoji after a space": lambda c: c + " \U0001f389",
    "zero-width space after": lambda c: c + "\u200b",
    "zero-width space inside": lambda c: c[:6] + "\u200b" + c[6:],
    "zero-width joiner and non-joiner": lambda c: c[:3] + "\u200d" + c[3:9] + "\u200c" + c[9:],
    "word joiner": lambda c: c[:8] + "\u2060" + c[8:],
    "byte order mark first": lambda c: "\ufeff" + c,
    "right-to-left mark first": lambda c: "\u200f" + c,
    "soft hyphen": lambda c: c[:4] + "\u00ad" + c[4:],
    "variation selector": lambda c: c + "\ufe0f",
    "en dash groups": lambda c: display(c).replace("-", "\u2013"),
    "em dash groups": lambda c: display(c).replace("-", "\u2014"),
    "minus sign groups": lambda c: display(c).replace("-", "\u2212"),
    "figure dash groups": lambda c: display(c).replace("-", "\u2012"),
    "non-breaking hyphen groups": lambda c: display(c).replace("-", "\u2011"),
    "spaced en dash": lambda c: display(c).replace("-", " \u2013 "),
    "no-break spaces": lambda c: display(c).replace("-", "\u00a0"),
    "full-width characters": lambda c: "".join(chr(ord(x) + 0xFEE0) for x in c),
    "lower case, en dash and a full stop": lambda c: (
        display(c).lower().replace("-", "\u2013") + "."
    ),
    "Cyrillic and Greek look-alikes": lambda c: c.replace("A", "\u0410").replace("K", "\u039a"),
}


@pytest.mark.parametrize("mangle", MANGLINGS.values(), ids=MANGLINGS.keys())
def test_mangled_codes_are_read(mangle):
    code = issued("AK0X1")
    assert normalize(mangle(code)) == code
    assert SIGNER.verify(mangle(code)) == code


@pytest.mark.parametrize(
    "text",
    [
        "ABCDEFGH)JKMNPQRS",  # punctuation inside the code is not a separator
        "ABCDEFGH,JKMNPQRS",
        "ABCDEFGHJKMNPQR\u200b",  # 15 characters and an invisible one
        "\u200b" * 90 + "ABCDEFGHJKMNPQRS",  # invisible characters count to MAX_TYPED
        "ABCDEFGHJKMNPQRS" + "!" * 90,
    ],
)
def test_what_cannot_be_read_is_not_a_code(text):
    assert normalize(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ABC",
        "ABCDEFGHJKMNPQR",  # 15
        "ABCDEFGHJKMNPQRST",  # 17
        "ABCDEFGHJKMNPQRU",  # U is not in the alphabet
        "ABCDEFGHJKMNPQR!",
        "ABCDEFGH/JKMNPQRS",
        "ÄBCDEFGHJKMNPQRS",
        "A" * 200,
    ],
)
def test_malformed_codes_are_rejected(text):
    assert normalize(text) is None
    with pytest.raises(InvalidCode):
        SIGNER.verify(text)


def test_non_strings_are_rejected():
    for value in (None, 12345, b"ABCDEFGHJKMNPQRS"):
        assert normalize(value) is None
        with pytest.raises(InvalidCode):
            SIGNER.verify(value)


def test_one_character_change_is_rejected():
    code = SIGNER.issue()
    for position in range(CODE_LENGTH):
        for char in ALPHABET.replace(code[position], ""):
            with pytest.raises(InvalidCode):
                SIGNER.verify(code[:position] + char + code[position + 1 :])


def test_code_of_another_secret_is_rejected():
    other = CodeSigner("another-shop-key")
    for _ in range(50):
        with pytest.raises(InvalidCode):
            SIGNER.verify(other.issue())


# --- key rotation ----------------------------------------------------------------------------


def test_old_key_in_fallbacks_still_verifies_and_new_codes_use_the_new_key():
    old = CodeSigner("key-2023")
    old_code = old.issue()
    rotated = CodeSigner("key-2024", ["key-2023"])
    assert rotated.verify(old_code) == old_code
    new_code = rotated.issue()
    assert CodeSigner("key-2024").verify(new_code) == new_code
    with pytest.raises(InvalidCode):
        old.verify(new_code)
    with pytest.raises(InvalidCode):  # the old key dropped from the fallbacks: its codes die
        CodeSigner("key-2024").verify(old_code)


def test_every_fallback_key_verifies():
    first, second = CodeSigner("k1").issue(), CodeSigner("k2").issue()
    signer = CodeSigner("k3", ["k2", "k1"])
    assert signer.verify(first) == first and signer.verify(second) == second


def test_rotated_app_looks_up_codes_of_the_old_key(app):
    with app.app_context():
        card = factories.customer()
    config = {**app.config, "SECRET_KEY": "a-brand-new-key-" + "b" * 32, "SECRET_KEY_FALLBACKS": []}
    rotated = create_app({**config, "SECRET_KEY_FALLBACKS": [app.config["SECRET_KEY"]]})
    without_fallback = create_app(config)
    try:
        with rotated.app_context():
            assert lookup(card.code).code == card.code
            assert codes.signer().verify(codes.signer().issue())
        with without_fallback.app_context(), pytest.raises(InvalidCode):
            lookup(card.code)
    finally:
        for other in (rotated, without_fallback):
            with other.app_context():
                db.engine.dispose()


# --- lookup ----------------------------------------------------------------------------------


def test_lookup_of_a_forged_code_makes_no_database_query(app):
    with app.app_context():
        card = factories.customer()
        forged = card.code[:-1] + ALPHABET[(ALPHABET.index(card.code[-1]) + 1) % 32]
        statements = count_queries(db.engine)
        for text in (forged, forged.lower(), CodeSigner("forger").issue(), "not-a-code"):
            with pytest.raises(InvalidCode):
                lookup(text)
        assert statements == []
        assert lookup(card.code.lower()).code == card.code  # the counter does see queries
        assert len(statements) >= 1


def test_lookup_finds_the_referrer_in_any_spelling(app):
    with app.app_context():
        card = factories.customer()
        active = lookup(display(card.code).lower())
        assert active.code == card.code
        assert lookup(card.code).referrer_id == active.referrer_id


def test_lookup_of_a_well_signed_unknown_code_is_not_found(app):
    with app.app_context():
        with pytest.raises(NotFound) as raised:
            lookup(codes.signer().issue())
        assert not isinstance(raised.value, RevokedCode)


def test_lookup_of_a_revoked_code_raises_revoked(app):
    from referral_service.domain import customers

    with app.app_context():
        card = factories.customer()
        assert lookup(card.code).code == card.code  # now cached in this process
        new = customers.rotate_code(card.external_id)
        with pytest.raises(RevokedCode):
            lookup(card.code)
        assert lookup(new.code).code == new.code


# --- properties ------------------------------------------------------------------------------


@st.composite
def mutations(draw):
    """A valid code and a copy with one or more characters changed to other alphabet characters."""
    code = issued(draw(payloads))
    positions = draw(st.sets(st.integers(0, CODE_LENGTH - 1), min_size=1, max_size=CODE_LENGTH))
    chars = list(code)
    for position in positions:
        chars[position] = draw(st.sampled_from(ALPHABET.replace(code[position], "")))
    return code, "".join(chars)


@settings(max_examples=200, deadline=None)
@given(mutations())
def test_property_any_changed_character_is_rejected(pair):
    code, mutated = pair
    assert mutated != code
    with pytest.raises(InvalidCode):
        SIGNER.verify(mutated)
    with pytest.raises(InvalidCode):
        SIGNER.verify(mutated.lower())


@st.composite
def spellings(draw):
    """An issued code, typed in any mix of letter case with separators between characters."""
    code = issued(draw(payloads))
    typed = ""
    for position, char in enumerate(code):
        if position:
            typed += draw(st.sampled_from(["", "", "-", " ", " - ", "--"]))
        typed += char.lower() if draw(st.booleans()) else char
    return code, typed + draw(st.sampled_from(["", " "]))


@settings(max_examples=200, deadline=None)
@given(spellings())
def test_property_issued_codes_round_trip_in_any_case_and_grouping(pair):
    code, typed = pair
    assert normalize(typed) == code
    assert SIGNER.verify(typed) == code

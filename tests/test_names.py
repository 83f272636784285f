"""People's names: one rule (domain/customers.py `check_name`) at every door that takes a name,
stated exactly in the OpenAPI spec, and masked on the share page by grapheme clusters."""

# ruff: noqa: RUF001  (names in Arabic and Hebrew script are the point of these tests)

import re

import jsonschema_rs
import pytest
import regex
from sqlalchemy import select

from referral_service.cli import main
from referral_service.domain import customers
from referral_service.domain.portal import mask_name
from referral_service.errors import ValidationFailed
from referral_service.extensions import db
from referral_service.models import Customer, Signup
from tests.journey_helpers import count, enrol, sign_up

SCOTLAND = "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"

REAL_NAMES = {
    "persian-zwnj": "فاطمه\u200cزهرا",
    "emoji-zwj": "👩\u200d💻 Ada",
    "family-zwj": "👨\u200d👩\u200d👧 Nowak",
    "variation-selector": "❤\ufe0f Zoë",
    "keycap": "Ada 1\ufe0f\u20e3",
    "skin-tone": "👋🏽 Kofi",
    "flag": "🇵🇱 Anna",
    "subdivision-flag": f"{SCOTLAND} Ewan",
    "combining-accent": "Zoe\u0308 Kowalska",
    "devanagari-zwj": "क्\u200dष Sharma",
    "hebrew-rlm": "דוד\u200f לוי",
    "arabic-alm": "علي\u061c 2",
    "mongolian-mvs": "ᠨᠠ\u180eᠠ",
    "ideographic-space": "山田\u3000太郎",
    "no-break-space": "Jean\u00a0Dupont",
    "greek": "Αλέξανδρος Παπαδόπουλος",
    "bulgarian": "Щерьо Вълчев",
    "hungarian": "Győző Ötvös",
    "polish": "Źdźisław Łęcki",
    "newer-emoji": "Ada \U0001fae8",  # Unicode 15: later than some runtimes' tables
    "ideographic-variation": "葛\U000e0100飾",
    "apostrophe": "Seán O'Brien-Ó Súilleabháin",
}

REFUSED = {
    "lre": "\u202a",
    "rle": "\u202b",
    "pdf": "\u202c",
    "lro": "\u202d",
    "rlo": "\u202e",
    "lri": "\u2066",
    "rli": "\u2067",
    "fsi": "\u2068",
    "pdi": "\u2069",
    "nul": "\x00",
    "tab": "\t",
    "newline": "\n",
    "del": "\x7f",
    "next-line": "\x85",
    "line-separator": "\u2028",
    "paragraph-separator": "\u2029",
    "zero-width-space": "\u200b",
    "word-joiner": "\u2060",
    "soft-hyphen": "\u00ad",
    "bom": "\ufeff",
    "tag-outside-a-flag": "\U000e0041",
    "language-tag": "\U000e0001",
    "private-use": "\ue000",
    "supplementary-private-use": "\U000f0000",
    "noncharacter": "\ufdd0",
    "plane-noncharacter": "\U0001fffe",
}


def spec_name_schema(client) -> dict:
    spec = client.get("/api/openapi.json").json
    return spec["components"]["schemas"]["SignupIn"]["properties"]["name"]


# --- the rule ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL_NAMES.values(), ids=REAL_NAMES.keys())
def test_real_names_are_accepted_as_they_are(name):
    assert customers.check_name(name) == name
    assert customers.check_name(f"  {name} ") == name


@pytest.mark.parametrize("char", REFUSED.values(), ids=REFUSED.keys())
def test_refused_characters_are_named_in_the_message(char):
    with pytest.raises(ValidationFailed) as refused:
        customers.check_name(f"Ada{char}Lovelace")
    (message,) = refused.value.fields["name"]
    assert message.startswith(f"U+{ord(char):04X}")
    assert "at position 4" in message
    assert customers.NAME_RULE in message


@pytest.mark.parametrize(
    "name",
    [
        "\U0001f3f4\U000e0067\U000e0062",  # a tag sequence without its cancel tag
        "\U0001f3f4" + "\U000e0061" * 7 + "\U000e007f",  # no subdivision has so long an id
        "\U0001f3f4\U000e0047\U000e0042\U000e0053\U000e007f",  # ids are lower case
        "Ewan \U000e0067\U000e0062\U000e007f",  # tags without the black flag before them
        f"{SCOTLAND}\u202e",  # a good flag does not let an override in after it
        "a\ud800b",  # a lone surrogate (JSON can carry one)
        "x" * 201,
    ],
)
def test_other_refusals(name):
    with pytest.raises(ValidationFailed):
        customers.check_name(name)


def test_blank_is_none_and_200_characters_are_enough():
    assert customers.check_name(None) is None
    assert customers.check_name("   ") is None
    assert customers.check_name("x" * 200) == "x" * 200


def test_the_rule_covers_every_category_by_the_unicode_database():
    """Letters, marks, numbers, punctuation, symbols and spaces pass; controls, separators of lines,
    private use and noncharacters do not; of the format characters, only those that scripts and
    emoji need pass; unassigned code points pass but those kept for format characters (by the
    `regex` module's Unicode tables, newer than the interpreter's)."""
    allowed_formats = {0x061C, 0x180E, 0x200C, 0x200D, 0x200E, 0x200F}
    blank_letters = {0x3164, 0xFFA0}  # compatibility Hangul fillers
    classes = {
        "pass": regex.compile(r"[\p{L}\p{M}\p{N}\p{P}\p{S}\p{Zs}]"),
        "refused": regex.compile(r"[\p{Cc}\p{Co}\p{Zl}\p{Zp}\p{Noncharacter_Code_Point}]"),
        "format": regex.compile(r"\p{Cf}"),
        "kept-for-formats": regex.compile(r"\p{Default_Ignorable_Code_Point}"),
    }
    wrong = []
    for code_point in range(0x110000):
        if 0xD800 <= code_point <= 0xDFFF:
            continue
        char = chr(code_point)
        try:
            accepted = customers.check_name(f"a{char}b") is not None
        except ValidationFailed:
            accepted = False
        if code_point in blank_letters:
            expected = False
        elif classes["pass"].match(char):
            expected = True
        elif classes["refused"].match(char):
            expected = False
        elif classes["format"].match(char):
            expected = code_point in allowed_formats
        else:  # unassigned: let in (a newer emoji is never refused) but where formats will come
            expected = not classes["kept-for-formats"].match(char)
        if accepted != expected:
            wrong.append(f"U+{code_point:04X}")
    assert wrong == []


def test_the_spec_pattern_is_the_rule_itself(client):
    """The OpenAPI pattern, read as JSON Schema validators read it, agrees with the server on
    every Unicode character and on the cases above."""
    schema = spec_name_schema(client)
    assert schema["pattern"] == customers.NAME_PATTERN
    assert f"at most {customers.MAX_NAME} characters" in schema["description"]
    assert "U+202A-U+202E, U+2066-U+2069" in schema["description"]
    validator = jsonschema_rs.validator_for({"type": "string", "pattern": schema["pattern"]})
    samples = [*REAL_NAMES.values(), *(f"a{char}b" for char in REFUSED.values())]
    samples += [f"a{chr(cp)}b" for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    samples += ["\U0001f3f4\U000e0067\U000e0062", f"{SCOTLAND}\u202e", SCOTLAND]
    disagree = []
    for sample in samples:
        try:
            customers.check_name(sample)
            ours = True
        except ValidationFailed:
            ours = False
        if validator.is_valid(sample) != ours:
            disagree.append(ascii(sample))
    assert disagree == []


# --- every door that takes a name -----------------------------------------------------------------


@pytest.mark.parametrize("name", REAL_NAMES.values(), ids=REAL_NAMES.keys())
def test_put_customer_keeps_a_real_name(client, shop, name):
    response = client.put(
        "/api/v1/customers/c-1", json={"email": "c1@example.org", "name": name}, headers=shop
    )
    assert response.status_code == 201, response.json
    assert response.json["name"] == name
    assert client.get("/api/v1/customers/c-1", headers=shop).json["name"] == name


@pytest.mark.parametrize(
    "name", [REAL_NAMES["persian-zwnj"], REAL_NAMES["emoji-zwj"], REAL_NAMES["subdivision-flag"]]
)
def test_signup_with_a_real_name_is_attributed_and_keeps_it(app, client, shop, name):
    code = enrol(client, shop, "ref-1")
    response = sign_up(client, shop, "friend-1", name=name, referral_code=code)
    assert response.status_code == 201, response.json
    assert response.json["attributed"] is True
    assert client.get("/api/v1/customers/friend-1", headers=shop).json["name"] == name


@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\x00", "\u200b"], ids=ascii)
def test_refused_names_are_422_at_every_api_door_and_record_nothing(app, client, shop, char):
    code = enrol(client, shop, "ref-1")
    name = f"Ada{char}"
    signup = sign_up(client, shop, "friend-1", name=name, referral_code=code)
    body = {"email": "c@example.org", "name": name}
    put = client.put("/api/v1/customers/c-2", json=body, headers=shop)
    for response in (signup, put):
        assert response.status_code == 422, response.json
        assert response.json["error"]["code"] == "validation_error"
        (message,) = response.json["error"]["fields"]["name"]
        assert f"U+{ord(char):04X}" in message
    assert count(app, Customer) == 1 and count(app, Signup) == 0


def test_the_domain_refuses_what_another_door_might_let_through(app):
    """The sign-up and the enrolment apply the rule themselves (Stripe, Shopify, the CLI)."""
    from referral_service.domain import attribution

    with app.app_context(), pytest.raises(ValidationFailed) as refused:
        attribution.signup("f-1", "f@example.org", name="Ada\u202e")
    assert "name" in refused.value.fields
    with app.app_context(), pytest.raises(ValidationFailed):
        customers.enrol("c-1", "c@example.org", name="Ada\u2066")
    assert count(app, Customer) == 0


def test_csv_import_takes_real_names_and_reports_refused_ones(app, runner, tmp_path):
    path = tmp_path / "customers.csv"
    path.write_text(
        "external_id,email,name,locale\n"
        f"c-1,one@example.com,{REAL_NAMES['persian-zwnj']},\n"
        f"c-2,two@example.com,{REAL_NAMES['emoji-zwj']},\n"
        "c-3,three@example.com,Ada\u202eevil,\n",
        encoding="utf-8",
    )
    result = runner.invoke(main, ["customers", "import", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "2 created, 0 updated, 0 unchanged, 1 rejected.\n"
    assert re.search(r"^line 4: name: U\+202E", result.stderr, re.MULTILINE)
    with app.app_context():
        names = dict(db.session.execute(select(Customer.external_id, Customer.name)).all())
    assert names == {"c-1": REAL_NAMES["persian-zwnj"], "c-2": REAL_NAMES["emoji-zwj"]}


# --- masking on the share page -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "masked"),
    [
        ("Anna Maria Kowalska", "A*** K."),
        ("🇵🇱 Anna", "🇵🇱*** A."),
        ("Anna 🇵🇱", "A*** 🇵🇱."),
        ("👩\u200d💻 Ada Kowalska", "👩\u200d💻*** K."),
        (f"{SCOTLAND} Ewan", f"{SCOTLAND}*** E."),
        ("e\u0301mile zola", "E\u0301*** Z."),
        ("❤\ufe0f Zoë", "❤\ufe0f*** Z."),
        ("\u200fדוד לוי", "ד*** ל."),  # a leading mark shows nothing and is passed over
        ("straße ßtraße", "S*** ß."),  # `ß` in upper case is two letters: left as it is
        ("山田\u3000太郎", "山*** 太."),
        ("فاطمه\u200cزهرا", "ف***"),
        ("  ", "e***"),
        (None, "e***"),
    ],
)
def test_masking_never_cuts_a_grapheme_cluster(name, masked):
    assert mask_name(name, "eve@example.org") == masked


def test_masking_from_the_email_keeps_its_first_cluster_whole():
    assert mask_name(None, "e\u0301va@example.org") == "e\u0301***"


def test_share_page_masks_a_flag_whole(app, client, shop):
    from tests.test_share_page import portal_path, text_of

    code = enrol(client, shop, "ref-1")
    response = sign_up(client, shop, "f-1", name="🇵🇱 Kowalska", referral_code=code)
    assert response.status_code == 201, response.json
    text = text_of(client.get(portal_path(client, shop)))
    assert "🇵🇱*** K." in text
    assert "Kowalska" not in text

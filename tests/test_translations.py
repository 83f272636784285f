"""The catalogs of the public pages: complete in every language, plural forms as CLDR has them,
placeholders kept, and compiled into the build."""

import gettext
import io
from pathlib import Path

import pytest
from babel import Locale
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

from referral_service.domain.program import LANGUAGES

ROOT = Path(__file__).resolve().parent.parent
TRANSLATIONS = ROOT / "referral_service" / "translations"
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}
CLDR_ORDER = ("zero", "one", "two", "few", "many", "other")


def catalog(language: str):
    with open(TRANSLATIONS / language / "LC_MESSAGES" / "messages.po", "rb") as po:
        return read_po(po, locale=language)


def source_messages() -> set:
    """Every message the code and the templates of the public pages ask to translate."""
    with open(ROOT / "babel.cfg") as config:
        method_map, options_map = parse_mapping_cfg(config)
    return {
        message
        for _, _, message, *_ in extract_from_dir(
            str(ROOT), method_map, options_map, keywords=KEYWORDS
        )
    }


def test_the_template_holds_every_message_of_the_source():
    with open(TRANSLATIONS / "messages.pot", "rb") as pot:
        template = {m.id for m in read_po(pot) if m.id}
    assert template == source_messages(), "run `pybabel extract` (see the README, Languages)"


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_message_is_translated(language):
    translations = catalog(language)
    assert {m.id for m in translations if m.id} == source_messages(), "run `pybabel update`"
    assert not translations.fuzzy, "the catalog's header is marked fuzzy"
    for message in translations:
        if not message.id:
            continue
        assert not message.fuzzy, f"{language}: fuzzy {message.id!r}"
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        if message.pluralizable:
            assert len(strings) == translations.num_plurals, f"{language}: {message.id!r}"
        assert all(s.strip() for s in strings), f"{language}: untranslated {message.id!r}"
        assert not list(message.check(translations)), f"{language}: {message.id!r}"


def _placeholders(text: str) -> set[str]:
    import re

    return set(re.findall(r"%\((\w+)\)[sd]", text))


@pytest.mark.parametrize("language", LANGUAGES)
def test_translations_keep_the_placeholders(language):
    for message in catalog(language):
        if not message.id:
            continue
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        wanted = set().union(*map(_placeholders, ids))
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        for string in strings:
            # a singular form may leave the count out ("one friend"), never add or rename one
            assert _placeholders(string) <= wanted, f"{language}: {string!r}"
            assert _placeholders(string) >= wanted - {"num"}, f"{language}: {string!r}"


@pytest.mark.parametrize("language", LANGUAGES)
def test_plural_forms_are_those_of_cldr(language):
    """The catalog's Plural-Forms picks, for every count, the form CLDR names for it."""
    rule = Locale.parse(language).plural_form
    categories = [c for c in CLDR_ORDER if c in {rule(n) for n in range(1000)}]
    translations = catalog(language)
    assert translations.num_plurals == len(categories)
    plural = gettext.c2py(translations.plural_expr)
    for n in range(1000):
        assert plural(n) == categories.index(rule(n)), (language, n)


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_catalog_compiles(language):
    compiled = io.BytesIO()
    write_mo(compiled, catalog(language))
    compiled.seek(0)
    translations = Translations(compiled)
    if language == "pl":
        more = "and %(num)d more"
        forms = {translations.ngettext(more, more, n) for n in (1, 2, 5)}
        assert len(forms) == 3  # kolejna / kolejne / kolejnych: three forms


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_compiled_catalog_is_current(language):
    """The `.mo` beside each `.po` (made by the build, `make` and pip) says what the `.po` says."""
    mo = TRANSLATIONS / language / "LC_MESSAGES" / "messages.mo"
    assert mo.exists(), "compile the catalogs: `make translations`"
    with open(mo, "rb") as handle:
        shipped = Translations(handle)
    for message in catalog(language):
        if message.id and not message.pluralizable:
            assert shipped.gettext(message.id) == message.string, f"{language}: {message.id!r}"

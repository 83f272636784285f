"""The language of the public pages: chosen per request, with Flask-Babel's catalogs.

The order is the page's `?lang=` (its language switcher), then the customer's own `locale` (on
their share page), then the browser's `Accept-Language`, then the program's `default_locale`.
The admin console and the API are in English and never ask.
"""

from flask import g, request
from flask_babel import refresh

from referral_service.domain import program
from referral_service.domain.program import LANGUAGES

# each language by its own name, for the switcher
LANGUAGE_NAMES = {
    "en": "English",
    "pl": "Polski",
    "hu": "Magyar",
    "el": "Ελληνικά",
    "bg": "Български",
}


def language_of(locale: str | None) -> str | None:
    """The page language of a locale (`pl_PL` and `pl-PL` give `pl`), if the pages speak it."""
    if not isinstance(locale, str):
        return None
    language = locale.replace("-", "_").split("_", 1)[0].lower()
    return language if language in LANGUAGES else None


def choose_language(customer_locale: str | None = None) -> str:
    """This request's language, from `?lang=`, the customer's locale, the browser or the program."""
    return (
        language_of(request.args.get("lang"))
        or language_of(customer_locale)
        or request.accept_languages.best_match(LANGUAGES)
        or program.settings(last_known=True)["default_locale"]
    )


def use_language(customer_locale: str | None = None) -> str:
    """Choose this request's language (see `choose_language`) and translate the page into it."""
    g.language = choose_language(customer_locale)
    refresh()
    return g.language


def select_locale() -> str:
    """Flask-Babel's locale selector: the language a page chose, else English."""
    return g.get("language", "en")

"""What the console reads from a browser: the rule for its addresses and form fields, and ids.

A request to the console is refused with a readable 400 page, before any view reads it, when a
query parameter is not UTF-8 once percent-decoded or holds a control character (filters,
searches and cursors are one line), or when a form field holds a control character other than
tab and line breaks (as the API's free text). PostgreSQL refuses NUL in text, and no filter or
field of the console needs any of them. (A form's bytes that are not UTF-8 reach the views as
their percent-escapes, `%FF`, which Werkzeug keeps: text that names nothing, never two inputs
read as one.) The redirect targets (`next`, `back`) are left to the view: one that is not a
path inside the console falls back to the console rather than being refused; so are the fields
a view declares it checks itself (`@checks_fields`: the settings form, whose schema names each
field's problem at its input).
"""

from urllib.parse import parse_qsl

from werkzeug.datastructures import MultiDict

from referral_service.domain.pages import MAX_ID
from referral_service.domain.text import has_control

REDIRECT_TARGETS = ("next", "back")
MAX_ID_DIGITS = len(str(MAX_ID))

NOT_UTF8 = (
    "The address is not valid UTF-8: percent-escape each character's UTF-8 bytes (%C3%A9 for é)."
)
CONTROL_IN_QUERY = (
    "The address holds a control character (such as NUL or a line break) in “{name}”: no "
    "filter of the console takes one. Remove it and retry."
)
CONTROL_IN_FORM = (
    "The form's field “{name}” holds a control character (such as NUL): no field of the "
    "console takes one. Remove it and retry."
)


def checks_fields(*names: str):
    """Mark a view that checks these form fields itself (and says what is wrong at each)."""

    def mark(view):
        view.checked_fields = frozenset(names)
        return view

    return mark


def problem(raw_query: str, args: MultiDict, form: MultiDict, view=None) -> str | None:
    """Why the console cannot read a request, in a sentence for the admin; None when it can.

    `raw_query` is the query string as sent (percent-escaped), `args` and `form` the parameters
    and form fields as Werkzeug decoded them, `view` the view function that will answer."""
    left_to_view = {*REDIRECT_TARGETS, *getattr(view, "checked_fields", ())}
    for name, value in parse_qsl(raw_query, keep_blank_values=True, encoding="latin-1"):
        if name not in REDIRECT_TARGETS and not _utf8(name + value):
            return NOT_UTF8
    for name, value in args.items(multi=True):
        if name not in REDIRECT_TARGETS and (has_control(name) or has_control(value)):
            return CONTROL_IN_QUERY.format(name=_shown(name))
    for name, value in form.items(multi=True):
        if name in left_to_view:
            continue
        if has_control(name) or has_control(value, line_breaks=True):
            return CONTROL_IN_FORM.format(name=_shown(name))
    return None


def _utf8(latin1: str) -> bool:
    """Whether the bytes that a text decoded as Latin-1 holds are UTF-8."""
    try:
        latin1.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _shown(name: str) -> str:
    """A parameter's name as the page may show it: controls dropped, at most 40 characters."""
    return "".join(char for char in name if not has_control(char))[:40]


def whole_number(text: str) -> int | None:
    """An id typed or sent in a form (`12`): ASCII digits naming 1 to MAX_ID, else None (a
    number too long for Python's int() to parse is None too, not an error)."""
    if not (text.isascii() and text.isdecimal() and len(text) <= MAX_ID_DIGITS):
        return None
    number = int(text)
    return number if 0 < number <= MAX_ID else None

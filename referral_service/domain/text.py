"""Control characters in text from outside: the one rule of what a filter or a form may hold.

Unicode's control characters (category Cc: the C0 controls, DEL and the C1 controls) have no
place in an id, an email, a code, a search or a one-line form field, and PostgreSQL refuses NUL
in text outright (SQLite stores it). A text of several lines (a share message, a list typed one
item a line, a reason) may hold tab and line breaks, as the API's free text may.
"""

import re

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
CONTROL_BUT_LINE_BREAKS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def has_control(value: str, line_breaks: bool = False) -> bool:
    """Whether `value` holds a control character; with `line_breaks`, tab, LF and CR are let in."""
    return bool((CONTROL_BUT_LINE_BREAKS if line_breaks else CONTROL).search(value))


def findable(value: str | None) -> bool:
    """Whether a filter value could match stored text: no stored id, email, code, action or actor
    holds a control character, so a filter that holds one finds nothing (and is never sent to
    the database, which may refuse it)."""
    return value is None or not has_control(value)

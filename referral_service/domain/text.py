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


def spreadsheet_safe(text: str) -> str:
    """`text` for a CSV cell that a spreadsheet opens as text, never as a formula (CSV
    injection, OWASP): a leading `=`, `+`, `-`, `@`, tab or carriage return gets a quote."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def findable(value: str | None) -> bool:
    """Whether a filter value could match stored text: no stored id, email, code, action or actor
    holds a control character, so a filter that holds one finds nothing (and is never sent to
    the database, which may refuse it)."""
    return value is None or not has_control(value)


def plain_port(url: str) -> bool:
    """Whether the port of `url`'s authority, if it has one, is written in ASCII digits 0-9.

    Python's `urlsplit` and httpx read a port with `int()`, which takes any script's decimal
    digits (`:١٨٦٠٠`), full-width ones and a sign (`:+443`): a URL is kept as it was written,
    so such a port would be stored in one form and used in another. (RFC 3986: `port = *DIGIT`.)
    """
    authority = url.partition("://")[2].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    host_port = authority.rpartition("@")[2]
    if host_port.startswith("["):  # an IPv6 address: the port follows the bracket
        port = host_port.partition("]")[2].removeprefix(":")
    else:
        port = host_port.rpartition(":")[2] if ":" in host_port else ""
    return port == "" or (port.isascii() and port.isdigit())

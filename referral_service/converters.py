"""URL converters: an `int` in a path is ASCII digits, never another script's or full-width ones.

Werkzeug's `int` converter matches `\\d+`, which in Python is any Unicode decimal digit, and
hands the text to `int()`, which reads them all: `/payouts/` with an Arabic-Indic or a
full-width digit one (U+0661, U+FF11) would name payout 1. An address names one thing: a path
whose id is not written in ASCII digits matches no rule and is a 404 like any other unknown
path. For the same reason a leading zero names nothing: `/payouts/01` is not `/payouts/1`.
"""

from flask import Flask
from werkzeug.routing import IntegerConverter


class AsciiIntegerConverter(IntegerConverter):
    """Werkzeug's `int` converter (with its `min`, `max`, `fixed_digits` and `signed`) matching
    the ASCII digits 0-9 only, without a leading zero (unless `fixed_digits` asks for them)."""

    regex = r"(?:0|[1-9][0-9]*)"

    def __init__(self, map, fixed_digits=0, min=None, max=None, signed=False):
        super().__init__(map, fixed_digits=fixed_digits, min=min, max=max, signed=signed)
        if fixed_digits:
            self.regex = r"[0-9]+"


def register_converters(app: Flask) -> None:
    """Make `<int:...>` in every rule the ASCII-only converter; call before any rule is added
    (a rule takes its converter when it is added to the map)."""
    app.url_map.converters["int"] = AsciiIntegerConverter

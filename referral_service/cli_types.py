"""Number types of the command line: ASCII digits only, as everywhere else in the service.

click's INT, IntRange and FloatRange hand the text to int() or float(), which read any script's
decimal digits (Arabic-Indic, full-width, ...), underscores (`1_2`), a sign and spaces around,
and FloatRange lets `nan` past its bounds. A whole-number option (`--port`, `--expires-in`)
takes `12`, a decimal one (`--poll`) also `0.5`; anything else is a usage error naming the
option.
"""

import re

import click

_WHOLE = re.compile(r"[0-9]{1,18}")
_DECIMAL = re.compile(r"[0-9]{1,12}(\.[0-9]{1,12})?|\.[0-9]{1,12}")


class AsciiIntRange(click.IntRange):
    """click.IntRange (bounds optional) over ASCII digits: not other scripts' digits, `1_2`,
    `+1` or ` 1`."""

    name = "integer"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not _WHOLE.fullmatch(value):
            self.fail(f"{value!r} is not a whole number written in digits 0-9.", param, ctx)
        return super().convert(value, param, ctx)


class AsciiFloatRange(click.FloatRange):
    """click.FloatRange over plain decimals in ASCII digits (`2`, `0.5`): not `nan`, `inf`,
    `1e3`, `1_0`, other scripts' digits, a sign or spaces."""

    name = "decimal"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not _DECIMAL.fullmatch(value):
            self.fail(f"{value!r} is not a plain decimal written in digits 0-9.", param, ctx)
        return super().convert(value, param, ctx)

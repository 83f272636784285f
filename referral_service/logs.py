"""Logs never show an email address or an IP address: every log record is masked when made.

The mask is applied by the log record factory, so it covers the records of every logger (ours,
the WSGI servers', the database driver's) whichever handler writes them.
"""

import ipaddress
import logging
import re

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
IPV4 = re.compile(r"(?<![\w.])(\d{1,3}\.){3}\d{1,3}(?![\w.])")
IPV6 = re.compile(r"(?<![\w:.])[0-9a-fA-F:]*:[0-9a-fA-F:]*:[0-9a-fA-F:.]*(?![\w:])")


def redact(text: str) -> str:
    """The text with email and IP addresses replaced by `[email]` and `[ip]`."""
    text = EMAIL.sub("[email]", text)
    text = IPV4.sub("[ip]", text)
    return IPV6.sub(_ipv6, text)


def _ipv6(match: re.Match) -> str:
    try:
        ipaddress.IPv6Address(match.group(0))
    except ValueError:
        return match.group(0)
    return "[ip]"


def _masking(make_record):
    def make(*args, **kwargs):
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to logging's own error report
            return record
        record.msg, record.args = redact(message), None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    make.masks_addresses = True
    return make


def install() -> None:
    """Mask addresses in every log record of this process (once, however often it is called)."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "masks_addresses", False):
        logging.setLogRecordFactory(_masking(factory))

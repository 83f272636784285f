"""Logs never show a client's data: every log record is masked when made.

Email addresses, IP addresses and secrets that travel in a request line (the token of a share
page link `/share/<token>`, a `token=`, `key=`, `secret=`, `password=` or `signature=` query
value, a bearer key) are replaced by `[email]`, `[ip]` and `[token]`. Addresses are caught
percent-encoded too, as a search in the console sends them: `anna%40example.com`, `%2540` (encoded
twice), `+` for a space, `%3A` in an IPv6 address, any case of the hex digits. The mask is
applied by the log record factory, so it covers the records of every logger (ours, the WSGI
servers' access logs, the database driver's) whichever handler writes them.

The service's own addresses are not client data: the development server's startup banner
(` * Running on http://192.0.2.10:5000`), gunicorn's `Listening at: ...` and the warning that
links made outside a request name the development address keep theirs, so an operator can see
where the service listens and what its links say.
"""

import ipaddress
import logging
import re
from urllib.parse import unquote, unquote_plus

# an address as people (and Unicode's look-alikes) write it: @ also full-width or small, dots
# also ideographic, full-width or half-width, and the invisible characters that may sit inside
# (soft hyphen, zero-width space and joiners, word joiner), all of which NFKC or our own email
# reading drop or fold
_INVISIBLE = "\u00ad\u200b-\u200d\u2060\ufeff"
EMAIL = re.compile(
    rf"[\w.+\-{_INVISIBLE}]+[{_INVISIBLE}]*[@\uff20\ufe6b][{_INVISIBLE}]*[\w\-{_INVISIBLE}]+"
    rf"([.\u3002\uff0e\uff61][\w\-{_INVISIBLE}]+)+"
)
IPV4 = re.compile(r"(?<![\w.])(\d{1,3}\.){3}\d{1,3}(?![\w.])")
IPV6 = re.compile(r"(?<![\w:.])[0-9a-fA-F:]*:[0-9a-fA-F:]*:[0-9a-fA-F:.]*(?![\w:])")
SHARE_TOKEN = re.compile(r"(/share/)[^\s/?#\"']+")
SECRET_QUERY = re.compile(
    r"([?&;](?:token|key|api_key|secret|password|signature)=)[^\s&;#\"']+", re.IGNORECASE
)
BEARER = re.compile(r"(\bBearer\s+)\S+", re.IGNORECASE)
# a part of an address holding a percent-escape, between the characters that separate the parts
ENCODED = re.compile(r"[^\s\"'<>&;?=/]*%[0-9A-Fa-f]{2}[^\s\"'<>&;?=/]*")
DECODINGS = 8  # `%252540` is `@` encoded three times; no client encodes eight

# Records that name where the service itself listens: (logger, a line of the message).
_OWN_ADDRESS_LINE = {
    "werkzeug": re.compile(r" \* Running on (all addresses \(.*\)|\S+)"),
}
_OWN_ADDRESS_TEMPLATE = {
    "gunicorn.error": ("Listening at: ",),
    "referral_service.links": ("PUBLIC_BASE_URL is not set",),  # the address links then name
}


def redact(text: str) -> str:
    """The text with email and IP addresses replaced by `[email]` and `[ip]`, and the secrets
    of a request line (share page tokens, `token=`-like query values, bearer keys) by `[token]`."""
    text = SHARE_TOKEN.sub(r"\1[token]", text)
    text = SECRET_QUERY.sub(r"\1[token]", text)
    text = BEARER.sub(r"\1[token]", text)
    text = ENCODED.sub(_encoded, text)
    return _addresses(text)


def _addresses(text: str) -> str:
    text = EMAIL.sub("[email]", text)
    text = IPV4.sub("[ip]", text)
    return IPV6.sub(_ipv6, text)


def _encoded(match: re.Match) -> str:
    """A percent-encoded part of an address: kept as it is unless, decoded (a form's `+` is a
    space; then percent-escapes up to DECODINGS times), it holds an address; then decoded and
    masked (spaces back to `+`)."""
    decoded = unquote_plus(match.group(0))
    for _ in range(DECODINGS):
        decoded, before = unquote(decoded), decoded
        if decoded == before:
            break
    masked = _addresses(decoded)
    return match.group(0) if masked == decoded else masked.replace(" ", "+")


def _ipv6(match: re.Match) -> str:
    try:
        ipaddress.IPv6Address(match.group(0))
    except ValueError:
        return match.group(0)
    return "[ip]"


def redact_record(name: str, template, message: str) -> str:
    """A record's message, masked, but for the lines that give the service's own address.

    `name` is the logger's name, `template` the record's `msg` before its arguments were merged
    (gunicorn's banner is recognised by it), `message` the merged text.
    """
    if isinstance(template, str) and template.startswith(_OWN_ADDRESS_TEMPLATE.get(name, ())):
        return message
    own_line = _OWN_ADDRESS_LINE.get(name)
    if own_line is None:
        return redact(message)
    return "\n".join(
        line if own_line.fullmatch(line) else redact(line) for line in message.split("\n")
    )


MASKED = "masked"  # the attribute of a record this module's factory has masked


def _masking(make_record):
    def make(*args, **kwargs):
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to logging's own error report
            return record
        record.msg, record.args = redact_record(record.name, record.msg, message), None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        setattr(record, MASKED, True)
        return record

    make.masks_addresses = True
    # the other layers below it (request_id.py's): each is installed once, whatever the order
    make.adds_request_id = getattr(make_record, "adds_request_id", False)
    return make


def install(app=None) -> None:
    """Mask client data in every log record of this process (once, however often it is called);
    with `app`, also write log lines in its `LOG_FORMAT` (see log_format.py)."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "masks_addresses", False):
        logging.setLogRecordFactory(_masking(factory))
    if app is not None:
        from referral_service.log_format import configure

        configure(app.config.get("LOG_FORMAT", "text"), app.name)

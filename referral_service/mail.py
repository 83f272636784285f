"""Sending email through an SMTP server named by `MAIL_URL`, with the standard library.

`MAIL_URL` is `smtp://user:password@host:port` (plain SMTP, port 25 by default),
`smtps://...` (TLS from the first byte, port 465) or `smtp+starttls://...` (STARTTLS before
anything else is said, port 587); the user and password are optional and percent-decoded.
`MAIL_FROM` is the sender, `Shop <referrals@shop.example>` or a bare address. TLS checks the
server's certificate and name with the system's trust store.
"""

import smtplib
import ssl
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import parseaddr
from urllib.parse import unquote, urlsplit

from referral_service.config import SettingsError
from referral_service.domain.text import plain_port

SCHEMES = {"smtp": ("plain", 25), "smtps": ("tls", 465), "smtp+starttls": ("starttls", 587)}
TIMEOUT = 10.0  # seconds, per connection and per command


@dataclass(frozen=True)
class MailServer:
    """Where and how to send: the server, its security, the login (if any) and the sender."""

    host: str
    port: int
    security: str  # plain, tls or starttls
    sender: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log line or a repr


def parse_mail_url(url: str, sender: str | None) -> MailServer:
    """The mail server of `MAIL_URL` and `MAIL_FROM`; raises SettingsError saying what is wrong
    (the password is never quoted back)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts = port = None
    if (
        parts is None
        or parts.scheme.lower() not in SCHEMES
        or not parts.hostname
        or not plain_port(url)
    ):
        raise SettingsError(
            "MAIL_URL must be smtp://user:password@host:port, smtps://... or "
            "smtp+starttls://... (a host, and a port from 1 to 65535 if any)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise SettingsError("MAIL_URL names a server only: no path, query or fragment")
    if port == 0:
        raise SettingsError("MAIL_URL's port must be from 1 to 65535")
    security, default_port = SCHEMES[parts.scheme.lower()]
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password is not None and username is None:
        raise SettingsError("MAIL_URL has a password without a user name")
    return MailServer(
        host=parts.hostname,
        port=port or default_port,
        security=security,
        sender=check_sender(sender),
        username=username,
        password=password,
    )


def check_sender(sender: str | None) -> str:
    """`MAIL_FROM` as given, if it is one address with an optional display name; raises
    SettingsError."""
    text = (sender or "").strip()
    _, bare = parseaddr(text)
    local, at, domain = bare.rpartition("@")
    if (
        not at
        or not local
        or "." not in domain
        or "," in text.replace(f"<{bare}>", "")  # one address only
        or not text.isprintable()
        or any(char.isspace() or char in '<>"' for char in bare)
    ):
        raise SettingsError(
            "MAIL_FROM must be the sender's address, such as referrals@shop.example or "
            '"Shop <referrals@shop.example>", when MAIL_URL is set'
        )
    return text


def server_of(config) -> MailServer | None:
    """The mail server of an app's settings, or None when `MAIL_URL` is not set; raises
    SettingsError for a bad `MAIL_URL` or `MAIL_FROM`, and when `PUBLIC_BASE_URL` is not set
    (the emails' links would lead nowhere: a worker has no request to take an address from)."""
    url = config.get("MAIL_URL")
    if not url:
        return None
    server = parse_mail_url(url, config.get("MAIL_FROM"))
    if not config.get("PUBLIC_BASE_URL"):
        raise SettingsError(
            "MAIL_URL needs PUBLIC_BASE_URL: the address of the share links and the unsubscribe "
            "link in the emails, such as https://refer.shop.example"
        )
    return server


def sender_domain(server: MailServer) -> str:
    """The domain of the sender's address (for Message-ID)."""
    return parseaddr(server.sender)[1].rpartition("@")[2].lower()


class PermanentFailure(Exception):
    """The server refused the message for good (a 5xx answer): retrying would not help."""


class TemporaryFailure(Exception):
    """The server answered that it cannot take the message now (a 4xx answer)."""


def tls_context() -> ssl.SSLContext:
    """TLS that checks the server's certificate and name against the system's trust store."""
    return ssl.create_default_context()


def send(server: MailServer, message: EmailMessage) -> None:
    """Hand `message` to the server. Raises PermanentFailure for a 5xx refusal of the recipient
    or the message, TemporaryFailure for another refusal, and OSError or smtplib.SMTPException
    for what may pass (a connection refused or cut, a timeout). What a failure says holds the
    server's answer code, never its text (which may repeat the recipient's address)."""
    context = tls_context()
    if server.security == "tls":
        client = smtplib.SMTP_SSL(server.host, server.port, timeout=TIMEOUT, context=context)
    else:
        client = smtplib.SMTP(server.host, server.port, timeout=TIMEOUT)
    try:
        if server.security == "starttls":
            client.starttls(context=context)
            client.ehlo()
        if server.username is not None:
            client.login(server.username, server.password or "")
        client.send_message(message)
    except smtplib.SMTPRecipientsRefused as refused:
        codes = [code for code, _ in refused.recipients.values()]
        if codes and all(500 <= code < 600 for code in codes):
            raise PermanentFailure(f"recipient refused ({codes[0]})") from None
        raise TemporaryFailure(f"recipient refused ({codes[0] if codes else '?'})") from None
    except smtplib.SMTPDataError as answer:
        if 500 <= answer.smtp_code < 600:
            raise PermanentFailure(f"message refused ({answer.smtp_code})") from None
        raise TemporaryFailure(f"message refused ({answer.smtp_code})") from None
    except smtplib.SMTPResponseException as answer:  # the sender refused, the login failed, ...
        raise TemporaryFailure(f"{type(answer).__name__} ({answer.smtp_code})") from None
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()


def recipient(address: str, name: str | None = None) -> Address:
    """The To of a message: an internationalized domain in its ASCII form (any server takes
    it). Raises ValueError for an address a header cannot carry (a local part that is not
    ASCII needs SMTPUTF8, which few servers offer)."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise ValueError("not an address")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError("a domain with no ASCII form") from None
    return Address(display_name=name or "", addr_spec=f"{local}@{domain}")

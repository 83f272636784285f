"""Risk signals: why a referral may be farmed, each a reason code with a weight, for the admin.

Signals that prove a self-referral (the referrer themselves, or the same normalized email) are not
here: attribution refuses those (`self_referral`). The signals below let the referral through but
flag it, and a flagged referral's rewards always wait for an admin:

- `disposable_email`: the friend's address is at a throwaway-mail domain (the maintained list of
  the `disposable-email-domains` package, plus the lines of `DISPOSABLE_DOMAINS_FILE`);
- `same_device`: the friend's device id is the referrer's own, or another of their friends';
- `same_network`: the friend's IP address *and* user agent are those of the referrer's own sign-up
  or another of their friends';
- `velocity`: more sign-ups through the referrer within `velocity_window_hours` than
  `velocity_max_signups`; `conversion_velocity`: the same, of first purchases. The window is the
  hours up to the event's own date (`occurred_at`), not up to the time it is processed: a sign-up
  or an order reported late is judged among its neighbours in time, not among later ones;
- `coupon_site`: the share-link visit came from a coupon or deal site (`Referer`);
- `similar_name`: the friend's name is the referrer's.

IP addresses, user agents and device ids are never stored: only keyed hashes (HMAC-SHA256 under a
key derived from SECRET_KEY with a salt of their own), emptied after `risk_retention_days`.
"""

import hashlib
import hmac
import ipaddress
import os
import threading
import unicodedata
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from disposable_email_domains import blocklist
from flask import current_app
from itsdangerous import Signer
from sqlalchemy import bindparam, func, or_, select, update

from referral_service.domain.clock import CLOCK_SKEW
from referral_service.domain.unit import unit_of_work
from referral_service.errors import ValidationFailed
from referral_service.extensions import db
from referral_service.models import Click, Referral, Signup

WEIGHTS = {
    "same_device": 60,
    "same_network": 40,
    "disposable_email": 40,
    "velocity": 30,
    "conversion_velocity": 30,
    "coupon_site": 30,
    "similar_name": 30,
}
MAX_SCORE = 100
SALT = "referral-service.risk-evidence"

# Coupon, voucher and deal sites (host names; their subdomains count too). Shops add their own
# in the program setting `coupon_sites`.
COUPON_SITES = frozenset(
    {
        "retailmenot.com",
        "slickdeals.net",
        "groupon.com",
        "couponfollow.com",
        "coupons.com",
        "dealspotr.com",
        "knoji.com",
        "honey.com",
        "joinhoney.com",
        "wethrift.com",
        "couponbirds.com",
        "dontpayfull.com",
        "promocodes.com",
        "vouchercodes.co.uk",
        "hotukdeals.com",
        "myvouchercodes.co.uk",
        "vouchercloud.com",
        "mydealz.de",
        "gutscheine.de",
        "dealabs.com",
        "pepper.pl",
        "pepper.com",
        "kodyrabatowe.pl",
        "kuponydorabatowe.pl",
        "promokod.pl",
        "kuponkodok.hu",
        "kuponkod.hu",
        "couponcabin.com",
        "offers.com",
        "savings.com",
        "rabattcode.de",
        "cuponation.com",
        "picodi.com",
        "ofertas.com",
    }
)


class EvidenceKeys:
    """Keyed hashes of a visitor's IP address, user agent and device id."""

    def __init__(self, secret_key: str):
        self._key = Signer(secret_key, salt=SALT, digest_method=hashlib.sha256).derive_key()

    def hash(self, kind: str, value: str | None) -> str | None:
        if not value:
            return None
        message = f"{kind}\x00{value}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()


def _keys() -> EvidenceKeys:
    return current_app.extensions["risk_evidence"]


def normalize_ip(value: str | None) -> str | None:
    """An IP address in its canonical form (IPv4 inside IPv6 unwrapped); raises ValidationFailed."""
    if value is None or value == "":
        return None
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValidationFailed(fields={"ip": ["Not an IPv4 or IPv6 address."]}) from None
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return str(address)


def evidence(ip: str | None, user_agent: str | None, device_id: str | None) -> dict:
    """`{ip_hash, ua_hash, device_hash}` of what the shop saw at sign-up (None where it saw none).

    Raises ValidationFailed for an `ip` that is not an address.
    """
    keys = _keys()
    return {
        "ip_hash": keys.hash("ip", normalize_ip(ip)),
        "ua_hash": keys.hash("ua", (user_agent or "").strip() or None),
        "device_hash": keys.hash("device", (device_id or "").strip() or None),
    }


def visit_evidence(ip: str | None, user_agent: str | None) -> dict:
    """`{ip_hash, ua_hash}` of a share-link visit (an unparsable address is kept as no address)."""
    try:
        address = normalize_ip(ip)
    except ValidationFailed:
        address = None
    keys = _keys()
    return {"ip_hash": keys.hash("ip", address), "ua_hash": keys.hash("ua", user_agent or None)}


def referer_host(referer: str | None) -> str | None:
    """The host name of a `Referer` header, lower case, or None."""
    if not referer:
        return None
    try:
        host = urlsplit(referer.strip()).hostname
    except ValueError:
        return None
    return host[:255] if host else None


def _within(host: str, sites) -> bool:
    labels = host.lower().rstrip(".").split(".")
    return any(".".join(labels[i:]) in sites for i in range(len(labels) - 1))


def is_coupon_site(host: str | None, extra=()) -> bool:
    """Whether a host is a known coupon or deal site (or a subdomain of one)."""
    return bool(host) and (_within(host, COUPON_SITES) or _within(host, frozenset(extra)))


class DisposableDomains:
    """The package's list, plus the domains of a local file re-read whenever it changes.

    The file (one domain per line, `#` starts a comment) lets an operator add domains at once; an
    upgrade of `disposable-email-domains` brings the maintained list's updates.
    """

    def __init__(self, path: str | None):
        self.path = path
        self._extra: frozenset[str] = frozenset()
        self._stamp = None
        self._lock = threading.Lock()

    def _local(self) -> frozenset[str]:
        if not self.path:
            return self._extra
        try:
            stamp = os.stat(self.path).st_mtime_ns
        except OSError:
            stamp = None
        if stamp != self._stamp:
            with self._lock:
                domains = set()
                if stamp is not None:
                    with open(self.path, encoding="utf-8", errors="replace") as lines:
                        for line in lines:
                            domain = line.split("#", 1)[0].strip().lower()
                            if domain:
                                domains.add(domain)
                self._extra, self._stamp = frozenset(domains), stamp
        return self._extra

    def __contains__(self, email: str) -> bool:
        domain = email.rpartition("@")[2].strip().lower()
        return bool(domain) and (_within(domain, blocklist) or _within(domain, self._local()))


def is_disposable(email: str) -> bool:
    """Whether an address is at a disposable-mail domain (or a subdomain of one)."""
    return email in current_app.extensions["disposable_domains"]


def _name_key(name: str | None) -> str | None:
    if not name:
        return None
    decomposed = unicodedata.normalize("NFKD", name.casefold())
    letters = "".join(c if c.isalnum() else " " for c in decomposed if not unicodedata.combining(c))
    words = sorted(letters.split())
    return " ".join(words) or None


def similar_names(a: str | None, b: str | None) -> bool:
    """The same name, whatever the case, accents, punctuation or order of the words."""
    key = _name_key(a)
    return key is not None and key == _name_key(b)


def score(reasons) -> int:
    """The weights of the reasons, added up, at most MAX_SCORE."""
    return min(MAX_SCORE, sum(WEIGHTS.get(reason, 0) for reason in set(reasons)))


def merged(reasons, more) -> list[str]:
    """Reasons in a stable order (the order of WEIGHTS), each once."""
    found = set(reasons) | set(more)
    return [reason for reason in WEIGHTS if reason in found]


def signup_signals(
    connection,
    referrer: dict,
    friend: dict,
    seen: dict,
    visit_host: str | None,
    settings: dict,
    occurred_at: datetime,
) -> list[str]:
    """The reasons to flag a sign-up credited to `referrer` (`{id, name}`).

    `friend` is `{email, name}`, `seen` the sign-up's evidence hashes, `visit_host` the site the
    share-link visit came from.
    """
    reasons = []
    if is_disposable(friend["email"]):
        reasons.append("disposable_email")
    if (
        seen.get("device_hash")
        and connection.execute(
            _SAME_DEVICE, {"device_hash": seen["device_hash"], "referrer_id": referrer["id"]}
        ).first()
    ):
        reasons.append("same_device")
    if (
        seen.get("ip_hash")
        and seen.get("ua_hash")
        and connection.execute(
            _SAME_NETWORK,
            {"ip_hash": seen["ip_hash"], "ua_hash": seen["ua_hash"], "referrer_id": referrer["id"]},
        ).first()
    ):
        reasons.append("same_network")
    recent = connection.execute(
        _RECENT_SIGNUPS, {"referrer_id": referrer["id"], **_window(occurred_at, settings)}
    ).scalar()
    if recent >= settings["velocity_max_signups"]:
        reasons.append("velocity")
    if is_coupon_site(visit_host, settings["coupon_sites"]):
        reasons.append("coupon_site")
    if similar_names(friend.get("name"), referrer.get("name")):
        reasons.append("similar_name")
    return merged(reasons, ())


def purchase_signals(
    connection, referrer_id: int, friend_email: str | None, settings: dict, occurred_at: datetime
) -> list:
    """The reasons to flag a conversion by an order dated `occurred_at`: many first purchases
    through the referrer in the window before it, or a friend whose address has become known as
    disposable since they signed up."""
    reasons = []
    converted = connection.execute(
        _RECENT_CONVERSIONS, {"referrer_id": referrer_id, **_window(occurred_at, settings)}
    ).scalar()
    if converted >= settings["velocity_max_signups"]:
        reasons.append("conversion_velocity")
    if friend_email and is_disposable(friend_email):  # an erased friend has no address
        reasons.append("disposable_email")
    return reasons


def _window(occurred_at: datetime, settings: dict) -> dict:
    """`{since, until}`: the `velocity_window_hours` up to an event's date (and the clock skew
    after it, for events reported at once from clocks a little apart), both ends counted."""
    return {
        "since": occurred_at - timedelta(hours=settings["velocity_window_hours"]),
        "until": occurred_at + CLOCK_SKEW,
    }


def purge(retention_days: int, now: datetime) -> dict:
    """Empty the evidence hashes of sign-ups and clicks older than `retention_days`.

    Returns `{signups: n, clicks: n}`, the rows emptied. Safe to run from cron.
    """
    cutoff = now - timedelta(days=retention_days)
    with unit_of_work(now):
        signups = db.session.execute(
            update(Signup)
            .where(
                Signup.occurred_at < cutoff,
                or_(
                    Signup.ip_hash.is_not(None),
                    Signup.ua_hash.is_not(None),
                    Signup.device_hash.is_not(None),
                ),
            )
            .values(ip_hash=None, ua_hash=None, device_hash=None)
            .execution_options(synchronize_session=False)
        ).rowcount
        clicks = db.session.execute(
            update(Click)
            .where(
                Click.occurred_at < cutoff,
                or_(Click.ip_hash.is_not(None), Click.ua_hash.is_not(None)),
            )
            .values(ip_hash=None, ua_hash=None)
            .execution_options(synchronize_session=False)
        ).rowcount
    return {"signups": signups, "clicks": clicks}


_signups = Signup.__table__
_referrals = Referral.__table__
_THEIRS = or_(
    _signups.c.customer_id == bindparam("referrer_id"),
    _referrals.c.referrer_id == bindparam("referrer_id"),
)
_SIGNUPS_OF_THEIRS = _signups.outerjoin(_referrals, _referrals.c.id == _signups.c.referral_id)
_SAME_DEVICE = (
    select(_signups.c.id)
    .select_from(_SIGNUPS_OF_THEIRS)
    .where(_signups.c.device_hash == bindparam("device_hash"), _THEIRS)
    .limit(1)
)
_SAME_NETWORK = (
    select(_signups.c.id)
    .select_from(_SIGNUPS_OF_THEIRS)
    .where(
        _signups.c.ip_hash == bindparam("ip_hash"),
        _signups.c.ua_hash == bindparam("ua_hash"),
        _THEIRS,
    )
    .limit(1)
)
_RECENT_SIGNUPS = select(func.count()).where(
    _referrals.c.referrer_id == bindparam("referrer_id"),
    _referrals.c.attributed_at >= bindparam("since"),
    _referrals.c.attributed_at <= bindparam("until"),
)
_RECENT_CONVERSIONS = select(func.count()).where(
    _referrals.c.referrer_id == bindparam("referrer_id"),
    _referrals.c.status == "converted",
    _referrals.c.converted_at >= bindparam("since"),
    _referrals.c.converted_at <= bindparam("until"),
)

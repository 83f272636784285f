"""Outbound webhooks (Standard Webhooks): endpoints, their secrets, the SSRF rule, deliveries.

An endpoint names a URL and the event types it takes (or `["*"]`). Its signing secret is
`whsec_` and the base64 of 32 random bytes, shown once at creation and at each rotation; it is
stored sealed (`seal`): encrypted and authenticated with keys derived from SECRET_KEY, so that
it can sign, yet a copy of the database alone does not give it away.

The worker's relay calls `plan_deliveries(event, now)` for each event of the outbox: one
delivery row per enabled endpoint whose filter takes the event (unique per endpoint and event,
so a second relay adds nothing). `deliver(delivery_id, now)` makes one attempt of a due
delivery: it claims the row with a lease in one unit of work, sends the POST outside any
transaction, and records the attempt and the next try in a second unit. Only the holder of the
lease records a failure; a success is recorded once (a conditional update from `pending`), so
two workers racing for one delivery make one success.

Targets: `check_url` refuses anything but https, URLs with a user name or password, and hosts
that resolve to a private, loopback, link-local, multicast, reserved, shared (CGNAT) or
unspecified address (also inside IPv4-mapped, 6to4, Teredo or NAT64 IPv6 addresses);
`WEBHOOKS_ALLOW_PRIVATE` lets http and such addresses in. The same check runs again when the
connection is opened (`GuardedBackend`): the name is resolved once, every address checked, and
the connection made to the address that was checked, so a name that resolves elsewhere later
(DNS rebinding) reaches nothing it should not. TLS still names the host (SNI, certificate).
"""

import base64
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import random
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

import httpcore
import httpx
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app
from sqlalchemy import bindparam, func, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from referral_service.domain import events, pages
from referral_service.domain.text import has_control, plain_port
from referral_service.domain.unit import current, unit_of_work
from referral_service.errors import Conflict, NotFound, ValidationFailed
from referral_service.extensions import db
from referral_service.models import OutboxEvent, utcnow
from referral_service.models.webhook import WebhookAttempt, WebhookDelivery, WebhookEndpoint

log = logging.getLogger(__name__)

# The retry schedule (Standard Webhooks style): the wait before each attempt, the first one
# right away. After the last attempt fails the delivery is `failed`; the waits add up to about
# three days (75 h 35 min). Each wait is stretched or shrunk at random by up to JITTER.
SCHEDULE = (
    timedelta(0),
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=14),
    timedelta(hours=20),
    timedelta(hours=24),
)
JITTER = 0.10
TIMEOUT = 10.0  # seconds: connect, send, and each wait for the receiver's answer
LEASE = timedelta(seconds=60)  # a claimed attempt's time; longer than any attempt takes
FAILING_LIMIT = timedelta(days=5)  # an endpoint failing this long is disabled
ROTATION_OVERLAP = timedelta(hours=24)  # the old secret still signs this long after a rotation
MAX_RETRY_AFTER = timedelta(days=1)  # a 429's Retry-After is honoured up to this
MAX_URL = 2048
MAX_DESCRIPTION = 500
MAX_ERROR = 500
MAX_RESPONSE_BODY = 2048  # bytes of a receiver's answer kept in the log
SHOWN_ATTEMPTS = 20  # attempts of each delivery shown in its log
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
USER_AGENT = "referral-service-webhooks/1"
SYSTEM_ACTOR = "system:webhooks"
ALLOW_PRIVATE_HINT = "WEBHOOKS_ALLOW_PRIVATE=1 allows {what}, for development"
EXAMPLE_URL = "https://shop.example/hooks"

_SEAL_PREFIX = "f1."
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
# 192.0.0.0/24 (RFC 6890), not routable; some Python versions count a few of it as global
_IETF_PROTOCOLS = ipaddress.ip_network("192.0.0.0/24")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_random = random.Random()


# --- secrets -------------------------------------------------------------------------------------


def new_secret() -> str:
    """A signing secret in the Standard Webhooks format: `whsec_` and base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _fernet(secret_key: str) -> Fernet:
    """The Fernet key of one SECRET_KEY: HMAC-SHA256 of a fixed label, keyed by SECRET_KEY."""
    key = hmac.new(
        secret_key.encode("utf-8", "surrogatepass"),
        b"referral-service webhook signing secret",
        hashlib.sha256,
    ).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def _sealer() -> MultiFernet:
    """Seals with SECRET_KEY; opens with it or any of SECRET_KEY_FALLBACKS."""
    fallbacks = current_app.config.get("SECRET_KEY_FALLBACKS") or []
    return _multi_fernet((current_app.secret_key, *fallbacks))


@functools.lru_cache(maxsize=8)
def _multi_fernet(keys: tuple[str, ...]) -> MultiFernet:
    """The Fernet keys of these SECRET_KEYs (derived once per process and set of keys)."""
    return MultiFernet([_fernet(key) for key in keys])


def seal(secret: str) -> str:
    """`secret` encrypted and authenticated for storage (a Fernet token of the `cryptography`
    package: AES-128-CBC and HMAC-SHA256) under a key derived from SECRET_KEY."""
    return _SEAL_PREFIX + _sealer().encrypt(secret.encode()).decode()


class SealBroken(Exception):
    """A sealed secret that no key of SECRET_KEY or SECRET_KEY_FALLBACKS opens."""


def unseal(sealed: str) -> str:
    """The secret `seal` sealed, opened with SECRET_KEY or one of SECRET_KEY_FALLBACKS; raises
    SealBroken when none of them sealed it."""
    try:
        return _sealer().decrypt(sealed.removeprefix(_SEAL_PREFIX).encode()).decode()
    except InvalidToken:
        raise SealBroken(
            "no key of SECRET_KEY or SECRET_KEY_FALLBACKS opens the endpoint's secret"
        ) from None


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with the secret's bytes (after whsec_)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


# --- which targets may be reached ----------------------------------------------------------------


def address_refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a webhook may not go to `address` ("a loopback address", ...), or None if public."""
    if isinstance(address, ipaddress.IPv6Address):
        # an IPv4 address reached through IPv6: IPv4-mapped and NAT64 go to it alone (its rule
        # decides); 6to4 and Teredo carry one that must be public as well as the IPv6 address
        translated = address.ipv4_mapped
        if translated is None and address in _NAT64:
            translated = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        tunnelled = address.sixtofour or (address.teredo[1] if address.teredo else None)
        for inner in (translated, tunnelled):
            why = address_refusal(inner) if inner is not None else None
            if why:
                return f"{why} inside an IPv6 address"
        if translated is not None:
            return None
    for word, hit in (
        ("an unspecified", address.is_unspecified),
        ("a loopback", address.is_loopback),
        ("a link-local", address.is_link_local),
        ("a multicast", address.is_multicast),
        ("a shared (CGNAT)", address in _CGNAT),
        ("a special-purpose (IETF protocol assignments)", address in _IETF_PROTOCOLS),
        ("a reserved", address.is_reserved),
        ("a private", address.is_private),
        ("a non-public", not address.is_global),
    ):
        if hit:
            return f"{word} address"
    return None


class RefusedTarget(httpcore.ConnectError):
    """A connection refused before it was opened: the host resolves to an address not allowed."""


def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (an address as given resolves to itself); raises
    socket.gaierror (an OSError) when it does not resolve."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def checked_addresses(host: str, port: int) -> list[str]:
    """The addresses of `host`, all public; raises ValueError saying why not (one of them is
    not public, or the name does not resolve)."""
    try:
        addresses = resolve(host, port)
    except UnicodeError:
        raise ValueError(f"The host {host!r} is not a valid host name.") from None
    except OSError as error:
        reason = error.strerror or str(error) or "no address found"
        raise ValueError(f"The host {host!r} does not resolve ({reason}).") from None
    if not addresses:
        raise ValueError(f"The host {host!r} does not resolve (no address found).")
    for found in addresses:
        address = ipaddress.ip_address(found.split("%", 1)[0])
        why = address_refusal(address)
        if why:
            named = (
                f"The address {found} is {why}"
                if _as_address(host) == address
                else f"The host {host!r} resolves to {found}, {why}"
            )
            hint = ALLOW_PRIVATE_HINT.format(what="them")
            raise ValueError(f"{named}: webhooks go to public addresses only ({hint}).")
    return addresses


def _as_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `host` is when it is written as one (`127.0.0.1`, `::1`), else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_url(url, allow_private: bool | None = None) -> str:
    """`url` if a webhook may be sent to it; raises ValidationFailed (field `url`) saying why not.

    Refused: a URL that is not absolute or holds spaces or control characters, a scheme other
    than https (http too, unless `allow_private`), a user name or password, a fragment, and a
    host that resolves to an address that is not public (unless `allow_private`). `allow_private`
    defaults to the app's WEBHOOKS_ALLOW_PRIVATE.
    """
    if allow_private is None:
        allow_private = bool(current_app.config.get("WEBHOOKS_ALLOW_PRIVATE"))
    try:
        _check_url(url, allow_private)
    except ValueError as error:
        raise ValidationFailed(fields={"url": [str(error)]}) from None
    return url


def _check_url(url, allow_private: bool) -> None:
    if not isinstance(url, str) or not url:
        raise ValueError(f"Must be an absolute URL, such as {EXAMPLE_URL}.")
    if len(url) > MAX_URL:
        raise ValueError(f"Must be at most {MAX_URL} characters.")
    if has_control(url) or any(char.isspace() for char in url):
        raise ValueError("Must not hold spaces or control characters.")
    scheme = url.partition(":")[0].lower() if ":" in url else ""
    if scheme not in ("http", "https"):
        wanted = "an http or https URL" if allow_private else "an https URL"
        if scheme.isascii() and scheme.isalnum():  # a scheme such as `ftp` or `javascript`
            raise ValueError(f"Must be {wanted}: webhooks are not sent to {scheme}: URLs.")
        start = "http:// or https://" if allow_private else "https://"
        raise ValueError(f"Must be {wanted}, starting with {start}, such as {EXAMPLE_URL}.")
    if scheme == "http" and not allow_private:
        hint = ALLOW_PRIVATE_HINT.format(what="http")
        raise ValueError(f"Must be an https URL, not http ({hint}).")
    try:
        parsed = httpx.URL(url)
        host, port = parsed.host, parsed.port
    except (httpx.InvalidURL, ValueError, UnicodeError):
        raise ValueError("Not a valid URL.") from None
    if not url[len(scheme) :].startswith("://") or not host:
        raise ValueError(f"Must be an absolute URL with a host, such as {EXAMPLE_URL}.")
    if parsed.userinfo or "@" in url.split("://", 1)[1].split("/", 1)[0]:
        raise ValueError("Must not carry a user name or password (user@host).")
    if parsed.fragment or "#" in url:
        raise ValueError("Must not have a fragment (#...).")
    if not plain_port(url) or (port is not None and not 0 < port <= 65535):
        raise ValueError("The port must be 1 to 65535, written in digits 0-9.")
    if not allow_private:
        checked_addresses(parsed.raw_host.decode("ascii"), port or 443)


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's network backend, checking the address of each connection before opening it:
    the host is resolved once, every address must be public, and the connection goes to the
    address checked (the request and TLS still name the host)."""

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            address = checked_addresses(host, port)[0]
        except ValueError as error:
            raise RefusedTarget(f"Refused before connecting: {error}") from None
        return super().connect_tcp(address, port, timeout, local_address, socket_options)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport over a connection pool whose connections are checked (GuardedBackend).

    No proxy from the environment: a proxy would open the connection to the target itself,
    past the check."""

    def __init__(self):
        super().__init__(trust_env=False)
        ssl_context = httpx.create_ssl_context(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context, network_backend=GuardedBackend()
        )


_clients: dict[tuple[int, bool], httpx.Client] = {}
_clients_lock = threading.Lock()


def client(allow_private: bool) -> httpx.Client:
    """This process's HTTP client for deliveries (its connections are kept alive and reused);
    with `allow_private`, connections are not checked."""
    key = (os.getpid(), allow_private)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = httpx.Client(
                transport=httpx.HTTPTransport(trust_env=False)
                if allow_private
                else GuardedTransport(),
                follow_redirects=False,
                trust_env=False,
                headers={"User-Agent": USER_AGENT},
            )
        return _clients[key]


# --- endpoints -----------------------------------------------------------------------------------


@dataclass
class CreatedEndpoint:
    """An endpoint with its secret, as created or rotated: `secret` is shown this once."""

    endpoint: WebhookEndpoint
    secret: str


def check_events(types) -> list[str]:
    """The event filter in the order of EVENT_TYPES, without repeats: `["*"]` (also when `*` is
    listed with other types) or known types; raises ValidationFailed (field `events`)."""
    if not isinstance(types, list | tuple) or not types:
        raise ValidationFailed(fields={"events": ["Must list one event type or more, or '*'."]})
    if not all(isinstance(kind, str) for kind in types):
        raise ValidationFailed(fields={"events": ["Each event type must be a string."]})
    if events.ALL in types:  # every type, whatever else is listed
        return [events.ALL]
    unknown = sorted({kind for kind in types if kind not in events.EVENT_TYPES})
    if unknown:
        shown = ", ".join(repr(kind[:64]) for kind in unknown[:5])
        raise ValidationFailed(
            fields={
                "events": [f"Unknown event type {shown}: one of {', '.join(events.EVENT_TYPES)}."]
            }
        )
    return [kind for kind in events.EVENT_TYPES if kind in types]


def check_description(description) -> str:
    """A description: at most MAX_DESCRIPTION printable characters (ValidationFailed if not)."""
    if description is None:
        return ""
    if not isinstance(description, str) or has_control(description):
        raise ValidationFailed(fields={"description": ["Must not contain control characters."]})
    if len(description) > MAX_DESCRIPTION:
        raise ValidationFailed(
            fields={"description": [f"Must be at most {MAX_DESCRIPTION} characters."]}
        )
    return description.strip()


def _check_switch(value) -> bool:
    if not isinstance(value, bool):
        raise ValidationFailed(fields={"disabled": ["Must be true or false."]})
    return value


def _checked(values: dict) -> dict:
    """Each `name: (check, value)` checked: `{name: checked value}`; raises ValidationFailed
    with the problems of all the fields at once."""
    checked, problems = {}, {}
    for name, (check, value) in values.items():
        try:
            checked[name] = check(value)
        except ValidationFailed as error:
            problems.update(error.fields or {name: [error.message]})
    if problems:
        raise ValidationFailed(fields=problems)
    return checked


def _audited(endpoint: WebhookEndpoint) -> dict:
    return {
        "url": endpoint.url,
        "events": list(endpoint.events),
        "description": endpoint.description,
        "disabled": endpoint.disabled,
        "disabled_reason": endpoint.disabled_reason,
    }


def create_endpoint(
    url: str, types: list[str], description: str | None, actor: str, now: datetime | None = None
) -> CreatedEndpoint:
    """A new endpoint with a new secret (audited, never the secret); raises ValidationFailed for a
    URL `check_url` refuses, an unknown event type or a bad description."""
    url, types, description = _checked(
        {"url": (check_url, url), "events": (check_events, types)}
        | {"description": (check_description, description)}
    ).values()
    secret = new_secret()
    with unit_of_work(now) as unit:
        endpoint = WebhookEndpoint(
            url=url,
            events=types,
            description=description,
            secret=seal(secret),
            disabled=False,
            created_at=unit.now,
            updated_at=unit.now,
        )
        db.session.add(endpoint)
        db.session.flush()
        unit.audit(
            actor,
            "webhook_endpoint.create",
            "webhook_endpoint",
            endpoint.id,
            None,
            _audited(endpoint),
        )
    return CreatedEndpoint(endpoint, secret)


def list_endpoints(cursor: str | None = None, limit: int | None = None):
    """`(endpoints, next_cursor)`, newest first; raises ValidationFailed for a bad cursor."""
    return pages.page(select(WebhookEndpoint), WebhookEndpoint.id, cursor, limit)


def get_endpoint(endpoint_id: int) -> WebhookEndpoint:
    """The endpoint; raises NotFound."""
    endpoint = db.session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        raise NotFound(f"No webhook endpoint {endpoint_id}.")
    return endpoint


def _locked_endpoint(endpoint_id: int) -> WebhookEndpoint:
    endpoint = db.session.scalar(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if endpoint is None:
        raise NotFound(f"No webhook endpoint {endpoint_id}.")
    return endpoint


UPDATABLE = ("url", "events", "description", "disabled")


def update_endpoint(
    endpoint_id: int, changes: dict, actor: str, now: datetime | None = None
) -> WebhookEndpoint:
    """Change `url`, `events`, `description` or `disabled` (audited). Enabling an endpoint clears
    its reason and its failing time; its paused deliveries go on. Raises NotFound, or
    ValidationFailed for an unknown field or a value the rules refuse."""
    unknown = sorted(set(changes) - set(UPDATABLE))
    if unknown:
        raise ValidationFailed(fields={name: ["Unknown field."] for name in unknown})
    rules = {"url": check_url, "events": check_events, "description": check_description}
    rules["disabled"] = _check_switch
    checked = _checked({name: (rules[name], value) for name, value in changes.items()})
    with unit_of_work(now) as unit:
        endpoint = _locked_endpoint(endpoint_id)
        before = _audited(endpoint)
        for name in ("url", "events", "description"):
            if name in checked:
                setattr(endpoint, name, checked[name])
        if "disabled" in checked and checked["disabled"] != endpoint.disabled:
            if checked["disabled"]:
                _disable(endpoint, f"Disabled by {actor}.", unit.now)
            else:
                endpoint.disabled = False
                endpoint.disabled_reason = endpoint.disabled_at = endpoint.failing_since = None
        after = _audited(endpoint)
        if after != before:
            endpoint.updated_at = unit.now
            unit.audit(
                actor, "webhook_endpoint.update", "webhook_endpoint", endpoint.id, before, after
            )
    return endpoint


def _disable(endpoint: WebhookEndpoint, reason: str, now: datetime) -> None:
    endpoint.disabled = True
    endpoint.disabled_reason = reason[:MAX_DESCRIPTION]
    endpoint.disabled_at = now


def delete_endpoint(endpoint_id: int, actor: str, now: datetime | None = None) -> None:
    """Delete the endpoint with its deliveries and their log (audited); raises NotFound."""
    with unit_of_work(now) as unit:
        endpoint = _locked_endpoint(endpoint_id)
        before = _audited(endpoint)
        db.session.delete(endpoint)
        unit.audit(actor, "webhook_endpoint.delete", "webhook_endpoint", endpoint_id, before, None)


def rotate_secret(endpoint_id: int, actor: str, now: datetime | None = None) -> CreatedEndpoint:
    """A new secret for the endpoint, shown this once; the current one keeps signing beside it
    for ROTATION_OVERLAP (both signatures are sent). Audited; raises NotFound."""
    secret = new_secret()
    with unit_of_work(now) as unit:
        endpoint = _locked_endpoint(endpoint_id)
        endpoint.previous_secret = endpoint.secret
        endpoint.previous_secret_until = unit.now + ROTATION_OVERLAP
        endpoint.secret = seal(secret)
        endpoint.updated_at = unit.now
        unit.audit(
            actor,
            "webhook_endpoint.rotate_secret",
            "webhook_endpoint",
            endpoint.id,
            None,
            {"previous_secret_until": endpoint.previous_secret_until.isoformat()},
        )
    return CreatedEndpoint(endpoint, secret)


# --- deliveries ----------------------------------------------------------------------------------


def plan_deliveries(event, now: datetime) -> list[int]:
    """Add a due delivery of `event` (an OutboxEvent) for each enabled endpoint whose filter takes
    its type, in the caller's transaction (no commit); the ids of the rows added. A delivery that
    exists already (the same endpoint and event) is left alone, so planning twice adds nothing."""
    unit = current()  # the relay plans a batch of events in one unit: the endpoints read once
    rows = unit.memo.get("webhook_endpoints") if unit is not None else None
    if rows is None:
        rows = db.session.execute(
            select(WebhookEndpoint.id, WebhookEndpoint.events).where(
                WebhookEndpoint.disabled.is_(False)
            )
        ).all()
        if unit is not None:
            unit.memo["webhook_endpoints"] = rows
    chosen = [id for id, types in rows if events.ALL in types or event.type in types]
    if not chosen:
        return []
    values = [
        {
            "endpoint_id": endpoint_id,
            "event_id": event.event_id,
            "event_type": event.type,
            "status": "pending",
            "step": 0,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for endpoint_id in chosen
    ]
    statement = _PLAN[db.session.get_bind().dialect.name == "postgresql"]
    return sorted(db.session.scalars(statement, values))


# the insert of planned deliveries, built once per dialect (the relay plans one per event)
_PLAN = {
    is_postgresql: (postgresql if is_postgresql else sqlite)
    .insert(WebhookDelivery.__table__)
    .on_conflict_do_nothing(index_elements=["endpoint_id", "event_id"])
    .returning(WebhookDelivery.__table__.c.id)
    for is_postgresql in (False, True)
}


def _enabled_endpoints():
    return select(WebhookEndpoint.id).where(WebhookEndpoint.disabled.is_(False))


def due_deliveries(now: datetime, limit: int = 100) -> list[int]:
    """Ids of pending deliveries due at `now`, not claimed (or whose lease ran out), of enabled
    endpoints, the longest waiting first: the worker's sweep."""
    query = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until <= now),
            WebhookDelivery.endpoint_id.in_(_enabled_endpoints()),
        )
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
    )
    return list(db.session.scalars(query))


@dataclass
class _Request:
    """What a claimed attempt sends, read in the claim's transaction."""

    delivery_id: int
    endpoint_id: int
    token: str
    step: int
    url: str
    headers: dict
    body: bytes
    refusal: str | None = None  # why nothing is sent (a secret that no key opens)
    failing_since: datetime | None = None  # the endpoint's, when the attempt was claimed


@dataclass
class _Outcome:
    status_code: int | None
    duration_ms: int
    error: str | None
    response_body: str | None
    retry_after: str | None


def deliver(
    delivery_id: int, now: datetime | None = None, timeout: float = TIMEOUT
) -> datetime | None:
    """Make one attempt of the delivery if it is due and no other worker holds it.

    Returns when the next attempt is due (the delivery is still pending, and not due yet or
    just failed), else None (delivered, failed for good, claimed by another worker, or its
    endpoint disabled or gone). `now` is the attempt's time (the real time when None).
    """
    now = now or utcnow()
    request = _claim(delivery_id, now)
    if not isinstance(request, _Request):
        return request
    outcome = _send(request, timeout)
    return _record(request, outcome, now)


# The statements of one attempt, built once: an attempt is two short transactions (the claim,
# then the record), and the worker makes hundreds a second. Core statements on the tables, with
# the values bound at each execution (no ORM bookkeeping: nothing is loaded into the session).
_deliveries = WebhookDelivery.__table__
_endpoints = WebhookEndpoint.__table__
_CLAIM = (
    update(_deliveries)
    .where(
        _deliveries.c.id == bindparam("delivery"),
        _deliveries.c.status == "pending",
        _deliveries.c.next_attempt_at <= bindparam("now"),
        or_(_deliveries.c.lease_until.is_(None), _deliveries.c.lease_until <= bindparam("now")),
        _deliveries.c.endpoint_id.in_(
            select(_endpoints.c.id).where(_endpoints.c.disabled.is_(False))
        ),
    )
    .values(lease_token=bindparam("token"), lease_until=bindparam("until"))
    .returning(_deliveries.c.endpoint_id, _deliveries.c.event_id, _deliveries.c.step)
)
_STILL_DUE_AT = select(_deliveries.c.next_attempt_at).where(
    _deliveries.c.id == bindparam("delivery"), _deliveries.c.status == "pending"
)
_ATTEMPT = (
    select(
        _endpoints.c.url,
        _endpoints.c.secret,
        _endpoints.c.previous_secret,
        _endpoints.c.previous_secret_until,
        _endpoints.c.failing_since,
        OutboxEvent.__table__.c.event_id,
        OutboxEvent.__table__.c.type,
        OutboxEvent.__table__.c.created_at,
        OutboxEvent.__table__.c.data,
    )
    .select_from(
        _endpoints.join(  # one row of each: the delivery's endpoint and its event
            OutboxEvent.__table__, OutboxEvent.__table__.c.event_id == bindparam("event")
        )
    )
    .where(_endpoints.c.id == bindparam("endpoint"))
)
_AFTER_ATTEMPT = {
    "step": bindparam("next_step"),
    "attempts": _deliveries.c.attempts + 1,
    "lease_token": None,
    "lease_until": None,
}
_DELIVERED = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("delivery"), _deliveries.c.status == "pending")
    .values(status="delivered", delivered_at=bindparam("finished"), next_attempt_at=None)
    .values(_AFTER_ATTEMPT)
)  # recorded once, whoever holds the lease now
_NOT_DELIVERED = (
    update(_deliveries)
    .where(
        _deliveries.c.id == bindparam("delivery"),
        _deliveries.c.status == "pending",
        _deliveries.c.lease_token == bindparam("token"),
    )
    .values(status=bindparam("new_status"), next_attempt_at=bindparam("next_at"))
    .values(_AFTER_ATTEMPT)
)
_EXISTS = select(_deliveries.c.id).where(_deliveries.c.id == bindparam("delivery"))
_LOG_ATTEMPT = insert(WebhookAttempt.__table__)


def _claim(delivery_id: int, now: datetime) -> "_Request | datetime | None":
    token = secrets.token_hex(16)
    with unit_of_work(now):
        if db.session.get_bind().dialect.name == "postgresql":
            # a claim lost with the server is harmless (the attempt is made again, with the same
            # webhook-id): no need to wait for its commit to reach the disk
            db.session.execute(text("SET LOCAL synchronous_commit TO OFF"))
        claimed = db.session.execute(
            _CLAIM, {"delivery": delivery_id, "now": now, "token": token, "until": now + LEASE}
        ).first()
        if claimed is None:
            due = db.session.scalar(_STILL_DUE_AT, {"delivery": delivery_id})
            return due if due is not None and due > now else None
        endpoint_id, event_id, step = claimed
        row = db.session.execute(_ATTEMPT, {"endpoint": endpoint_id, "event": event_id}).one()
        body = json.dumps(events.jsonable(events.as_dict(row)), separators=(",", ":")).encode()
        request = _Request(delivery_id, endpoint_id, token, step, row.url, {}, body)
        request.failing_since = row.failing_since
        try:
            signing = [unseal(row.secret)]
            if row.previous_secret and (row.previous_secret_until or now) > now:
                signing.append(unseal(row.previous_secret))
        except (SealBroken, ValueError):
            request.refusal = (
                "The endpoint's secret cannot be read: SECRET_KEY changed without the old key in "
                "SECRET_KEY_FALLBACKS. Rotate the endpoint's secret."
            )
            return request
        timestamp = int(now.timestamp())
        request.headers = {
            "webhook-id": event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(
                signature(secret, event_id, timestamp, body) for secret in signing
            ),
            "content-type": "application/json",
        }
        return request


def _clean(value: str | None, limit: int) -> str | None:
    """Text fit for the log: no NUL or other control characters but line breaks, cut short."""
    if value is None:
        return None
    return "".join(c if not has_control(c, line_breaks=True) else "\ufffd" for c in value[:limit])


def _send(request: _Request, timeout: float) -> _Outcome:
    """POST the event; never raises for what the network or the receiver does."""
    if request.refusal:
        return _Outcome(None, 0, request.refusal, None, None)
    allow_private = bool(current_app.config.get("WEBHOOKS_ALLOW_PRIVATE"))
    started = time.monotonic()
    status = body = retry_after = error = None
    try:
        with client(allow_private).stream(
            "POST", request.url, content=request.body, headers=request.headers, timeout=timeout
        ) as response:
            status = response.status_code
            retry_after = response.headers.get("retry-after")
            received = bytearray()
            for chunk in response.iter_bytes():  # the answer is kept for the log only
                received += chunk
                if len(received) >= MAX_RESPONSE_BODY or time.monotonic() - started > timeout:
                    break
            body = bytes(received[:MAX_RESPONSE_BODY]).decode("utf-8", "replace")
            if response.is_redirect:
                location = response.headers.get("location", "")
                error = f"Answered {status} (a redirect to {location[:200]!r}): not followed."
    except httpx.TimeoutException:
        error = f"Timed out after {timeout:g} s."
    except httpx.HTTPError as failure:
        error = f"{type(failure).__name__}: {failure}" if str(failure) else type(failure).__name__
    except Exception as failure:  # a fault of ours must not leave the lease to run out
        log.exception("webhook delivery %s failed unexpectedly", request.delivery_id)
        error = f"Could not send: {type(failure).__name__}."
    duration_ms = round((time.monotonic() - started) * 1000)
    return _Outcome(
        status, duration_ms, _clean(error, MAX_ERROR), _clean(body, MAX_RESPONSE_BODY), retry_after
    )


def retry_after_delay(value: str | None, now: datetime) -> timedelta | None:
    """A Retry-After header (seconds, or an HTTP date) as a wait from `now`, at most
    MAX_RETRY_AFTER; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        delay = timedelta(seconds=int(value[:7]))
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        delay = when - now
    return min(max(delay, timedelta(0)), MAX_RETRY_AFTER)


def next_wait(step: int) -> timedelta | None:
    """The wait after `step` attempts failed (SCHEDULE[step], with jitter), or None after the
    last one."""
    if step >= len(SCHEDULE):
        return None
    return SCHEDULE[step] * _random.uniform(1 - JITTER, 1 + JITTER)


def _record(request: _Request, outcome: _Outcome, now: datetime) -> datetime | None:
    finished = now + timedelta(milliseconds=outcome.duration_ms)
    success = outcome.status_code is not None and 200 <= outcome.status_code < 300
    step = request.step + 1
    next_at = None
    gone = outcome.status_code == 410
    if not success and not gone:
        wait = next_wait(step)
        if wait is not None and outcome.status_code == 429:
            asked = retry_after_delay(outcome.retry_after, finished)
            wait = max(wait, asked) if asked is not None else wait
        next_at = finished + wait if wait is not None else None
    error = outcome.error
    if gone and not error:
        error = "Answered 410 Gone: the endpoint is disabled."
    with unit_of_work(now) as unit:
        if success:
            statement, values = _DELIVERED, {"finished": finished}
        else:
            statement = _NOT_DELIVERED
            values = {
                "token": request.token,
                "new_status": "pending" if next_at else "failed",
                "next_at": next_at,
            }
        changed = db.session.execute(
            statement, {"delivery": request.delivery_id, "next_step": step, **values}
        ).rowcount
        exists = changed or db.session.scalar(_EXISTS, {"delivery": request.delivery_id})
        if not exists:
            return None  # the endpoint was deleted meanwhile
        db.session.execute(
            _LOG_ATTEMPT,
            {
                "delivery_id": request.delivery_id,
                "attempted_at": now,
                "status_code": outcome.status_code,
                "duration_ms": outcome.duration_ms,
                "error": error,
                "response_body": outcome.response_body,
                "next_attempt_at": next_at,
            },
        )
        if not changed:
            return None  # another worker holds the delivery now (our lease ran out)
        _endpoint_after(request, success, gone, outcome.status_code, unit)
    return next_at


def _endpoint_after(request: _Request, success: bool, gone: bool, status, unit) -> None:
    """The endpoint's health after an attempt: a success clears its failing time; a 410
    disables it; a failure starts its failing time, and disables it after FAILING_LIMIT.
    (Nothing is written when the failing time the claim read needs no change.)"""
    endpoint, endpoint_id = WebhookEndpoint, request.endpoint_id
    since = request.failing_since
    if success:
        if since is not None:
            db.session.execute(
                update(endpoint)
                .where(endpoint.id == endpoint_id, endpoint.failing_since.is_not(None))
                .values(failing_since=None)
                .execution_options(synchronize_session=False)
            )
        return
    if since is None:
        db.session.execute(
            update(endpoint)
            .where(endpoint.id == endpoint_id, endpoint.failing_since.is_(None))
            .values(failing_since=unit.now)
            .execution_options(synchronize_session=False)
        )
    if gone:
        reason = f"The endpoint answered 410 Gone on {unit.now:%Y-%m-%d %H:%M} UTC."
        condition = endpoint.disabled.is_(False)
    elif since is not None and unit.now - since >= FAILING_LIMIT:
        reason = (
            f"Every delivery failed for {FAILING_LIMIT.days} days (the last answer: "
            f"{status if status is not None else 'none'}, {unit.now:%Y-%m-%d %H:%M} UTC)."
        )
        condition = endpoint.disabled.is_(False) & (
            endpoint.failing_since <= unit.now - FAILING_LIMIT
        )
    else:
        return
    disabled = db.session.execute(
        update(endpoint)
        .where(endpoint.id == endpoint_id, condition)
        .values(disabled=True, disabled_reason=reason, disabled_at=unit.now, updated_at=unit.now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if disabled:
        log.warning("webhook endpoint %s disabled: %s", endpoint_id, reason)
        unit.audit(
            SYSTEM_ACTOR,
            "webhook_endpoint.disable",
            "webhook_endpoint",
            endpoint_id,
            {"disabled": False},
            {"disabled": True, "disabled_reason": reason},
        )


def redeliver(
    endpoint_id: int, delivery_id: int, actor: str, now: datetime | None = None
) -> WebhookDelivery:
    """Send the delivery's event again (the same `webhook-id`): the delivery becomes pending, due
    now, at the start of the retry schedule; its earlier attempts stay in the log (audited).
    Raises NotFound (no such delivery of this endpoint), Conflict (an attempt is in flight, or
    the endpoint is disabled)."""
    with unit_of_work(now) as unit:
        delivery = db.session.scalar(
            select(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.endpoint_id == endpoint_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if delivery is None:
            raise NotFound(f"No delivery {delivery_id} of webhook endpoint {endpoint_id}.")
        endpoint = db.session.get(WebhookEndpoint, endpoint_id)
        if endpoint.disabled:
            raise Conflict("The endpoint is disabled: enable it before redelivering.")
        if delivery.lease_until is not None and delivery.lease_until > unit.now:
            raise Conflict("An attempt of this delivery is under way; try again in a minute.")
        before = {"status": delivery.status, "step": delivery.step}
        delivery.status = "pending"
        delivery.step = 0
        delivery.next_attempt_at = unit.now
        delivery.lease_token = delivery.lease_until = None
        unit.audit(
            actor,
            "webhook_delivery.redeliver",
            "webhook_delivery",
            delivery.id,
            before,
            {"status": "pending", "step": 0, "event_id": delivery.event_id},
        )
    return delivery


@dataclass
class DeliveryLog:
    """A delivery with its latest attempts (newest first)."""

    delivery: WebhookDelivery
    attempts: list[WebhookAttempt]


def list_deliveries(
    endpoint_id: int, cursor: str | None = None, limit: int | None = None
) -> tuple[list[DeliveryLog], str | None]:
    """The endpoint's deliveries, newest first, each with its last SHOWN_ATTEMPTS attempts;
    raises NotFound, or ValidationFailed for a bad cursor."""
    get_endpoint(endpoint_id)
    items, next_cursor = pages.page(
        select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id),
        WebhookDelivery.id,
        cursor,
        limit,
    )
    ids = [item.id for item in items]
    ranked = (
        select(
            WebhookAttempt.id,
            func.row_number()
            .over(partition_by=WebhookAttempt.delivery_id, order_by=WebhookAttempt.id.desc())
            .label("rank"),
        )
        .where(WebhookAttempt.delivery_id.in_(ids))
        .subquery()
    )
    attempts = db.session.scalars(
        select(WebhookAttempt)
        .join(ranked, ranked.c.id == WebhookAttempt.id)
        .where(ranked.c.rank <= SHOWN_ATTEMPTS)
        .order_by(WebhookAttempt.id.desc())
    )
    by_delivery: dict[int, list[WebhookAttempt]] = {id: [] for id in ids}
    for attempt in attempts:
        by_delivery[attempt.delivery_id].append(attempt)
    return [DeliveryLog(item, by_delivery[item.id]) for item in items], next_cursor

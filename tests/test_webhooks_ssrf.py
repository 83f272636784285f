"""Webhook targets: private, loopback and link-local addresses are refused, at registration and
again when a delivery connects (DNS rebinding), without any traffic leaving the machine.

Name resolution is stubbed (`names`); the only server is the loopback receiver, and
`loopback_only` fails any test that tries to connect anywhere else.
"""

import ipaddress
from datetime import timedelta

import pytest
from sqlalchemy import select

from referral_service.domain import webhooks
from referral_service.errors import ValidationFailed
from referral_service.extensions import db
from referral_service.models.webhook import WebhookAttempt, WebhookDelivery
from tests import test_webhooks as base

# the fixtures and helpers of the webhook tests
loopback_only, names, no_task_queue, receiver = (
    base.loopback_only,
    base.names,
    base.no_task_queue,
    base.receiver,
)
T0, emit, planned = base.T0, base.emit, base.planned

PUBLIC = "93.184.216.34"

REFUSED = [
    ("http://127.0.0.1/hooks", "https"),
    ("http://[::1]/hooks", "https"),
    ("http://169.254.169.254/latest/meta-data", "https"),
    ("http://10.0.0.1/hooks", "https"),
    ("https://127.0.0.1/hooks", "loopback"),
    ("https://127.1/hooks", "loopback"),
    ("https://2130706433/hooks", "loopback"),
    ("https://[::1]/hooks", "loopback"),
    ("https://[::ffff:127.0.0.1]/hooks", "loopback address inside an IPv6"),
    ("https://[::ffff:10.1.2.3]/hooks", "private address inside an IPv6"),
    ("https://[64:ff9b::a9fe:a9fe]/hooks", "link-local address inside an IPv6"),
    ("https://[2002:7f00:1::]/hooks", "loopback address inside an IPv6"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://[fe80::1]/hooks", "link-local"),
    ("https://10.0.0.1/hooks", "private"),
    ("https://172.16.5.4/hooks", "private"),
    ("https://192.168.1.1/hooks", "private"),
    ("https://[fd00::1]/hooks", "private"),
    ("https://100.64.0.1/hooks", "CGNAT"),
    ("https://192.0.0.8/hooks", "special-purpose"),
    ("https://0.0.0.0/hooks", "unspecified"),
    ("https://[::]/hooks", "unspecified"),
    ("https://224.0.0.1/hooks", "multicast"),
    ("https://240.0.0.1/hooks", "reserved"),
    ("https://loopback.example/hooks", "resolves to 127.0.0.1, a loopback"),
    ("https://metadata.example/hooks", "resolves to 169.254.169.254, a link-local"),
    ("https://split.example/hooks", "resolves to 10.0.0.7, a private"),
    ("https://nowhere.example/hooks", "does not resolve"),
    ("file:///etc/passwd", "file:"),
    ("gopher://127.0.0.1:6379/_FLUSHALL", "gopher:"),
    ("ftp://files.example/", "ftp:"),
    ("javascript:alert(1)", "javascript:"),
    ("dict://127.0.0.1:11211/", "dict:"),
    ("https://user:password@hooks.example/", "user name or password"),
    ("https://hooks.example@127.0.0.1/", "user name or password"),
    ("https://hooks.example/#fragment", "fragment"),
]


@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_refused_targets_are_422(app, client, admin, names, loopback_only, url, why):
    names["loopback.example"] = ["127.0.0.1"]
    names["metadata.example"] = ["169.254.169.254"]
    names["split.example"] = [PUBLIC, "10.0.0.7"]
    names["hooks.example"] = [PUBLIC]
    names["files.example"] = [PUBLIC]
    response = client.post(
        "/api/v1/webhook-endpoints", headers=admin, json={"url": url, "events": ["*"]}
    )
    assert response.status_code == 422, response.get_data(as_text=True)
    error = response.json["error"]
    assert error["code"] == "validation_error"
    (message,) = error["fields"]["url"]
    assert why in message, message
    assert loopback_only == []  # refused before any connection was opened


def test_a_public_target_is_taken(app, client, admin, names, loopback_only):
    names["hooks.example"] = [PUBLIC, "2606:2800:220:1:248:1893:25c8:1946"]
    response = client.post(
        "/api/v1/webhook-endpoints",
        headers=admin,
        json={"url": "https://hooks.example/in", "events": ["*"]},
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    assert loopback_only == []


def test_allow_private_lets_http_and_loopback_in(app, client, admin, names):
    app.config["WEBHOOKS_ALLOW_PRIVATE"] = True
    names["loopback.example"] = ["127.0.0.1"]
    for url in ("http://127.0.0.1:8080/", "https://loopback.example/", "http://[::1]/"):
        response = client.post(
            "/api/v1/webhook-endpoints", headers=admin, json={"url": url, "events": ["*"]}
        )
        assert response.status_code == 201, (url, response.get_data(as_text=True))
    for url in ("file:///etc/passwd", "gopher://127.0.0.1/", "https://a:b@127.0.0.1/"):
        response = client.post(
            "/api/v1/webhook-endpoints", headers=admin, json={"url": url, "events": ["*"]}
        )
        assert response.status_code == 422, url


def test_patch_to_a_private_target_is_422(app, client, admin, names):
    names["hooks.example"] = [PUBLIC]
    created = client.post(
        "/api/v1/webhook-endpoints",
        headers=admin,
        json={"url": "https://hooks.example/", "events": ["*"]},
    ).json
    response = client.patch(
        f"/api/v1/webhook-endpoints/{created['id']}",
        headers=admin,
        json={"url": "https://169.254.169.254/"},
    )
    assert (
        response.status_code == 422 and "link-local" in response.json["error"]["fields"]["url"][0]
    )


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("8.8.8.8", False),
        ("2001:4860:4860::8888", False),
        ("127.0.0.53", True),
        ("::ffff:8.8.8.8", False),
        ("::ffff:169.254.1.1", True),
        ("64:ff9b::808:808", False),
        ("64:ff9b::7f00:1", True),
        ("198.18.0.1", True),  # benchmarking
        ("192.0.2.1", True),  # documentation
        ("255.255.255.255", True),
        ("fc00::1", True),
        ("ff02::1", True),
    ],
)
def test_address_table(address, refused):
    assert (webhooks.address_refusal(ipaddress.ip_address(address)) is not None) is refused


def test_dns_rebinding_is_refused_at_connect_time(app, names, receiver, loopback_only):
    """The name was public when registered; when the delivery connects, it resolves to loopback
    (where a service listens): the connection is refused before it is opened."""
    names["rebind.example"] = [PUBLIC]
    url = f"https://rebind.example:{receiver.port}/hooks"
    with app.app_context():
        created = webhooks.create_endpoint(url, ["*"], None, "admin:test", now=T0)
        (delivery_id,) = planned(emit())
        names["rebind.example"] = ["127.0.0.1"]
        next_at = webhooks.deliver(delivery_id, now=T0)
        assert next_at is not None and next_at - T0 < timedelta(seconds=6)
        attempt = db.session.scalar(
            select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)
        )
        assert attempt.status_code is None
        assert "Refused before connecting" in attempt.error and "loopback" in attempt.error
        assert db.session.get(WebhookDelivery, delivery_id).status == "pending"
        assert created.endpoint.id
    assert receiver.requests == [] and loopback_only == []


def test_a_literal_address_is_checked_at_connect_time(app, receiver, loopback_only):
    """An endpoint stored before the rule (or by hand) on a loopback address: refused at
    connect time too."""
    with app.app_context():
        app.config["WEBHOOKS_ALLOW_PRIVATE"] = True
        created = webhooks.create_endpoint(receiver.url, ["*"], None, "admin:test", now=T0)
        (delivery_id,) = planned(emit())
        app.config["WEBHOOKS_ALLOW_PRIVATE"] = False
        webhooks.deliver(delivery_id, now=T0)
        attempt = db.session.scalar(select(WebhookAttempt))
        assert "Refused before connecting" in attempt.error
        assert created.endpoint.url == receiver.url
    assert receiver.requests == [] and loopback_only == []


def test_check_url_is_the_one_rule(app, names):
    names["hooks.example"] = [PUBLIC]
    with app.app_context():
        assert webhooks.check_url("https://hooks.example/x") == "https://hooks.example/x"
        with pytest.raises(ValidationFailed) as raised:
            webhooks.check_url("https://127.0.0.1/")
        assert "WEBHOOKS_ALLOW_PRIVATE" in raised.value.fields["url"][0]


HINT = "WEBHOOKS_ALLOW_PRIVATE=1 allows them, for development"
# every refusal of check_url, word for word: each one a sentence an admin can act on
MESSAGES = [
    ("", False, "Must be an absolute URL, such as https://shop.example/hooks."),
    ("https://x.example/" + "a" * 2048, False, "Must be at most 2048 characters."),
    ("https://x.example/a b", False, "Must not hold spaces or control characters."),
    (
        "//127.0.0.1/x",
        False,
        "Must be an https URL, starting with https://, such as https://shop.example/hooks.",
    ),
    (
        "//127.0.0.1:8080/x",
        False,
        "Must be an https URL, starting with https://, such as https://shop.example/hooks.",
    ),
    (
        "hooks.example/x",
        True,
        "Must be an http or https URL, starting with http:// or https://, such as "
        "https://shop.example/hooks.",
    ),
    ("ftp://files.example/", False, "Must be an https URL: webhooks are not sent to ftp: URLs."),
    (
        "javascript:alert(1)",
        True,
        "Must be an http or https URL: webhooks are not sent to javascript: URLs.",
    ),
    (
        "http://hooks.example/",
        False,
        "Must be an https URL, not http (WEBHOOKS_ALLOW_PRIVATE=1 allows http, for development).",
    ),
    ("https://xn--zz.example/", False, "Not a valid URL."),
    (
        "https:hooks.example",
        False,
        "Must be an absolute URL with a host, such as https://shop.example/hooks.",
    ),
    (
        "https://user@hooks.example/",
        False,
        "Must not carry a user name or password (user@host).",
    ),
    ("https://hooks.example/#top", False, "Must not have a fragment (#...)."),
    ("https://hooks.example:0/", False, "The port must be 1 to 65535, written in digits 0-9."),
    (
        "https://127.0.0.1/",
        False,
        f"The address 127.0.0.1 is a loopback address: webhooks go to public addresses only "
        f"({HINT}).",
    ),
    (
        "https://[::ffff:10.1.2.3]/",
        False,
        "The address ::ffff:10.1.2.3 is a private address inside an IPv6 address: webhooks go "
        f"to public addresses only ({HINT}).",
    ),
    (
        "https://split.example/",
        False,
        "The host 'split.example' resolves to 10.0.0.7, a private address: webhooks go to "
        f"public addresses only ({HINT}).",
    ),
    (
        "https://nowhere.example/",
        False,
        "The host 'nowhere.example' does not resolve (Name or service not known).",
    ),
    (
        f"https://{'a' * 64}.example/",
        False,
        f"The host '{'a' * 64}.example' is not a valid host name.",
    ),
]


@pytest.mark.parametrize(("url", "allow_private", "message"), MESSAGES)
def test_each_refusal_is_a_sentence(app, names, loopback_only, url, allow_private, message):
    names["split.example"] = [PUBLIC, "10.0.0.7"]
    names["hooks.example"] = [PUBLIC]
    names["files.example"] = [PUBLIC]
    with app.app_context(), pytest.raises(ValidationFailed) as raised:
        webhooks.check_url(url, allow_private)
    assert raised.value.fields == {"url": [message]}
    assert message[0].isupper() and message.endswith(".")
    assert " a this " not in message and "not sent to." not in message
    assert loopback_only == []


def test_a_url_without_a_scheme_is_explained_through_the_api(app, client, admin, loopback_only):
    response = client.post(
        "/api/v1/webhook-endpoints", headers=admin, json={"url": "//127.0.0.1/x", "events": ["*"]}
    )
    assert response.status_code == 422
    assert response.json["error"]["fields"] == {
        "url": ["Must be an https URL, starting with https://, such as https://shop.example/hooks."]
    }

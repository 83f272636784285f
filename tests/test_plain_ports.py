"""A URL's port is written in ASCII digits (RFC 3986 `port = *DIGIT`): Python's `urlsplit` and
httpx read `:١٨٦٠٠` or `:+443` as a number, so such a URL would be stored in one form and used
in another. Webhook endpoints, the landing URL and MAIL_URL refuse it."""

import pytest

from referral_service import mail
from referral_service.config import SettingsError
from referral_service.domain import webhooks
from referral_service.domain.text import plain_port
from referral_service.errors import ValidationFailed

ODD_PORTS = [":١٨٦٠٠", ":１８６００", ":+443", ":-1", ":4_43", ":٤٤٣"]  # noqa: RUF001


@pytest.mark.parametrize("port", ODD_PORTS)
def test_no_door_takes_a_port_in_other_digits(client, admin, port):
    with pytest.raises(ValidationFailed) as refused:
        webhooks.check_url(f"http://127.0.0.1{port}/hook", allow_private=True)
    assert "digits 0-9" in str(refused.value.fields)
    response = client.post(
        "/api/v1/webhook-endpoints",
        json={"url": f"http://127.0.0.1{port}/hook", "events": ["*"]},
        headers=admin,
    )
    assert response.status_code == 422, response.json
    response = client.patch(
        "/api/v1/program", json={"landing_url": f"https://shop.example{port}/"}, headers=admin
    )
    assert response.status_code == 422 and "landing_url" in response.json["error"]["fields"]
    with pytest.raises(SettingsError):
        mail.parse_mail_url(f"smtp://mail.example{port}", "referrals@shop.example")


def test_plain_ports_and_urls_without_one():
    for url in [
        "https://shop.example/",
        "https://shop.example:8443/x?next=a:1",
        "https://[2001:db8::1]:8443/",
        "https://[2001:db8::1]/",
        "https://user:pass@shop.example:25/",
        "https://shop.example:/",
    ]:
        assert plain_port(url), url
    assert not plain_port("https://[2001:db8::1]:８/")  # noqa: RUF001

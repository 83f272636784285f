"""Helpers of the admin console's browser tests: the live server's API, admins, sign-in."""

import itertools
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from referral_service.domain import admins
from referral_service.extensions import db
from referral_service.models import AuditRecord

PASSWORD = "correct horse battery staple"
desktop_only = pytest.mark.parametrize("viewport", ["desktop"], indirect=True)
_runs = itertools.count(1)
_friends = itertools.count(1)
FRIENDS_BROWSER = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36"
)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@dataclass
class Api:
    """The live server's HTTP API with a shop key and an admin key."""

    url: str
    shop_key: str
    admin_key: str

    def call(self, method: str, path: str, body: dict | None = None, scope: str = "shop"):
        """`(status, json body)` of a request to the API."""
        key = self.admin_key if scope == "admin" else self.shop_key
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def ok(self, method: str, path: str, body: dict | None = None, scope: str = "shop"):
        status, answer = self.call(method, path, body, scope)
        assert 200 <= status < 300, (method, path, status, answer)
        return answer

    def first_purchase(self, friend: str, amount: str = "50.00") -> dict:
        """`friend` buys (order `o-<friend>`, EUR); the referrer's reward the answer shows."""
        body = {
            "order_id": f"o-{friend}",
            "customer_external_id": friend,
            "amount": amount,
            "currency": "EUR",
        }
        bought = self.ok("POST", "/api/v1/purchases", body)
        (reward,) = [r for r in bought["rewards"] if r["beneficiary"] == "referrer"]
        return reward

    def rewards(self, referrer: str) -> dict[int, dict]:
        """The rewards of `referrer`'s referrals by id, as GET /api/v1/rewards shows them."""
        answer = self.ok("GET", f"/api/v1/rewards?referrer={referrer}&limit=100", scope="admin")
        return {item["id"]: item for item in answer["items"]}

    def click(self, code: str, via: str) -> str:
        """Open the share link `/r/<code>?via=...` as a friend would; the click id it gives.

        Each call is a friend of its own (a browser's user agent with a number): the same
        person visiting the same link within an hour counts once."""
        opener = urllib.request.build_opener(_NoRedirects)
        request = urllib.request.Request(
            f"{self.url}/r/{code}?via={via}",
            headers={"User-Agent": f"{FRIENDS_BROWSER} friend/{next(_friends)}"},
        )
        try:
            opener.open(request, timeout=10)
        except urllib.error.HTTPError as error:
            assert error.code == 302, error.code
            location = error.headers["Location"]
        else:
            raise AssertionError("the share link did not redirect")
        return parse_qs(urlsplit(location).query)["click_id"][0]


def new_api(live_server) -> Api:
    """Empty tables, and keys to the live server's API."""
    live_server.empty_tables()
    return Api(live_server.url, live_server.api_key("shop"), live_server.api_key("admin"))


def make_admin(live_server, role: str) -> str:
    """A new admin of `role` (their password is PASSWORD); their email."""
    email = f"{role}-{next(_runs)}@example.com"
    with live_server.app.app_context():
        admins.create(email, PASSWORD, role)
    return email


def sign_in(page, email: str, next_path: str | None = None) -> None:
    page.goto("/admin/login" + (f"?next={next_path}" if next_path else ""))
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/admin/login" not in url)


def audit(live_server, prefix: str) -> list[tuple]:
    """`(actor, action, subject_id, after)` of the audit records whose action starts so."""
    with live_server.app.app_context():
        records = db.session.scalars(
            select(AuditRecord)
            .where(AuditRecord.action.startswith(prefix))
            .order_by(AuditRecord.id)
        )
        found = [(r.actor, r.action, r.subject_id, r.after) for r in records]
        db.session.remove()
    return found


def fits_the_width(page) -> bool:
    """Nothing wider than the screen. Not `innerWidth`: a mobile page's layout viewport grows
    to the widest content, so only clientWidth tells."""
    return page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )

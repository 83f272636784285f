"""The console's customer and referral pages with Flask's test client (CSRF on): search, a
customer's page, rotating a code, a referral's timeline, escaping, and 404 pages."""

import re
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from referral_service.domain import codes
from referral_service.errors import RevokedCode
from referral_service.extensions import db
from referral_service.models import AuditRecord, Referral, Reward, utcnow
from tests.journey_helpers import buy, click, mature, refund, sign_up
from tests.test_admin_console import TOKEN, signed_in_as, token

HOSTILE = "<script>alert(1)</script>"


def html(client, path) -> str:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    return response.get_data(as_text=True)


def enrol(client, shop, external_id, email=None, name=None) -> str:
    body = {"email": email or f"{external_id}@example.com"}
    if name:
        body["name"] = name
    response = client.put(f"/api/v1/customers/{external_id}", json=body, headers=shop)
    assert response.status_code in (200, 201), response.json
    return response.json["referral"]["code"]


@pytest.fixture
def story(app, client, shop):
    """ref-1 (Ann Lee) shares on WhatsApp; f-1 (a hostile name) clicks, signs up, buys order o-1
    for 50.00 EUR; the hold passes, so ref-1's reward of 10.00 EUR awaits approval."""
    code = enrol(client, shop, "ref-1", "Ann.Lee@Example.com", "Ann Lee")
    enrol(client, shop, "ref-10")
    click_id = click(client, code, via="whatsapp")
    signed = sign_up(client, shop, "f-1", name=HOSTILE, click_id=click_id)
    assert signed.status_code == 201 and signed.json["attributed"], signed.json
    bought = buy(client, shop, "o-1", "f-1", "50.00")
    assert bought.status_code == 201, bought.json
    reward_id = bought.json["rewards"][0]["id"]
    assert mature(app, utcnow() + timedelta(days=15))["awaiting_approval"] == 1
    with app.app_context():
        referral_id = db.session.scalar(select(Referral.id))
    return {"code": code, "reward": reward_id, "referral": referral_id}


def kinds(page: str) -> list[str]:
    return re.findall(r'data-kind="([a-z]+)"', page)


# --- search --------------------------------------------------------------------------------------


def test_search_by_external_id_email_and_code(app, client, shop, story):
    signed_in_as(app, client, "viewer")
    assert html(client, "/admin/customers").count("<table") == 0
    by_id = html(client, "/admin/customers?q=ref-1")
    assert 'href="/admin/customers/ref-1"' in by_id and 'href="/admin/customers/ref-10"' in by_id
    assert by_id.index('/admin/customers/ref-1"') < by_id.index('/admin/customers/ref-10"')
    assert "/admin/customers/f-1" not in by_id
    for query in ("ANN.LEE@example.COM", "ann.lee+shop@example.com"):
        by_email = html(client, f"/admin/customers?q={query.replace('+', '%2B')}")
        assert 'href="/admin/customers/ref-1"' in by_email, query
        assert "ref-10" not in by_email
    typed = codes.display(story["code"]).lower()
    assert "-" in typed
    for query in (typed, story["code"].lower(), story["code"]):
        by_code = html(client, f"/admin/customers?q={query}")
        assert 'href="/admin/customers/ref-1"' in by_code, query
        assert codes.display(story["code"]) in by_code
        assert "ref-10" not in by_code
    nothing = html(client, "/admin/customers?q=r%25")  # no wildcard: `%` is just a character
    assert "No customer matches" in nothing and "ref-1" not in nothing.split("No customer")[1]


# --- a customer's page ---------------------------------------------------------------------------


def test_customer_page_shows_code_link_qr_stats_friends_and_rewards(app, client, story):
    signed_in_as(app, client, "viewer")
    page = html(client, "/admin/customers/ref-1")
    code = story["code"]
    assert codes.display(code) in page
    assert f'value="http://shop.test/r/{code}"' in page
    qr = re.search(r'<img class="qr" src="([^"]+)"', page).group(1)
    assert qr == f"/r/{code}/qr.svg?size=256"
    image = client.get(qr)
    assert image.status_code == 200 and image.mimetype == "image/svg+xml"
    stats = re.search(r'<dl class="facts" id="stats">(.*?)</dl>', page, re.S).group(1)
    assert re.search(r"<dt>Clicks</dt><dd>1</dd>", stats)
    assert re.search(r"<dt>Sign-ups</dt><dd>1</dd>", stats)
    assert re.search(r"<dt>Conversions</dt><dd>1</dd>", stats)
    assert re.search(r"<dt>Rewards awaiting approval</dt><dd>1</dd>", stats)
    friends = re.search(r'<table class="friends">(.*?)</table>', page, re.S).group(1)
    assert 'href="/admin/customers/f-1"' in friends and "whatsapp" in friends
    assert "converted" in friends and f'href="/admin/referrals/{story["referral"]}"' in friends
    rewards = re.search(r'<table class="customer-rewards">(.*?)</table>', page, re.S).group(1)
    assert "10.00 EUR" in rewards and "awaiting approval" in rewards
    assert "Rotate code" not in page  # a viewer reads only
    friend = html(client, "/admin/customers/f-1")
    assert "Referred by" in friend and 'href="/admin/customers/ref-1"' in friend


def test_rotate_code_from_the_console(app, client, story):
    email = signed_in_as(app, client, "approver")
    page = html(client, "/admin/customers/ref-1")
    assert 'href="/admin/customers/ref-1/rotate"' in page
    confirm = html(client, "/admin/customers/ref-1/rotate")
    assert codes.display(story["code"]) in confirm and "stops working" in confirm
    form = {"csrf_token": TOKEN.search(confirm).group(1)}
    unconfirmed = client.post("/admin/customers/ref-1/rotate", data=form)
    assert unconfirmed.status_code == 200 and "Yes, rotate" in unconfirmed.get_data(as_text=True)
    assert client.post("/admin/customers/ref-1/rotate", data={"confirm": "yes"}).status_code == 400
    done = client.post("/admin/customers/ref-1/rotate", data={**form, "confirm": "yes"})
    assert done.status_code == 302 and done.headers["Location"] == "/admin/customers/ref-1"
    after = html(client, "/admin/customers/ref-1")
    assert "no longer works" in after
    shown = re.search(r'id="code">([^<]+)<', after).group(1)
    assert shown != codes.display(story["code"])
    assert client.get(f"/r/{story['code']}/qr.svg").status_code == 404
    with app.app_context():
        with pytest.raises(RevokedCode):
            codes.lookup(story["code"], fresh=True)
        record = db.session.scalar(select(AuditRecord))
        new = codes.lookup(shown, fresh=True).code
    assert (record.actor, record.action, record.subject_type) == (
        f"admin:{email}",
        "customer.rotate_code",
        "customer",
    )
    assert record.before["code"] == story["code"] and record.after["code"] == new != story["code"]
    # an old code typed into the search still finds its holder
    assert "old code" in html(client, f"/admin/customers?q={story['code']}")


def test_viewer_cannot_rotate(app, client, story):
    signed_in_as(app, client, "viewer")
    assert client.get("/admin/customers/ref-1/rotate").status_code == 403
    form = {"csrf_token": token(client, "/admin/customers/ref-1"), "confirm": "yes"}
    refused = client.post("/admin/customers/ref-1/rotate", data=form)
    assert refused.status_code == 403 and "Not allowed" in refused.get_data(as_text=True)
    with app.app_context():
        assert codes.lookup(story["code"], fresh=True).code == story["code"]
        assert db.session.scalar(select(AuditRecord)) is None


def test_support_makes_a_link_to_the_customers_share_page(app, client, story):
    email = signed_in_as(app, client, "approver")
    page = html(client, "/admin/customers/ref-1")
    assert 'action="/admin/customers/ref-1/share-page"' in page
    form = {"csrf_token": TOKEN.search(page).group(1)}
    assert client.post("/admin/customers/ref-1/share-page").status_code == 400  # no CSRF token
    made = client.post("/admin/customers/ref-1/share-page", data=form)
    assert made.status_code == 200
    link = re.search(r'id="portal-link" value="([^"]+)"', made.get_data(as_text=True)).group(1)
    assert link.startswith("http://shop.test/share/")
    share_page = client.get(link.removeprefix("http://shop.test"))
    assert share_page.status_code == 200 and "Hi Ann, invite your friends" in share_page.text
    with app.app_context():
        record = db.session.scalar(select(AuditRecord))
    assert (record.actor, record.action, record.subject_type) == (
        f"admin:{email}",
        "customer.portal_link",
        "customer",
    )
    assert record.after["external_id"] == "ref-1"
    expires = record.after["expires_at"]
    assert (
        utcnow() + timedelta(days=6)
        < datetime.fromisoformat(expires)
        <= utcnow() + timedelta(days=7)
    )
    assert client.post("/admin/customers/nobody/share-page", data=form).status_code == 404


def test_viewer_cannot_make_a_share_page_link(app, client, story):
    signed_in_as(app, client, "viewer")
    page = html(client, "/admin/customers/ref-1")
    assert "share-page" not in page
    form = {"csrf_token": token(client, "/admin/customers/ref-1")}
    assert client.post("/admin/customers/ref-1/share-page", data=form).status_code == 403
    with app.app_context():
        assert db.session.scalar(select(AuditRecord)) is None


def test_the_api_rotation_still_answers_and_is_not_audited(app, client, shop, story):
    response = client.post("/api/v1/customers/ref-1/referral-code/rotate", headers=shop)
    assert response.status_code == 200 and response.json["code"] != story["code"]
    with app.app_context():
        assert db.session.scalar(select(AuditRecord)) is None


# --- a referral's story --------------------------------------------------------------------------


def test_referral_page_tells_the_story_in_order(app, client, shop, story):
    email = signed_in_as(app, client, "approver")
    path = f"/admin/referrals/{story['referral']}"
    assert f'id="reason-{story["reward"]}" name="reason" maxlength="500" required' in html(
        client, path
    )
    form = {"csrf_token": token(client, path), "back": path, "approve": str(story["reward"])}
    approved = client.post("/admin/rewards/decide", data=form)
    assert approved.status_code == 302 and approved.headers["Location"] == path
    assert refund(client, shop, "o-1", "20.00").status_code == 200
    page = html(client, path)
    assert kinds(page) == ["click", "signup", "purchase", "reward", "decision", "refund"]
    timeline = re.search(r'<ol class="timeline" id="timeline">(.*?)</ol>', page, re.S).group(1)
    stamps = re.findall(r'<time datetime="([^"]+)"', timeline)
    assert stamps == sorted(stamps) and len(stamps) == 6
    assert "Channel: whatsapp" in timeline
    assert "Signed up, credited to ref-1" in timeline and "through a click" in timeline
    assert "Purchase o-1: 50.00 EUR" in timeline and "Refunded 20.00 EUR" in timeline
    assert "Refund of o-1: 20.00 EUR" in timeline and "Refund id re-o-1-20.00" in timeline
    assert f"Reward #{story['reward']} created: 10.00 EUR for the referrer (ref-1)" in timeline
    assert f"Reward #{story['reward']} approved" in timeline and f"by admin:{email}" in timeline
    assert "awaiting approval → approved" in timeline
    assert 'id="referrer-link" href="/admin/customers/ref-1"' in page
    assert 'id="friend-link" href="/admin/customers/f-1"' in page
    # rejecting from the referral page: a reason, audited, shown with its note
    form = {
        "csrf_token": token(client, path),
        "back": path,
        "reject": str(story["reward"]),
        "reason": "Paid outside the program",
    }
    assert client.post("/admin/rewards/decide", data=form).headers["Location"] == path
    page = html(client, path)
    assert kinds(page) == [
        "click",
        "signup",
        "purchase",
        "reward",
        "decision",
        "refund",
        "decision",
    ]
    assert "approved → rejected" in page and "Note: Paid outside the program" in page
    with app.app_context():
        assert db.session.get(Reward, story["reward"]).status == "rejected"
    assert f'href="{path}"' in html(client, "/admin/rewards?status=all")  # the queue links here


def test_referral_page_shows_risk_in_words_and_actions_by_role(app, client, story):
    with app.app_context():
        referral = db.session.get(Referral, story["referral"])
        referral.risk_score, referral.risk_reasons = 60, ["same_device", "disposable_email"]
        db.session.commit()
    signed_in_as(app, client, "viewer")
    page = html(client, f"/admin/referrals/{story['referral']}")
    assert 'id="risk-score">60<' in page
    assert "The friend signed up from the referrer&#39;s own device. <small>(+60)</small>" in page
    assert "throwaway-mail" in page
    assert 'name="approve"' not in page and 'name="reject"' not in page


def test_names_are_escaped(app, client, story):
    signed_in_as(app, client, "approver")
    pages = [
        html(client, "/admin/customers?q=f-1"),
        html(client, "/admin/customers/f-1"),
        html(client, "/admin/customers/ref-1"),
        html(client, f"/admin/referrals/{story['referral']}"),
    ]
    for page in pages:
        assert "<script" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.parametrize(
    "path",
    [
        "/admin/customers/nobody",
        "/admin/customers/%20spaced%20",
        "/admin/customers/nobody/rotate",
        "/admin/referrals/999999",
        "/admin/referrals/99999999999999999999",
        "/admin/referrals/abc",
    ],
)
def test_unknown_customer_or_referral_is_a_404_page(app, client, path):
    signed_in_as(app, client, "owner")
    response = client.get(path)
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "<h1>Not found</h1>" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "path", ["/admin/customers?q=x", "/admin/customers/ref-1", "/admin/referrals/1"]
)
def test_pages_need_sign_in(client, path):
    response = client.get(path)
    assert response.status_code == 302 and response.headers["Location"].startswith("/admin/login")

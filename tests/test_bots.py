"""Link previews and crawlers are not clicks; a person visiting again within an hour counts once."""

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from itsdangerous import TimestampSigner
from sqlalchemy import event, select

from referral_service import create_app
from referral_service.domain import clicks as clicks_domain
from referral_service.extensions import db
from referral_service.models import Click
from referral_service.public import views
from tests.conftest import BASE_URL, app_config
from tests.factories import click_row
from tests.journey_helpers import enrol, set_program, together

# What chat apps, social networks and search engines send when they fetch a pasted link.
PREVIEW_AGENTS = {
    "WhatsApp": "WhatsApp/2.23.20.0 A",
    "WhatsApp (iOS)": "WhatsApp/2.24.6.77 i",
    "Facebook": "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Facebook (Facebot)": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_1) AppleWebKit/601.2.4 "
    "(KHTML, like Gecko) Version/9.0.1 Safari/601.2.4 facebookexternalhit/1.1 Facebot "
    "Twitterbot/1.0",
    "X": "Twitterbot/1.0",
    "Slack": "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "Telegram": "TelegramBot (like TwitterBot)",
    "Discord": "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
    "LinkedIn": "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
    "Skype and Teams": "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5 "
    "skype-url-preview@microsoft.com",
    "Microsoft Outlook": "MicrosoftPreview/2.0 +https://aka.ms/MicrosoftPreview",
    "iMessage": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_1) AppleWebKit/601.2.4 (KHTML, "
    "like Gecko) Version/9.0.1 Safari/601.2.4 facebookexternalhit/1.1 Facebot Twitterbot/1.0",
    "Viber": "Viber/20.8.0.2 CFNetwork/1410.0.3 Darwin/22.6.0",
    "Snapchat": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, "
    "like Gecko) Chrome/88.0.4324.150 Safari/537.36 (Snap URL Preview Service; bot; snapchat; "
    "https://developers.snap.com/robots)",
    "Pinterest": "Mozilla/5.0 (compatible; Pinterestbot/1.0; +http://www.pinterest.com/bot.html)",
    "Reddit": "Mozilla/5.0 (compatible; redditbot/1.0; +http://www.reddit.com/feedback)",
    "VK": "Mozilla/5.0 (compatible; vkShare; +http://vk.com/dev/Share)",
    "Mattermost": "mattermost-11.1.0",
    "Googlebot": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "bingbot": "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Applebot": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, "
    "like Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)",
    "YandexBot": "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
}
# People, including the in-app browsers of the same apps.
BROWSERS = {
    "Chrome on Windows": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, "
    "like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Safari on iPhone": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/"
    "605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Firefox on Linux": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Facebook in-app": "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, "
    "like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36 [FB_IAB/FB4A;FBAV/488.0.0.44.109;]",
    "Instagram in-app": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/"
    "605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 346.0.7.24.87",
    "Messenger in-app": "Mozilla/5.0 (iPhone; CPU iPhone OS 16_0 like Mac OS X) AppleWebKit/"
    "605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/MessengerForiOS;FBAV/400.0.0.0]",
    "Snapchat in-app": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/"
    "605.1.15 (KHTML, like Gecko) Mobile/15E148 Snapchat/13.10.0.40 (like Safari/8618.2.12)",
    "LINE in-app": "Mozilla/5.0 (Linux; Android 13) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/119.0 Mobile Safari/537.36 Line/13.1.0",
}
# What shops and developers open their links with: the crawler list names these too, but they are
# people testing, not previews.
DEVELOPER_CLIENTS = {
    "curl": "curl/8.5.0",
    "Wget": "Wget/1.21.4",
    "python-requests": "python-requests/2.32.3",
    "httpx": "python-httpx/0.28.1",
    "urllib": "Python-urllib/3.11",
    "Go": "Go-http-client/1.1",
    "Headless Chrome": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/131.0.0.0 Safari/537.36",
    "no user agent": "",
}
FIREFOX = BROWSERS["Firefox on Linux"]
T0 = datetime(2026, 6, 1, 10, 30, tzinfo=UTC)


@pytest.fixture
def code(client, shop):
    return enrol(client, shop, "ref-1")


@pytest.fixture
def clock(monkeypatch):
    """The time the share link sees: `clock.now`, moved by the test."""

    class Clock:
        now = T0

    monkeypatch.setattr(views, "utcnow", lambda: Clock.now)
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(Clock.now.timestamp()))
    return Clock


def stored(app) -> list:
    app.extensions["clicks"].flush()
    with app.app_context():
        return list(db.session.scalars(select(Click).order_by(Click.occurred_at)))


def visit(client, code, user_agent=FIREFOX, address="203.0.113.7", via=None):
    headers = {"User-Agent": user_agent} if user_agent else {}
    return client.get(
        f"/r/{code}" + (f"?via={via}" if via else ""),
        headers=headers,
        environ_base={"REMOTE_ADDR": address, "HTTP_USER_AGENT": user_agent},
    )


def click_id_of(response) -> str | None:
    """The click row the redirect's `click_id` names."""
    return click_row(
        parse_qs(urlsplit(response.headers["Location"]).query).get("click_id", [None])[0]
    )


@pytest.mark.parametrize("user_agent", PREVIEW_AGENTS.values(), ids=PREVIEW_AGENTS.keys())
def test_a_link_preview_is_answered_but_is_no_click(app, client, code, user_agent):
    response = visit(client, code, user_agent)
    assert response.status_code == 302
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert query == {"ref": [code]}  # the preview shows the shop, with the referral
    assert "Set-Cookie" not in response.headers
    assert stored(app) == []


@pytest.mark.parametrize(
    "user_agent",
    [*BROWSERS.values(), *DEVELOPER_CLIENTS.values()],
    ids=[*BROWSERS.keys(), *DEVELOPER_CLIENTS.keys()],
)
def test_a_person_is_a_click(app, client, code, user_agent):
    response = visit(client, code, user_agent)
    [click] = stored(app)
    assert click_id_of(response) == click.id
    assert response.headers["Set-Cookie"].startswith(f"{views.CLICK_COOKIE}=")


def test_is_bot_knows_the_tables():
    assert all(clicks_domain.is_bot(agent) for agent in PREVIEW_AGENTS.values())
    assert not any(clicks_domain.is_bot(agent) for agent in BROWSERS.values())
    assert not any(clicks_domain.is_bot(agent) for agent in DEVELOPER_CLIENTS.values())
    assert not clicks_domain.is_bot(None) and not clicks_domain.is_bot("   ")
    assert clicks_domain.is_bot("Mozilla/5.0 (compatible; Googlebot/2.1) python-requests/2.32")


def test_the_same_person_twice_within_an_hour_is_one_click(app, client, code, clock):
    first_visit = visit(client, code, via="whatsapp")
    first = click_id_of(first_visit)
    assert first_visit.headers["Set-Cookie"].startswith(f"{views.CLICK_COOKIE}=")
    clock.now = T0 + timedelta(minutes=29)
    again = visit(client, code, via="qr")
    assert click_id_of(again) == first  # their click back; the cookie they hold still says it
    assert "Set-Cookie" not in again.headers
    [click] = stored(app)
    assert (click.id, click.channel, click.occurred_at) == (first, "whatsapp", T0)


@pytest.mark.parametrize("minutes", [2, 30, 59])
def test_the_hour_runs_from_the_first_visit_not_the_clock_hour(app, client, code, clock, minutes):
    clock.now = datetime(2026, 6, 1, 10, 59, tzinfo=UTC)
    first = click_id_of(visit(client, code))
    stored(app)  # written, as it would be within half a second
    clock.now += timedelta(minutes=minutes)  # 11:01, 11:29, 11:58
    assert click_id_of(visit(client, code)) == first
    assert len(stored(app)) == 1


def test_a_second_visit_before_the_click_is_written_is_the_same_click(app, client, code, clock):
    clock.now = datetime(2026, 6, 1, 10, 59, 59, tzinfo=UTC)
    first = click_id_of(visit(client, code))
    client.delete_cookie(views.CLICK_COOKIE)  # a browser that keeps no cookie
    clock.now += timedelta(seconds=2)  # across the turn of the hour
    assert click_id_of(visit(client, code)) == first
    assert len(stored(app)) == 1


@pytest.mark.parametrize("minutes", [1, 20, 59])
def test_without_a_cookie_the_same_hour_is_one_click(app, client, code, clock, minutes):
    clock.now = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
    first = click_id_of(visit(client, code))
    stored(app)
    client.delete_cookie(views.CLICK_COOKIE)
    clock.now += timedelta(minutes=minutes)
    assert click_id_of(visit(client, code)) == first
    assert len(stored(app)) == 1


@pytest.mark.parametrize("cookie", [True, False], ids=["with its cookie", "without cookies"])
def test_the_same_person_after_an_hour_is_a_new_click(app, client, code, clock, cookie):
    first = click_id_of(visit(client, code))
    stored(app)
    if not cookie:
        client.delete_cookie(views.CLICK_COOKIE)
    clock.now = T0 + timedelta(hours=1, seconds=1)
    second = click_id_of(visit(client, code))
    assert second != first
    assert [c.id for c in stored(app)] == [first, second]
    clock.now = T0 + timedelta(hours=1, minutes=30)
    assert click_id_of(visit(client, code)) == second


def test_a_forged_or_foreign_cookie_is_no_earlier_click(app, client, code, shop, clock):
    other = enrol(client, shop, "ref-2")
    visit(client, other)  # the cookie now holds a click of another code
    mine = click_id_of(visit(client, code))
    client.set_cookie(views.CLICK_COOKIE, "forged.value.here")
    clock.now = T0 + timedelta(minutes=5)
    assert click_id_of(visit(client, code)) == mine
    assert len(stored(app)) == 2


@pytest.mark.parametrize(
    "other",
    [
        {"address": "203.0.113.8"},
        {"address": "2001:db8::7"},
        {"user_agent": BROWSERS["Chrome on Windows"]},
    ],
    ids=["another address", "an IPv6 address", "another browser"],
)
def test_another_visitor_within_the_hour_is_another_click(app, client, code, clock, other):
    first = click_id_of(visit(client, code))
    clock.now = T0 + timedelta(minutes=5)
    second = click_id_of(visit(client, code, **other))
    assert second != first
    assert len(stored(app)) == 2


def test_the_same_person_on_another_code_is_another_click(app, client, shop, code, clock):
    other = enrol(client, shop, "ref-2")
    assert click_id_of(visit(client, code)) != click_id_of(visit(client, other))
    assert len(stored(app)) == 2


def test_a_person_after_their_chat_app_fetched_the_preview_is_one_click(app, client, code):
    visit(client, code, PREVIEW_AGENTS["WhatsApp"])
    visit(client, code, PREVIEW_AGENTS["WhatsApp"])
    person = click_id_of(visit(client, code))
    assert [c.id for c in stored(app)] == [person]


def test_stats_count_people_not_fetches(app, client, shop, admin, code):
    for agent in ("Slack", "Telegram", "Googlebot"):
        visit(client, code, PREVIEW_AGENTS[agent])
    for _ in range(3):
        visit(client, code, via="email")  # one person, three times
    visit(client, code, address="198.51.100.20", via="qr")  # another person
    app.extensions["clicks"].flush()
    stats = client.get("/api/v1/stats", headers=admin).json
    assert stats["clicks"] == 2
    assert stats["by_channel"]["email"]["clicks"] == 1
    assert stats["by_channel"]["qr"]["clicks"] == 1
    assert client.get("/api/v1/customers/ref-1", headers=shop).json["stats"]["clicks"] == 2


def test_two_processes_seeing_a_first_visit_at_once_keep_one_click(database_url, app, code):
    """Two instances (their own click buffers) get the same person's first visit at the same
    moment: both answer with the same click id and the database keeps one row."""
    other = create_app(app_config(database_url))
    try:
        apps = [app, other]
        ids = together(2, lambda i: click_id_of(visit(apps[i].test_client(), code)))
        together(2, lambda i: apps[i].extensions["clicks"].flush())
        assert ids[0] == ids[1] is not None
        assert [c.id for c in stored(app)] == [ids[0]]
    finally:
        with other.app_context():
            db.session.remove()
            db.engine.dispose()


def test_a_visit_makes_no_query(app, client, code):
    """The share link stays as fast as before: a person's visit (new or again) and a bot's
    are answered from this process's caches and click buffer."""
    visit(client, code)  # warm the code and program caches
    statements = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        visit(client, code, address="198.51.100.30")
        visit(client, code, address="198.51.100.30")
        visit(client, code)
        visit(client, code, PREVIEW_AGENTS["Slack"])
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert statements == []


# --- welcome mode: the preview shows the invitation ------------------------------------------


def test_a_preview_of_the_welcome_page_shows_the_invitation(app, client, shop, admin):
    client.put(
        "/api/v1/customers/anna",
        json={"email": "anna@example.com", "name": "Anna Kowalska"},
        headers=shop,
    )
    code = client.get("/api/v1/customers/anna", headers=shop).json["referral"]["code"]
    set_program(
        client,
        admin,
        landing_mode="welcome",
        friend_offer={"type": "fixed", "value": "10.00", "description": "On orders over 50"},
    )
    response = visit(client, code, PREVIEW_AGENTS["WhatsApp"])
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert '<meta property="og:title" content="Anna invited you!">' in page
    assert '<meta property="og:description" content="Get €10.00 off your first order.">' in page
    assert f'<meta property="og:url" content="{BASE_URL}/r/{code}">' in page
    assert '<meta property="og:type" content="website">' in page
    assert '<meta name="twitter:card" content="summary">' in page
    assert f'href="{BASE_URL}/landing?ref={code}"' in page  # no click_id
    assert "click_id" not in page and "Set-Cookie" not in response.headers
    assert stored(app) == []
    person = visit(client, code)
    assert "og:title" in person.get_data(as_text=True)
    [click] = stored(app)
    [shown] = set(re.findall(r"click_id=([A-Za-z0-9_-]+)", person.get_data(as_text=True)))
    assert click_row(shown) == click.id


def test_the_preview_is_in_the_programs_language_and_escapes_names(app, client, shop, admin):
    client.put(
        "/api/v1/customers/eve",
        json={"email": "eve@example.com", "name": '"><script>x</script> Eve'},
        headers=shop,
    )
    code = client.get("/api/v1/customers/eve", headers=shop).json["referral"]["code"]
    set_program(client, admin, landing_mode="welcome", default_locale="pl")
    page = visit(client, code, PREVIEW_AGENTS["Facebook"]).get_data(as_text=True)
    assert '<html lang="pl">' in page
    assert "<script>x" not in page
    assert 'property="og:description" content="Witaj!' in page


def test_a_long_user_agent_is_read_in_its_first_characters():
    padding = " x" * 5000
    assert clicks_domain.is_bot(PREVIEW_AGENTS["Telegram"] + padding)
    assert not clicks_domain.is_bot(FIREFOX + padding)
    assert not clicks_domain.is_bot(FIREFOX + padding + " Googlebot/2.1")

"""Rate limits: per API key, per client address, sign-ups per referrer; in memory and in Redis.

Every test runs with the counters in memory and in Redis (`TEST_REDIS_URL`, by default
redis://127.0.0.1:6379/0; skipped when Redis is not there, an error under CI=true). Each test
keeps its Redis keys under a prefix of its own and deletes them at the end.
"""

import os
import time
import uuid

import pytest

from referral_service import config, create_app
from referral_service.extensions import db, limiter
from tests import factories
from tests.conftest import app_config, empty_tables, unavailable

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SMALL = {
    "RATELIMIT_ENABLED": True,
    "RATELIMIT_API": "3/minute",
    "RATELIMIT_PUBLIC": "3/minute",
    "RATELIMIT_SIGNUPS_PER_REFERRER": "2/hour",
}


def redis_client():
    """A client of the test Redis, or a skip (a failure under CI=true) when it does not answer."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as error:
        client.close()
        unavailable(f"Redis at {REDIS_URL} (set TEST_REDIS_URL)", error)
    return client


@pytest.fixture
def redis_settings():
    """Settings that keep the counters in Redis, under a prefix of this test's own."""
    client = redis_client()
    prefix = f"rs-test-{uuid.uuid4().hex[:12]}"
    options = {**config.DEFAULTS["RATELIMIT_STORAGE_OPTIONS"], "key_prefix": prefix}
    yield {"REDIS_URL": REDIS_URL, "RATELIMIT_STORAGE_OPTIONS": options, "prefix": prefix}
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(params=["memory", "redis"])
def storage(request) -> dict:
    if request.param == "memory":
        return {}
    settings = dict(request.getfixturevalue("redis_settings"))
    settings.pop("prefix")
    return settings


@pytest.fixture
def make_app(database_url, storage):
    """Build apps with small limits (each call is another process, as far as counters go)."""
    apps = []

    def make(**settings):
        app = create_app(app_config(database_url, **{**SMALL, **storage, **settings}))
        if not apps:
            with app.app_context():
                empty_tables()
        apps.append(app)
        return app

    yield make
    for app in apps:
        with app.app_context():
            app.extensions["clicks"].flush()
            db.session.remove()
            db.engine.dispose()


def data(app, make):
    with app.app_context():
        return make()


def from_address(address: str) -> dict:
    return {"environ_base": {"REMOTE_ADDR": address}}


def assert_rate_limited(response):
    assert response.status_code == 429
    assert set(response.json) == {"error"}
    assert response.json["error"]["code"] == "rate_limited"
    assert response.json["error"]["message"]
    assert "fields" not in response.json["error"]
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdecimal()
    assert 0 < int(retry_after) <= 3600
    assert response.headers["X-RateLimit-Remaining"] == "0"


def test_api_per_key(make_app):
    app = make_app()
    first, second = (data(app, factories.api_key) for _ in range(2))
    client = app.test_client()
    for _ in range(3):
        assert client.get("/api/v1/program", headers=factories.auth(first)).status_code == 200
    assert_rate_limited(client.get("/api/v1/program", headers=factories.auth(first)))
    # one budget for every API call of a key
    assert_rate_limited(client.get("/api/v1/customers/c1", headers=factories.auth(first)))
    response = client.get("/api/v1/program", headers=factories.auth(second))
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == "3"
    assert response.headers["X-RateLimit-Remaining"] == "2"


def test_api_without_key_counts_per_address(make_app):
    client = make_app().test_client()
    for _ in range(3):
        assert client.get("/api/v1/program", **from_address("192.0.2.1")).status_code == 401
    assert_rate_limited(client.get("/api/v1/program", **from_address("192.0.2.1")))
    assert client.get("/api/v1/program", **from_address("192.0.2.2")).status_code == 401


def test_rate_limited_answer(make_app):
    app = make_app()
    key = data(app, factories.api_key)
    client = app.test_client()
    for _ in range(3):
        client.get("/api/v1/program", headers=factories.auth(key))
    response = client.get("/api/v1/program", headers=factories.auth(key))
    assert_rate_limited(response)
    assert (
        "requests with this API key (at most 3 per 1 minute)" in response.json["error"]["message"]
    )
    assert key not in response.get_data(as_text=True)


def test_share_link_per_address(make_app):
    app = make_app()
    code = data(app, factories.customer).code
    client = app.test_client()
    for _ in range(3):
        assert client.get(f"/r/{code}", **from_address("198.51.100.7")).status_code == 302
    assert_rate_limited(client.get(f"/r/{code}", **from_address("198.51.100.7")))
    assert client.get(f"/r/{code}", **from_address("198.51.100.8")).status_code == 302


def test_qr_images_share_the_public_budget(make_app):
    app = make_app()
    code = data(app, factories.customer).code
    client = app.test_client()
    address = from_address("198.51.100.9")
    assert client.get(f"/r/{code}/qr.png?size=64", **address).status_code == 200
    assert client.get(f"/r/{code}/qr.svg", **address).status_code == 200
    assert client.get(f"/r/{code}", **address).status_code == 302
    assert_rate_limited(client.get(f"/r/{code}/qr.png?size=64", **address))
    assert_rate_limited(client.get(f"/r/{code}/qr.svg", **address))
    assert client.get(f"/r/{code}/qr.svg", **from_address("198.51.100.10")).status_code == 200


def test_share_pages_share_the_public_budget(make_app):
    """Guessing share-page tokens or clicking through welcome pages costs the same budget."""
    from referral_service.domain import portal

    app = make_app()
    customer = data(app, factories.customer)
    with app.app_context():
        token = portal.issue_link(customer.external_id).token
    client = app.test_client()
    address = from_address("198.51.100.11")
    assert client.get(f"/share/{token}", **address).status_code == 200
    assert client.get("/share/forged", **address).status_code == 404
    assert client.get(f"/r/{customer.code}/welcome", **address).status_code == 200
    assert_rate_limited(client.get(f"/share/{token}", **address))
    assert_rate_limited(client.get(f"/r/{customer.code}/welcome", **address))
    assert client.get(f"/share/{token}", **from_address("198.51.100.12")).status_code == 200


def test_health_docs_and_landing_are_not_limited(make_app):
    client = make_app().test_client()
    for _ in range(5):
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/landing").status_code == 200
        assert client.get("/api/openapi.json").status_code == 200
        assert client.get("/api/docs").status_code == 200


def signup(client, key, friend: str, **referrer):
    body = {"external_id": friend, "email": f"{friend}@example.com", **referrer}
    return client.post("/api/v1/signups", json=body, headers=factories.auth(key))


def test_signups_per_referrer(make_app):
    app = make_app(RATELIMIT_API="100/minute")
    key = data(app, factories.api_key)
    ada, bob = data(app, factories.customer).code, data(app, factories.customer).code
    client = app.test_client()
    assert signup(client, key, "f1", referral_code=ada).status_code == 201
    assert signup(client, key, "f1", referral_code=ada).status_code == 200  # a replay: not counted
    assert signup(client, key, "f2", referral_code=ada.lower()).status_code == 201
    response = signup(client, key, "f3", referral_code=ada)
    assert_rate_limited(response)
    assert "2 per 1 hour" in response.json["error"]["message"]
    assert signup(client, key, "f4", referral_code=bob).status_code == 201
    for friend in ("f5", "f6", "f7"):  # no referrer named: not this limit's business
        assert signup(client, key, friend).status_code == 201
    # the refused sign-up was not recorded
    assert client.get("/api/v1/customers/f3", headers=factories.auth(key)).status_code == 404


def test_signups_per_click(make_app):
    app = make_app(RATELIMIT_API="100/minute")
    key = data(app, factories.api_key)
    code = data(app, factories.customer).code
    client = app.test_client()
    location = client.get(f"/r/{code}").headers["Location"]
    click_id = location.rsplit("click_id=", 1)[1]
    assert signup(client, key, "g1", click_id=click_id).status_code == 201
    assert signup(client, key, "g2", click_id=click_id).status_code == 201
    assert_rate_limited(signup(client, key, "g3", click_id=click_id))


def test_signups_with_forged_code_or_refused_key_do_not_count(make_app):
    app = make_app(RATELIMIT_API="100/minute")
    key = data(app, factories.api_key)
    code = data(app, factories.customer).code
    forged = code[:-1] + ("X" if code[-1] != "X" else "Y")
    client = app.test_client()
    for friend in ("h1", "h2", "h3"):
        response = signup(client, key, friend, referral_code=forged)
        assert response.status_code == 201
        assert response.json["reason"] == "invalid_code"
        assert signup(client, "rsk_wrong", friend, referral_code=code).status_code == 401
    assert signup(client, key, "h4", referral_code=code).status_code == 201
    assert signup(client, key, "h5", referral_code=code).status_code == 201
    assert_rate_limited(signup(client, key, "h6", referral_code=code))


def test_signup_body_too_large_is_answered_and_limits_go_on(make_app):
    app = make_app(RATELIMIT_API="100/minute")
    key = data(app, factories.api_key)
    code = data(app, factories.customer).code
    client = app.test_client()
    response = signup(client, key, "k1", referral_code=code, name="x" * 2_000_000)
    assert response.status_code == 413
    assert response.json["error"]["code"] == "payload_too_large"
    assert not limiter._storage_dead  # a big body is no storage failure
    assert signup(client, key, "k2", referral_code=code).status_code == 201
    assert signup(client, key, "k3", referral_code=code).status_code == 201
    assert_rate_limited(signup(client, key, "k4", referral_code=code))


def test_trusted_proxy_gives_the_client_address(make_app):
    app = make_app(TRUSTED_PROXIES=1)
    code = data(app, factories.customer).code
    client = app.test_client()
    proxy = from_address("10.0.0.1")
    for _ in range(3):
        response = client.get(f"/r/{code}", headers={"X-Forwarded-For": "203.0.113.5"}, **proxy)
        assert response.status_code == 302
    response = client.get(f"/r/{code}", headers={"X-Forwarded-For": "203.0.113.5"}, **proxy)
    assert_rate_limited(response)
    response = client.get(f"/r/{code}", headers={"X-Forwarded-For": "203.0.113.6"}, **proxy)
    assert response.status_code == 302


def test_forwarded_for_is_ignored_without_trusted_proxies(make_app):
    app = make_app()
    code = data(app, factories.customer).code
    client = app.test_client()
    for n in range(3):
        headers = {"X-Forwarded-For": f"203.0.113.{n}"}
        assert client.get(f"/r/{code}", headers=headers).status_code == 302
    assert_rate_limited(client.get(f"/r/{code}", headers={"X-Forwarded-For": "203.0.113.9"}))


def test_disabled_after_an_enabled_app(make_app, database_url):
    make_app()
    app = create_app(app_config(database_url, **{**SMALL, "RATELIMIT_ENABLED": False}))
    key = data(app, factories.api_key)
    client = app.test_client()
    for _ in range(5):
        response = client.get("/api/v1/program", headers=factories.auth(key))
        assert response.status_code == 200
        assert "X-RateLimit-Limit" not in response.headers
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.mark.parametrize("storage", ["redis"], indirect=True)
def test_redis_shares_the_counters_between_processes(make_app, redis_settings):
    import redis

    first = make_app()
    key = data(first, factories.api_key)
    code = data(first, factories.customer).code
    for _ in range(2):
        response = first.test_client().get("/api/v1/program", headers=factories.auth(key))
        assert response.status_code == 200
        assert first.test_client().get(f"/r/{code}").status_code == 302
    # a second app binds the limiter to a new storage: only Redis still holds the first counts
    second = make_app()
    client = second.test_client()
    assert client.get("/api/v1/program", headers=factories.auth(key)).status_code == 200
    assert_rate_limited(client.get("/api/v1/program", headers=factories.auth(key)))
    assert client.get(f"/r/{code}").status_code == 302
    assert_rate_limited(client.get(f"/r/{code}"))
    assert_rate_limited(first.test_client().get(f"/r/{code}"))
    stored = redis.Redis.from_url(REDIS_URL).keys(f"{redis_settings['prefix']}:*")
    assert stored and not any(key.encode() in name for name in stored)


@pytest.mark.parametrize("storage", ["memory"], indirect=True)
def test_unreachable_redis_never_fails_a_request(make_app):
    app = make_app(REDIS_URL="redis://127.0.0.1:9/0")  # nothing listens on the discard port
    key = data(app, factories.api_key)
    client = app.test_client()
    try:
        for _ in range(3):
            assert client.get("/api/v1/program", headers=factories.auth(key)).status_code == 200
        # counting went on in this process's memory
        assert_rate_limited(client.get("/api/v1/program", headers=factories.auth(key)))
    finally:
        limiter._storage_dead = False  # the next app starts with its own storage


def test_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RATELIMIT_ENABLED", "false")
    monkeypatch.setenv("RATELIMIT_API", " 10/second;1000/hour ")
    monkeypatch.setenv("TRUSTED_PROXIES", "1")
    monkeypatch.delenv("RATELIMIT_PUBLIC", raising=False)
    settings = config.from_environment(str(tmp_path))
    assert settings["RATELIMIT_ENABLED"] is False
    assert settings["RATELIMIT_API"] == "10/second;1000/hour"
    assert settings["TRUSTED_PROXIES"] == 1
    assert "RATELIMIT_PUBLIC" not in settings  # the default stays
    monkeypatch.setenv("TRUSTED_PROXIES", "many")
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        config.from_environment(str(tmp_path))


def test_storage_follows_redis_url():
    app = create_app(app_config("sqlite://", REDIS_URL="redis://redis.internal:6379/2"))
    assert app.config["RATELIMIT_STORAGE_URI"] == "redis://redis.internal:6379/2"
    assert create_app(app_config("sqlite://")).config["RATELIMIT_STORAGE_URI"] == "memory://"


def test_malformed_limit_fails_at_start():
    with pytest.raises(ValueError, match="lots"):
        create_app(app_config("sqlite://", RATELIMIT_PUBLIC="lots"))


# --- keys that do not authenticate, addresses, and Redis outages ------------------------------


def invented_key(n: int) -> dict:
    return {"Authorization": f"Bearer rsk_invented-{n:04d}-{uuid.uuid4().hex}"}


def test_invented_keys_count_against_their_address(make_app):
    """40 made-up keys from one address: 20 x 401, then 429; valid keys keep their own budget,
    from that address as from any other."""
    app = make_app(RATELIMIT_API="20/minute")
    key = data(app, factories.api_key)
    client = app.test_client()
    attacker = from_address("192.0.2.66")
    answers = [
        client.get("/api/v1/program", headers=invented_key(n), **attacker) for n in range(40)
    ]
    assert [answer.status_code for answer in answers] == [401] * 20 + [429] * 20
    for answer in answers[:20]:
        assert answer.json["error"]["code"] == "unauthorized"
    for answer in answers[20:]:
        assert_rate_limited(answer)
        assert "without a valid API key from this address" in answer.json["error"]["message"]
    assert_rate_limited(client.get("/api/v1/program", **attacker))  # no key: the same budget
    for address in ("192.0.2.66", "192.0.2.67"):
        response = client.get(
            "/api/v1/program", headers=factories.auth(key), **from_address(address)
        )
        assert response.status_code == 200
    assert response.headers["X-RateLimit-Remaining"] == "18"


def test_a_revoked_key_counts_against_its_address(make_app):
    from referral_service.domain import api_keys

    app = make_app()
    with app.app_context():
        revoked = api_keys.create("old", "shop")
        api_keys.revoke(str(revoked.id))
    client = app.test_client()
    address = from_address("192.0.2.70")
    for _ in range(3):
        response = client.get("/api/v1/program", headers=factories.auth(revoked.secret), **address)
        assert response.status_code == 401
    assert_rate_limited(
        client.get("/api/v1/program", headers=factories.auth(revoked.secret), **address)
    )
    assert_rate_limited(client.get("/api/v1/program", headers=invented_key(1), **address))
    response = client.get("/api/v1/program", headers=invented_key(2), **from_address("192.0.2.71"))
    assert response.status_code == 401


def test_a_wrong_scope_counts_against_the_key(make_app):
    """A valid key refused for its scope (403) spends its own budget, not its address's."""
    app = make_app()
    shop_key = data(app, factories.api_key)
    client = app.test_client()
    address = from_address("192.0.2.72")
    for _ in range(3):
        response = client.patch(
            "/api/v1/program", json={}, headers=factories.auth(shop_key), **address
        )
        assert response.status_code == 403
    assert_rate_limited(client.get("/api/v1/program", headers=factories.auth(shop_key), **address))
    assert client.get("/api/v1/program", **address).status_code == 401


def test_the_key_is_looked_up_once_per_request(make_app, monkeypatch):
    from referral_service.domain import api_keys

    app = make_app()
    key = data(app, factories.api_key)
    calls = []
    find = api_keys.find
    monkeypatch.setattr(api_keys, "find", lambda secret: calls.append(secret) or find(secret))
    client = app.test_client()
    assert client.get("/api/v1/program", headers=factories.auth(key)).status_code == 200
    assert client.get("/api/v1/program", headers=invented_key(1)).status_code == 401
    assert len(calls) == 2


def test_a_database_error_in_the_key_lookup_is_no_storage_outage(make_app, monkeypatch, caplog):
    """The limiter's key lookup failing (the database away for a moment) counts the request
    against its address; it never makes the limiter give up its storage or log an outage."""
    from sqlalchemy.exc import OperationalError

    from referral_service.domain import api_keys

    app = make_app()
    key = data(app, factories.api_key)
    find, calls = api_keys.find, []

    def first_fails(secret):
        calls.append(secret)
        if len(calls) == 1:
            raise OperationalError("SELECT", {}, ConnectionError("gone"))
        return find(secret)

    monkeypatch.setattr(api_keys, "find", first_fails)
    response = app.test_client().get("/api/v1/program", headers=factories.auth(key))
    assert response.status_code == 200
    assert len(calls) == 2  # the view looked again
    assert not limiter._storage_dead
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_ipv6_clients_count_by_their_64_network(make_app):
    app = make_app()
    code = data(app, factories.customer).code
    client = app.test_client()
    for address in ("2001:db8:5:6::1", "2001:db8:5:6::2", "2001:db8:5:6:ffff::9"):
        assert client.get(f"/r/{code}", **from_address(address)).status_code == 302
    assert_rate_limited(client.get(f"/r/{code}", **from_address("2001:db8:5:6::77")))
    assert client.get(f"/r/{code}", **from_address("2001:db8:5:7::1")).status_code == 302
    for _ in range(3):
        assert client.get(f"/r/{code}", **from_address("::ffff:192.0.2.80")).status_code == 302
    assert_rate_limited(client.get(f"/r/{code}", **from_address("192.0.2.80")))


def outage_lines(caplog) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelname == "WARNING"
        and ("Redis" in record.getMessage() or "storage" in record.getMessage())
    ]


@pytest.mark.parametrize("storage", ["redis"], indirect=True)
def test_a_redis_outage_is_logged_once_each_way(make_app, caplog):
    """Redis cut while requests go on: one warning when it goes, one when it is back (found by
    Flask-Limiter's health check, after at most 32 seconds); no request fails meanwhile."""
    from tests.tcp_proxy import TcpProxy

    redis_port = int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    with TcpProxy("127.0.0.1", redis_port) as proxy:
        app = make_app(REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0", RATELIMIT_API="1000/minute")
        key = data(app, factories.api_key)
        client = app.test_client()

        def program():
            response = client.get("/api/v1/program", headers=factories.auth(key))
            assert response.status_code == 200
            return response

        try:
            assert program().headers["X-RateLimit-Remaining"] == "999"
            proxy.cut()
            for _ in range(20):
                program()
            assert limiter._storage_dead
            lines = outage_lines(caplog)
            assert len(lines) == 1, lines
            assert lines[0].startswith("Redis is unavailable (ConnectionError)")
            proxy.restore()
            deadline = time.monotonic() + 40
            while limiter._storage_dead and time.monotonic() < deadline:
                program()
                time.sleep(0.1)
            assert not limiter._storage_dead
            for _ in range(5):
                program()
        finally:
            limiter._storage_dead = False  # the next app starts with its own storage
    lines = outage_lines(caplog)
    assert len(lines) == 2, lines
    assert lines[1].startswith("Redis is back after ")

"""`GET /metrics` (metrics.py): Prometheus's text format, request counts and latencies by
endpoint, attributions by reason, figures read from the database at scrape time, the token, the
switch; and under `referral-service serve` with two workers, one scrape counts them all."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from referral_service import create_app
from tests.conftest import app_config
from tests.journey_helpers import converted_friend, enrol, sign_up
from tests.test_serve_errors import free_port

TOKEN = "t0ken-for-the-scraper-0123456789"


def scrape(client, **headers) -> dict:
    """The samples of one scrape: {(name, sorted label pairs): value}."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.data
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return samples(response.get_data(as_text=True))


def samples(text: str) -> dict:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_are_counted_by_endpoint_method_and_status(client):
    before = scrape(client)
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    assert client.get("/no/such/path/123").status_code == 404
    assert client.get("/no/such/path/456").status_code == 404
    after = scrape(client)
    healthz = {"endpoint": "public.Healthz", "method": "GET", "status": "200"}
    none = {"endpoint": "none", "method": "GET", "status": "404"}
    total = "referral_http_requests_total"
    assert value(after, total, **healthz) - value(before, total, **healthz) == 3
    assert value(after, total, **none) - value(before, total, **none) == 2
    counted = "referral_http_request_duration_seconds_count"
    assert (
        value(after, counted, endpoint="public.Healthz")
        - value(before, counted, endpoint="public.Healthz")
        == 3
    )
    assert (
        value(
            after,
            "referral_http_request_duration_seconds_bucket",
            endpoint="public.Healthz",
            le="+Inf",
        )
        >= 3
    )
    # the path itself is never a label
    assert not any("/no/such" in str(key) for key in after)


def test_an_unusual_method_is_counted_as_other(client):
    before = scrape(client)
    client.open("/healthz", method="BREW")
    after = scrape(client)
    labels = {"endpoint": "none", "method": "other", "status": "405"}
    name = "referral_http_requests_total"
    other = {k: v for k, v in labels.items() if k != "endpoint"}
    changed = [
        key
        for key in after
        if key[0] == name and dict(key[1])["method"] == "other" and after[key] > before.get(key, 0)
    ]
    assert changed, other
    assert all(dict(key[1])["method"] != "BREW" for key in after if key[0] == name)


def test_attributions_are_counted_by_reason(client, shop):
    before = scrape(client)
    code = enrol(client, shop, "ref-1")
    assert sign_up(client, shop, "friend-1", referral_code=code).json["attributed"] is True
    assert sign_up(client, shop, "friend-1", referral_code=code).status_code == 200  # a replay
    assert sign_up(client, shop, "plain-1").json["reason"] == "no_referral"
    assert sign_up(client, shop, "plain-2", referral_code="NOPE-NOPE").status_code == 201
    after = scrape(client)
    name = "referral_attributions_total"
    assert value(after, name, reason="attributed") - value(before, name, reason="attributed") == 1
    assert value(after, name, reason="no_referral") - value(before, name, reason="no_referral") == 1
    assert (
        value(after, name, reason="invalid_code") - value(before, name, reason="invalid_code") == 1
    )


def test_database_figures_are_read_at_scrape_time(client, shop):
    found = scrape(client)
    assert value(found, "referral_outbox_unrelayed") == 0
    # every status is a series from the start, at 0, so that an alert on one has something
    statuses = ("pending", "awaiting_approval", "approved", "paid", "rejected", "reversed")
    assert {
        dict(k[1])["status"]: v for k, v in found.items() if k[0] == "referral_rewards"
    } == dict.fromkeys(statuses, 0)
    assert {
        dict(k[1])["status"]: v for k, v in found.items() if k[0] == "referral_webhook_deliveries"
    } == {"pending": 0, "delivered": 0, "failed": 0}
    converted_friend(client, shop)
    found = scrape(client)
    rewards = {
        dict(key[1])["status"]: v for key, v in found.items() if key[0] == "referral_rewards"
    }
    assert sum(rewards.values()) >= 1, found
    assert set(rewards) == {
        "pending",
        "awaiting_approval",
        "approved",
        "paid",
        "rejected",
        "reversed",
    }
    assert ("referral_outbox_unrelayed", ()) in found
    assert ("referral_task_queue_depth", ()) in found
    assert ("referral_clicks_buffered", ()) in found


def test_the_token_is_needed_when_set(database_url):
    app = create_app(app_config(database_url, METRICS_TOKEN=TOKEN))
    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert response.json["error"]["code"] == "unauthorized"
        assert response.json["error"]["request_id"]
        assert TOKEN not in response.get_data(as_text=True)
    assert "referral_http_requests_total" in str(scrape(client, Authorization=f"Bearer {TOKEN}"))


def test_off_means_no_route_and_nothing_counted(database_url):
    app = create_app(app_config(database_url, METRICS=False))
    assert "metrics" not in app.view_functions
    assert app.test_client().get("/metrics").status_code == 404


def test_metrics_is_not_rate_limited_nor_in_the_api_description(database_url):
    app = create_app(app_config(database_url, RATELIMIT_ENABLED=True, RATELIMIT_PUBLIC="2/minute"))
    client = app.test_client()
    for _ in range(5):
        assert client.get("/metrics").status_code == 200
    assert "/metrics" not in client.get("/api/openapi.json").json["paths"]


def test_the_database_figures_are_left_out_while_it_is_away(tmp_path):
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    app = create_app(app_config(url, DATABASE_CONNECT_TIMEOUT=1.0))
    client = app.test_client()
    started = time.monotonic()
    found = scrape(client)
    assert time.monotonic() - started < 5
    assert not any(key[0] in ("referral_rewards", "referral_outbox_unrelayed") for key in found)
    assert not any(key[0] == "referral_webhook_deliveries" for key in found)
    assert any(key[0] == "referral_http_requests_total" for key in found)


def test_bad_settings_are_refused_in_one_line(monkeypatch):
    from referral_service.config import SettingsError, metrics_settings

    monkeypatch.setenv("METRICS", "maybe")
    with pytest.raises(SettingsError, match="METRICS must be"):
        metrics_settings()
    monkeypatch.setenv("METRICS", "off")
    monkeypatch.setenv("METRICS_TOKEN", "short")
    with pytest.raises(SettingsError, match="METRICS_TOKEN must be") as refused:
        metrics_settings()
    assert "short" not in str(refused.value)
    monkeypatch.setenv("METRICS_TOKEN", TOKEN)
    assert metrics_settings() == {"METRICS": False, "METRICS_TOKEN": TOKEN}


BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_under_serve_one_scrape_counts_every_worker(tmp_path):
    """Two worker processes: requests spread over both are all in one scrape, and the
    multiprocess folder is gone once the server stops."""
    port = free_port()
    env = {
        **os.environ,
        "SECRET_KEY": "k" * 48,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "TASKS_FILE": str(tmp_path / "tasks.sqlite3"),
        "CLICK_SPILL_DIR": str(tmp_path / "clicks-spill"),
        "WEB_CONCURRENCY": "2",
        "THREADS": "1",
        "TMPDIR": str(tmp_path / "metrics"),  # where serve makes its multiprocess folder
        "METRICS_TOKEN": TOKEN,
    }
    (tmp_path / "metrics").mkdir()
    for name in (
        "REDIS_URL",
        "MAIL_URL",
        "BIND",
        "PUBLIC_BASE_URL",
        "METRICS",
        "PROMETHEUS_MULTIPROC_DIR",
    ):
        env.pop(name, None)
    subprocess.run(
        [str(BIN / "referral-service"), "db", "upgrade"],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    process = subprocess.Popen(
        [str(BIN / "referral-service"), "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 40
        while True:
            if process.poll() is not None:
                raise AssertionError(f"serve exited: {process.stdout.read()}")
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        pids = set()
        # new connections each time: gunicorn's sync workers take them in turn
        for _ in range(40):
            response = httpx.get(f"{base}/healthz", headers={"Connection": "close"})
            assert response.status_code == 200
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{base}/metrics").status_code == 401
        folders = list((tmp_path / "metrics").iterdir())
        assert len(folders) == 1
        for path in folders[0].iterdir():
            if path.name.startswith("counter_"):
                pids.add(path.stem.rpartition("_")[2])
        assert len(pids) == 2, pids  # both workers counted requests
        for _ in range(3):  # whichever worker answers, the sum is the same
            found = samples(httpx.get(f"{base}/metrics", headers=auth).text)
            healthz = {"endpoint": "public.Healthz", "method": "GET", "status": "200"}
            assert value(found, "referral_http_requests_total", **healthz) >= 41
            assert ("referral_outbox_unrelayed", ()) in found
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=40)
    assert process.returncode == 0, output
    assert list((tmp_path / "metrics").iterdir()) == [], output

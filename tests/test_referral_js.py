"""`GET /referral.js`: the shop's script as served: its type, size, caching by hash, and the
program's attribution window baked in (its behaviour in a browser: tests/browser)."""

import hashlib
import re
import shutil
import subprocess

import pytest

from referral_service import create_app
from tests.conftest import app_config

LIMIT = 4096  # bytes: a script every page of a shop loads


def digest(response) -> str:
    return response.headers["ETag"].strip('"')


def test_the_script_is_javascript_small_and_hashed(client):
    response = client.get("/referral.js")

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "public, max-age=300"
    assert response.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert "Set-Cookie" not in response.headers
    assert len(response.data) < LIMIT
    assert re.fullmatch(r'"[0-9a-f]{20}"', response.headers["ETag"])
    assert digest(response) == hashlib.sha256(response.data).hexdigest()[:20]
    text = response.data.decode()
    assert "const DAYS = 30;" in text  # the program's default window
    assert "{{" not in text and "{#" not in text  # the template fully rendered
    # nothing is sent anywhere but the shop's own cart/update.js (on Shopify)
    assert text.count("fetch(") == 1 and 'fetch(root + "cart/update.js"' in text
    assert "://" not in text
    assert not re.search(r"sendBeacon|XMLHttpRequest|new Image|WebSocket|import\(", text)


def test_an_etag_the_browser_has_is_a_304(client):
    tag = client.get("/referral.js").headers["ETag"]

    for sent in (tag, f"W/{tag}", f'"other", {tag}', "*"):
        response = client.get("/referral.js", headers={"If-None-Match": sent})
        assert response.status_code == 304, sent
        assert response.data == b""
        assert response.headers["ETag"] == tag
        assert response.headers["Cache-Control"] == "public, max-age=300"
    assert client.get("/referral.js", headers={"If-None-Match": '"other"'}).status_code == 200


def test_the_hash_as_version_may_be_kept_for_good_and_another_gets_the_short_cache(client):
    current = client.get("/referral.js")
    version = digest(current)

    kept = client.get(f"/referral.js?v={version}")
    assert kept.status_code == 200
    assert kept.data == current.data
    assert kept.headers["Cache-Control"] == "public, max-age=31536000, immutable"

    for stale in ("0" * 20, version[:-1], "", "x" * 500, "%FF"):
        response = client.get(f"/referral.js?v={stale}")
        assert response.status_code == 200, stale
        assert response.data == current.data
        assert response.headers["Cache-Control"] == "public, max-age=300", stale

    response = client.get(f"/referral.js?v={version}", headers={"If-None-Match": f'"{version}"'})
    assert response.status_code == 304
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"


def test_the_program_s_attribution_window_is_baked_in_and_changes_the_hash(client, admin):
    before = client.get("/referral.js")

    response = client.patch("/api/v1/program", json={"attribution_window_days": 45}, headers=admin)
    assert response.status_code == 200, response.json
    after = client.get("/referral.js")

    assert "const DAYS = 45;" in after.data.decode()
    assert digest(after) != digest(before)
    assert (
        client.get("/referral.js", headers={"If-None-Match": before.headers["ETag"]}).status_code
        == 200
    )
    stale = client.get(f"/referral.js?v={digest(before)}")
    assert stale.data == after.data
    assert stale.headers["Cache-Control"] == "public, max-age=300"

    client.patch("/api/v1/program", json={"attribution_window_days": 0}, headers=admin)
    assert "const DAYS = 0;" in client.get("/referral.js").data.decode()


def test_head_answers_the_headers_alone(client):
    response = client.head("/referral.js")

    assert response.status_code == 200
    assert response.data == b""
    assert response.headers["ETag"] == client.get("/referral.js").headers["ETag"]


def test_only_get_and_head(client):
    response = client.post("/referral.js", data="x")

    assert response.status_code == 405
    assert response.json["error"]["code"]


def test_a_process_that_cannot_read_the_settings_serves_the_default_window_unkept(tmp_path):
    app = create_app(app_config(f"sqlite:///{tmp_path / 'gone' / 'db.sqlite3'}"))

    response = app.test_client().get("/referral.js")

    assert response.status_code == 200
    assert "const DAYS = 30;" in response.data.decode()
    assert response.headers["Cache-Control"] == "no-cache"
    version = digest(response)
    again = app.test_client().get(f"/referral.js?v={version}")
    assert again.headers["Cache-Control"] == "no-cache"  # never kept for good


def test_the_script_is_documented_in_the_openapi_spec(client):
    paths = client.get("/api/openapi.json").json["paths"]

    answers = paths["/referral.js"]["get"]["responses"]
    assert "application/javascript" in answers["200"]["content"]
    assert "304" in answers


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js checks the syntax")
def test_the_served_script_parses(client, tmp_path):
    script = tmp_path / "referral.js"
    script.write_bytes(client.get("/referral.js").data)

    result = subprocess.run(
        ["node", "--check", str(script)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr

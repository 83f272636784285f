"""Logs mask client data (addresses, emails, tokens) but not where the service itself listens."""

import contextlib
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from werkzeug import serving

from referral_service import logs
from tests.test_processes import gunicorn, wait_until_up

BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def masking():
    logs.install()


def banner(monkeypatch, caplog, host: str, family=socket.AF_INET, interface="192.0.2.10") -> str:
    """What werkzeug's development server logs at start, bound to `host`."""
    monkeypatch.setattr(serving, "get_interface_ip", lambda family: interface)
    server = SimpleNamespace(address_family=family, ssl_context=None, host=host, port=5000)
    caplog.set_level(logging.INFO, logger="werkzeug")
    serving.BaseWSGIServer.log_startup(server)
    [record] = [r for r in caplog.records if r.name == "werkzeug"]
    return record.getMessage()


def test_the_dev_server_banner_shows_its_address(monkeypatch, caplog):
    assert " * Running on http://127.0.0.1:5000" in banner(monkeypatch, caplog, "127.0.0.1")


def test_the_banner_on_all_addresses_shows_them(monkeypatch, caplog):
    lines = banner(monkeypatch, caplog, "0.0.0.0").splitlines()
    assert " * Running on all addresses (0.0.0.0)" in lines
    assert " * Running on http://127.0.0.1:5000" in lines
    assert " * Running on http://192.0.2.10:5000" in lines


def test_the_banner_on_ipv6_shows_its_addresses(monkeypatch, caplog):
    message = banner(monkeypatch, caplog, "::", socket.AF_INET6, interface="2001:db8::10")
    assert " * Running on http://[::1]:5000" in message
    assert " * Running on http://[2001:db8::10]:5000" in message


def test_gunicorn_says_where_it_listens(caplog):
    caplog.set_level(logging.INFO, logger="gunicorn.error")
    logging.getLogger("gunicorn.error").info("Listening at: %s (%s)", "http://10.1.2.3:8000", 42)
    assert "Listening at: http://10.1.2.3:8000 (42)" in caplog.text


def test_request_lines_are_masked(caplog):
    caplog.set_level(logging.INFO)
    werkzeug_log = logging.getLogger("werkzeug")
    werkzeug_log.info(  # as WSGIRequestHandler.log writes it
        '203.0.113.9 - - [30/Nov/2026 00:10:00] "%s" %s %s',
        "GET /share/eyJjIjo0Mn0.Zx1-ab_9?lang=pl HTTP/1.1",
        "200",
        "-",
    )
    werkzeug_log.info(
        '2001:db8::77 - - [30/Nov/2026 00:10:01] "%s" %s %s',
        "GET /unsubscribe?email=ann@example.com&token=s3cr3t.t0ken HTTP/1.1",
        "302",
        "-",
    )
    logging.getLogger("referral_service").info("sent with Authorization: Bearer rsk_abcdef123")
    text = caplog.text
    for secret in ("203.0.113.9", "eyJjIjo0Mn0", "2001:db8::77", "ann@example.com", "s3cr3t"):
        assert secret not in text
    assert "rsk_abcdef123" not in text
    assert "[ip] - - [30/Nov/2026 00:10:00]" in text
    assert "/share/[token]?lang=pl" in text and "token=[token]" in text
    assert "Bearer [token]" in text


def test_a_banner_line_in_another_logger_or_request_is_still_masked(caplog):
    """Only the server's own banner keeps its address: not a look-alike line elsewhere."""
    caplog.set_level(logging.INFO)
    logging.getLogger("referral_service").info(" * Running on http://203.0.113.5:80")
    logging.getLogger("werkzeug").info(
        '203.0.113.6 - - [30/Nov/2026 00:10:00] "GET / * Running on 203.0.113.7 HTTP/1.1" 404 -'
    )
    logging.getLogger("gunicorn.access").info("Listening at: http://203.0.113.8:80")
    for address in ("203.0.113.5", "203.0.113.6", "203.0.113.7", "203.0.113.8"):
        assert address not in caplog.text


def test_redact_keeps_what_is_no_client_data():
    assert logs.redact("GET /r/ABCD-EFGH?via=qr HTTP/1.1") == "GET /r/ABCD-EFGH?via=qr HTTP/1.1"
    assert logs.redact("monkey=1&keyboard=2") == "monkey=1&keyboard=2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_make_run_prints_the_address_to_open(tmp_path):
    """`referral-service run` (the development server) says where it listens, not `[ip]`."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'banner.sqlite3'}",
        "SECRET_KEY": "banner-test-secret-0123456789abcdef",
    }
    process = subprocess.Popen(
        [str(BIN / "referral-service"), "run", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout])
    reader.start()
    output = ""
    try:
        deadline = time.monotonic() + 30
        while "Running on" not in output and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                output += lines.get(timeout=1)
    finally:
        process.terminate()
        process.wait(timeout=10)
        reader.join(timeout=10)
    assert f" * Running on http://127.0.0.1:{port}" in output, output
    assert "[ip]" not in output


ENCODED = {
    "percent-encoded @": "GET /admin/customers?q=anna%40example.com HTTP/1.1",
    "lower-case hex": "GET /admin/customers?q=anna%40example%2ecom HTTP/1.1",
    "encoded twice": "GET /admin/customers?q=Anna%2540Example.COM HTTP/1.1",
    "encoded four times": "GET /admin/customers?q=anna%25252540example.com HTTP/1.1",
    "form-encoded, + for spaces": "q=Anna+Smith+anna%2Btag%40example.com&page=2",
    "in a path": "GET /admin/customers/anna%40example.com/rotate HTTP/1.1",
    "in a referrer": 'HTTP_REFERER "https://shop.example/admin/audit?actor=admin%3Aanna%40example.com"',
    "IPv4 encoded": "GET /api/v1/signups?ip=203%2E0%2E113%2E9 HTTP/1.1",
    "IPv6 encoded": "GET /api/v1/signups?ip=2001%3Adb8%3A%3A77 HTTP/1.1",
    "a full-width @ (NFKC reads it as @)": "GET /admin/customers?q=anna\uff20example.com HTTP/1.1",
    "a full-width @, encoded": "GET /admin/customers?q=anna%EF%BC%A0example.com HTTP/1.1",
    "an ideographic full stop": "GET /admin/customers?q=anna%40example%E3%80%82com HTTP/1.1",
    "full-width @ and dot": "GET /admin/customers?q=anna\uff20example\uff0ecom HTTP/1.1",
    "a soft hyphen inside": "GET /admin/customers?q=anna%C2%AD%40example.com HTTP/1.1",
    "zero-width spaces around @": "q=anna\u200b@\u200bexample.com",
}


@pytest.mark.parametrize("line", ENCODED.values(), ids=ENCODED.keys())
def test_encoded_addresses_are_masked(caplog, line):
    caplog.set_level(logging.INFO)
    logging.getLogger("gunicorn.access").info(line)
    text = caplog.text
    for secret in ("anna", "tag", "example.com", "Example.COM", "203", "2001", "db8"):
        assert secret not in text, text
    assert "[email]" in text or "[ip]" in text


def test_encoded_text_that_is_no_address_is_kept():
    for line in ("GET /r/ABCD-EFGH?via=qr%20code HTTP/1.1", "q=%40%40&x=%25", "q=50%25+off"):
        assert logs.redact(line) == line


def test_gunicorns_default_access_line_is_masked(caplog):
    """Gunicorn's own format (`"%(r)s"` holds the query string, `"%(f)s"` the referrer), as
    an operator might configure it: the record is masked all the same."""
    caplog.set_level(logging.INFO)
    atoms = {
        "h": "203.0.113.9",
        "r": "GET /admin/customers?q=anna%40example.com HTTP/1.1",
        "f": "http://shop.test/admin/customers?q=bob%2540example.com",
    }
    logging.getLogger("gunicorn.access").info('%(h)s "%(r)s" "%(f)s"', atoms)
    assert (
        '[ip] "GET /admin/customers?q=[email] HTTP/1.1" "http://shop.test/admin/customers?q=[email]"'
        in caplog.text
    )


@pytest.mark.slow
def test_gunicorn_access_log_shows_no_search_and_no_address(tmp_path):
    """A real gunicorn with the project's settings and its access log on: a console search for
    an email, a customer page named by one, an API filter by one, encoded as clients do."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'access.sqlite3'}",
        "SECRET_KEY": "access-log-test-secret-0123456789",
    }
    subprocess.run(
        [str(BIN / "referral-service"), "db", "upgrade"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    server = gunicorn(env, port, "--access-logfile", "-", workers=1)
    paths = (
        "/admin/customers?q=anna%40example.com",
        "/admin/customers?q=Anna%2540Example.com",
        "/admin/customers/anna%40example.com",
        "/api/v1/rewards?referrer=anna%40example.com",
        "/healthz?zebra=striped",
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/healthz", server)
        for path in paths:
            request = urllib.request.Request(
                base + path, headers={"Referer": f"{base}/admin/customers?q=bob%40example.com"}
            )
            with contextlib.suppress(urllib.error.HTTPError):
                urllib.request.urlopen(request, timeout=5).close()
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert '"GET /admin/customers HTTP/1.1" 302' in output, output  # the access log is on
    assert '"GET /healthz HTTP/1.1" 200' in output
    for secret in ("anna", "Anna", "bob", "example.com", "zebra", "q="):
        assert secret not in output, output


def test_every_app_made_leaves_one_layer_of_each_record_factory(database_url):
    """Masking and the request id are installed once per process, however many apps are made
    (each layer used to wrap the other again: hundreds of apps nested them past the recursion
    limit)."""
    from referral_service import create_app
    from tests.conftest import app_config

    create_app(app_config(database_url))
    factory = logging.getLogRecordFactory()
    for _ in range(5):
        create_app(app_config(database_url))
    assert logging.getLogRecordFactory() is factory
    assert factory.masks_addresses and factory.adds_request_id

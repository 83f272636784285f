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
from pathlib import Path
from types import SimpleNamespace

import pytest
from werkzeug import serving

from referral_service import logs

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
    """`referral-service run` (what `make run` starts) says where it listens, not `[ip]`."""
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

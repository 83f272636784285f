"""Under `referral-service serve`, the requests gunicorn refuses itself, before the application
sees them (a request line or headers too large, a request that is not HTTP), are answered with
the error envelope as JSON, never gunicorn's HTML page: with the sync worker and with gthread."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from referral_service import gunicorn_worker
from referral_service.security import HEADERS, NOTHING

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module", params=["1", "2"], ids=["sync", "gthread"])
def server(request, tmp_path_factory):
    """`referral-service serve` with one worker process of THREADS threads on a free port."""
    folder = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {
        **os.environ,
        "SECRET_KEY": "k" * 48,
        "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
        "TASKS_FILE": str(folder / "tasks.sqlite3"),
        "CLICK_SPILL_DIR": str(folder / "clicks-spill"),
        "WEB_CONCURRENCY": "1",
        "THREADS": request.param,
    }
    for name in ("REDIS_URL", "MAIL_URL", "BIND", "PUBLIC_BASE_URL"):
        env.pop(name, None)
    process = subprocess.Popen(
        [str(BIN / "referral-service"), "serve", "--port", str(port)],
        env=env,
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 40
    while True:
        if process.poll() is not None:
            raise AssertionError(f"serve exited: {process.stdout.read()}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                process.kill()
                raise AssertionError("serve did not start") from None
            time.sleep(0.2)
    yield port
    process.terminate()
    output, _ = process.communicate(timeout=40)
    expected = "ThreadWorker" if request.param == "2" else "SyncWorker"
    assert f"Using worker: referral_service.gunicorn_worker.{expected}" in output, output


def raw(port: int, request: bytes) -> tuple[int, dict, bytes]:
    """Send `request` as it is; the answer's status, headers (lower-case names) and body, read
    until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def assert_envelope(headers: dict, body: bytes, code: str) -> None:
    assert headers["content-type"] == "application/json"
    assert headers["connection"].lower() == "close"
    assert int(headers["content-length"]) == len(body)
    assert b"<html" not in body.lower()
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"]
    assert set(error) == {"code", "message", "request_id"}
    # as on every answer of the application: its request id, and the security headers
    assert headers["request-id"] == error["request_id"] and 1 <= len(error["request_id"]) <= 128
    for name, value in HEADERS.items():
        assert headers[name.lower()] == value, name
    assert headers["content-security-policy"] == NOTHING


def test_a_long_address_is_a_json_414(server):
    response = httpx.get(f"http://127.0.0.1:{server}/api/v1/customers/{'a' * 5000}", timeout=10)
    assert response.status_code == 414
    assert_envelope(response.headers, response.content, "uri_too_long")


def test_a_large_header_is_a_json_431(server):
    response = httpx.get(f"http://127.0.0.1:{server}/healthz", headers={"X-Big": "b" * 9000})
    assert response.status_code == 431
    assert_envelope(response.headers, response.content, "request_header_fields_too_large")


def test_too_many_headers_is_a_json_431(server):
    fields = b"".join(b"X-Field-%d: 1\r\n" % n for n in range(150))
    status, headers, body = raw(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    assert status == 431
    assert_envelope(headers, body, "request_header_fields_too_large")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NONSENSE\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["request-line", "version", "header-name", "chunk-size"],
)
def test_a_malformed_request_is_a_json_400(server, request_bytes):
    status, headers, body = raw(server, request_bytes)
    assert status == 400
    assert_envelope(headers, body, "bad_request")


def test_the_application_still_answers(server):
    response = httpx.get(f"http://127.0.0.1:{server}/healthz", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"


def test_errors_that_are_not_the_clients_stay_gunicorns():
    from gunicorn.http import errors

    assert gunicorn_worker.answer_for(RuntimeError("a bug")) is None
    assert gunicorn_worker.answer_for(errors.ConfigurationProblem("x")) is None
    assert gunicorn_worker.answer_for(errors.LimitRequestLine(5000, 4094))[0] == 414


def test_a_refused_request_sent_with_a_request_id_still_gets_an_id_and_the_headers(server):
    fields = b"".join(b"X-F%d: v\r\n" % n for n in range(150))
    status, headers, body = raw(
        server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: order-42\r\n" + fields + b"\r\n"
    )
    assert status == 431
    assert_envelope(headers, body, "request_header_fields_too_large")

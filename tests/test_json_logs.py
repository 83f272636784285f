"""`LOG_FORMAT=json`: every log line is one JSON object (time, level, logger, message, the
request id, a traceback as one string), masked as the text lines are; `text` stays the default."""

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from referral_service import create_app
from referral_service.log_format import JsonLines
from tests.conftest import app_config
from tests.test_serve_errors import free_port

BIN = Path(sys.executable).parent
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)"


@pytest.fixture
def logging_restored():
    """The process's logging as it was before the test (a JSON handler on the root logger
    would write every later test's lines)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    app_handlers = list(logging.getLogger("referral_service").handlers)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("referral_service").handlers[:] = app_handlers


def json_lines(text: str) -> list[dict]:
    """Every non-empty line of `text`, each parsed as one JSON object (fails on any other)."""
    found = []
    for line in text.splitlines():
        if line.strip():
            value = json.loads(line)
            assert isinstance(value, dict), line
            found.append(value)
    return found


@pytest.fixture
def json_app(database_url, logging_restored):
    app = create_app(app_config(database_url, LOG_FORMAT="json"))
    log = logging.getLogger("referral_service.tests")

    @app.get("/tests/log")
    def log_something():
        log.warning("sign-up of anna@example.com from 203.0.113.9")
        try:
            raise ValueError("no customer anna@example.com at 2001:db8::1")
        except ValueError:
            log.exception("failed for bob@example.org")
        return "logged"

    return app


def test_a_request_logs_json_lines_with_its_request_id(json_app, capsys):
    response = json_app.test_client().get("/tests/log", headers={"X-Request-ID": "order-42"})
    assert response.status_code == 200
    lines = json_lines(capsys.readouterr().err)
    ours = [line for line in lines if line["logger"] == "referral_service.tests"]
    assert len(ours) == 2, lines
    for line in ours:
        assert line["request_id"] == response.headers["Request-Id"] == "order-42"
        assert {"time", "level", "logger", "message"} <= line.keys()
        assert re.fullmatch(TIME, line["time"]), line
    assert ours[0]["level"] == "WARNING"
    assert ours[0]["message"] == "sign-up of [email] from [ip]"
    assert ours[1]["level"] == "ERROR" and ours[1]["message"] == "failed for [email]"
    assert isinstance(ours[1]["exc_info"], str)
    assert "Traceback" in ours[1]["exc_info"] and "ValueError" in ours[1]["exc_info"]


def test_json_lines_hold_no_personal_data(json_app, capsys):
    json_app.test_client().get("/tests/log", headers={"X-Request-ID": "carl@example.net"})
    err = capsys.readouterr().err
    lines = json_lines(err)
    assert lines and all(line.get("request_id") != "carl@example.net" for line in lines)
    for secret in ("anna@example.com", "bob@example.org", "carl@example.net", "203.0.113.9"):
        assert secret not in err
    assert "2001:db8::1" not in err
    assert "no customer [email] at [ip]" in lines[-1]["exc_info"]


def test_outside_a_request_a_line_has_no_request_id(json_app, capsys):
    logging.getLogger("referral_service.tests").warning("alone")
    (line,) = json_lines(capsys.readouterr().err)
    assert line["message"] == "alone" and "request_id" not in line


def test_the_formatter_masks_a_record_made_before_masking():
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "to %s", ("dana@example.com",), None
    )
    try:
        raise RuntimeError("dana@example.com")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    record.note = "from 198.51.100.7"
    line = json.loads(JsonLines().format(record))
    assert line["message"] == "to [email]" and "dana" not in json.dumps(line)
    assert line["note"] == "from [ip]"


def test_text_stays_the_default(database_url, logging_restored):
    root = logging.getLogger()
    level = root.level
    create_app(app_config(database_url))
    assert not any(isinstance(handler.formatter, JsonLines) for handler in root.handlers)
    assert root.level == level


SCRIPT = """
import logging, sys
from referral_service import create_app
create_app()
logging.getLogger("referral_service.tests").warning("hello %s", "erin@example.com")
"""


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_the_environment_sets_the_format(tmp_path, log_format):
    """LOG_FORMAT in the environment, read as every command reads its settings."""
    env = {**os.environ, "SECRET_KEY": "k" * 48, "LOG_FORMAT": log_format}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    env.update(CLICK_SPILL_DIR=str(tmp_path / "spill"), TASKS_FILE=str(tmp_path / "tasks"))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    if log_format == "text":
        assert done.stderr == "hello [email]\n"
        return
    (line,) = json_lines(done.stderr)
    assert line["message"] == "hello [email]" and line["logger"] == "referral_service.tests"


@pytest.mark.slow
def test_serve_writes_json_lines_only(tmp_path):
    """`referral-service serve` with the access log on: the master's, the worker's and the access
    log's lines (stdout and stderr) all parse as JSON objects, none holding an address."""
    port = free_port()
    env = {
        **os.environ,
        "SECRET_KEY": "k" * 48,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "TASKS_FILE": str(tmp_path / "tasks.sqlite3"),
        "CLICK_SPILL_DIR": str(tmp_path / "clicks-spill"),
        "WEB_CONCURRENCY": "1",
        "LOG_FORMAT": "json",
        "GUNICORN_CMD_ARGS": "--access-logfile -",
    }
    for name in ("REDIS_URL", "MAIL_URL", "BIND", "PUBLIC_BASE_URL", "THREADS"):
        env.pop(name, None)
    process = subprocess.Popen(
        [str(BIN / "referral-service"), "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 40
        while True:
            assert process.poll() is None, process.communicate()
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        answer = httpx.get(
            f"http://127.0.0.1:{port}/r/nobody@example.com",
            headers={"X-Request-ID": "serve-1"},
            timeout=5,
        )
        assert answer.headers["Request-Id"] == "serve-1"
    finally:
        process.terminate()
        out, err = process.communicate(timeout=40)
    lines = json_lines(out) + json_lines(err)
    loggers = {line["logger"] for line in lines}
    assert {"gunicorn.error", "gunicorn.access"} <= loggers, lines
    assert any(line["message"].startswith("Listening at: ") for line in lines), lines
    access = [line for line in lines if line["logger"] == "gunicorn.access"]
    [shared] = [line for line in access if "/r/[email]" in line["message"]]
    assert shared["request_id"] == "serve-1"  # the line a shop's quoted id finds
    healthz = [line for line in access if "/healthz" in line["message"]]
    assert healthz and all(len(line["request_id"]) == 32 for line in healthz), healthz
    assert "nobody@example.com" not in out + err


def test_db_upgrade_writes_json_lines_too(tmp_path):
    """Alembic's own logging configuration is not applied over the JSON handler."""
    env = {**os.environ, "SECRET_KEY": "k" * 48, "LOG_FORMAT": "json"}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    env.update(CLICK_SPILL_DIR=str(tmp_path / "spill"), TASKS_FILE=str(tmp_path / "tasks"))
    done = subprocess.run(
        [sys.executable, "-m", "referral_service", "db", "upgrade"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = json_lines(done.stderr + done.stdout)
    assert any(line["logger"] == "alembic.runtime.migration" for line in lines), lines

"""A setting the service will not run with stops every command that builds the app (`db upgrade`,
`worker`, `serve`, ...) before it starts, with one line naming the setting, what is wrong and
what it takes, and a non-zero exit status: never a traceback, never a half-started service."""

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from referral_service import cli, create_app
from referral_service.config import (
    SettingsError,
    from_environment,
    rate_limit_settings,
    server_settings,
)
from referral_service.extensions import db
from referral_service.worker import outage_reason

BIN = Path(sys.executable).parent
SETTINGS = (
    *("SECRET_KEY", "SECRET_KEY_FALLBACKS", "DATABASE_URL", "DATABASE_CONNECT_TIMEOUT"),
    *("DATABASE_POOL_TIMEOUT", "DATABASE_STATEMENT_TIMEOUT", "PUBLIC_BASE_URL", "REDIS_URL"),
    *("RATELIMIT_ENABLED", "RATELIMIT_API", "RATELIMIT_PUBLIC", "RATELIMIT_SIGNUPS_PER_REFERRER"),
    *("TRUSTED_PROXIES", "PAYOUT_APPROVAL_THRESHOLD", "CLICK_SPILL_DIR", "DISPOSABLE_DOMAINS_FILE"),
    *("WEBHOOKS_ALLOW_PRIVATE", "MAIL_URL", "MAIL_FROM", "TASKS_FILE", "TASKS_IMMEDIATE"),
    *("WEB_CONCURRENCY", "THREADS", "BIND"),
)
A_FILE = "{tmp}/a-file"  # made by the tests: a file where a folder is wanted
A_FOLDER = "{tmp}"

# (setting, bad value): every setting the service reads, each kind of mistake
BAD = [
    ("DATABASE_STATEMENT_TIMEOUT", "abc"),
    ("DATABASE_CONNECT_TIMEOUT", "0"),
    ("DATABASE_POOL_TIMEOUT", "nan"),
    ("DATABASE_POOL_TIMEOUT", "301"),
    ("PAYOUT_APPROVAL_THRESHOLD", "abc"),
    ("PAYOUT_APPROVAL_THRESHOLD", "-5"),
    ("DATABASE_URL", "foo://x"),
    ("DATABASE_URL", "nonsense"),
    ("DATABASE_URL", "mysql://user:s3cret-pw@db.example/shop"),
    ("DATABASE_URL", "postgresql+psycopg2://user:s3cret-pw@db.example/shop"),
    ("DATABASE_URL", "postgresql://user:s3cret-pw@db.example:notaport/shop"),
    ("DATABASE_URL", "postgresql://user:s3cret-pw@db.example:99999/shop"),
    ("DATABASE_URL", "sqlite:////no-such-folder-here/x.sqlite3"),
    ("DATABASE_URL", "sqlite:///" + A_FOLDER),
    ("REDIS_URL", "foo://x"),
    ("REDIS_URL", "localhost:6379"),
    ("REDIS_URL", "redis+unix:///tmp/redis.sock"),
    ("REDIS_URL", "redis://:s3cret-pw@redis.example:notaport/0"),
    ("REDIS_URL", "redis://:s3cret-pw@redis.example/cache"),
    ("REDIS_URL", "redis://redis.example/0?socket_timeout=soon"),
    ("REDIS_URL", "unix://"),
    ("TRUSTED_PROXIES", "many"),
    ("TRUSTED_PROXIES", "11"),
    ("RATELIMIT_API", "lots"),
    ("RATELIMIT_PUBLIC", "10/fortnight"),
    ("RATELIMIT_SIGNUPS_PER_REFERRER", "-1/hour"),
    ("RATELIMIT_ENABLED", "maybe"),
    ("WEBHOOKS_ALLOW_PRIVATE", "2"),
    ("PUBLIC_BASE_URL", "refer.shop.example"),
    ("PUBLIC_BASE_URL", "ftp://refer.shop.example"),
    ("PUBLIC_BASE_URL", "https://refer.shop.example/?a=1"),
    ("CLICK_SPILL_DIR", A_FILE),
    ("TASKS_FILE", A_FOLDER),
    ("TASKS_FILE", A_FILE + "/tasks.sqlite3"),
    ("DISPOSABLE_DOMAINS_FILE", A_FOLDER),
    ("MAIL_URL", "http://mail.example"),
    ("MAIL_FROM", "not an address"),
    ("SECRET_KEY", "short"),
    ("SECRET_KEY_FALLBACKS", "short"),
    # a URL's user and password are never quoted back, whatever else is wrong with it
    ("PUBLIC_BASE_URL", "https://u:s3cret-pw@refer.shop.example"),
    ("PUBLIC_BASE_URL", "https://u:s3cret-pw@refer.shop.example:notaport/"),
    ("PUBLIC_BASE_URL", "https://u:s3cret-pw/x@refer.shop.example/?a=1"),
    ("PUBLIC_BASE_URL", "u:s3cret-pw@refer.shop.example"),
    ("PUBLIC_BASE_URL", "https://refer.shop.example:\u0664\u0664\u0663/"),
    ("DATABASE_URL", "user:s3cret-pw@db.example://shop"),
    ("DATABASE_URL", "postgresql://user:s3cret-pw@db.example/shop?sslmode=bogus"),
    ("DATABASE_URL", "postgresql://user:s3cret-pw@db.example/shop?no_such_option=1"),
    ("DATABASE_URL", "postgresql://user:s3cret-pw@db.example/shop?sslmode=a&sslmode=b"),
    ("DATABASE_URL", "postgresql://user:s3cret-pw@db.example/shop?connect_timeout=1e2"),
    ("DATABASE_URL", "postgresql://user:s3cret-pw@db.example:\u0665\u0664\u0663\u0662/shop"),
    ("DATABASE_URL", "postgresql://user:s3cret-pw@db.example:+5432/shop"),
    ("REDIS_URL", "redis://:s3cret-pw@redis.example:\uff16\uff13\uff17\uff19/0"),
    ("REDIS_URL", "redis://:s3cret-pw@redis.example/0?socket_timeout=1_0"),
    ("MAIL_URL", "smtp://user:s3cret-pw@mail.example:notaport"),
    # an in-memory database: each connection and process would have its own, empty
    ("DATABASE_URL", "sqlite://"),
    ("DATABASE_URL", "sqlite:///:memory:"),
    ("DATABASE_URL", "sqlite:///file::memory:?uri=true"),
    ("DATABASE_URL", "sqlite:///file:shared?mode=memory&cache=shared&uri=true"),
    # numbers: ASCII digits only (int() and float() take much more)
    ("DATABASE_STATEMENT_TIMEOUT", "\u0663"),  # Arabic-Indic three
    ("DATABASE_STATEMENT_TIMEOUT", "1_0"),
    ("DATABASE_STATEMENT_TIMEOUT", "1e2"),
    ("DATABASE_STATEMENT_TIMEOUT", "1 0"),
    ("DATABASE_STATEMENT_TIMEOUT", "+3"),
    ("DATABASE_POOL_TIMEOUT", "\uff11"),  # full-width one
    ("DATABASE_CONNECT_TIMEOUT", "inf"),
    ("TRUSTED_PROXIES", "\u0663"),
    ("TRUSTED_PROXIES", "1_0"),
    ("PAYOUT_APPROVAL_THRESHOLD", "1e3"),
    ("PAYOUT_APPROVAL_THRESHOLD", "\uff1500"),
    ("PAYOUT_APPROVAL_THRESHOLD", "1_000"),
    ("LOG_FORMAT", "yaml"),
]
SERVE_ONLY = [
    ("WEB_CONCURRENCY", "0"),
    ("WEB_CONCURRENCY", "lots"),
    ("THREADS", "1000"),
    ("BIND", "127.0.0.1:99999"),
    ("BIND", "::1:8000"),
    ("BIND", "unix:"),
    ("BIND", "nonsense"),  # a host without a port: gunicorn would take 8000
    ("BIND", "localhost"),
    ("BIND", "[::1]"),
    ("BIND", ":8000"),
    ("BIND", "no@pe:8000"),
    ("BIND", "999.1.1.1:8000"),
    ("BIND", "localhost:\uff18\uff10\uff10\uff10"),
    ("WEB_CONCURRENCY", "\u0662"),
    ("WEB_CONCURRENCY", "1_0"),
    ("THREADS", "\uff11"),
]
# checked as the app is built, after reading (see mail.py, check_secret_key)
BUILT = ("MAIL_URL", "MAIL_FROM", "SECRET_KEY_FALLBACKS")
NEEDS = {  # settings a bad value is read with
    "MAIL_FROM": {"MAIL_URL": "smtp://mail.example", "PUBLIC_BASE_URL": "https://r.example"},
}


def environment(tmp_path: Path, name: str, value: str) -> dict:
    """The process's environment without the service's settings, then a working instance in
    `tmp_path` (SQLite) and the one bad setting."""
    env = {key: item for key, item in os.environ.items() if key not in SETTINGS}
    (tmp_path / "a-file").write_text("")
    env.update(
        SECRET_KEY="k" * 48,
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        TASKS_FILE=str(tmp_path / "tasks.sqlite3"),
        CLICK_SPILL_DIR=str(tmp_path / "clicks-spill"),
        DISPOSABLE_DOMAINS_FILE=str(tmp_path / "disposable.txt"),
        WEB_CONCURRENCY="1",
    )
    env.update(NEEDS.get(name, {}))
    env[name] = value.format(tmp=tmp_path)
    return env


def said_plainly(output: str, name: str, exit_code: int) -> None:
    assert exit_code not in (0, None), output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("Error: ") and name in lines[0], output
    assert "s3cret-pw" not in output  # a URL's password is never quoted back


@pytest.mark.parametrize(("name", "value"), [case for case in BAD if case[0] not in BUILT])
def test_reading_the_settings_refuses_a_bad_value(tmp_path, monkeypatch, name, value):
    for key, item in environment(tmp_path, name, value).items():
        monkeypatch.setenv(key, item)
    with pytest.raises(SettingsError, match=name) as refused:
        from_environment(str(tmp_path / "instance"))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(("name", "value"), SERVE_ONLY)
def test_the_server_settings_refuse_a_bad_value(tmp_path, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        server_settings()


@pytest.mark.parametrize("command", [["db", "upgrade"], ["worker"], ["serve"], ["--help"]])
@pytest.mark.parametrize(("name", "value"), BAD)
def test_every_command_says_a_bad_setting_in_one_line(tmp_path, monkeypatch, command, name, value):
    """The commands as the console script runs them (in this process: quick), `serve` before it
    would hand over to gunicorn; `--help` says it and still lists the commands."""
    for key, item in environment(tmp_path, name, value).items():
        monkeypatch.setenv(key, item)

    def no_exec(*args):
        raise AssertionError("serve went on to gunicorn with a bad setting")

    monkeypatch.setattr(os, "execv", no_exec)
    result = CliRunner().invoke(cli.main, command, prog_name="referral-service")
    if command == ["--help"]:
        assert result.exit_code == 0 and "Traceback" not in result.output, result.output
        assert result.output.startswith("Error: ") and name in result.output.splitlines()[0]
        assert "worker" in result.output  # the commands are still listed
        return
    assert isinstance(result.exception, SystemExit), result.exception
    said_plainly(result.output, name, result.exit_code)


@pytest.mark.parametrize(("name", "value"), SERVE_ONLY)
def test_serve_says_a_bad_server_setting_in_one_line(tmp_path, monkeypatch, name, value):
    for key, item in environment(tmp_path, name, value).items():
        monkeypatch.setenv(key, item)
    monkeypatch.setattr(os, "execv", lambda *args: pytest.fail("went on to gunicorn"))
    result = CliRunner().invoke(cli.main, ["serve"], prog_name="referral-service")
    assert isinstance(result.exception, SystemExit), result.exception
    said_plainly(result.output, name, result.exit_code)


# The console script itself, as an operator runs it: each command in its own process.
SCRIPT_CASES = [
    ("DATABASE_STATEMENT_TIMEOUT", "abc"),
    ("PAYOUT_APPROVAL_THRESHOLD", "abc"),
    ("DATABASE_URL", "foo://x"),
    ("DATABASE_URL", "nonsense"),
    ("REDIS_URL", "foo://x"),
]


def run_script(tmp_path: Path, name: str, value: str, *commands: list[str]) -> None:
    """Each command of the console script at once (one process each), each said plainly."""
    env = environment(tmp_path, name, value)
    running = [
        subprocess.Popen(
            [str(BIN / "referral-service"), *command],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for command in commands
    ]
    for process in running:
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            raise AssertionError(f"{process.args} did not stop: {output}") from None
        said_plainly(output, name, process.returncode)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "value"), SCRIPT_CASES)
def test_the_console_script_says_a_bad_setting_in_one_line(tmp_path, name, value):
    run_script(tmp_path, name, value, ["db", "upgrade"], ["worker"])
    assert not (tmp_path / "db.sqlite3").exists()  # nothing was started


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "value"),
    [("DATABASE_URL", "mysql://user:s3cret-pw@db.example/shop"), ("WEB_CONCURRENCY", "0")],
)
def test_serve_says_a_bad_setting_in_one_line_before_gunicorn(tmp_path, name, value):
    run_script(tmp_path, name, value, ["serve"])


def test_a_yes_or_no_setting_is_refused_in_a_plain_sentence(monkeypatch):
    monkeypatch.setenv("RATELIMIT_ENABLED", "maybe")
    with pytest.raises(SettingsError) as refused:
        rate_limit_settings()
    assert str(refused.value) == (
        "RATELIMIT_ENABLED must be 1, true, yes or on (on), or 0, false, no or off (off); "
        "got 'maybe'"
    )


@pytest.mark.parametrize(
    ("name", "value", "read"),
    [
        ("DATABASE_STATEMENT_TIMEOUT", " 3 ", 3.0),
        ("DATABASE_POOL_TIMEOUT", "0.5", 0.5),
        ("DATABASE_CONNECT_TIMEOUT", "300", 300.0),
        ("TRUSTED_PROXIES", "2", 2),
        ("PAYOUT_APPROVAL_THRESHOLD", "1000.50", "1000.50"),
    ],
)
def test_a_number_in_ascii_digits_is_read(tmp_path, monkeypatch, name, value, read):
    for key, item in environment(tmp_path, name, value).items():
        monkeypatch.setenv(key, item)
    assert from_environment(str(tmp_path / "instance"))[name] == read


@pytest.mark.parametrize(
    "value", ["127.0.0.1:8000", "0.0.0.0:80", "localhost:8000", "[::1]:8000", "tcp://h.example:1"]
)
def test_bind_takes_a_host_and_a_port(monkeypatch, value):
    monkeypatch.setenv("BIND", value)
    assert server_settings()["bind"] == value


def serve(tmp_path, monkeypatch, *args: str, env: dict | None = None):
    """`serve` in this process, up to the moment it would hand over to gunicorn; the
    result and the arguments gunicorn would have had (None if it did not go on)."""
    for key, item in environment(tmp_path, "BIND", "127.0.0.1:8000").items():
        monkeypatch.setenv(key, item)
    for key, item in (env or {}).items():
        monkeypatch.setenv(key, item)
    execs = []
    monkeypatch.setattr(os, "execv", lambda path, argv: execs.append(argv))
    result = CliRunner().invoke(cli.main, ["serve", *args], prog_name="referral-service")
    return result, (execs[0] if execs else None)


@pytest.mark.parametrize("host", ["no pe", "no@pe", "999.1.1.1", "[::1", "a..b"])
def test_serve_refuses_a_host_that_is_neither_a_name_nor_an_address(tmp_path, monkeypatch, host):
    result, argv = serve(tmp_path, monkeypatch, "--host", host, "--port", "18517")
    assert argv is None
    said_plainly(result.output, "--host", result.exit_code)


@pytest.mark.parametrize(
    ("args", "env", "name"),
    [
        (["--host", "nonsense", "--port", "18517"], {}, "--host"),
        ([], {"BIND": "nonsense:1"}, "BIND"),
    ],
)
def test_serve_says_a_host_that_does_not_resolve_in_one_line(
    tmp_path, monkeypatch, args, env, name
):
    def unknown(host, *args, **kwargs):
        assert host == "nonsense"
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    result, argv = serve(tmp_path, monkeypatch, *args, env=env)
    assert argv is None
    said_plainly(result.output, name, result.exit_code)
    assert "'nonsense'" in result.output and "Name or service not known" in result.output


@pytest.mark.parametrize(
    ("args", "bind"),
    [
        (["--host", "::1", "--port", "18517"], "[::1]:18517"),
        (["--host", "[::1]"], "[::1]:8000"),
        (["--host", "localhost", "--port", "18517"], "localhost:18517"),
        (["--port", "18517"], "127.0.0.1:18517"),
    ],
)
def test_serve_hands_gunicorn_the_host_and_port(tmp_path, monkeypatch, args, bind):
    result, argv = serve(tmp_path, monkeypatch, *args)
    assert argv is not None, result.output
    assert argv[argv.index("--bind") + 1] == bind


# --- a database the commands cannot use -------------------------------------------------------

CLOSED = "postgresql+psycopg://user:s3cret-pw@127.0.0.1:1/shop"  # nothing listens on port 1
UNUSABLE_DATABASES = [
    CLOSED,
    CLOSED + "?target_session_attrs=bogus",  # a value libpq refuses when it connects
    CLOSED.replace("@", "%40x@", 1),  # a password with an escaped character
]
DATABASE_COMMANDS = [["db", "upgrade"], ["api-keys", "create", "till", "--scope", "shop"]]


def said_in_one_line(result, *secrets: str) -> str:
    """The result of a command that could not use its database: exit status 1 and one line on
    standard error, which says so; no traceback, no password."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: the database (DATABASE_URL) cannot be used: "), lines
    for secret in ("s3cret-pw", *secrets):
        assert secret not in result.output
    return lines[0]


@pytest.mark.parametrize("command", DATABASE_COMMANDS)
@pytest.mark.parametrize("url", UNUSABLE_DATABASES)
def test_a_database_that_cannot_be_used_is_said_in_one_line(tmp_path, monkeypatch, command, url):
    for key, item in environment(tmp_path, "DATABASE_URL", url).items():
        monkeypatch.setenv(key, item)
    result = CliRunner().invoke(cli.main, command, prog_name="referral-service")
    line = said_in_one_line(result)
    assert "127.0.0.1" in line or "target_session_attrs" in line, line


@pytest.mark.skipif(not os.environ.get("TEST_DATABASE_URL"), reason="needs PostgreSQL")
@pytest.mark.parametrize("command", DATABASE_COMMANDS)
def test_a_database_the_server_does_not_have_is_said_in_one_line(tmp_path, monkeypatch, command):
    server = make_url(os.environ["TEST_DATABASE_URL"].strip())
    url = server.set(password="s3cret-pw", database="no_such_database_here")
    for key, item in environment(tmp_path, "DATABASE_URL", "").items():
        monkeypatch.setenv(key, item)
    monkeypatch.setenv("DATABASE_URL", url.render_as_string(hide_password=False))
    result = CliRunner().invoke(cli.main, command, prog_name="referral-service")
    assert "no_such_database_here" in said_in_one_line(result)


def test_a_database_without_tables_asks_for_db_upgrade(tmp_path, monkeypatch):
    for key, item in environment(tmp_path, "TRUSTED_PROXIES", "0").items():
        monkeypatch.setenv(key, item)
    result = CliRunner().invoke(cli.main, DATABASE_COMMANDS[1], prog_name="referral-service")
    assert "run `referral-service db upgrade` first" in said_in_one_line(result)


def test_a_fault_of_the_code_is_not_taken_for_an_unusable_database():
    duplicate = IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed"))
    syntax = ProgrammingError("SELEC 1", {}, psycopg.errors.SyntaxError("syntax error"))
    for error in (duplicate, syntax, ValueError("no database in it")):
        assert cli.database_trouble(error) is None
        assert outage_reason(error) is None
    refused = OperationalError(None, None, psycopg.OperationalError("connection failed: refused"))
    assert cli.database_trouble(refused) == (
        "the database (DATABASE_URL) cannot be used: connection failed: refused"
    )
    assert outage_reason(refused) == "connection failed: refused"


def test_a_relative_sqlite_path_is_in_the_instance_folder(tmp_path, monkeypatch):
    for key, item in environment(tmp_path, "DATABASE_URL", "sqlite:///relative.sqlite3").items():
        monkeypatch.setenv(key, item)
    monkeypatch.chdir(tmp_path)  # not where it goes
    app = create_app()
    with app.app_context():
        assert db.engine.url.database == os.path.join(app.instance_path, "relative.sqlite3")


@pytest.mark.slow
def test_the_console_script_says_an_unreachable_database_in_one_line(tmp_path):
    env = environment(tmp_path, "DATABASE_URL", CLOSED)
    for command in DATABASE_COMMANDS:
        done = subprocess.run(
            [str(BIN / "referral-service"), *command],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1, done
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith("Error: the database (DATABASE_URL) cannot be used: ")
        assert "s3cret-pw" not in done.stderr + done.stdout

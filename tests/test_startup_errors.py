"""A setting the service will not run with stops every command that builds the app (`db upgrade`,
`worker`, `serve`, ...) before it starts, with one line naming the setting, what is wrong and
what it takes, and a non-zero exit status: never a traceback, never a half-started service."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from referral_service import cli
from referral_service.config import SettingsError, from_environment, server_settings

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
]
SERVE_ONLY = [
    ("WEB_CONCURRENCY", "0"),
    ("WEB_CONCURRENCY", "lots"),
    ("THREADS", "1000"),
    ("BIND", "127.0.0.1:99999"),
    ("BIND", "::1:8000"),
    ("BIND", "unix:"),
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

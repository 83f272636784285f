"""Settings from a `.env` file in the working directory: read by the command line
(`python -m referral_service ...`), beaten by the environment, never read while tests run or
when REFERRAL_SERVICE_DOTENV is off; and the warning of a key generated on this host."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from referral_service import config
from referral_service.config import SettingsError, load_dotenv_file, secret_key

KEY = "k" * 48
ROOT = Path(__file__).resolve().parent.parent


def run(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`python -m referral_service ARGS` in `folder`, with an environment of the tests' own:
    none of the service's settings, and not marked as a test run (PYTEST_CURRENT_TEST)."""
    base = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    return subprocess.run(
        [sys.executable, "-m", "referral_service", *args],
        cwd=folder,
        env={**base, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_env(folder: Path, **settings: str) -> None:
    lines = ["# settings of this folder", *(f"{name}={value}" for name, value in settings.items())]
    (folder / ".env").write_text("\n".join(lines) + "\n")


def test_a_dotenv_file_sets_settings_and_the_environment_wins(tmp_path):
    database = tmp_path / "from-dotenv.sqlite3"
    write_env(
        tmp_path,
        SECRET_KEY=KEY,
        DATABASE_URL=f"sqlite:///{database}",
        CLICK_SPILL_DIR=str(tmp_path),
        DATABASE_STATEMENT_TIMEOUT="abc",
    )
    done = run(tmp_path, "db", "upgrade")
    assert done.returncode == 1
    assert "DATABASE_STATEMENT_TIMEOUT" in done.stderr and "'abc'" in done.stderr
    assert "Traceback" not in done.stderr

    done = run(tmp_path, "db", "upgrade", DATABASE_STATEMENT_TIMEOUT="7")
    assert done.returncode == 0, done.stderr
    assert database.exists()  # DATABASE_URL from the file
    assert "SECRET_KEY is not set" not in done.stderr  # the key from the file


@pytest.mark.parametrize(
    "switch", [{"REFERRAL_SERVICE_DOTENV": "0"}, {"PYTEST_CURRENT_TEST": "a test"}]
)
def test_the_file_is_not_read_when_switched_off_or_under_tests(tmp_path, switch):
    write_env(tmp_path, DATABASE_STATEMENT_TIMEOUT="abc")
    database = tmp_path / "from-environment.sqlite3"
    done = run(
        tmp_path,
        "db",
        "upgrade",
        SECRET_KEY=KEY,
        DATABASE_URL=f"sqlite:///{database}",
        CLICK_SPILL_DIR=str(tmp_path),
        **switch,
    )
    assert done.returncode == 0, done.stderr
    assert database.exists()


def test_this_test_run_reads_no_dotenv(tmp_path, monkeypatch):
    write_env(tmp_path, REFERRAL_SERVICE_TEST_MARK="read")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(config._DOTENV_STATE, "read", False)
    load_dotenv_file()
    assert "REFERRAL_SERVICE_TEST_MARK" not in os.environ


def test_the_file_read_in_process_keeps_the_environment(tmp_path, monkeypatch):
    write_env(tmp_path, REFERRAL_SERVICE_A="from-file", REFERRAL_SERVICE_B="from-file")
    (tmp_path / ".env").write_text((tmp_path / ".env").read_text() + "REFERRAL_SERVICE_C\n")
    for name in ("REFERRAL_SERVICE_A", "REFERRAL_SERVICE_C"):  # absent again after the test
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    monkeypatch.setenv("REFERRAL_SERVICE_B", "from-environment")
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(config._DOTENV_STATE, "read", False)
    load_dotenv_file()
    assert os.environ["REFERRAL_SERVICE_A"] == "from-file"
    assert os.environ["REFERRAL_SERVICE_B"] == "from-environment"
    assert "REFERRAL_SERVICE_C" not in os.environ  # a name without a value sets nothing


def test_an_unreadable_dotenv_is_one_line(tmp_path, monkeypatch):
    (tmp_path / ".env").write_bytes(b"PUBLIC_BASE_URL=https://caf\xe9.example\n")  # Latin-1
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(config._DOTENV_STATE, "read", False)
    with pytest.raises(SettingsError, match=r"\.env cannot be read.*REFERRAL_SERVICE_DOTENV=0"):
        load_dotenv_file()


def test_a_key_generated_on_this_host_is_announced_never_shown(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.setattr(config, "_KEY_FILES_WARNED", set())
    with caplog.at_level(logging.WARNING, logger=config.__name__):
        key = secret_key(str(tmp_path))
        assert secret_key(str(tmp_path)) == key  # read again: said once per process
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "just generated" in message and str(tmp_path) in message
    assert "SECRET_KEY" in message and "share one key" in message
    assert key not in message and "\n" not in message

    caplog.clear()
    monkeypatch.setattr(config, "_KEY_FILES_WARNED", set())  # another process, the same file
    with caplog.at_level(logging.WARNING, logger=config.__name__):
        secret_key(str(tmp_path))
    [record] = caplog.records
    assert "using the key generated on this host" in record.getMessage()
    assert key not in record.getMessage()


def test_a_key_from_the_environment_is_not_announced(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SECRET_KEY", KEY)
    with caplog.at_level(logging.WARNING, logger=config.__name__):
        assert secret_key(str(tmp_path)) == KEY
    assert not caplog.records
    assert not (tmp_path / config.SECRET_KEY_FILE).exists()

"""The service as an operator runs it: gunicorn, a clean shutdown, and the package as a wheel."""

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.factories import click_row

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stdout.read()}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("server did not start")


def gunicorn(
    env: dict, port: int, *options: str, app: str = "referral_service.wsgi:app", workers: int = 2
):
    """gunicorn with the package's gunicorn_conf.py on 127.0.0.1:`port`, its output (stdout
    and stderr) in `.stdout`; wait for it with `wait_until_up`."""
    return subprocess.Popen(
        [
            str(BIN / "gunicorn"),
            "-c",
            "python:referral_service.gunicorn_conf",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            *options,
            app,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def cli(env, *args, cwd=None, command=(str(BIN / "referral-service"),)) -> str:
    result = subprocess.run(
        [*command, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def put_customer(base: str, key: str, external_id: str) -> str:
    request = urllib.request.Request(
        f"{base}/api/v1/customers/{external_id}",
        method="PUT",
        data=b'{"email": "x@example.com"}',
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        import json

        return json.load(response)["referral"]["code"]


def test_gunicorn_clean_shutdown_keeps_every_click(tmp_path):
    """Clicks are buffered in memory; SIGTERM to gunicorn writes every one of them.

    Each visit comes with a user agent of its own, a visitor of its own: the same visitor on
    the same link counts once an hour, and every visit here must be a click."""
    database = tmp_path / "svc.sqlite3"
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{database}",
        "SECRET_KEY": "s" * 32,
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
    }
    cli(env, "db", "upgrade")
    key = cli(env, "api-keys", "create", "t", "--scope", "shop")
    server = gunicorn({**env, "CLICK_FLUSH_INTERVAL": "60"}, port)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/healthz", server)
        code = put_customer(base, key, "c1")
        opener = urllib.request.build_opener(NoRedirect)
        visits = 150
        click_ids = set()
        for i in range(visits):
            request = urllib.request.Request(
                f"{base}/r/{code}?via=qr", headers={"User-Agent": f"shutdown-test/{i}"}
            )
            try:
                opener.open(request, timeout=5)
            except urllib.error.HTTPError as error:
                assert error.code == 302
                location = urllib.parse.urlsplit(error.headers["Location"])
                click_ids.update(map(click_row, urllib.parse.parse_qs(location.query)["click_id"]))
            else:
                raise AssertionError("the share link did not redirect")
        assert len(click_ids) == visits  # each visit a click of its own
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    with sqlite3.connect(database) as connection:
        kept = {row[0] for row in connection.execute("SELECT id FROM clicks")}
    assert kept == click_ids


def test_wheel_installs_and_runs_from_any_directory(tmp_path):
    """`pip install .` then `referral-service db upgrade`, `run` and `serve` (gunicorn with the
    package's settings) work outside the checkout; the wheel holds the compiled translation
    catalogs."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        timeout=300,
        cwd=tmp_path,
    )
    [wheel] = wheels.glob("referral_service-*.whl")
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    assert (target / "referral_service" / "migrations" / "versions").is_dir()
    # the build compiled every catalog (setup.py), and the compiled one speaks the language
    from babel.support import Translations

    from referral_service.domain.program import LANGUAGES

    for language in LANGUAGES:
        mo = target / "referral_service" / "translations" / language / "LC_MESSAGES" / "messages.mo"
        with open(mo, "rb") as compiled:
            translations = Translations(compiled)
        if language != "en":
            assert translations.gettext("Go to the shop") != "Go to the shop", language
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(target),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'w.sqlite3'}",
        "SECRET_KEY": "w" * 32,
    }
    command = [sys.executable, "-c", "from referral_service.cli import main; main()"]
    where = subprocess.run(
        [sys.executable, "-c", "import referral_service as r; print(r.__file__)"],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(target)), where.stdout
    cli(env, "db", "upgrade", cwd=elsewhere, command=command)
    for server_command in ("run", "serve"):  # the development server, then gunicorn
        server = subprocess.Popen(
            [*command, server_command, "--port", str(port)],
            env=env,
            cwd=elsewhere,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_until_up(f"http://127.0.0.1:{port}/readyz", server, seconds=40)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as response:
                assert b'"migrations":"head"' in response.read().replace(b" ", b"")
        finally:
            server.terminate()
            output, _ = server.communicate(timeout=40)
        assert server_command == "run" or "Booting worker" in output, output
    shutil.rmtree(wheels)


def test_zero_configuration_uses_the_instance_folder(tmp_path, monkeypatch):
    """Without DATABASE_URL the database lives in the instance folder, created if missing."""
    from referral_service import config

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("SECRET_KEY", "k" * 32)
    instance = tmp_path / "not" / "yet"
    settings = config.from_environment(str(instance))
    assert instance.is_dir()
    assert settings["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{instance / config.SQLITE_FILE}"
    assert settings["SECRET_KEY"] == "k" * 32
    monkeypatch.delenv("SECRET_KEY")
    generated = config.from_environment(str(instance))["SECRET_KEY"]
    assert len(generated) > 40
    assert config.from_environment(str(instance))["SECRET_KEY"] == generated  # kept
    assert (instance / config.SECRET_KEY_FILE).stat().st_mode & 0o777 == 0o600


def test_processes_starting_at_once_read_one_whole_key(tmp_path):
    """Eight processes generating the key of one fresh instance folder at once all read the same
    complete key (the file appears whole: a temporary file, then a hard link)."""
    script = (
        "import sys; from referral_service import config; print(config.secret_key(sys.argv[1]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    for trial in range(5):
        instance = tmp_path / f"instance-{trial}"
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(instance)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(8)
        ]
        keys = {process.communicate(timeout=60)[0].strip() for process in processes}
        assert all(process.returncode == 0 for process in processes)
        assert len(keys) == 1 and len(keys.pop()) >= 64
        assert [p.name for p in instance.iterdir()] == ["secret_key"]  # no temporary file left


@pytest.mark.parametrize("key", ["", "   ", "short-key", "x" * 31])
def test_an_empty_or_short_key_is_refused_at_start(tmp_path, monkeypatch, key):
    from referral_service import config

    monkeypatch.delenv("SECRET_KEY", raising=False)
    (tmp_path / config.SECRET_KEY_FILE).write_text(key)
    with pytest.raises(config.SettingsError, match="at least 32 characters"):
        config.secret_key(str(tmp_path))
    monkeypatch.setenv("SECRET_KEY", key)  # given, even empty: never a key generated instead
    said = "SECRET_KEY is only" if key.strip() else "SECRET_KEY is empty"
    with pytest.raises(config.SettingsError, match=said):
        config.secret_key(str(tmp_path / "other"))
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize(
    ("key", "fallbacks", "said"),
    [
        ("short", "", "Error: SECRET_KEY is only 5 characters"),
        ("k" * 32, "o" * 32 + ",changeme", "Error: Key 2 of SECRET_KEY_FALLBACKS is only 8"),
    ],
)
def test_the_cli_says_why_it_will_not_start_with_a_short_key(tmp_path, key, fallbacks, said):
    """An older key that still verifies could forge codes and share-page links as well: the
    fallbacks are held to the same length. The CLI says so in a line, not a traceback."""
    env = {**os.environ, "SECRET_KEY": key, "SECRET_KEY_FALLBACKS": fallbacks}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'k.db'}"
    done = subprocess.run(
        [str(BIN / "referral-service"), "db", "upgrade"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert done.stderr.startswith(said) and "Traceback" not in done.stderr

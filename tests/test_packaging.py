"""What a self-hoster expects beside the code: the license the package claims, a security
policy, a changelog, `.env.example` with every documented setting, `python -m referral_service`."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_license_is_the_mit_text_the_package_claims():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert re.search(r"^Copyright \(c\) 20\d\d .+$", text, re.MULTILINE)
    assert "Permission is hereby granted, free of charge, to any person obtaining a copy" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"  # an SPDX expression: License-Expression in the metadata
    assert project["license-files"] == ["LICENSE"]  # in the wheel's dist-info and the sdist


def test_security_policy_and_changelog():
    security = (ROOT / "SECURITY.md").read_text()
    for part in ("## Supported versions", "## Reporting a vulnerability", "## In scope"):
        assert part in security
    assert "privately" in security
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "Keep a Changelog" in changelog
    assert "## [Unreleased]" in changelog
    for group in ("### Added", "### Changed", "### Security"):
        assert group in changelog


def documented_settings() -> set[str]:
    """The names in the first column of the README's Configuration table."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def test_env_example_lists_every_documented_setting_commented_out():
    example = (ROOT / ".env.example").read_text()
    settings = documented_settings()
    assert {"DATABASE_URL", "SECRET_KEY", "WEB_CONCURRENCY"} <= settings
    listed = set(re.findall(r"^# ([A-Z][A-Z0-9_]+)=", example, re.MULTILINE))
    assert settings - listed == set(), "add these to .env.example"
    assert not re.search(r"^[A-Z]", example, re.MULTILINE), "every setting commented out"


def test_dotenv_is_never_committed():
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_python_m_runs_the_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "referral_service", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "gunicorn" in done.stdout

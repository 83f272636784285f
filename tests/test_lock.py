"""The lock file moves with pyproject.toml: its stamp of the dependency ranges is the ranges'
own, and every range admits the version the lock pins (a fresh machine installs only versions
the tests have seen)."""

import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
STAMP = re.compile(r"^# pyproject\.toml ranges: ([0-9a-f]{16})$", re.MULTILINE)


def ranges_stamp() -> str:
    """The stamp `make lock` writes, computed by the Makefile's own expression."""
    expression = subprocess.run(
        ["make", "-s", "--no-print-directory", "-f", "Makefile", "-p", "-n", "lock"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"^RANGES_STAMP = (.+)$", expression, re.MULTILINE)
    assert found, "the Makefile no longer defines RANGES_STAMP"
    done = subprocess.run(
        [sys.executable, "-c", found.group(1)], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip()


def pinned() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_the_lock_was_made_from_the_ranges_of_pyproject():
    found = STAMP.search(LOCK.read_text())
    assert found, "requirements.lock has no stamp: run `make lock`"
    assert found.group(1) == ranges_stamp(), (
        "pyproject.toml's dependency ranges changed since `make lock`: run it again"
    )


def test_every_range_admits_its_pinned_version():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = pinned()
    requirements = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    for requirement in map(Requirement, requirements):
        version = pins.get(requirement.name.lower().replace("_", "-"))
        assert version is not None, f"{requirement.name} is not in requirements.lock"
        assert requirement.specifier.contains(version, prereleases=True), (requirement, version)

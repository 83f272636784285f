"""Outages of the service's dependencies (the database, Redis, ...): one log line each way.

A dependency that fails is logged once, as a warning, when it goes away, and once when it is
back (with how long it was away and how many attempts failed meanwhile), never once per request
or per retry; a caller may add a detail of its own to either line (what waited, say). While one
is away, `try_now()` lets a caller skip it instead of waiting for its timeout again on every
request: one caller at a time probes it every `probe_seconds`, the others answer without it
meanwhile.

State is per process and application (each gunicorn worker logs its own outage once).
"""

import logging
import threading
import time

from flask import current_app

log = logging.getLogger(__name__)

# how many dependencies are away in this process, whatever their application: a hot path may
# look at this before it looks its own dependency up (`anything_down()`)
_away = 0

PROBE_SECONDS = 2.0


class Dependency:
    """The up/down state of one dependency in this process.

    `name` is how the log lines call it ("the database", "Redis"); `probe_seconds` how often,
    while it is away, one caller may try it again.
    """

    def __init__(self, name: str, probe_seconds: float = PROBE_SECONDS):
        self.name = name
        self.probe_seconds = probe_seconds
        self.down_since: float | None = None  # time.monotonic() of the first failure
        self.failures = 0  # failures since it went away
        self._next_probe = 0.0
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        """Whether the dependency is away (its last attempt failed)."""
        return self.down_since is not None

    def try_now(self) -> bool:
        """Whether to use the dependency now: always while it is up; while it is away, True for
        one caller per `probe_seconds` (that caller's outcome is then reported with `failed` or
        `succeeded`)."""
        if self.down_since is None:
            return True
        with self._lock:
            now = time.monotonic()
            if now < self._next_probe:
                return False
            self._next_probe = now + self.probe_seconds
            return True

    def failed(self, error: BaseException | str | None = None, detail: str | None = None) -> bool:
        """Record a failure; logs one warning when the dependency was up, naming the error's
        type (never its message, which may hold data) and `detail`, if given. Returns whether
        it went away just now."""
        with self._lock:
            self.failures += 1
            self._next_probe = time.monotonic() + self.probe_seconds
            if self.down_since is not None:
                return False
            self.down_since = time.monotonic()
            _count_away(+1)
        reason = type(error).__name__ if isinstance(error, BaseException) else error
        log.warning(
            "%s is unavailable (%s); carrying on without it%s",
            self.name,
            reason or "?",
            f"; {detail}" if detail else "",
        )
        return True

    def succeeded(self, detail: str | None = None) -> bool:
        """Record a success; logs one warning-level line when the dependency was away (with how
        long, in seconds, and `detail`, if given). Returns whether it came back just now."""
        if self.down_since is None:  # the common case, without the lock
            return False
        with self._lock:
            if self.down_since is None:
                return False
            away, failures = time.monotonic() - self.down_since, self.failures
            self.down_since, self.failures, self._next_probe = None, 0, 0.0
            _count_away(-1)
        log.warning(
            "%s is back after %.1f s (%d failed attempts meanwhile)%s",
            self.name,
            away,
            failures,
            f"; {detail}" if detail else "",
        )
        return True


def dependency(name: str, probe_seconds: float = PROBE_SECONDS) -> Dependency:
    """The state of the dependency called `name` in the current application (made on first
    use; `probe_seconds` counts only then); needs an application context. Code without one (a
    writer thread) keeps its own `Dependency`."""
    found = current_app.extensions.setdefault("dependencies", {})
    if name not in found:
        with _registry_lock:
            found.setdefault(name, Dependency(name, probe_seconds))
    return found[name]


_registry_lock = threading.Lock()


def _count_away(change: int) -> None:
    global _away
    _away += change  # under the changing dependency's lock; read without one


def anything_down() -> bool:
    """Whether any dependency of any application of this process is away now: when not (the
    common case), a caller can skip reporting a success without looking anything up."""
    return _away > 0

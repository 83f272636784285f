"""Recording share-link clicks: buffered in memory and written to the database in batches.

A visit of `/r/<code>` must be fast, so it does not wait for a commit: the click is appended to
this process's buffer and a background thread writes the buffer every `CLICK_FLUSH_INTERVAL`
seconds (or sooner when `CLICK_FLUSH_SIZE` clicks wait). A clean shutdown (SIGTERM to gunicorn,
Ctrl-C on the development server) writes what is left; a crash (SIGKILL, power loss) loses at
most the clicks of the last interval. Readers of clicks flush this process's buffer first.
While the database fails, the writer backs off (up to 30 s) and keeps at most `max_pending`
clicks, counting the ones it sheds in `dropped`; a row the database refuses is dropped alone.
"""

import atexit
import contextlib
import logging
import os
import re
import secrets
import threading
from datetime import datetime

from flask import current_app
from sqlalchemy import insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from referral_service.extensions import db
from referral_service.models import Click
from referral_service.models.base import writer_queue

log = logging.getLogger(__name__)

DEFAULT_CHANNEL = "link"
OTHER_CHANNEL = "other"
_CHANNEL = re.compile(r"[a-z0-9][a-z0-9_\-]{0,31}")


def channel(via: str | None) -> str:
    """The channel of a visit from `via`: `link` when absent, `other` when malformed."""
    if not via:
        return DEFAULT_CHANNEL
    via = via.strip().lower()
    return via if _CHANNEL.fullmatch(via) else OTHER_CHANNEL


def new_click_id() -> str:
    """A random, unguessable click id (128 bits, URL-safe)."""
    return secrets.token_urlsafe(16)


class ClickRecorder:
    """A per-process buffer of clicks with a writer thread; see the module docstring."""

    def __init__(
        self, engine_factory, interval: float, flush_size: int, max_pending: int = 100_000
    ):
        self._engine_factory = engine_factory
        self.interval = interval
        self.flush_size = flush_size
        self.max_pending = max_pending
        self.dropped = 0
        self._failures = 0
        self._rows: list[dict] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        atexit.register(self.close)

    def record(
        self,
        code_id: int,
        referrer_id: int,
        via: str | None,
        at: datetime,
        evidence: dict | None = None,
    ) -> str:
        """Buffer one click and return its id; it reaches the database within `interval`.

        `evidence` is `{referer_host, ip_hash, ua_hash}` of the visit (domain/fraud.py).
        """
        click_id = new_click_id()
        row = {
            "id": click_id,
            "code_id": code_id,
            "referrer_id": referrer_id,
            "channel": channel(via),
            "occurred_at": at,
            "referer_host": None,
            "ip_hash": None,
            "ua_hash": None,
            **(evidence or {}),
        }
        with self._lock:
            pending = len(self._rows)
            if pending >= self.max_pending:  # the database has been away too long: shed load
                self.dropped += 1
                return click_id
            self._rows.append(row)
            pending += 1
        self._ensure_thread()
        if pending >= self.flush_size:
            self._wake.set()
        return click_id

    def pending(self) -> int:
        return len(self._rows)

    def flush(self) -> int:
        """Write every buffered click now; returns how many were written."""
        with self._flush_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return 0
            try:
                engine: Engine = self._engine_factory()
                self._insert(engine, rows)
            except IntegrityError:  # a bad row (its code deleted, say): keep the good ones
                kept = 0
                for row in rows:
                    with contextlib.suppress(IntegrityError):
                        self._insert(engine, [row])
                        kept += 1
                log.warning("dropped %d clicks that the database refused", len(rows) - kept)
            except Exception:
                with self._lock:  # keep them for the next try, within the cap
                    room = max(self.max_pending - len(self._rows), 0)
                    self.dropped += max(len(rows) - room, 0)
                    self._rows[:0] = rows[:room]
                raise
            return len(rows)

    @staticmethod
    def _insert(engine: Engine, rows: list[dict]) -> None:
        queue = writer_queue(engine)
        with queue.turn() if queue else contextlib.nullcontext(), engine.connect() as connection:
            connection = connection.execution_options(sqlite_begin="IMMEDIATE")
            with connection.begin():
                connection.execute(insert(Click), rows)

    def close(self) -> None:
        """Write what is left (called at exit and by gunicorn's worker_exit hook)."""
        try:
            self.flush()
        except Exception:
            log.exception("could not write %d buffered clicks at shutdown", len(self._rows))

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="click-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            # back off while the database fails: 0.5 s, 1 s, 2 s, ... at most 30 s
            self._wake.wait(min(self.interval * 2**self._failures, 30.0))
            self._wake.clear()
            try:
                self.flush()
                self._failures = 0
            except Exception:
                self._failures = min(self._failures + 1, 10)
                log.exception("could not write %d buffered clicks; will retry", self.pending())


def flush_pending() -> None:
    """Write this process's buffered clicks now, so that a read that follows sees them.

    Called before a step's own reads: a read transaction the request already holds (from
    authentication) is ended, as its snapshot would predate the clicks just written.
    """
    current_app.extensions["clicks"].flush()  # or wait for the flush under way
    session = db.session()
    if session.in_transaction():
        if session.new or session.dirty or session.deleted:
            raise RuntimeError("flush_pending() called with unsaved changes in the session")
        session.rollback()

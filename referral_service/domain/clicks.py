"""Recording share-link clicks: buffered in memory and written to the database in batches.

A visit of `/r/<code>` must be fast, so it does not wait for a commit: the click is appended to
this process's buffer and a background thread writes the buffer every `CLICK_FLUSH_INTERVAL`
seconds (or sooner when `CLICK_FLUSH_SIZE` clicks wait). A clean shutdown (SIGTERM to gunicorn,
Ctrl-C on the development server) writes what is left; a crash (SIGKILL, power loss) loses at
most the clicks of the last interval. Readers of clicks flush this process's buffer first.
While the database fails, the writer backs off (up to 30 s) and keeps at most `max_pending`
clicks, counting the ones it sheds in `dropped`; a row the database refuses is dropped alone.

A click is a person, not a fetch: link-preview bots and crawlers (`is_bot`) get no click, and the
same visitor (keyed hashes of address and user agent) on the same code within `REVISIT_WINDOW`
gets their earlier click back (`visit`), without a query: a visitor's click id in a clock hour
is a keyed hash of code, visitor and hour, the same in every process, and the buffer inserts
with `ON CONFLICT DO NOTHING` on the primary key, so the database keeps one row however many
processes see the visits.
"""

import atexit
import base64
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
from datetime import datetime, timedelta
from functools import lru_cache

from crawlerdetect import CrawlerDetect
from flask import current_app
from itsdangerous import Signer
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from referral_service.extensions import db
from referral_service.models import Click
from referral_service.models.base import writer_queue

log = logging.getLogger(__name__)

DEFAULT_CHANNEL = "link"
OTHER_CHANNEL = "other"
_CHANNEL = re.compile(r"[a-z0-9][a-z0-9_\-]{0,31}")
REVISIT_WINDOW = timedelta(hours=1)
CLICK_ID_SALT = "referral-service.click-id"

# Link-preview fetchers that the crawler list does not name (checked in tests/test_bots.py).
PREVIEW_FETCHERS = re.compile(r"viber|snap url preview|bitrixbot|yahoo link preview", re.I)
# HTTP libraries, command-line tools and automated browsers, which the crawler list names too:
# people testing their links, not previews or crawlers (checked in tests/test_bots.py).
DEVELOPER_CLIENTS = re.compile(
    r"^(curl|wget|httpie|python-requests|python-httpx|python-urllib|aiohttp|go-http-client"
    r"|okhttp|axios|node-fetch|undici|postmanruntime|insomnia|java/|ruby|php|guzzlehttp"
    r"|libwww-perl)\b|headlesschrome|playwright|puppeteer",
    re.I,
)
_CRAWLERS = CrawlerDetect()


BOT_SIGNATURE_LENGTH = 512  # characters of a user agent read: signatures come early


def is_bot(user_agent: str | None) -> bool:
    """Whether a visit comes from a crawler or link-preview fetcher rather than a person.

    True for what the maintained list of `crawlerdetect` names (chat apps' previews, search
    engines, SEO and feed crawlers) and for the preview fetchers of PREVIEW_FETCHERS. HTTP
    libraries, command-line tools and automated browsers (DEVELOPER_CLIENTS: curl,
    python-requests, HeadlessChrome, ...), which the list also names, count as people: they are
    how a shop and its developers open and test their links, and no chat app or search engine
    announces itself with them; so does a visit without a user agent. Reads the first
    BOT_SIGNATURE_LENGTH characters, and remembers the answers for recent user agents.
    """
    return _is_bot((user_agent or "")[:BOT_SIGNATURE_LENGTH].strip())


@lru_cache(maxsize=4096)
def _is_bot(user_agent: str) -> bool:
    if not user_agent or DEVELOPER_CLIENTS.search(user_agent):
        return False
    return bool(PREVIEW_FETCHERS.search(user_agent)) or _CRAWLERS.is_crawler(user_agent)


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
        self._ids: set[str] = set()  # the ids of `_rows`
        self._visitors: dict[tuple, dict] = {}  # (code_id, ip_hash, ua_hash) -> its last row
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
        click_id: str | None = None,
    ) -> str:
        """Buffer one click and return its id; it reaches the database within `interval`.

        `evidence` is `{referer_host, ip_hash, ua_hash}` of the visit (domain/fraud.py);
        `click_id` the id to give it (default: a random one). A click whose id waits in the
        buffer already, or is in the database, is kept once.
        """
        click_id = click_id or new_click_id()
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
            if click_id in self._ids:
                return click_id
            if pending >= self.max_pending:  # the database has been away too long: shed load
                self.dropped += 1
                return click_id
            self._keep(row)
            pending += 1
        self._ensure_thread()
        if pending >= self.flush_size:
            self._wake.set()
        return click_id

    def _keep(self, row: dict) -> None:
        """Buffer a row (under `_lock`)."""
        self._rows.append(row)
        self._ids.add(row["id"])
        if row["ip_hash"] and row["ua_hash"]:
            self._visitors[(row["code_id"], row["ip_hash"], row["ua_hash"])] = row

    def pending(self) -> int:
        return len(self._rows)

    def pending_visit(self, code_id: int, ip_hash: str, ua_hash: str, since: datetime):
        """The id of this visitor's buffered click of the code made after `since`, or None."""
        row = self._visitors.get((code_id, ip_hash, ua_hash))
        return row["id"] if row is not None and row["occurred_at"] > since else None

    def flush(self) -> int:
        """Write every buffered click now; returns how many were written."""
        with self._flush_lock:
            with self._lock:
                rows, self._rows, self._ids, self._visitors = self._rows, [], set(), {}
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
                    newer, self._rows, self._ids, self._visitors = self._rows, [], set(), {}
                    for row in [*rows[:room], *newer]:
                        self._keep(row)
                raise
            return len(rows)

    @staticmethod
    def _insert(engine: Engine, rows: list[dict]) -> None:
        queue = writer_queue(engine)
        with queue.turn() if queue else contextlib.nullcontext(), engine.connect() as connection:
            connection = connection.execution_options(sqlite_begin="IMMEDIATE")
            dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
            with connection.begin():
                connection.execute(dialect.insert(Click).on_conflict_do_nothing(), rows)

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


def _click_id_key() -> bytes:
    key = current_app.extensions.get("click_id_key")
    if key is None:
        signer = Signer(current_app.secret_key, salt=CLICK_ID_SALT, digest_method=hashlib.sha256)
        key = current_app.extensions["click_id_key"] = signer.derive_key()
    return key


def visitor_click_id(code_id: int, ip_hash: str, ua_hash: str, at: datetime) -> str:
    """The click id of a visitor's first visit of a code in the clock hour of `at`.

    A keyed hash (22 URL-safe characters, 128 bits): unguessable without the secret key, and the
    same in every process, so that concurrent first visits make one row.
    """
    hour = int(at.timestamp()) // 3600
    message = f"{code_id}\x00{ip_hash}\x00{ua_hash}\x00{hour}".encode()
    digest = hmac.new(_click_id_key(), message, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def visit(
    code_id: int,
    referrer_id: int,
    via: str | None,
    at: datetime,
    evidence: dict,
    earlier: tuple[str, datetime] | None = None,
) -> str:
    """The click id of a person's visit of a share link: the click of their earlier visit of
    the same code within REVISIT_WINDOW (no new row), else a new click. Makes no query.

    `evidence` is `{ip_hash, ua_hash, referer_host}` (domain/fraud.py `visit_evidence`);
    `earlier` the click id and time the visitor's browser brought back (the signed click
    cookie), if any. The same visitor in the same clock hour gets the same id (a keyed hash,
    `visitor_click_id`), kept once by the database; across the turn of the hour the earlier
    click is found in the cookie, or in this process's buffer. Without an address or user
    agent a visitor cannot be recognised and every visit is a click. Callers check `is_bot`
    first.
    """
    recorder: ClickRecorder = current_app.extensions["clicks"]
    ip_hash, ua_hash = evidence.get("ip_hash"), evidence.get("ua_hash")
    if not (ip_hash and ua_hash):
        return recorder.record(code_id, referrer_id, via, at, evidence)
    click_id = visitor_click_id(code_id, ip_hash, ua_hash, at)
    if earlier is not None and at - REVISIT_WINDOW < earlier[1] <= at:
        earlier_id = earlier[0]
        if earlier_id == click_id or earlier_id == visitor_click_id(  # the hour before
            code_id, ip_hash, ua_hash, at - REVISIT_WINDOW
        ):
            return earlier_id
    pending = recorder.pending_visit(code_id, ip_hash, ua_hash, at - REVISIT_WINDOW)
    if pending is not None:  # not written yet: a visit just before the turn of the hour
        return pending
    return recorder.record(code_id, referrer_id, via, at, evidence, click_id=click_id)

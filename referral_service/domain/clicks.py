"""Recording share-link clicks: buffered in memory and written to the database in batches.

A visit of `/r/<code>` must be fast, so it does not wait for a commit: the click is appended to
this process's buffer and a background thread writes the buffer every `CLICK_FLUSH_INTERVAL`
seconds (or sooner when `CLICK_FLUSH_SIZE` clicks wait). Readers of clicks flush this process's
buffer first.

While the database is away, visits go on (recording a click never queries it) and the writer
backs off (up to 30 s between tries), keeping at most `max_pending` clicks: the ones above are
shed, counted in `dropped`. The log says it once each way: when writing starts failing and when
it succeeds again (with how many clicks waited), when shedding starts and when it ends (with
how many were shed); a row the database refuses is dropped alone.

A stopping process (SIGTERM to gunicorn, whose workers call `close`; Ctrl-C; any normal exit)
writes what is left, trying the database for at most `close_seconds`; the clicks it cannot write
go to a spill file in `spill_dir` (`<pid>-<random>.jsonl`, written whole, then renamed). The
writer replays spill files at the next start, right after an outage and every REPLAY_SECONDS,
claiming each by a rename so that processes starting at once write each file once. What is
still lost: clicks above `max_pending`, the buffer of a process killed without an exit
(SIGKILL, a crash, power loss: at most `max_pending` clicks, one interval's while the database
is up), and the buffer at exit when the spill file cannot be written (a full disk), said in an
error line.

A click is a person, not a fetch: link-preview bots and crawlers (`is_bot`) get no click, and the
same visitor (keyed hashes of address and user agent) on the same code within `REVISIT_WINDOW`
gets their earlier click back (`visit`), without a query: a visitor's click id in a clock hour
is a keyed hash of code, visitor and hour, the same in every process, and the buffer inserts
with `ON CONFLICT DO NOTHING` on the primary key, so the database keeps one row however many
processes see the visits (and a spill file written twice changes nothing).

A click id handed to the landing page is self-verifying (`sign_click`): it carries the click
row's id, the code, the channel and the time, under a MAC made with the secret key and its own
salt. Attribution (domain/attribution.py) thus trusts a click the moment the redirect is
answered, on any instance, whether or not the row has left the buffer of the process that served
it; the row still lands for the funnel, and is preferred when it is there. The ids of earlier
releases (the row's id alone, 22 characters) are still looked up as rows until they expire.
"""

import atexit
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import struct
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path

from crawlerdetect import CrawlerDetect
from flask import current_app
from itsdangerous import Signer
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from referral_service.domain.unit import current
from referral_service.extensions import db
from referral_service.models import Click
from referral_service.models.base import end_read, writer_queue
from referral_service.outages import Dependency

log = logging.getLogger(__name__)

DEFAULT_CHANNEL = "link"
OTHER_CHANNEL = "other"
_CHANNEL = re.compile(r"[a-z0-9][a-z0-9_\-]{0,31}")
REVISIT_WINDOW = timedelta(hours=1)
CLICK_ID_SALT = "referral-service.click-id"
SIGNED_CLICK_SALT = "referral-service.signed-click-id"

MAX_BACKOFF_SECONDS = 30.0  # the longest wait between two writes while the database fails
CLOSE_SECONDS = 10.0  # how long a stopping process tries the database before it spills
SPILL_SUFFIX = ".jsonl"


def spill_folder(root: str | os.PathLike, database_url) -> Path:
    """The spill folder of one database under `root`: `<root>/<16 hex digits>`, a hash of the
    database's URL without its password, so that a process replays only the clicks that were
    meant for its own database (a benchmark's or another instance's never reach it)."""
    url = database_url.render_as_string(hide_password=True)
    name = hashlib.blake2b(url.encode(), digest_size=8, person=b"click-spill").hexdigest()
    return Path(root) / name


CLAIMED_SUFFIX = ".claimed"
SPILL_COLUMNS = (
    "id",
    "code_id",
    "referrer_id",
    "channel",
    "occurred_at",
    "referer_host",
    "ip_hash",
    "ua_hash",
)
REPLAY_SECONDS = 60.0  # how often a writer looks for spill files (and at once after an outage)
REPLAY_BATCH = 5_000  # clicks a spill file's replay writes at a time
STALE_CLAIM_SECONDS = 600.0  # a claim this old was left by a process that died mid-way

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
    """A random, unguessable click row id (128 bits, 22 URL-safe characters)."""
    return secrets.token_urlsafe(ROW_ID_BYTES)


ROW_ID_BYTES = 16  # a click row's id: 16 bytes, 22 URL-safe base64 characters
MAX_ROW_ID = 32  # the length of `clicks.id`, `signups.click_id` and `referrals.click_id`
SIGNED_VERSION = 1
MAC_BYTES = 16  # HMAC-SHA256 cut to 128 bits, half its length (RFC 2104, section 5)
# channels spelled as one byte in a signed click id (their place + 1); any other is spelled out
KNOWN_CHANNELS = (
    "link",
    "qr",
    "email",
    "whatsapp",
    "sms",
    "facebook",
    "x",
    "copy",
    "other",
    "telegram",
    "messenger",
    "linkedin",
    "reddit",
    "pinterest",
    "line",
    "instagram",
)
_CHANNEL_BYTES = {name: bytes([place + 1]) for place, name in enumerate(KNOWN_CHANNELS)}
_HEAD = struct.Struct(">B16s5s5s")  # version, row id, code id, seconds since 1970 (UTC)
_SIGNED_SHAPE = re.compile(r"[A-Za-z0-9_-]{40,160}")
MAX_CLICK_ID = 128  # the longest click id accepted (a signed one with a spelled-out channel)


@dataclass(frozen=True)
class ClickClaim:
    """What a click id handed in says: the row to look for, and what its signature vouches for.

    `row_id` is the `clicks.id` to look up (a signed id's row; an id of an earlier release as it
    is). `signed` tells whether `code_id`, `channel` and `occurred_at` (whole seconds, UTC) were
    read from a verified signed id; `forged` that the id is neither signed by us nor shaped like
    a row id, so that no click can be behind it (`row_id` then holds its first MAX_ROW_ID
    characters, what the sign-up keeps to compare replays).
    """

    row_id: str
    signed: bool = False
    forged: bool = False
    code_id: int | None = None
    channel: str | None = None
    occurred_at: datetime | None = None


def _signing_keys() -> list[bytes]:
    """The MAC keys of signed click ids: the current secret key's first, then the fallbacks'."""
    keys = current_app.extensions.get("signed_click_keys")
    if keys is None:
        secrets_ = [current_app.secret_key, *(current_app.config.get("SECRET_KEY_FALLBACKS") or ())]
        keys = current_app.extensions["signed_click_keys"] = [
            Signer(key, salt=SIGNED_CLICK_SALT, digest_method=hashlib.sha256).derive_key()
            for key in secrets_
        ]
    return keys


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:MAC_BYTES]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    """The bytes of unpadded URL-safe base64, or None unless `text` is their one spelling."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return None
    return raw if _b64(raw) == text else None


def sign_click(row_id: str, code_id: int, channel_name: str, at: datetime) -> str:
    """The self-verifying click id handed to the landing page for the click row `row_id`.

    URL-safe base64 (59 characters; up to 103 with a channel outside KNOWN_CHANNELS) of: a
    version byte, the row id's 16 bytes, the code id (5 bytes), `at` in whole seconds since
    1970 UTC (5 bytes), the channel (one byte, or 0 then its length and ASCII letters), and an
    HMAC-SHA256 of all that cut to 128 bits, keyed by the secret key under SIGNED_CLICK_SALT.
    `row_id` is a row id as `new_click_id` and `visitor_click_id` make them; raises ValueError
    for anything else.
    """
    row = _unb64(row_id)
    if row is None or len(row) != ROW_ID_BYTES:
        raise ValueError("not a click row id")
    seconds = int(_utc(at).timestamp())
    head = _HEAD.pack(SIGNED_VERSION, row, code_id.to_bytes(5, "big"), seconds.to_bytes(5, "big"))
    spelled = _CHANNEL_BYTES.get(channel_name)
    if spelled is None:
        name = channel_name.encode("ascii")
        spelled = b"\x00" + bytes([len(name)]) + name
    payload = head + spelled
    return _b64(payload + _mac(_signing_keys()[0], payload))


def read_click_id(click_id: str) -> ClickClaim:
    """What a click id brought by a friend (landing URL, cookie, checkout) says; never raises.

    A signed id (`sign_click`) whose MAC holds under the secret key or one of its fallbacks
    gives its row, code, channel and time; an id of an earlier release (at most MAX_ROW_ID
    URL-safe characters) gives only the row to look up; anything else is `forged`.
    """
    if len(click_id) <= MAX_ROW_ID:
        legacy = re.fullmatch(r"[A-Za-z0-9_-]+", click_id) is not None
        return ClickClaim(row_id=click_id, forged=not legacy)
    forged = ClickClaim(row_id=click_id[:MAX_ROW_ID], forged=True)
    raw = _unb64(click_id) if _SIGNED_SHAPE.fullmatch(click_id) else None
    if raw is None or len(raw) < _HEAD.size + 1 + MAC_BYTES or raw[0] != SIGNED_VERSION:
        return forged
    payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    if not any(hmac.compare_digest(mac, _mac(key, payload)) for key in _signing_keys()):
        return forged
    _version, row, code, seconds = _HEAD.unpack_from(payload)
    rest = payload[_HEAD.size :]
    if rest[0] != 0 and len(rest) == 1 and rest[0] <= len(KNOWN_CHANNELS):
        channel_name = KNOWN_CHANNELS[rest[0] - 1]
    elif rest[0] == 0 and len(rest) >= 2 and len(rest) == 2 + rest[1]:
        channel_name = rest[2:].decode("ascii", "replace")
    else:  # signed by us, yet not a shape we make: refuse it all the same
        return forged
    return ClickClaim(
        row_id=_b64(row),
        signed=True,
        code_id=int.from_bytes(code, "big"),
        channel=channel_name,
        occurred_at=datetime.fromtimestamp(int.from_bytes(seconds, "big"), UTC),
    )


def row_id(click_id: str) -> str:
    """The `clicks.id` a click id names (signed or not; see `read_click_id`)."""
    return read_click_id(click_id).row_id


class ClickRecorder:
    """A per-process buffer of clicks with a writer thread; see the module docstring.

    `engine_factory` returns the engine to write with; `interval` is seconds between writes,
    `flush_size` the clicks that wake the writer sooner, `max_pending` the clicks kept while the
    database is away, `spill_dir` the folder of spill files (None: clicks that cannot be written
    at exit are lost, and said so in the log), `close_seconds` how long `close` tries the
    database before it spills.
    """

    def __init__(
        self,
        engine_factory,
        interval: float,
        flush_size: int,
        max_pending: int = 100_000,
        spill_dir: str | os.PathLike | None = None,
        close_seconds: float = CLOSE_SECONDS,
    ):
        self._engine_factory = engine_factory
        self.interval = interval
        self.flush_size = flush_size
        self.max_pending = max_pending
        self.spill_dir = Path(spill_dir) if spill_dir else None
        self.close_seconds = close_seconds
        # the writer has no application context: the recorder keeps its own outage state
        self.database = Dependency("the database (click writer)")
        self.dropped = 0  # clicks shed at `max_pending`, ever
        self._shed = 0  # clicks shed since the buffer last filled up; 0 while it has room
        self._failures = 0
        self._rows: list[dict] = []
        self._ids: set[str] = set()  # the ids of `_rows`
        self._visitors: dict[tuple, dict] = {}  # (code_id, ip_hash, ua_hash) -> its last row
        self._writing: list[dict] = []  # the rows of the write under way
        self._closed = False
        self._next_replay = 0.0  # time.monotonic() when the writer next looks for spill files
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._replay_lock = threading.Lock()
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
        `click_id` the id to give it (default: a random one); `at` a timezone-aware time. A
        click whose id waits in the buffer already, or is in the database, is kept once. Never
        touches the database: with `max_pending` clicks waiting, the click is shed (counted in
        `dropped`, and said once in the log) but its id is returned all the same.
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
                self._shed += 1
                started_shedding = self._shed == 1
            else:
                self._keep(row)
                pending += 1
                started_shedding = None
        if started_shedding is not None:
            if started_shedding:
                self._log_shedding()
            return click_id
        self._ensure_thread()
        if pending >= self.flush_size and not self.database.down:  # no retry per click
            self._wake.set()
        return click_id

    def _keep(self, row: dict) -> None:
        """Buffer a row (under `_lock`)."""
        self._rows.append(row)
        self._ids.add(row["id"])
        if row["ip_hash"] and row["ua_hash"]:
            self._visitors[(row["code_id"], row["ip_hash"], row["ua_hash"])] = row

    def _take(self) -> list[dict]:
        """Empty the buffer and return its rows (under `_lock`)."""
        rows, self._rows, self._ids, self._visitors = self._rows, [], set(), {}
        return rows

    def pending(self) -> int:
        """How many clicks wait in the buffer."""
        return len(self._rows)

    def pending_visit(self, code_id: int, ip_hash: str, ua_hash: str, since: datetime):
        """This visitor's buffered click of the code made after `since` (`{id, channel,
        occurred_at, ...}`, the row as it will be written), or None."""
        row = self._visitors.get((code_id, ip_hash, ua_hash))
        return dict(row) if row is not None and row["occurred_at"] > since else None

    def flush(self) -> int:
        """Write every buffered click now; returns how many were written (or found written).

        Raises what the engine or the database raised (an `OperationalError` when it is away,
        say): the clicks then wait for the next try, within `max_pending`. The first failure of
        an outage and the first success after it are logged, once each (`database`).
        """
        with self._flush_lock:
            with self._lock:
                rows = self._writing = self._take()
            if not rows:
                return 0
            try:
                self._write(self._engine_factory(), rows)
            except Exception as error:
                self._keep_for_later(rows)
                self.database.failed(
                    error,
                    f"clicks wait in memory (at most {self.max_pending}) and are kept in a "
                    "spill file if the process stops meanwhile",
                )
                raise
            with self._lock:
                self._writing = []
            if self.database.succeeded(f"{len(rows)} clicks that waited are written"):
                self._next_replay = 0.0  # and the spill files of processes stopped meanwhile
            self._end_shedding()
            return len(rows)

    def _keep_for_later(self, rows: list[dict]) -> None:
        """Put the rows of a failed write back in front of the newer ones, within the cap."""
        with self._lock:
            room = max(self.max_pending - len(self._rows), 0)
            lost = max(len(rows) - room, 0)
            self.dropped += lost
            self._shed += lost
            started_shedding = lost > 0 and self._shed == lost
            newer = self._take()
            for row in [*rows[:room], *newer]:
                self._keep(row)
            self._writing = []
        if started_shedding:
            self._log_shedding()

    def _log_shedding(self) -> None:
        log.warning(
            "the click buffer is full (%d clicks wait for the database): new clicks are not "
            "counted until it is back (visitors are still redirected)",
            self.max_pending,
        )

    def _end_shedding(self) -> None:
        with self._lock:
            shed, self._shed = self._shed, 0
        if shed:
            log.warning("the click buffer has room again; %d clicks were not counted", shed)

    def _write(self, engine: Engine, rows: list[dict]) -> None:
        """Insert rows (`ON CONFLICT DO NOTHING`); rows the database refuses (their code deleted,
        say) are dropped alone, and logged. Raises any other error of the database."""
        try:
            self._insert(engine, rows)
        except IntegrityError:  # a bad row: keep the good ones
            kept = 0
            for row in rows:
                with contextlib.suppress(IntegrityError):
                    self._insert(engine, [row])
                    kept += 1
            log.warning("dropped %d clicks that the database refused", len(rows) - kept)

    @staticmethod
    def _insert(engine: Engine, rows: list[dict]) -> None:
        queue = writer_queue(engine)
        with queue.turn() if queue else contextlib.nullcontext(), engine.connect() as connection:
            connection = connection.execution_options(sqlite_begin="IMMEDIATE")
            dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
            # outside the unit of work on purpose: clicks are no business event (no audit, no
            # outbox event), written in batches by this process's flusher on its own connection
            with connection.begin():
                connection.execute(dialect.insert(Click).on_conflict_do_nothing(), rows)

    def close(self) -> int:
        """Write what is left at exit (called at exit and by gunicorn's worker_exit hook).

        Tries the database for at most `close_seconds` (not at all while it is known to be
        away); the clicks it could not write go to a spill file in `spill_dir`, for the next
        start (`replay`). Returns how many clicks were spilled. A second call does nothing.
        Never raises: clicks it cannot keep are counted in an error line of the log.
        """
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
        self._wake.set()  # the writer thread ends after its current step
        deadline = time.monotonic() + self.close_seconds
        if not self.database.down:
            # in a thread: a write stuck on a database that hangs must not hold the exit
            writer = threading.Thread(target=self._flush_quietly, name="click-close", daemon=True)
            writer.start()
            writer.join(self.close_seconds)
        if self._replay_lock.acquire(timeout=max(deadline - time.monotonic(), 0)):
            self._replay_lock.release()  # a replay under way has handed its file back
        with self._lock:
            rows = [*self._writing, *self._take()]
            self._writing = []
        if not rows:
            return 0
        if self.spill_dir is None:
            log.error("lost %d clicks: the database is away and no spill folder is set", len(rows))
            return 0
        try:
            path = write_spill(self.spill_dir, rows)
        except OSError as error:
            log.error(
                "lost %d clicks: the database is away and no spill file could be written (%s)",
                len(rows),
                type(error).__name__,
            )
            return 0
        log.warning(
            "%d clicks not yet written are kept in %s; the next start writes them",
            len(rows),
            path.name,
        )
        return len(rows)

    def _flush_quietly(self) -> None:
        with contextlib.suppress(Exception):  # logged by `flush`; the rows stay buffered
            self.flush()

    def resume(self) -> bool:
        """Start the writer now when spill files wait in `spill_dir`, so that their clicks are
        written without waiting for a visit; returns whether it did."""
        if not self._spill_files():
            return False
        self._ensure_thread()
        return True

    def replay(self) -> int:
        """Write the clicks of the spill files in `spill_dir`; returns how many were read.

        Each file is claimed first (renamed to `*.jsonl.claimed`), so that processes replaying
        at once write each file once; it is removed once written, handed back (renamed again)
        when the database fails or the recorder closes meanwhile. A claim older than
        STALE_CLAIM_SECONDS, left by a process that died mid-way, is taken over. Click ids are
        kept, so a file written twice changes nothing. Raises what the database raised.
        """
        if self.spill_dir is None:
            return 0
        with self._replay_lock:
            self._next_replay = time.monotonic() + REPLAY_SECONDS
            read = files = 0
            for path in self._spill_files():
                if self._closed:
                    break
                claimed = claim_spill(path)
                if claimed is None:  # another process has it
                    continue
                try:
                    rows = read_spill(claimed)
                except OSError as error:  # left claimed: tried again once the claim is stale
                    log.error("could not read %s (%s)", claimed.name, type(error).__name__)
                    continue
                try:
                    engine = self._engine_factory()
                    for start in range(0, len(rows), REPLAY_BATCH):
                        if self._closed:
                            raise _Interrupted
                        self._write(engine, rows[start : start + REPLAY_BATCH])
                except _Interrupted:
                    os.rename(claimed, path)
                    break
                except Exception as error:
                    os.rename(claimed, path)
                    self.database.failed(error, "spill files wait for it")
                    raise
                claimed.unlink()
                read += len(rows)
                files += 1
            if files:
                self.database.succeeded()
                log.warning(
                    "wrote %d clicks kept in %d spill files by processes stopped while the "
                    "database was away",
                    read,
                    files,
                )
            return read

    def _spill_files(self) -> list[Path]:
        """The spill files waiting, oldest first, stale claims handed back first."""
        if self.spill_dir is None or not self.spill_dir.is_dir():
            return []
        now = time.time()
        for claimed in self.spill_dir.glob(f"*{SPILL_SUFFIX}{CLAIMED_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                if now - claimed.stat().st_mtime > STALE_CLAIM_SECONDS:
                    os.rename(claimed, claimed.with_name(claimed.name[: -len(CLAIMED_SUFFIX)]))
        found = []
        for path in self.spill_dir.glob(f"*{SPILL_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                found.append((path.stat().st_mtime, path))
        return [path for _, path in sorted(found)]

    def _replay_if_due(self) -> None:
        if self.spill_dir is not None and time.monotonic() >= self._next_replay:
            self.replay()

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        with self._lock:
            if self._closed:
                return
            if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="click-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            # back off while the database fails: 0.5 s, 1 s, 2 s, ... at most 30 s
            self._wake.wait(min(self.interval * 2**self._failures, MAX_BACKOFF_SECONDS))
            self._wake.clear()
            if self._closed:
                return
            try:
                self.flush()
                self._replay_if_due()
                self._failures = 0
            except Exception:  # logged once per outage by `flush` and `replay`
                self._failures = min(self._failures + 1, 10)


class _Interrupted(Exception):
    """The recorder closed during a replay."""


def write_spill(folder: Path, rows: list[dict]) -> Path:
    """Write clicks to a new spill file in `folder` (made if missing) and return its path.

    One JSON object a line (the columns of `clicks`, `occurred_at` in ISO 8601 in UTC, with
    its `+00:00`), readable by its owner only; written whole under a temporary name, then renamed,
    so that a reader never sees part of it. Raises OSError (a full disk, say).
    """
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{os.getpid()}-{secrets.token_hex(6)}"
    temporary, path = folder / f".{name}.tmp", folder / f"{name}{SPILL_SUFFIX}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps({**row, "occurred_at": _utc(row["occurred_at"]).isoformat()}))
                out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.rename(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a power cut
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return path


def _utc(at: datetime) -> datetime:
    """`at` in UTC; a time without a zone is taken as UTC already."""
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)


def claim_spill(path: Path) -> Path | None:
    """Claim a spill file for this process (rename it to `*.claimed`, its time set to now);
    None when another process claimed it first."""
    claimed = path.with_name(path.name + CLAIMED_SUFFIX)
    try:
        os.utime(path)  # before the rename: a claim never looks stale
        os.rename(path, claimed)
    except FileNotFoundError:
        return None
    return claimed


def read_spill(path: Path) -> list[dict]:
    """The clicks of a spill file, `occurred_at` timezone-aware in UTC; a line that is not a
    click is skipped and counted in the log. Raises OSError when the file cannot be read."""
    rows, bad = [], 0
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            try:
                found = json.loads(line)
                row = {column: found.get(column) for column in SPILL_COLUMNS}
                row["occurred_at"] = _utc(datetime.fromisoformat(row["occurred_at"]))
                if not (isinstance(row["id"], str) and row["code_id"] and row["channel"]):
                    raise ValueError("not a click")
            except (ValueError, TypeError, AttributeError):
                bad += 1
                continue
            rows.append(row)
    if bad:
        log.warning("skipped %d lines of %s that are not clicks", bad, path.name)
    return rows


def flush_pending() -> None:
    """Write this process's buffered clicks now, so that a read that follows sees them.

    Called before a step's own reads: a read transaction the request already holds (from
    authentication) is ended, as its snapshot would predate the clicks just written. Inside a
    unit of work that is already open it does nothing: the flush would wait for the unit's own
    write lock (SQLite), so a caller that opens a unit around a step with a click flushes first.
    """
    if current() is not None:
        return
    current_app.extensions["clicks"].flush()  # or wait for the flush under way
    end_read(db.session)


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
    """The click id (signed, `sign_click`) of a person's visit of a share link: the click of
    their earlier visit of the same code within REVISIT_WINDOW (no new row), else a new click.
    Makes no query.

    `evidence` is `{ip_hash, ua_hash, referer_host}` (domain/fraud.py `visit_evidence`);
    `earlier` the click id and time the visitor's browser brought back (the signed click
    cookie), if any. The same visitor in the same clock hour gets the same row (its id a keyed
    hash, `visitor_click_id`), kept once by the database; across the turn of the hour the
    earlier click is found in the cookie, or in this process's buffer. Without an address or
    user agent a visitor cannot be recognised and every visit is a click. Callers check
    `is_bot` first. Never reads or writes the database, so it answers while the database is
    away.
    """
    recorder: ClickRecorder = current_app.extensions["clicks"]
    ip_hash, ua_hash = evidence.get("ip_hash"), evidence.get("ua_hash")
    name = channel(via)
    if not (ip_hash and ua_hash):
        return sign_click(
            recorder.record(code_id, referrer_id, via, at, evidence), code_id, name, at
        )
    click_id = visitor_click_id(code_id, ip_hash, ua_hash, at)
    if earlier is not None and at - REVISIT_WINDOW < earlier[1] <= at:
        earlier_row = row_id(earlier[0])
        if earlier_row == click_id or earlier_row == visitor_click_id(  # the hour before
            code_id, ip_hash, ua_hash, at - REVISIT_WINDOW
        ):
            return earlier[0]
    pending = recorder.pending_visit(code_id, ip_hash, ua_hash, at - REVISIT_WINDOW)
    if pending is not None:  # not written yet: a visit just before the turn of the hour
        return sign_click(pending["id"], code_id, pending["channel"], pending["occurred_at"])
    recorder.record(code_id, referrer_id, via, at, evidence, click_id=click_id)
    return sign_click(click_id, code_id, name, at)

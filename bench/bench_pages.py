"""Weight and time to first byte of the service's HTML pages, against its lightest and a bare app.

What it measures, for each of these pages (in every language of `--languages`, by `?lang=`):

  * `GET /share/<token>`: the customer's share page, through a link from
    `POST /api/v1/customers/<id>/portal-link`, for a referrer with a realistic history: 60 friends
    signed up through their code over the past two months (`POST /api/v1/signups`), the 40 oldest
    with a first purchase (`POST /api/v1/purchases`), so that the page shows full lists (50 of
    the 60 friends, all 40 rewards) and totals;
  * `GET /r/<code>`: the friend's welcome page, with the program's `landing_mode` at `welcome`
    and a friend offer of 10% (`PATCH /api/v1/program`); each visit records a click, as in use:
    every request (timed or under wrk) is a new visitor, a browser's user agent with a visitor
    number of its own, since the service counts the same visitor on a link once an hour;
  * `GET /share/<expired token>`: the expired-link page (410), for a token signed like the
    service's but with an expiry an hour ago;

and two baselines: the service's own lightest page, the built-in `GET /landing` (same server), and
`GET /` of a bare Flask app (`bench/bare_page_app.py`) serving a fixed HTML page: the English share
page exactly as the service sent it, so both send the same bytes.

1. Page weight: the bytes of the HTML as sent (and of the response headers), the same compressed
   with Python's gzip at level 6 (as a proxy would; the service itself does not compress), and
   every other request the page makes: the `src`/`href` of images, scripts, style sheets, icons,
   frames and media, and `url()`/`@import` in its CSS, each fetched for its bytes (links the
   visitor may follow, `<a href>`, are not loaded). The share page's QR image is listed apart:
   the requirement is "under 100 kB without the QR image" (100 kB = 100,000 bytes), and that the
   page loads nothing else. A browser also asks for `/favicon.ico` when a page names no icon;
   that answer is shown in a note.
2. Time to first byte, from the client: each request on a fresh TCP connection (made before the
   clock starts), the time from sending the request to the first byte of the answer, and to its
   last byte (`full`). Median, p95 and max over N sequential requests per page (200, or 50 with
   `--quick`) after a warm-up, the pages taken in turn (one request of each page, then the next
   round), so that a machine whose speed drifts (other work on it) moves all pages alike. Ratios
   of the medians to `/landing` and to the bare app (times slower).
3. Requests per second under load, if `wrk` is on the PATH (else skipped with a note): `wrk -t2
   -c16`, one page at a time, after a warm-up; their ratio to the baselines (share of their
   req/s), and the server's CPU time per request (master and workers, from /proc on Linux), less
   disturbed than the times when other work shares the machine. wrk gives up on an answer after
   2 s (a timeout error); a page that slow under load shows few or no requests.

Both applications run under gunicorn with the same settings (sync workers, `--workers 2` by
default, gunicorn_conf.py, bound to free ports on 127.0.0.1). The service runs on a fresh SQLite
database in a temporary directory, seeded through its API and CLI, with its own SECRET_KEY and
rate limits it never reaches; the directory is removed at the end (even on Ctrl-C). The client
runs on the same machine and takes its share of the CPUs, as it would for any server measured
here; the load average before and after is printed, to judge whether other work disturbed it.

How to run it (from the repository root):

    .venv/bin/python bench/bench_pages.py             # 200 requests a page, 5 s loads (~2.5 min)
    .venv/bin/python bench/bench_pages.py --quick     # 50 requests, 2 s loads, en and pl (~40 s)
    .venv/bin/python bench/bench_pages.py --languages en,pl --no-wrk
    .venv/bin/python bench/bench_pages.py --help      # requests, warm-up, workers, wrk, ...

Needs: the service installed in the running Python (`pip install -e '.[dev]'`, which brings
gunicorn); `wrk` (`apt-get install wrk`) only for requests per second. Exit status: 0 when the
runs complete (with `--check`: only if every page is under 100 kB without the QR image and loads
nothing but it), 1 on a failure, 130 when interrupted.
"""

import argparse
import gzip
import itertools
import json
import math
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from bench_public import (
    BENCH,
    BROWSER_AGENT,
    HOST,
    ROOT,
    VISITORS_SCRIPT,
    WRK_SCRIPT,
    BenchError,
    Load,
    Server,
    add_load_options,
    free_port,
    gunicorn_argv,
    request,
    run_cli,
    run_main,
    run_process,
    service_env,
    wrk,
)
from itsdangerous import URLSafeSerializer

from referral_service.domain.portal import SALT as PORTAL_SALT

SECRET = "bench-pages-secret-key-0123456789abcdef"
_visitors = itertools.count(1)
LIMIT = 100_000  # bytes: "under 100 kB without the QR image"
FRIENDS, BUYERS = 60, 40
ALL_LANGUAGES = ("en", "pl", "hu", "el", "bg")
FRIEND_NAMES = [
    "Anna Kowalska",
    "Łukasz Wiśniewski",
    "Zsófia Nagy",
    "Ádám Kovács",
    "Γιώργος Παπαδόπουλος",
    "Ελένη Νικολάου",
    "Мария Иванова",
    "Георги Петров",
    "Emma Smith",
    "",  # no name: the page shows the masked email
]


# --- fetching ------------------------------------------------------------------------------------


@dataclass
class Fetch:
    """One answer as it came over the wire, and how long it took."""

    status: int
    headers: dict[str, str]  # names in lower case
    header_bytes: int
    body: bytes
    ttfb: float  # seconds from sending the request to the first byte of the answer
    total: float  # ... to its last byte


def fetch(port: int, path: str, timeout: float = 10.0) -> Fetch:
    """GET on a fresh connection (connected before the clock starts), read to the end; each
    request a new visitor (its own user agent)."""
    agent = f"{BROWSER_AGENT} bench-pages/{next(_visitors)}"
    message = (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: {agent}\r\n"
        "Accept: text/html,*/*\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        sock.sendall(message)
        first = sock.recv(65536)
        ttfb = time.perf_counter() - started
        chunks = [first]
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        total = time.perf_counter() - started
    raw = b"".join(chunks)
    head, separator, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1]) if separator else 0
    except (IndexError, ValueError):
        status = 0
    if not status:
        raise BenchError(f"GET {path}: not an HTTP answer: {raw[:200]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", ""):
        raise BenchError(f"GET {path}: a chunked answer, which this benchmark does not decode")
    return Fetch(status, headers, len(head) + 4, body, ttfb, total)


def expect(port: int, path: str, status: int, label: str) -> Fetch:
    answer = fetch(port, path)
    if answer.status != status:
        raise BenchError(f"{label}: GET {path} answered {answer.status}, not {status}")
    return answer


def gzipped(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=6))


# --- what a page loads ---------------------------------------------------------------------------

CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)|@import\s+['"]([^'"]+)""")
LOADED = {  # element: the attributes whose addresses the browser fetches to show the page
    "img": ("src", "srcset"),
    "script": ("src",),
    "iframe": ("src",),
    "frame": ("src",),
    "source": ("src", "srcset"),
    "video": ("src", "poster"),
    "audio": ("src",),
    "track": ("src",),
    "embed": ("src",),
    "object": ("data",),
    "input": ("src",),
}
LOADED_LINKS = {  # <link rel=...> that the browser fetches
    "stylesheet",
    "icon",
    "apple-touch-icon",
    "mask-icon",
    "preload",
    "modulepreload",
    "prefetch",
    "manifest",
}


class Resources(HTMLParser):
    """The addresses a page makes the browser fetch, and its title."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str]] = []  # (what, address)
        self.names_icon = False
        self.title = ""
        self._in = ""

    def _css(self, text: str, what: str) -> None:
        for match in CSS_URL.finditer(text):
            self.found.append((what, match.group(1) or match.group(2)))

    def handle_starttag(self, tag, attrs):
        values = {name: value or "" for name, value in attrs}
        self._in = tag
        if "style" in values:
            self._css(values["style"], f"{tag} style url()")
        if tag == "link":
            rels = set(values.get("rel", "").lower().split())
            self.names_icon |= bool(rels & {"icon", "shortcut"})
            if rels & LOADED_LINKS and values.get("href"):
                self.found.append((f"link rel={' '.join(sorted(rels))}", values["href"]))
        for name in LOADED.get(tag, ()):
            value = values.get(name, "").strip()
            if tag == "input" and values.get("type", "").lower() != "image":
                continue
            if name == "srcset":
                for candidate in value.split(","):
                    if candidate.strip():
                        self.found.append((f"{tag} srcset", candidate.split()[0]))
            elif value:
                self.found.append((f"{tag} {name}", value))

    def handle_endtag(self, tag):
        self._in = ""

    def handle_data(self, data):
        if self._in == "style":
            self._css(data, "style url()")
        elif self._in == "title":
            self.title += data.strip()


@dataclass
class Request:
    """Something a page loads."""

    what: str
    url: str
    status: int | None = None  # None: on another host, not fetched
    bytes: int = 0
    gzip_bytes: int = 0

    @property
    def is_qr(self) -> bool:
        return re.search(r"/r/[^/]+/qr\.(svg|png)$", urlsplit(self.url).path) is not None


@dataclass
class Weight:
    """A page's weight: its HTML as sent and what it loads."""

    status: int
    html_bytes: int
    gzip_bytes: int
    header_bytes: int
    title: str
    requests: list[Request] = field(default_factory=list)
    names_icon: bool = False

    @property
    def qr(self) -> list[Request]:
        return [x for x in self.requests if x.is_qr]

    @property
    def others(self) -> list[Request]:
        return [x for x in self.requests if not x.is_qr]

    @property
    def without_qr(self) -> int:
        return self.html_bytes + sum(x.bytes for x in self.others)


def weigh(port: int, path: str, status: int, label: str, follow: bool = True) -> Weight:
    """A page's weight; `follow`: fetch what it loads (else it is a copy, weighed alone)."""
    page = expect(port, path, status, label)
    parser = Resources()
    parser.feed(page.body.decode("utf-8", errors="replace"))
    parser.close()
    weight = Weight(
        page.status,
        len(page.body),
        gzipped(page.body),
        page.header_bytes,
        parser.title,
        names_icon=parser.names_icon,
    )
    base = f"http://{HOST}:{port}{path}"
    seen = set()
    for what, address in parser.found if follow else ():
        url = urljoin(base, address)
        if url in seen or url.startswith("data:"):
            continue
        seen.add(url)
        request_ = Request(what, url)
        parts = urlsplit(url)
        if parts.scheme == "http" and parts.netloc == f"{HOST}:{port}":
            answer = fetch(port, parts.path + (f"?{parts.query}" if parts.query else ""))
            request_.status = answer.status
            request_.bytes = len(answer.body)
            request_.gzip_bytes = gzipped(answer.body)
        weight.requests.append(request_)
    return weight


# --- the pages -----------------------------------------------------------------------------------


@dataclass
class Page:
    """A page measured: where it is and what it should answer."""

    label: str
    server: Server
    path: str
    status: int = 200
    weight: Weight | None = None
    ttfb: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    copy: bool = False  # the bare app's copy of a page: what it names is not fetched
    load: Load | None = None  # under wrk
    wrk_errors: int = 0  # socket errors, and answers of another status than expected


def api(port: int, method: str, path: str, key: str, body=None, status=(200, 201)) -> dict:
    answer_status, _, answer = request(
        port, method, path, body=body, headers={"Authorization": f"Bearer {key}"}
    )
    if answer_status not in status:
        raise BenchError(f"{method} {path} answered {answer_status}: {answer[:300]!r}")
    return json.loads(answer) if answer else {}


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def seed(port: int, shop: str, admin: str) -> tuple[str, str]:
    """The referrer, their friends and purchases, the welcome mode; their code and share token."""
    customer = api(
        port,
        "PUT",
        "/api/v1/customers/bench-referrer",
        shop,
        body={"email": "katarzyna@example.com", "name": "Katarzyna Wiśniewska", "locale": "pl"},
    )
    code = customer["referral"]["code"]
    api(
        port,
        "PATCH",
        "/api/v1/program",
        admin,
        body={"landing_mode": "welcome", "friend_offer": {"type": "percent", "value": "10"}},
        status=(200,),
    )
    now = datetime.now(UTC)
    joined = []
    for i in range(FRIENDS):  # one a day or so over the past two months, the oldest first
        at = now - timedelta(days=FRIENDS - i, hours=(i * 7) % 24)
        joined.append(at)
        answer = api(
            port,
            "POST",
            "/api/v1/signups",
            shop,
            body={
                "external_id": f"friend-{i:03d}",
                "email": f"friend{i:03d}@example.com",
                "name": FRIEND_NAMES[i % len(FRIEND_NAMES)] or None,
                "referral_code": code,
                "occurred_at": iso(at),
            },
        )
        if not answer.get("attributed"):
            raise BenchError(f"sign-up {i} was not attributed: {answer}")
    for i in range(BUYERS):  # the oldest friends bought three days after joining
        answer = api(
            port,
            "POST",
            "/api/v1/purchases",
            shop,
            body={
                "order_id": f"order-{i:03d}",
                "customer_external_id": f"friend-{i:03d}",
                "amount": f"{29 + (i * 37) % 170}.90",
                "currency": "EUR",
                "occurred_at": iso(joined[i] + timedelta(days=3)),
            },
        )
        if not answer.get("first_purchase") or not answer.get("rewards"):
            raise BenchError(f"purchase {i} earned no reward: {answer}")
    link = api(port, "POST", "/api/v1/customers/bench-referrer/portal-link", shop, body={})
    return code, urlsplit(link["url"]).path.rsplit("/", 1)[1]


def expired_token(token: str) -> str:
    """The same customer's link, signed like the service's, expired an hour ago."""
    serializer = URLSafeSerializer(SECRET, salt=PORTAL_SALT)
    customer_id, _ = serializer.loads(token)
    return serializer.dumps([customer_id, int(time.time()) - 3600])


def check_share_page(body: bytes) -> str:
    """What the share page lists, as a line of the report; BenchError if the lists are short."""
    text = body.decode("utf-8", errors="replace")
    friends = text.count('class="friend-name"')
    rewards = text.partition('id="rewards"')[2].count("<li>")
    if friends != min(FRIENDS, 50) or rewards != min(BUYERS, 50):
        raise BenchError(f"the share page lists {friends} friends and {rewards} rewards")
    return f"share page lists {friends} of {FRIENDS} friends and {rewards} of {BUYERS} rewards"


# --- measuring -----------------------------------------------------------------------------------


def time_pages(pages: list[Page], requests: int, warmup: int) -> None:
    """Requests to every page in turn, one at a time; the warm-up rounds are not kept."""
    for round_ in range(warmup + requests):
        for page in pages:
            answer = fetch(page.server.port, page.path)
            if answer.status != page.status:
                raise BenchError(f"{page.label} answered {answer.status}, not {page.status}")
            if round_ >= warmup:
                page.ttfb.append(answer.ttfb)
                page.total.append(answer.total)


def load_pages(args, tmp: Path, pages: list[Page]) -> None:
    """Requests per second under wrk, one page at a time, each after a warm-up."""
    script = tmp / "visitors.lua"  # each request a new visitor, on every page alike
    script.write_text(VISITORS_SCRIPT + WRK_SCRIPT)
    for page in pages:
        server = page.server
        if args.warmup:
            wrk(args, script, server.port, page.path, args.warmup)
        cpu = server.cpu_seconds()
        result = wrk(args, script, server.port, page.path, args.duration)
        after = server.cpu_seconds()
        page.load = Load(result, None if None in (cpu, after) else after - cpu, None)
        # wrk counts answers of 400 or more as errors: the expired page's 410 are expected
        expected = result.status_errors if page.status >= 400 else 0
        page.wrk_errors = result.errors - expected
        cpu_us = page.load.cpu_per_request_us
        print(
            f"  {page.label:<24}{result.rps:8.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
            f"p99 {result.p99_ms:7.2f} ms  {result.requests:6d} requests  "
            f"{page.wrk_errors} errors  server CPU "
            f"{'?' if cpu_us is None else f'{cpu_us / 1000:.2f}'} ms/req",
            flush=True,
        )
        if not result.requests:
            print("    no answer within wrk's 2 s timeout: the machine is busy or the page slow")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


# --- report --------------------------------------------------------------------------------------


def print_weights(pages: list[Page]) -> bool:
    """The page weight table; True if every page is under 100 kB without the QR image and
    loads nothing else."""
    header = (
        f"{'page':<24}{'status':>7}{'HTML B':>9}{'gzip B':>8}{'hdr B':>7}{'other req':>10}"
        f"{'other B':>9}{'QR req':>7}{'QR B':>8}{'QR gzip':>8}{'total no QR':>12}  <100kB"
    )
    print(f"\n== 1. page weight ==\n\n{header}\n{'-' * len(header)}")
    all_ok = True
    for page in pages:
        w = page.weight
        qr, others = w.qr, w.others
        ok = w.without_qr < LIMIT
        if page.server.name == "service" and page.path != "/landing":
            all_ok &= ok and not others
        print(
            f"{page.label:<24}{w.status:>7}{w.html_bytes:>9,}{w.gzip_bytes:>8,}"
            f"{w.header_bytes:>7,}{len(others):>10}{sum(x.bytes for x in others):>9,}"
            f"{len(qr):>7}{sum(x.bytes for x in qr):>8,}{sum(x.gzip_bytes for x in qr):>8,}"
            f"{w.without_qr:>12,}  {'yes' if ok else 'NO'}"
        )
    print(
        "\nHTML B: body as sent (the service does not compress); gzip B: the same at gzip level 6;"
        " hdr B: response headers;\nother req/B: requests the page makes besides the QR image "
        "and their bytes; QR: the QR image the page shows;\ntotal no QR: HTML + other bytes, "
        f"against {LIMIT:,} bytes.\n\nwhat each page loads (src/href of images, scripts, style "
        "sheets, icons, frames, media; url() in CSS):"
    )
    for page in pages:
        w = page.weight
        if page.copy:
            print(f"  {page.label:<24}title {w.title!r}; a copy of share page (en), weighed alone")
            continue
        loads = (
            "; ".join(
                f"{x.what} {urlsplit(x.url).path} -> "
                + (
                    "not fetched (another host)"
                    if x.status is None
                    else f"{x.status}, {x.bytes:,} B ({x.gzip_bytes:,} gzip)"
                )
                + (" [QR]" if x.is_qr else "")
                for x in w.requests
            )
            or "nothing"
        )
        print(f"  {page.label:<24}title {w.title!r}; loads: {loads}")
    return all_ok


def ratio(value: float | None, base: float | None, width: int) -> str:
    return f"{value / base:{width}.2f}" if value and base else f"{'?':>{width}}"


def print_times(pages: list[Page], landing: Page, bare: Page) -> None:
    header = (
        f"{'page':<24}{'n':>5}{'TTFB med':>10}{'p95':>8}{'max':>8}{'full med':>10}"
        f"{'x landing':>11}{'x bare':>8}"
    )
    print(f"\n== 2. time to first byte (ms), one request at a time ==\n\n{header}")
    print("-" * len(header))
    base_landing, base_bare = statistics.median(landing.ttfb), statistics.median(bare.ttfb)
    for page in pages:
        median = statistics.median(page.ttfb)
        print(
            f"{page.label:<24}{len(page.ttfb):5d}{median * 1000:10.2f}"
            f"{percentile(page.ttfb, 0.95) * 1000:8.2f}{max(page.ttfb) * 1000:8.2f}"
            f"{statistics.median(page.total) * 1000:10.2f}{median / base_landing:11.2f}"
            f"{median / base_bare:8.2f}"
        )
    print(
        "\nTTFB: from sending the request (on a fresh connection) to the first byte of the "
        "answer; full: to its last byte;\nx landing, x bare: median TTFB / the baseline's "
        "median TTFB (times slower)."
    )


def print_loads(pages: list[Page], landing: Page, bare: Page) -> None:
    header = (
        f"{'page':<24}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}{'CPU ms':>8}"
        f"{'/landing':>10}{'/bare':>7}{'CPU x bare':>12}"
    )
    print(f"\n== 3. requests per second under wrk ==\n\n{header}\n{'-' * len(header)}")
    landing_rps, bare_rps = landing.load.wrk.rps, bare.load.wrk.rps
    bare_cpu = bare.load.cpu_per_request_us
    for page in pages:
        load = page.load
        cpu = load.cpu_per_request_us
        print(
            f"{page.label:<24}{load.wrk.rps:8.0f}{load.wrk.p50_ms:9.2f}{load.wrk.p99_ms:9.2f}"
            f"{page.wrk_errors:7d}{'?' if cpu is None else f'{cpu / 1000:.2f}':>8}"
            f"{ratio(load.wrk.rps, landing_rps, 10)}{ratio(load.wrk.rps, bare_rps, 7)}"
            f"{ratio(cpu, bare_cpu, 12)}"
        )
    print(
        "\n/landing, /bare: req/s / the baseline's req/s (share of its throughput); CPU ms: "
        "server CPU time per request (master and\nworkers, from /proc; less disturbed by other "
        "work on the machine); CPU x bare: CPU ms / the bare app's\n(times the work); "
        "errors: wrk's socket errors and unexpected statuses (the expired page's 410 expected)."
    )


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Weigh the service's share, welcome and expired-link pages and time their "
        "first byte, against its built-in /landing page and a bare Flask app."
    )
    parser.add_argument("--requests", type=int, help="timed requests per page (200; 50 --quick)")
    parser.add_argument("--warmup-requests", type=int, help="untimed requests per page first (20)")
    parser.add_argument(
        "--languages", help=f"page languages (default {','.join(ALL_LANGUAGES)}; en,pl --quick)"
    )
    parser.add_argument("--duration", type=int, help="seconds per wrk load (5; 2 with --quick)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of wrk warm-up (1)")
    parser.add_argument("--no-wrk", action="store_true", help="skip the requests per second")
    parser.add_argument("--quick", action="store_true", help="50 requests, 2 s loads, en and pl")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a page is too heavy or loads more"
    )
    add_load_options(parser)
    args = parser.parse_args(argv)
    args.requests = args.requests or (50 if args.quick else 200)
    args.warmup_requests = 20 if args.warmup_requests is None else args.warmup_requests
    args.duration = args.duration or (2 if args.quick else 5)
    languages = args.languages or ("en,pl" if args.quick else ",".join(ALL_LANGUAGES))
    args.languages = [x.strip() for x in languages.split(",") if x.strip()]
    if not args.languages or set(args.languages) - set(ALL_LANGUAGES):
        parser.error(f"--languages takes some of {','.join(ALL_LANGUAGES)}")
    if not 5 <= args.requests <= 100_000 or not 0 <= args.warmup_requests <= 10_000:
        parser.error("need --requests 5 to 100000 and --warmup-requests 0 to 10000")
    if not 1 <= args.duration <= 300 or not 0 <= args.warmup <= 60:
        parser.error("need --duration 1 to 300 s and --warmup 0 to 60 s")
    if not 1 <= args.threads <= args.connections <= 1000 or not 1 <= args.workers <= 64:
        parser.error("need 1 <= threads <= connections <= 1000 and 1 to 64 workers")
    return args


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def run(args, tmp: Path, servers: list[Server]) -> bool:
    """The whole benchmark; True if every page meets the weight requirement."""
    wrk_note = None
    if args.no_wrk:
        wrk_note = "requests per second: skipped (--no-wrk)."
    elif shutil.which(args.wrk) is None:
        wrk_note = f"requests per second: skipped ({args.wrk} is not on the PATH)."
    python = platform.python_version()
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {python}")
    if not wrk_note:
        version = run_process([args.wrk, "-v"], 10, stdout=subprocess.PIPE, text=True).stdout
        print(f"wrk: {(version.splitlines() or ['?'])[0].strip()}")
    print(
        f"servers: gunicorn --workers {args.workers} --worker-class sync; timing: "
        f"{args.requests} requests a page after {args.warmup_requests} untimed, pages in turn"
        + ("" if wrk_note else f"; wrk -t{args.threads} -c{args.connections} -d{args.duration}s")
    )
    print(f"load average at the start: {load_average()}\n")

    database = tmp / "bench.sqlite3"
    service_port, bare_port = free_port(), free_port()
    env = service_env(database, service_port, SECRET)
    print(f"setting up the service: db upgrade, API keys, {FRIENDS} friends, {BUYERS} purchases")
    run_cli(["db", "upgrade"], env)
    shop = run_cli(["api-keys", "create", "bench-shop", "--scope", "shop"], env).strip()
    admin = run_cli(["api-keys", "create", "bench-admin", "--scope", "admin"], env).strip()
    service = Server(
        "service",
        gunicorn_argv("referral_service.wsgi:app", ROOT, service_port, args.workers),
        ROOT,
        env,
        service_port,
        tmp / "service.log",
    )
    servers.append(service)
    service.start("/healthz")
    code, token = seed(service_port, shop, admin)
    expired = expired_token(token)
    english = expect(service_port, f"/share/{token}?lang=en", 200, "share page")
    print(check_share_page(english.body))

    page_file = tmp / "bare_page.html"
    page_file.write_bytes(english.body)
    bare = Server(
        "bare page app",
        gunicorn_argv("bare_page_app:app", BENCH, bare_port, args.workers),
        BENCH,
        {**env, "BARE_PAGE_FILE": str(page_file)},
        bare_port,
        tmp / "bare.log",
    )
    servers.append(bare)
    bare.start("/")

    bare_page = Page("bare app GET /", bare, "/", copy=True)
    landing = Page("GET /landing", service, "/landing")
    pages = [bare_page, landing]
    for language in args.languages:
        pages.append(Page(f"share page ({language})", service, f"/share/{token}?lang={language}"))
    for language in args.languages:
        pages.append(Page(f"welcome page ({language})", service, f"/r/{code}?lang={language}"))
    for language in args.languages:
        path = f"/share/{expired}?lang={language}"
        pages.append(Page(f"expired link ({language})", service, path, 410))

    for page in pages:
        page.weight = weigh(page.server.port, page.path, page.status, page.label, not page.copy)
    all_ok = print_weights(pages)
    favicon = fetch(service_port, "/favicon.ico")
    unnamed = [p.label for p in pages[1:] if not p.weight.names_icon]
    print(
        f"\nnote: {len(unnamed)} of the service's {len(pages) - 1} pages name no icon, so a "
        f"browser also asks for /favicon.ico (once, then it is cached):\n  GET /favicon.ico -> "
        f"{favicon.status}, {len(favicon.body):,} B "
        f"({favicon.headers.get('content-type', '?')}); not counted above"
    )

    print(f"\ntiming {len(pages)} pages, {args.requests} requests each ...", flush=True)
    started = time.monotonic()
    time_pages(pages, args.requests, args.warmup_requests)
    print(f"  done in {time.monotonic() - started:.1f} s")
    if not wrk_note:
        print("\nloading with wrk (one page at a time):")
        load_pages(args, tmp, pages)
    print_times(pages, landing, bare_page)
    if wrk_note:
        print(f"\n{wrk_note}")
    else:
        print_loads(pages, landing, bare_page)

    service.stop()
    bare.stop()
    if errors := service.log.read_text(errors="replace").count("Traceback"):
        print(f"\nnote: the service logged {errors} tracebacks:\n{service.log_tail()}")
    print(f"\nload average at the end: {load_average()}")
    print(
        "every share, welcome and expired-link page under 100 kB without the QR image and "
        f"loading nothing else: {'yes' if all_ok else 'NO'}"
    )
    return all_ok


def main(argv=None) -> int:
    return run_main(run, parse_args(argv), "pages", needs_wrk=False)  # wrk's part is optional


if __name__ == "__main__":
    sys.exit(main())

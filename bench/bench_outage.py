"""Share links and `/readyz` through a database outage: cut for 30 s, then hung for 30 s.

What it measures: the service runs under gunicorn (sync workers, `--workers 4` by default, the
rate limiter on) against a PostgreSQL database of its own, reached through a TCP proxy of the
benchmark's own (tests/tcp_proxy.py), which is

  1. open (a warm-up: each worker reads the program settings and some of the codes),
  2. cut for `--outage` seconds (connections reset, new ones refused: the server is gone),
  3. open again (recovery),
  4. frozen for `--outage` seconds (connections accepted, nothing answered: the server hangs),
  5. open again (recovery);

the server itself is never touched. Meanwhile `--clients` threads visit `GET /r/<code>` in a
loop, each visit a new person (its own user agent and `X-Forwarded-For` address, believed with
`TRUSTED_PROXIES=1`), over codes the workers have read before and codes they have not. For each
phase it prints the visits answered, how many were a 302 carrying `ref`, the 5xx answers, the
connection errors and the latency (p50, p99, max); and, in each outage, the answer time of
`/readyz` (one call every 2 s: its slowest, target under 5 s) and of the shop's API (a sign-up,
which must be a 503 with `Retry-After`). Targets: every visit answered, none with a 5xx, `/readyz`
under 5 s with a hung database.

The rate limits are set far above what the threads reach (as in bench_public.py) so that every
visit is served while the limiter still does its work on each.

How to run it (from the repository root, PostgreSQL listening on 127.0.0.1:5432):

    .venv/bin/python bench/bench_outage.py                 # 30 s outages (about 1.5 minutes)
    .venv/bin/python bench/bench_outage.py --outage 10     # shorter
    .venv/bin/python bench/bench_outage.py --database-url postgresql://user@host:5432/postgres

`--database-url` names a database the benchmark may connect to in order to create (and at the end
drop) a database of its own. Needs the service installed in the running Python
(`pip install -e '.[dev]'`, which brings gunicorn). Exit status: 0 when every target is met, 1
otherwise or on a failure.
"""

import argparse
import contextlib
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench_public import (  # noqa: E402
    BROWSER_AGENT,
    BenchError,
    Server,
    free_port,
    gunicorn_argv,
    request,
    run_cli,
    service_env,
)

from tests.tcp_proxy import TcpProxy  # noqa: E402

READY_TARGET = 5.0  # seconds
CODES = 40  # customers; the warm-up visits half of them


@dataclass
class Phase:
    """What the visitors met in one phase."""

    name: str
    latencies: list[float] = field(default_factory=list)
    with_ref: int = 0
    server_errors: int = 0
    other: dict = field(default_factory=dict)  # status -> count, besides 302 and 5xx
    failures: int = 0  # no answer: connection refused, reset or timed out
    ready: list[tuple[int, float]] = field(default_factory=list)  # /readyz: status, seconds
    api: list[tuple[int, float, str | None]] = field(default_factory=list)  # status, s, Retry-After

    def line(self) -> str:
        answered = len(self.latencies)
        ms = sorted(x * 1000 for x in self.latencies) or [0.0]
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        others = ", ".join(f"{status}: {n}" for status, n in sorted(self.other.items()))
        return (
            f"  {self.name:<16} {answered:6d} visits answered, {self.with_ref:6d} 302 with ref, "
            f"{self.server_errors} 5xx, {self.failures} without answer"
            f"{f' (other: {others})' if others else ''}; "
            f"p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.0f} ms"
        )


class Visitors:
    """`clients` threads visiting share links; each visit is counted in the current phase."""

    def __init__(self, port: int, codes: list[str], clients: int):
        self.port = port
        self.codes = codes
        self.clients = clients
        self.phase = Phase("start")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._threads = [
            threading.Thread(target=self._visit, args=(i,), daemon=True) for i in range(clients)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(40)

    def _visit(self, client: int) -> None:
        while not self._stop.is_set():
            n = next(self._numbers)
            code = self.codes[n % len(self.codes)]
            headers = {
                "User-Agent": f"{BROWSER_AGENT} visitor/{client}-{n}",
                "X-Forwarded-For": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",
            }
            phase, started = self.phase, time.monotonic()
            try:
                status, answer, _ = request(
                    self.port, "GET", f"/r/{code}?via=bench", headers=headers, timeout=35
                )
            except OSError:
                with self._lock:
                    phase.failures += 1
                continue
            took = time.monotonic() - started
            with self._lock:
                phase.latencies.append(took)
                if status == 302 and f"ref={code}" in answer.get("Location", ""):
                    phase.with_ref += 1
                elif status >= 500:
                    phase.server_errors += 1
                else:
                    phase.other[status] = phase.other.get(status, 0) + 1


def timed(port: int, method: str, path: str, **kwargs) -> tuple[int, float, dict]:
    started = time.monotonic()
    try:
        status, headers, _ = request(port, method, path, timeout=35, **kwargs)
    except OSError:
        return 0, time.monotonic() - started, {}
    return status, time.monotonic() - started, headers


def run_phase(visitors: Visitors, phase: Phase, seconds: float, port: int, key: str) -> Phase:
    """Let the visitors run for `seconds`, asking /readyz (and the API) every 2 s meanwhile."""
    visitors.phase = phase
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        status, took, _ = timed(port, "GET", "/readyz")
        phase.ready.append((status, took))
        n += 1
        status, took, headers = timed(
            port,
            "POST",
            "/api/v1/signups",
            body={
                "external_id": f"{phase.name}-{n}-{uuid.uuid4().hex[:6]}",
                "email": "friend@example.com",
            },
            headers={"Authorization": f"Bearer {key}"},
        )
        phase.api.append((status, took, headers.get("Retry-After")))
        time.sleep(max(0.0, min(2.0, deadline - time.monotonic())))
    return phase


def database_urls(admin_url: str, name: str, port: int) -> tuple[str, str]:
    """The benchmark database's URL, direct and through the proxy on `port`."""
    url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
    proxied = url.set(host="127.0.0.1", port=port)
    return url.render_as_string(False), proxied.render_as_string(False)


def run(args, tmp: Path, servers: list) -> bool:
    name = f"bench_outage_{uuid.uuid4().hex[:8]}"
    url = make_url(args.database_url)
    admin = url.set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
            return measure(args, tmp, servers, name, proxy)
    finally:
        for server in servers:
            server.stop()
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def measure(args, tmp: Path, servers: list, name: str, proxy: TcpProxy) -> bool:
    port = free_port()
    direct, proxied = database_urls(args.database_url, name, proxy.port)
    env = service_env(tmp / "unused.sqlite3", port)
    env.update(DATABASE_URL=proxied, TRUSTED_PROXIES="1", WEB_CONCURRENCY=str(args.workers))
    print(
        f"service: gunicorn --workers {args.workers} (sync), rate limiter on; PostgreSQL through "
        f"a proxy; {args.clients} visitors; outages of {args.outage:.0f} s\n"
    )
    run_cli(["db", "upgrade"], {**env, "DATABASE_URL": direct})
    key = run_cli(["api-keys", "create", "bench", "--scope", "shop"], env).strip()
    server = Server(
        "service",
        gunicorn_argv("referral_service.wsgi:app", ROOT, port, args.workers),
        ROOT,
        env,
        port,
        tmp / "service.log",
    )
    servers.append(server)
    server.start("/readyz")
    codes = []
    for i in range(CODES):
        status, _, body = request(
            port,
            "PUT",
            f"/api/v1/customers/bench-{i}",
            body={"email": f"bench-{i}@example.com", "name": "Bench Customer"},
            headers={"Authorization": f"Bearer {key}"},
        )
        if status not in (200, 201):
            raise BenchError(f"PUT /api/v1/customers answered {status}: {body[:200]!r}")
        codes.append(json.loads(body)["referral"]["code"])
    visitors = Visitors(port, codes[: CODES // 2], args.clients)
    visitors.phase = Phase("warm-up")
    visitors.start()
    phases = [run_phase(visitors, visitors.phase, args.warmup, port, key)]
    visitors.codes = codes  # from now on, half of the codes were never read by the workers
    proxy.cut()
    phases.append(run_phase(visitors, Phase("database cut"), args.outage, port, key))
    proxy.restore()
    phases.append(run_phase(visitors, Phase("back"), args.recovery, port, key))
    proxy.freeze()
    phases.append(run_phase(visitors, Phase("database hung"), args.outage, port, key))
    proxy.restore()
    phases.append(run_phase(visitors, Phase("back again"), args.recovery, port, key))
    visitors.stop()

    print("visits of /r/<code>:")
    for phase in phases:
        print(phase.line())
    print("\n/readyz (one call every 2 s) and POST /api/v1/signups during each phase:")
    ok = True
    for phase in phases:
        ready = [took for _, took in phase.ready]
        statuses = sorted({status for status, _ in phase.ready})
        api = sorted({status for status, _, _ in phase.api})
        retry = sorted({r for s, _, r in phase.api if s == 503 and r})
        print(
            f"  {phase.name:<16} /readyz {statuses} slowest {max(ready):.2f} s, "
            f"median {statistics.median(ready):.2f} s; API {api} slowest "
            f"{max(t for _, t, _ in phase.api):.2f} s"
            f"{f', Retry-After {retry}' if retry else ''}"
        )
        if phase.name.startswith("database"):
            ok &= max(ready) < READY_TARGET and 200 not in statuses
            ok &= set(api) <= {503} and all(r for s, _, r in phase.api if s == 503)
        ok &= phase.server_errors == 0 and phase.failures == 0 and not phase.other
    last = phases[-1]
    ok &= last.ready[-1][0] == 200
    print(
        f"\ntargets: every visit answered with a 302 carrying ref, no 5xx; /readyz under "
        f"{READY_TARGET:.0f} s with a hung database; ready again after: {'met' if ok else 'MISSED'}"
    )
    return ok


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=30.0, help="seconds of each outage (30)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before (5)")
    parser.add_argument("--recovery", type=float, default=8.0, help="seconds after each (8)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn sync workers (4)")
    parser.add_argument("--clients", type=int, default=8, help="visitor threads (8)")
    parser.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL database to connect to while creating the benchmark's own",
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep the service's log")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-outage-"))
    servers: list = []
    try:
        ok = run(args, tmp, servers)
    except BenchError as error:
        print(f"failed: {error}", file=sys.stderr)
        ok = False
    except KeyboardInterrupt:
        ok = False
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()
        if args.keep_tmp:
            print(f"log kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

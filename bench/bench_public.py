"""Throughput of the public share link and QR images, compared to a bare Flask app.

What it measures: requests per second, latency (p50/p99) and server CPU time per request of

  * `GET /` of a bare Flask app (`bench/bare_app.py`), the baseline, loaded before and after
    each service endpoint (the mean of those two runs is that endpoint's baseline, so that a
    machine whose speed drifts, shared with other work, moves both sides of the ratio alike);
  * `GET /r/<code>?via=link` of the service (the 302 redirect that records a click);
  * `GET /r/<code>/qr.png` and `GET /r/<code>/qr.svg` (served from the QR cache once drawn);

each as a ratio of the baseline, printed beside its target (redirect >= 0.5, cached QR >= 0.7).
Every request is a new visitor: the service counts the same visitor (client address and user
agent) on the same link once an hour, and wrk is one address, so a Lua script gives each request
a browser's user agent with a visitor number of its own (a random prefix per wrk thread and a
counter), in every load, the bare app's too, so that both sides of a ratio build their requests
alike. Each redirect is thus a first visit that records a new click, the service's costliest
case. After the redirect loads the service is stopped gracefully (SIGTERM to the gunicorn
master) and the rows of the `clicks` table are counted: every request the service answered must
have left one click, so the in-memory click buffer loses nothing on a clean shutdown.

Both applications run under gunicorn with the same settings (sync workers, `--workers 2` by
default, bound to free ports on 127.0.0.1) and are loaded one endpoint at a time with `wrk`, so
that they do not compete for the CPUs; each endpoint is warmed up first. wrk runs on the same
machine and takes its share of the CPUs, as it would for any server measured here. On Linux the
CPU time of the server's processes is read from /proc, which gives the server CPU per request
(steady even when other work shares the machine) and the share of the machine that other work
took during each load (`other`; above a few percent, that load's figures are disturbed: run
again, or use `--rounds 3`, which reports the lower median of the quiet rounds, where other work
took at most 5%). The service runs on a fresh SQLite database in a temporary directory, removed
at the end (even on Ctrl-C).

How to run it (from the repository root):

    .venv/bin/python bench/bench_public.py             # 10 s per load (about 1.5 minutes)
    .venv/bin/python bench/bench_public.py --quick     # 3 s per load
    .venv/bin/python bench/bench_public.py --rounds 3  # each service endpoint 3 times (4 min)
    .venv/bin/python bench/bench_public.py --help      # threads, connections, durations, ...

Needs: the service installed in the running Python (`pip install -e '.[dev]'`, which brings
gunicorn) and `wrk` on the PATH (`apt-get install wrk`). Exit status: 0 when the runs complete
(with `--check`: only if every target is met and no click is lost), 1 on a failure, 2 without wrk.
"""

import argparse
import contextlib
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
HOST = "127.0.0.1"
REDIRECT_TARGET = 0.5
QR_TARGET = 0.7
STOP_TIMEOUT = 40.0  # the service's graceful_timeout is 30 s
QUIET = 0.05  # a round is quiet if other work took at most this share of the CPUs
QUIET_RULE = "the lower median of the quiet ones (other <= 5%), else the least disturbed"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# A browser's user agent; each request of a load adds a visitor's number to it.
BROWSER_AGENT = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36"
)

# Each request a new visitor: the service counts the same visitor (address and user agent) on
# the same link once an hour, and wrk is one address. Every Lua state (one per wrk thread) draws
# its own random prefix, so user agents are unique across threads and runs.
VISITORS_SCRIPT = f"""\
local urandom = io.open("/dev/urandom", "rb")
local prefix = (urandom:read(6):gsub(".", function(c) return string.format("%02x", c:byte()) end))
urandom:close()
local n = 0

request = function()
  n = n + 1
  wrk.headers["User-Agent"] = "{BROWSER_AGENT} visitor/" .. prefix .. "-" .. n
  return wrk.format()
end
"""

# wrk calls done() once at the end; it prints one machine-readable line (latencies in µs).
WRK_SCRIPT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH-JSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"bytes\\": %d, "
    .. "\\"connect\\": %d, \\"read\\": %d, \\"write\\": %d, \\"status\\": %d, "
    .. "\\"timeout\\": %d, \\"p50_us\\": %d, \\"p90_us\\": %d, \\"p99_us\\": %d, "
    .. "\\"max_us\\": %d}\\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"""


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


@dataclass
class WrkResult:
    """What wrk reported for one load."""

    requests: int
    seconds: float
    socket_errors: int
    status_errors: int  # responses with a status of 400 or more
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.socket_errors + self.status_errors


@dataclass
class Load:
    """One measured load: wrk's figures and the CPU time spent meanwhile (None without /proc)."""

    wrk: WrkResult
    server_cpu: float | None  # seconds, all processes of the server
    other_share: float | None  # share of the machine's CPU taken by neither server nor wrk

    @property
    def cpu_per_request_us(self) -> float | None:
        if self.server_cpu is None or not self.wrk.requests:
            return None
        return self.server_cpu / self.wrk.requests * 1e6


@dataclass
class Round:
    """A service load and the bare loads just before and after it."""

    load: Load
    before: Load
    after: Load

    @property
    def baseline(self) -> float:
        return (self.before.wrk.rps + self.after.wrk.rps) / 2

    @property
    def ratio(self) -> float:
        return self.load.wrk.rps / self.baseline if self.baseline else 0.0

    @property
    def disturbance(self) -> float:
        """The largest share of the CPUs other work took during this round's three loads."""
        return max(x.other_share or 0.0 for x in (self.load, self.before, self.after))

    @property
    def cpu_ratio(self) -> float | None:
        """Bare server CPU per request / this endpoint's: its throughput ratio on idle CPUs."""
        bare = [x.cpu_per_request_us for x in (self.before, self.after)]
        mine = self.load.cpu_per_request_us
        if None in bare or not mine:
            return None
        return sum(bare) / 2 / mine


class Server:
    """A gunicorn master (and its workers) in a session of its own, logging to a file."""

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict, port: int, log: Path):
        self.name = name
        self.argv = argv
        self.cwd = cwd
        self.env = env
        self.port = port
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, ready_path: str, timeout: float = 30.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited at start:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if request(self.port, "GET", ready_path)[0] == 200:
                    return
            time.sleep(0.1)
        raise BenchError(f"{self.name} did not answer {ready_path} in {timeout:.0f} s")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> tuple[float, int | None]:
        """SIGTERM to the master (a graceful stop); SIGKILL to its group after `timeout`."""
        if self.proc is None:
            return 0.0, None
        started = time.monotonic()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # workers left behind by a master that died first would keep the port
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return time.monotonic() - started, self.proc.returncode

    def cpu_seconds(self) -> float | None:
        """CPU time (user and system) of the master and its workers so far, from /proc."""
        if self.proc is None:
            return None
        try:
            names = [name for name in os.listdir("/proc") if name.isdigit()]
        except OSError:
            return None
        ticks = 0
        for name in names:
            try:
                stat = Path("/proc", name, "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()  # from field 3, "state", on
            if int(fields[2]) == self.proc.pid:  # process group: the master's pid
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / CLOCK_TICKS

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def request(port: int, method: str, path: str, body=None, headers=None, timeout: float = 10.0):
    """One HTTP request to 127.0.0.1 (redirects are not followed): status, headers, body."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        all_headers = {"Content-Type": "application/json"} if payload else {}
        all_headers.update(headers or {})
        connection.request(method, path, body=payload, headers=all_headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def run_process(argv: list, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Like subprocess.run, but the child is killed and reaped whatever stops the wait."""
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kwargs) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException:  # a timeout, Ctrl-C, SIGTERM
            proc.kill()
            proc.wait()
            raise
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def machine_busy_seconds() -> float | None:
    """CPU time all CPUs have spent busy since boot (stolen time counted as busy)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def console_script(name: str) -> str:
    """A console script installed next to the running Python, else one on the PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise BenchError(f"`{name}` is not installed: run `pip install -e '.[dev]'` first")
    return found


def run_cli(argv: list[str], env: dict, timeout: float = 120.0) -> str:
    """Run a `referral-service` command; its standard output, or BenchError with its errors."""
    try:
        done = run_process(
            [console_script("referral-service"), *argv],
            timeout,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"referral-service {' '.join(argv)} took over {timeout:.0f} s") from None
    if done.returncode != 0:
        raise BenchError(f"referral-service {' '.join(argv)} failed:\n{done.stderr.strip()}")
    return done.stdout


def gunicorn_argv(app: str, chdir: Path, port: int, workers: int) -> list[str]:
    """The same settings for both servers; only the application and its folder differ."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:referral_service.gunicorn_conf",
        "--workers",
        str(workers),
        "--worker-class",
        "sync",
        "--threads",
        "1",
        "--bind",
        f"{HOST}:{port}",
        "--log-level",
        "warning",
        "--chdir",
        str(chdir),
        app,
    ]


def wrk(args, script: Path, port: int, path: str, seconds: int) -> WrkResult:
    argv = [
        args.wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        f"http://{HOST}:{port}{path}",
    ]
    try:
        done = run_process(
            argv, seconds + 60, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish in {seconds + 60} s: {' '.join(argv)}") from None
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH-JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({' '.join(argv)}):\n{done.stdout}{done.stderr}")
    data = json.loads(line.removeprefix("BENCH-JSON "))
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
        status_errors=data["status"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )


def measure(args, script: Path, server: Server, path: str, label: str) -> tuple[Load, int]:
    """Warm up, then measure; returns the measured load and the requests of both wrk runs."""
    warm = wrk(args, script, server.port, path, args.warmup) if args.warmup else None
    print(f"  {label:<24}", end="", flush=True)
    server0, busy0, client0 = server.cpu_seconds(), machine_busy_seconds(), children_cpu_seconds()
    started = time.monotonic()
    result = wrk(args, script, server.port, path, args.duration)
    wall = time.monotonic() - started
    server1, busy1, client1 = server.cpu_seconds(), machine_busy_seconds(), children_cpu_seconds()
    server_cpu = other = None
    if None not in (server0, server1, busy0, busy1):
        server_cpu = server1 - server0
        others = (busy1 - busy0) - server_cpu - (client1 - client0)
        other = max(0.0, others) / ((os.cpu_count() or 1) * wall)
    load = Load(result, server_cpu, other)
    cpu = load.cpu_per_request_us
    print(
        f"{result.rps:7.0f} req/s  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
        f"{result.requests:6d} requests  {result.errors} errors  "
        f"server CPU {'?' if cpu is None else f'{cpu:.0f}'} µs/req  "
        f"other {'?' if other is None else f'{other:.0%}'}",
        flush=True,
    )
    return load, result.requests + (warm.requests if warm else 0)


def count_rows(database: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def check_redirect(port: int, code: str) -> None:
    agent = {"User-Agent": f"{BROWSER_AGENT} visitor/check"}
    status, headers, _ = request(port, "GET", f"/r/{code}?via=link", headers=agent)
    location = headers.get("Location", "")
    if status != 302 or f"ref={code}" not in location or "click_id=" not in location:
        raise BenchError(f"GET /r/<code> answered {status} to {location!r}, not a 302 with ref")


def check_qr(port: int, code: str, fmt: str, mimetype: str) -> None:
    status, headers, body = request(port, "GET", f"/r/{code}/qr.{fmt}")
    if status != 200 or not headers.get("Content-Type", "").startswith(mimetype) or not body:
        raise BenchError(f"GET /r/<code>/qr.{fmt} answered {status} {headers.get('Content-Type')}")


def service_errors(log: Path) -> int:
    """Tracebacks and errors the service logged (a click writer that failed would show here)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return 0
    return text.count("Traceback") + text.count("[ERROR]")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Load the service's share link and QR images with wrk, against a bare app.",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per load (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up (default 2)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="loads per service endpoint; the median quiet one counts (1)",
    )
    parser.add_argument("--quick", action="store_true", help="3 s loads, 1 s warm-ups")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a target is missed or a click lost"
    )
    add_load_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 3, 1
    if not 1 <= args.duration <= 300 or not 0 <= args.warmup <= 60 or not 1 <= args.rounds <= 9:
        parser.error("need --duration 1 to 300 s, --warmup 0 to 60 s and --rounds 1 to 9")
    if not 1 <= args.threads <= args.connections <= 1000 or not 1 <= args.workers <= 64:
        parser.error("need 1 <= threads <= connections <= 1000 and 1 to 64 workers")
    return args


def run(args, tmp: Path, servers: list[Server]) -> bool:
    """The whole benchmark; True if every target is met and no click is lost."""
    database = tmp / "bench.sqlite3"
    script = tmp / "visitors.lua"  # every load, so that both sides of a ratio build requests alike
    script.write_text(VISITORS_SCRIPT + WRK_SCRIPT)
    bare_port, service_port = free_port(), free_port()
    env = service_env(database, service_port)

    wrk_version = run_process([args.wrk, "-v"], 10, stdout=subprocess.PIPE, text=True).stdout
    python = platform.python_version()
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {python}")
    print(f"wrk: {(wrk_version.splitlines() or ['?'])[0].strip()}")
    print(
        f"load: wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency "
        f"(after a {args.warmup} s warm-up), {args.rounds} round(s); servers: gunicorn "
        f"--workers {args.workers} --worker-class sync; one endpoint loaded at a time\n"
    )

    print("setting up the service: db upgrade, API key, one customer")
    run_cli(["db", "upgrade"], env)
    key = run_cli(["api-keys", "create", "bench", "--scope", "shop"], env).strip()
    bare = Server(
        "bare app",
        gunicorn_argv("bare_app:app", BENCH, bare_port, args.workers),
        BENCH,
        env,
        bare_port,
        tmp / "bare.log",
    )
    service = Server(
        "service",
        gunicorn_argv("referral_service.wsgi:app", ROOT, service_port, args.workers),
        ROOT,
        env,
        service_port,
        tmp / "service.log",
    )
    servers += [bare, service]
    bare.start("/")
    service.start("/healthz")
    status, _, body = request(
        service_port,
        "PUT",
        "/api/v1/customers/bench-1",
        body={"email": "bench@example.com", "name": "Bench Customer", "locale": "pl"},
        headers={"Authorization": f"Bearer {key}"},
    )
    if status not in (200, 201):
        raise BenchError(f"PUT /api/v1/customers/bench-1 answered {status}: {body[:300]!r}")
    code = json.loads(body)["referral"]["code"]
    check_redirect(service_port, code)
    print(f"customer bench-1 has code {code}\n")

    # Bare loads sit between the service's loads; each service load is compared to the mean of
    # the bare loads just before and after it, so that a machine that slows down or speeds up
    # (other work on it) moves both sides of a ratio alike.
    print("loading (one endpoint at a time):")
    bare_loads = [measure(args, script, bare, "/", "bare GET /")[0]]
    rounds: dict[str, list[Round]] = {"redirect": [], "png": [], "svg": []}

    def service_round(name: str, path: str, label: str) -> int:
        load, requests = measure(args, script, service, path, label)
        bare_loads.append(measure(args, script, bare, "/", "bare GET /")[0])
        rounds[name].append(Round(load, bare_loads[-2], bare_loads[-1]))
        return requests

    redirect_requests = sum(
        service_round("redirect", f"/r/{code}?via=link", "GET /r/<code>?via=link")
        for _ in range(args.rounds)
    )
    wrk_runs = args.rounds * (2 if args.warmup else 1)
    clicks_ok = stop_and_count_clicks(service, database, redirect_requests + 1, wrk_runs, args)

    print("\nrestarting the service for the QR images")
    service.start("/healthz")
    check_qr(service_port, code, "png", "image/png")
    check_qr(service_port, code, "svg", "image/svg+xml")
    for _ in range(args.rounds):
        for fmt in ("png", "svg"):
            service_round(fmt, f"/r/{code}/qr.{fmt}", f"GET /r/<code>/qr.{fmt}")
    service.stop()
    bare.stop()

    all_met = print_table(
        bare_loads,
        [
            ("GET /r/<code>?via=link (302)", rounds["redirect"], REDIRECT_TARGET),
            ("GET /r/<code>/qr.png (cached)", rounds["png"], QR_TARGET),
            ("GET /r/<code>/qr.svg (cached)", rounds["svg"], QR_TARGET),
        ],
    )
    print(f"click buffer on clean shutdown: {'no click lost' if clicks_ok else 'PROBLEM'}")
    return all_met and clicks_ok


def stop_and_count_clicks(
    service: Server, database: Path, expected: int, wrk_runs: int, args
) -> bool:
    """Stop the service gracefully; True if every request it answered left exactly one click.

    wrk counts the responses it read; requests still in flight when it stops (at most one per
    connection and run) reach the service, which answers them and records their clicks after
    wrk has hung up. So the clicks may exceed wrk's count by that much, never fall short of it.
    """
    seconds, returncode = service.stop()
    clicks = count_rows(database, "clicks")
    extra = clicks - expected
    max_extra = args.connections * wrk_runs
    print(
        f"\nservice stopped with SIGTERM in {seconds:.1f} s (exit status {returncode})\n"
        f"clicks recorded: {clicks} of {expected} requests"
    )
    if extra < 0:
        ok = False
        print(f"  LOST {-extra} clicks: the click buffer was not written at shutdown")
    elif extra <= max_extra:
        ok = True
        print(
            f"  OK: nothing lost ({extra} more requests reached the service than wrk counted: "
            f"in flight when wrk stopped; at most {max_extra} = connections x wrk runs)"
        )
    else:
        ok = False
        print(f"  UNEXPECTED: {extra} more clicks than requests (more than {max_extra})")
    errors_logged = service_errors(service.log)
    if errors_logged:
        ok = False
        print(f"  the service logged {errors_logged} errors:\n{service.log_tail()}")
    return ok


def _columns(load: Load) -> str:
    cpu, other = load.cpu_per_request_us, load.other_share
    return (
        f"{load.wrk.rps:8.0f}{load.wrk.p50_ms:8.2f}{load.wrk.p99_ms:8.2f}{load.wrk.errors:7d}"
        f"{'?' if cpu is None else f'{cpu:.0f}':>8}{'?' if other is None else f'{other:.0%}':>7}"
    )


def print_table(bare_loads: list[Load], endpoints: list) -> bool:
    """The results table; True if every service endpoint meets its target without errors."""
    header = (
        f"{'endpoint':<31}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'errors':>7}{'CPU µs':>8}"
        f"{'other':>7}{'bare':>7}{'ratio':>7}{'target':>8}  met{'CPU ratio':>11}"
    )
    print(f"\n{header}\n{'-' * len(header)}")
    quietest = min(bare_loads, key=lambda x: x.other_share or 0.0)
    label = "bare GET /" + (f" (best of {len(bare_loads)})" if len(bare_loads) > 1 else "")
    print(f"{label:<31}{_columns(quietest)}")
    all_met = True
    for label, rounds, target in endpoints:
        quiet = [r for r in rounds if r.disturbance <= QUIET] or [
            min(rounds, key=lambda x: x.disturbance)
        ]
        chosen = sorted(quiet, key=lambda x: x.ratio)[(len(quiet) - 1) // 2]
        met = chosen.ratio >= target and all(r.load.wrk.errors == 0 for r in rounds)
        all_met &= met
        cpu_ratio = "?" if chosen.cpu_ratio is None else f"{chosen.cpu_ratio:.2f}"
        print(
            f"{label:<31}{_columns(chosen.load)}{chosen.baseline:7.0f}{chosen.ratio:7.2f}"
            f"{'>= ' + format(target, '.1f'):>8}  {'yes' if met else 'NO ':<3}{cpu_ratio:>11}"
        )
        if len(rounds) > 1:
            ratios = ", ".join(f"{r.ratio:.2f} ({r.disturbance:.0%})" for r in rounds)
            print(f"{'':<31}rounds: {ratios}; shown: {QUIET_RULE}")
    print(
        "\nCPU µs: server CPU time per request (master and workers); other: share of the "
        "machine's CPU taken by other work during the load;\nbare: mean req/s of the bare "
        "loads just before and after; ratio: req/s / bare; CPU ratio: bare CPU µs / "
        "endpoint CPU µs\n(the ratio on CPUs free of other work, client aside); errors: "
        "socket errors and responses >= 400.\n"
    )
    loads = bare_loads + [r.load for _, rounds, _ in endpoints for r in rounds]
    if any((x.other_share or 0) > QUIET for x in loads):
        print("note: other work took more than 5% of the CPUs during some loads; see `other`.\n")
    return all_met


def interrupt(signum, frame):
    """A SIGTERM to this script cleans up like Ctrl-C does."""
    raise KeyboardInterrupt


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes: wrk's threads and connections, gunicorn's workers, the
    wrk program, and keeping the temporary folder."""
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers (2)")
    parser.add_argument("--wrk", default="wrk", help="the wrk program (default: from PATH)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the databases and logs")


def service_env(
    database: Path, port: int, secret: str = "bench-secret-key-0123456789abcdefghij"
) -> dict:
    """The service's environment: SQLite at `database`, its own key, no Redis, and rate limits
    it never reaches (wrk is one client address with one API key), so that every request is
    served and counted, none refused, while the limiter still does its work on each."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SECRET_KEY_FALLBACKS")}
    env.update(
        DATABASE_URL=f"sqlite:///{database}",
        SECRET_KEY=secret,
        CLICK_SPILL_DIR=str(database.parent / "clicks-spill"),  # never the checkout's instance
        PUBLIC_BASE_URL=f"http://{HOST}:{port}",
        RATELIMIT_PUBLIC="1000000000/minute",
        RATELIMIT_API="1000000000/minute",
        RATELIMIT_SIGNUPS_PER_REFERRER="1000000000/hour",
    )
    return env


def run_main(run, args, name: str, needs_wrk: bool = True) -> int:
    """Run a benchmark `run(args, tmp, servers)` with wrk checked, cleanup and exit statuses."""
    if needs_wrk and shutil.which(args.wrk) is None:
        print(
            f"{args.wrk} is not installed: this benchmark needs the HTTP load generator wrk.\n"
            "Install it with `apt-get install wrk` (Debian/Ubuntu) and run again.",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, interrupt)
    tmp = Path(tempfile.mkdtemp(prefix=f"referral-bench-{name}-"))
    servers: list[Server] = []
    started = time.monotonic()
    try:
        ok = run(args, tmp, servers)
        return 0 if ok or not args.check else 1
    except (BenchError, OSError) as error:
        print(f"\nbenchmark failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the servers", file=sys.stderr)
        return 130
    finally:
        for server in servers:
            if server.running:
                server.stop(timeout=10)
        print(f"took {time.monotonic() - started:.0f} s")
        sys.stdout.flush()
        if args.keep_tmp:
            print(f"kept the databases and server logs in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    return run_main(run, parse_args(argv), "public")


if __name__ == "__main__":
    sys.exit(main())

"""Webhooks delivered per second by `referral-service worker` to a receiver on loopback.

What it measures: a fresh SQLite database (or, with `--database-url`, a PostgreSQL database of
its own) and its task queue (SQLite in the temporary directory, or Redis with `--redis-url`);
`--endpoints` webhook endpoints (every event type) pointing at a receiver in this process (HTTP
1.1 with keep-alive, answering 204 at once, counting what it gets); `--processes` worker
processes (`referral-service worker -w <threads>`, one by default: on SQLite more processes
contend for its one writer, on PostgreSQL they add CPUs) started and left idle until they are
up. Then `--events` events are committed in one business step (one unit of work; its commit
queues the relay), and the clock runs until the receiver has every delivery and the database has
recorded each one as delivered. The figures: deliveries per second received and recorded (from
the commit to the last one), the relay's share (from the commit until every event was relayed),
the latency of the first delivery, the workers' CPU time per delivery, and checks: every
(endpoint, event) delivered exactly once, with its event id as `webhook-id`. Target: at least
200 a second.

How to run it (from the repository root):

    .venv/bin/python bench/bench_worker.py                     # 2000 events, 1 endpoint, SQLite
    .venv/bin/python bench/bench_worker.py --events 5000 --threads 8
    .venv/bin/python bench/bench_worker.py --endpoints 2       # two deliveries per event
    .venv/bin/python bench/bench_worker.py --redis-url redis://127.0.0.1:6379/0
    .venv/bin/python bench/bench_worker.py --processes 2 --redis-url redis://127.0.0.1:6379/0 \\
        --database-url postgresql://postgres@127.0.0.1/postgres

`--database-url` names a database the benchmark may connect to in order to create (and at the end
drop) a database of its own. Needs the service installed in the running Python
(`pip install -e '.[dev]'`). Exit status: 0 when the target is met, 1 otherwise or on a failure.
"""

import argparse
import http.server
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench_public import BenchError, console_script, run_cli  # noqa: E402

TARGET = 200.0  # deliveries a second
SECRET = "bench-worker-secret-0123456789abcdefghij"


class Receiver:
    """A loopback receiver answering 204 at once; counts requests and their webhook-ids."""

    def __init__(self):
        self.ids: list[str] = []
        self.first_at: float | None = None
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the worker's client reuses connections

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.ids.append(self.headers["webhook-id"])
                    receiver.first_at = receiver.first_at or time.monotonic()
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self.lock:
            return len(self.ids)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_database(args, tmp: Path) -> tuple[str, callable]:
    """The service's database URL and a function that drops it at the end."""
    if not args.database_url:
        return f"sqlite:///{tmp / 'bench.sqlite3'}", lambda: None
    url = make_url(args.database_url).set(drivername="postgresql+psycopg")
    name = f"rs_bench_worker_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop():
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url.set(database=name).render_as_string(hide_password=False), drop


def run(args, tmp: Path) -> bool:
    database_url, drop = make_database(args, tmp)
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SECRET_KEY_FALLBACKS")}
    env.update(
        DATABASE_URL=database_url,
        SECRET_KEY=SECRET,
        TASKS_FILE=str(tmp / "tasks.sqlite3"),
        WEBHOOKS_ALLOW_PRIVATE="1",
        CLICK_SPILL_DIR=str(tmp / "clicks-spill"),
    )
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    receiver = Receiver()
    workers: list[subprocess.Popen] = []
    try:
        run_cli(["db", "upgrade"], env)
        os.environ.update({k: env[k] for k in ("DATABASE_URL", "SECRET_KEY", "TASKS_FILE")})
        if args.redis_url:
            os.environ["REDIS_URL"] = args.redis_url
        os.environ.pop("SECRET_KEY_FALLBACKS", None)
        os.environ["WEBHOOKS_ALLOW_PRIVATE"] = "1"
        os.environ["CLICK_SPILL_DIR"] = env["CLICK_SPILL_DIR"]
        from referral_service import create_app
        from referral_service.domain import webhooks
        from referral_service.domain.unit import unit_of_work

        app = create_app()
        with app.app_context():
            for _ in range(args.endpoints):
                webhooks.create_endpoint(receiver.url, ["*"], None, "bench")
        log = open(tmp / "worker.log", "wb")  # noqa: SIM115 - open while the workers run
        for _ in range(args.processes):
            workers.append(
                subprocess.Popen(
                    [console_script("referral-service"), "worker", "-w", str(args.threads)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        time.sleep(args.settle)  # the workers' start (imports, the first minute's jobs)
        if any(worker.poll() is not None for worker in workers):
            raise BenchError(f"a worker exited:\n{(tmp / 'worker.log').read_text()[-2000:]}")
        cpu_before = sum(process_cpu_seconds(worker.pid) for worker in workers)
        expected = args.events * args.endpoints
        print(
            f"{args.events:,} events x {args.endpoints} endpoint(s) = {expected:,} deliveries; "
            f"{args.processes} worker process(es), -w {args.threads} each; database "
            f"{make_url(database_url).get_backend_name()}; queue "
            f"{'Redis' if args.redis_url else 'SQLite'}; {os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.1f} before",
            flush=True,
        )
        with app.app_context():
            started = time.monotonic()
            with unit_of_work() as step:
                for n in range(args.events):
                    step.emit("customer.enrolled", {"id": n, "external_id": f"bench-{n}"})
            committed = time.monotonic()
        relayed_at = received_at = recorded_at = None
        deadline = committed + args.timeout
        engine = create_engine(database_url)
        while time.monotonic() < deadline:
            now = time.monotonic()
            with engine.connect() as connection:
                if relayed_at is None and not connection.scalar(
                    text("SELECT count(*) FROM outbox WHERE relayed_at IS NULL")
                ):
                    relayed_at = now
                if received_at is None and receiver.count() >= expected:
                    received_at = now
                if received_at is not None:
                    delivered = connection.scalar(
                        text("SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered'")
                    )
                    if delivered >= expected:
                        recorded_at = now
                        break
            time.sleep(0.02)
        cpu = sum(process_cpu_seconds(worker.pid) for worker in workers) - cpu_before
        with engine.connect() as connection:
            delivered = connection.scalar(
                text("SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered'")
            )
            attempts = connection.scalar(text("SELECT count(*) FROM webhook_attempts"))
            event_ids = set(connection.scalars(text("SELECT event_id FROM outbox")))
        engine.dispose()
        if recorded_at is None:
            raise BenchError(
                f"after {args.timeout} s: {receiver.count():,} of {expected:,} received, "
                f"{delivered:,} recorded as delivered"
            )
        received = receiver.ids
        once = len(received) == expected and all(
            received.count(event_id) == args.endpoints for event_id in event_ids
        )
        rate = expected / (recorded_at - committed)
        print(f"  commit of the events:        {committed - started:8.2f} s")
        print(f"  relayed (all events):        {relayed_at - committed:8.2f} s after the commit")
        print(f"  first delivery received:     {receiver.first_at - committed:8.3f} s after")
        print(
            f"  all received:                {received_at - committed:8.2f} s "
            f"({expected / (received_at - committed):,.0f} deliveries/s)"
        )
        print(f"  all recorded as delivered:   {recorded_at - committed:8.2f} s ({rate:,.0f}/s)")
        print(f"  worker CPU per delivery:     {cpu / expected * 1000:8.2f} ms")
        print(
            f"  attempts recorded:           {attempts:8,}  "
            f"(one per delivery: {attempts == expected})"
        )
        print(f"  each delivered once:         {'yes' if once else 'NO'}")
        met = rate >= TARGET and once
        print(f"\ndeliveries/s {rate:,.0f} (target >= {TARGET:.0f}): {'met' if met else 'NOT MET'}")
        return met
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        receiver.close()
        drop()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=2000, help="events committed (2000)")
    parser.add_argument("--endpoints", type=int, default=1, help="endpoints, each gets all (1)")
    parser.add_argument("--threads", type=int, default=4, help="worker threads, -w (4)")
    parser.add_argument(
        "--processes", type=int, default=1, help="worker processes, each -w threads (1)"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait at most")
    parser.add_argument("--settle", type=float, default=4, help="seconds for the worker's start")
    parser.add_argument("--database-url", help="PostgreSQL to create a database in")
    parser.add_argument("--redis-url", help="the task queue on Redis (a queue of its own)")
    args = parser.parse_args(argv)
    if not 1 <= args.events <= 1_000_000 or not 1 <= args.endpoints <= 20:
        parser.error("need 1 to 1,000,000 events and 1 to 20 endpoints")
    if not 1 <= args.threads <= 64 or not 1 <= args.processes <= 32:
        parser.error("need 1 to 64 threads and 1 to 32 processes")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="referral-bench-worker-"))
    try:
        return 0 if run(args, tmp) else 1
    except BenchError as error:
        print(f"failed: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

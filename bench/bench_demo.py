"""How long `referral-service demo` takes to fill a year, on SQLite and on PostgreSQL.

What it measures: the wall-clock time of `referral-service demo` (its default size, or
`--customers N`) on a fresh, migrated database, against the target "a year in under 60 s";
once on SQLite (a file in a temporary folder) and, when a PostgreSQL URL is given, once on a
fresh PostgreSQL database made for the run and dropped after it. The times include starting the
command (Python, the application); the time the command says it took itself is printed beside
them, with what it made (customers, visits, purchases, rewards, payouts).

How to run it (from the repository root):

    .venv/bin/python bench/bench_demo.py                      # SQLite, the default size
    .venv/bin/python bench/bench_demo.py --customers 10000    # a larger shop
    .venv/bin/python bench/bench_demo.py \\
        --postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres  # and PostgreSQL

`--postgres` defaults to BENCH_DATABASE_URL or TEST_DATABASE_URL when one is set; `--no-postgres`
skips it. Needs: the service installed in the running Python (`pip install -e .`); for
PostgreSQL, a server where the URL's user may create databases. It works in a temporary folder,
removed at the end (even on Ctrl-C). Exit status: 0 when the runs complete (with `--check`:
only if every run meets the target), 1 on a failure.
"""

import argparse
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from bench_import import run_cli
from bench_public import BenchError, interrupt
from harness import postgres_database

TARGET_SECONDS = 60.0
DONE = re.compile(r"Done in ([\d.]+) s")


def run_demo(name: str, database_url: str, args, tmp: Path) -> bool:
    """Migrate `database_url`, time the demo on it, print the figures; True if on target."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SECRET_KEY_FALLBACKS")}
    env.update(
        DATABASE_URL=database_url,
        SECRET_KEY="bench-" + "d" * 32,
        TASKS_FILE=str(tmp / f"{name}-tasks.sqlite3"),
        CLICK_SPILL_DIR=str(tmp / f"{name}-clicks-spill"),
    )
    run_cli(["db", "upgrade"], env, 300, tmp, f"{name}-upgrade")
    argv = ["demo", "--seed", str(args.seed)]
    if args.customers:
        argv += ["--customers", str(args.customers)]
    seconds, stdout, _ = run_cli(argv, env, args.timeout, tmp, f"{name}-demo")
    found = DONE.search(stdout)
    inside = f"{float(found.group(1)):.1f} s" if found else "?"
    met = seconds < TARGET_SECONDS
    print(f"\n{name}: {seconds:.1f} s with the start-up ({inside} as the command counts it)")
    for line in stdout.splitlines()[:3]:
        print(f"  {line}")
    print(f"  target (< {TARGET_SECONDS:.0f} s): {'met' if met else 'NOT MET'}")
    return met


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time `referral-service demo`.")
    parser.add_argument("--customers", type=int, help="the demo's size (its default)")
    parser.add_argument("--seed", type=int, default=2026, help="the demo's seed (2026)")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL"),
        help="a PostgreSQL URL to also run on (default: BENCH_DATABASE_URL, TEST_DATABASE_URL)",
    )
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed a run (900)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the SQLite file and logs")
    parser.add_argument("--check", action="store_true", help="exit 1 if a run misses the target")
    args = parser.parse_args(argv)
    if args.customers is not None and not 50 <= args.customers <= 20_000:
        parser.error("--customers must be 50 to 20,000")
    if not 1 <= args.timeout <= 3600:
        parser.error("--timeout must be 1 to 3600 seconds")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="referral-bench-demo-"))
    print(f"machine: {os.cpu_count()} CPUs; demo of {args.customers or 'the default'} customers")
    try:
        ok = run_demo("SQLite", f"sqlite:///{tmp / 'demo.sqlite3'}", args, tmp)
        if args.postgres and not args.no_postgres:
            with postgres_database(args.postgres, prefix="bench_demo") as url:
                ok &= run_demo("PostgreSQL", url, args, tmp)
        return 0 if ok or not args.check else 1
    except BenchError as error:
        print(f"\nbenchmark failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout.flush()
        if args.keep_tmp:
            print(f"kept the database and logs in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

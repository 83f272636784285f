"""Speed and re-run safety of `referral-service customers import FILE.csv`.

What it measures: the wall-clock time (and rows per second) of importing a generated CSV of
existing customers into a fresh SQLite database, against the target "100,000 rows in under 60 s"
(scaled to the number of rows asked for), then the time of importing the same file again. It
checks that both runs report what they should (the first creates every good row and rejects every
bad one; the second creates nothing, changes nothing and rejects the same rows), that the database
then holds exactly one customer and one active referral code per good row, and that the re-run
kept every customer's code. The times include starting the command (Python, the application);
that start-up alone, timed on a file with no rows, is printed too.

The file has columns external_id,email,name,locale with multilingual names (Polish, Hungarian,
Greek, Bulgarian, ...), some quoted fields, locales in several spellings, some mixed-case email
domains, and a sprinkling of bad rows (0.1% invalid email addresses by default).

How to run it (from the repository root):

    .venv/bin/python bench/bench_import.py                 # 100,000 rows
    .venv/bin/python bench/bench_import.py --rows 10000    # a quicker run
    .venv/bin/python bench/bench_import.py --help          # bad rows, batch size, seed, ...

Needs: the service installed in the running Python (`pip install -e .`); nothing else. It works
in a temporary directory, removed at the end (even on Ctrl-C). Exit status: 0 when the runs
complete (with `--check`: only if the target is met and every check passes), 1 on a failure.
"""

import argparse
import contextlib
import csv
import hashlib
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench_public import BenchError, console_script, interrupt, run_process

ROOT = Path(__file__).resolve().parent.parent
TARGET_ROWS = 100_000
TARGET_SECONDS = 60.0
SUMMARY = re.compile(r"(\d+) created, (\d+) updated, (\d+) unchanged, (\d+) rejected")

FIRST_NAMES = [
    "Zofia",
    "Łukasz",
    "Małgorzata",
    "Grzegorz",
    "Erzsébet",
    "Ádám",
    "Gergő",
    "Zsófia",
    "Γιώργος",
    "Ελένη",
    "Νίκος",
    "Μαρία",
    "Мария",
    "Георги",
    "Йордан",
    "Цветелина",
    "Anna",
    "Jan",
    "Seán",
    "Chloé",
]
LAST_NAMES = [
    "Wójcik",
    "Krzyżanowska",
    "Szczęsny",
    "Nowak",
    "Szőke",
    "Tóth",
    "Kovács",
    "Papadopoulos",
    "Παπαδοπούλου",
    "Οικονόμου",
    "Иванова",
    "Петров",
    "Димитров",
    "Müller",
    "O'Brien",
    "Smith, Jr.",
    'Jones "JJ"',
]
LOCALES = ["pl", "pl-PL", "pl_PL", "hu", "hu-HU", "el", "el-GR", "bg", "bg-BG", "en-GB", "de", ""]
DOMAINS = ["example.com", "example.org", "mail.example.net", "Example.COM", "sklep.example.pl"]
BAD_EMAILS = [
    "no-at-sign.example.com",
    "two@@example.com",
    "spaces in@example.com",
    "@example.com",
    "nobody@",
]


@dataclass
class ImportRun:
    """One run of the import command: its time and the counts it reported."""

    seconds: float
    created: int
    updated: int
    unchanged: int
    rejected: int
    error_lines: int  # "line N: ..." reports on standard error


def generate(path: Path, rows: int, bad_fraction: float, seed: int) -> int:
    """Write the CSV; returns the number of good rows (the others have an invalid email)."""
    rng = random.Random(seed)
    step = round(1 / bad_fraction) if bad_fraction > 0 else 0
    bad = 0
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["external_id", "email", "name", "locale"])
        for number in range(1, rows + 1):
            if step and number % step == step // 2:
                email = BAD_EMAILS[bad % len(BAD_EMAILS)]
                bad += 1
            else:
                email = f"customer.{number}@{rng.choice(DOMAINS)}"
            name = (
                "" if rng.random() < 0.1 else f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
            )
            writer.writerow([f"cust-{number:07d}", email, name, rng.choice(LOCALES)])
    return rows - bad


def run_cli(argv: list[str], env: dict, timeout: float, tmp: Path, log: str):
    """Run a `referral-service` command with its output in files; seconds, stdout, stderr."""
    out, err = tmp / f"{log}.out", tmp / f"{log}.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        started = time.perf_counter()
        try:
            done = run_process(
                [console_script("referral-service"), *argv],
                timeout,
                cwd=ROOT,
                env=env,
                stdout=stdout,
                stderr=stderr,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(
                f"referral-service {' '.join(argv)} did not finish in {timeout:.0f} s"
            ) from None
        seconds = time.perf_counter() - started
    stdout_text = out.read_text(encoding="utf-8", errors="replace")
    stderr_text = err.read_text(encoding="utf-8", errors="replace")
    if done.returncode != 0:
        tail = "\n".join(stderr_text.splitlines()[-20:])
        raise BenchError(f"referral-service {' '.join(argv)} failed:\n{tail}")
    return seconds, stdout_text, stderr_text


def run_import(csv_path: Path, env: dict, args, tmp: Path, log: str) -> ImportRun:
    argv = ["customers", "import", str(csv_path)]
    if args.batch_size:
        argv += ["--batch-size", str(args.batch_size)]
    seconds, stdout, stderr = run_cli(argv, env, args.timeout, tmp, log)
    found = SUMMARY.search(stdout)
    if not found:
        raise BenchError(f"the import printed no summary:\n{stdout[-2000:]}")
    created, updated, unchanged, rejected = map(int, found.groups())
    error_lines = sum(1 for line in stderr.splitlines() if re.match(r"line \d+: ", line))
    return ImportRun(seconds, created, updated, unchanged, rejected, error_lines)


def database_state(database: Path) -> tuple[int, int, str]:
    """Customers, active codes, and a digest of every (external_id, active code) pair."""
    with contextlib.closing(sqlite3.connect(database)) as connection:
        customers = connection.execute("SELECT count(*) FROM customers").fetchone()[0]
        pairs = connection.execute(
            "SELECT c.external_id, r.code FROM customers c JOIN referral_codes r "
            "ON r.customer_id = c.id AND r.revoked_at IS NULL ORDER BY c.external_id"
        ).fetchall()
    digest = hashlib.sha256("\n".join(f"{e},{c}" for e, c in pairs).encode()).hexdigest()
    return customers, len(pairs), digest


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time `referral-service customers import` on a generated CSV, twice.",
    )
    parser.add_argument("--rows", type=int, default=TARGET_ROWS, help="data rows (100000)")
    parser.add_argument(
        "--bad-fraction", type=float, default=0.001, help="share of invalid emails (0.001)"
    )
    parser.add_argument("--batch-size", type=int, help="passed to the import (its default)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the file (1)")
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds allowed per import (900)"
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep the file, database, logs")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target or check fails")
    args = parser.parse_args(argv)
    if not 1 <= args.rows <= 5_000_000:
        parser.error("--rows must be 1 to 5,000,000")
    if not 0 <= args.bad_fraction <= 0.5:
        parser.error("--bad-fraction must be 0 to 0.5")
    if not 1 <= args.timeout <= 3600:
        parser.error("--timeout must be 1 to 3600 seconds")
    return args


def run(args, tmp: Path) -> bool:
    """The whole benchmark; True if the target is met and every check passes."""
    database = tmp / "bench.sqlite3"
    csv_path = tmp / "customers.csv"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SECRET_KEY_FALLBACKS")}
    env.update(DATABASE_URL=f"sqlite:///{database}", SECRET_KEY="bench-" + "b" * 32)
    env.update(CLICK_SPILL_DIR=str(database.parent / "clicks-spill"))
    target_seconds = TARGET_SECONDS * args.rows / TARGET_ROWS

    started = time.perf_counter()
    good = generate(csv_path, args.rows, args.bad_fraction, args.seed)
    size = csv_path.stat().st_size / 1e6
    print(
        f"generated {args.rows:,} rows ({good:,} good, {args.rows - good:,} with an invalid "
        f"email), {size:.1f} MB, in {time.perf_counter() - started:.1f} s"
    )
    run_cli(["db", "upgrade"], env, 120, tmp, "upgrade")
    empty = tmp / "empty.csv"
    empty.write_text("external_id,email,name,locale\n", encoding="utf-8")
    startup = run_import(empty, env, args, tmp, "startup").seconds
    print(f"start-up of the command (a file with no rows): {startup:.2f} s\n")

    print("importing (first run) ...", flush=True)
    first = run_import(csv_path, env, args, tmp, "first")
    after_first = database_state(database)
    print("importing the same file again (re-run) ...\n", flush=True)
    second = run_import(csv_path, env, args, tmp, "second")
    after_second = database_state(database)

    bad = args.rows - good
    header = (
        f"{'run':<22}{'seconds':>9}{'rows/s':>9}{'created':>9}{'updated':>9}"
        f"{'unchanged':>11}{'rejected':>10}  {'target':<14}met"
    )
    print(f"{header}\n{'-' * len(header)}")
    target_met = True
    for label, result in (("first import", first), ("re-run (same file)", second)):
        met = result.seconds < target_seconds
        target_met &= met
        print(
            f"{label:<22}{result.seconds:9.2f}{args.rows / result.seconds:9.0f}"
            f"{result.created:9d}{result.updated:9d}{result.unchanged:11d}{result.rejected:10d}"
            f"  {f'< {target_seconds:.0f} s':<14}{'yes' if met else 'NO'}"
        )
    print(
        f"(target: {TARGET_ROWS:,} rows in under {TARGET_SECONDS:.0f} s, i.e. "
        f"{TARGET_ROWS / TARGET_SECONDS:,.0f} rows/s; rows/s counts every data row, "
        "good and bad, and the times include the start-up)\n"
    )

    checks = [
        (
            "first run created every good row, rejected every bad one",
            (first.created, first.updated, first.unchanged, first.rejected) == (good, 0, 0, bad),
        ),
        (
            "re-run created and changed nothing, rejected the same rows",
            (second.created, second.updated, second.unchanged, second.rejected)
            == (0, 0, good, bad),
        ),
        (
            "each rejected row was reported with its line number",
            first.error_lines == bad and second.error_lines == bad,
        ),
        (
            f"customers in the database: {after_second[0]:,} (good rows: {good:,})",
            after_first[0] == after_second[0] == good,
        ),
        (
            f"active referral codes: {after_second[1]:,}, one per customer",
            after_first[1] == after_second[1] == good,
        ),
        ("the re-run kept every customer's code", after_first[2] == after_second[2]),
    ]
    all_passed = True
    for label, passed in checks:
        all_passed &= passed
        print(f"  [{'ok' if passed else 'FAILED'}] {label}")
    if not all_passed:
        print(f"  first run: {first}\n  re-run: {second}")
    print(
        f"\ntarget met: {'yes' if target_met else 'NO'}; checks: "
        f"{'all passed' if all_passed else 'SOME FAILED'}"
    )
    return target_met and all_passed


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="referral-bench-import-"))
    try:
        ok = run(args, tmp)
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
            print(f"kept the file, database and logs in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark suite's plumbing (bench/suite.py, bench/seed.py, bench/harness.py), without
any load: the table and its verdicts, the options, the resident memory read from /proc, and the
bulk seeding, checked through the service's own API (a seeded referrer's code attributes a
sign-up; a seeded pool friend's first purchase converts and earns a reward)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from referral_service.extensions import db
from tests.conftest import SECRET

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
import seed  # noqa: E402
import suite  # noqa: E402
from bench_public import Load, Server, WrkResult  # noqa: E402


def load(rps: float, p50: float = 10.0, p99: float = 20.0, cpu: float | None = 1.0) -> Load:
    """A load of 10 s at `rps` requests a second; `cpu` seconds of server CPU in all."""
    result = WrkResult(int(rps * 10), 10.0, 0, 0, p50, p99)
    return Load(result, cpu, 0.02)


# --- the table ---------------------------------------------------------------------------------


def test_ratio_row_compares_to_the_mean_of_the_baselines_around_it():
    row = suite.ratio_row(
        "redirect", "sqlite", "sync", load(300), load(500), load(700), suite.REDIRECT_TARGET
    )
    assert row.baseline == "600 req/s"
    assert row.ratio == "0.50"
    assert row.met is True
    assert row.tail_ok is True
    assert row.ok
    # 3000 requests at 1 s of CPU against 6000 at 1 s: each costs the service twice the CPU
    even = suite.ratio_row("redirect", "sqlite", "sync", load(300), load(600), load(600), 0.5)
    assert even.cpu_ratio == "0.50"
    assert (
        suite.ratio_row("r", "sqlite", "sync", load(300, cpu=None), load(6), load(6), 0.5).cpu_ratio
        == ""
    )

    missed = suite.ratio_row("redirect", "sqlite", "sync", load(299), load(600), load(600), 0.5)
    assert missed.met is False
    assert not missed.ok


def test_a_tail_over_three_times_the_median_misses_even_when_the_ratio_is_met():
    row = suite.ratio_row(
        "qr", "postgresql", "gthread", load(900, p50=10, p99=31), load(1000), load(1000), 0.7
    )
    assert row.met is True
    assert row.tail_ok is False
    assert not row.ok
    assert not suite.all_ok([row])
    line = suite.format_table([row]).splitlines()[2]
    assert "3.1x!" in line


def test_too_many_errors_miss_the_target():
    bad = Load(WrkResult(1000, 10.0, 0, 20, 10.0, 20.0), 1.0, 0.0)  # 2% answered >= 400
    row = suite.ratio_row("sign-up", "sqlite", "sync", bad, load(100), load(100), 0.4)
    assert row.met is False
    assert "20 errors in 1000 requests" in row.note


def test_memory_row():
    within = suite.rss_row("sqlite", "sync", [90 * 2**20, 120 * 2**20])
    assert (within.figure, within.met) == ("120 MB", True)
    assert "90 MB, 120 MB" in within.note
    assert suite.rss_row("sqlite", "sync", [150 * 2**20]).met is False
    assert suite.rss_row("sqlite", "sync", []).met is None


def test_the_table_has_a_line_a_row_with_its_notes_and_every_column():
    rows = [
        suite.ratio_row("redirect GET /r/<code>", "sqlite", "sync", load(1), load(3), load(3), 0.5),
        suite.Row("PostgreSQL loads", "postgresql", note="skipped: set BENCH_DATABASE_URL"),
        suite.Row("insight vs stats, a year", figure="not measured", target="< 2.0x"),
    ]
    text = suite.format_table(rows)
    lines = text.splitlines()
    for name, _, _ in suite.COLUMNS:
        assert name in lines[0]
    assert set(lines[1]) == {"-"}
    assert lines[2].startswith("redirect GET /r/<code>") and " NO " in lines[2]
    assert lines[3].startswith("PostgreSQL loads")
    assert lines[4] == "    skipped: set BENCH_DATABASE_URL"
    assert "not measured" in lines[5]
    assert suite.all_ok(rows[1:])  # a skipped row and a row not measured miss nothing
    assert not suite.all_ok(rows)
    # the redirect's ratio missed, its tail met; two rows without a figure
    assert suite.verdict(rows) == (
        "all targets met: NO (1 met, 1 missed, 2 rows not measured or without a target)"
    )
    assert suite.verdict(rows[1:]).startswith("all targets met: yes (0 met, 0 missed, 2 rows")


STATS_OUTPUT = """\
sqlite; GET /api/v1/stats for a year, median of 20 after a warm-up
      clicks   fill s  roll-up s   p50 ms   max ms  ratio
      10,000      0.3        0.2    12.50    20.00   1.00
   1,000,000     21.0       40.1    30.00    41.00   2.40
target: 2.0x of the first step at 1,000,000 clicks: MISSED (2.40x)
"""


def test_the_stats_row_reads_the_stats_benchmarks_table():
    steps = suite.parse_stats(STATS_OUTPUT)
    assert steps == [(10_000, 12.5), (1_000_000, 30.0)]
    row = suite.stats_row("sqlite", steps)
    assert (row.figure, row.baseline, row.ratio, row.met) == ("30.0 ms", "12.5 ms", "2.40x", False)
    assert suite.stats_row("sqlite", [(10_000, 12.5), (1_000_000, 20.0)]).met is True
    assert row.measure == "stats at 1M vs 10k clicks"
    assert (suite.short(10_000), suite.short(2_000_000), suite.short(1_500)) == (
        "10k",
        "2M",
        "1,500",
    )
    failed = suite.stats_row("postgresql", [], "bench_stats_scale.py exited 1")
    assert failed.met is False and "exited 1" in failed.note


INSIGHT_OUTPUT = """\
sqlite; a year of a shop: 100,000 customers, 5,000,000 visits (516,690 click rows kept, the \
others rolled up), 20,000 referrals (12,000 converted), 153,769 purchases; filled in 60.1 s
GET for a year (from 2025-11-30T17:02:50), 10 calls each after a warm-up
endpoint                   p50 ms   max ms
/api/v1/stats              150.00   180.00
/api/v1/insights           270.00   300.00
insight / stats: 1.80x (target: under 2.0x): met
result: db=sqlite customers=100000 visits=5000000 stats_ms=150.00 insight_ms=270.00 ratio=1.80 \
figures=ok
"""


def test_the_insight_row_reads_the_insight_benchmarks_result_line():
    result = suite.parse_insight(INSIGHT_OUTPUT)
    assert result == suite.InsightResult(100_000, 5_000_000, 150.0, 270.0, True)
    row = suite.insight_row("sqlite", result)
    assert (row.figure, row.baseline, row.ratio, row.target, row.met) == (
        "270.0 ms",
        "150.0 ms",
        "1.80x",
        "< 2.0x",
        True,
    )
    assert row.measure == "insight vs stats, a year"
    assert "100k customers and 5M visits" in row.note
    slow = suite.InsightResult(10_000, 500_000, 10.0, 20.0, True)
    assert suite.insight_row("postgresql", slow).met is False  # 2x is not under 2x
    wrong = suite.InsightResult(10_000, 500_000, 10.0, 12.0, False)
    missed = suite.insight_row("postgresql", wrong)
    assert missed.met is False and "differ from the plain counts" in missed.note
    assert suite.parse_insight("Traceback (most recent call last):\n") is None
    failed = suite.insight_row("sqlite", None, "bench_insight_scale.py exited 1; ")
    assert (failed.figure, failed.met, failed.note) == (
        "failed",
        False,
        "bench_insight_scale.py exited 1",
    )


def test_the_insight_benchmark_runs_and_checks_its_figures_at_a_small_size():
    """bench_insight_scale.py end to end on a small SQLite year: it fills, times both
    endpoints, finds insight's figures equal to its plain counts, and the suite reads it."""
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_insight_scale.py"),
            *("--customers", "300", "--visits", "3000", "--repeat", "1", "--no-check"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all equal" in done.stdout
    result = suite.parse_insight(done.stdout)
    assert result is not None and result.figures_ok
    assert (result.customers, result.visits) == (300, 3000)
    assert result.stats_ms > 0 and result.insight_ms > 0


def test_options():
    quick = suite.parse_args(["--quick"])
    assert (quick.duration, quick.warmup) == (2, 1)
    assert quick.scale_sizes == [10_000, 100_000]
    assert quick.stats_clicks == "10000,100000"
    assert quick.insight_size == (10_000, 500_000)
    assert quick.kinds == ["sync", "gthread"]
    assert quick.databases == ["sqlite", "postgresql"]
    full = suite.parse_args(["--only", "sqlite", "--kinds", "gthread"])
    assert full.scale_sizes == [10_000, 1_000_000]
    assert full.stats_clicks == "10000,1000000"
    assert full.insight_size == (100_000, 5_000_000)
    assert suite.parse_args(["--insight-size", "2000,20_000"]).insight_size == (2_000, 20_000)
    assert (full.databases, full.kinds) == (["sqlite"], ["gthread"])
    for wrong in (
        ["--kinds", "gevent"],
        ["--scale-sizes", "10000"],
        ["--stats-clicks", "1e6"],
        ["--insight-size", "100000"],
        ["--insight-size", "10,1000"],
    ):
        with pytest.raises(SystemExit):
            suite.parse_args(wrong)


def test_gunicorn_takes_the_same_settings_for_every_application():
    sync = harness.gunicorn_argv("bare_app:app", BENCH, 8001, 2, "sync")
    gthread = harness.gunicorn_argv("bare_app:app", BENCH, 8001, 2, "gthread", threads=4)
    assert sync[sync.index("--threads") + 1] == "1"
    assert gthread[gthread.index("--worker-class") + 1] == "gthread"
    assert gthread[gthread.index("--threads") + 1] == "4"
    with pytest.raises(ValueError):
        harness.gunicorn_argv("bare_app:app", BENCH, 8001, 2, "gevent")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_worker_memory_is_read_for_the_process_group_but_its_leader(tmp_path):
    # a leader in a session of its own with one child, as a gunicorn master and its worker
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', " + (
        "'import time; x = bytearray(40 * 2**20); time.sleep(30)']); time.sleep(30)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    server = Server("probe", [], tmp_path, dict(os.environ), 0, tmp_path / "log")
    server.proc = proc
    try:
        sizes = []
        for _ in range(100):
            sizes = harness.worker_rss(server)
            if sizes and sizes[0] > 40 * 2**20:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        assert len(sizes) == 1
        assert 40 * 2**20 < sizes[0] < 200 * 2**20
    finally:
        server.stop(timeout=5)
    assert harness.worker_rss(server) == []


# --- the seeding -------------------------------------------------------------------------------


def test_seeded_rows_are_what_the_service_works_with(app, client, shop):
    with app.app_context():
        engine = db.engine
        referrers = seed.seed_referrers(engine, 3, SECRET)
        seed.seed_pool(engine, referrers, 0, 5)
        seed.seed_history(engine, referrers, 40)
        counts = seed.counts(engine)
    assert counts["customers"] == 3 + 5 + 40
    assert counts["referrals"] == 5 + 40
    assert counts["signups"] == 5 + 40
    assert 0 < counts["rewards"] <= counts["purchases"]

    # a seeded referrer's code attributes a new friend's sign-up
    answer = client.post(
        "/api/v1/signups",
        json={
            "external_id": "new-friend",
            "email": "new@example.com",
            "referral_code": referrers[1].code,
        },
        headers=shop,
    )
    assert answer.status_code == 201, answer.get_json()
    assert answer.get_json()["attributed"] is True

    # a seeded pool friend's first purchase converts and earns the referrer a reward
    answer = client.post(
        "/api/v1/purchases",
        json={
            "order_id": "o-1",
            "customer_external_id": "pool-00000003",
            "amount": "49.90",
            "currency": "EUR",
        },
        headers=shop,
    )
    body = answer.get_json()
    assert answer.status_code == 201, body
    assert body["first_purchase"] is True
    assert body["referral"]["status"] == "converted"
    assert any(r["beneficiary"] == "referrer" for r in body["rewards"])

    # ids written explicitly leave the service's own inserts room (PostgreSQL's sequences too)
    with app.app_context():
        assert seed.counts(db.engine)["customers"] == 3 + 5 + 40 + 1

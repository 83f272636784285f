"""Click roll-ups and pruning: every figure of the funnel, of a customer's counters and of their
export is the same before and after `roll_up` and `prune`; two roll-ups at once count each click
once; a late click is counted once; the revisit rule and click ids keep working."""

import random
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select

from referral_service.cli import main
from referral_service.domain import privacy, rollups, stats
from referral_service.errors import ValidationFailed
from referral_service.extensions import db
from referral_service.models import Click, ClickDay, Customer, ReferralCode, utcnow
from tests.journey_helpers import click, enrol, sign_up

WINDOW = 30  # the default attribution window
CHANNELS = ("link", "qr", "email", "whatsapp")
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def referrers(count: int = 3) -> list[tuple[int, int]]:
    """`count` enrolled referrers: `(customer id, code id)` each."""
    from tests.factories import customer

    made = []
    for n in range(count):
        card = customer(f"ref-{n}")
        made.append(
            db.session.execute(
                select(Customer.id, ReferralCode.id)
                .join(ReferralCode, ReferralCode.customer_id == Customer.id)
                .where(Customer.external_id == card.external_id)
            ).one()
        )
    db.session.commit()
    return [tuple(row) for row in made]


_ids = iter(range(10**9))


def add_clicks(people, times) -> None:
    """A click at each of `times`, on one of `people`'s links, through one of CHANNELS."""
    chance = random.Random(len(times))
    rows = []
    for at in times:
        referrer_id, code_id = chance.choice(people)
        rows.append(
            {
                "id": f"t{next(_ids):021d}",
                "code_id": code_id,
                "referrer_id": referrer_id,
                "channel": chance.choice(CHANNELS),
                "occurred_at": at,
            }
        )
    db.session.execute(insert(Click), rows)
    db.session.commit()


def spread(now: datetime, days: int, count: int, seed: int = 7) -> list[datetime]:
    """`count` times in the `days` before `now`, and some right at midnight (the edges)."""
    chance = random.Random(seed)
    times = [now - timedelta(seconds=chance.uniform(0, days * 86400)) for _ in range(count)]
    times += [rollups.midnight(now) - n * DAY for n in (1, 2, 45)]
    times += [rollups.midnight(now) - n * DAY - timedelta(microseconds=1) for n in (3, 46)]
    return times


def periods(now: datetime) -> dict[str, tuple[datetime, datetime]]:
    today = rollups.midnight(now)
    return {
        "a year, whole days": (today - 365 * DAY, today),
        "old whole days": (today - 80 * DAY, today - 40 * DAY),
        "recent, mid-day to mid-day": (now - 20 * DAY + 3 * HOUR, now - 2 * DAY - 5 * HOUR),
        "into today": (today - 9 * DAY + 13 * HOUR, now),
        "inside one day": (today - 3 * DAY + 2 * HOUR, today - 3 * DAY + 15 * HOUR),
        "across one midnight": (today - 5 * DAY - 2 * HOUR, today - 5 * DAY + 7 * HOUR),
        "to the future": (today - 12 * DAY - 30 * HOUR, now + 3 * DAY),
        "old start, recent end": (today - 70 * DAY, now - 6 * HOUR),
    }


def figures(app, client, admin, now) -> dict:
    """Every figure that counts clicks: the funnel of each period (domain and API), each
    referrer's counter (domain and API) and the export's visits of their links."""
    seen = {}
    for name, (start, end) in periods(now).items():
        funnel = stats.funnel(start, end)
        seen[name] = (funnel["clicks"], {c: v["clicks"] for c, v in funnel["by_channel"].items()})
        answer = client.get(
            "/api/v1/stats",
            query_string={"from": start.isoformat(), "to": end.isoformat()},
            headers=admin,
        )
        assert answer.status_code == 200, answer.json
        assert answer.json["clicks"] == funnel["clicks"]
    for referrer_id, external_id in db.session.execute(
        select(Customer.id, Customer.external_id).order_by(Customer.id)
    ).all():
        answer = client.get(f"/api/v1/customers/{external_id}", headers=admin)
        seen[external_id] = (
            stats.customer_stats(referrer_id)["clicks"],
            answer.json["stats"]["clicks"],
            privacy.export(external_id)["link_visits"],
        )
    db.session.remove()
    return seen


def click_rows() -> int:
    return db.session.scalar(select(func.count()).select_from(Click))


def test_figures_are_the_same_after_roll_up_and_prune(app, client, admin):
    now = utcnow()
    with app.app_context():
        people = referrers()
        add_clicks(people, spread(now, 90, 600))
        before = figures(app, client, admin, now)
        assert before["a year, whole days"][0] > 500  # the test has something to compare
        assert before["inside one day"][0] > 0 and before["across one midnight"][0] > 0

        rolled = rollups.roll_up(now)
        assert rolled == db.session.scalar(
            select(func.count()).where(Click.occurred_at < rollups.hour_start(now))
        )
        assert figures(app, client, admin, now) == before

        kept_from = rollups.midnight(now) - (WINDOW + 7) * DAY
        done = rollups.prune(WINDOW, now=now)
        assert done["pruned_until"] == kept_from and done["pruned"] > 200
        assert not db.session.scalar(select(func.count()).where(Click.occurred_at < kept_from))
        assert figures(app, client, admin, now) == before

        assert rollups.roll_up(now) == 0 and rollups.prune(WINDOW, now=now)["pruned"] == 0
        assert figures(app, client, admin, now) == before


def test_a_late_click_is_counted_once(app, client, admin):
    now = utcnow()
    yesterday = rollups.midnight(now) - DAY + 5 * HOUR
    with app.app_context():
        people = referrers(1)
        add_clicks(people, [yesterday, yesterday + HOUR])
        rollups.roll_up(now)
        add_clicks(people, [yesterday + 2 * HOUR])  # written late (a replayed buffer)
        period = (rollups.midnight(now) - 2 * DAY, rollups.midnight(now))
        assert stats.funnel(*period)["clicks"] == 3
        assert stats.customer_stats(people[0][0])["clicks"] == 3
        assert rollups.roll_up(now) == 1
        assert stats.funnel(*period)["clicks"] == 3
        assert stats.customer_stats(people[0][0])["clicks"] == 3
        assert db.session.scalar(select(func.sum(ClickDay.clicks))) == 3


def test_a_boundary_inside_a_pruned_hour_reads_the_whole_hour(app):
    """The documented limit: after pruning, a pruned hour counts when it starts in the period;
    whole hours and days still count exactly."""
    now = utcnow()
    old = rollups.midnight(now) - 60 * DAY
    minute = timedelta(minutes=1)
    times = [old + 2 * HOUR + 10 * minute, old + 2 * HOUR + 40 * minute, old + 20 * HOUR]
    with app.app_context():
        people = referrers(1)
        add_clicks(people, [*times, old + DAY + 2 * HOUR])
        before = [
            stats.funnel(old + 2 * HOUR + 30 * minute, old + 20 * HOUR + 30 * minute)["clicks"],
            stats.funnel(old + HOUR + 50 * minute, old + 2 * HOUR + 20 * minute)["clicks"],
            stats.funnel(old + 2 * HOUR, old + 21 * HOUR)["clicks"],
            stats.funnel(old, old + 2 * DAY)["clicks"],
        ]
        assert before == [2, 1, 3, 4]
        rollups.prune(WINDOW, now=now)
        assert not click_rows()
        after = [
            stats.funnel(old + 2 * HOUR + 30 * minute, old + 20 * HOUR + 30 * minute)["clicks"],
            stats.funnel(old + HOUR + 50 * minute, old + 2 * HOUR + 20 * minute)["clicks"],
            stats.funnel(old + 2 * HOUR, old + 21 * HOUR)["clicks"],
            stats.funnel(old, old + 2 * DAY)["clicks"],
        ]
        assert after == [1, 2, 3, 4]


def run_at_once(app, jobs) -> list:
    """Run each job in its own thread and app context, released together; their results."""
    barrier = threading.Barrier(len(jobs))
    results: list = [None] * len(jobs)

    def run(n, job):
        with app.app_context():
            barrier.wait()
            try:
                results[n] = job()
            finally:
                db.session.remove()

    threads = [threading.Thread(target=run, args=(n, job)) for n, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_two_roll_ups_at_once_count_each_click_once(app):
    now = utcnow()
    with app.app_context():
        people = referrers(4)
        add_clicks(people, spread(now, 20, 3000, seed=11))
        expected = db.session.scalar(
            select(func.count()).where(Click.occurred_at < rollups.hour_start(now))
        )
        db.session.remove()
    counted = run_at_once(app, [lambda: rollups.roll_up(now, batch=250)] * 2)
    with app.app_context():
        assert sum(counted) == expected
        assert db.session.scalar(select(func.sum(ClickDay.clicks))) == expected
        assert stats.funnel(now - 60 * DAY, rollups.hour_start(now))["clicks"] == expected
        assert sum(stats.customer_stats(r)["clicks"] for r, _ in people) == click_rows()


def test_keeping_fewer_days_than_the_attribution_window_is_refused(app, runner):
    with app.app_context(), pytest.raises(ValidationFailed):
        rollups.prune(WINDOW, keep_days=WINDOW - 1)
    refused = runner.invoke(main, ["clicks", "prune", "--keep-days", "29"])
    assert refused.exit_code == 1
    assert refused.stderr == (
        "Error: keep_days: Must be at least the attribution window (30 days).\n"
    ), refused.stderr
    for bad in ("-1", "x", "\u0661"):
        assert runner.invoke(main, ["clicks", "prune", "--keep-days", bad]).exit_code == 2


def test_the_commands_roll_up_and_prune(app, runner):
    now = utcnow()
    with app.app_context():
        people = referrers(1)
        add_clicks(people, [now - 100 * DAY, now - 50 * DAY, now - 2 * DAY, now])
    rolled = runner.invoke(main, ["clicks", "roll-up"])
    assert rolled.exit_code == 0, rolled.output
    assert rolled.stdout.startswith("3 clicks rolled up")
    pruned = runner.invoke(main, ["clicks", "prune", "--keep-days", "60"])
    assert pruned.exit_code == 0, pruned.output
    assert "1 click rows dated before" in pruned.stdout
    with app.app_context():
        assert click_rows() == 3
        assert stats.customer_stats(people[0][0])["clicks"] == 4


def test_the_worker_jobs_roll_up_and_prune(app):
    now = utcnow()
    with app.app_context():
        people = referrers(1)
        add_clicks(people, [now - 100 * DAY, now - 2 * DAY])
        tasks = app.extensions["tasks"]
        assert tasks.roll_up(now) == 2
        assert tasks.prune_clicks(now)["pruned"] == 1
        assert stats.customer_stats(people[0][0])["clicks"] == 2


def test_revisits_and_click_ids_keep_working_over_roll_ups(app, client, shop):
    code = enrol(client, shop, "ann")
    address = "2001:db8::77"
    first = click(client, code, via="qr", address=address)
    again = click(client, code, via="qr", address=address)
    with app.app_context():
        app.extensions["clicks"].flush()
        assert click_rows() == 1  # the same visitor within the hour counts once
        tomorrow = datetime.combine(utcnow().date() + DAY, datetime.min.time(), tzinfo=UTC)
        assert rollups.roll_up(tomorrow + HOUR) == 1
        assert rollups.roll_up(tomorrow + HOUR) == 0
        assert stats.funnel(tomorrow - 2 * DAY, tomorrow)["by_channel"]["qr"]["clicks"] == 1
        db.session.remove()
    assert first and again
    answer = sign_up(client, shop, "bo", click_id=again)
    assert answer.status_code == 201 and answer.json["attributed"] is True

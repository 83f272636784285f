"""A property of the ledger: over any sequence of rewards, refunds, rejections and payouts, no
payout line is ever negative, and once payouts cover the clawbacks, the total net paid is the
total earned minus the total clawed back.

The sequences run through the domain functions (the doors only shape their answers), on SQLite
and PostgreSQL, with a modest number of examples so that the test takes seconds.
"""

from contextlib import suppress
from datetime import timedelta
from decimal import Decimal

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from referral_service.domain import attribution, customers, payouts, program, refunds, rewards
from referral_service.errors import Conflict, ValidationFailed
from referral_service.extensions import db
from referral_service.models import Clawback, Customer, Payout, Reward, utcnow
from tests.conftest import empty_tables

REFERRERS = ("r-0", "r-1")
ADMIN, SECOND = "admin:first@example.com", "admin:second@example.com"

earn = st.tuples(st.just("earn"), st.sampled_from(range(len(REFERRERS))), st.integers(100, 30000))
refund = st.tuples(
    st.just("refund"),
    st.integers(0, 20),  # which earlier order (modulo how many there are)
    st.one_of(st.just("full"), st.integers(1, 99)),  # all, or a percent more of the order
    st.sampled_from(["refund_id", "refunded_total"]),
)
reject = st.tuples(st.just("reject"), st.integers(0, 20))
batch = st.tuples(st.just("batch"))
pay = st.tuples(st.just("pay"))
payout = st.tuples(st.just("payout"))  # a batch made and paid at once
# rounds of business between payouts, so that paid rewards are refunded and later payouts net
rounds = st.lists(
    st.tuples(
        st.lists(earn, min_size=1, max_size=3),
        st.lists(st.one_of(refund, refund, reject), max_size=3),
        st.lists(st.one_of(payout, payout, batch, pay), min_size=1, max_size=2),
    ),
    min_size=2,
    max_size=5,
)
operations = rounds.map(lambda made: [step for round_ in made for part in round_ for step in part])


class Ledger:
    """The sequence's state as the test sees it: orders made, batches made and not yet paid."""

    def __init__(self):
        self.orders: list[tuple[str, int]] = []  # (order id, amount in cents)
        self.unpaid: list[int] = []
        self.refund_ids = 0

    def earn(self, referrer: int, cents: int, tag: str = "") -> None:
        n = len(self.orders)
        friend = f"f-{n}{tag}"
        code = customers.get(REFERRERS[referrer]).code
        past = utcnow() - timedelta(days=2)
        answer = attribution.signup(
            friend, f"friend{n}{tag}@example.org", referral_code=code, occurred_at=past
        )
        assert answer.attributed, answer
        order_id = f"o-{n}{tag}"
        rewards.record_purchase(
            order_id,
            friend,
            str(Decimal(cents) / 100),
            "EUR",
            occurred_at=past + timedelta(hours=1),
        )
        self.orders.append((order_id, cents))

    def refund(self, which: int, how, kind: str) -> None:
        if not self.orders:
            return
        order_id, cents = self.orders[which % len(self.orders)]
        if how == "full":
            refunds.refund(order_id)
            return
        part = Decimal(cents * how // 100) / 100
        if kind == "refund_id":
            self.refund_ids += 1
            with suppress(ValidationFailed):  # more than is left: refused whole
                refunds.refund(order_id, str(part), refund_id=f"re-{self.refund_ids}")
            return
        refunds.refund(order_id, refunded_total=str(part))  # no-op at or below what is applied

    def reject(self, which: int) -> None:
        ids = db.session.scalars(
            select(Reward.id).where(Reward.status.in_(rewards.OPEN)).order_by(Reward.id)
        ).all()
        if ids:
            rewards.reject(ids[which % len(ids)], ADMIN, "checked: not a real friend")

    def batch(self) -> None:
        rewards.mature(now=utcnow() + timedelta(days=1))
        for reward_id in db.session.scalars(
            select(Reward.id).where(Reward.status == "awaiting_approval")
        ).all():
            rewards.approve(reward_id, ADMIN)
        try:
            made = payouts.create(ADMIN, all_approved=True)
        except Conflict:  # nothing approved is waiting
            return
        check_lines(made)
        self.unpaid.append(made["id"])

    def payout(self) -> None:
        self.batch()
        self.pay()

    def pay(self) -> None:
        while self.unpaid:
            payout_id = self.unpaid.pop(0)
            summary = payouts.get(payout_id)
            check_lines(summary)
            if summary["reward_count"] == 0:  # emptied by refunds or rejections
                try:
                    payouts.mark_paid(payout_id, "SEPA", ADMIN)
                except Conflict:
                    continue
                raise AssertionError("an empty batch was marked paid")
            if summary["needs_approval"]:
                payouts.approve(payout_id, SECOND)
            check_lines(payouts.mark_paid(payout_id, "SEPA", ADMIN))
            return


def check_lines(summary: dict) -> None:
    for line in summary["lines"]:
        gross, clawed, net = (Decimal(line[key]) for key in ("gross", "clawbacks", "net"))
        assert net >= 0 and clawed >= 0 and net == gross - clawed, line


def paid_net() -> Decimal:
    total = Decimal(0)
    for payout_id in db.session.scalars(select(Payout.id).where(Payout.status == "paid")):
        for line in payouts.get(payout_id)["lines"]:
            total += Decimal(line["net"])
    return total


def minor_sum(column, *where) -> Decimal:
    return (
        Decimal(db.session.scalar(select(func.coalesce(func.sum(column), 0)).where(*where))) / 100
    )


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=operations)
@example(  # the case: 10.00 clawed back, then payouts of 6.00 and 20.00
    steps=[
        ("earn", 0, 10000),
        ("payout",),
        ("refund", 0, "full", "refund_id"),
        ("earn", 0, 6000),
        ("payout",),
        ("earn", 0, 20000),
        ("payout",),
    ]
)
def test_net_paid_is_earned_minus_clawed_back_and_no_line_is_negative(app, steps):
    with app.app_context():
        empty_tables()
        program.update(
            {
                "referrer_reward": {"type": "percent", "value": "10"},
                "friend_reward": {"type": "fixed", "value": "1.00"},
                "hold_days": 0,
                "min_order_amount": "2.00",
            }
        )
        for external_id in REFERRERS:
            customers.enrol(external_id, f"{external_id}@example.com")
        ledger = Ledger()
        for step in steps:
            getattr(ledger, step[0])(*step[1:])
        while ledger.unpaid:
            ledger.pay()
        # payouts cover every open clawback: each beneficiary earns enough once more
        owing = db.session.execute(
            select(Clawback.customer_id, func.sum(Clawback.amount_minor - Clawback.settled_minor))
            .group_by(Clawback.customer_id)
            .having(func.sum(Clawback.amount_minor - Clawback.settled_minor) > 0)
        ).all()
        for customer_id, open_minor in owing:
            external_id = db.session.get(Customer, customer_id).external_id
            referrer = REFERRERS.index(external_id) if external_id in REFERRERS else None
            if referrer is None:  # a friend's reward clawed back: the friend refers someone
                continue
            ledger.earn(referrer, int(open_minor) * 10 + 1000, tag="-cover")
        ledger.batch()
        while ledger.unpaid:
            ledger.pay()
        earned = minor_sum(Reward.amount_minor, Reward.status == "paid")
        clawed = minor_sum(Clawback.amount_minor)
        still_open = minor_sum(Clawback.amount_minor - Clawback.settled_minor)
        friends_open = minor_sum(
            Clawback.amount_minor - Clawback.settled_minor,
            Clawback.customer_id.not_in(
                select(Customer.id).where(Customer.external_id.in_(REFERRERS))
            ),
        )
        assert still_open == friends_open  # the referrers' clawbacks are all netted
        assert paid_net() == earned - clawed + still_open
        for reward_id, amount in db.session.execute(
            select(Reward.id, Reward.amount_minor).where(Reward.status == "paid")
        ):
            assert payouts.clawed_back([reward_id]).get(reward_id, 0) <= amount

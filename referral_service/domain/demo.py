"""Demo data: one year (ending now) of a small shop's referral program, realistic and clearly fake.

`fill` makes customers with names in the five languages of the share pages (Faker), emails on
the domains reserved for examples (RFC 2606) and external ids that say `demo-`; share-link
visits by channel over the year; friends signing up through those visits and through typed
codes; first and repeat purchases, referred customers buying again a little more often and
spending a little more; refunds before and after payout; rewards matured, approved and
rejected; monthly payout batches, paid.

What is plain data is written in bulk: the customers enrolled before the year (with their
codes) and the share-link visits. The visits are passed through the rules of the real click
path first (`clicks.is_bot`, the revisit within `clicks.REVISIT_WINDOW`, the visitor's row id
`clicks.visitor_click_id`), so that the clicks table holds exactly what the service would have
stored; the roll-ups are then counted as the worker would. Everything else goes through the
domain's own steps, dated by `now`/`occurred_at`: sign-ups (attribution and risk signals),
purchases (conversions, rewards, holds, events), refunds (reversals, clawbacks), maturing,
the admins' approvals and rejections, and payouts. So the funnel, the rewards queue, the
ledger and the insight read the demo's year as they would read a real one.

The demo never writes beside real customers unless forced, and never changes a row it did not
write (the program settings aside, and only while they are still the defaults).
"""

import heapq
import ipaddress
import math
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import accumulate

from faker import Faker
from faker.decode import unidecode
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from referral_service.domain import (
    attribution,
    clicks,
    fraud,
    payouts,
    program,
    refunds,
    rewards,
    rollups,
)
from referral_service.domain.codes import signer
from referral_service.domain.customers import email_key
from referral_service.domain.money import minor_digits
from referral_service.domain.unit import unit_of_work
from referral_service.errors import Conflict
from referral_service.extensions import db
from referral_service.models import (
    Clawback,
    Click,
    Customer,
    Program,
    Purchase,
    Referral,
    ReferralCode,
    Refund,
    Reward,
    Signup,
    utcnow,
)
from referral_service.models.base import end_read

PREFIX = "demo-"  # every demo customer's external id, order id and refund id starts with it
DEFAULT_CUSTOMERS = 2_000
MIN_CUSTOMERS = 50
MAX_CUSTOMERS = 20_000  # about 400,000 visits and 1.3 GB of memory at most
DEFAULT_SEED = 2026
YEAR = timedelta(days=365)

# the share pages' languages and the Faker locales their names come from, with their weights
LANGUAGES = {
    "en": (("en_US", "en_GB"), 30),
    "pl": (("pl_PL",), 25),
    "hu": (("hu_HU",), 15),
    "el": (("el_GR",), 15),
    "bg": (("bg_BG",), 15),
}
FAMILY_NAME_FIRST = ("hu",)  # Hungarian names are written family name first
EMAIL_DOMAINS = ("example.com", "example.org", "example.net", "mail.example", "post.example")

# channels: share of the visits, how readily a visit becomes a sign-up (relative), and the share
# of extra visits by link-preview bots and crawlers (which the click path does not count)
CHANNELS = {
    "whatsapp": (24, 1.6, 0.35),
    "link": (16, 1.0, 0.15),
    "facebook": (15, 0.6, 0.30),
    "email": (12, 1.4, 0.05),
    "copy": (10, 1.1, 0.05),
    "qr": (8, 1.3, 0.0),
    "messenger": (5, 1.2, 0.25),
    "sms": (5, 1.5, 0.10),
    "x": (5, 0.4, 0.40),
}
REFERER_HOSTS = {"facebook": "l.facebook.com", "x": "t.co", "email": "mail.example"}
PEOPLE_AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-A546B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/125.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
)
BOT_AGENTS = (
    "WhatsApp/2.24.12.78 A",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Twitterbot/1.0",
    "TelegramBot (like TwitterBot)",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
)
REPEAT_SHARE = 0.15  # visits followed by the same person's visit again within the hour
VISITS_PER_CUSTOMER = 20  # share-link visits stored, per customer of the demo
SHARERS = 0.35  # customers who share their link at all

# the customers: enrolled before the year, new through the shop over it, friends of referrers
ENROLLED, NEW, FRIENDS = 0.45, 0.30, 0.25
TYPED_CODE_SHARE = 0.15  # friends who type the code instead of following a link
SELF_REFERRAL_SHARE = 0.03  # "friends" with their referrer's name (a risk signal)
# chances of buying: in the year (enrolled), soon after signing up (new customers, friends)
BUYS = {"enrolled": 0.6, "new": 0.85, "friend": 0.75}
# chance of buying again within 90 days of an order, by whether the customer was referred; the
# year's figure comes out near 25% against 35%, as the last months' customers had less time
REPEAT_90D = {False: 0.32, True: 0.45}
LATER_ORDER = 0.15  # chance of an order later than 90 days instead
MEDIAN_ORDER = Decimal("42.00")  # median order value in the program currency
REFERRED_SPEND = 1.1  # referred customers' orders are this much larger
REFUND_SHARE = 0.05
SHOWN_REFUNDS = 2  # refunds of converting orders at least, before payout and after
SHOWN_RECENT = 2  # friends at least who sign up 15 to 20 days before the end
RECENT = timedelta(days=21)  # friends of the last weeks buy the next day: their rewards wait
PARTIAL_REFUND_SHARE = 0.4
REJECT_SHARE = 0.04  # rewards an admin rejects beside those flagged by a risk signal
REJECT_REASONS = (
    "The order was cancelled by phone.",
    "Same household as the referrer.",
    "The friend was a customer of the shop before, under another email.",
)
OWNER = f"admin:owner@{EMAIL_DOMAINS[3]}"  # the demo's two admins (not accounts: names only)
APPROVER = f"admin:approver@{EMAIL_DOMAINS[3]}"

SETTINGS = {  # the program, when its settings are still the defaults
    "currency": "EUR",
    "referrer_reward": {"type": "fixed", "value": "10.00"},
    "friend_reward": {"type": "fixed", "value": "5.00"},
    "min_order_amount": "20.00",
    "hold_days": 14,
    "auto_approve_max_amount": "5.00",  # the friends' clean rewards; the referrers' are reviewed
    "attribution_window_days": 30,
    "conversion_window_days": 90,
}
MILESTONES = [  # the referrers' milestones, when the program has them
    {"friends": 3, "reward": {"type": "fixed", "value": "15.00"}},
    {"friends": 10, "reward": {"type": "fixed", "value": "50.00"}},
]


@dataclass
class DemoReport:
    """What `fill` made: counts of rows, rewards by status, and how long it took (seconds)."""

    customers: int = 0
    enrolled: int = 0
    signups: int = 0
    referred: int = 0
    visits: int = 0  # share-link visits stored as clicks
    bot_visits: int = 0  # visits by bots, answered but not counted
    repeat_visits: int = 0  # visits again within the hour, counted once
    purchases: int = 0
    refunds: int = 0
    clawbacks: int = 0
    rewards: dict = field(default_factory=dict)  # {status: count}
    payouts: int = 0
    settings_changed: bool = False
    seconds: float = 0.0


@dataclass
class _Person:
    number: int
    kind: str  # enrolled, new, friend
    language: str
    name: str
    email: str
    created_at: datetime
    id: int | None = None
    code_id: int | None = None
    code: str | None = None
    referred: bool = False
    flagged: bool = False  # signed up with a risk signal the admins reject


def counts() -> tuple[int, int]:
    """`(real, demo)`: how many customers are not demo data, and how many are."""
    demo = Customer.external_id.startswith(PREFIX, autoescape=True)
    real = db.session.scalar(select(func.count()).where(~demo)) or 0
    made = db.session.scalar(select(func.count()).where(demo)) or 0
    end_read(db.session)  # end the read: the steps below open their own write transactions
    return real, made


def refusal(force: bool) -> str | None:
    """Why `fill` would not run on this database without `force`, or None when it would."""
    if force:
        return None
    real, made = counts()
    if real:
        who = "customer that is" if real == 1 else "customers that are"
        return (
            f"The database has {real} {who} not demo data; run on an empty database or pass "
            "--force to add the demo data beside them."
        )
    if made:
        return (
            f"The database already holds demo data ({made} demo customers); pass --force to "
            "add another year of it beside them."
        )
    return None


def fill(
    customers: int = DEFAULT_CUSTOMERS,
    seed: int = DEFAULT_SEED,
    force: bool = False,
    now: datetime | None = None,
) -> DemoReport:
    """Fill the database with a year (ending at `now`) of demo data for about `customers`
    customers (MIN_CUSTOMERS to MAX_CUSTOMERS); the same `seed` makes the same people, visits
    and orders. Returns a DemoReport.

    Raises Conflict, changing nothing, when the database has customers that are not demo data
    or already holds demo data, unless `force` (then the demo data is added beside them, under
    external ids not taken yet; no other customer's row is touched). ValueError for a size out
    of range.
    """
    if not MIN_CUSTOMERS <= customers <= MAX_CUSTOMERS:
        raise ValueError(f"customers must be {MIN_CUSTOMERS} to {MAX_CUSTOMERS}")
    refused = refusal(force)
    if refused:
        raise Conflict(refused)
    started = time.monotonic()
    now = now or utcnow()
    world = _World(customers, seed, now)
    world.report.settings_changed = _set_program()
    world.settings = program.settings()
    end_read(db.session)
    world.run()
    world.report.seconds = time.monotonic() - started
    return world.report


def _default_settings() -> dict:
    """The settings of a program never changed (the model's column defaults)."""
    values = {}
    for column in Program.__table__.columns:
        default = column.default
        if default is None:
            values[column.key] = None
        elif default.is_callable:
            values[column.key] = default.arg(None)
        else:
            values[column.key] = default.arg
    return program.as_dict(Program(**values))


def _set_program() -> bool:
    """Give a program still at its defaults the demo's settings (and milestones, when the
    program has them); returns whether it changed them."""
    current = program.settings()
    end_read(db.session)
    if current != _default_settings():
        return False
    changes = dict(SETTINGS)
    if "milestones" in current:
        changes["milestones"] = MILESTONES
    program.update(changes, actor=OWNER)
    return True


class _World:
    """One run of the demo: its random choices, the people, and the steps in time order."""

    def __init__(self, size: int, seed: int, now: datetime):
        self.random = random.Random(seed)
        self.fake = Faker([locale for locales, _ in LANGUAGES.values() for locale in locales])
        self.fake.seed_instance(seed)
        self.now = now
        self.start = now - YEAR
        self.size = size
        self.report = DemoReport()
        self.settings: dict = {}
        self.people: list[_Person] = []
        self.first = _next_number()
        self.last_id = db.session.scalar(select(func.max(Customer.id))) or 0
        end_read(db.session)

    # --- people ----------------------------------------------------------------------------------

    def _person(self, kind: str, created_at: datetime) -> _Person:
        number = self.first + len(self.people)
        languages = list(LANGUAGES)
        language = self.random.choices(languages, [LANGUAGES[k][1] for k in languages])[0]
        fake = self.fake[self.random.choice(LANGUAGES[language][0])]
        first, last = fake.first_name(), fake.last_name()
        name = f"{last} {first}" if language in FAMILY_NAME_FIRST else f"{first} {last}"
        words = ["".join(c for c in unidecode(w).lower() if c.isalnum()) for w in (first, last)]
        local = ".".join(word for word in words if word) or "customer"
        domain = self.random.choice(EMAIL_DOMAINS)
        person = _Person(
            number=number,
            kind=kind,
            language=language,
            name=name,
            email=f"{local}.{number}@{domain}",
            created_at=created_at,
        )
        self.people.append(person)
        return person

    def _moment(self, low: datetime, high: datetime, growth: float = 1.0) -> datetime:
        """A time in `[low, high)`, denser towards `high` when `growth` > 1 (a growing shop)."""
        share = self.random.random() ** (1 / growth)
        return low + (high - low) * share

    def run(self) -> None:
        n = self.size
        enrolled = [
            self._person("enrolled", self.start - timedelta(days=self.random.uniform(1, 14)))
            for _ in range(round(n * ENROLLED))
        ]
        self._enrol(enrolled)
        friends = round(n * FRIENDS)
        newcomers = sorted(
            (self._moment(self.start, self.now, 1.3) for _ in range(n - len(enrolled) - friends)),
        )
        new = [self._person("new", at) for at in newcomers]
        for person in new:
            self._sign_up(person, None, None, at=person.created_at)
        sharers = self._sharers(enrolled + new)
        visits = self._visits(sharers)
        self._friends(sharers, visits, friends)
        self._money()
        rewards.mature(self.now)  # as the worker does every minute: the queue has this week's
        rollups.roll_up(self.now)  # as the worker does every hour
        self._count()

    def _enrol(self, people: list[_Person]) -> None:
        """The customers the shop enrolled before the year, in bulk, with their codes; raises
        Conflict when another demo run took their external ids meanwhile (the unique key
        decides which run goes on; this one has then written nothing but the settings)."""
        try:
            self._enrol_chunks(people)
        except IntegrityError:
            raise Conflict(
                "Another demo run took these demo ids meanwhile; this one stopped before "
                "writing any customer."
            ) from None

    def _enrol_chunks(self, people: list[_Person]) -> None:
        issue = signer().issue
        for chunk in _chunks(people, 2_000):
            with unit_of_work(self.now):
                rows = [
                    {
                        "external_id": _external_id(p.number),
                        "email": p.email,
                        "email_key": email_key(p.email),
                        "name": p.name,
                        "locale": p.language,
                        "created_at": p.created_at,
                        "updated_at": p.created_at,
                        "origin": "enrolled",
                    }
                    for p in chunk
                ]
                db.session.execute(insert(Customer.__table__), rows)
                ids = dict(
                    db.session.execute(
                        select(Customer.external_id, Customer.id).where(
                            Customer.external_id.in_([row["external_id"] for row in rows])
                        )
                    ).all()
                )
                codes = {}
                for p in chunk:
                    p.id = ids[_external_id(p.number)]
                    while (code := issue()) in codes:
                        pass
                    codes[code] = p
                db.session.execute(
                    insert(ReferralCode.__table__),
                    [
                        {"customer_id": p.id, "code": code, "created_at": p.created_at}
                        for code, p in codes.items()
                    ],
                )
                for code_id, code in db.session.execute(
                    select(ReferralCode.id, ReferralCode.code).where(
                        ReferralCode.code.in_(list(codes))
                    )
                ):
                    codes[code].code_id, codes[code].code = code_id, code
        self.report.enrolled = len(people)

    def _address(self) -> str:
        """A visitor's address in the documentation prefix 2001:db8::/32 (RFC 3849)."""
        return str(ipaddress.IPv6Address((0x20010DB8 << 96) | self.random.getrandbits(96)))

    def _sign_up(self, person, code, click_id, at, ip=None, agent=None):
        """The person signs up through the service's own sign-up step."""
        answer = attribution.signup(
            _external_id(person.number),
            person.email,
            referral_code=code,
            click_id=click_id,
            occurred_at=at,
            name=person.name,
            locale=person.language,
            ip=ip or self._address(),
            user_agent=agent or self.random.choice(PEOPLE_AGENTS),
            device_id=f"{PREFIX}device-{person.number}",
            now=at,
        )
        end_read(db.session)
        row = db.session.execute(
            select(Customer.id, ReferralCode.id, ReferralCode.code)
            .join(ReferralCode, ReferralCode.customer_id == Customer.id)
            .where(
                Customer.external_id == _external_id(person.number),
                ReferralCode.revoked_at.is_(None),
            )
        ).one()
        person.id, person.code_id, person.code = row
        person.referred = answer.attributed
        end_read(db.session)
        return answer

    # --- share-link visits -----------------------------------------------------------------------

    def _sharers(self, people: list[_Person]) -> list[tuple[_Person, float]]:
        """The customers who share, with how much (a few share a lot: a Pareto tail)."""
        chosen = self.random.sample(people, max(1, round(len(people) * SHARERS)))
        return [(p, self.random.paretovariate(1.3)) for p in chosen]

    def _visits(self, sharers) -> list[dict]:
        """The year's visits of the sharers' links, passed through the click path's rules;
        the clicks it would store are written in bulk. Returns the stored clicks' rows, each
        with the visitor's address and agent (`_ip`, `_agent`) for those who sign up."""
        target = self.size * VISITS_PER_CUSTOMER
        names = list(CHANNELS)
        weights = [CHANNELS[c][0] for c in names]
        people, activity = zip(*sharers, strict=True)
        by_activity, by_share = list(accumulate(activity)), list(accumulate(weights))
        raw = []  # (at, sharer, channel, ip, agent)
        for _ in range(target):
            sharer = self.random.choices(people, cum_weights=by_activity)[0]
            name = self.random.choices(names, cum_weights=by_share)[0]
            low = max(sharer.created_at, self.start)
            at = self._moment(low, self.now, 1.2)
            ip, agent = self._address(), self.random.choice(PEOPLE_AGENTS)
            raw.append((at, sharer, name, ip, agent))
            if self.random.random() < REPEAT_SHARE:  # back again within the hour
                again = at + timedelta(minutes=self.random.uniform(1, 59))
                if again < self.now:
                    raw.append((again, sharer, name, ip, agent))
            if self.random.random() < CHANNELS[name][2]:  # the chat app's preview came first
                bot = self.random.choice(BOT_AGENTS)
                raw.append(
                    (at - timedelta(seconds=self.random.uniform(1, 600)), sharer, name, None, bot)
                )
        raw.sort(key=lambda visit: visit[0])
        stored, last = [], {}
        for at, sharer, name, ip, agent in raw:
            if clicks.is_bot(agent):
                self.report.bot_visits += 1
                continue
            evidence = fraud.visit_evidence(ip, agent)
            visitor = (sharer.code_id, evidence["ip_hash"], evidence["ua_hash"])
            earlier = last.get(visitor)
            if earlier is not None and at - earlier < clicks.REVISIT_WINDOW:
                self.report.repeat_visits += 1
                continue
            last[visitor] = at
            stored.append(
                {
                    "id": clicks.visitor_click_id(*visitor, at),
                    "code_id": sharer.code_id,
                    "referrer_id": sharer.id,
                    "channel": clicks.channel(name),
                    "occurred_at": at,
                    "referer_host": REFERER_HOSTS.get(name),
                    **evidence,
                    "_ip": ip,
                    "_agent": agent,
                    "_sharer": sharer,
                }
            )
        for chunk in _chunks(stored, 5_000):
            with unit_of_work(self.now):
                db.session.execute(
                    insert(Click.__table__),
                    [{k: v for k, v in row.items() if not k.startswith("_")} for row in chunk],
                )
        self.report.visits = len(stored)
        return stored

    # --- friends ---------------------------------------------------------------------------------

    def _friends(self, sharers, visits: list[dict], count: int) -> None:
        """Friends sign up: most through a visit of a share link, some with a typed code."""
        typed = round(count * TYPED_CODE_SHARE)
        weights = list(accumulate(CHANNELS[v["channel"]][1] for v in visits))
        chosen = set()
        while len(chosen) < min(count - typed - SHOWN_RECENT, len(visits)):
            chosen.add(self.random.choices(range(len(visits)), cum_weights=weights)[0])
        plans = []
        for index in sorted(chosen):
            visit = visits[index]
            # most sign up within the hour; a few days later; a few after the window
            lag = timedelta(minutes=self.random.lognormvariate(math.log(25), 2.2))
            at = visit["occurred_at"] + lag
            if at >= self.now:  # the year ends before: they signed up sooner
                at = visit["occurred_at"] + (self.now - visit["occurred_at"]) * self.random.random()
            plans.append((at, visit))
        people, activity = zip(*sharers, strict=True)
        by_activity = list(accumulate(activity))
        for _ in range(typed):
            sharer = self.random.choices(people, cum_weights=by_activity)[0]
            plans.append((self._moment(max(sharer.created_at, self.start), self.now, 1.2), sharer))
        for _ in range(SHOWN_RECENT):  # their rewards' hold ends in the last week: they wait
            sharer = self.random.choices(people, cum_weights=by_activity)[0]
            plans.append((self.now - timedelta(days=self.random.uniform(15, 20)), sharer))
        plans.sort(key=lambda plan: plan[0])
        older = [place for place, (at, _) in enumerate(plans) if at < self.now - RECENT]
        risky = max(2, round(len(plans) * SELF_REFERRAL_SHARE))
        risky_plans = set(self.random.sample(older, min(risky, len(older))))
        for place, (at, source) in enumerate(plans):
            person = self._person("friend", at)
            if isinstance(source, dict):
                sharer = source["_sharer"]
                click_id = clicks.sign_click(
                    source["id"], source["code_id"], source["channel"], source["occurred_at"]
                )
                ip, agent, code = source["_ip"], source["_agent"], None
            else:
                sharer, click_id, ip, agent, code = source, None, None, None, source.code
            if place in risky_plans:  # the referrer signing up again under another email
                person.name, person.flagged = sharer.name, True
            self._sign_up(person, code, click_id, at, ip, agent)

    # --- money -----------------------------------------------------------------------------------

    def _money(self) -> None:
        """Orders, refunds, maturing, reviews and payouts, in the order they happen."""
        steps: list = []
        sequence = iter(range(10**9))

        def plan(at, action, *args):
            if at < self.now:
                heapq.heappush(steps, (at, next(sequence), action, args))

        orders = [order for person in self.people for order in self._orders(person)]
        for at, person, order_id, amount in orders:
            plan(at, self._purchase, person, order_id, amount)
        for at, order_id, part in self._refunds(orders):
            plan(at, self._refund, order_id, part)
        day = _midnight(self.start) + timedelta(days=1)
        while day < self.now:
            # Monday: the admins review the week's rewards (this week's still wait for them)
            if day.weekday() == 0 and day < self.now - timedelta(days=7):
                plan(day + timedelta(hours=9), self._review)
            if day.day <= 7 and day.weekday() == 1:  # first Tuesday: the monthly payout
                plan(day + timedelta(hours=10), self._pay_out)
            day += timedelta(days=1)
        while steps:
            at, _, action, args = heapq.heappop(steps)
            action(at, *args)
            end_read(db.session)

    def _amount(self, referred: bool) -> Decimal:
        """An order's amount in the program currency: about MEDIAN_ORDER, or twice the
        program's minimum order when that is more (a shop's own currency may count in yen),
        with cents only where the currency has them (ISO 4217)."""
        median = max(MEDIAN_ORDER, 2 * Decimal(self.settings["min_order_amount"]))
        value = float(median) * self.random.lognormvariate(0, 0.5)
        if referred:
            value *= REFERRED_SPEND
        amount = Decimal(max(5, math.floor(value)))
        if minor_digits(self.settings["currency"]) >= 2:
            amount += Decimal(self.random.choice(("0.90", "0.99")))
        return amount

    def _orders(self, person: _Person) -> list[tuple]:
        """A customer's orders over the year: `(at, person, order_id, amount)`."""
        if person.id is None:
            return []
        recent = person.kind == "friend" and person.created_at > self.now - RECENT
        shown = person.flagged or recent
        if shown:  # the flagged friends, and those of the last weeks, buy the next day
            at = person.created_at + timedelta(days=1)
        elif self.random.random() >= BUYS[person.kind]:
            return []
        elif person.kind == "enrolled":
            at = self._moment(self.start, self.now)
        elif person.kind == "friend":
            at = person.created_at + timedelta(days=self.random.expovariate(1 / 4))
        else:
            at = person.created_at + timedelta(hours=self.random.expovariate(1 / 30))
        orders = []
        while at < self.now:
            order_id = f"{PREFIX}order-{person.number:06d}-{len(orders) + 1}"
            amount = self._amount(person.referred)
            if shown and not orders:  # enough to convert the referral
                amount = max(amount, Decimal(self.settings["min_order_amount"]) + 10)
            orders.append((at, person, order_id, amount))
            if self.random.random() < REPEAT_90D[person.referred]:
                at += timedelta(days=self.random.uniform(5, 90))
            elif self.random.random() < LATER_ORDER:
                at += timedelta(days=self.random.uniform(91, 240))
            else:
                break
        return orders

    def _refunds(self, orders: list[tuple]) -> list[tuple]:
        """Refunds `(at, order_id, part)` (`part` None for a whole refund): some of any order,
        within days (before the reward's hold ends: it is reversed) or weeks later (after the
        reward is paid: a clawback); and at least a few of each kind on orders that converted
        a referral, so that a small demo shows both."""
        minimum = Decimal(self.settings["min_order_amount"])
        first = {}
        for at, person, order_id, amount in orders:
            if person.referred and not person.flagged and amount >= minimum:
                first.setdefault(person.number, (at, order_id, amount))
        converting = sorted(first.values())
        paid_by_now = [o for o in converting if o[0] < self.now - timedelta(days=100)]
        held_by_now = [o for o in converting if o[0] < self.now - timedelta(days=20)]
        late = set(self.random.sample(paid_by_now, min(SHOWN_REFUNDS, len(paid_by_now))))
        early = set(self.random.sample(held_by_now, min(SHOWN_REFUNDS, len(held_by_now)))) - late
        planned = []
        for at, _, order_id, amount in orders:
            order = (at, order_id, amount)
            if order in late:
                days = self.random.uniform(60, 80)
            elif order in early:
                days = self.random.uniform(1, 10)
            elif self.random.random() < REFUND_SHARE:
                days = self.random.choice((self.random.uniform(1, 10), self.random.uniform(45, 80)))
            else:
                continue
            part = None  # the shown ones whole: a reversal, a clawback of the whole reward
            if order not in late | early and self.random.random() < PARTIAL_REFUND_SHARE:
                share = Decimal(self.random.choice(("0.2", "0.3", "0.5")))
                unit = Decimal(1).scaleb(-minor_digits(self.settings["currency"]))
                part = (amount * share).quantize(unit)
            planned.append((at + timedelta(days=days), order_id, part))
        return planned

    def _purchase(self, at, person, order_id, amount) -> None:
        rewards.record_purchase(
            order_id,
            _external_id(person.number),
            str(amount),
            self.settings["currency"],
            occurred_at=at,
            now=at,
        )

    def _refund(self, at, order_id, part) -> None:
        if part is None:
            refunds.refund(order_id, now=at)
        else:
            refunds.refund(order_id, amount=str(part), refund_id=f"{order_id}-r1", now=at)

    def _review(self, at) -> None:
        """Monday: mature the rewards whose hold ended (clean small ones are approved at once,
        when the program allows it), then decide the queue: a reward flagged by a risk signal
        is rejected, the others approved; and a few of the week's approved rewards are taken
        back (the order was cancelled by phone, ...)."""
        rewards.mature(at)
        waiting = db.session.execute(
            select(Reward.id, Referral.risk_score)
            .join(Referral, Referral.id == Reward.referral_id)
            .where(Reward.status == "awaiting_approval")
            .order_by(Reward.id)
        ).all()
        approved = db.session.scalars(
            select(Reward.id)
            .where(
                Reward.status == "approved",
                Reward.payout_id.is_(None),
                Reward.updated_at > at - timedelta(days=7),
            )
            .order_by(Reward.id)
        ).all()
        end_read(db.session)
        for reward_id, risk in waiting:
            if risk > 0 or self.random.random() < REJECT_SHARE:
                rewards.reject(reward_id, OWNER, self.random.choice(REJECT_REASONS), now=at)
            else:
                rewards.approve(reward_id, OWNER, now=at)
        for reward_id in approved:
            if self.random.random() < REJECT_SHARE:
                rewards.reject(reward_id, OWNER, self.random.choice(REJECT_REASONS), now=at)

    def _pay_out(self, at) -> None:
        """The monthly batch of approved rewards: created, approved by a second admin when its
        total needs it, and paid."""
        waiting = db.session.scalar(
            select(func.count()).where(Reward.status == "approved", Reward.payout_id.is_(None))
        )
        end_read(db.session)
        if not waiting:
            return
        batch = payouts.create(OWNER, all_approved=True, now=at)
        if batch["needs_approval"]:
            payouts.approve(batch["id"], APPROVER, now=at + timedelta(hours=2))
        payouts.mark_paid(batch["id"], f"DEMO-{at:%Y-%m}", APPROVER, now=at + timedelta(hours=3))
        self.report.payouts += 1

    # --- the report ------------------------------------------------------------------------------

    def _count(self) -> None:
        ids = select(Customer.id).where(  # this run's: made after it began, named demo-
            Customer.id > self.last_id,
            Customer.external_id.startswith(PREFIX, autoescape=True),
        )
        report = self.report
        report.customers = len(self.people)

        def count(*where):
            return db.session.scalar(select(func.count()).where(*where)) or 0

        report.signups = count(Signup.customer_id.in_(ids))
        report.referred = count(Referral.friend_id.in_(ids))
        report.purchases = count(Purchase.customer_id.in_(ids))
        report.refunds = count(
            Refund.purchase_id.in_(select(Purchase.id).where(Purchase.customer_id.in_(ids)))
        )
        report.clawbacks = count(Clawback.customer_id.in_(ids))
        report.rewards = dict(
            db.session.execute(
                select(Reward.status, func.count())
                .where(Reward.customer_id.in_(ids))
                .group_by(Reward.status)
            ).all()
        )
        end_read(db.session)


def _external_id(number: int) -> str:
    return f"{PREFIX}{number:06d}"


def _next_number() -> int:
    """The first demo number not taken yet (a forced second run goes on after the first)."""
    taken = db.session.scalars(
        select(Customer.external_id).where(Customer.external_id.startswith(PREFIX, autoescape=True))
    ).all()
    end_read(db.session)
    numbers = [int(e[len(PREFIX) :]) for e in taken if e[len(PREFIX) :].isdigit()]
    return max(numbers, default=0) + 1


def _midnight(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _chunks(items: list, size: int):
    for place in range(0, len(items), size):
        yield items[place : place + size]

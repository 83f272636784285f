"""What the share page and the welcome page say: share buttons per channel, rewards and offers in
words of the page's language."""

from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import quote

from babel.dates import format_date
from babel.numbers import format_percent
from flask_babel import get_locale, gettext, ngettext

from referral_service import database
from referral_service.domain import portal
from referral_service.domain.money import format_money
from referral_service.domain.portal import SharePage
from referral_service.errors import Unavailable
from referral_service.links import referral_block, share_url


@dataclass
class Channel:
    """A share button: the channel's `via`, its label and where it goes."""

    via: str
    label: str
    href: str


def referrer_name(referrer_id: int) -> str | None:
    """The referrer's first name for the welcome page; None when they gave none, or while the
    database cannot say (the page then says "A friend invited you!")."""
    try:
        with database.attempt(quick=True):
            return portal.first_name_of(referrer_id)
    except Unavailable:
        return None


def share_message(messages: dict[str, str], language: str) -> str:
    """The program's share message for the language, else the catalog's own."""
    return messages.get(language) or gettext(
        "I shop here and I think you will like it too. Join with my link:"
    )


def channels(code: str, message: str, subject: str) -> list[Channel]:
    """The share buttons; each link carries its own `via`, so every channel is counted."""

    def text(via: str) -> str:
        return quote(f"{message} {share_url(code, via)}", safe="")

    def link(via: str) -> str:
        return quote(share_url(code, via), safe="")

    return [
        Channel("whatsapp", "WhatsApp", f"https://wa.me/?text={text('whatsapp')}"),
        Channel(
            "email",
            gettext("Email"),
            f"mailto:?subject={quote(subject, safe='')}&body={text('email')}",
        ),
        Channel("sms", gettext("Text message"), f"sms:?&body={text('sms')}"),
        Channel(
            "facebook",
            "Facebook",
            f"https://www.facebook.com/sharer/sharer.php?u={link('facebook')}",
        ),
        Channel(
            "x",
            "X",
            f"https://x.com/intent/tweet?text={quote(message, safe='')}&url={link('x')}",
        ),
    ]


def share_page(page: SharePage, settings: dict, language: str) -> dict:
    """What the share page's template shows, in words of the page's language."""
    message = share_message(settings["share_messages"], language)
    subject = (
        gettext("An invitation from %(name)s", name=page.first_name)
        if page.first_name
        else gettext("An invitation for you")
    )
    words = Words()
    return {
        "page": page,
        "friends": [words.friend(friend) for friend in page.friends],
        "rewards": [words.reward(reward) for reward in page.rewards],
        "totals": words.totals(page.totals, settings["currency"]),
        "milestones": words.milestones(
            portal.milestone_progress(page.friends_converted, settings["milestones"]),
            settings["currency"],
        ),
        "referral": referral_block(page.code),
        "copy_link": share_url(page.code, "copy"),
        "web_share_link": share_url(page.code, "share"),
        "message": message,
        "channels": channels(page.code, message, subject),
        "reward": referrer_reward(settings["referrer_reward"], settings["currency"]),
        "offer": friend_offer(settings["friend_offer"], settings["currency"], for_friend=False),
    }


def _percent(value: str) -> str:
    """A percent in the page's language, its decimals kept (`12.5 %` in Polish, say)."""
    return format_percent(Decimal(value) / 100, locale=get_locale(), decimal_quantization=False)


def referrer_reward(rule: dict, currency: str) -> str | None:
    """What the customer earns per friend, in words; None when the program gives nothing."""
    if rule["type"] == "fixed":
        return gettext(
            "You get %(amount)s for each friend who makes a first purchase.",
            amount=format_money(rule["value"], currency, get_locale()),
        )
    if rule["type"] == "percent":
        return gettext(
            "You get %(percent)s of each friend's first purchase.",
            percent=_percent(rule["value"]),
        )
    return None


def friend_offer(offer: dict | None, currency: str, *, for_friend: bool) -> str | None:
    """The friend's offer in words: addressed to the friend (welcome page) or about them."""
    if not offer:
        return None
    kind = offer["type"]
    if kind == "fixed":
        amount = format_money(offer["value"], offer.get("currency") or currency, get_locale())
        if for_friend:
            return gettext("Get %(amount)s off your first order.", amount=amount)
        return gettext("Your friends get %(amount)s off their first order.", amount=amount)
    if kind == "percent":
        percent = _percent(offer["value"])
        if for_friend:
            return gettext("Get %(percent)s off your first order.", percent=percent)
        return gettext("Your friends get %(percent)s off their first order.", percent=percent)
    if for_friend:
        return gettext("Get free shipping on your first order.")
    return gettext("Your friends get free shipping on their first order.")


@dataclass
class Row:
    """One line of the friends or rewards list, in words of the page's language."""

    title: str
    detail: str
    badge: str


class Words:
    """The page's dates, amounts and status words, each formatted once per page.

    A share page lists up to 50 friends and 50 rewards; most of their dates, amounts and statuses
    repeat, and each Babel call costs tens of microseconds.
    """

    def __init__(self):
        self.locale = get_locale()
        self._dates: dict = {}
        self._money: dict = {}
        self._said: dict = {}

    def date(self, moment) -> str:
        day = moment.date()
        if day not in self._dates:
            self._dates[day] = format_date(day, "medium", locale=self.locale)
        return self._dates[day]

    def money(self, amount, currency: str) -> str:
        key = (amount, currency)
        if key not in self._money:
            self._money[key] = format_money(amount, currency, self.locale)
        return self._money[key]

    def say(self, message: str, **values) -> str:
        """`gettext(message) % values`, the catalog asked once per message."""
        if message not in self._said:
            self._said[message] = gettext(message)
        return self._said[message] % values if values else self._said[message]

    def friend(self, friend) -> Row:
        if friend.status == "rejected":
            badge = self.say(N_("Not eligible"))
        elif friend.status == "attributed":
            badge = self.say(N_("Signed up, no purchase yet"))
        else:
            badge = self.say(FRIEND_REWARD.get(friend.reward_status, N_("Made a first purchase")))
        joined = self.say(N_("Joined on %(date)s"), date=self.date(friend.signed_up_at))
        return Row(friend.name, joined, badge)

    def reward(self, reward) -> Row:
        if reward.status == "pending":
            badge = self.say(N_("On hold until %(date)s"), date=self.date(reward.available_at))
        else:
            badge = self.say(REWARD_STATUS[reward.status])
        if reward.milestone_friends:
            detail = ngettext(
                "Bonus for %(num)d friend", "Bonus for %(num)d friends", reward.milestone_friends
            )
        elif reward.friend:
            detail = self.say(N_("For inviting %(name)s"), name=reward.friend)
        else:
            detail = self.say(N_("Your welcome reward"))
        return Row(self.money(reward.amount, reward.currency), detail, badge)

    def milestones(self, progress, currency: str) -> dict | None:
        """The milestones in words: `{converted, next: {friends, bonus} or None, reached:
        [{friends, bonus}]}`, each bonus an amount or a percent of an order; None when the
        program has no milestones."""
        if progress is None:
            return None

        def shown(milestone) -> dict:
            rule = milestone.reward
            if rule["type"] == "fixed":
                bonus = self.money(rule["value"], currency)
            else:
                bonus = gettext(
                    "%(percent)s of that friend's order", percent=_percent(rule["value"])
                )
            return {"friends": milestone.friends, "bonus": bonus}

        return {
            "converted": progress.converted,
            "next": shown(progress.next) if progress.next else None,
            "reached": [shown(milestone) for milestone in progress.reached],
        }

    def totals(self, totals: dict, currency: str) -> list[tuple[str, str, list[str]]]:
        """`(group, label, amounts)` of in progress, approved and paid out (0 when none)."""
        return [
            (
                group,
                self.say(label),
                [self.money(amount, code) for amount, code in totals.get(group) or [(0, currency)]],
            )
            for group, label in TOTALS
        ]


def N_(message: str) -> str:
    """Mark a message for the catalog without translating it (`Words.say` does, per page)."""
    return message


FRIEND_REWARD = {
    "pending": N_("Bought: reward on hold"),
    "awaiting_approval": N_("Bought: reward being checked"),
    "approved": N_("Bought: reward approved"),
    "paid": N_("Bought: reward paid"),
    "reversed": N_("Order refunded: no reward"),
    "rejected": N_("Bought: no reward"),
}
REWARD_STATUS = {
    "awaiting_approval": N_("Awaiting approval"),
    "approved": N_("Approved"),
    "paid": N_("Paid"),
    "rejected": N_("Rejected"),
    "reversed": N_("Cancelled: the order was refunded"),
}
TOTALS = (
    ("in_progress", N_("In progress")),
    ("approved", N_("Approved")),
    ("paid", N_("Paid out")),
)

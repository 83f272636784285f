"""What the share page and the welcome page say: share buttons per channel, rewards and offers in
words of the page's language."""

from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import quote

from babel.numbers import format_percent
from flask_babel import format_currency, get_locale, gettext

from referral_service.links import share_url


@dataclass
class Channel:
    """A share button: the channel's `via`, its label and where it goes."""

    via: str
    label: str
    href: str


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


def _percent(value: str) -> str:
    """A percent in the page's language, its decimals kept (`12.5 %` in Polish, say)."""
    return format_percent(Decimal(value) / 100, locale=get_locale(), decimal_quantization=False)


def referrer_reward(rule: dict, currency: str) -> str | None:
    """What the customer earns per friend, in words; None when the program gives nothing."""
    if rule["type"] == "fixed":
        return gettext(
            "You get %(amount)s for each friend who makes a first purchase.",
            amount=format_currency(Decimal(rule["value"]), currency),
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
        amount = format_currency(Decimal(offer["value"]), offer.get("currency") or currency)
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

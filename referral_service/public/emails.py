"""What the emails to referrers say: subject, text and HTML bodies in the customer's language,
with their share link, a link to their share page and a one-click unsubscribe (RFC 8058).

The language is the customer's `locale` when the pages speak it, else the program's
`default_locale`. Amounts are formatted for that language with exactly their currency's
decimals (domain/money.py `format_money`). A milestone reward's "earned" email says it is a
bonus for the referrer's N converted friends, in the plural form N asks for.
"""

from email.message import EmailMessage
from email.utils import format_datetime

from flask import render_template
from flask_babel import force_locale, gettext, ngettext

from referral_service import mail
from referral_service.domain import notifications, portal
from referral_service.domain.money import format_money
from referral_service.domain.notifications import Email
from referral_service.i18n import language_of
from referral_service.links import base_url, portal_url, share_url


def language(email: Email) -> str:
    """The email's language: the customer's, else the program's default, else English."""
    return language_of(email.locale) or language_of(email.default_locale) or "en"


def unsubscribe_url(token: str) -> str:
    return f"{base_url()}/unsubscribe/{token}"


def _words(email: Email, amount: str) -> dict[str, str]:
    """The sentences of one kind of email, in the current language (a milestone reward's
    "earned" email says how many friends reached it: plural forms by N)."""
    friends = email.milestone_friends
    if email.kind == "reward_earned" and friends is not None:
        return {
            "subject": ngettext(
                "Your first friend is now a customer: a bonus of %(amount)s",
                "You reached %(num)d friends: a bonus of %(amount)s",
                friends,
                amount=amount,
            ),
            "lead": ngettext(
                "Good news: the first friend you invited is now a customer of the shop, and "
                "that earned you a bonus of %(amount)s.",
                "Good news: %(num)d of the friends you invited are now customers of the shop, "
                "and that earned you a bonus of %(amount)s.",
                friends,
                amount=amount,
            ),
            "detail": gettext(
                "The bonus is held while your friends' orders can still be returned, and "
                "checked before it is paid."
            ),
        }
    if email.kind == "reward_earned":
        return {
            "subject": gettext("Your friend's purchase earned you %(amount)s", amount=amount),
            "lead": gettext(
                "Good news: a friend you invited made their first purchase, and it earned you "
                "%(amount)s.",
                amount=amount,
            ),
            "detail": gettext(
                "The reward is held while the order can still be returned, and checked before "
                "it is paid."
            ),
        }
    if email.kind == "reward_approved":
        return {
            "subject": gettext("Your reward of %(amount)s is approved", amount=amount),
            "lead": gettext("Your reward of %(amount)s has been approved.", amount=amount),
            "detail": gettext("It will be paid with the shop's next payout."),
        }
    return {
        "subject": gettext("We have paid you %(amount)s", amount=amount),
        "lead": gettext("We have paid you %(amount)s for inviting your friends.", amount=amount),
        "detail": gettext("Thank you for recommending us!"),
    }


def write(email: Email, server: mail.MailServer) -> EmailMessage:
    """The message of an email, but its From and To (the domain adds them)."""
    chosen = language(email)
    with force_locale(chosen):
        amount = ", ".join(
            format_money(item["amount"], item["currency"], chosen) for item in email.amounts
        )
        words = _words(email, amount)
        unsubscribe = unsubscribe_url(email.unsubscribe_token)
        context = {
            "language": chosen,
            "greeting": gettext("Hello %(name)s,", name=first)
            if (first := portal.first_name(email.name))
            else gettext("Hello,"),
            **words,
            "invite": gettext("Invite more friends with your link:"),
            "share_url": share_url(email.code, "email") if email.code else None,
            "page": gettext("See your friends and rewards:"),
            "page_url": portal_url(portal.issue_link(email.external_id).token),
            "why": gettext(
                "You receive this email because you take part in the shop's referral program."
            ),
            "unsubscribe_words": gettext("Unsubscribe from these emails"),
            "unsubscribe_url": unsubscribe,
        }
        text = render_template("email/reward.txt", **context)
        html = render_template("email/reward.html", **context)
    message = EmailMessage()
    message["Subject"] = words["subject"]
    message["Date"] = format_datetime(email.at)
    domain = mail.sender_domain(server)
    message["Message-ID"] = f"<{email.event_id}.{email.notification_id}@{domain}>"
    message["Auto-Submitted"] = "auto-generated"
    message["List-Unsubscribe"] = f"<{unsubscribe}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    message["Content-Language"] = chosen  # after the bodies, which clear the Content-* headers
    return message


notifications.register_writer(write)

"""`/unsubscribe/<token>`: a referrer stops the program's emails, without signing in.

GET shows a page with a button (a GET never unsubscribes: mail scanners and link previews
follow links); POST unsubscribes, from that button or from a mail client's one-click
unsubscribe (RFC 8058: `List-Unsubscribe-Post: List-Unsubscribe=One-Click`, posted without
cookies or a CSRF token). Both answer 200 again and again; a forged or damaged token gets the
"link does not work" page (404).
"""

from flask.views import MethodView

from referral_service.domain import notifications
from referral_service.errors import InvalidLink
from referral_service.i18n import use_language
from referral_service.public.views import _page, blp, html_page
from referral_service.rate_limits import RATE_LIMITED, per_address

TOKEN_PROBLEM = {"404": html_page("A forged or damaged link: a page saying so.")}


@blp.route("/unsubscribe/<token>")
class Unsubscribe(MethodView):
    """The unsubscribe link of the emails to referrers."""

    @blp.doc(responses=TOKEN_PROBLEM)
    @blp.response(200, description="A page with the button that unsubscribes.")
    @blp.alt_response(429, **RATE_LIMITED)
    def get(self, token):
        """A page that asks to confirm (or says the customer already unsubscribed)."""
        try:
            found = notifications.subscriber(token)
        except InvalidLink:
            use_language()
            return _page("public/link_problem.html", 404, expired=False)
        use_language(found.locale)
        return _page("public/unsubscribe.html", done=found.opted_out, token=token)

    @blp.doc(responses=TOKEN_PROBLEM)
    @blp.response(200, description="Unsubscribed: a page saying so.")
    @blp.alt_response(429, **RATE_LIMITED)
    def post(self, token):
        """Unsubscribe from the emails (RFC 8058 one-click; the body is not read)."""
        try:
            found = notifications.unsubscribe(token)
        except InvalidLink:
            use_language()
            return _page("public/link_problem.html", 404, expired=False)
        use_language(found.locale)
        return _page("public/unsubscribe.html", done=True, token=token)


per_address(blp, Unsubscribe)

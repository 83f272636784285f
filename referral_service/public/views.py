"""`/r/<code>` (a redirect, or the friend's welcome page) and its QR images, the customer's share
page, the built-in landing page, `/healthz` and `/readyz`.

A share link never breaks: with the database away, the code's signature is still checked (it
needs no database) and the friend is sent on with `ref`, by the last known program settings, or to
the built-in landing page when this process never read them; QR images are drawn from the code
alone. Revocation is checked again at attribution.
"""

import logging
from datetime import datetime
from functools import lru_cache
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from flask import current_app, g, render_template, request, url_for
from flask.views import MethodView
from flask_babel import refresh
from flask_smorest import Blueprint
from itsdangerous import BadSignature, TimestampSigner

from referral_service import database
from referral_service.domain import clicks, codes, fraud, health, portal, program
from referral_service.domain.qr import MAX_SIZE, MIN_SIZE, check_size
from referral_service.errors import (
    ErrorEnvelope,
    InvalidCode,
    InvalidLink,
    LinkExpired,
    NotFound,
    RevokedCode,
    Unavailable,
    ValidationFailed,
)
from referral_service.i18n import LANGUAGE_NAMES, use_language
from referral_service.links import base_url, share_url
from referral_service.models import utcnow
from referral_service.public import schemas, sharing
from referral_service.rate_limits import RATE_LIMITED, per_address

log = logging.getLogger(__name__)

blp = Blueprint("public", __name__, description="Share links, QR codes and health checks.")

CLICK_COOKIE = "rs_click"
CLICK_COOKIE_SALT = "referral-service.click-cookie"


def click_cookie_signer() -> TimestampSigner:
    """Signs the cookie that remembers a visitor's click id for the attribution window."""
    signer = current_app.extensions.get("click_cookie")
    if signer is None:
        signer = current_app.extensions["click_cookie"] = TimestampSigner(
            [
                *reversed(current_app.config.get("SECRET_KEY_FALLBACKS") or []),
                current_app.secret_key,
            ],
            salt=CLICK_COOKIE_SALT,
        )
    return signer


@lru_cache(maxsize=16)
def _landing_prefix(landing: str) -> tuple[str, str]:
    """The landing URL without any `ref`/`click_id` of its own, and the separator to append."""
    parts = urlsplit(landing)
    # the shop's own parameters are kept as they are written, byte for byte
    query = "&".join(
        pair
        for pair in parts.query.split("&")
        if pair and unquote_plus(pair.partition("=")[0]) not in ("ref", "click_id")
    )
    url = urlunsplit(parts._replace(query=query, fragment=""))
    return url, ("&" if query else "?")


@lru_cache(maxsize=16)
def _usable(landing: str) -> bool:
    """Whether a saved landing URL can be redirected to (one saved before the program checked
    its port cannot: the friend lands on the built-in page instead of an error)."""
    try:
        program.check_url(landing, "landing_url")
    except ValidationFailed:
        return False
    return True


def _settings() -> dict | None:
    """The program settings, the last known copy while the database is away; None when this
    process never read them."""
    try:
        return program.settings(last_known=True)
    except Unavailable:
        return None


def _landing(code: str | None = None, click_id: str | None = None) -> str:
    """The landing page's address, with `ref` (and `click_id`) when there is an attribution;
    the built-in page while the program's landing URL cannot be known."""
    landing = (_settings() or {}).get("landing_url")
    if not landing or not _usable(landing):
        landing = f"{base_url()}/landing"
    if code is None:
        return _landing_prefix(landing)[0]
    url, separator = _landing_prefix(landing)
    if click_id is None:
        return f"{url}{separator}ref={code}"
    return f"{url}{separator}ref={code}&click_id={click_id}"  # both URL-safe by construction


def _redirect(location: str):
    response = current_app.response_class(status=302)
    response.headers["Location"] = location
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


VIA = {
    "in": "query",
    "name": "via",
    "required": False,
    "schema": {"type": "string"},
    "description": "The channel: link, qr, email, whatsapp, sms, facebook, x, copy, ... "
    "(absent: `link`; anything malformed is counted as `other`).",
}
REF = {
    "in": "query",
    "name": "ref",
    "required": False,
    "schema": {"type": "string"},
    "description": "The referral code the share link added (shown, at most 64 characters).",
}
LANG = {
    "in": "query",
    "name": "lang",
    "required": False,
    "schema": {"type": "string"},
    "description": "The page's language: en, pl, hu, el or bg (else the browser's languages, "
    "then the program's `default_locale`).",
}


def html_page(description: str) -> dict:
    """The OpenAPI answer of an HTML page."""
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


CLICK_ID = {
    "in": "query",
    "name": "click_id",
    "required": False,
    "schema": {"type": "string"},
    "description": "The click the welcome page was shown for (its language switcher keeps it).",
}
SIZE = {
    "in": "query",
    "name": "size",
    "required": False,
    "schema": {"type": "integer", "minimum": MIN_SIZE, "maximum": MAX_SIZE, "default": 512},
    "description": "Pixels square.",
}


@blp.route("/r/<code>", strict_slashes=False)
class ShareLink(MethodView):
    """A visit of a share link."""

    @blp.doc(parameters=[VIA, LANG])
    @blp.response(
        200, description="The welcome page (`landing_mode: welcome`).", content_type="text/html"
    )
    @blp.alt_response(
        302,
        description="To the landing page, with `ref` and `click_id` when the "
        "code is valid; without them when it is forged or revoked (and without `click_id` "
        "for link-preview bots and crawlers). While the database is away: with `ref` when the "
        "code's signature holds (and `click_id` when the click could be kept), to the last "
        "known landing page or else the built-in one.",
    )
    @blp.alt_response(429, **RATE_LIMITED)
    def get(self, code):
        """Record a click and redirect to the landing page, or show the friend's welcome page.

        With the program's `landing_mode` at `welcome`, a valid code gets a page (200) naming the
        referrer by first name and the friend's offer, in the visitor's language, with a button to
        the landing page carrying `ref` and `click_id`, and Open Graph tags for link previews. A
        forged, mistyped or revoked code still lands the visitor on the landing page, without
        attribution: a friend never meets a broken link. A code mangled on the way (a trailing
        `/`, punctuation, zero-width characters, look-alike dashes) is read as typed codes are.
        The click id is also kept in a signed cookie for the attribution window. Link-preview
        bots and crawlers get the same answer without a click, a `click_id` or a cookie; the same
        visitor (address and user agent) on the same code within an hour gets their earlier
        click back. While the database is away the link still leads on (see the module's
        docstring): a code this process looked up before keeps its click; another gets `ref`
        alone.
        """
        try:
            active = codes.lookup(code)
        except (InvalidCode, NotFound):
            return _redirect(_landing())
        except Unavailable:  # who the code names is unknown now; its signature holds
            return _redirect(_landing(codes.signer().verify(code)))
        click_id = earlier = None
        if not clicks.is_bot(request.user_agent.string):
            earlier = _cookie_click()
            click_id = _visit(active, earlier)
        settings = _settings()
        if settings is not None and settings["landing_mode"] == "welcome":
            response = _welcome(active, click_id)
        else:
            response = _redirect(_landing(active.code, click_id))
        if settings and click_id is not None and (earlier is None or earlier[0] != click_id):
            response.set_cookie(
                CLICK_COOKIE,
                click_cookie_signer().sign(click_id).decode(),
                max_age=settings["attribution_window_days"] * 86400,
                httponly=True,
                samesite="Lax",
                secure=request.is_secure,
            )
        return response


def _visit(active: codes.ActiveCode, earlier: tuple[str, datetime] | None) -> str | None:
    """The click id of this visit (clicks.visit), or None when it could not be kept: a click
    is never a reason for a friend to meet a broken link."""
    user_agent = request.user_agent.string
    seen = fraud.visit_evidence(request.remote_addr, user_agent)
    seen["referer_host"] = fraud.referer_host(request.referrer)
    try:
        return clicks.visit(
            active.code_id, active.referrer_id, request.args.get("via"), utcnow(), seen, earlier
        )
    except Exception:
        log.exception("a share-link click could not be kept; the visitor goes on without it")
        return None


def _cookie_click() -> tuple[str, datetime] | None:
    """The click id in the visitor's signed click cookie and when it was set, or None."""
    value = request.cookies.get(CLICK_COOKIE)
    if not value:
        return None
    try:
        click_id, signed_at = click_cookie_signer().unsign(value, return_timestamp=True)
    except BadSignature:
        return None
    return click_id.decode("ascii", "replace"), signed_at


def _qr(code: str, fmt: str, size) -> object:
    """A QR image of the code's share link; drawn from the code alone (its signature checked)
    while the database cannot say whether it was revoked."""
    try:
        canonical = codes.lookup(code).code
    except RevokedCode:
        raise NotFound("This referral code has been replaced; its QR code is gone.") from None
    except InvalidCode:
        raise NotFound("This referral code is not valid.") from None
    except Unavailable:
        canonical = codes.signer().verify(code)
    url = share_url(canonical, via="qr")
    image = current_app.extensions["qr_cache"].get(url, fmt, check_size(size))
    headers = {"ETag": f'"{image.etag}"', "Cache-Control": "public, max-age=86400"}
    if image.etag in request.if_none_match:
        return current_app.response_class(status=304, headers=headers)
    return current_app.response_class(image.body, mimetype=image.mimetype, headers=headers)


@blp.route("/r/<code>/qr.png", strict_slashes=False)
class QrPng(MethodView):
    """The QR code of a share link as PNG."""

    @blp.doc(parameters=[SIZE])
    @blp.response(200, description="A PNG image (`image/png`).")
    @blp.alt_response(304, description="Not modified (`If-None-Match`).")
    @blp.alt_response(404, schema=ErrorEnvelope, description="A forged or revoked code.")
    @blp.alt_response(422, schema=ErrorEnvelope, description="A `size` out of range.")
    @blp.alt_response(429, **RATE_LIMITED)
    def get(self, code):
        """A QR code of the share link with `via=qr`, `size` pixels square (64-2048, 512)."""
        return _qr(code, "png", request.args.get("size"))


@blp.route("/r/<code>/qr.svg", strict_slashes=False)
class QrSvg(MethodView):
    """The QR code of a share link as SVG."""

    @blp.doc(parameters=[SIZE])
    @blp.response(200, description="An SVG image (`image/svg+xml`).")
    @blp.alt_response(304, description="Not modified (`If-None-Match`).")
    @blp.alt_response(404, schema=ErrorEnvelope, description="A forged or revoked code.")
    @blp.alt_response(422, schema=ErrorEnvelope, description="A `size` out of range.")
    @blp.alt_response(429, **RATE_LIMITED)
    def get(self, code):
        """A QR code of the share link with `via=qr`, drawn `size` pixels square."""
        return _qr(code, "svg", request.args.get("size"))


def _page(template: str, status: int = 200, switch: tuple[str, dict] | None = None, **context):
    """An HTML page of the share or welcome family: private, never cached, never indexed.

    Its language switcher links to `switch` (an endpoint and its values; this page by default)
    with `lang` added.
    """
    endpoint, values = switch or (request.endpoint, request.view_args or {})
    languages = [
        (code, name, url_for(endpoint, **values, lang=code))
        for code, name in LANGUAGE_NAMES.items()
    ]
    html = render_template(template, language=g.language, languages=languages, **context)
    return _private(current_app.response_class(html, status=status, mimetype="text/html"))


def _private(response):
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"  # the page's address never leaves it
    response.headers["X-Robots-Tag"] = "noindex"
    return response


# What the error page says, by status: `link` (a link that does not lead anywhere), `expired`,
# `busy` (rate limited) or `broken` (our fault).
ERROR_KINDS = {404: "link", 405: "link", 410: "expired", 429: "busy"}


def error_page(status: int):
    """The HTML page of an error on a public path, for browsers (errors.py `wants_page`).

    In the visitor's language, with a way on to the landing page; plain English when even the
    program settings cannot be read (a database away).
    """
    try:
        _use_language()
        landing = _landing()
    except Exception:  # the error may be the database itself: say it without the settings
        g.language = "en"
        landing = f"{base_url()}/landing"
    kind = ERROR_KINDS.get(status, "link" if status < 500 else "broken")
    html = render_template(
        "public/error.html", language=g.language, languages=[], kind=kind, landing=landing
    )
    return _private(current_app.response_class(html, status=status, mimetype="text/html"))


@blp.record_once
def _provide_error_page(state) -> None:
    state.app.extensions["error_page"] = error_page


def _use_language(customer_locale: str | None = None) -> str:
    """`use_language`, in English when the page's language would come from program settings
    this process cannot read (the database away, and the settings never read)."""
    _settings()  # the last known copy, which the language choice then reads
    try:
        with database.attempt(quick=True):
            return use_language(customer_locale)
    except Unavailable:
        g.language = "en"
        refresh()
        return g.language


def _welcome(active: codes.ActiveCode, click_id: str | None):
    """The friend's welcome page for a valid code (without the referrer's name while the
    database is away); a redirect to the landing page when the settings are unknown."""
    settings = _settings()
    if settings is None:
        return _redirect(_landing(active.code, click_id))
    _use_language()
    return _page(
        "public/welcome.html",
        switch=("public.Welcome", {"code": active.code, "click_id": click_id}),
        share_url=share_url(active.code),
        referrer=sharing.referrer_name(active.referrer_id),
        offer=sharing.friend_offer(settings["friend_offer"], settings["currency"], for_friend=True),
        offer_description=(settings["friend_offer"] or {}).get("description"),
        shop_url=_landing(active.code, click_id),
        days=settings["attribution_window_days"],
    )


@blp.route("/r/<code>/welcome", strict_slashes=False)
class Welcome(MethodView):
    """The friend's welcome page again, in another language, for a click already recorded."""

    @blp.doc(parameters=[LANG, CLICK_ID])
    @blp.response(200, description="The welcome page.", content_type="text/html")
    @blp.alt_response(302, description="To the landing page, for a forged or revoked code.")
    @blp.alt_response(429, **RATE_LIMITED)
    def get(self, code):
        """The welcome page of a code, without recording another click (the language switcher)."""
        click_id = request.args.get("click_id", "")[: clicks.MAX_CLICK_ID + 1]
        click_id = click_id if click_id and not clicks.read_click_id(click_id).forged else None
        try:
            active = codes.lookup(code)
        except (InvalidCode, NotFound):
            return _redirect(_landing())
        except Unavailable:
            return _redirect(_landing(codes.signer().verify(code), click_id))
        return _welcome(active, click_id)


@blp.route("/share/<token>")
class SharePage(MethodView):
    """The customer's own share page, reached through a signed link (`portal-link`)."""

    @blp.doc(
        parameters=[LANG],
        responses={
            "404": html_page("A forged or damaged link: a page saying so."),
            "410": html_page("An expired link: a page saying so."),
            "503": html_page(
                "The database is away: a page saying to try again in a few minutes "
                "(with `Retry-After`)."
            ),
        },
    )
    @blp.response(200, description="The share page.", content_type="text/html")
    @blp.alt_response(429, **RATE_LIMITED)
    def get(self, token):
        """The customer's code, link, QR code, share buttons, friends and rewards.

        In the language of `?lang=`, else the customer's `locale`, else the browser's, else the
        program's `default_locale`. An expired or forged link gets a friendly page saying so.
        """
        try:
            page = portal.share_page(portal.open_link(token))
        except LinkExpired as expired:
            use_language(portal.locale_of(expired.customer_id))
            return _page("public/link_problem.html", 410, expired=True)
        except InvalidLink:
            use_language()
            return _page("public/link_problem.html", 404, expired=False)
        language = use_language(page.locale)
        return _page(
            "public/share.html",
            **sharing.share_page(page, program.settings(last_known=True), language),
        )


per_address(blp, ShareLink, QrPng, QrSvg, Welcome, SharePage)


@blp.route("/landing")
class Landing(MethodView):
    """The built-in landing page, used until the program's `landing_url` is set."""

    @blp.doc(parameters=[REF, LANG])
    @blp.response(200, description="An HTML page.", content_type="text/html")
    def get(self):
        """A plain page that shows the referral the visitor came with, in their language."""
        _use_language()
        ref = request.args.get("ref", "")[:64]
        switch = ("public.Landing", {"ref": ref or None})  # the switcher keeps the referral
        return _page("public/landing.html", switch=switch, ref=ref)


@blp.route("/healthz")
class Healthz(MethodView):
    """Liveness."""

    @blp.response(200, schemas.Health)
    def get(self):
        """The process is up."""
        return {"status": "ok"}


@blp.route("/readyz")
class Readyz(MethodView):
    """Readiness."""

    @blp.response(200, schemas.Readiness)
    @blp.alt_response(503, schema=schemas.Readiness, description="Not ready.")
    def get(self):
        """The database answers and its schema is at this version's newest migration, or ahead
        of it (a newer release's `db upgrade` ran while this version serves: its migrations only
        add, so this version keeps serving); 503 when the database does not answer or its
        schema is behind (run `referral-service db upgrade`)."""
        report = health.readiness()
        return report, (200 if report["status"] == "ok" else 503)

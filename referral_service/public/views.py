"""`/r/<code>` and its QR images, the built-in landing page, `/healthz` and `/readyz`."""

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from flask import current_app, make_response, redirect, render_template, request
from flask.views import MethodView
from flask_smorest import Blueprint
from itsdangerous import URLSafeTimedSerializer

from referral_service.domain import codes, health, program
from referral_service.domain.qr import check_size
from referral_service.errors import ErrorEnvelope, InvalidCode, NotFound, RevokedCode
from referral_service.links import base_url, share_url
from referral_service.models import utcnow
from referral_service.public import schemas

blp = Blueprint("public", __name__, description="Share links, QR codes and health checks.")

CLICK_COOKIE = "rs_click"
CLICK_COOKIE_SALT = "referral-service.click-cookie"


def click_cookie_serializer() -> URLSafeTimedSerializer:
    """Signs the cookie that remembers a visitor's click for the attribution window."""
    return URLSafeTimedSerializer(current_app.secret_key, salt=CLICK_COOKIE_SALT)


def _landing(params: dict) -> str:
    landing = program.settings()["landing_url"] or f"{base_url()}/landing"
    parts = urlsplit(landing)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    return urlunsplit(parts._replace(query=urlencode(query + list(params.items()))))


@blp.route("/r/<code>")
class ShareLink(MethodView):
    """A visit of a share link."""

    @blp.arguments(schemas.VisitQuery, location="query")
    @blp.response(
        302,
        description="To the landing page, with `ref` and `click_id` when the "
        "code is valid; without them when it is forged or revoked.",
    )
    def get(self, query, code):
        """Record a click and redirect to the landing page.

        A forged, mistyped or revoked code still lands the visitor on the landing page, without
        attribution: a friend never meets a broken link.
        """
        try:
            active = codes.lookup(code)
        except (InvalidCode, NotFound):
            response = redirect(_landing({}), 302)
        else:
            click_id = current_app.extensions["clicks"].record(
                active.code_id, active.referrer_id, query.get("via"), utcnow()
            )
            response = redirect(_landing({"ref": active.code, "click_id": click_id}), 302)
            days = program.settings()["attribution_window_days"]
            response.set_cookie(
                CLICK_COOKIE,
                click_cookie_serializer().dumps({"click_id": click_id}),
                max_age=days * 86400,
                httponly=True,
                samesite="Lax",
                secure=request.is_secure,
            )
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response


def _qr(code: str, fmt: str, size) -> object:
    try:
        active = codes.lookup(code)
    except RevokedCode:
        raise NotFound("This referral code has been replaced; its QR code is gone.") from None
    except InvalidCode:
        raise NotFound("This referral code is not valid.") from None
    url = share_url(active.code, via="qr")
    image = current_app.extensions["qr_cache"].get(url, fmt, check_size(size))
    response = make_response(image.body)
    response.mimetype = image.mimetype
    response.set_etag(image.etag)
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response.make_conditional(request)


@blp.route("/r/<code>/qr.png")
class QrPng(MethodView):
    """The QR code of a share link as PNG."""

    @blp.arguments(schemas.QrQuery, location="query")
    @blp.response(200, description="A PNG image (`image/png`).")
    @blp.alt_response(304, description="Not modified (`If-None-Match`).")
    @blp.alt_response(404, schema=ErrorEnvelope, description="A forged or revoked code.")
    def get(self, query, code):
        """A QR code of the share link with `via=qr`, `size` pixels square (64-2048, 512)."""
        return _qr(code, "png", query.get("size"))


@blp.route("/r/<code>/qr.svg")
class QrSvg(MethodView):
    """The QR code of a share link as SVG."""

    @blp.arguments(schemas.QrQuery, location="query")
    @blp.response(200, description="An SVG image (`image/svg+xml`).")
    @blp.alt_response(304, description="Not modified (`If-None-Match`).")
    @blp.alt_response(404, schema=ErrorEnvelope, description="A forged or revoked code.")
    def get(self, query, code):
        """A QR code of the share link with `via=qr`, drawn `size` pixels square."""
        return _qr(code, "svg", query.get("size"))


@blp.route("/landing")
class Landing(MethodView):
    """The built-in landing page, used until the program's `landing_url` is set."""

    @blp.response(200, description="An HTML page.")
    def get(self):
        """A plain page that shows the referral the visitor came with."""
        return render_template("landing.html", ref=request.args.get("ref", "")[:64])


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
        """The database answers and its schema is at the newest migration."""
        report = health.readiness()
        return report, (200 if report["status"] == "ok" else 503)

"""Referral and word-of-mouth tracking service: the application factory."""

import os

from flask import Flask, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from referral_service import config as settings
from referral_service import database, i18n, logs, mail, rate_limits
from referral_service.admin import blp as admin_blp
from referral_service.api import BLUEPRINTS
from referral_service.api.auth import SECURITY_SCHEME
from referral_service.api.spec import SpecRules
from referral_service.converters import register_converters
from referral_service.domain import clicks
from referral_service.domain.clicks import ClickRecorder
from referral_service.domain.codes import CodeCache, CodeSigner
from referral_service.domain.fraud import DisposableDomains, EvidenceKeys
from referral_service.domain.health import MIGRATIONS
from referral_service.domain.qr import QrCache
from referral_service.errors import register_error_handlers
from referral_service.extensions import api, babel, csrf, db, migrate
from referral_service.integrations import blp as integrations_blp
from referral_service.metrics import register_metrics
from referral_service.public.views import blp as public_blp
from referral_service.request_id import register_request_id
from referral_service.security import (
    register_body_limit,
    register_security_headers,
    register_url_check,
)
from referral_service.sessions import CookieSessions
from referral_service.worker import register_tasks


def create_app(config: dict | None = None) -> Flask:
    """Build the application: settings, extensions, services, the task queue, blueprints, error
    handlers, security headers, the body size limit and the check that API addresses are UTF-8."""
    app = Flask(__name__)
    register_settings(app, config)
    register_extensions(app)
    register_services(app)
    register_tasks(app)
    register_blueprints(app)
    register_error_handlers(app)
    register_request_id(app)
    register_security_headers(app)
    register_body_limit(app)
    register_url_check(app)
    register_metrics(app)
    logs.install(app)
    return app


def register_settings(app: Flask, config: dict | None) -> None:
    app.config.update(settings.DEFAULTS)
    overrides = config or {}
    if not {"SECRET_KEY", "SQLALCHEMY_DATABASE_URI"} <= overrides.keys():
        app.config.update(settings.from_environment(app.instance_path))
    app.config.update(overrides)
    settings.check_secret_key(app.config.get("SECRET_KEY"))
    for number, key in enumerate(app.config.get("SECRET_KEY_FALLBACKS") or (), 1):
        settings.check_secret_key(key, f"Key {number} of SECRET_KEY_FALLBACKS")
    mail.server_of(app.config)  # bad mail settings are refused at start, not at the first email
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = database.engine_options(
        app.config["SQLALCHEMY_DATABASE_URI"], app.config
    )
    app.json.sort_keys = False
    app.session_interface = CookieSessions()


def register_extensions(app: Flask) -> None:
    db.init_app(app)
    migrate.init_app(app, db, directory=str(MIGRATIONS), render_as_batch=True)
    api.init_app(
        app,
        spec_kwargs={"info": {"description": API_DESCRIPTION}, "extra_plugins": [SpecRules()]},
    )
    api.spec.components.security_scheme("bearerAuth", SECURITY_SCHEME["bearerAuth"])
    rate_limits.init_app(app)
    csrf.init_app(app)
    babel.init_app(app, locale_selector=i18n.select_locale, default_timezone="UTC")


def register_services(app: Flask) -> None:
    """Per-process helpers: the code signer and caches, the click buffer (its spill files in
    `CLICK_SPILL_DIR`, by default `clicks-spill` in the instance folder, replayed now), the QR
    image cache, the keys of risk evidence and the list of disposable-mail domains."""
    with app.app_context():
        engine = db.engine
    app.extensions["referral_codes"] = CodeSigner(
        app.config["SECRET_KEY"], app.config.get("SECRET_KEY_FALLBACKS") or ()
    )
    app.extensions["code_cache"] = CodeCache(app.config["CACHE_SECONDS"])
    app.extensions["program_cache"] = {}
    app.extensions["clicks"] = ClickRecorder(
        lambda: engine,
        app.config["CLICK_FLUSH_INTERVAL"],
        app.config["CLICK_FLUSH_SIZE"],
        spill_dir=clicks.spill_folder(
            app.config.get("CLICK_SPILL_DIR") or os.path.join(app.instance_path, "clicks-spill"),
            engine.url,
        ),
    )
    app.extensions["clicks"].resume()  # clicks kept by processes stopped during an outage
    app.extensions["qr_cache"] = QrCache(app.config["QR_CACHE_ITEMS"])
    app.extensions["risk_evidence"] = EvidenceKeys(app.config["SECRET_KEY"])
    app.extensions["disposable_domains"] = DisposableDomains(
        app.config.get("DISPOSABLE_DOMAINS_FILE")
    )


def register_blueprints(app: Flask) -> None:
    app.url_map.merge_slashes = False  # `//` in a path is a 404, not a redirect an API would follow
    register_converters(app)  # `<int:...>` is ASCII digits only, not other scripts' digits
    for blueprint in BLUEPRINTS:
        api.register_blueprint(blueprint)
    api.register_blueprint(public_blp)
    api.register_blueprint(integrations_blp)
    app.register_blueprint(admin_blp)

    @app.get("/api/docs/assets/<path:filename>")
    def swagger_assets(filename):
        return send_from_directory(swagger_ui_path, filename, max_age=86400)


API_DESCRIPTION = """\
Referral codes, share links and QR codes for a shop's customers.

Authenticate with `Authorization: Bearer <api key>` (create keys with
`referral-service api-keys create NAME --scope shop|admin`). Every error is
`{"error": {"code", "message", "fields"?, "request_id"}}` (the id also in the
`Request-Id` header). Money travels as decimal strings in
major units with an ISO 4217 currency; times are ISO 8601 with a zone.

String formats of our own: `identifier` (printable characters as Python's `str.isprintable`
has them, no space at either end), `printable` (printable characters), `person-name` (a
person's name in any script: letters, marks, spaces and emoji, with the zero-width joiners,
variation selectors and bidirectional marks that scripts and emoji need; control characters,
bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069) and other
invisible characters are refused; the field's `pattern` states the rule exactly), `locale` (a
locale Babel knows, such as `pl`, `pl-PL` or `en_GB`).
"""

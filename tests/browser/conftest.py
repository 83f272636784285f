"""Browser tests: the real app behind a real HTTP server, driven by Debian's Chromium.

Fixtures (see the README's Development section):

- `live_server` (session): the app served by werkzeug on a free 127.0.0.1 port in a thread,
  on its own migrated SQLite file database, rate limits off. `live_server.url` is its base URL
  (also the app's `PUBLIC_BASE_URL`), `live_server.app` the Flask app; run domain code inside
  `with live_server.app.app_context():`. `live_server.api_key(scope)` makes an API key and
  `live_server.empty_tables()` starts the database afresh. The database is shared by every
  browser test of the session, so tests make data of their own (unique ids).
- `browser` (session): Chromium launched by Playwright (sync API), headless. Its path is
  `CHROMIUM_PATH` (default /usr/bin/chromium). Without it the tests skip, except under CI=true,
  where they fail.
- `viewport`: `desktop` (1280x800) and `phone` (375x740); every test that uses `page` runs at
  both unless it narrows them: `@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)`.
- `page`: a fresh browser context and page per test, at `viewport`, with `base_url` set to
  `live_server.url` (so `page.goto("/landing")` works). Console errors, uncaught page errors
  and Content-Security-Policy violations fail the test; `page_errors.allow(regex)` lets a test
  expect some, `page_errors.messages` lists what was seen so far (the check runs when the
  test's own code has passed). The browser's own request for /favicon.ico (a 404) is allowed.
- `screenshot(page, name="")`: saves `artifacts/screenshots/<test>[-name]-<viewport>.png` and
  returns its path.
"""

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from flask import Flask
from flask_migrate import upgrade
from werkzeug.serving import make_server

from referral_service import create_app
from referral_service.extensions import db
from tests.conftest import app_config, empty_tables, unavailable

CHROMIUM_PATH = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORTS = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 375, "height": 740}, "is_mobile": True, "has_touch": True},
}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
TIMEOUT_MS = 10_000


@dataclass
class LiveServer:
    """The app served over HTTP: `url` (no trailing slash) and the Flask `app`."""

    url: str
    app: Flask

    def api_key(self, scope: str = "shop", name: str | None = None) -> str:
        """A new API key's secret, for `Authorization: Bearer <key>`."""
        from tests.factories import api_key

        with self.app.app_context():
            return api_key(scope, name)

    def empty_tables(self) -> None:
        """Delete every row and put back the program's default settings."""
        with self.app.app_context():
            self.app.extensions["clicks"].flush()
            empty_tables()
            self.app.extensions["program_cache"].clear()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    database_url = f"sqlite:///{tmp_path_factory.mktemp('live') / 'live.sqlite3'}"
    app = create_app(app_config(database_url, PUBLIC_BASE_URL=None))
    with app.app_context():
        upgrade()
        empty_tables()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    app.config["PUBLIC_BASE_URL"] = url
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    yield LiveServer(url=url, app=app)
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()
    with app.app_context():
        app.extensions["clicks"].flush()
        db.session.remove()
        db.engine.dispose()


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        unavailable("Playwright (pip install -e '.[dev]')", error)
    if not (os.path.isfile(CHROMIUM_PATH) and os.access(CHROMIUM_PATH, os.X_OK)):
        unavailable(
            f"Chromium at {CHROMIUM_PATH} (apt-get install chromium, or set CHROMIUM_PATH)",
            FileNotFoundError(CHROMIUM_PATH),
        )
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM_PATH, args=CHROMIUM_ARGS, headless=True
        )
    except Exception as error:
        playwright.stop()
        unavailable(f"Chromium at {CHROMIUM_PATH} (it did not start)", error)
    yield browser
    browser.close()
    playwright.stop()


@pytest.fixture(params=list(VIEWPORTS))
def viewport(request) -> str:
    return request.param


# Chromium asks for /favicon.ico by itself, for any page; the app has none (a 404).
BROWSERS_OWN_FAVICON = re.compile(
    r"^console error: Failed to load resource: .* \(\S+/favicon\.ico:"
)


@dataclass
class PageErrors:
    """What the page reported as wrong: console errors, uncaught errors, CSP violations."""

    messages: list[str] = field(default_factory=list)
    allowed: list[re.Pattern] = field(default_factory=lambda: [BROWSERS_OWN_FAVICON])

    def allow(self, pattern: str) -> None:
        """Expect messages matching `pattern` (a regex searched in each); they do not fail."""
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [m for m in self.messages if not any(p.search(m) for p in self.allowed)]


# Reported by the page itself as it happens: a CSP violation is also a console error in
# Chromium, but the event says exactly which directive refused what.
CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (e) => {
  window.__reportCspViolation(
    `CSP violation: ${e.effectiveDirective} refused ${e.blockedURI || "inline"}` +
    ` at ${e.sourceFile || e.documentURI}:${e.lineNumber || 0}` +
    (e.sample ? ` (${e.sample})` : "")
  );
});
"""


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
def open_page(browser, live_server, viewport, page_errors):
    """`open_page(**options)`: a page of a new browser context (its own cookies) made with
    `options` (a locale, no JavaScript), at `viewport`, watched for errors like `page`."""
    contexts = []

    def new(**options):
        context = browser.new_context(base_url=live_server.url, **VIEWPORTS[viewport], **options)
        contexts.append(context)
        context.set_default_timeout(TIMEOUT_MS)
        context.expose_function("__reportCspViolation", lambda m: page_errors.messages.append(m))
        context.add_init_script(CSP_LISTENER)
        page = context.new_page()
        page.on("console", lambda m: m.type == "error" and page_errors.messages.append(_console(m)))
        page.on("pageerror", lambda e: page_errors.messages.append(f"page error: {e}"))
        return page

    yield new
    for context in contexts:
        context.close()


@pytest.fixture
def page(open_page):
    return open_page()


def _console(message) -> str:
    where = message.location or {}
    return f"console error: {message.text} ({where.get('url', '')}:{where.get('lineNumber', 0)})"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A test whose page reported errors fails, once its own assertions have passed."""
    result = yield
    errors, page = item.funcargs.get("page_errors"), item.funcargs.get("page")
    if errors is not None and page is not None and not page.is_closed():
        page.wait_for_timeout(100)  # let the events still on their way arrive
    if errors is not None and (problems := errors.unexpected()):
        pytest.fail("the page reported errors:\n  " + "\n  ".join(problems), pytrace=False)
    return result


@pytest.fixture
def screenshot(request, viewport):
    """`screenshot(page, name="")` saves a full-page PNG under artifacts/screenshots/."""

    def save(page, name: str = "") -> Path:
        test = request.node.originalname
        path = SCREENSHOTS / f"{test}{'-' + name if name else ''}-{viewport}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), full_page=True)
        return path

    return save


@pytest.fixture
def api(live_server):
    """Empty tables, and keys to the live server's API (see tests/browser/console.py)."""
    from tests.browser.console import new_api

    return new_api(live_server)

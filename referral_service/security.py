"""Security headers on every response, and the body size limit for streamed bodies too.

JSON, images and redirects may load nothing at all. An HTML page (the landing page, the API
docs, the admin console and its error pages) may load its own scripts, styles and images from
this origin, plus exactly the inline `<script>` and `<style>` blocks it carries, allowed by their
SHA-256 hashes. A header a view set itself (the share link's `Referrer-Policy: no-referrer`,
say) is left as the view set it.

A body over `MAX_CONTENT_LENGTH` is a 413 whether it declares its length or is sent in chunks.
An API address whose path or query is not UTF-8 is a 400: decoded with replacement characters,
`/customers/%FF%FE` and `/customers/%FE%FF` would name one customer.
"""

import base64
import hashlib
import io
import re
from urllib.parse import unquote_to_bytes

from flask import Flask, Response, request
from werkzeug.wsgi import get_content_length

from referral_service.errors import BadUrl

NOTHING = "default-src 'none'; frame-ancestors 'none'"
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
HSTS = "max-age=31536000; includeSubDomains"
_INLINE = {
    "script": re.compile(r"<script>(.*?)</script>", re.DOTALL),
    "style": re.compile(r"<style>(.*?)</style>", re.DOTALL),
}


def _hashes(html: str, tag: str) -> str:
    """The CSP sources of the page's inline blocks of `tag`: `'sha256-...'` each."""
    return " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()}'"
        for block in _INLINE[tag].findall(html)
    )


def page_policy(html: str) -> str:
    """The content policy of an HTML page: its own origin and its own inline blocks only."""
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src 'self' {_hashes(html, 'script')}".rstrip(),
            f"style-src 'self' {_hashes(html, 'style')}".rstrip(),
            "img-src 'self' data:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def content_policy(response: Response) -> str:
    """What the response may load: nothing, unless it is an HTML page."""
    page = response.status_code == 200 or 400 <= response.status_code < 500  # not a redirect
    if not page or response.mimetype != "text/html" or response.is_streamed:
        return NOTHING
    return page_policy(response.get_data(as_text=True))


def add_security_headers(response: Response) -> Response:
    """Set the headers a view has not set itself."""
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if "Content-Security-Policy" not in response.headers:
        response.headers["Content-Security-Policy"] = content_policy(response)
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    return response


def register_security_headers(app: Flask) -> None:
    """Every response, errors included, leaves with the security headers."""
    app.after_request(add_security_headers)


class StreamedBodyLimit:
    """WSGI middleware: a body sent without `Content-Length` (chunked) gets one.

    Werkzeug reads such a body up to `MAX_CONTENT_LENGTH` and silently stops there. Here it is
    read up to one byte past the limit and handed on with its length, so that Flask refuses one
    over the limit with 413, as it does a body that declares its length.
    """

    def __init__(self, app: Flask, wsgi_app):
        self.app = app
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        limit = self.app.config.get("MAX_CONTENT_LENGTH")
        if (
            limit is not None
            and environ.get("wsgi.input_terminated")
            and get_content_length(environ) is None  # no length, or a chunked body
        ):
            body = _read_up_to(environ["wsgi.input"], limit + 1)
            environ.pop("HTTP_TRANSFER_ENCODING", None)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self.wsgi_app(environ, start_response)


def _read_up_to(stream, size: int) -> bytes:
    """Up to `size` bytes of a stream that may return fewer than asked at a time."""
    chunks, left = [], size
    while left > 0:
        chunk = stream.read(min(left, 64 * 1024))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def register_body_limit(app: Flask) -> None:
    """Bodies over `MAX_CONTENT_LENGTH` are refused with 413, streamed ones too."""
    app.wsgi_app = StreamedBodyLimit(app, app.wsgi_app)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def register_url_check(app: Flask) -> None:
    """API paths and query strings must be UTF-8 once percent-decoded, or the request is a 400.

    Werkzeug decodes a path's bytes as UTF-8 with U+FFFD for each bad byte, so two different ids
    (`%FF%FE`, `%FE%FF`) could meet as one: a path holding U+FFFD is refused (no id needs that
    character), and so is a query string whose bytes are not UTF-8. Public pages are left alone:
    a share link mangled that way is still read as far as it can be.
    """

    @app.before_request
    def refuse_undecodable_urls():
        if not request.path.startswith("/api/"):
            return
        query = request.environ.get("QUERY_STRING", "").encode("latin-1", "replace")
        if "\ufffd" in request.path or not _is_utf8(unquote_to_bytes(query)):
            raise BadUrl(
                "The address is not valid UTF-8: percent-escape each character's UTF-8 bytes "
                "(%C3%A9 for é)."
            )

"""Security headers on every response, and the body size limit for streamed bodies too.

JSON, images and redirects may load nothing at all. An HTML page (the landing page, the API
docs, the admin console and its error pages) may load its own scripts, styles and images from
this origin, plus the inline `<script>` and `<style>` blocks of the templates it was rendered
from, allowed by their SHA-256 hashes. Those hashes are taken from the templates' sources when
the app starts (`InlineBlocks`), never from the page as sent: a script that reached a page
through its data (an escape missed somewhere) is not the template's and the browser refuses it.
Only a block without Jinja expressions can be hashed so: one that needs data takes it from a
`data-` attribute (the API docs page, templates/swagger_ui.html) or is a static file. A header a
view set itself (the share link's `Referrer-Policy: no-referrer`, say) is left as the view set it.

A body over `MAX_CONTENT_LENGTH` is a 413 whether it declares its length or is sent in chunks.
An API address whose path or query is not UTF-8 is a 400: decoded with replacement characters,
`/customers/%FF%FE` and `/customers/%FE%FF` would name one customer.
"""

import base64
import hashlib
import io
import re
from urllib.parse import unquote_to_bytes

from flask import Flask, Response, before_render_template, g, has_request_context, request
from jinja2 import Environment, TemplateNotFound, meta, nodes
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
INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)
TAGS = ("script", "style")


def source_hash(block: str) -> str:
    """A block's CSP source: `'sha256-<base64 of its UTF-8 bytes' SHA-256>'`."""
    return f"'sha256-{base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()}'"


class InlineBlocks:
    """The hashes of the inline `<script>` and `<style>` blocks of every template, read from
    the templates' sources: `hashes(name)` gives a template's own blocks' and those of the
    templates it extends, includes or imports, by tag.

    A block is hashed as it will be rendered when it holds no Jinja expression: its text, and
    the rendering of any template it includes by a constant name that holds none either (the
    public pages' stylesheet). A block with expressions (`dynamic`) gets no hash: the browser
    would refuse it, so the service's templates have none (a test says so).
    """

    def __init__(self, env: Environment):
        self.env = env
        self.own: dict[str, dict[str, set[str]]] = {}
        self.uses: dict[str, set[str]] = {}
        self.dynamic: dict[str, list[str]] = {}
        for name in env.list_templates(filter_func=lambda name: name.endswith(".html")):
            self._read(name)
        self._closed: dict[str, dict[str, frozenset[str]]] = {}

    def _read(self, name: str) -> None:
        source = self.env.loader.get_source(self.env, name)[0]
        self.uses[name] = {
            used for used in meta.find_referenced_templates(self.env.parse(source)) if used
        }
        own = self.own[name] = {tag: set() for tag in TAGS}
        for tag, body in INLINE.findall(source):
            text = self._static_text(body)
            if text is None:
                self.dynamic.setdefault(name, []).append(body)
            else:
                own[tag].add(source_hash(text))

    def _static_text(self, body: str) -> str | None:
        """The block's text as rendered, or None when it holds an expression or a tag other
        than an include of a template without any. (A newline is added because Jinja drops
        the last one of a template, which is not the last of the page.)"""
        template = self.env.parse(body + "\n")
        parts = []
        for node in template.body:
            if isinstance(node, nodes.Output) and all(
                isinstance(child, nodes.TemplateData) for child in node.nodes
            ):
                parts.extend(child.data for child in node.nodes)
            elif isinstance(node, nodes.Include) and isinstance(node.template, nodes.Const):
                included = self.env.loader.get_source(self.env, node.template.value)[0]
                text = self._static_text(included)
                if text is None:
                    return None
                parts.append(self.env.from_string(included).render())
            else:
                return None
        return "".join(parts)

    def hashes(self, name: str) -> dict[str, frozenset[str]]:
        """The hashes of `name`'s blocks and of the templates it uses, by tag."""
        if name not in self._closed:
            found = {tag: set() for tag in TAGS}
            seen, todo = set(), [name]
            while todo:
                current = todo.pop()
                if current in seen:
                    continue
                if current not in self.own:  # a template added after the start
                    try:
                        self._read(current)
                    except TemplateNotFound:
                        continue
                seen.add(current)
                for tag in TAGS:
                    found[tag] |= self.own[current][tag]
                todo.extend(self.uses[current])
            self._closed[name] = {tag: frozenset(found[tag]) for tag in TAGS}
        return self._closed[name]


def page_policy(scripts=(), styles=()) -> str:
    """The content policy of an HTML page: its own origin, and the inline blocks of the given
    hashes only."""
    return "; ".join(
        [
            "default-src 'none'",
            " ".join(["script-src 'self'", *sorted(scripts)]),
            " ".join(["style-src 'self'", *sorted(styles)]),
            "img-src 'self' data:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def content_policy(response: Response) -> str:
    """What the response may load: nothing, unless it is an HTML page; then the inline blocks
    of the templates rendered for it (recorded by `_rendering`), and no other."""
    page = response.status_code == 200 or 400 <= response.status_code < 500  # not a redirect
    if not page or response.mimetype != "text/html" or response.is_streamed:
        return NOTHING
    blocks = g.get("inline_blocks", {})
    return page_policy(blocks.get("script", ()), blocks.get("style", ()))


def _rendering(app: Flask, template, context) -> None:
    """Before a template is rendered in a request: its blocks' hashes join the page's."""
    if not has_request_context() or template.name is None:
        return
    page = g.setdefault("inline_blocks", {tag: set() for tag in TAGS})
    for tag, hashes in app.extensions["inline_blocks"].hashes(template.name).items():
        page[tag] |= hashes


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
    """Every response, errors included, leaves with the security headers; the hashes of the
    templates' inline blocks are read once, here."""
    app.extensions["inline_blocks"] = InlineBlocks(app.jinja_env)
    before_render_template.connect(_rendering, app)
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

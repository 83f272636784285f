"""A bare Flask application serving one fixed HTML page: the baseline of `bench_pages.py`.

What it measures: nothing by itself. It has one endpoint, `GET /`, that returns the same HTML
page every time, with no application code, templates or database: loading it shows what Flask and
the WSGI server cost to send a page of that size on this machine. `bench_pages.py` writes the
service's own share page (as sent) to a file, names it in `BARE_PAGE_FILE` and runs this app under
gunicorn next to the service, with the same settings, so that both send the same bytes.

How to run it alone (from the repository root, with the development dependencies installed):

    .venv/bin/gunicorn --workers 2 --bind 127.0.0.1:8002 --chdir bench bare_page_app:app

Without `BARE_PAGE_FILE` it serves a built-in page of about 20 kB. Needs: Flask and gunicorn (both
are dependencies of the service).
"""

import os
from pathlib import Path

from flask import Flask


def _default_page() -> bytes:
    rows = "\n".join(
        f'<li><span><strong>A*** K.</strong><br><span class="muted">Joined on {day} Jan 2025'
        f'</span></span><span class="badge">Signed up, no purchase yet</span></li>'
        for day in range(1, 151)
    )
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<title>Invite your friends</title>\n</head>\n<body>\n<main>\n"
        f'<h1>Invite your friends</h1>\n<ul class="list">\n{rows}\n</ul>\n'
        "</main>\n</body>\n</html>\n"
    ).encode()


_file = os.environ.get("BARE_PAGE_FILE", "").strip()
PAGE = Path(_file).read_bytes() if _file else _default_page()

app = Flask(__name__)


@app.get("/")
def index():
    """The fixed page."""
    return PAGE, 200, {"Content-Type": "text/html; charset=utf-8"}

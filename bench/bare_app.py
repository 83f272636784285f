"""A bare Flask application: the baseline the referral service's public endpoints are compared to.

What it measures: nothing by itself. It has one endpoint, `GET /`, that returns a short text, so
that loading it shows what Flask and the WSGI server cost on this machine with no application
code at all. `bench_public.py` runs it under gunicorn next to the service, with the same settings.

How to run it alone (from the repository root, with the development dependencies installed):

    .venv/bin/gunicorn --workers 2 --bind 127.0.0.1:8001 --chdir bench bare_app:app

Needs: Flask and gunicorn (both are dependencies of the service).
"""

from flask import Flask

app = Flask(__name__)


@app.get("/")
def index():
    """A short plain text answer."""
    return "ok\n", 200, {"Content-Type": "text/plain; charset=utf-8"}

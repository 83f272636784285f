"""Gunicorn settings for production: `gunicorn -c gunicorn.conf.py wsgi:app`."""

import os

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("THREADS", "1"))
graceful_timeout = 30


def worker_exit(server, worker):
    """Write the clicks this worker still buffers before it goes (see domain/clicks.py)."""
    app = getattr(worker, "wsgi", None)
    recorder = getattr(app, "extensions", {}).get("clicks") if app else None
    if recorder is not None:
        recorder.close()

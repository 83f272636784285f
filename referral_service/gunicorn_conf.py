"""Gunicorn settings for production, which `referral-service serve` runs with
(`gunicorn -c python:referral_service.gunicorn_conf referral_service.wsgi:app`).

The access log is off unless asked for (`--access-logfile -`); its lines then carry the path
without the query string and no referrer, which may hold a search or a person's address (the
service masks addresses in every log line too, see referral_service/logs.py).
"""

import os

from referral_service.config import server_settings

bind = os.environ.get("BIND", "127.0.0.1:8000")
# WEB_CONCURRENCY (default 2) and THREADS (default 1), each 1 to 64: anything else stops the start
workers, threads = server_settings().values()
graceful_timeout = 30
# gunicorn's control socket (one path per user: several servers on a host would take each
# other's) is not used by the service
control_socket_disable = True
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(a)s" %(M)sms'


def worker_exit(server, worker):
    """Write the clicks this worker still buffers before it goes (see domain/clicks.py)."""
    app = getattr(worker, "wsgi", None)
    recorder = getattr(app, "extensions", {}).get("clicks") if app else None
    if recorder is not None:
        recorder.close()

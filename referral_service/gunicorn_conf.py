"""Gunicorn settings for production, which `referral-service serve` runs with
(`gunicorn -c python:referral_service.gunicorn_conf referral_service.wsgi:app`).

The access log is off unless asked for (`--access-logfile -`); its lines then carry the path
without the query string and no referrer, which may hold a search or a person's address (the
service masks addresses in every log line too, see referral_service/logs.py).
"""

import os
import shutil
import tempfile

from referral_service import config as service_config
from referral_service import log_format
from referral_service.config import SettingsError, flag, server_settings

# WEB_CONCURRENCY (default 2) and THREADS (default 1), each 1 to 64, and BIND (default
# 127.0.0.1:8000): anything else stops the start (`referral-service serve` says so in one line)
_settings = server_settings()
bind = _settings["bind"]
workers = _settings["workers"]
threads = _settings["threads"]
# gunicorn's sync or gthread worker (as gunicorn would pick for THREADS), whose own refusals (a
# request line or headers too large, a request that is not HTTP) are the JSON error envelope
worker_class = "referral_service.gunicorn_worker." + (
    "ThreadWorker" if threads > 1 else "SyncWorker"
)
graceful_timeout = 30
# gunicorn's control socket (one path per user: several servers on a host would take each
# other's) is not used by the service
control_socket_disable = True
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(a)s" %(M)sms'


def worker_exit(server, worker):
    """Write the clicks this worker still buffers before it goes (see domain/clicks.py).

    In the worker's own process (gunicorn also calls this hook in the master, for a worker found
    gone, with the master's listening sockets), the worker's copies of the listening sockets are
    closed first: at a stop the master has closed its own, and a connection made while the
    clicks are written (up to 10 s with a slow database) would otherwise wait in the socket's
    queue, accepted by no one, and be reset when the worker exits; closed, it is refused at
    once, and a proxy sends it to another instance."""
    if worker.pid == os.getpid():
        for listener in worker.sockets:
            listener.close()
    app = getattr(worker, "wsgi", None)
    recorder = getattr(app, "extensions", {}).get("clicks") if app else None
    if recorder is not None:
        recorder.close()


# LOG_FORMAT=json: gunicorn's error log and access log (and the rest) write one JSON object a line
if service_config.log_format() == "json":
    logger_class = log_format.gunicorn_logger()


# prometheus_client's multiprocess mode (metrics.py): each start makes a fresh folder for the
# workers' figures in the system's temporary folder (TMPDIR), names it in PROMETHEUS_MULTIPROC_DIR
# for the workers before any starts, and removes it when gunicorn stops. prometheus_client is not
# imported here: the workers, forked from this process, must read that variable first.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def on_starting(server):
    try:
        metrics_on = flag("METRICS") is not False
    except SettingsError:  # the application refuses it at its start, in one line
        metrics_on = True
    if not metrics_on:
        os.environ.pop(MULTIPROC_DIR, None)
        return
    os.environ[MULTIPROC_DIR] = tempfile.mkdtemp(prefix="referral-service-metrics-")
    server.referral_metrics_dir = os.environ[MULTIPROC_DIR]


def child_exit(server, worker):
    """A worker is gone: its live figures (the clicks it buffered) go with it."""
    if getattr(server, "referral_metrics_dir", None):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, server.referral_metrics_dir)


def on_exit(server):
    folder = getattr(server, "referral_metrics_dir", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)

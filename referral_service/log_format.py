"""Log lines as JSON objects: `LOG_FORMAT=json` (the default, `text`, leaves logging as it is).

Every line on standard error (and in gunicorn's access and error logs, wherever they go) is then
one JSON object (python-json-logger) with `time` (ISO 8601, UTC, `Z`), `level`, `logger`,
`message`, the `request_id` of the request being served (none outside a request; on an access
line, the request's `Request-Id`) and, for an exception, `exc_info`: the traceback as one
string. Lines at level INFO and above are written.

Nothing in a line escapes the masking of logs.py: the message is masked when the record is made
(the record factory), and the traceback, the stack and any extra field of a record are masked
here, when the line is written.
"""

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

from pythonjsonlogger.json import JsonFormatter

from referral_service import logs
from referral_service.config import LOG_FORMATS, SettingsError
from referral_service.request_id import OUTSIDE

# the `Request-Id` header of the response gunicorn's access line is being written for
_access_request_id: ContextVar[str | None] = ContextVar("access_request_id", default=None)
_OWN = ("time", "level", "logger", "message", "request_id", "exc_info", "stack_info")
_PLAIN = (int, float, bool, type(None))


class JsonLines(JsonFormatter):
    """A record as one JSON object on one line, every field masked (see the module)."""

    def __init__(self):
        super().__init__(json_ensure_ascii=False)
        self._skip_fields.add(logs.MASKED)

    def add_fields(self, log_data, record, message_dict):
        log_data["time"] = _utc(record.created)
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        if getattr(record, logs.MASKED, False):
            log_data["message"] = record.message
        else:  # made before the factory was installed: masked now
            log_data["message"] = logs.redact_record(record.name, record.msg, record.message)
        request_id = getattr(record, "request_id", OUTSIDE)
        if record.name == "gunicorn.access":
            # an access line is written after the request: its id is the response's header
            request_id = _access_request_id.get() or request_id
        if request_id and request_id not in (OUTSIDE, "-"):
            log_data["request_id"] = logs.redact(str(request_id))
        for key in ("exc_info", "stack_info"):
            if message_dict.get(key):
                log_data[key] = logs.redact(str(message_dict[key]))
        extra = {}
        super().add_fields(extra, record, {})
        for key, value in extra.items():
            if key not in _OWN:
                log_data[key] = value if isinstance(value, _PLAIN) else logs.redact(str(value))

    def formatException(self, ei) -> str:
        return logs.redact(logging.Formatter.formatException(self, ei))

    def formatStack(self, stack_info) -> str:
        return logs.redact(logging.Formatter.formatStack(self, stack_info))


def _utc(created: float) -> str:
    moment = datetime.fromtimestamp(created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Stderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a line is written (as logging's last resort)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure(log_format: str, app_logger: str | None = None) -> None:
    """Set this process's logging for `log_format` (`text`: nothing changes; `json`: one JSON
    object a line on standard error, from every logger, at level INFO and above, once however
    often called). `app_logger` is the Flask application's logger, whose own handler Flask may
    have added (it would write the lines a second time, as text)."""
    if log_format not in LOG_FORMATS:
        raise SettingsError(f"LOG_FORMAT must be text or json; got {log_format!r}")
    if log_format != "json":
        return
    logs.install()
    root = logging.getLogger()
    if not any(isinstance(handler.formatter, JsonLines) for handler in root.handlers):
        handler = _Stderr()
        handler.setFormatter(JsonLines())
        root.addHandler(handler)
        if root.level == logging.WARNING:  # logging's default: not set by the process
            root.setLevel(logging.INFO)
    if app_logger is not None:
        from flask.logging import default_handler

        logging.getLogger(app_logger).removeHandler(default_handler)


def gunicorn_logger():
    """gunicorn's logger class for `LOG_FORMAT=json`: its error and access logs write JSON
    lines (to the same outputs as ever), masked, and the rest of the process logs as
    `configure` says."""
    from gunicorn.glogging import Logger

    class JsonLogger(Logger):
        def access(self, resp, req, environ, request_time):
            found = next((v for k, v in resp.headers if k.lower() == "request-id"), None)
            token = _access_request_id.set(found)
            try:
                super().access(resp, req, environ, request_time)
            finally:
                _access_request_id.reset(token)

        def setup(self, cfg):
            super().setup(cfg)
            configure("json")
            for log in (self.error_log, self.access_log):
                for handler in log.handlers:
                    handler.setFormatter(JsonLines())

    return JsonLogger

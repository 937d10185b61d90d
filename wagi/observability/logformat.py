"""Log lines as JSON objects (``--log-format json``), with python-json-logger.

One object per line, for log shippers, from every logger a server writes to:
gunicorn's error log (``gunicorn.error``) and access log (``gunicorn.access``),
wagi's events (``wagi``) and module stderr (``wagi.module``). Each carries
``time``, ``level``, ``logger``, ``pid`` and ``message``, and, made while a
request is served, the request's fields (:meth:`wagi.observability.observe.Observation.log_fields`):
``request_id``, ``engine``, ``route`` (when one matched), ``status`` (once
sent), ``duration_ms`` (since the request arrived; on the access line, the
whole request), ``run_ms`` and ``ending`` (once the module ran)::

    {"time": "2026-11-24T07:05:32.120+00:00", "level": "ERROR", "logger": "wagi",
     "pid": 4242, "message": "[/probe/...] trapped: wasm trap: unreachable",
     "request_id": "5f0c...", "engine": "wasmtime", "route": "/probe/...",
     "duration_ms": 1.234, "run_ms": 0.811, "ending": "trapped"}

The text format (the default) is gunicorn's own, unchanged.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from gunicorn.config import AccessLogFormat
from gunicorn.glogging import Logger
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from wagi.observability.observe import ENVIRON_KEY, Observation, current


def json_logs() -> bool:
    """Whether ``--log-format json`` is in force (``WAGI_LOG_FORMAT``, as every process of
    a server sees it)."""
    return os.environ.get("WAGI_LOG_FORMAT") == "json"


class JsonFormatter(_JsonFormatter):
    """A record as one JSON object, with the current request's fields."""

    def __init__(self) -> None:
        super().__init__(
            ["levelname", "name", "process", "message"],
            rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
            timestamp="time",
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        observation = current()
        if observation is not None:
            for key, value in observation.log_fields().items():
                log_data.setdefault(key, value)  # a record's own fields win

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        # The time first, as people read a line.
        return {"time": log_data.pop("time"), **log_data}


_DEFAULT_ACCESS_FORMAT = AccessLogFormat.default
"""gunicorn's own access line: what most servers log, and what nginx logs in front."""


class GunicornLogger(Logger):  # type: ignore[misc]  # gunicorn has no type hints
    """gunicorn's logger (``logger_class``): with ``--log-format json`` its error and access
    lines are JSON objects; otherwise it is gunicorn's own, unchanged.

    An access line carries the request line's parts, the status, the bytes sent, the
    whole request's ``duration_ms`` and the wagi fields of the request it reports.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        self.json = json_logs()
        if self.json:
            formatter = JsonFormatter()
            for log in (self.error_log, self.access_log):
                for handler in log.handlers:
                    if getattr(handler, "_gunicorn", False):
                        handler.setFormatter(formatter)

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.json:
            if self.cfg.access_log_format == _DEFAULT_ACCESS_FORMAT:
                self._default_access_line(resp, environ)
            else:
                super().access(resp, req, environ, request_time)
            return
        if not self.access_log_enabled:
            return
        status = str(resp.status).split(None, 1)[0]
        fields: dict[str, Any] = {}
        observation = environ.get(ENVIRON_KEY)
        if isinstance(observation, Observation):
            fields.update(observation.log_fields())
        method = environ.get("REQUEST_METHOD", "")
        target = environ.get("RAW_URI", "")
        fields.update(
            {
                "method": method,
                "target": target,
                "protocol": environ.get("SERVER_PROTOCOL"),
                "status": int(status) if status.isdigit() else status,
                "bytes": getattr(resp, "sent", None),
                "duration_ms": round(request_time.total_seconds() * 1000, 3),
                "remote_addr": environ.get("REMOTE_ADDR"),
                "user_agent": environ.get("HTTP_USER_AGENT"),
                "referer": environ.get("HTTP_REFERER"),
            }
        )
        fields = {key: value for key, value in fields.items() if value is not None}
        try:
            self.access_log.info("%s %s %s", method, target, status, extra=fields)
        except Exception:
            self.exception("cannot write the access log line")

    def _default_access_line(self, resp: Any, environ: dict[str, Any]) -> None:
        """gunicorn's default access line, byte for byte, from the nine atoms it names.

        gunicorn's own ``access`` first copies every request header, response header and
        environ variable into its atoms (for formats that name them): about 28 µs of CPU a
        request, where this costs a few (docs/performance.md).
        """
        if not self.access_log_enabled:
            return
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        sent = getattr(resp, "sent", None)
        atoms = {
            "h": environ.get("REMOTE_ADDR", "-"),
            "l": "-",
            "u": self._get_user(environ) or "-",
            "t": self.now(),
            "r": f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}",
            "s": status,
            "b": str(sent) if sent is not None else "-",
            "f": environ.get("HTTP_REFERER", "-"),
            "a": environ.get("HTTP_USER_AGENT", "-"),
        }
        try:
            self.access_log.info(self.cfg.access_log_format, self.atoms_wrapper_class(atoms))
        except Exception:
            self.exception("cannot write the access log line")

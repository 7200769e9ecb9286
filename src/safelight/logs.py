"""Logging for every Safelight process: plain text (the default) or one JSON object per line.

`SAFELIGHT_LOG_FORMAT=json` switches every logger, uvicorn's included, to JSON lines with `time`,
`level`, `logger`, `message`, and the task's `task_id`, `account`, `model`, `backend`, `state`,
`fail_code` wherever the code that logs knows them (passed as `extra=`). HTTP requests are logged
by the API's own access log (`safelight.access`) with the kie body code, not only the HTTP status.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

# Attributes our code passes in `extra=` that belong in a JSON line.
CONTEXT_FIELDS = ("task_id", "account", "model", "backend", "state", "fail_code", "worker", "route", "method",
                  "path", "status", "code", "duration_ms", "client")

LogFormat = Literal["text", "json"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "info", log_format: LogFormat = "text") -> None:
    """One handler on the root logger, in the chosen format; uvicorn's loggers go through it too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True

"""Logs as JSON lines on stderr (journald and log pipelines read them as they are)."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpclib logs every refused request at INFO/ERROR with tracebacks; ours are enough.
    logging.getLogger("grpclib").setLevel(logging.CRITICAL)
    # The HTTP/2 internals log every frame and header at DEBUG: noise that would bury ours.
    for name in ("h2", "hpack", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Libraries' warnings (deprecations) go to the log as JSON, never raw to the terminal.
    logging.captureWarnings(True)
    warnings.simplefilter("ignore", DeprecationWarning)

"""Logging set-up: plain text or JSON lines, and masking of phone numbers.

Nothing here ever formats a secret: request headers are not logged, and the store URL is
logged without its password.
"""

from __future__ import annotations

import json
import logging
import re
import time

# Phone numbers have at most 15 digits (E.164); longer runs are ids (requestId has 19), which
# must stay whole to correlate logs.
_NUMBER = re.compile(r"(?<!\d)\d{7,15}(?!\d)")


def mask_number(text: str) -> str:
    """Keep the first 4 and last 2 digits of every phone-number-like run: 8521*****14."""
    return _NUMBER.sub(lambda m: m.group()[:4] + "*" * (len(m.group()) - 6) + m.group()[-2:],
                       text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class MaskingFilter(logging.Filter):
    """Masks phone numbers in every message below DEBUG verbosity."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_number(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    if level.lower() != "debug":
        handler.addFilter(MaskingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

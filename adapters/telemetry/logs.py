"""JSON logs: ``thaw serve --log-format json`` (or ``THAW_LOG_FORMAT=json``).

One JSON object per line on stderr: ``time`` (UTC, RFC 3339 with milliseconds),
``level``, ``logger``, ``message``, then what the record knows of ``trace_id``,
``span_id``, ``capability``, ``revision``, ``event_id`` (from the record's
``extra``; ``ctx.log`` lines today carry the trace id and capability only inside
their ``[trace capability]`` message prefix, which is moved into the fields), the
access log's ``key=value`` pairs as fields, and ``exception`` when there is one.

Secrets: every message and string field goes through ``scrub_secrets`` (URLs with
passwords, bearer tokens, ``password=...``), a ``headers`` field through
``redact_headers``, and the values of the NATS credentials this process was given
in its environment (``THAW_NATS_PASSWORD``, ``THAW_NATS_TOKEN``) are replaced
wherever they appear.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from thaw.decisions._redaction import redact_headers, scrub_secrets

__all__ = [
    "FIELDS",
    "FORMATS",
    "LOG_FORMAT_ENV",
    "JsonFormatter",
    "configure_logging",
    "log_format",
]

LOG_FORMAT_ENV = "THAW_LOG_FORMAT"
FORMATS = ("text", "json")
TEXT_FORMAT = "thaw: %(name)s: %(message)s"
FIELDS = ("trace_id", "span_id", "capability", "revision", "event_id")
_SECRET_ENV = ("THAW_NATS_PASSWORD", "THAW_NATS_TOKEN")
_CTX_PREFIX = re.compile(r"\[([0-9a-f]{32}) ([^\]\s]+)\] ")
_ACCESS_PAIR = re.compile(r"(\w+)=(\S+)")
_ACCESS_FIELDS = {"trace": "trace_id"}  # the access line's names that have a common field
_ENCODER = msgspec.json.Encoder()


def log_format(given: str | None) -> str:
    """``--log-format`` if given, else ``THAW_LOG_FORMAT``, else text; a clear error for
    anything else."""
    chosen = given or os.environ.get(LOG_FORMAT_ENV, "").strip().lower() or "text"
    if chosen not in FORMATS:
        raise ValueError(
            f"{LOG_FORMAT_ENV}={chosen[:20]!r} is not a log format (one of {', '.join(FORMATS)})"
        )
    return chosen


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module doc)."""

    def __init__(self, secrets: tuple[str, ...] | None = None) -> None:
        super().__init__()
        if secrets is None:
            secrets = tuple(v for v in (os.environ.get(n, "") for n in _SECRET_ENV) if v)
        self._secrets = tuple(sorted(secrets, key=len, reverse=True))

    def _clean(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return scrub_secrets(text)

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        found: dict[str, Any] = {}
        matched = _CTX_PREFIX.match(message)
        if matched:  # ctx.log: "[trace capability] message"
            found["trace_id"], found["capability"] = matched[1], matched[2]
            message = message[matched.end() :]
        elif record.name == "thaw.http.access":
            for key, value in _ACCESS_PAIR.findall(message):
                if value != "-":
                    found[_ACCESS_FIELDS.get(key, key)] = value
        line: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": self._clean(message),
        }
        attributes = record.__dict__
        for name in FIELDS:
            value = attributes.get(name, found.get(name))
            if value:
                line[name] = self._clean(str(value))
        for key, value in found.items():
            if key not in line:
                line[key] = self._clean(value)
        headers = attributes.get("headers")
        if isinstance(headers, Mapping):
            line["headers"] = redact_headers({str(k): str(v) for k, v in headers.items()})
        if record.exc_info:
            line["exception"] = self._clean(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = self._clean(record.exc_text)
        return _ENCODER.encode(line).decode()


def _rfc3339(created: float) -> str:
    seconds = int(created)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{int((created - seconds) * 1000):03d}Z"


def configure_logging(form: str, *, level: int = logging.INFO) -> None:
    """One stderr handler on the root logger, text (``thaw: logger: message``) or JSON;
    like ``logging.basicConfig``, nothing when the root logger has handlers already."""
    handler = logging.StreamHandler(sys.stderr)
    if form == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])

"""Retention: how long the dead-letter stream and the app streams keep messages.

Dead letters hold payloads (and held credentials before they were redacted), so
they are not kept forever: ``THAW_DLQ`` (and ``THAW_REPLAY``) get an age limit,
14 days unless ``THAW_DLQ_MAX_AGE`` says otherwise (``thaw serve --dlq-max-age``
sets it for the process and its workers; ``0`` keeps them forever). App streams
keep everything unless ``THAW_STREAM_MAX_AGE`` (``--stream-max-age``) gives them
a limit. Durations are seconds or a number with ``s``, ``m``, ``h`` or ``d``.

Provisioning a stream that exists with another age limit does not fail the host:
``ensure_stream`` changes the limit in place (on a backbone that can,
``UpdatesStreamAges``), logging the old and the new value, or, for an app stream
when no app-stream age is configured, leaves the existing one as the operator
set it. Every other difference is still a ``DefinitionConflict``. Hosts sharing
a backbone should share these settings: the last one to provision sets the age.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

import msgspec

from thaw._errors import ConfigError, DefinitionConflict, StreamNotFound
from thaw.backbone._contract import Backbone, StreamConfig, UpdatesStreamAges

__all__ = [
    "Retention",
    "DEFAULT_DLQ_MAX_AGE",
    "DLQ_MAX_AGE_ENV",
    "STREAM_MAX_AGE_ENV",
    "parse_duration",
    "retention_from_environment",
    "ensure_stream",
    "format_duration",
]

log = logging.getLogger("thaw.provision")

DEFAULT_DLQ_MAX_AGE = 14 * 86400.0
DLQ_MAX_AGE_ENV = "THAW_DLQ_MAX_AGE"
STREAM_MAX_AGE_ENV = "THAW_STREAM_MAX_AGE"
MIN_MAX_AGE = 60.0  # shorter would delete what an operator has not had time to look at
MAX_MAX_AGE = 10 * 365 * 86400.0
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")


class Retention(msgspec.Struct, frozen=True, kw_only=True):
    dead_letters: float = DEFAULT_DLQ_MAX_AGE  # seconds; 0 keeps them forever
    streams: float | None = None  # app streams; None: create unlimited, keep an existing age


def parse_duration(text: str, *, what: str = "max age") -> float:
    """Seconds from ``14d``, ``12h``, ``30m``, ``90s`` or ``3600``; ``0`` means no limit."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ConfigError(
            f"{what} {text[:40]!r} is not a duration: seconds, or a number with s, m, h or d "
            "(e.g. 14d), or 0 for no limit"
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds and not MIN_MAX_AGE <= seconds <= MAX_MAX_AGE:
        raise ConfigError(
            f"{what} {text[:40]!r} must be 0 (no limit) or from {MIN_MAX_AGE:g} seconds to 10 years"
        )
    return seconds


def format_duration(seconds: float) -> str:
    if not seconds:
        return "no limit"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def retention_from_environment(environ: Mapping[str, str] | None = None) -> Retention:
    """The ages ``THAW_DLQ_MAX_AGE`` and ``THAW_STREAM_MAX_AGE`` set (defaults otherwise)."""
    env = os.environ if environ is None else environ
    dead = env.get(DLQ_MAX_AGE_ENV, "").strip()
    streams = env.get(STREAM_MAX_AGE_ENV, "").strip()
    return Retention(
        dead_letters=parse_duration(dead, what=DLQ_MAX_AGE_ENV) if dead else DEFAULT_DLQ_MAX_AGE,
        streams=parse_duration(streams, what=STREAM_MAX_AGE_ENV) if streams else None,
    )


def _only_age_differs(existing: StreamConfig, wanted: StreamConfig) -> bool:
    # The duplicate window follows the age on JetStream (it must fit within it).
    def ageless(config: StreamConfig) -> StreamConfig:
        return msgspec.structs.replace(config, max_age=0.0, duplicate_window=0.0)

    return existing.max_age != wanted.max_age and ageless(existing) == ageless(wanted)


async def ensure_stream(
    backbone: Backbone, config: StreamConfig, *, keep_age: bool = False
) -> None:
    """Create or confirm ``config``; an existing stream differing only in age is updated
    (or, with ``keep_age``, left as it is). Anything else that differs conflicts."""
    try:
        await backbone.add_stream(config)
        return
    except DefinitionConflict:
        try:
            existing = (await backbone.stream_info(config.name)).config
        except StreamNotFound:
            existing = None
        if existing is None or not _only_age_differs(existing, config):
            raise
    old, new = format_duration(existing.max_age), format_duration(config.max_age)
    if keep_age:
        log.info("stream %s keeps its max age (%s; no app stream age is set)", config.name, old)
        return
    if not isinstance(backbone, UpdatesStreamAges):
        log.warning(
            "stream %s keeps its max age %s: this backbone cannot change it to %s",
            config.name,
            old,
            new,
        )
        return
    await backbone.update_stream(config)
    log.warning("stream %s: max age changed from %s to %s", config.name, old, new)

"""The definition rules every backbone enforces, checked here before a request leaves.

JetStreamBackbone raises the same ``ConfigError`` (same words) as MemoryBackbone for
a bad stream, consumer, subject, bucket or key, so the conformance suite holds for
both. They come from ``runtime.lowlevel``.
"""

from __future__ import annotations

from runtime.lowlevel import (
    validate_consumer_config,
    validate_fetch,
    validate_kv_key,
    validate_name,
    validate_stream_config,
    validate_subject,
)

__all__ = [
    "validate_stream_config",
    "validate_consumer_config",
    "validate_fetch",
    "validate_subject",
    "validate_name",
    "validate_kv_key",
]

"""The rules every backbone applies: stream, consumer and KV bucket definitions, fetch
arguments, message sizes, and how a conflicting definition is reported.

MemoryBackbone and the JetStream adapter both call these, so an app gets the same
``ConfigError`` or ``DefinitionConflict`` whichever backbone it runs on.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from thaw._errors import BackboneError, ConfigError, DefinitionConflict, PayloadTooLarge
from thaw.backbone._contract import ConsumerConfig, KvConfig, StreamConfig
from thaw.backbone._subjects import (
    subject_is_subset,
    subjects_overlap,
    validate_name,
    validate_subject,
)

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "MessageTooLarge",
    "header_block_size",
    "check_message_size",
    "validate_kv_config",
    "definition_conflict",
    "validate_stream_config",
    "validate_fetch",
    "validate_consumer_config",
    "consumer_update_allowed",
]


DEFAULT_MAX_PAYLOAD = 1024 * 1024  # nats-server's default max_payload


class MessageTooLarge(PayloadTooLarge, BackboneError):
    """A message (payload plus header block) larger than the backbone takes.

    Both at once, on purpose: to a caller it is ``payload_too_large`` (413, never
    retried: the same message cannot fit later); to code that handles backbone
    failures (``except BackboneError``: a worker settling or dead-lettering a delivery,
    an idempotency store) it is one more operation the backbone refused, which it logs
    and survives, instead of an exception that stops the host.
    """

    code = "payload_too_large"
    http_status = 413
    retryable = False


def header_block_size(headers: Mapping[str, str] | None) -> int:
    """Bytes ``headers`` take on the wire as a ``NATS/1.0`` header block (0 for none).

    NATS counts this block with the payload against a server's ``max_payload`` (and a
    stream's ``max_msg_size``), so every backbone sizes a message with it. Names and
    values count as UTF-8; clients that strip whitespace send at most this much.
    """
    if not headers:
        return 0
    size = 12  # "NATS/1.0\r\n" and the closing "\r\n"
    for name, value in headers.items():
        size += len(name.encode()) + len(value.encode()) + 4  # ": " and "\r\n"
    return size


def check_message_size(subject: str, payload: int, headers: int, limit: int) -> None:
    """Raise ``MessageTooLarge`` unless ``payload`` plus ``headers`` bytes fit ``limit``.

    Checked before a message leaves: nats-server closes the connection of a client
    that sends more than its ``max_payload``, so an oversized message must never
    reach the socket. ``limit`` -1 means unlimited.
    """
    if limit == -1 or payload + headers <= limit:
        return
    raise MessageTooLarge(
        f"message to {subject!r} is {payload + headers} bytes ({payload} payload, {headers} "
        f"headers); the backbone accepts at most {limit} (max_payload): send less, or "
        "raise max_payload on the server"
    )


def validate_kv_config(config: KvConfig) -> None:
    """The rules every backbone applies to a KV bucket definition (clear ``ConfigError``)."""
    validate_name("bucket", config.bucket)
    if config.ttl < 0:
        raise ConfigError(f"bucket {config.bucket!r}: ttl must be >= 0 seconds")
    if config.max_value_size != -1 and config.max_value_size <= 0:
        raise ConfigError(
            f"bucket {config.bucket!r}: max_value_size must be -1 (unlimited) or a "
            f"positive byte count, not {config.max_value_size}"
        )


def definition_conflict(
    what: str, existing: msgspec.Struct, requested: msgspec.Struct, advice: str
) -> DefinitionConflict:
    """``what`` exists with another definition: name each differing field and its values.

    Both backbones report a conflicting stream, consumer or bucket with it, so the
    message is the same whichever one an app runs on.
    """
    parts = []
    for field in existing.__struct_fields__:
        old, new = getattr(existing, field), getattr(requested, field)
        if old != new:
            parts.append(f"{field} (existing {old!r}, requested {new!r})")
    return DefinitionConflict(
        f"{what} already exists with a different definition: {', '.join(parts)}; {advice}"
    )


# What JetStream lets an existing consumer change in place (the rest is fixed at create).
_UPDATABLE = frozenset({"ack_wait", "max_deliver", "max_ack_pending", "backoff"})


def consumer_update_allowed(existing: ConsumerConfig, wanted: ConsumerConfig) -> bool:
    """Whether ``existing`` may become ``wanted`` in place (a host with newer settings).

    Both backbones update such a consumer instead of refusing it, so a host upgraded to
    other delivery settings (AckWait, attempts, MaxAckPending) keeps its durable and
    the messages it holds; a changed filter still conflicts.
    """
    fields = ConsumerConfig.__struct_fields__
    changed = {f for f in fields if getattr(existing, f) != getattr(wanted, f)}
    return bool(changed) and changed <= _UPDATABLE


def validate_stream_config(config: StreamConfig) -> None:
    validate_name("stream", config.name)
    if not config.subjects:
        raise ConfigError(f"stream {config.name!r} has no subjects; give it at least one")
    for subject in config.subjects:
        validate_subject(subject, wildcards=True)
    for index, subject in enumerate(config.subjects):
        for other in config.subjects[index + 1 :]:
            if subjects_overlap(subject, other):
                raise ConfigError(
                    f"stream {config.name!r} lists overlapping subjects {subject!r} and "
                    f"{other!r}; keep only the wider one"
                )
    if config.duplicate_window < 0 or config.max_age < 0:
        raise ConfigError(
            f"stream {config.name!r}: duplicate_window and max_age must be >= 0 seconds"
        )
    if config.max_msg_size != -1 and config.max_msg_size <= 0:
        raise ConfigError(
            f"stream {config.name!r}: max_msg_size must be -1 (unlimited) or a positive "
            f"byte count, not {config.max_msg_size}"
        )


def validate_fetch(batch: int, timeout: float) -> None:
    """The arguments every backbone's ``fetch`` accepts."""
    if batch < 1:
        raise ConfigError(f"fetch batch must be >= 1, not {batch}")
    if timeout < 0:
        raise ConfigError(f"fetch timeout must be >= 0 seconds, not {timeout}")


def validate_consumer_config(stream: StreamConfig, config: ConsumerConfig) -> None:
    where = f"consumer {config.durable!r} on stream {stream.name!r}"
    validate_name("consumer", config.durable)
    if config.filter_subject:
        validate_subject(config.filter_subject, wildcards=True)
        if not any(subject_is_subset(config.filter_subject, of) for of in stream.subjects):
            raise ConfigError(
                f"{where}: filter subject {config.filter_subject!r} is not within the "
                f"stream's subjects {list(stream.subjects)}"
            )
    if config.ack_wait <= 0:
        raise ConfigError(f"{where}: ack_wait must be > 0 seconds, not {config.ack_wait}")
    if config.max_deliver != -1 and config.max_deliver < 1:
        raise ConfigError(
            f"{where}: max_deliver must be -1 (unlimited) or >= 1, not {config.max_deliver}"
        )
    if any(delay <= 0 for delay in config.backoff):
        raise ConfigError(f"{where}: every backoff delay must be > 0 seconds")
    if config.backoff and config.max_deliver != -1 and config.max_deliver <= len(config.backoff):
        raise ConfigError(
            f"{where}: max_deliver ({config.max_deliver}) must be greater than the number of "
            f"backoff delays ({len(config.backoff)}), as JetStream requires"
        )
    if config.deliver not in ("all", "new"):
        raise ConfigError(f"{where}: deliver must be 'all' or 'new', not {config.deliver!r}")
    if config.max_ack_pending != -1 and config.max_ack_pending < 1:
        raise ConfigError(
            f"{where}: max_ack_pending must be -1 (unlimited) or >= 1, not {config.max_ack_pending}"
        )

"""The JetStream API on the wire: msgspec Structs for the JSON we send and read, and headers.

Only the fields Thaw uses are declared; msgspec ignores the rest of a server reply,
so newer servers stay readable. Durations are integer nanoseconds on the wire and
float seconds in ``thaw.backbone._contract``; the conversions live here and nowhere else.
Encoders and decoders are built once at import (msgspec's advice: reuse them).
"""

from __future__ import annotations

from typing import Literal, TypeVar

import msgspec

from thaw.lowlevel import (
    ConsumerConfig,
    KvConfig,
    ObjectStoreConfig,
    StreamConfig,
    object_stream_name,
    object_stream_subjects,
)

__all__ = [
    "API",
    "ApiError",
    "StreamConfigWire",
    "StreamInfoReply",
    "ConsumerConfigWire",
    "ConsumerInfoReply",
    "ConsumerCreateRequest",
    "PubAckReply",
    "MsgGetReply",
    "StreamNamesReply",
    "SuccessReply",
    "KV_DUPLICATE_WINDOW",
    "DEFAULT_DUPLICATE_WINDOW",
    "seconds",
    "nanoseconds",
    "encode",
    "decode",
    "effective_stream_config",
    "stream_wire",
    "stream_config_of",
    "effective_consumer_config",
    "consumer_wire",
    "consumer_config_of",
    "kv_stream_name",
    "kv_stream_wire",
    "kv_config_of",
    "object_stream_wire",
    "parse_headers",
    "parse_header_block",
]

API = "$JS.API"
_NS = 1_000_000_000
DEFAULT_DUPLICATE_WINDOW = 120.0  # what JetStream uses when a stream asks for 0
KV_DUPLICATE_WINDOW = 120.0


def nanoseconds(value: float) -> int:
    return round(value * _NS)


def seconds(value: int) -> float:
    return value / _NS


class ApiError(msgspec.Struct, frozen=True):
    code: int = 0
    err_code: int = 0
    description: str = ""


class StreamConfigWire(msgspec.Struct, kw_only=True):
    name: str
    subjects: list[str] = []
    retention: str = "limits"
    storage: str = "file"
    discard: str = "old"
    num_replicas: int = 1
    duplicate_window: int = 0
    max_age: int = 0
    max_msg_size: int = -1
    max_msgs: int = -1
    max_bytes: int = -1
    max_consumers: int = -1
    max_msgs_per_subject: int = -1
    allow_rollup_hdrs: bool = False
    deny_delete: bool = False
    allow_direct: bool = False


class _StreamState(msgspec.Struct):
    messages: int = 0
    first_seq: int = 0
    last_seq: int = 0


class StreamInfoReply(msgspec.Struct):
    error: ApiError | None = None
    config: StreamConfigWire | None = None
    state: _StreamState = msgspec.field(default_factory=_StreamState)


class ConsumerConfigWire(msgspec.Struct, kw_only=True):
    name: str = ""
    durable_name: str = ""
    deliver_policy: str = "all"
    ack_policy: str = "explicit"
    replay_policy: str = "instant"
    ack_wait: int = 0
    max_deliver: int = -1
    backoff: list[int] = []
    filter_subject: str = ""
    max_ack_pending: int = 0
    headers_only: bool = False
    mem_storage: bool = False
    num_replicas: int = 0
    inactive_threshold: int = 0


class ConsumerInfoReply(msgspec.Struct):
    error: ApiError | None = None
    stream_name: str = ""
    config: ConsumerConfigWire | None = None
    num_pending: int = 0
    num_ack_pending: int = 0
    num_redelivered: int = 0
    num_waiting: int = 0


class ConsumerCreateRequest(msgspec.Struct, omit_defaults=True):
    stream_name: str
    config: ConsumerConfigWire
    action: Literal["create", "update", ""] = ""


class PubAckReply(msgspec.Struct):
    error: ApiError | None = None
    stream: str = ""
    seq: int = 0
    duplicate: bool = False


class _RawMessage(msgspec.Struct):
    subject: str
    seq: int
    data: bytes = b""  # base64 on the wire; msgspec decodes it
    hdrs: bytes = b""  # a NATS/1.0 header block, base64 on the wire


class MsgGetReply(msgspec.Struct):
    error: ApiError | None = None
    message: _RawMessage | None = None


class StreamNamesReply(msgspec.Struct):
    error: ApiError | None = None
    total: int = 0
    offset: int = 0
    limit: int = 0
    streams: list[str] | None = None


class SuccessReply(msgspec.Struct):
    error: ApiError | None = None
    success: bool = False


_encoder = msgspec.json.Encoder()


def encode(value: object) -> bytes:
    return _encoder.encode(value)


_T = TypeVar("_T", bound=msgspec.Struct)
_decoders: dict[type[msgspec.Struct], msgspec.json.Decoder[msgspec.Struct]] = {}


def decode(kind: type[_T], data: bytes) -> _T:
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    result = decoder.decode(data)
    assert isinstance(result, kind)
    return result


# -- our definitions <-> the server's ------------------------------------------------


def effective_stream_config(config: StreamConfig) -> StreamConfig:
    """``config`` as JetStream stores it: the duplicate window fits within ``max_age``.

    JetStream refuses a window longer than ``max_age`` and turns 0 into its default
    (2 minutes, or ``max_age`` if shorter); it cannot switch duplicate detection off.
    """
    window = config.duplicate_window or DEFAULT_DUPLICATE_WINDOW
    if config.max_age:
        window = min(window, config.max_age)
    if window == config.duplicate_window:
        return config
    return msgspec.structs.replace(config, duplicate_window=window)


def stream_wire(config: StreamConfig, *, replicas: int) -> StreamConfigWire:
    config = effective_stream_config(config)
    return StreamConfigWire(
        name=config.name,
        subjects=list(config.subjects),
        num_replicas=replicas,
        duplicate_window=nanoseconds(config.duplicate_window),
        max_age=nanoseconds(config.max_age),
        max_msg_size=config.max_msg_size,
    )


def stream_config_of(wire: StreamConfigWire) -> StreamConfig:
    return StreamConfig(
        name=wire.name,
        subjects=tuple(wire.subjects),
        duplicate_window=seconds(wire.duplicate_window),
        max_age=seconds(wire.max_age),
        max_msg_size=wire.max_msg_size,
    )


def effective_consumer_config(config: ConsumerConfig) -> ConsumerConfig:
    """``config`` as JetStream stores it: with a backoff list, AckWait is ``backoff[0]``.

    The difference is only in the record: backoff rules every wait either way.
    """
    if config.backoff and config.ack_wait != config.backoff[0]:
        return msgspec.structs.replace(config, ack_wait=config.backoff[0])
    return config


def consumer_wire(config: ConsumerConfig) -> ConsumerConfigWire:
    return ConsumerConfigWire(
        name=config.durable,
        durable_name=config.durable,
        ack_wait=nanoseconds(config.ack_wait),
        max_deliver=config.max_deliver,
        backoff=[nanoseconds(delay) for delay in config.backoff],
        filter_subject=config.filter_subject,
        max_ack_pending=config.max_ack_pending,
        deliver_policy=config.deliver,
    )


def consumer_config_of(wire: ConsumerConfigWire) -> ConsumerConfig:
    return ConsumerConfig(
        durable=wire.durable_name or wire.name,
        filter_subject=wire.filter_subject,
        ack_wait=seconds(wire.ack_wait),
        max_deliver=wire.max_deliver,
        backoff=tuple(seconds(delay) for delay in wire.backoff),
        max_ack_pending=wire.max_ack_pending,
        deliver=wire.deliver_policy,
    )


def kv_stream_name(bucket: str) -> str:
    return f"KV_{bucket}"


def kv_stream_wire(config: KvConfig, *, replicas: int) -> StreamConfigWire:
    """The stream behind a bucket, laid out as every NATS client expects (history 1)."""
    window = KV_DUPLICATE_WINDOW
    if config.ttl > 0:
        window = min(window, config.ttl)
    return StreamConfigWire(
        name=kv_stream_name(config.bucket),
        subjects=[f"$KV.{config.bucket}.>"],
        discard="new",
        num_replicas=replicas,
        duplicate_window=nanoseconds(window),
        max_age=nanoseconds(config.ttl),
        max_msg_size=config.max_value_size,
        max_msgs_per_subject=1,
        allow_rollup_hdrs=True,
        deny_delete=True,
        allow_direct=True,
    )


def kv_config_of(bucket: str, wire: StreamConfigWire) -> KvConfig:
    return KvConfig(bucket=bucket, ttl=seconds(wire.max_age), max_value_size=wire.max_msg_size)


def object_stream_wire(config: ObjectStoreConfig, *, replicas: int) -> StreamConfigWire:
    """The stream behind an object store, as nats-py and the Go client lay it out."""
    return StreamConfigWire(
        name=object_stream_name(config.bucket),
        subjects=list(object_stream_subjects(config.bucket)),
        discard="new",
        num_replicas=replicas,
        allow_rollup_hdrs=True,
        allow_direct=True,
    )


def parse_headers(block: bytes) -> dict[str, str]:
    """A ``NATS/1.0`` header block (delivered, or as stored by JetStream) as a dict."""
    return parse_header_block(block)[0]


def parse_header_block(raw: bytes) -> tuple[dict[str, str], str, str]:
    """(headers, status, description) of a NATS header block, by nats-py 2.16's rules
    (``Client._process_headers``): an inline status line (``NATS/1.0 404 No Messages``)
    gives ``Status`` (when it is digits) and ``Description``; then one ``Name: Value``
    per line, the name stripped and ASCII without whitespace (else the line is
    skipped), the value stripped and decoded as UTF-8 with replacement."""
    out: dict[str, str] = {}
    status = description = ""
    body = raw[len(b"NATS/1.0") :]
    if body[:1] == b" ":  # an inline status, maybe with a description, maybe headers
        line, _, lines = body[1:].partition(b"\r\n")
        code = line[:3].strip().decode("utf-8", "replace")
        if code.isdigit():
            status = out["Status"] = code
        description = line[4:].decode("utf-8", "replace")
        if description:
            out["Description"] = description
    else:
        lines = body[2:]
    for line in lines.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if key and key.split() != [key]:  # whitespace inside (str's notion, as nats-py)
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out, status, description

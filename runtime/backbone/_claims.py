"""Claim checks: large payloads travel as small references to an object store.

``put_claim`` stores the bytes in an object store and returns a ``ClaimCheck``
(bucket, name, size, SHA-256, created and expiry times) whose JSON is a couple
of hundred bytes: that goes in the message body, the image or export stays in
the store. ``get_claim`` reads the object back and refuses it, with
``ClaimCheckFailed`` (code ``claim_check_failed``, ``reason`` ``missing``,
``changed`` or ``expired``), unless it is there with exactly the size and digest
the claim names and the claim has not expired. ``delete_claim`` removes it.

Each takes an ``ObjectStore`` or anything with ``async objects(bucket)`` (a
capability's ``Context``, whose access rules then apply to the bucket).

Invariants: a ClaimCheck decoded from JSON (``decode_claim``, or as a field of a
capability's msgspec contract) has a bucket name, an object name of safe path
segments (no ``..``, no leading ``/``, no backslash or control character, at
most 255 characters), a size of at most ``MAX_CLAIM_SIZE``, a 64-digit
lowercase hex digest and times that are finite and ordered, so no reference can
point outside its bucket; the size and digest are compared with the store's info
before the data is read (a replaced, larger object is never downloaded) and with
the data after. Expiry is wall-clock time (``time.time()``): claims cross hosts,
and monotonic clocks do not. Expiry bounds the reference only: the bucket's own
limits (or ``delete_claim``) remove the data.
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
import time
from typing import Annotated, Protocol, runtime_checkable

import msgspec

from thaw._errors import (
    ClaimCheckFailed,
    ConfigError,
    ContractError,
    MalformedPayload,
    ObjectNotFound,
    PayloadTooLarge,
)
from thaw.backbone._contract import ObjectStore

__all__ = [
    "ClaimCheck",
    "MAX_CLAIM_SIZE",
    "decode_claim",
    "delete_claim",
    "encode_claim",
    "get_claim",
    "put_claim",
]

MAX_CLAIM_SIZE = 1 << 30  # bytes of one claimed object (1 GiB): object stores read it whole
MAX_CLAIM_JSON = 4096  # bytes of an encoded ClaimCheck that decode_claim reads
DEFAULT_TTL = 86_400.0  # seconds a claim is honoured unless put_claim says otherwise
_MAX_TTL = 10 * 365 * 86_400.0
_LATEST_TIME = 1e11  # seconds since the epoch (year ~5138): past it a time is garbage
_SEGMENT = r"[A-Za-z0-9_=-][A-Za-z0-9._=-]*"
_NAME = rf"^{_SEGMENT}(/{_SEGMENT})*$"

BucketName = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=r"^[-_a-zA-Z0-9]+$")]
ObjectName = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=_NAME)]
Size = Annotated[int, msgspec.Meta(ge=0, le=MAX_CLAIM_SIZE)]
Digest = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
WallTime = Annotated[float, msgspec.Meta(ge=0, le=_LATEST_TIME)]

_encode = msgspec.json.Encoder().encode


class ClaimCheck(msgspec.Struct, frozen=True, kw_only=True):
    """A reference to one object, small enough for any message body.

    ``sha256`` is the hex SHA-256 of the data; ``created`` and ``expires`` are
    seconds since the epoch (``expires`` None: never). New fields get defaults
    (msgspec's evolution rules), so older readers keep decoding newer claims.
    """

    bucket: BucketName
    name: ObjectName
    size: Size
    sha256: Digest
    created: WallTime
    expires: WallTime | None = None

    def __post_init__(self) -> None:
        # Decoding checks the annotated constraints; building one directly does not, so
        # check them here too: a bad claim is refused where it is made, not downstream.
        for field, kind in _FIELD_TYPES:
            try:
                msgspec.convert(getattr(self, field), kind)
            except msgspec.ValidationError as exc:
                raise ValueError(f"ClaimCheck.{field}: {exc}") from None
        if self.expires is not None and self.expires < self.created:
            raise ValueError("a claim cannot expire before it was created")


_FIELD_TYPES = (
    ("bucket", BucketName),
    ("name", ObjectName),
    ("size", Size),
    ("sha256", Digest),
    ("created", WallTime),
    ("expires", WallTime | None),
)


_decoder = msgspec.json.Decoder(ClaimCheck)


@runtime_checkable
class OpensObjectStores(Protocol):
    """What a capability's ``Context`` offers: an object store by bucket name."""

    async def objects(self, bucket: str) -> ObjectStore: ...


Target = ObjectStore | OpensObjectStores


def encode_claim(claim: ClaimCheck) -> bytes:
    """The claim as a JSON message body."""
    return _encode(claim)


def decode_claim(data: bytes) -> ClaimCheck:
    """A ClaimCheck from JSON; ``MalformedPayload`` / ``ContractError`` say what is wrong."""
    if not isinstance(data, bytes | bytearray | memoryview | str):
        raise ContractError(f"a claim check is JSON bytes, not {type(data).__name__}")
    if len(data) > MAX_CLAIM_JSON:
        raise MalformedPayload(
            f"a claim check is at most {MAX_CLAIM_JSON} bytes of JSON; got {len(data)}"
        )
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as error:
        raise ContractError(f"invalid claim check: {error}") from None
    except msgspec.DecodeError as error:
        raise MalformedPayload(f"a claim check must be JSON: {error}") from None


def _check_name(name: str) -> None:
    try:
        msgspec.convert(name, ObjectName)
    except msgspec.ValidationError:
        raise ConfigError(
            f"invalid claim name {name!r:.60}: use 1-255 characters of letters, digits, "
            "'-', '_', '=', '.' in '/'-separated segments that do not start with '.'"
        ) from None


def _check_ttl(ttl: float | None) -> None:
    if ttl is None:
        return
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, int | float)
        or not math.isfinite(ttl)
        or not 0 < ttl <= _MAX_TTL
    ):
        raise ConfigError(
            f"invalid claim ttl {ttl!r}: give seconds above 0 and at most {_MAX_TTL:g} "
            "(ten years), or None for a claim that never expires"
        )


async def _open(target: Target, bucket: str | None, doing: str) -> ObjectStore:
    if isinstance(target, OpensObjectStores):
        if bucket is None:
            raise ConfigError(f"{doing}: name the object store with bucket=...")
        return await target.objects(bucket)
    if not all(hasattr(target, method) for method in ("put", "get", "info", "delete")):
        raise ConfigError(
            f"{doing}: expected an ObjectStore or a Context, got {type(target).__name__}"
        )
    if bucket is not None and bucket != target.bucket:
        raise ConfigError(
            f"{doing}: the claim is for bucket {bucket!r}, but this store is {target.bucket!r}"
        )
    return target


def _store_digest(hex_digest: str) -> str:
    """The digest as object stores record it (``SHA-256=<base64url>``)."""
    return "SHA-256=" + base64.urlsafe_b64encode(bytes.fromhex(hex_digest)).decode()


async def put_claim(
    target: Target,
    data: bytes | bytearray | memoryview,
    *,
    bucket: str | None = None,
    name: str | None = None,
    ttl: float | None = DEFAULT_TTL,
) -> ClaimCheck:
    """Store ``data`` and return the claim for it (an unguessable name unless ``name``).

    ``target`` is an ObjectStore (``bucket`` then optional) or a Context (``bucket``
    required). ``ttl`` seconds from now the claim expires (None: never).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ConfigError(f"put_claim stores bytes, not {type(data).__name__}")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > MAX_CLAIM_SIZE:
        raise PayloadTooLarge(f"a claimed object is at most {MAX_CLAIM_SIZE} bytes; got {size}")
    payload = bytes(data)
    _check_ttl(ttl)
    if name is None:
        name = f"claims/{secrets.token_urlsafe(18)}"
    else:
        _check_name(name)
    store = await _open(target, bucket, f"put claim {name!r}")
    created = time.time()
    await store.put(name, payload)
    return ClaimCheck(
        bucket=store.bucket,
        name=name,
        size=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        created=created,
        expires=None if ttl is None else created + ttl,
    )


def _refuse(claim: ClaimCheck, reason: str, why: str) -> ClaimCheckFailed:
    return ClaimCheckFailed(
        f"claim check {claim.bucket}/{claim.name} refused ({reason}): {why}", reason=reason
    )


async def get_claim(target: Target, claim: ClaimCheck, *, now: float | None = None) -> bytes:
    """The claimed bytes, verified; ``ClaimCheckFailed`` if missing, changed or expired.

    ``now`` (seconds since the epoch) defaults to the wall clock.
    """
    if not isinstance(claim, ClaimCheck):
        raise ConfigError(f"get_claim takes a ClaimCheck, not {type(claim).__name__}")
    moment = time.time() if now is None else now
    if claim.expires is not None and moment >= claim.expires:
        raise _refuse(claim, "expired", f"it expired {moment - claim.expires:.0f}s ago")
    store = await _open(target, claim.bucket, f"get claim {claim.name!r}")
    try:
        info = await store.info(claim.name)
        if info.size != claim.size or info.digest != _store_digest(claim.sha256):
            raise _refuse(claim, "changed", f"the object is {info.size} bytes with another digest")
        data = await store.get(claim.name)
    except ObjectNotFound:
        raise _refuse(claim, "missing", "the object store has no such object") from None
    if len(data) != claim.size or hashlib.sha256(data).hexdigest() != claim.sha256:
        raise _refuse(claim, "changed", "the data read does not match the claim's digest")
    return data


async def delete_claim(target: Target, claim: ClaimCheck) -> None:
    """Delete the claimed object; an object already gone is fine (deliveries repeat)."""
    if not isinstance(claim, ClaimCheck):
        raise ConfigError(f"delete_claim takes a ClaimCheck, not {type(claim).__name__}")
    store = await _open(target, claim.bucket, f"delete claim {claim.name!r}")
    try:
        await store.delete(claim.name)
    except ObjectNotFound:
        pass

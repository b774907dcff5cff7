"""Claim checks on any backbone: subclass ``ClaimsContract`` and give it a ``backbone`` fixture.

test_claims.py runs it on MemoryBackbone, test_claims_nats.py on a real nats-server.
Each test uses its own object store bucket (``claims_<n>``).
"""

from __future__ import annotations

import itertools
import math

import msgspec
import pytest

from thaw import ClaimCheckFailed, ConfigError, decode_claim, delete_claim, get_claim, put_claim
from thaw._errors import PayloadTooLarge
from thaw.backbone._contract import Backbone, ObjectStore, ObjectStoreConfig

__all__ = ["ClaimsContract"]

_buckets = itertools.count()
IMAGE = bytes(range(256)) * 1200  # 300 KiB: several JetStream chunks


class _Ctx:
    """What a Context offers put_claim/get_claim: object stores by bucket."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.opened: list[str] = []

    async def objects(self, bucket: str) -> ObjectStore:
        self.opened.append(bucket)
        return await self.backbone.object_store(bucket)


async def _store(backbone: Backbone) -> ObjectStore:
    return await backbone.add_object_store(ObjectStoreConfig(bucket=f"claims_{next(_buckets)}"))


class ClaimsContract:
    @pytest.mark.anyio
    async def test_a_claim_round_trips_as_a_small_json_body(self, backbone: Backbone) -> None:
        store = await _store(backbone)
        claim = await put_claim(store, IMAGE, ttl=60.0)
        body = msgspec.json.encode(claim)
        assert len(body) < 300  # the image stays in the store
        again = decode_claim(body)
        assert again == claim
        assert (again.bucket, again.size) == (store.bucket, len(IMAGE))
        assert again.name.startswith("claims/")
        assert again.expires == pytest.approx(again.created + 60.0)
        assert await get_claim(store, again) == IMAGE
        other = await put_claim(store, b"")
        assert other.name != claim.name
        assert await get_claim(store, other) == b""

    @pytest.mark.anyio
    async def test_a_context_opens_the_bucket_the_claim_names(self, backbone: Backbone) -> None:
        store = await _store(backbone)
        ctx = _Ctx(backbone)
        claim = await put_claim(ctx, b"thumb", bucket=store.bucket, name="thumbs/a.png")
        assert claim.name == "thumbs/a.png"
        assert await get_claim(ctx, claim) == b"thumb"
        await delete_claim(ctx, claim)
        assert ctx.opened == [store.bucket] * 3
        with pytest.raises(ConfigError, match="bucket="):
            await put_claim(ctx, b"x")
        with pytest.raises(ConfigError, match="this store is"):
            await get_claim(await _store(backbone), claim)

    @pytest.mark.anyio
    async def test_a_changed_object_is_refused(self, backbone: Backbone) -> None:
        store = await _store(backbone)
        claim = await put_claim(store, b"original", name="img/1")
        await store.put("img/1", b"tampered")  # same size, other bytes
        with pytest.raises(ClaimCheckFailed, match="changed") as caught:
            await get_claim(store, claim)
        assert (caught.value.code, caught.value.reason) == ("claim_check_failed", "changed")
        await store.put("img/1", b"much longer than the original")
        with pytest.raises(ClaimCheckFailed, match="changed"):
            await get_claim(store, claim)
        forged = msgspec.structs.replace(claim, sha256="0" * 64)
        await store.put("img/1", b"original")
        with pytest.raises(ClaimCheckFailed, match="changed"):
            await get_claim(store, forged)
        assert await get_claim(store, claim) == b"original"

    @pytest.mark.anyio
    async def test_a_missing_object_is_refused_and_delete_is_idempotent(
        self, backbone: Backbone
    ) -> None:
        store = await _store(backbone)
        claim = await put_claim(store, b"data")
        await delete_claim(store, claim)
        with pytest.raises(ClaimCheckFailed, match="missing") as caught:
            await get_claim(store, claim)
        assert caught.value.reason == "missing"
        await delete_claim(store, claim)  # a redelivered cleanup is harmless

    @pytest.mark.anyio
    async def test_an_expired_claim_is_refused(self, backbone: Backbone) -> None:
        store = await _store(backbone)
        claim = await put_claim(store, b"data", ttl=30.0)
        assert claim.expires is not None
        assert await get_claim(store, claim, now=claim.expires - 1) == b"data"
        with pytest.raises(ClaimCheckFailed, match="expired") as caught:
            await get_claim(store, claim, now=claim.expires)
        assert caught.value.reason == "expired"
        forever = await put_claim(store, b"data", ttl=None)
        assert forever.expires is None
        assert await get_claim(store, forever, now=1e10) == b"data"

    @pytest.mark.anyio
    async def test_put_claim_refuses_hostile_arguments(self, backbone: Backbone) -> None:
        store = await _store(backbone)
        names = ("", "../etc/passwd", "/abs", "a/../b", "a//b", ".hidden", "a\\b", "x" * 256)
        for name in (*names, "tab\there", "ü", "a b"):
            with pytest.raises(ConfigError, match="claim name"):
                await put_claim(store, b"x", name=name)
        for ttl in (0, -1.0, math.nan, math.inf, True, "5", 1e12):
            with pytest.raises(ConfigError, match="ttl"):
                await put_claim(store, b"x", ttl=ttl)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="bytes"):
            await put_claim(store, "text")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="ObjectStore or a Context"):
            await put_claim(object(), b"x")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="ClaimCheck"):
            await get_claim(store, {"bucket": store.bucket})  # type: ignore[arg-type]
        assert await store.list() == []  # nothing was stored

    @pytest.mark.anyio
    async def test_a_claim_too_large_is_refused_before_storing(self, backbone: Backbone) -> None:
        store = await _store(backbone)
        with pytest.raises(PayloadTooLarge):
            await put_claim(store, _Huge())
        assert await store.list() == []


class _Huge(bytes):
    """Bytes that claim to be larger than MAX_CLAIM_SIZE without allocating it."""

    def __len__(self) -> int:
        return (1 << 30) + 1

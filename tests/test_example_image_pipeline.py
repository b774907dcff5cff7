"""The image pipeline: its pure parts (Pillow work on good and poison images, the rules)
and the whole pipeline through ``thaw.testing.TestHost`` on a MemoryBackbone.

An image put into the ``images`` bucket (as ``nats object put`` would) goes through
resize, moderation and thumbnail; the messages between the stages are claim checks of
a few hundred bytes; poison images, odd names and an object replaced under its
reference end in the dead-letter stream with their reason.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
from typing import Any

import msgspec
import pytest
from example_loader import load_example
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from thaw import ObjectChange, Rejected, get_claim
from thaw.lowlevel import list_dead_letters
from thaw.testing import TestHost

APP, MODULES = load_example("image_pipeline")
imaging = MODULES["image_pipeline.imaging"]
rules = MODULES["image_pipeline.rules"]
contracts = MODULES["image_pipeline.contracts"]
pipeline = MODULES["image_pipeline.app"]
RULES = rules.RULES
SMALL_MESSAGE = 1024  # bytes: a message between stages holds references, never an image


def picture(size: tuple[int, int], *, format: str = "PNG", colour: object = (120, 90, 60)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format=format)  # type: ignore[arg-type]
    return out.getvalue()


def test_a_large_image_is_scaled_down_to_fit_and_a_small_one_kept() -> None:
    data, measured = imaging.normalise(picture((3000, 1500)), max_side=1024, max_pixels=10**8)
    assert (measured.width, measured.height, measured.format) == (1024, 512, "PNG")
    assert Image.open(io.BytesIO(data)).size == (1024, 512)
    _, small = imaging.normalise(
        picture((200, 100), format="JPEG"), max_side=1024, max_pixels=10**8
    )
    assert (small.width, small.height, small.format) == (200, 100, "JPEG")
    thumb = imaging.thumbnail(data, side=128, max_pixels=10**8)
    assert Image.open(io.BytesIO(thumb)).size == (128, 64)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "image_empty"),
        (b"not an image at all", "not_an_image"),
        (picture((64, 64))[:80], "image_damaged"),  # a PNG cut short
        (picture((64, 64), format="BMP"), "image_format"),
    ],
)
def test_poison_uploads_have_a_reason(data: bytes, code: str) -> None:
    with pytest.raises(imaging.PoisonImage) as caught:
        imaging.normalise(data, max_side=1024, max_pixels=10**8)
    assert caught.value.code == code


def test_a_decompression_bomb_is_refused_before_it_is_decoded() -> None:
    out = io.BytesIO()
    Image.new("1", (12000, 12000)).save(out, format="PNG")  # 144 Mpixel in a few KB
    assert len(out.getvalue()) < 100_000
    with pytest.raises(imaging.PoisonImage) as caught:
        imaging.normalise(out.getvalue(), max_side=1024, max_pixels=RULES.max_pixels)
    assert caught.value.code == "image_too_large"


@given(st.binary(max_size=512))
def test_any_bytes_are_an_image_or_a_poison_image(data: bytes) -> None:
    """Whatever the bytes, the answer is a measurement or a PoisonImage with a known code."""
    codes = {"image_empty", "not_an_image", "image_damaged", "image_format", "image_too_large"}
    try:
        imaging.measure(data, max_pixels=10**6)
        code = "decoded"  # a few random bytes can be a tiny valid image
    except imaging.PoisonImage as exc:
        code = exc.code
    assert code in codes | {"decoded"}


def test_the_rules_file_decides_by_name_shape_and_brightness() -> None:
    measured = imaging.Measured
    ok = rules.verdict("cat.jpg", measured(800, 600, "JPEG", 120.0))
    assert ok.approved and ok.reasons == []
    dark = rules.verdict("night.jpg", measured(800, 600, "JPEG", 2.0))
    assert not dark.approved and "brightness" in dark.reasons[0]
    banner = rules.verdict("banner.png", measured(2000, 100, "PNG", 120.0))
    assert not banner.approved and "aspect ratio" in banner.reasons[0]
    blocked = rules.verdict("Private-holiday.jpg", measured(800, 600, "JPEG", 120.0))
    assert not blocked.approved and "blocked pattern" in blocked.reasons[0]


def test_rules_refuse_a_wrong_schema() -> None:
    with pytest.raises((msgspec.ValidationError, ValueError)):
        msgspec.json.decode(
            b'{"schema_version": 2, "max_upload_bytes": 1, "max_pixels": 1, "resize_to": 1, '
            b'"thumbnail": 1}',
            type=rules.Rules,
        )
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(
            b'{"schema_version": 1, "max_upload_bytes": 1, "max_pixels": 1, "resize_to": 1, '
            b'"thumbnail": 1, "surprise": true}',
            type=rules.Rules,
        )


# -- the whole pipeline through TestHost ---------------------------------------------


def photo(size: tuple[int, int], *, format: str = "JPEG", seed: int = 1) -> bytes:
    """A noisy picture (so the encoded file is not trivially small) of mid brightness."""
    noise = random.Random(seed).randbytes(size[0] * size[1] * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", size, noise).save(out, format=format)
    return out.getvalue()


def bomb() -> bytes:
    out = io.BytesIO()
    Image.new("1", (12000, 12000)).save(out, format="PNG")  # 144 Mpixel in a few KB
    return out.getvalue()


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


async def thumbnails(th: TestHost) -> dict[str, Any]:
    found = {}
    for message in await th.published("images.thumbnails"):
        ready = msgspec.json.decode(message.data, type=contracts.ThumbnailReady)
        found[ready.name] = ready
    return found


async def assert_messages_are_small(th: TestHost) -> None:
    messages = await th.published("images.>")
    assert messages
    assert max(len(m.data) for m in messages) < SMALL_MESSAGE, [len(m.data) for m in messages]


@pytest.mark.anyio
async def test_an_image_put_into_the_bucket_ends_as_a_thumbnail() -> None:
    original = photo((2000, 1500))
    async with TestHost(APP) as th:
        await (await th.objects("images")).put("cat.jpg", original)  # `nats object put`
        await th.settle()
        ready = (await thumbnails(th))["cat.jpg"]
        thumb = decoded(await get_claim(await th.objects("images_thumbs"), ready.thumbnail))
        assert (thumb.format, thumb.size) == ("JPEG", (128, 96))
        resized = decoded(await get_claim(await th.objects("images_resized"), ready.image))
        assert (resized.format, resized.size) == ("JPEG", (1024, 768))
        entry = await (await th.kv("image_verdicts")).get(pipeline.verdict_key("cat.jpg"))
        assert entry is not None
        assert msgspec.json.decode(entry.value, type=contracts.Moderated).approved
        assert await th.published("images.rejected") == []
        await assert_messages_are_small(th)
        assert await th.dead_letters() == []


@pytest.mark.anyio
async def test_an_upload_through_the_route_answers_with_a_claim_and_runs_the_pipeline() -> None:
    original = photo((1600, 1200), format="PNG")
    assert len(original) > 1024 * 1024  # above the server's default body limit
    async with TestHost(APP) as th:
        response = await th.http.put("/images/big.png", content=original)
        assert response.status == 200, response.text
        claim = response.json()
        assert (claim["bucket"], claim["name"], claim["size"]) == (
            "images",
            "big.png",
            len(original),
        )
        await th.settle()
        ready = (await thumbnails(th))["big.png"]
        assert ready.image.sha256 != claim["sha256"]  # the resized copy, not the upload
        thumb = await get_claim(await th.objects("images_thumbs"), ready.thumbnail)
        assert decoded(thumb).size == (128, 96)
        await assert_messages_are_small(th)
        for name, body, code in [
            ("..", b"x", "image_name_invalid"),
            (".hidden.png", b"x", "image_name_invalid"),
            ("empty.png", b"", "image_empty"),
        ]:
            refused = await th.http.put(f"/images/{name}", content=body)
            assert refused.status >= 400 and refused.json()["code"] == code, (name, refused.text)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "data", "code"),
    [
        ("garbage.jpg", b"\xff\xd8 this is no JPEG", "not_an_image"),
        ("bomb.png", bomb(), "image_too_large"),
        ("cut.png", picture((64, 64))[:80], "image_damaged"),
        ("old.bmp", picture((64, 64), format="BMP"), "image_format"),
        ("holiday photo.jpg", picture((64, 64), format="JPEG"), "image_name_invalid"),
    ],
)
async def test_a_poison_upload_is_dead_lettered_with_its_reason(
    name: str, data: bytes, code: str
) -> None:
    async with TestHost(APP) as th:
        await (await th.objects("images")).put(name, data)
        await th.settle()
        (dead,) = await list_dead_letters(th.backbone, app="images")
        assert (dead.capability, dead.code, dead.attempts) == ("resize", code, 1)
        assert name in dead.message
        assert len(dead.data) < SMALL_MESSAGE  # the object's record, not its bytes
        assert await th.published("images.>") == []


@pytest.mark.anyio
async def test_moderation_rejects_by_the_rules_and_makes_no_thumbnail() -> None:
    async with TestHost(APP) as th:
        uploads = await th.objects("images")
        await uploads.put("night.png", picture((800, 600), colour=(2, 2, 2)))
        await uploads.put("private-party.jpg", photo((800, 600)))
        await th.settle()
        rejected = [
            msgspec.json.decode(m.data, type=contracts.Moderated)
            for m in await th.published("images.rejected")
        ]
        reasons = {m.image.name: m.reasons for m in rejected}
        assert set(reasons) == {"night.png", "private-party.jpg"}
        assert "brightness" in reasons["night.png"][0]
        assert "blocked pattern" in reasons["private-party.jpg"][0]
        assert await thumbnails(th) == {}
        assert await th.dead_letters() == []


@pytest.mark.anyio
async def test_a_reference_that_no_longer_matches_its_object_is_refused() -> None:
    """The stages read through get_claim: a claim whose object was replaced (or is gone)
    is dead-lettered with the reason instead of thumbnailing other bytes."""
    async with TestHost(APP) as th:
        await (await th.objects("images")).put("dog.jpg", photo((640, 480)))
        await th.settle()
        ready = (await thumbnails(th))["dog.jpg"]
        swapped = msgspec.structs.replace(ready.image, sha256="0" * 64)
        gone = msgspec.structs.replace(ready.image, name="nobody.jpg")
        for image in (swapped, gone):
            moderated = contracts.Moderated(image=image, approved=True, reasons=[])
            await th.publish("images.approved", msgspec.json.encode(moderated))
        await th.settle()
        dead = await list_dead_letters(th.backbone, app="images")
        assert [(d.capability, d.code) for d in dead] == [
            ("publish_thumbnail", "claim_check_failed")
        ] * 2
        assert "(changed)" in dead[0].message and "(missing)" in dead[1].message
        assert list(await thumbnails(th)) == ["dog.jpg"]  # nothing new was made


def test_the_claim_of_an_announced_object_holds_its_hex_digest() -> None:
    data = b"any bytes"
    digest = "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
    change = ObjectChange(bucket="images", name="a.png", size=len(data), digest=digest, revision=3)
    claim = pipeline.claim_of(change)
    assert (claim.bucket, claim.name, claim.size) == ("images", "a.png", len(data))
    assert claim.sha256 == hashlib.sha256(data).hexdigest() and claim.expires is None
    unpadded = msgspec.structs.replace(change, digest=digest.rstrip("="))
    assert pipeline.claim_of(unpadded).sha256 == claim.sha256
    for odd in ("MD5=1B2M2Y8AsgTpgAmY7PhCfg==", "SHA-256=c2hvcnQ=", "SHA-256=", "nonsense"):
        with pytest.raises(Rejected) as caught:
            pipeline.claim_of(msgspec.structs.replace(change, digest=odd))
        assert caught.value.code == "digest_unknown", odd

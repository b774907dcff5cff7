"""The image pipeline's pure parts: Pillow work on good and poison images, the rules."""

from __future__ import annotations

import io

import pytest
from example_loader import load_example
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

_, MODULES = load_example("image_pipeline")
imaging = MODULES["image_pipeline.imaging"]
rules = MODULES["image_pipeline.rules"]
RULES = rules.RULES


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
    import msgspec

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

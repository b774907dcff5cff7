"""The image work of the pipeline, with Pillow: blocking, CPU-bound functions.

Every function here takes and returns bytes and blocks while it decodes, resizes and
encodes: the capabilities run them off the event loop (``ctx.run_sync``), so the
host keeps answering other requests meanwhile. A file that is not an image Pillow
can decode, a truncated one, or one with more pixels than ``max_pixels`` (a
decompression bomb: a small file that decodes to gigabytes) raises ``PoisonImage``
with a reason; the pipeline sends it to the dead-letter stream at once (no retry
can fix it).
"""

from __future__ import annotations

import io
import warnings

import msgspec
from PIL import Image, ImageStat, UnidentifiedImageError

__all__ = ["Measured", "PoisonImage", "measure", "normalise", "thumbnail"]

FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}


class PoisonImage(ValueError):
    """An upload that is no image this pipeline can read; ``code`` says why."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class Measured(msgspec.Struct, frozen=True):
    width: int
    height: int
    format: str
    brightness: float  # mean luminance, 0 (black) to 255 (white)


def _open(data: bytes, *, max_pixels: int) -> Image.Image:
    if not data:
        raise PoisonImage("the upload is empty", code="image_empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise PoisonImage(
                    f"the image is {width}x{height} pixels, more than {max_pixels}",
                    code="image_too_large",
                )
            if image.format not in FORMATS:
                raise PoisonImage(
                    f"the image format {image.format!r} is not one of {', '.join(FORMATS)}",
                    code="image_format",
                )
            image.load()  # decode now: a truncated file fails here, not later
    except PoisonImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PoisonImage(f"a decompression bomb: {exc}", code="image_too_large") from None
    except UnidentifiedImageError:
        raise PoisonImage(
            "the upload is not an image Pillow can read", code="not_an_image"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or damaged data
        raise PoisonImage(f"the image is damaged: {exc}", code="image_damaged") from None
    return image


def _encode(image: Image.Image, *, format: str) -> bytes:
    if format == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    out = io.BytesIO()
    if format == "JPEG":
        image.save(out, format=format, quality=85)
    else:
        image.save(out, format=format)
    return out.getvalue()


def normalise(data: bytes, *, max_side: int, max_pixels: int) -> tuple[bytes, Measured]:
    """The image scaled down to fit ``max_side`` (never up), and what it measures."""
    image = _open(data, max_pixels=max_pixels)
    format = image.format or "PNG"
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if format == "GIF":
        format = "PNG"  # one frame, losslessly
    return _encode(image, format=format), _measure(image, format)


def _measure(image: Image.Image, format: str) -> Measured:
    luminance = ImageStat.Stat(image.convert("L")).mean[0]
    return Measured(image.width, image.height, format, round(luminance, 2))


def measure(data: bytes, *, max_pixels: int) -> Measured:
    image = _open(data, max_pixels=max_pixels)
    return _measure(image, image.format or "PNG")


def thumbnail(data: bytes, *, side: int, max_pixels: int) -> bytes:
    """A JPEG that fits a ``side`` x ``side`` square."""
    image = _open(data, max_pixels=max_pixels)
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return _encode(image, format="JPEG")

"""The messages between the pipeline's stages: references to images, never the bytes.

An image lives in an object store bucket; a message carries its claim check
(``thaw.ClaimCheck``: bucket, name, size, SHA-256) and the next stage reads it with
``get_claim``, which refuses an object that was replaced or damaged since. So a 5 MB
photo is one small JSON message per stage, whatever the stream's message size limit.
"""

from __future__ import annotations

import msgspec

from thaw import ClaimCheck

from .imaging import Measured


class Resized(msgspec.Struct, frozen=True, kw_only=True):
    """resize -> moderate: the normalised image and what it measures."""

    original: ClaimCheck
    image: ClaimCheck
    measured: Measured
    schema_version: int = 1


class Moderated(msgspec.Struct, frozen=True, kw_only=True):
    """moderate -> thumbnail (approved) or images.rejected (with the reasons)."""

    image: ClaimCheck
    approved: bool
    reasons: list[str]
    schema_version: int = 1


class ThumbnailReady(msgspec.Struct, frozen=True, kw_only=True):
    """What the pipeline publishes at the end, on ``images.thumbnails``."""

    name: str
    image: ClaimCheck
    thumbnail: ClaimCheck
    schema_version: int = 1

"""The messages between the pipeline's stages: references to images, never the bytes.

An image lives in an object store bucket; a message names it (``ImageRef``: bucket,
name, size, digest) and the next stage reads it from there. So a 5 MB photo is one
small JSON message per stage, whatever the stream's message size limit is.
"""

from __future__ import annotations

import msgspec

from .imaging import Measured


class ImageRef(msgspec.Struct, frozen=True, kw_only=True):
    bucket: str
    name: str
    size: int
    digest: str  # the object store's "SHA-256=..." of the data


class Resized(msgspec.Struct, frozen=True, kw_only=True):
    """resize -> moderate: the normalised image and what it measures."""

    original: ImageRef
    image: ImageRef
    measured: Measured
    schema_version: int = 1


class Moderated(msgspec.Struct, frozen=True, kw_only=True):
    """moderate -> thumbnail (approved) or images.rejected (with the reasons)."""

    image: ImageRef
    approved: bool
    reasons: list[str]
    schema_version: int = 1


class ThumbnailReady(msgspec.Struct, frozen=True, kw_only=True):
    """What the pipeline publishes at the end, on ``images.thumbnails``."""

    name: str
    image: ImageRef
    thumbnail: ImageRef
    schema_version: int = 1

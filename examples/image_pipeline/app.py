"""Image pipeline: upload -> resize -> moderation -> thumbnail, one capability a stage.

- ``upload``: ``PUT /images/{name}`` stores the body in the ``images`` object store
  (up to ``max_upload_bytes`` of the rules, 8 MiB) and answers with a reference.
  Uploading with ``nats object put images photo.jpg`` works the same: the pipeline
  starts from the bucket, not from the request.
- ``resize`` (an ``objects`` trigger on ``images``): decodes the upload with Pillow,
  scales it to fit 1024 px and stores it in ``images_resized``; then publishes a
  ``Resized`` reference on ``images.resized``. A poison upload (not an image, damaged,
  a decompression bomb, an unknown format) is ``Rejected``: it goes to the
  dead-letter stream at once, with its reason. Two at a time: it is CPU-bound.
- ``moderate`` (stream ``images.resized``): applies the rules of ``data/rules.json``
  (blocked names, minimum side, aspect ratio, brightness), records the verdict in
  the ``image_verdicts`` KV bucket and publishes ``images.approved`` or
  ``images.rejected``. Cheap: many at a time.
- ``thumbnail`` (stream ``images.approved``): makes a 128 px JPEG into
  ``images_thumbs`` and publishes ``ThumbnailReady`` on ``images.thumbnails``.

Images travel as references (``contracts.ImageRef``), never in message bodies. The
Pillow work runs off the event loop (``ctx.run_sync``: a thread under ``thaw serve``)
so the host keeps answering while an image is resized. Every stage is idempotent
under redelivery: its outputs are keyed by the image (object names, message ids), so
a second run overwrites with the same bytes and the stream drops the duplicate.
"""

from __future__ import annotations

import hashlib
import re
from functools import partial

import msgspec

from thaw import (
    Access,
    App,
    Backoff,
    Context,
    ObjectChange,
    Rejected,
    RetryPolicy,
    http,
    objects,
    stream,
)

from .contracts import ImageRef, Moderated, Resized, ThumbnailReady
from .imaging import PoisonImage, normalise, thumbnail
from .rules import RULES, verdict

app = App("images")

UPLOADS = "images"
RESIZED = "images_resized"
THUMBS = "images_thumbs"
VERDICTS = "image_verdicts"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z")


def _ref(info: object) -> ImageRef:
    return ImageRef(
        bucket=info.bucket,  # type: ignore[attr-defined]
        name=info.name,  # type: ignore[attr-defined]
        size=info.size,  # type: ignore[attr-defined]
        digest=info.digest,  # type: ignore[attr-defined]
    )


def _hashed(name: str) -> str:
    """An object name as key and message-id material (names may hold any character)."""
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def verdict_key(name: str) -> str:
    """The KV key of an image's verdict."""
    return f"verdicts.{_hashed(name)}"


async def _read(ctx: Context, ref: ImageRef) -> bytes:
    store = await ctx.objects(ref.bucket)
    info = await store.info(ref.name)
    if info.digest != ref.digest:  # replaced since the reference was made: a newer run follows
        raise Rejected(f"{ref.bucket}/{ref.name} changed since it was referenced", code="stale")
    return await store.get(ref.name)


@app.capability(
    http("PUT", "/images/{name}", max_body=RULES.max_upload_bytes),
    timeout=30.0,
    access=Access(objects=(UPLOADS,)),
)
async def upload(body: bytes, ctx: Context) -> ImageRef:
    """Store an upload; the pipeline takes it from the bucket."""
    name = ctx.params["name"]
    if not _NAME.match(name):
        raise Rejected(
            "an image name is 1-200 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit",
            code="image_name_invalid",
        )
    if not body:
        raise Rejected("the upload is empty", code="image_empty")
    return _ref(await (await ctx.objects(UPLOADS)).put(name, body))


@app.capability(
    objects(UPLOADS),
    concurrency=2,
    timeout=60.0,
    retry=RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.5, maximum=10.0)),
    access=Access(objects=(UPLOADS, RESIZED), publishes=("images.resized",)),
)
async def resize(change: ObjectChange, ctx: Context) -> Resized:
    original = ImageRef(
        bucket=change.bucket, name=change.name, size=change.size, digest=change.digest
    )
    data = await _read(ctx, original)
    work = partial(normalise, data, max_side=RULES.resize_to, max_pixels=RULES.max_pixels)
    try:
        resized, measured = await ctx.run_sync(work)
    except PoisonImage as exc:
        raise Rejected(f"{change.name}: {exc}", code=exc.code) from None
    image = _ref(await (await ctx.objects(RESIZED)).put(change.name, resized))
    out = Resized(original=original, image=image, measured=measured)
    await ctx.publish("images.resized", out, msg_id=f"resized.{change.revision}.{change.digest}")
    return out


@app.capability(
    stream("images.resized"),
    concurrency=16,
    timeout=10.0,
    retry=RetryPolicy(max_attempts=5, backoff=Backoff(initial=0.1, maximum=5.0)),
    access=Access(buckets=(VERDICTS,), publishes=("images.approved", "images.rejected")),
)
async def moderate(item: Resized, ctx: Context) -> Moderated:
    found = verdict(item.image.name, item.measured)
    out = Moderated(image=item.image, approved=found.approved, reasons=found.reasons)
    await (await ctx.kv(VERDICTS)).put(verdict_key(item.image.name), msgspec.json.encode(out))
    subject = "images.approved" if found.approved else "images.rejected"
    await ctx.publish(
        subject, out, msg_id=f"moderated.{_hashed(item.image.name)}.{item.image.digest}"
    )
    return out


@app.capability(
    stream("images.approved"),
    concurrency=2,
    timeout=60.0,
    retry=RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.5, maximum=10.0)),
    access=Access(objects=(RESIZED, THUMBS), publishes=("images.thumbnails",)),
)
async def publish_thumbnail(item: Moderated, ctx: Context) -> ThumbnailReady:
    data = await _read(ctx, item.image)
    work = partial(thumbnail, data, side=RULES.thumbnail, max_pixels=RULES.max_pixels)
    try:
        small = await ctx.run_sync(work)
    except PoisonImage as exc:  # the resized copy was replaced by something else
        raise Rejected(f"{item.image.name}: {exc}", code=exc.code) from None
    thumb = _ref(await (await ctx.objects(THUMBS)).put(item.image.name, small))
    out = ThumbnailReady(name=item.image.name, image=item.image, thumbnail=thumb)
    await ctx.publish(
        "images.thumbnails", out, msg_id=f"thumb.{_hashed(item.image.name)}.{item.image.digest}"
    )
    return out

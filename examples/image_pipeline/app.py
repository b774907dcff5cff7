"""Image pipeline: upload -> resize -> moderation -> thumbnail, one capability a stage.

- ``upload``: ``PUT /images/{name}`` stores the body in the ``images`` object store
  (up to ``max_upload_bytes`` of the rules, 8 MiB) and answers with its claim check.
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
- ``publish_thumbnail`` (stream ``images.approved``): makes a 128 px JPEG into
  ``images_thumbs`` and publishes ``ThumbnailReady`` on ``images.thumbnails``.

Images travel as claim checks (``thaw.ClaimCheck``: bucket, name, size, SHA-256),
never in message bodies; each stage reads its input with ``get_claim``, so an object
replaced or damaged since its reference was made is refused (``claim_check_failed``,
dead-lettered) instead of processed under the wrong name. An object put with a name
the upload route would refuse is rejected too (``image_name_invalid``). The Pillow
work runs off the event loop (``ctx.run_sync``: a thread under ``thaw serve``) so
the host keeps answering while an image is resized. Every stage is idempotent
under redelivery: its outputs are keyed by the image (object names, message ids), so
a second run overwrites with the same bytes and the stream drops the duplicate.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from functools import partial

import msgspec

from thaw import (
    Access,
    Age,
    App,
    Backoff,
    ClaimCheck,
    Completion,
    Context,
    Latency,
    ObjectChange,
    Rejected,
    RetryPolicy,
    get_claim,
    http,
    objects,
    put_claim,
    stream,
)

from .contracts import Moderated, Resized, ThumbnailReady
from .imaging import PoisonImage, normalise, thumbnail
from .rules import RULES, verdict

app = App("images")

UPLOADS = "images"
RESIZED = "images_resized"
THUMBS = "images_thumbs"
VERDICTS = "image_verdicts"
# One rule for both ways in (HTTP and `nats object put`); every such name is also a
# valid claim-check name, so the references downstream always decode.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z")
_NAME_RULE = (
    "an image name is 1-200 letters, digits, '.', '_' or '-', starting with a letter or digit"
)


def _hashed(name: str) -> str:
    """An object name as key and message-id material."""
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def verdict_key(name: str) -> str:
    """The KV key of an image's verdict."""
    return f"verdicts.{_hashed(name)}"


def claim_of(change: ObjectChange) -> ClaimCheck:
    """The claim check of an object the bucket announced (whichever client put it).

    The object store records ``SHA-256=<base64url>``; a claim holds the hex digest.
    It never expires: the pipeline's references live as long as the buckets' data.
    """
    if not _NAME.match(change.name):
        raise Rejected(f"{change.name[:60]!r}: {_NAME_RULE}", code="image_name_invalid")
    algorithm, _, encoded = change.digest.partition("=")
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except ValueError:  # binascii.Error
        raw = b""
    if algorithm != "SHA-256" or len(raw) != 32:
        raise Rejected(
            f"{change.name}: the object store digest {change.digest[:60]!r} is no SHA-256",
            code="digest_unknown",
        )
    return ClaimCheck(
        bucket=change.bucket,
        name=change.name,
        size=change.size,
        sha256=raw.hex(),
        created=time.time(),
    )


@app.capability(
    http("PUT", "/images/{name}", max_body=RULES.max_upload_bytes),
    timeout=30.0,
    access=Access(objects=(UPLOADS,)),
    slo=Latency(0.99, within=2.0),  # an 8 MiB body into the object store
)
async def upload(body: bytes, ctx: Context) -> ClaimCheck:
    """Store an upload; the pipeline takes it from the bucket."""
    name = ctx.params["name"]
    if not _NAME.match(name):
        raise Rejected(_NAME_RULE, code="image_name_invalid")
    if not body:
        raise Rejected("the upload is empty", code="image_empty")
    return await put_claim(ctx, body, bucket=UPLOADS, name=name, ttl=None)


@app.capability(
    objects(UPLOADS),
    concurrency=2,
    timeout=60.0,
    retry=RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.5, maximum=10.0)),
    access=Access(objects=(UPLOADS, RESIZED), publishes=("images.resized",)),
    # two at a time, CPU-bound: a burst of uploads waits, but not for long
    slo=[Age(0.95, within=20.0), Completion(0.99, within=100.0)],
)
async def resize(change: ObjectChange, ctx: Context) -> Resized:
    original = claim_of(change)
    data = await get_claim(ctx, original)  # "changed": replaced since; its own change follows
    work = partial(normalise, data, max_side=RULES.resize_to, max_pixels=RULES.max_pixels)
    try:
        resized, measured = await ctx.run_sync(work)
    except PoisonImage as exc:
        raise Rejected(f"{change.name}: {exc}", code=exc.code) from None
    image = await put_claim(ctx, resized, bucket=RESIZED, name=change.name, ttl=None)
    out = Resized(original=original, image=image, measured=measured)
    await ctx.publish("images.resized", out, msg_id=f"resized.{change.revision}.{original.sha256}")
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
        subject, out, msg_id=f"moderated.{_hashed(item.image.name)}.{item.image.sha256}"
    )
    return out


@app.capability(
    stream("images.approved"),
    concurrency=2,
    timeout=60.0,
    retry=RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.5, maximum=10.0)),
    access=Access(objects=(RESIZED, THUMBS), publishes=("images.thumbnails",)),
    slo=Completion(0.99, within=200.0),  # from the verdict to the thumbnail
)
async def publish_thumbnail(item: Moderated, ctx: Context) -> ThumbnailReady:
    data = await get_claim(ctx, item.image)
    work = partial(thumbnail, data, side=RULES.thumbnail, max_pixels=RULES.max_pixels)
    try:
        small = await ctx.run_sync(work)
    except PoisonImage as exc:  # cannot happen for a verified resized copy; be explicit anyway
        raise Rejected(f"{item.image.name}: {exc}", code=exc.code) from None
    thumb = await put_claim(ctx, small, bucket=THUMBS, name=item.image.name, ttl=None)
    out = ThumbnailReady(name=item.image.name, image=item.image, thumbnail=thumb)
    await ctx.publish(
        "images.thumbnails", out, msg_id=f"thumb.{_hashed(item.image.name)}.{item.image.sha256}"
    )
    return out

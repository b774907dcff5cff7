"""Uploads: an ``objects`` trigger indexes every uploaded CSV; a ``kv`` trigger keeps totals.

``index_upload`` runs for each object put into the ``uploads`` object store (an
upload made while no host ran is indexed when one starts): it reads the file,
counts its rows and writes an index record to the ``upload_index`` KV bucket
under ``files.<hash of the name>`` (object names may hold spaces, ``/`` or any
script; KV keys may not). A file that is not UTF-8 text is rejected and goes to
the dead-letter stream at once. ``count_rows`` runs for every change of an index
record and keeps ``stats.rows`` (the rows of all indexed files) with a
compare-and-set update, so two hosts never lose a count; its key filter
``files.>`` keeps it from triggering on its own writes.
"""

from __future__ import annotations

import hashlib

import msgspec

from thaw import (
    Access,
    App,
    Backoff,
    Context,
    KvChange,
    ObjectChange,
    Rejected,
    RetryPolicy,
    kv,
    objects,
)

app = App("uploads")

UPLOADS = "uploads"
INDEX = "upload_index"


class IndexRecord(msgspec.Struct, frozen=True):
    name: str
    size: int
    digest: str
    rows: int


def index_key(name: str) -> str:
    return "files." + hashlib.sha256(name.encode()).hexdigest()[:32]


@app.capability(
    objects(UPLOADS),
    retry=RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.05)),
    access=Access(objects=(UPLOADS,), buckets=(INDEX,)),
)
async def index_upload(upload: ObjectChange, ctx: Context) -> IndexRecord:
    data = await (await ctx.objects(upload.bucket)).get(upload.name)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise Rejected(f"{upload.name!r} is not UTF-8 text", code="not_text") from None
    rows = max(len(text.splitlines()) - 1, 0)  # minus the header line
    record = IndexRecord(upload.name, upload.size, upload.digest, rows)
    await (await ctx.kv(INDEX)).put(index_key(upload.name), msgspec.json.encode(record))
    return record


@app.capability(
    kv(INDEX, key="files.>"),
    concurrency=1,
    retry=RetryPolicy(max_attempts=5, backoff=Backoff(initial=0.01)),
    access=Access(buckets=(INDEX,)),
)
async def count_rows(change: KvChange, ctx: Context) -> None:
    if change.operation != "PUT":
        return
    added = msgspec.json.decode(change.value, type=IndexRecord).rows
    index = await ctx.kv(INDEX)
    entry = await index.get("stats.rows")
    if entry is None:
        await index.create("stats.rows", str(added).encode())
    else:  # a lost race raises WrongRevision: retried, reading the winner's total
        await index.update(
            "stats.rows", str(int(entry.value) + added).encode(), last=entry.revision
        )

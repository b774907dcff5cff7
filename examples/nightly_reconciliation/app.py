"""Nightly reconciliation: schedule -> fan-out over partitions -> compare -> join report.

- ``nightly`` (``schedule("0 2 * * *")``, UTC): each night at 02:00 reconciles the
  business day before. One tick per tick across hosts (the tick is a message with
  an id per tick), and the fan-out's batch id derives from the tick's event id, so
  two hosts, or a redelivered tick, start one run.
- ``rerun`` (``POST /runs/{date}``): an operator starts a run for a day by hand (after
  a late export, say); each request is a run of its own. Answers 202 with the run id.
- ``compare_partition`` (stream ``reconciliation.partitions``, four at a time): reads
  the partition's ledger from KV (one prefix listing and one batch get, not a round
  trip per account) and the provider's export from the object store, and returns the
  mismatches. A missing export is ``export_missing``: the partition is reported as
  failed and the run goes on. Reads only, so a rerun after a host died is harmless;
  it records its start and end in ``recon_progress`` for operators (``nats kv ls``).
- ``report`` (the join, 30 minutes): once every partition reported, or at the
  deadline with what reported, writes ``<date>.json`` to the object store
  ``reports`` and publishes a ``ReportNotice`` on ``reconciliation.reports``.

A host killed in the middle of a run loses nothing: the partition it held comes
back to another host after AckWait, partitions already reported are not compared
again (their outcome is in the batch), and the report is written once the last one
reports. ``RECON_HANG_PARTITION=N`` (environment) makes the first attempt at
partition N hang, as a host that died while holding it: the kill test uses it.

Try it (the embedded nats-server; the first line prints the URLs it uses)::

    thaw serve examples/nightly_reconciliation --http 8000
    python examples/nightly_reconciliation/seed.py --url nats://127.0.0.1:PORT --date 2026-12-03
    curl -X POST http://127.0.0.1:8000/runs/2026-12-03     # or wait for 02:00 UTC
    # the report: object 2026-12-03.json in the store "reports"; the notice on
    # reconciliation.reports; progress marks in the KV bucket recon_progress
"""

from __future__ import annotations

import datetime as dt
import os
import uuid

import anyio
import msgspec

from thaw import (
    Access,
    App,
    Backoff,
    Batch,
    Context,
    ObjectNotFound,
    Rejected,
    RetryPolicy,
    Tick,
    http,
    schedule,
    stream,
)

from .compare import compare
from .contracts import (
    PARTITIONS,
    Balance,
    Partition,
    PartitionResult,
    Report,
    ReportNotice,
    RunStarted,
)

app = App("reconciliation")

LEDGER = "ledger"  # KV: p<partition>.<account> -> Balance
EXPORTS = "exports"  # objects: <date>/p<partition>.json -> [Balance]
REPORTS = "reports"  # objects: <date>.json -> Report
PROGRESS = "recon_progress"  # KV: start/end marks of partition runs, for operators
PARTS_SUBJECT = "reconciliation.partitions"
REPORTS_SUBJECT = "reconciliation.reports"
RUN_ID = uuid.uuid4().hex[:12]  # this process, in the progress marks

_decode_balance = msgspec.json.Decoder(Balance).decode
_decode_export = msgspec.json.Decoder(list[Balance]).decode


def export_name(date: str, partition: int) -> str:
    return f"{date}/p{partition}.json"


def report_name(date: str) -> str:
    return f"{date}.json"


def business_day(tick: Tick) -> str:
    """The day a tick reconciles: the one before it was scheduled (UTC)."""
    at = dt.datetime.fromisoformat(tick.scheduled_at)
    return (at - dt.timedelta(days=1)).date().isoformat()


def _checked_date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise Rejected(
            f"run date {text[:40]!r} is not a date like 2026-12-03",
            code="date_invalid",
            http_status=400,
        ) from None


@app.join(
    timeout=1800.0,
    on_timeout="run",
    access=Access(objects=(REPORTS,), publishes=(REPORTS_SUBJECT,)),
)
async def report(batch: Batch[PartitionResult], ctx: Context) -> ReportNotice:
    date = str(batch.context["date"])
    results = [batch.results[i] for i in sorted(batch.results)]
    result = Report(
        date=date,
        run=batch.id,
        complete=batch.complete and not batch.failed,
        timed_out=batch.timed_out,
        accounts=sum(r.accounts for r in results),
        matched=sum(r.matched for r in results),
        mismatched=sum(r.accounts - r.matched for r in results),
        partitions=results,
        failed=batch.failed,
        missing=batch.missing,
    )
    store = await ctx.objects(REPORTS)
    # A redelivered join writes the same report again: the name is the day's.
    await store.put(report_name(date), msgspec.json.encode(result))
    notice = ReportNotice(date, batch.id, report_name(date), result.complete, result.mismatched)
    await ctx.publish(REPORTS_SUBJECT, notice)
    ctx.log.info("reconciliation %s: %d mismatched of %d", date, notice.mismatched, result.accounts)
    return notice


async def start_run(ctx: Context, date: str) -> RunStarted:
    parts = [Partition(date, n) for n in range(PARTITIONS)]
    ref = await ctx.fan_out(PARTS_SUBJECT, parts, join=report, context={"date": date})
    return RunStarted(ref.id, date, ref.size, ref.created)


@app.capability(
    schedule("0 2 * * *"),
    retry=RetryPolicy(max_attempts=5, backoff=Backoff(initial=1.0, maximum=30.0)),
    access=Access(publishes=(PARTS_SUBJECT,)),
)
async def nightly(tick: Tick, ctx: Context) -> RunStarted:
    return await start_run(ctx, business_day(tick))


@app.capability(http("POST", "/runs/{date}"), access=Access(publishes=(PARTS_SUBJECT,)))
async def rerun(body: bytes, ctx: Context) -> RunStarted:
    return await start_run(ctx, _checked_date(ctx.params["date"]))


def _hang_partition() -> int | None:
    value = os.environ.get("RECON_HANG_PARTITION", "")
    return int(value) if value.isdigit() else None


@app.capability(
    stream(PARTS_SUBJECT),
    concurrency=4,
    timeout=120.0,
    retry=RetryPolicy(max_attempts=5, backoff=Backoff(initial=0.5, maximum=30.0)),
    access=Access(buckets=(LEDGER, PROGRESS), objects=(EXPORTS,)),
)
async def compare_partition(part: Partition, ctx: Context) -> PartitionResult:
    progress = await ctx.kv(PROGRESS)
    mark = f"{part.date}.p{part.partition}.{ctx.attempt}.{RUN_ID}"
    await progress.put(f"start.{mark}", str(os.getpid()).encode())
    if part.partition == _hang_partition() and ctx.attempt == 1:
        await anyio.sleep(3600.0)  # a host stuck while it holds the partition (deadline: 120 s)
    ledger = await ctx.kv(LEDGER)
    keys = await ledger.keys(prefix=f"p{part.partition}")
    balances: dict[str, int] = {}
    for start in range(0, len(keys), 1000):  # get_many takes at most 1024 keys
        for entry in (await ledger.get_many(keys[start : start + 1000])).values():
            row = _decode_balance(entry.value)
            balances[row.account] = row.balance_cents
    store = await ctx.objects(EXPORTS)
    name = export_name(part.date, part.partition)
    try:
        export = _decode_export(await store.get(name))
    except ObjectNotFound:
        raise Rejected(f"the provider's export {name} is missing", code="export_missing") from None
    except msgspec.DecodeError as exc:
        raise Rejected(
            f"export {name} is not a list of balances: {exc}", code="export_invalid"
        ) from None
    result = compare(part.date, part.partition, balances, export)
    await progress.put(f"done.{mark}", str(result.accounts - result.matched).encode())
    return result

"""A host in a process of its own, for tests that kill -9 it: a ledger app on JetStream.

Run: ``python tests/_host_process.py URL PREFIX [--stall-after K] [--ack-wait S]``
(with the repository root on ``PYTHONPATH``). It provisions the app with the given
AckWait, serves it, prints ``ready`` on stdout once its stream worker runs, and
drains and exits 0 on SIGTERM or SIGINT.

The app (``ledger_app``) posts each payment once to a ledger bucket, keyed by the
payment id with ``create``, so a second write of the same payment is refused
instead of doubling the entry. Everything it does is observable from outside,
in a ``marks`` bucket:

- ``run.<id>.<n>``: one per execution of the function body (its attempts);
- ``again.<id>.<n>``: an execution that found the payment already posted (the
  previous execution wrote it and then crashed before its result was stored);
- ``stall.<id>``: with ``--stall-after K``, every payment after the first K
  completed ones is posted and then the call hangs, so a kill lands with calls
  in flight whose side effect is done but neither acked nor settled: the hard
  case for "no double posting after a crash".
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import uuid

import anyio
import msgspec

from thaw import (
    Access,
    App,
    Backoff,
    Context,
    Idempotency,
    KeyExists,
    Rejected,
    RetryPolicy,
    stream,
)
from thaw.lowlevel import RetryBudget, open_host

CONCURRENCY = 4
TIMEOUT = 3.0  # seconds; an idempotency claim of a crashed call lapses 5 s after that
MAX_ATTEMPTS = 20  # redeliveries that find a crashed call's claim still held count too


class Payment(msgspec.Struct, frozen=True):
    payment_id: str
    amount: int


def subject_of(prefix: str) -> str:
    return f"{prefix}.payments"


def ledger_bucket(prefix: str) -> str:
    return f"{prefix}ledger"


def marks_bucket(prefix: str) -> str:
    return f"{prefix}marks"


def ledger_app(prefix: str, *, stall_after: int | None = None) -> App:
    app = App(f"{prefix}ledger")
    completed = 0

    @app.capability(
        stream(subject_of(prefix)),
        idempotency=Idempotency(key=lambda event, payment: payment.payment_id),
        concurrency=CONCURRENCY,
        timeout=TIMEOUT,
        retry=RetryPolicy(
            max_attempts=MAX_ATTEMPTS, backoff=Backoff(initial=0.05, maximum=0.2, jitter=0)
        ),
        access=Access(buckets=(ledger_bucket(prefix), marks_bucket(prefix))),
    )
    async def post(payment: Payment, ctx: Context) -> dict[str, bool]:
        nonlocal completed
        marks = await ctx.kv(marks_bucket(prefix))
        ledger = await ctx.kv(ledger_bucket(prefix))
        run = uuid.uuid4().hex
        await marks.create(f"run.{payment.payment_id}.{run}", str(os.getpid()).encode())
        amount = str(payment.amount).encode()
        try:
            await ledger.create(payment.payment_id, amount)
        except KeyExists:
            entry = await ledger.get(payment.payment_id)
            if entry is None or entry.value != amount:
                raise Rejected(f"payment {payment.payment_id} is posted differently") from None
            await marks.create(f"again.{payment.payment_id}.{run}", b"")
            return {"posted": False}
        if stall_after is not None and completed >= stall_after:
            await marks.create(f"stall.{payment.payment_id}", str(os.getpid()).encode())
            await anyio.sleep_forever()  # until the test kills this process
        completed += 1
        return {"posted": True}

    return app


async def serve(url: str, prefix: str, *, stall_after: int | None, ack_wait: float) -> None:
    from thaw.adapters.nats import open_jetstream_backbone

    app = ledger_app(prefix, stall_after=stall_after)
    async with open_jetstream_backbone(url) as backbone:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with open_host(
                app,
                backbone,
                ack_wait=ack_wait,  # short, so a killed host's messages come back soon
                fetch_timeout=0.2,
                drain_timeout=2.0,
                budget=RetryBudget(burst=1000.0, min_per_second=1000.0),
            ):
                print("ready", flush=True)
                async for _ in signals:
                    break


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("--stall-after", type=int)
    parser.add_argument("--ack-wait", type=float, default=2.0)
    args = parser.parse_args(argv)
    anyio.run(
        lambda: serve(args.url, args.prefix, stall_after=args.stall_after, ack_wait=args.ack_wait)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Sample data for the reconciliation: a ledger in KV and the provider's export.

    python examples/nightly_reconciliation/seed.py --url nats://127.0.0.1:4222 --date 2026-12-03

creates the app's ``ledger`` and ``exports`` buckets (as ``thaw serve`` would),
writes ``--accounts`` ledger balances and the provider's export of ``--date`` with
``--mismatched`` differences (a changed balance, an account only in the ledger, one only in the
export, in turn), and prints the differences it made. Tests call ``seed()``.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import defaultdict
from pathlib import Path

import anyio
import msgspec

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "examples.nightly_reconciliation"

from thaw.lowlevel import Backbone, plan_for

from .app import EXPORTS, LEDGER, app, export_name
from .compare import ledger_key, partition_of
from .contracts import PARTITIONS, Balance


async def seed(
    backbone: Backbone,
    date: str,
    *,
    accounts: int = 200,
    mismatched: int = 6,
    skip_exports: tuple[int, ...] = (),
    rng: random.Random | None = None,
) -> dict[str, tuple[int | None, int | None]]:
    """Write the data; return account -> (ledger cents, provider cents) of each difference."""
    rng = rng or random.Random(date)
    plan = plan_for(app)  # the buckets as `thaw serve` provisions them (identical: no conflict)
    ledger = await backbone.add_kv(next(c for c in plan.buckets if c.bucket == LEDGER))
    store = await backbone.add_object_store(
        next(c for c in plan.object_stores if c.bucket == EXPORTS)
    )
    balances = {f"acct-{n:05d}": rng.randrange(0, 10_000_00) for n in range(accounts)}
    provider = dict(balances)
    differences: dict[str, tuple[int | None, int | None]] = {}
    for i, account in enumerate(rng.sample(sorted(balances), mismatched)):
        if i % 3 == 0:
            provider[account] = balances[account] + rng.randrange(1, 500)
        elif i % 3 == 1:
            del provider[account]
        else:
            del balances[account]
        differences[account] = (balances.get(account), provider.get(account))
    for account, cents in balances.items():
        await ledger.put(ledger_key(account), msgspec.json.encode(Balance(account, cents)))
    rows: dict[int, list[Balance]] = defaultdict(list)
    for account, cents in sorted(provider.items()):
        rows[partition_of(account)].append(Balance(account, cents))
    for partition in range(PARTITIONS):
        if partition not in skip_exports:
            await store.put(export_name(date, partition), msgspec.json.encode(rows[partition]))
    return differences


async def _main(url: str, date: str, accounts: int, mismatched: int) -> None:
    from thaw.adapters.nats import open_jetstream_backbone

    async with open_jetstream_backbone(url) as backbone:
        made = await seed(backbone, date, accounts=accounts, mismatched=mismatched)
    for account, (ours, theirs) in sorted(made.items()):
        print(f"{account}: ledger {ours} provider {theirs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--date", required=True)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--mismatched", type=int, default=6)
    args = parser.parse_args()
    anyio.run(_main, args.url, args.date, args.accounts, args.mismatched)


if __name__ == "__main__":
    main()

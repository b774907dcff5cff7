"""The comparison itself: pure functions, no I/O (tested on their own)."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping

from .contracts import MAX_LISTED, PARTITIONS, Balance, Mismatch, PartitionResult


def partition_of(account: str) -> int:
    return zlib.crc32(account.encode()) % PARTITIONS


def ledger_key(account: str) -> str:
    return f"p{partition_of(account)}.{account}"


def compare(
    date: str, partition: int, ledger: Mapping[str, int], export: Iterable[Balance]
) -> PartitionResult:
    """Ledger balances (account -> cents) against the provider's export of the day."""
    provider: dict[str, int] = {}
    for row in export:
        provider[row.account] = provider.get(row.account, 0) + row.balance_cents
    mismatches = [
        Mismatch(account, ledger.get(account), provider.get(account))
        for account in sorted(ledger.keys() | provider.keys())
        if ledger.get(account) != provider.get(account)
    ]
    accounts = len(ledger.keys() | provider.keys())
    return PartitionResult(
        date=date,
        partition=partition,
        accounts=accounts,
        matched=accounts - len(mismatches),
        mismatches=mismatches[:MAX_LISTED],
        unlisted=max(len(mismatches) - MAX_LISTED, 0),
    )

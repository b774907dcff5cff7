"""The messages and records of the reconciliation, versioned (``schema_version``).

Ledger entries live in the KV bucket ``ledger`` under ``p<partition>.<account>``; the
provider's export of a business day is one object per partition in the object store
``exports``, named ``<date>/p<partition>.json`` (a JSON list of ``Balance``).
"""

from __future__ import annotations

import msgspec

PARTITIONS = 8  # accounts are spread over this many partitions (crc32 of the account id)
MAX_LISTED = 100  # mismatches listed per partition; the rest are counted


class Balance(msgspec.Struct, frozen=True):
    account: str
    balance_cents: int
    currency: str = "EUR"


class Partition(msgspec.Struct, frozen=True):
    """One child of a run: compare this partition of this business day."""

    date: str
    partition: int
    schema_version: int = 1


class RunStarted(msgspec.Struct, frozen=True):
    """What starting a run answers (``POST /runs/{date}`` and the tick)."""

    run: str  # the batch id
    date: str
    partitions: int
    started: bool  # False: a redelivered start found its run already going
    schema_version: int = 1


class Mismatch(msgspec.Struct, frozen=True):
    account: str
    ledger_cents: int | None  # None: the account is not in the ledger
    provider_cents: int | None  # None: the provider's export does not list it


class PartitionResult(msgspec.Struct, frozen=True):
    """What a partition reports to the join (small: at most MAX_LISTED mismatches)."""

    date: str
    partition: int
    accounts: int
    matched: int
    mismatches: list[Mismatch]
    unlisted: int = 0  # mismatches beyond MAX_LISTED
    schema_version: int = 1


class Report(msgspec.Struct, frozen=True):
    """The run's report, written to ``reports/<date>.json`` in the object store."""

    date: str
    run: str  # the batch id
    complete: bool  # every partition reported
    timed_out: bool
    accounts: int
    matched: int
    mismatched: int
    partitions: list[PartitionResult]
    failed: dict[int, str]  # partition -> error code (export missing, ...)
    missing: list[int]  # partitions that had not reported at the deadline
    schema_version: int = 1


class ReportNotice(msgspec.Struct, frozen=True):
    """Published on ``reconciliation.reports`` once a report is written."""

    date: str
    run: str
    object: str
    complete: bool
    mismatched: int
    schema_version: int = 1

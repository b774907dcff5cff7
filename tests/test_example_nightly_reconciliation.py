"""examples/nightly_reconciliation in process: the comparison, and whole runs on a TestHost.

The TestHost's FakeClock starts a minute before 02:00 UTC; advancing it past 02:00
fires the nightly tick, which fans out over the partitions; the join's report
object and notice are then checked against the differences ``seed`` made.
"""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from examples.nightly_reconciliation import app
from examples.nightly_reconciliation.app import REPORTS, REPORTS_SUBJECT, report_name
from examples.nightly_reconciliation.compare import compare, ledger_key, partition_of
from examples.nightly_reconciliation.contracts import (
    MAX_LISTED,
    PARTITIONS,
    Balance,
    Mismatch,
    Report,
    ReportNotice,
)
from examples.nightly_reconciliation.seed import seed
from thaw.testing import TestHost

pytestmark = pytest.mark.anyio

TICK = dt.datetime(2026, 12, 4, 2, 0, tzinfo=dt.UTC)
DAY = "2026-12-03"  # the business day the 02:00 tick of the 4th reconciles


def test_compare_lists_changed_and_one_sided_accounts() -> None:
    ledger = {"a": 100, "b": 200, "c": 300}
    export = [Balance("a", 100), Balance("b", 250), Balance("d", 5)]
    result = compare(DAY, 1, ledger, export)
    assert (result.accounts, result.matched) == (4, 1)
    assert result.mismatches == [
        Mismatch("b", 200, 250),
        Mismatch("c", 300, None),
        Mismatch("d", None, 5),
    ]


def test_compare_lists_a_bounded_number_and_counts_the_rest() -> None:
    ledger = {f"x{n}": n for n in range(MAX_LISTED + 7)}
    result = compare(DAY, 0, ledger, [])
    assert len(result.mismatches) == MAX_LISTED and result.unlisted == 7
    assert len(msgspec.json.encode(result)) < 64 * 1024  # it fits a batch result


def test_accounts_land_in_their_partitions_key_prefix() -> None:
    for account in ("acct-00001", "acct-31337", "z"):
        assert ledger_key(account) == f"p{partition_of(account)}.{account}"
        assert 0 <= partition_of(account) < PARTITIONS


async def _run_nightly(th: TestHost) -> tuple[Report, list[ReportNotice]]:
    await th.advance(120.0)  # 01:59 -> 02:01: the tick fires and the run completes
    store = await th.objects(REPORTS)
    report = msgspec.json.decode(await store.get(report_name(DAY)), type=Report)
    notices = [
        msgspec.json.decode(m.data, type=ReportNotice) for m in await th.published(REPORTS_SUBJECT)
    ]
    return report, notices


async def test_the_nightly_tick_reports_every_difference() -> None:
    async with TestHost(app, wall_start=TICK.timestamp() - 60) as th:
        made = await seed(th.backbone, DAY, accounts=300, mismatched=9)
        report, notices = await _run_nightly(th)
    assert (report.date, report.complete, report.timed_out) == (DAY, True, False)
    assert sorted(r.partition for r in report.partitions) == list(range(PARTITIONS))
    found = {
        m.account: (m.ledger_cents, m.provider_cents)
        for r in report.partitions
        for m in r.mismatches
    }
    assert found == made
    assert report.mismatched == 9 and report.accounts == 300  # each in the ledger or the export
    assert [(n.date, n.run, n.complete, n.mismatched) for n in notices] == [
        (DAY, report.run, True, 9)
    ]


async def test_a_missing_export_fails_its_partition_and_the_run_goes_on() -> None:
    async with TestHost(app, wall_start=TICK.timestamp() - 60) as th:
        await seed(th.backbone, DAY, skip_exports=(2,))
        report, _ = await _run_nightly(th)
        letters = await th.dead_letters()
    assert report.failed == {2: "export_missing"} and not report.complete
    assert sorted(r.partition for r in report.partitions) == [
        p for p in range(PARTITIONS) if p != 2
    ]
    assert [m.headers.get("Thaw-Error-Code") for m in letters] == ["export_missing"]

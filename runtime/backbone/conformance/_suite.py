"""The backbone conformance suite as a list, and a runner that needs no test framework.

``BACKBONE_CHECKS`` holds every backbone check in a fixed order; ``check_backbone``
runs them against a backbone, one fresh harness per check, and fails naming the
checks that failed (``run_checks`` does that for any list of checks). Invariant:
checks are only ever added, so a backbone that passed stays comparable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

from thaw.backbone.conformance import _bucket_checks, _delivery_checks, _stream_checks
from thaw.backbone.conformance._harness import BackboneHarness

__all__ = ["BACKBONE_CHECKS", "BackboneCheck", "check_backbone", "run_checks"]

H = TypeVar("H")
BackboneCheck = Callable[[BackboneHarness], Awaitable[None]]

BACKBONE_CHECKS: tuple[BackboneCheck, ...] = tuple(
    getattr(module, name)
    for module in (_stream_checks, _delivery_checks, _bucket_checks)
    for name in module.__all__
)


async def run_checks(
    checks: Sequence[Callable[[H], Awaitable[None]]],
    open_harness: Callable[[], AbstractAsyncContextManager[H]],
) -> None:
    """Run each check on a fresh harness; fail naming every check that failed."""
    failed: list[tuple[str, Exception]] = []
    for check in checks:
        try:
            async with open_harness() as harness:
                await check(harness)
        except Exception as exc:  # collect, so one run names every failing check
            failed.append((check.__name__, exc))
    if failed:
        names = ", ".join(name for name, _ in failed)
        raise AssertionError(f"{len(failed)} of {len(checks)} checks failed: {names}") from (
            failed[0][1]
        )


async def check_backbone(
    open_harness: Callable[[], AbstractAsyncContextManager[BackboneHarness]],
    *,
    checks: Sequence[BackboneCheck] = BACKBONE_CHECKS,
) -> None:
    """Run the backbone checks, each on a fresh harness from ``open_harness()``."""
    await run_checks(checks, open_harness)

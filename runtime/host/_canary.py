"""Whether a canary is rolled back: a pure decision over one host's window of calls (in
host/, beside the rollout that acts on it: decisions/ stays below declarations/).

``canary_verdict(policy, canary, stable)`` takes the canary's and the stable
revision's calls and faults over the policy's window and answers ``keep`` or
``rollback`` with the evidence (both rates and counts), which the host logs and
records in the deployment's history. It never rolls back on too few calls
(``min_calls``), nor when the stable revision fails as often (then the canary is
not what is wrong).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from thaw.declarations._policy import CanaryPolicy

__all__ = ["CanaryVerdict", "WindowCounts", "canary_verdict"]


class WindowCounts(msgspec.Struct, frozen=True):
    calls: int
    faults: int

    @property
    def rate(self) -> float:
        return min(self.faults / self.calls, 1.0) if self.calls else 0.0


class CanaryVerdict(msgspec.Struct, frozen=True):
    action: Literal["keep", "rollback"]
    reason: str
    canary: WindowCounts
    stable: WindowCounts


def canary_verdict(
    policy: CanaryPolicy, canary: WindowCounts, stable: WindowCounts
) -> CanaryVerdict:
    def verdict(action: Literal["keep", "rollback"], reason: str) -> CanaryVerdict:
        return CanaryVerdict(action, reason, canary, stable)

    evidence = (
        f"canary {canary.faults}/{canary.calls} failed ({canary.rate:.1%}), stable "
        f"{stable.faults}/{stable.calls} ({stable.rate:.1%}) in {policy.window:g}s"
    )
    if canary.calls < policy.min_calls:
        return verdict("keep", f"too few calls to judge ({evidence}; needs {policy.min_calls})")
    if canary.rate <= policy.max_error_rate:
        return verdict("keep", f"within budget {policy.max_error_rate:.1%}: {evidence}")
    if stable.calls >= policy.min_calls and stable.rate >= canary.rate:
        return verdict("keep", f"the stable revision fails as often: {evidence}")
    return verdict("rollback", f"over budget {policy.max_error_rate:.1%}: {evidence}")

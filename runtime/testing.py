"""For tests of apps, adapters and backbones: in-memory parts, a one-call invoker, conformance.

``FakeClock`` moves only when told; ``MemoryBackbone`` has JetStream's
semantics on that clock; ``invoke`` runs one capability of an app in process (on a
MemoryBackbone holding what the app declares, unless given a backbone); ``TestHost``
serves a whole app on both, or on a given backbone (drive its HTTP routes with
``th.http``, publish, request, advance time, settle, look at what was published and
dead-lettered).

The backbone conformance suite ships here, so a third-party backbone can show
it behaves like JetStream. It is plain async functions with ``assert``: this
package imports no test framework. Give it a harness (``BackboneHarness``:
your backbone, a name prefix unique per check, how time passes, how to see a
parked fetch) and run every check, from any async test::

    @asynccontextmanager
    async def open_harness():
        async with open_my_backbone() as backbone:
            yield MyHarness(backbone, prefix=f"t{uuid.uuid4().hex[:8]}", grace=0.3)

    async def test_my_backbone_conforms():
        await check_backbone(open_harness)

or one pytest test per check, so a failure names its check::

    @pytest.mark.anyio
    @pytest.mark.parametrize("check", BACKBONE_CHECKS, ids=lambda c: c.__name__)
    async def test_conformance(harness, check):
        await check(harness)

``CHANGE_TRIGGER_CHECKS`` and ``check_change_triggers`` do the same for the
``kv``/``objects`` triggers end to end through a host (each check gets a
``ChangeEnv``: a backbone and a unique prefix). Against a real server, time
passes for real: ``elapse`` sleeps and ``grace`` is how late the server may act.
"""

from __future__ import annotations

from typing import Any

from thaw._clock import FakeClock
from thaw._event import Outcome
from thaw._test_host import TestHost, make_event
from thaw.backbone._contract import Backbone
from thaw.backbone.conformance._harness import BackboneHarness
from thaw.backbone.conformance._suite import BACKBONE_CHECKS, check_backbone
from thaw.backbone.memory._backbone import MemoryBackbone
from thaw.declarations._app import App
from thaw.host._provision import apply_plan, plan_for
from thaw.host._trigger_checks import CHANGE_TRIGGER_CHECKS, ChangeEnv, check_change_triggers
from thaw.invocation._idempotency import MemoryIdempotencyStore
from thaw.invocation._invoker import Invoker

__all__ = [
    "BACKBONE_CHECKS",
    "BackboneHarness",
    "CHANGE_TRIGGER_CHECKS",
    "ChangeEnv",
    "FakeClock",
    "MemoryBackbone",
    "MemoryIdempotencyStore",
    "TestHost",
    "check_backbone",
    "check_change_triggers",
    "invoke",
    "make_event",
]


async def invoke(
    app: App,
    capability: str,
    data: Any = b"",
    *,
    backbone: Backbone | None = None,
    provision: bool | None = None,
    **fields: Any,
) -> Outcome:
    """Invoke one capability once, in process, and return its Outcome.

    Without a ``backbone`` it runs on a fresh MemoryBackbone provisioned with what the
    app declares (streams, KV and object buckets); ``provision=True`` provisions a given
    backbone too, ``False`` never.
    """
    if backbone is None:
        backbone = MemoryBackbone()
        provision = provision is not False
    if provision:
        await apply_plan(plan_for(app), backbone)
    invoker = Invoker(app, backbone=backbone)
    return await invoker.invoke(capability, make_event(data, **fields))

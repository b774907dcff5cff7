"""Dead-letter tooling on JetStream: kv/objects replays re-run the capability."""

from __future__ import annotations

import pytest
from dead_letter_changes import check_replayed_changes_rerun_the_capability
from nats_fixtures import JetStreamHarness, jetstream_harness, nats_server  # noqa: F401

from thaw.host._dead_letters import purge_dead_letters

pytestmark = pytest.mark.anyio


async def test_replayed_kv_and_objects_dead_letters_rerun_the_capability(
    jetstream_harness: JetStreamHarness,  # noqa: F811
) -> None:
    backbone, name = jetstream_harness.backbone, jetstream_harness.prefix
    try:
        await check_replayed_changes_rerun_the_capability(backbone, name)
    finally:
        await purge_dead_letters(backbone, app=name)

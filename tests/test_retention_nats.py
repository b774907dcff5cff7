"""Age limits on JetStream: an existing stream's age is changed in place, nothing else."""

from __future__ import annotations

import pytest
from nats_fixtures import JetStreamHarness, jetstream_harness, nats_server  # noqa: F401

from thaw.backbone._contract import StreamConfig
from thaw.host._retention import ensure_stream
from thaw.lowlevel import DefinitionConflict

pytestmark = pytest.mark.anyio
DAY = 86400.0


async def test_an_existing_streams_age_is_updated_in_place(
    jetstream_harness: JetStreamHarness,  # noqa: F811
) -> None:
    backbone, p = jetstream_harness.backbone, jetstream_harness.prefix
    old = StreamConfig(name=f"{p}_DLQ", subjects=(f"{p}.dlq.>",))  # no age, as it used to be
    await backbone.add_stream(old)
    await backbone.publish(f"{p}.dlq.a", b"kept")
    aged = StreamConfig(name=old.name, subjects=old.subjects, max_age=14 * DAY)
    with pytest.raises(DefinitionConflict, match="max_age"):
        await backbone.add_stream(aged)  # add_stream itself still refuses to change it
    await ensure_stream(backbone, aged)
    info = await backbone.stream_info(old.name)
    assert info.config.max_age == 14 * DAY
    assert info.messages == 1  # updated, not re-created
    await ensure_stream(backbone, aged)  # confirmed as it is now
    await ensure_stream(backbone, old, keep_age=True)  # an age the operator set is kept
    assert (await backbone.stream_info(old.name)).config.max_age == 14 * DAY


async def test_only_the_age_may_change(jetstream_harness: JetStreamHarness) -> None:  # noqa: F811
    backbone, p = jetstream_harness.backbone, jetstream_harness.prefix
    await backbone.add_stream(StreamConfig(name=f"{p}_S", subjects=(f"{p}.s.>",)))
    other = StreamConfig(name=f"{p}_S", subjects=(f"{p}.t.>",), max_age=DAY)
    with pytest.raises(DefinitionConflict, match="subjects"):
        await ensure_stream(backbone, other)
    with pytest.raises(DefinitionConflict, match="only its age may change"):
        await backbone.update_stream(other)
    assert (await backbone.stream_info(f"{p}_S")).config.max_age == 0.0

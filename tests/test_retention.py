"""Age limits: dead letters are not kept forever; app streams may have one; no host fails on it.

Before, ``THAW_DLQ`` and the app streams had no ``max_age``: dead letters (with
their payloads) were kept forever, and a stream provisioned with another age
than the existing one would have been a ``DefinitionConflict`` failing the host.
"""

from __future__ import annotations

import logging

import pytest

from thaw import App, ConfigError, Rejected, RetryPolicy, stream
from thaw.backbone._contract import StreamConfig, UpdatesStreamAges
from thaw.host._dead_letters import list_dead_letters
from thaw.host._provision import apply_plan, plan_for
from thaw.host._retention import (
    DEFAULT_DLQ_MAX_AGE,
    Retention,
    ensure_stream,
    parse_duration,
    retention_from_environment,
)
from thaw.host._worker import ensure_dead_letter_stream
from thaw.lowlevel import DEAD_LETTER_STREAM, DefinitionConflict, Invoker, StreamWorker
from thaw.testing import FakeClock, MemoryBackbone

pytestmark = pytest.mark.anyio
DAY = 86400.0


def failing_app() -> App:
    app = App("ages")

    @app.capability(stream("ages.run"), retry=RetryPolicy(max_attempts=1))
    async def run(raw: bytes) -> None:
        raise Rejected("never", code="never")

    return app


async def dead_letter_one(app: App, backbone: MemoryBackbone) -> None:
    await backbone.publish("ages.run", b"x")
    invoker = Invoker(app, backbone=backbone)
    for consumer in plan_for(app).consumers:
        worker = StreamWorker(
            invoker, backbone, consumer.capability, stream=consumer.stream, consumer=consumer.config
        )
        await worker.run_until_idle()


async def test_dead_letters_age_out_after_fourteen_days_by_default() -> None:
    clock = FakeClock()
    backbone = MemoryBackbone(clock=clock)
    app = failing_app()
    plan = plan_for(app, retention=Retention())
    assert {s.name: s.max_age for s in plan.streams} == {"AGES": 0.0, "THAW_DLQ": 14 * DAY}
    assert "stream THAW_DLQ: thaw.dlq.> (max age 14d)" in plan.describe()
    await apply_plan(plan, backbone)
    await dead_letter_one(app, backbone)
    assert len(await list_dead_letters(backbone)) == 1
    clock.advance(14 * DAY - 1)
    assert len(await list_dead_letters(backbone)) == 1
    clock.advance(1)
    assert await list_dead_letters(backbone) == []


async def test_an_existing_dead_letter_stream_without_an_age_gets_one(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("THAW_DLQ_MAX_AGE", raising=False)  # the worker reads the default
    backbone = MemoryBackbone(clock=FakeClock())
    old = StreamConfig(name=DEAD_LETTER_STREAM, subjects=("thaw.dlq.>",))  # as it used to be
    await backbone.add_stream(old)
    with caplog.at_level(logging.WARNING, logger="thaw.provision"):
        await apply_plan(
            plan_for(failing_app(), retention=Retention(dead_letters=3 * DAY)), backbone
        )
    assert (await backbone.stream_info(DEAD_LETTER_STREAM)).config.max_age == 3 * DAY
    assert "THAW_DLQ: max age changed from no limit to 3d" in caplog.text
    await ensure_dead_letter_stream(backbone)  # a worker confirming it does not fail either
    assert (await backbone.stream_info(DEAD_LETTER_STREAM)).config.max_age == DEFAULT_DLQ_MAX_AGE


async def test_app_streams_keep_an_operators_age_unless_one_is_configured() -> None:
    backbone = MemoryBackbone(clock=FakeClock())
    app = failing_app()
    await backbone.add_stream(StreamConfig(name="AGES", subjects=("ages.run",), max_age=7 * DAY))
    await apply_plan(plan_for(app, retention=Retention()), backbone)
    assert (await backbone.stream_info("AGES")).config.max_age == 7 * DAY  # kept
    await apply_plan(plan_for(app, retention=Retention(streams=2 * DAY)), backbone)
    assert (await backbone.stream_info("AGES")).config.max_age == 2 * DAY  # configured
    await apply_plan(plan_for(app, retention=Retention(streams=0.0)), backbone)
    assert (await backbone.stream_info("AGES")).config.max_age == 0.0  # explicitly unlimited


async def test_other_differences_still_conflict() -> None:
    backbone = MemoryBackbone(clock=FakeClock())
    await backbone.add_stream(StreamConfig(name="AGES", subjects=("ages.other",)))
    with pytest.raises(DefinitionConflict, match="subjects"):
        await apply_plan(plan_for(failing_app(), retention=Retention(streams=DAY)), backbone)
    assert isinstance(backbone, UpdatesStreamAges)
    with pytest.raises(DefinitionConflict, match="only its age may change"):
        await backbone.update_stream(StreamConfig(name="AGES", subjects=("ages.run",)))


async def test_a_backbone_that_cannot_update_ages_keeps_the_stream_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class NoUpdates:  # the calls ensure_stream makes, without update_stream
        def __init__(self) -> None:
            self.inner = MemoryBackbone(clock=FakeClock())

        async def add_stream(self, config: StreamConfig) -> object:
            return await self.inner.add_stream(config)

        async def stream_info(self, name: str) -> object:
            return await self.inner.stream_info(name)

    backbone = NoUpdates()
    await backbone.add_stream(StreamConfig(name="S", subjects=("s.>",)))
    with caplog.at_level(logging.WARNING, logger="thaw.provision"):
        await ensure_stream(backbone, StreamConfig(name="S", subjects=("s.>",), max_age=DAY))  # type: ignore[arg-type]
    assert "cannot change it to 1d" in caplog.text


def test_ages_come_from_the_environment() -> None:
    assert retention_from_environment({}) == Retention(dead_letters=14 * DAY, streams=None)
    found = retention_from_environment({"THAW_DLQ_MAX_AGE": "30d", "THAW_STREAM_MAX_AGE": "12h"})
    assert found == Retention(dead_letters=30 * DAY, streams=12 * 3600.0)
    assert retention_from_environment({"THAW_DLQ_MAX_AGE": "0"}).dead_letters == 0.0
    with pytest.raises(ConfigError, match="THAW_DLQ_MAX_AGE"):
        retention_from_environment({"THAW_DLQ_MAX_AGE": "two weeks"})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("14d", 14 * DAY), ("12h", 43200.0), ("30m", 1800.0), ("90s", 90.0), ("3600", 3600.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "-1d", "1w", "5s", "1e9", "99999d", "d", "1.5.2h"])
def test_bad_durations_are_clear_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="max age"):
        parse_duration(text)

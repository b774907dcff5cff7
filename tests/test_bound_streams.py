"""Triggers bound to streams someone else owns, and consumer settings, on both backbones.

The same scenarios run on MemoryBackbone and on a real nats-server: a stream created
by "someone else" (its own duplicate window, age and subjects) is consumed without
being changed; a bound stream that is missing or does not capture the subject is a
one-line ``ConfigError``; ``ack_wait``, ``max_ack_pending`` and ``deliver="new"``
reach the consumer, and ``deliver="new"`` skips what was stored before.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
import nats.js.api
import pytest
from nats_fixtures import delete_new_streams, nats_server, stream_names, wait_until  # noqa: F401

from thaw import App, ConfigError, stream
from thaw.adapters.nats import EmbeddedServer, JetStreamBackbone
from thaw.declarations._triggers import StreamTrigger
from thaw.host._host import open_host
from thaw.host._provision import ConsumerSettings, plan_for
from thaw.lowlevel import Backbone, StreamConfig
from thaw.testing import MemoryBackbone

pytestmark = pytest.mark.anyio

_names = itertools.count()


@dataclass
class Env:
    backbone: Backbone
    prefix: str
    # Create a stream as another team would, and read back its full stored config.
    create_foreign: Callable[[str, list[str]], Awaitable[None]]
    foreign_config: Callable[[str], Awaitable[Any]]


def memory_env() -> Env:
    backbone = MemoryBackbone()

    async def create(name: str, subjects: list[str]) -> None:
        config = StreamConfig(
            name=name, subjects=tuple(subjects), duplicate_window=600.0, max_age=3600.0
        )
        await backbone.add_stream(config)

    async def config_of(name: str) -> Any:
        return (await backbone.stream_info(name)).config

    return Env(backbone, f"m{next(_names)}", create, config_of)


@pytest.fixture(params=["memory", "nats"])
async def env(
    request: pytest.FixtureRequest,
    nats_server: EmbeddedServer,  # noqa: F811
) -> AsyncIterator[Env]:
    if request.param == "memory":
        yield memory_env()
        return
    backbone = await JetStreamBackbone.connect(nats_server.url)
    try:
        before = await stream_names(backbone.client)
        yield nats_env(backbone)
        await delete_new_streams(nats_server, backbone, before)
    finally:
        await backbone.aclose()


def nats_env(backbone: JetStreamBackbone) -> Env:
    jsm = backbone.client.jsm()

    async def create(name: str, subjects: list[str]) -> None:
        await jsm.add_stream(
            nats.js.api.StreamConfig(
                name=name, subjects=subjects, duplicate_window=600.0, max_age=3600.0
            )
        )

    async def config_of(name: str) -> Any:
        return (await jsm.stream_info(name)).config.as_dict()

    return Env(backbone, f"n{uuid.uuid4().hex[:10]}", create, config_of)


def orders_app(env: Env, seen: list[bytes], done: anyio.Event, want: int, **options: Any) -> App:
    app = App(f"{env.prefix}shop")

    @app.capability(
        stream(f"{env.prefix}.orders.*", stream=env.prefix.upper() + "_ORDERS", **options),
        concurrency=1,
    )
    async def take(raw: bytes) -> None:
        seen.append(raw)
        if len(seen) >= want:
            done.set()

    return app


async def test_a_foreign_stream_is_consumed_and_left_unchanged(env: Env) -> None:
    name = env.prefix.upper() + "_ORDERS"
    await env.create_foreign(name, [f"{env.prefix}.orders.*", f"{env.prefix}.audit"])
    before = await env.foreign_config(name)
    await env.backbone.publish(f"{env.prefix}.orders.1", b"one")
    await env.backbone.publish(f"{env.prefix}.orders.2", b"two")
    seen: list[bytes] = []
    done = anyio.Event()
    app = orders_app(env, seen, done, 2, bind=True)
    async with open_host(app, env.backbone, fetch_timeout=0.05):
        with anyio.fail_after(10):
            await done.wait()
        durable = plan_for(app).consumers[0].config.durable

        async def settled() -> bool:  # acks follow the handler's return
            return not (await env.backbone.consumer_info(name, durable)).num_ack_pending

        await wait_until(settled)
    assert sorted(seen) == [b"one", b"two"]
    assert await env.foreign_config(name) == before
    info = await env.backbone.consumer_info(name, durable)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


async def test_a_missing_bound_stream_is_a_clear_error(env: Env) -> None:
    app = orders_app(env, [], anyio.Event(), 1, bind=True)
    with pytest.raises(ConfigError, match="does not exist") as caught:
        async with open_host(app, env.backbone, fetch_timeout=0.05):
            pass
    assert "\n" not in str(caught.value)
    assert env.prefix.upper() + "_ORDERS" in str(caught.value)


async def test_a_bound_stream_that_misses_the_subject_is_a_clear_error(env: Env) -> None:
    name = env.prefix.upper() + "_ORDERS"
    await env.create_foreign(name, [f"{env.prefix}.invoices.*"])
    before = await env.foreign_config(name)
    app = orders_app(env, [], anyio.Event(), 1, bind=True)
    with pytest.raises(ConfigError, match="does not capture subject") as caught:
        async with open_host(app, env.backbone, fetch_timeout=0.05):
            pass
    assert f"{env.prefix}.orders.*" in str(caught.value)
    assert await env.foreign_config(name) == before


async def test_consumer_settings_reach_the_consumer_and_new_skips_old(env: Env) -> None:
    name = env.prefix.upper() + "_ORDERS"
    await env.create_foreign(name, [f"{env.prefix}.orders.*"])
    await env.backbone.publish(f"{env.prefix}.orders.1", b"old")
    seen: list[bytes] = []
    done = anyio.Event()
    app = orders_app(env, seen, done, 1, bind=True, ack_wait=7, max_ack_pending=5, deliver="new")
    async with open_host(app, env.backbone, fetch_timeout=0.05):
        durable = plan_for(app).consumers[0].config.durable
        config = (await env.backbone.consumer_info(name, durable)).config
        assert (config.ack_wait, config.max_ack_pending, config.deliver) == (7, 5, "new")
        await env.backbone.publish(f"{env.prefix}.orders.2", b"new")
        with anyio.fail_after(10):
            await done.wait()
    # One consumer, concurrency 1, stream order: had "old" been delivered, it came first.
    assert seen == [b"new"]


async def test_operator_settings_override_the_trigger(env: Env) -> None:
    name = env.prefix.upper() + "_ORDERS"
    await env.create_foreign(name, [f"{env.prefix}.orders.*"])
    app = orders_app(env, [], anyio.Event(), 1, bind=True, ack_wait=7)
    settings = {"take": ConsumerSettings(ack_wait=45, max_ack_pending=9)}
    plan = plan_for(app, consumer_settings=settings)
    (consumer,) = plan.consumers
    assert (consumer.config.ack_wait, consumer.config.max_ack_pending) == (45, 9)
    assert [s.name for s in plan.streams] == ["THAW_DLQ"]  # the bound stream: not defined
    assert plan.bound[0].stream == name


def test_consumer_options_are_validated_with_one_line_errors() -> None:
    hostile: list[dict[str, Any]] = [
        {"ack_wait": 0},
        {"ack_wait": -1},
        {"ack_wait": float("nan")},
        {"ack_wait": float("inf")},
        {"ack_wait": 10**9},
        {"ack_wait": True},
        {"ack_wait": "30"},
        {"max_ack_pending": 0},
        {"max_ack_pending": 2.5},
        {"max_ack_pending": True},
        {"max_ack_pending": 10**12},
        {"deliver": "last"},
        {"deliver": ["all"]},
        {"bind": "yes"},
        {"bind": True},  # no stream name to bind to
    ]
    for options in hostile:
        with pytest.raises(ConfigError) as caught:
            stream("orders.*", **options)
        assert "\n" not in str(caught.value), options
    with pytest.raises(ConfigError):
        ConsumerSettings(deliver="sometimes")
    with pytest.raises(ConfigError):
        ConsumerSettings(max_ack_pending=-5)


def test_an_old_manifest_trigger_decodes_with_the_defaults() -> None:
    old = msgspec.json.decode(b'{"type":"stream","subject":"a.b"}', type=StreamTrigger)
    assert (old.bind, old.ack_wait, old.max_ack_pending, old.deliver) == (False, None, None, "all")


def test_an_unknown_capability_in_operator_settings_is_refused() -> None:
    app = orders_app(memory_env(), [], anyio.Event(), 1)
    with pytest.raises(ConfigError, match="no capability"):
        plan_for(app, consumer_settings={"nope": ConsumerSettings(ack_wait=5)})


def test_binding_and_owning_one_stream_is_refused() -> None:
    app = App("mixed")

    @app.capability(stream("a.x", stream="SHARED", bind=True))
    async def one(raw: bytes) -> None: ...

    @app.capability(stream("a.y", stream="SHARED"))
    async def two(raw: bytes) -> None: ...

    with pytest.raises(ConfigError, match="bound"):
        plan_for(app)

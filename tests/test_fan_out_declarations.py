"""Fan-out / fan-in declarations and batch headers: what is refused, and how.

``@app.join`` and ``ctx.fan_out`` misuse is a ``ConfigError`` naming the problem;
hostile batch headers (any strings, hypothesis) are ``BatchInvalid`` or a checked
``ChildRef``, never another exception; the plan provisions the batch bucket only
for an app that declares a join.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thaw import App, Backoff, Batch, BatchInvalid, ConfigError, Context, RetryPolicy, stream
from thaw.declarations._batches import (
    BATCH_HEADER,
    BATCH_INDEX_HEADER,
    BATCH_SIZE_HEADER,
    MAX_BATCH,
    batch_bucket_for,
    join_subject,
    parse_child,
)
from thaw.host._provision import plan_for
from thaw.testing import MemoryBackbone, invoke

pytestmark = pytest.mark.anyio


def test_a_join_is_a_stream_capability_on_its_own_subject() -> None:
    app = App("ledger")

    @app.join(timeout=60.0)
    async def report(batch: Batch[int]) -> None:
        return None

    spec = app.capabilities["report"]
    assert [t.subject for t in spec.triggers] == [join_subject("ledger", "report")]  # type: ignore[attr-defined]
    plan = plan_for(app)
    assert batch_bucket_for("ledger") in [b.bucket for b in plan.buckets]
    assert any(join_subject("ledger", "report") in s.subjects for s in plan.streams)


def test_an_app_without_a_join_gets_no_batch_bucket() -> None:
    app = App("plain")

    @app.capability(stream("plain.x"))
    async def take(raw: bytes) -> None:
        return None

    assert batch_bucket_for("plain") not in [b.bucket for b in plan_for(app).buckets]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": 8 * 86400.0}, "a week"),
        ({"on_timeout": "ignore"}, "on_timeout must be 'run' or 'dead_letter'"),
        ({"retry": RetryPolicy(max_attempts=1)}, "max_attempts >= 2"),
    ],
)
def test_join_options_are_checked(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        App("a").join(**options)  # type: ignore[arg-type]


def test_a_join_must_be_async_and_take_the_batch() -> None:
    app = App("a")

    def plain(batch: Batch[int]) -> None:
        return None

    with pytest.raises(ConfigError, match="must be an 'async def'"):
        app.join()(plain)

    async def no_args() -> None:
        return None

    with pytest.raises(ConfigError, match=r"takes \(batch: Batch\[T\]\)"):
        app.join()(no_args)


async def test_fan_out_needs_a_declared_join_and_a_bounded_batch() -> None:
    app = App("shop")

    @app.join()
    async def report(batch: Batch[int]) -> None:
        return None

    async def not_a_join(batch: Batch[int]) -> None:
        return None

    @app.capability(stream("shop.orders"), retry=RetryPolicy(max_attempts=1))
    async def start(raw: bytes, ctx: Context) -> None:
        if raw == b"plain":
            await ctx.fan_out("shop.parts", [1], join=not_a_join)
        else:
            await ctx.fan_out("shop.parts", range(MAX_BATCH + 1), join=report)

    @app.capability(stream("shop.parts"))
    async def part(n: int) -> int:
        return n

    backbone = MemoryBackbone()
    outcome = await invoke(app, "start", b"plain", backbone=backbone)
    assert outcome.code == "config_invalid"  # type: ignore[union-attr]
    assert "'not_a_join' is not a function declared with @app.join" in outcome.reason  # type: ignore[union-attr]
    outcome = await invoke(app, "start", b"many", backbone=backbone)
    assert f"a batch holds at most {MAX_BATCH}" in outcome.reason  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("context", "message"),
    [({"blob": "x" * 20_000}, "at most 16384"), ({"when": object()}, "not JSON-encodable")],
)
async def test_fan_out_context_must_be_small_json(context: object, message: str) -> None:
    app = App("shop")

    @app.join()
    async def report(batch: Batch[int]) -> None:
        return None

    @app.capability(stream("shop.orders"), retry=RetryPolicy(max_attempts=1))
    async def start(raw: bytes, ctx: Context) -> None:
        await ctx.fan_out("shop.parts", [1], join=report, context=context)

    outcome = await invoke(app, "start", b"", backbone=MemoryBackbone())
    assert outcome.code == "config_invalid"  # type: ignore[union-attr]
    assert message in outcome.reason  # type: ignore[union-attr]


def test_well_formed_batch_headers_parse() -> None:
    child = parse_child(
        {BATCH_HEADER: "shop." + "a1" * 12, BATCH_INDEX_HEADER: "3", BATCH_SIZE_HEADER: "4"}
    )
    assert (child.app, child.digest, child.index, child.size) == ("shop", "a1" * 12, 3, 4)


@given(
    st.dictionaries(
        st.sampled_from([BATCH_HEADER, BATCH_INDEX_HEADER, BATCH_SIZE_HEADER]), st.text()
    )
)
def test_hostile_batch_headers_are_refused_with_batch_invalid(headers: dict[str, str]) -> None:
    refused: BatchInvalid | None = None
    try:
        child = parse_child(headers)
    except BatchInvalid as exc:
        refused = exc
    if refused is not None:
        assert refused.code == "batch_invalid" and len(refused.message) < 300
    else:
        assert 0 <= child.index < child.size <= MAX_BATCH
        assert headers[BATCH_HEADER] == f"{child.app}.{child.digest}"


def test_quick_retry_policy_is_accepted() -> None:
    App("a").join(retry=RetryPolicy(max_attempts=2, backoff=Backoff(initial=0.01)))

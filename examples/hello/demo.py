"""`make demo`: run examples/hello on the embedded default and say what happened.

The embedded default is, for now, the in-process MemoryBackbone (the NATS
issue makes it a local nats-server). The demo invokes the capability directly,
then drives it from a stream through a StreamWorker: a good message, a
duplicate, a message that fails once and is retried with backoff, one the
function rejects (dead-lettered with headers that say why) and one that breaks
the input contract.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from runtime import Event  # noqa: E402
from runtime.lowlevel import (  # noqa: E402
    DEAD_LETTER_STREAM,
    ConsumerConfig,
    Invoker,
    StreamConfig,
    StreamWorker,
    ensure_dead_letter_stream,
    load_app,
)
from runtime.testing import MemoryBackbone  # noqa: E402


class ShortFormatter(logging.Formatter):
    """Log lines for a demo: the message and the exception's one-line summary."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"   log {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            line += f" ({type(error).__name__}: {error})"
        return line


def say(text: str) -> None:
    print(text, flush=True)


async def main() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(ShortFormatter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    app = load_app(str(Path(__file__).parent))
    backbone = MemoryBackbone()
    invoker = Invoker(app, backbone=backbone)
    say(f"== app {app.name!r} with capabilities {', '.join(app.capabilities)}")

    say("\n-- 1. direct invocations (what an HTTP request would do)")
    for data in (b'{"name": "Ada", "language": "fr"}', b'{"name": 42}', b'{"name": "Ada"'):
        outcome = await invoker.invoke("greet", Event(id=f"direct-{data!r}", data=data))
        say(f"   {data.decode():38} -> {outcome!r}")

    say("\n-- 2. from a stream, on the in-process backbone (JetStream semantics)")
    await backbone.add_stream(StreamConfig(name="HELLO", subjects=("hello.>",)))
    await ensure_dead_letter_stream(backbone)
    consumer = ConsumerConfig(
        durable="hello-greet", filter_subject="hello.greet", ack_wait=5, max_deliver=3
    )
    await backbone.add_consumer("HELLO", consumer)
    messages = [
        ("m1", b'{"name": "Grace"}', "a good message"),
        ("m1", b'{"name": "Grace"}', "the same message id again (dropped by the stream)"),
        ("m2", b'{"name": "Flaky", "language": "de"}', "fails on attempt 1, retried"),
        ("m3", b'{"name": "Linus", "language": "xx"}', "rejected by the function"),
        ("m4", b'{"nom": "Edsger"}', "breaks the input contract"),
    ]
    for msg_id, data, why in messages:
        ack = await backbone.publish("hello.greet", data, msg_id=msg_id)
        dup = " (duplicate, not stored)" if ack.duplicate else ""
        say(f"   published {msg_id} seq {ack.seq}{dup}: {why}")
    worker = StreamWorker(invoker, backbone, "greet", stream="HELLO", consumer=consumer)
    with anyio.fail_after(10):
        while True:
            await worker.run_until_idle()
            info = await backbone.consumer_info("HELLO", "hello-greet")
            if info.num_ack_pending == 0 and info.num_pending == 0:
                break
            await anyio.sleep(0.02)  # a retry is waiting out its backoff
    stats = worker.statistics()
    say(
        f"   worker: {stats.acked} acked, {stats.naked} retried, "
        f"{stats.dead_lettered} dead-lettered"
    )

    greeted = await backbone.stream_info("HELLO")
    say(f"   stream HELLO now holds {greeted.messages} messages (inputs + hello.greeted outputs)")
    dead = await backbone.stream_info(DEAD_LETTER_STREAM)
    say(f"\n-- 3. dead letters ({dead.messages}), with the reason in their headers")
    for seq in range(dead.first_seq, dead.last_seq + 1):
        message = await backbone.get_message(DEAD_LETTER_STREAM, seq)
        h = message.headers
        say(
            f"   {h['Thaw-Original-Stream']}#{h['Thaw-Original-Seq']} "
            f"[{h['Thaw-Error-Code']}] {h['Thaw-Error-Message']}"
        )
    say("\ndone: see README.md for `thaw run`, the error codes and the benchmark figures.")


if __name__ == "__main__":
    anyio.run(main)

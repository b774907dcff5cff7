"""JetStream consume + ack: Thaw's stream worker against raw nats-py loops and FastStream.

Same work for everyone: N pre-published 128-byte messages (each with a
``Nats-Msg-Id``) in one stream; each run creates a fresh durable consumer
(explicit ack, AckWait 30 s, MaxAckPending 1000) over the same messages, runs a
no-op handler for every message and acks it. A run ends when the handler has
seen N messages *and* the server reports nothing pending and nothing waiting
for an ack (one consumer-info poll), so every peer pays for its acks.

Peers, alternating within each round (the order rotates between rounds):

- ``thaw``: an App with one ``stream(...)`` capability (default options), run by
  ``open_host`` on a ``JetStreamBackbone`` (its provisioning, a deploy step, happens
  before the clock starts; the peers' one consumer-create request is inside their
  time; every clock starts after connecting);
- ``thaw_idem``: the same with ``idempotency=Idempotency()`` (claim + result in the
  JetStream KV bucket; fresh keys every run);
- ``raw_pull``: nats-py ``pull_subscribe``, ``fetch(100)``, ``await msg.ack()`` each;
- ``raw_push``: nats-py push subscription with flow control, ``await msg.ack()`` in
  the callback;
- ``faststream``: FastStream's JetStream subscriber (its default push consumer,
  acking after the handler; FastStream's per-message logging off, ``logger=None``).

Latency: one message at a time, publish (awaiting the PubAck) -> function -> ack,
timed from before the publish to the moment an observer subscribed to the
consumer's ``$JS.ACK`` subjects sees the ack (so it is the same clock for every
peer). The first ``--latency-warmup`` samples of each run are dropped.

The nats-server (embedded, 127.0.0.1, temporary store, stopped by PID at the end)
is pinned to core 0 and this process to core 1 where the machine allows. Ratios
are medians of per-round ratios; the first round is warm-up and is discarded.

    python benchmarks/jetstream.py [--messages 50000] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import machine, median, summarize, table, write_json

STREAM, SUBJECT = "BENCH", "bench.data"
LAT_STREAM, LAT_SUBJECT = "BENCHLAT", "benchlat.data"
PAYLOAD = bytes(range(128))
ACK_WAIT = 30.0
MAX_ACK_PENDING = 1000
PULL_BATCH = 100
RUN_LIMIT = 300.0  # seconds: every run stops by time as well as by count
PEERS = ("thaw", "thaw_idem", "raw_pull", "raw_push", "faststream")
SERVER_CORE, CLIENT_CORE = 0, 1

Handler = Callable[[], None]


# -- helpers ----------------------------------------------------------------------------


def _pin(pid: int, core: int) -> bool:
    try:
        if core not in os.sched_getaffinity(0) and pid == 0:
            return False
        os.sched_setaffinity(pid, {core})
        return True
    except (AttributeError, OSError):
        return False


class Done:
    """Counts handler calls; ``wait`` returns once ``target`` have been seen."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.event = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.event.set()

    async def wait(self) -> None:
        await asyncio.wait_for(self.event.wait(), RUN_LIMIT)


async def _settled(js: Any, stream: str, durable: str) -> None:
    """Wait until the server holds nothing pending or unacked for ``durable``."""
    deadline = time.monotonic() + RUN_LIMIT
    while True:
        info = await js.consumer_info(stream, durable)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{durable}: {info.num_ack_pending} still unacked")
        await asyncio.sleep(0.001)


def _consumer_config(durable: str, subject: str) -> Any:
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    return ConsumerConfig(
        durable_name=durable,
        filter_subject=subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ACK_WAIT,
        max_ack_pending=MAX_ACK_PENDING,
    )


# -- the peers: each consumes from a fresh durable until `done`, then returns ----------------
# ``consume(url, stream, subject, durable, on_message, ready)`` runs until cancelled;
# ``on_message()`` is the no-op work (it counts); ``ready`` is set once consuming.


async def consume_thaw(
    url: str,
    stream: str,
    subject: str,
    durable: str,
    on_message: Handler,
    ready: asyncio.Event,
    *,
    idempotent: bool = False,
) -> None:
    from thaw import App, Idempotency
    from thaw import stream as stream_trigger
    from thaw.adapters.nats import open_jetstream_backbone
    from thaw.lowlevel import open_host
    from thaw.lowlevel import plan_for as _plan_for

    app = App(durable.replace("_", "-"))

    @app.capability(
        stream_trigger(subject, stream=stream, durable=durable),
        idempotency=Idempotency() if idempotent else None,
    )
    async def noop(data: bytes) -> None:
        on_message()

    async with open_jetstream_backbone(url) as backbone:
        await _provision_consumers(app, backbone, _plan_for)
        async with open_host(app, backbone, provision=False):
            ready.set()
            await asyncio.Event().wait()


async def _provision_consumers(app: Any, backbone: Any, plan_for: Any) -> None:
    """The app's consumer, buckets and dead-letter stream (the bench stream exists)."""
    from thaw.lowlevel import DEAD_LETTER_STREAM, ProvisionPlan, apply_plan

    plan = plan_for(app)
    streams = [s for s in plan.streams if s.name == DEAD_LETTER_STREAM]
    await apply_plan(
        ProvisionPlan(streams=streams, consumers=plan.consumers, buckets=plan.buckets), backbone
    )


async def consume_raw_pull(
    url: str, stream: str, subject: str, durable: str, on_message: Handler, ready: asyncio.Event
) -> None:
    import nats

    client = await nats.connect(url)
    try:
        js = client.jetstream()
        ready.set()  # the clock starts: one consumer-create request, then consuming
        subscription = await js.pull_subscribe(
            subject, durable=durable, stream=stream, config=_consumer_config(durable, subject)
        )
        while True:
            try:
                messages = await subscription.fetch(PULL_BATCH, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            for message in messages:
                on_message()
                await message.ack()
    finally:
        await client.close()


async def consume_raw_push(
    url: str, stream: str, subject: str, durable: str, on_message: Handler, ready: asyncio.Event
) -> None:
    import nats

    client = await nats.connect(url)
    try:
        js = client.jetstream()

        async def handle(message: Any) -> None:
            on_message()
            await message.ack()

        config = _consumer_config(durable, subject)
        config.flow_control = True
        config.idle_heartbeat = 5.0
        ready.set()
        await js.subscribe(
            subject,
            durable=durable,
            stream=stream,
            cb=handle,
            manual_ack=True,
            config=config,
        )
        await asyncio.Event().wait()
    finally:
        await client.close()


async def consume_faststream(
    url: str, stream: str, subject: str, durable: str, on_message: Handler, ready: asyncio.Event
) -> None:
    import warnings

    from faststream.nats import JStream, NatsBroker

    # FastStream warns that a durable push consumer cannot scale out; it is the documented
    # default subscriber and the one measured here.
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="benchmarks.jetstream")
    warnings.filterwarnings("ignore", message=".*Push consumer with the `durable`.*")

    broker = NatsBroker(url, logger=None)

    @broker.subscriber(subject, stream=JStream(stream, declare=False), durable=durable)
    async def handle(body: bytes) -> None:
        on_message()

    await broker.connect()
    ready.set()
    await broker.start()
    try:
        await asyncio.Event().wait()
    finally:
        await broker.stop()


CONSUMERS: dict[str, Callable[..., Coroutine[Any, Any, None]]] = {
    "thaw": consume_thaw,
    "thaw_idem": lambda *a: consume_thaw(*a, idempotent=True),
    "raw_pull": consume_raw_pull,
    "raw_push": consume_raw_push,
    "faststream": consume_faststream,
}


# -- measurements ----------------------------------------------------------------------------


def _start(
    peer: str, url: str, stream: str, subject: str, durable: str, done: Done
) -> tuple[asyncio.Task[None], asyncio.Event]:
    """Start ``peer`` consuming in a task (the caller measures, then ``_end``s it) and its ready."""
    ready = asyncio.Event()
    task = asyncio.create_task(CONSUMERS[peer](url, stream, subject, durable, done.hit, ready))
    return task, ready


async def _end(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def throughput(url: str, peer: str, tag: str, messages: int) -> tuple[float, float]:
    """(messages per second, client CPU microseconds per message) for ``peer``.

    The CPU figure is this process's CPU time over the run (the server runs in its
    own process): steadier than msgs/s on a shared machine.
    """
    import nats

    observer = await nats.connect(url)
    js = observer.jetstream()
    durable = f"{peer}_{tag}"
    done = Done(messages)
    task, ready = _start(peer, url, STREAM, SUBJECT, durable, done)
    try:
        # The clock starts once the peer is connected (Thaw: and provisioned, a deploy
        # step); the raw peers and FastStream create their consumer inside the time.
        await asyncio.wait_for(ready.wait(), 60)
        started, cpu = time.perf_counter(), time.process_time()
        await done.wait()
        await _settled(js, STREAM, durable)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await _end(task)
        await observer.close()
    return messages / elapsed, cpu / messages * 1e6


async def latency(url: str, peer: str, tag: str, count: int, warmup: int) -> list[float]:
    """publish -> function -> ack in milliseconds, one message at a time."""
    import nats
    from nats.js.api import StreamConfig

    observer = await nats.connect(url)
    js = observer.jetstream()
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(LAT_STREAM)
    await js.add_stream(StreamConfig(name=LAT_STREAM, subjects=[LAT_SUBJECT]))
    durable = f"{peer}_lat_{tag}"
    acked: dict[int, int] = {}
    seen = asyncio.Event()

    async def on_ack(message: Any) -> None:
        acked[int(message.subject.split(".")[5])] = time.perf_counter_ns()
        seen.set()

    await observer.subscribe(f"$JS.ACK.{LAT_STREAM}.{durable}.>", cb=on_ack)
    await observer.flush()
    done = Done(count + warmup)
    task, ready = _start(peer, url, LAT_STREAM, LAT_SUBJECT, durable, done)
    samples: list[float] = []
    try:
        await asyncio.wait_for(ready.wait(), 60)
        await asyncio.sleep(0.2)  # let the consumer reach its steady state (first pull)
        deadline = time.monotonic() + RUN_LIMIT
        for i in range(count + warmup):
            if time.monotonic() > deadline:
                break
            seen.clear()
            began = time.perf_counter_ns()
            ack = await js.publish(LAT_SUBJECT, PAYLOAD, headers={"Nats-Msg-Id": f"l{tag}{i}"})
            while ack.seq not in acked:
                await asyncio.wait_for(seen.wait(), 10)
                seen.clear()
            if i >= warmup:
                samples.append((acked.pop(ack.seq) - began) / 1e6)
    finally:
        await _end(task)
        await observer.close()
    return samples


async def prepublish(url: str, messages: int) -> None:
    import nats
    from nats.js.api import StreamConfig

    client = await nats.connect(url)
    try:
        js = client.jetstream()
        await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT], duplicate_window=120.0))
        window = 1000
        for start in range(0, messages, window):
            futures = [
                await js.publish_async(SUBJECT, PAYLOAD, headers={"Nats-Msg-Id": f"m{i}"})
                for i in range(start, min(messages, start + window))
            ]
            await asyncio.wait_for(asyncio.gather(*futures), 60)
        info = await js.stream_info(STREAM)
        assert info.state.messages == messages, info.state
    finally:
        await client.close()


def _loop_runner() -> Callable[[Coroutine[Any, Any, Any]], Any]:
    try:
        import uvloop

        return uvloop.run
    except ImportError:
        return asyncio.run


def measure(url: str, args: argparse.Namespace, peers: list[str]) -> dict[str, Any]:
    run = _loop_runner()
    raw: dict[str, dict[str, list[Any]]] = {
        p: {"throughput": [], "cpu_us": [], "latency": []} for p in peers
    }
    for round_no in range(args.rounds + 1):
        order = peers[round_no % len(peers) :] + peers[: round_no % len(peers)]
        label = "warm-up" if round_no == 0 else f"round {round_no}"
        for peer in order:
            tag = f"r{round_no}"
            rate, cpu_us = run(throughput(url, peer, tag, args.messages))
            lat = run(latency(url, peer, tag, args.latency_count, args.latency_warmup))
            stats = summarize(lat)
            print(
                f"  {label:8} {peer:11} {rate:10,.0f} msgs/s {cpu_us:6.1f} us cpu/msg  latency p50 "
                f"{stats['median']:.3f} ms p99 {stats['p99']:.3f} ms",
                flush=True,
            )
            if round_no:
                raw[peer]["throughput"].append(rate)
                raw[peer]["cpu_us"].append(cpu_us)
                raw[peer]["latency"].append(lat)
    return raw


def report(raw: dict[str, dict[str, list[Any]]], rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for peer, data in raw.items():
        per_round_lat = [summarize(samples) for samples in data["latency"]]
        results[peer] = {
            "throughput_per_round": data["throughput"],
            "throughput_median": median(data["throughput"]),
            "client_cpu_us_per_msg_per_round": data["cpu_us"],
            "client_cpu_us_per_msg": median(data["cpu_us"]),
            "latency_ms_p50_per_round": [s["median"] for s in per_round_lat],
            "latency_ms_p99_per_round": [s["p99"] for s in per_round_lat],
            "latency_ms_p50": median([s["median"] for s in per_round_lat]),
            "latency_ms_p99": median([s["p99"] for s in per_round_lat]),
        }
    ratios: dict[str, float] = {}

    def ratio(name: str, top: str, bottom: Callable[[int], float]) -> None:
        if top in raw:
            values = [raw[top]["throughput"][i] / bottom(i) for i in range(rounds)]
            ratios[name] = median(values)

    if "raw_pull" in raw and "raw_push" in raw:

        def faster_raw(i: int) -> float:
            return float(max(raw["raw_pull"]["throughput"][i], raw["raw_push"]["throughput"][i]))

        ratio("thaw/faster_raw", "thaw", faster_raw)
        ratio("thaw_idem/faster_raw", "thaw_idem", faster_raw)
    for peer in ("raw_pull", "raw_push", "faststream"):
        if peer in raw:

            def other(i: int, peer: str = peer) -> float:
                return float(raw[peer]["throughput"][i])

            ratio(f"thaw/{peer}", "thaw", other)
            ratio(f"thaw_idem/{peer}", "thaw_idem", other)
    return {"peers": results, "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000, help="pre-published messages")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (after warm-up)")
    parser.add_argument("--latency-count", type=int, default=1000, help="latency samples/run")
    parser.add_argument("--latency-warmup", type=int, default=50)
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset")
    parser.add_argument("--json", metavar="FILE", help="write results as JSON")
    args = parser.parse_args(argv)
    peers = [p for p in args.peers.split(",") if p]
    if unknown := set(peers) - set(PEERS):
        parser.error(f"unknown peers: {sorted(unknown)}")
    if args.messages < 100 or args.rounds < 1 or args.latency_count < 10:
        parser.error("--messages >= 100, --rounds >= 1 and --latency-count >= 10 please")
    logging.basicConfig(level=logging.WARNING)

    from thaw.adapters.nats import EmbeddedServer, ServerConfig

    server = EmbeddedServer(ServerConfig())
    server.start()
    try:
        pinned = server.pid is not None and _pin(server.pid, SERVER_CORE) and _pin(0, CLIENT_CORE)
        print(
            f"jetstream benchmark: {args.messages} messages x {args.rounds} rounds (+1 warm-up), "
            f"{args.latency_count} latency samples per run, server {server.url} "
            f"pid {server.pid}, pinned: {pinned}",
            flush=True,
        )
        _loop_runner()(prepublish(server.url, args.messages))
        raw = measure(server.url, args, peers)
    finally:
        server.stop()  # by PID, also on error; removes the temporary store
    results = report(raw, args.rounds)
    rows = []
    faster = results["ratios"]
    for peer, r in results["peers"].items():
        rows.append(
            [
                peer,
                r["throughput_median"],
                r["client_cpu_us_per_msg"],
                r["latency_ms_p50"],
                r["latency_ms_p99"],
            ]
        )
    info = machine(extra=("faststream",))
    headers = ["peer", "msgs/s (median)", "client cpu us/msg", "latency p50 ms", "p99 ms"]
    print(table(headers, rows))
    print()
    print(table(["ratio (median of per-round)", "value"], [[k, v] for k, v in faster.items()]))
    print(
        "\ntargets: thaw/faster_raw >= 0.80, thaw/faststream >= 3.0, "
        "thaw_idem/faster_raw >= 0.20, thaw_idem/faststream > 1.0"
    )
    write_json(
        args.json,
        {
            "benchmark": "jetstream",
            "machine": info,
            "messages": args.messages,
            "payload_bytes": len(PAYLOAD),
            "rounds": args.rounds,
            "latency_count": args.latency_count,
            "pinned": pinned,
            "results": results,
            "raw_latency_ms": {p: raw[p]["latency"] for p in raw},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cold starts through a running host: ``thaw serve`` answering a scaled-to-zero capability.

    python benchmarks/coldstart_host.py [--trials 300] [--rounds 3] [--json FILE] [--quick]

For each target (the examples with http or stream triggers, and a generated app the
benchmark writes to a temp dir, in ``shared``, ``fresh`` and ``process`` variants) this
starts ``thaw serve APP --backbone nats --url URL --http 0 --idle-timeout T`` as a child
(on a nats-server the benchmark starts on a random loopback port with a temp store),
and then, trial after trial: waits until ``/metrics`` says every ``thaw_instances`` of
the app is 0 (bounded), times one request (cold), and times the same request right
after (warm). HTTP: a raw keep-alive socket opened before timing, until the whole
answer is read. Stream: a core NATS publish to the capability's subject, until the
host's ``+ACK`` for it is seen by a subscriber on ``$JS.ACK.<stream>.<consumer>.>``
(the ack itself, one server hop after the host sends it). Beside ``process`` isolation
it times the fork floor (``_coldstart_host_child.py fork-floor``: a bare fork + exit +
waitpid of a process that loaded the same snapshot and is padded to the host's RSS),
in alternating rounds. Then memory (``_coldstart_host_child.py memory``): RSS per
loaded revision and per shared instance, and of 100 revisions scaled to zero.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._coldstart_host_child import vm_rss_kib, write_generated_app  # noqa: E402
from benchmarks._coldstart_host_report import (  # noqa: E402
    WAIT_ZERO_LIMIT,
    check_targets,
    floor_table,
    memory_table,
    series_table,
)
from benchmarks._common import machine, median, percentile, write_json  # noqa: E402

THAW = [sys.executable, "-m", "thaw.adapters.cli"]
CHILD = str(ROOT / "benchmarks" / "_coldstart_host_child.py")
READY_LIMIT = 120.0  # seconds for `thaw serve` to build its snapshot and be ready
POLL = 0.002


@dataclass(frozen=True)
class HttpCall:
    method: str
    path: str
    body: bytes = b""
    status: int = 200


@dataclass(frozen=True)
class StreamCall:
    subject: str
    stream: str
    consumer: str
    payload: Callable[[int], bytes]


@dataclass
class Target:
    label: str
    app: str  # what `thaw serve` is given
    name: str  # the app's name (the `app` label in /metrics)
    isolation: str
    http: HttpCall | None = None
    stream: StreamCall | None = None
    metrics: bool = True  # False: no HTTP trigger, so no HTTP server and no /metrics
    extra: dict[str, str] = field(default_factory=dict)


def _payment(n: int) -> bytes:
    """A payment event apply_payment accepts; ids and customer unique per message."""
    return msgspec.json.encode(
        {
            "id": f"evt_bench{n:08d}",
            "type": "payment.succeeded",
            "created": "2026-01-01T00:00:00Z",
            "payment_id": f"pay_bench{n:08d}",
            "amount": 1000,
            "currency": "USD",
            "customer": f"cus_b{n:08d}",
        }
    )


def _domain_event(n: int) -> bytes:
    data = {"device": "d"}
    return msgspec.json.encode(
        {"id": f"e{n}", "type": "login.new_device", "user": "u1", "data": data}
    )


def example_targets() -> list[Target]:
    examples = ROOT / "examples"
    return [
        Target(
            "hello",
            str(examples / "hello"),
            "hello",
            "shared",
            http=HttpCall("POST", "/greet", b'{"name":"Ada"}'),
            stream=StreamCall("hello.greet", "HELLO", "hello-greet", lambda n: b'{"name":"Ada"}'),
        ),
        Target(
            "payment_webhook",
            str(examples / "payment_webhook"),
            "payment_webhook",
            "shared",
            http=HttpCall("POST", "/fees/quote", b'{"amount":1000,"currency":"USD"}'),
            stream=StreamCall(
                "payments.events", "PAYMENTS", "payment_webhook-apply_payment", _payment
            ),
        ),
        Target("bff", str(examples / "bff"), "bff", "shared", http=HttpCall("GET", "/page/u1")),
        Target(
            "notification_fanout",
            str(examples / "notification_fanout"),
            "notifications",
            "shared",
            stream=StreamCall(
                "domain.events",
                "NOTIFICATIONS",
                "notifications-route",
                _domain_event,
            ),
            metrics=False,
        ),
    ]  # examples/uploads has only objects and kv triggers: nothing to time here


def generated_targets(folder: Path, seed: int) -> list[Target]:
    targets = []
    for isolation in ("shared", "fresh", "process"):
        package, name = write_generated_app(folder, isolation=isolation, seed=seed)
        targets.append(
            Target(
                f"generated ({isolation})",
                str(package),
                name,
                isolation,
                http=HttpCall("POST", "/lookup", b'{"key":"k7"}'),
                stream=StreamCall(
                    f"{name}.lookup",
                    name.upper().replace("-", "_"),
                    f"{name}-lookup",
                    lambda n: b'{"key":"k7"}',
                ),
            )
        )
    return targets


# -- the host ---------------------------------------------------------------------------


class Host:
    """One `thaw serve` child, by PID; ``stop`` always ends and reaps it."""

    def __init__(self, target: Target, url: str, work: Path, idle: float) -> None:
        self.target = target
        self.work = work
        self.out = work / "serve.out"
        self.err = work / "serve.err"
        command = [*THAW, "serve", target.app, "--backbone", "nats", "--url", url]
        command += ["--http", "0", "--idle-timeout", repr(idle), "--no-access-log"]
        command += ["--state-dir", str(work / "state")]
        env = {**os.environ, "PAYMENT_WEBHOOK_SECRET": "whsec_benchmark_only", **target.extra}
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=work)
        self.port = 0

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_LIMIT
        while time.monotonic() < deadline:
            text = self.out.read_text(errors="replace")
            if "thaw: serving app" in text:
                found = re.search(r"http on http://127\.0\.0\.1:(\d+)", text)
                self.port = int(found.group(1)) if found else 0
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(
            f"thaw serve {self.target.label} not ready (exit {self.process.poll()}): "
            f"{self.err.read_text(errors='replace')[-2000:]}"
        )

    def rss_kib(self) -> int:
        return vm_rss_kib(self.process.pid)

    def snapshot(self) -> str:
        return str(next((self.work / "state" / "snapshots").glob("*.snap")))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@contextlib.contextmanager
def running_host(target: Target, url: str, work: Path, idle: float) -> Iterator[Host]:
    host = Host(target, url, work, idle)
    try:
        host.wait_ready()
        yield host
    finally:
        host.stop()


class HttpConnection:
    """One keep-alive connection: whole requests out, whole answers (Content-Length) in."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def call(self, raw: bytes) -> tuple[int, bytes]:
        self.sock.sendall(raw)
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if found is None:
            raise RuntimeError(f"answer without Content-Length: {head[:200]!r}")
        length = int(found.group(1))
        while len(rest) < length:
            self._read()
            rest = self.buffer.partition(b"\r\n\r\n")[2]
        self.buffer = rest[length:]
        return int(head.split(b" ", 2)[1]), rest[:length]

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def request_bytes(call: HttpCall) -> bytes:
    head = f"{call.method} {call.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if call.body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(call.body)}\r\n"
    return head.encode() + b"\r\n" + call.body


METRICS = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
_SAMPLE = re.compile(r"^([a-z_]+)\{([^}]*)\} (\S+)$", re.M)


def metrics(connection: HttpConnection, app: str) -> dict[tuple[str, str], float]:
    status, body = connection.call(METRICS)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    label = f'app="{app}"'
    return {
        (name, labels): float(value)
        for name, labels, value in _SAMPLE.findall(body.decode())
        if label in labels or 'app="' not in labels  # one app per host: no app label
    }


def wait_scaled_to_zero(connection: HttpConnection | None, target: Target, idle: float) -> bool:
    """True once every instance of the app is stopped (or, without /metrics, after a wait
    long enough for the reaper: idle time plus two periods, plus a margin)."""
    if connection is None or not target.metrics:
        time.sleep(idle * 1.5 + 0.05)
        return True
    deadline = time.monotonic() + WAIT_ZERO_LIMIT
    while time.monotonic() < deadline:
        live = [
            v for (n, _), v in metrics(connection, target.name).items() if n == "thaw_instances"
        ]
        if live and not any(live):
            return True
        time.sleep(POLL)
    return False


def cold_starts_counted(connection: HttpConnection | None, target: Target) -> tuple[float, float]:
    """The host's ``thaw_cold_starts_total`` and ``thaw_cold_start_seconds_sum`` of the app."""
    if connection is None or not target.metrics:
        return float("nan"), float("nan")
    samples = metrics(connection, target.name)
    count = sum(v for (n, _), v in samples.items() if n == "thaw_cold_starts_total")
    seconds = sum(v for (n, _), v in samples.items() if n == "thaw_cold_start_seconds_sum")
    return count, seconds


# -- the fork floor ---------------------------------------------------------------------


class ForkFloor:
    """The fork-floor child (see _coldstart_host_child.py), asked for batches of forks."""

    def __init__(self, snapshot: str, pad_to_kib: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, CHILD, "fork-floor", snapshot, str(pad_to_kib)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ready = self._answer(60.0)

    def _answer(self, limit: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        readable, _, _ = select.select([self.process.stdout], [], [], limit)
        line = self.process.stdout.readline() if readable else ""
        if not line:
            raise RuntimeError(f"the fork-floor child gave no answer (exit {self.process.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def batch(self, count: int) -> list[int]:
        """``count`` fork + exit + wait timings."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"{count}\n")
        self.process.stdin.flush()
        timings: list[int] = self._answer(120.0)["ns"]
        return timings

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


# -- one series: cold and warm requests of one trigger ----------------------------------


@dataclass
class Settings:
    trials: int
    rounds: int
    warmup: int
    idle: float


async def run_series(
    target: Target,
    trigger: str,
    host: Host,
    settings: Settings,
    nc: Any,
    floor: ForkFloor | None,
) -> dict[str, Any]:
    watch = HttpConnection(host.port) if target.metrics else None
    answers: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    subscription = None
    numbers = iter(range(10**9))
    if trigger == "http":
        assert target.http is not None
        call, raw = target.http, request_bytes(target.http)
        connection = HttpConnection(host.port)

        async def once() -> int:
            started = time.perf_counter_ns()
            status, body = connection.call(raw)
            elapsed = time.perf_counter_ns() - started
            if status != call.status:
                raise RuntimeError(f"{call.method} {call.path} answered {status}: {body[:300]!r}")
            return elapsed
    else:
        assert target.stream is not None
        spec = target.stream

        async def on_ack(message: Any) -> None:
            if message.data != b"+WPI":  # in-progress heartbeats are not the answer
                answers.put_nowait((time.perf_counter_ns(), message.data))

        subscription = await nc.subscribe(f"$JS.ACK.{spec.stream}.{spec.consumer}.>", cb=on_ack)
        await nc.flush()

        async def once() -> int:
            while not answers.empty():
                answers.get_nowait()
            payload = spec.payload(next(numbers))
            started = time.perf_counter_ns()
            await nc.publish(spec.subject, payload)
            when, data = await asyncio.wait_for(answers.get(), 10.0)
            if data != b"+ACK":
                raise RuntimeError(f"{spec.subject}: the host answered {data[:200]!r}, not +ACK")
            return when - started

    counted_before = cold_starts_counted(watch, target)
    rounds: list[dict[str, list[int]]] = []
    unconfirmed = pairs = 0
    per_round = max(1, settings.trials // settings.rounds)
    try:
        for number in range(settings.rounds):
            cold: list[int] = []
            warm: list[int] = []
            for pair in range(per_round + (settings.warmup if number == 0 else 0)):
                if not wait_scaled_to_zero(watch, target, settings.idle):
                    unconfirmed += 1
                    continue
                pairs += 1
                first = await once()
                second = await once()
                if number or pair >= settings.warmup:
                    cold.append(first)
                    warm.append(second)
            one: dict[str, list[int]] = {"cold_ns": cold, "warm_ns": warm, "floor_ns": []}
            if floor is not None:
                one["floor_ns"] = floor.batch(per_round)
            rounds.append(one)
        counted_after = cold_starts_counted(watch, target)
        counted = counted_after[0] - counted_before[0]
        thaw_seconds = counted_after[1] - counted_before[1]
        wait_scaled_to_zero(watch, target, settings.idle)
        rss = host.rss_kib()
    finally:
        if subscription is not None:
            await subscription.unsubscribe()
        if trigger == "http":
            connection.close()
        if watch is not None:
            watch.close()
    return {
        "target": target.label,
        "app": target.name,
        "trigger": trigger,
        "isolation": target.isolation,
        "pairs": pairs,
        "scale_to_zero_not_seen": unconfirmed,
        "cold_starts_counted_by_host": counted,
        "host_thaw_mean_ms": thaw_seconds / counted * 1e3 if counted else float("nan"),
        "host_rss_kib_scaled_to_zero": rss,
        "rounds": rounds,
        "summary": summarize_series(rounds),
    }


def summarize_series(rounds: list[dict[str, list[int]]]) -> dict[str, float]:
    def ms(values: list[int], fraction: float) -> float:
        return percentile(sorted(values), fraction) / 1e6

    cold = [v for r in rounds for v in r["cold_ns"]]
    warm = [v for r in rounds for v in r["warm_ns"]]
    floor = [v for r in rounds for v in r["floor_ns"]]
    summary = {
        "n": float(len(cold)),
        "cold_p50_ms": ms(cold, 0.5),
        "cold_p99_ms": ms(cold, 0.99),
        "warm_p50_ms": ms(warm, 0.5),
        "warm_p99_ms": ms(warm, 0.99),
        "pair_difference_p50_ms": ms([c - w for c, w in zip(cold, warm, strict=True)], 0.5),
    }
    summary["cold_minus_warm_p50_ms"] = summary["cold_p50_ms"] - summary["warm_p50_ms"]
    summary["cold_minus_warm_p99_ms"] = summary["cold_p99_ms"] - summary["warm_p99_ms"]
    if floor:
        summary["fork_floor_p50_ms"] = ms(floor, 0.5)
        summary["fork_floor_p99_ms"] = ms(floor, 0.99)
        summary["x_fork_floor_p50"] = median(
            [
                (ms(r["cold_ns"], 0.5) - ms(r["warm_ns"], 0.5)) / ms(r["floor_ns"], 0.5)
                for r in rounds
                if r["cold_ns"] and r["floor_ns"]
            ]
        )
        summary["x_fork_floor_p99"] = (
            summary["cold_minus_warm_p99_ms"] / summary["fork_floor_p99_ms"]
        )
    return summary


# -- memory -----------------------------------------------------------------------------


def measure_memory(
    app: str, capability: str, payload: str, count: int, work: Path
) -> dict[str, Any]:
    snapshot = work / f"{Path(app).name}.snap"
    built = subprocess.run(
        [*THAW, "snapshot", "build", app, "-o", str(snapshot)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PAYMENT_WEBHOOK_SECRET": "whsec_benchmark_only"},
    )
    if built.returncode:
        raise ValueError(f"thaw snapshot build {app} failed: {built.stderr[-1500:]}")
    done = subprocess.run(
        [sys.executable, CHILD, "memory", str(snapshot), str(count), capability, payload],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    rss = result["rss_kib"]
    result["app"] = Path(app).name
    result["per_revision_kib"] = (rss["loaded"] - rss["imported"]) / count
    result["per_instance_kib"] = (rss["thawed"] - rss["loaded"]) / count
    result["per_instance_with_first_call_kib"] = (rss["invoked"] - rss["loaded"]) / count
    return result


# -- the run ----------------------------------------------------------------------------


async def run_target(
    target: Target, url: str, work: Path, settings: Settings, nc: Any
) -> list[dict[str, Any]]:
    results = []
    with running_host(target, url, work, settings.idle) as host:
        floor = None
        try:
            if target.isolation == "process":
                floor = ForkFloor(host.snapshot(), host.rss_kib())
            for trigger, present in (("http", target.http), ("stream", target.stream)):
                if present is None:
                    continue
                print(f"   ... {target.label} {trigger}", file=sys.stderr, flush=True)
                series = await run_series(target, trigger, host, settings, nc, floor)
                if floor is not None:
                    series["fork_floor_process_rss_kib"] = floor.ready["rss_kib"]
                results.append(series)
        finally:
            if floor is not None:
                floor.close()
    return results


async def run_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import nats

    from thaw.adapters.nats import EmbeddedServer, ServerConfig

    settings = Settings(args.trials, args.rounds, args.warmup, args.idle_timeout)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(2), "big")
    targets = [*example_targets(), *generated_targets(work / "generated", seed)]
    if args.only:
        targets = [t for t in targets if any(t.label.startswith(o) for o in args.only)]
    server = EmbeddedServer(ServerConfig(store_dir=str(work / "jetstream")))
    server.start(timeout=30.0)
    series: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    try:
        nc = await nats.connect(server.url)
        try:
            for number, target in enumerate(targets):
                print(f"== {target.label}", file=sys.stderr, flush=True)
                place = work / f"host-{number}"
                place.mkdir()
                try:
                    series += await run_target(target, server.url, place, settings, nc)
                except Exception as exc:  # report it, measure the rest
                    errors[target.label] = f"{type(exc).__name__}: {exc}"
                    print(f"   !!! {target.label}: {errors[target.label]}", file=sys.stderr)
        finally:
            await nc.close()
    finally:
        server.stop()
    memory = []
    if not args.only:
        print("== memory", file=sys.stderr, flush=True)
        generated = next(t for t in targets if t.label == "generated (shared)")
        apps = [
            (str(ROOT / "examples" / "hello"), "greet", '{"name":"Ada"}'),
            (generated.app, "lookup", '{"key":"k7"}'),
        ]
        for app, capability, payload in apps:
            try:
                memory.append(measure_memory(app, capability, payload, args.revisions, work))
            except (subprocess.SubprocessError, OSError, ValueError) as exc:
                errors[f"memory {Path(app).name}"] = f"{type(exc).__name__}: {exc}"
    return {
        "benchmark": "coldstart_host",
        "machine": machine(),
        "settings": {
            "trials": args.trials,
            "rounds": args.rounds,
            "warmup_pairs": args.warmup,
            "idle_timeout": args.idle_timeout,
            "reaper_period": max(args.idle_timeout / 4, 0.01),
            "generated_seed": seed,
            "command": " ".join(["python", "benchmarks/coldstart_host.py", *sys.argv[1:]]),
        },
        "series": series,
        "memory": memory,
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=300, help="cold/warm pairs per series")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (fork floor alternates)")
    parser.add_argument("--warmup", type=int, default=5, help="pairs discarded first")
    parser.add_argument("--idle-timeout", type=float, default=0.05, help="seconds (0.05)")
    parser.add_argument("--revisions", type=int, default=100, help="revisions for memory")
    parser.add_argument("--seed", type=int, help="the generated app's seed (random)")
    parser.add_argument("--only", action="append", help="targets whose label starts so")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few trials")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.rounds, args.warmup, args.revisions = 6, 1, 1, 10
    work = Path(tempfile.mkdtemp(prefix="thaw-coldstart-host-"))
    try:
        document = asyncio.run(run_all(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    series = document["series"]
    print(series_table(series))
    if any("fork_floor_p50_ms" in s["summary"] for s in series):
        print()
        print(floor_table(series))
    if document["memory"]:
        print()
        print(memory_table(document["memory"]))
    print()
    print("targets:")
    for line in check_targets(series, document["memory"]):
        print(f"  {line}")
    for label, error in document["errors"].items():
        print(f"  {label}: not measured: {error}")
    write_json(args.json, document)
    return 1 if document["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

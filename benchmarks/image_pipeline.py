"""examples/image_pipeline on one host: images per second through the whole pipeline, and
the latency of an unrelated HTTP request while it runs.

One nats-server (a temporary folder, 127.0.0.1) and ``thaw serve
examples/image_pipeline`` as users run it (a child process; snapshot built first,
uvloop, the Pillow stages through ``ctx.run_sync`` threads), pinned to core 0; the
nats-server (every thread) and this process, the load side, share core 1. Every
image is the same 1600x1200 JPEG (a gradient with smooth noise, about 380 KB) under
a new name. Two hosts are compared, one at a time: ``--sync-threads 8`` (thaw
serve's default) and ``--sync-threads 1`` (``--sync-threads 8,1``).

A round, the variants in turn (BENCHMARKING.md):

- ``bare``: a fresh Python pinned to core 0 runs the example's own Pillow work
  (``normalise`` to 1024 px, then ``thumbnail`` to 128 px) on the same image
  ``--images`` (80) times in a loop: about the ceiling of one core;
- for each host variant, a fresh ``thaw serve`` (same nats-server, same state
  folder), then ``idle``: ``--pings`` (600) ``GET /healthz`` round trips on one
  keep-alive connection, 2 ms apart, while the pipeline has nothing to do; then
  ``pipeline``: ``--images`` uploads with ``PUT /images/{name}`` (four at a time),
  timed from the first upload until a subscriber has seen every image's
  ``images.thumbnails`` message (upload, resize, moderate, publish_thumbnail, every
  object in JetStream's object store), while the same ``/healthz`` loop runs; then
  the host drains and stops (SIGTERM, by its PID).

The first round is a warm-up and not counted. Ratios are medians of per-round
ratios: pipeline over bare images/s, busy over idle ``/healthz`` latency.

    .venv/bin/python benchmarks/image_pipeline.py --json benchmarks/results/image_pipeline.json
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import anyio.to_thread  # noqa: E402
import msgspec  # noqa: E402
import nats  # noqa: E402

from benchmarks._common import machine, median, summarize, table, write_json  # noqa: E402
from thaw.adapters.nats import EmbeddedServer, ServerConfig  # noqa: E402

SERVER_CORE, LOAD_CORE = "0", "1"
EXAMPLE = ROOT / "examples" / "image_pipeline"
UPLOADERS = 4
ROUND_LIMIT = 60.0  # seconds a pipeline phase may take before the run gives up
BARE = """
import sys, time
sys.path.insert(0, {examples!r})
from image_pipeline.imaging import normalise, thumbnail
from image_pipeline.rules import RULES
data = open({path!r}, "rb").read()
start = time.perf_counter()
for _ in range({count}):
    resized, _ = normalise(data, max_side=RULES.resize_to, max_pixels=RULES.max_pixels)
    thumbnail(resized, side=RULES.thumbnail, max_pixels=RULES.max_pixels)
print(time.perf_counter() - start)
"""


def make_image() -> bytes:
    from PIL import Image

    size = (1600, 1200)
    small = (size[0] // 8, size[1] // 8)
    noise = Image.frombytes("RGB", small, random.Random(7).randbytes(small[0] * small[1] * 3))
    gradient = Image.linear_gradient("L").resize(size).convert("RGB")
    picture = Image.blend(gradient, noise.resize(size, Image.Resampling.BILINEAR), 0.5)
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=90)
    return out.getvalue()


def pinned(core: str, command: list[str]) -> list[str]:
    return ["taskset", "-c", core, *command] if PIN else command


PIN = shutil.which("taskset") is not None and (os.cpu_count() or 1) > 1


def bare(path: Path, count: int) -> float:
    """Seconds the example's Pillow work takes for ``count`` images in a fresh Python."""
    code = BARE.format(examples=str(ROOT / "examples"), path=str(path), count=count)
    out = subprocess.run(
        pinned(SERVER_CORE, [sys.executable, "-c", code]),
        capture_output=True,
        text=True,
        timeout=ROUND_LIMIT,
        check=True,
    )
    return float(out.stdout.strip())


def round_trip(sock: socket.socket, request: bytes) -> None:
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the host closed the connection")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?i)content-length:\s*(\d+)", head)
    length = int(found.group(1)) if found else 0
    while len(body) < length:
        body += sock.recv(65536)


def pings(port: int, *, count: int, stop: threading.Event | None = None) -> list[float]:
    """``/healthz`` round trips in µs, 2 ms apart: ``count`` of them, or until ``stop``."""
    samples: list[float] = []
    request = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"
    deadline = time.monotonic() + ROUND_LIMIT
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(20):  # warm up the connection
            round_trip(sock, request)
        while len(samples) < count and time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                break
            start = time.perf_counter_ns()
            round_trip(sock, request)
            samples.append((time.perf_counter_ns() - start) / 1000)
            time.sleep(0.002)
    return samples


def upload(port: int, name: str, body: bytes) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=ROUND_LIMIT)
    try:
        connection.request("PUT", f"/images/{name}", body=body)
        response = connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise RuntimeError(f"upload {name}: {response.status} {answer[:200]!r}")
    finally:
        connection.close()


async def pipeline(port: int, url: str, image: bytes, names: list[str]) -> dict[str, Any]:
    """Upload ``names``; seconds until every thumbnail was announced, and the pings meanwhile."""
    client = await nats.connect(url, connect_timeout=5)
    try:
        waiting = set(names)
        done = anyio.Event()
        finished = 0.0

        async def seen(message: Any) -> None:
            nonlocal finished
            name = msgspec.json.decode(message.data)["name"]
            waiting.discard(name)
            if not waiting and not done.is_set():
                finished = time.perf_counter()
                done.set()

        await client.subscribe("images.thumbnails", cb=seen)
        await client.flush()
        stop = threading.Event()
        limiter = anyio.CapacityLimiter(UPLOADERS)
        busy: list[float] = []

        async def ping_meanwhile() -> None:
            busy.extend(
                await anyio.to_thread.run_sync(
                    lambda: pings(port, count=1_000_000, stop=stop), abandon_on_cancel=True
                )
            )

        try:
            with anyio.fail_after(ROUND_LIMIT):
                async with anyio.create_task_group() as group:
                    group.start_soon(ping_meanwhile)
                    start = time.perf_counter()
                    async with anyio.create_task_group() as uploads:
                        for name in names:
                            uploads.start_soon(
                                lambda n: anyio.to_thread.run_sync(
                                    upload, port, n, image, limiter=limiter
                                ),
                                name,
                            )
                    await done.wait()
                    stop.set()
        finally:
            stop.set()  # also on a timeout or a failed upload: the ping thread ends too
        seconds = finished - start
        return {"seconds": seconds, "images_per_s": len(names) / seconds, "busy": busy}
    finally:
        await client.close()


def start_host(url: str, folder: Path, log: Any, threads: int) -> tuple[subprocess.Popen[str], int]:
    command = [sys.executable, "-m", "thaw.adapters.cli", "serve", str(EXAMPLE)]
    command += ["--url", url, "--http", "0", "--state-dir", str(folder / "state")]
    command += ["--sync-threads", str(threads)]
    process = subprocess.Popen(
        pinned(SERVER_CORE, command),
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=folder,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        found = re.search(r"thaw: serving app .* http://127\.0\.0\.1:(\d+)", line)
        if found:
            return process, int(found.group(1))
    stop_host(process)
    raise RuntimeError("thaw serve did not start: see " + str(folder / "host.log"))


def stop_host(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # the host this run started, by its PID
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    if process.stdout is not None:
        process.stdout.close()
    return process.returncode


def variant(
    url: str, folder: Path, log: Any, threads: int, image: bytes, names: list[str], pings_: int
) -> dict[str, Any]:
    """One host with ``threads`` sync threads: idle pings, then the pipeline; then stopped."""
    process, port = start_host(url, folder, log, threads)
    try:
        idle = pings(port, count=pings_)
        one = anyio.run(pipeline, port, url, image, names, backend="asyncio")
    finally:
        if stop_host(process) != 0:
            print(f"thaw serve exited {process.returncode}", file=sys.stderr)
    return {
        "pipeline": {"seconds": one["seconds"], "images_per_s": one["images_per_s"]},
        "idle": summarize(idle),
        "busy": summarize(one["busy"]),
    }


def run(args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    image = make_image()
    path = folder / "image.jpg"
    path.write_bytes(image)
    server = EmbeddedServer(ServerConfig(store_dir=str(folder / "nats")))
    server.start(timeout=20.0)
    rounds: list[dict[str, Any]] = []
    log = (folder / "host.log").open("w")
    try:
        if PIN and server.pid is not None:  # every thread of it, off the host's core
            subprocess.run(
                ["taskset", "-a", "-p", "-c", LOAD_CORE, str(server.pid)],
                check=True,
                capture_output=True,
                timeout=10,
            )
        for number in range(args.rounds + 1):
            seconds = bare(path, args.images)
            one: dict[str, Any] = {
                "warm_up": number == 0,
                "bare": {"seconds": seconds, "images_per_s": args.images / seconds},
            }
            for threads in args.sync_threads:
                names = [f"r{number}-t{threads}-{i:04d}.jpg" for i in range(args.images)]
                one[f"threads_{threads}"] = variant(
                    server.url, folder, log, threads, image, names, args.pings
                )
            rounds.append(one)
            print(
                f"round {number}{' (warm-up)' if number == 0 else ''}: bare "
                f"{one['bare']['images_per_s']:.1f} images/s, "
                + ", ".join(
                    f"{t} threads {one[f'threads_{t}']['pipeline']['images_per_s']:.1f}"
                    for t in args.sync_threads
                ),
                file=sys.stderr,
            )
    finally:
        log.close()
        server.stop()
    return rounds


def thread_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",")]
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError("give distinct thread counts, e.g. 8,1")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="counted rounds (3)")
    parser.add_argument("--images", type=int, default=80, help="images per round (80)")
    parser.add_argument("--pings", type=int, default=600, help="idle /healthz samples (600)")
    parser.add_argument(
        "--sync-threads",
        type=thread_counts,
        default=[8, 1],
        help="the hosts to compare, by their --sync-threads (8,1; 8 is thaw serve's default)",
    )
    parser.add_argument("--json")
    args = parser.parse_args()
    if PIN:
        os.sched_setaffinity(0, {int(LOAD_CORE)})
    folder = Path(tempfile.mkdtemp(prefix="thaw-bench-images-"))
    try:
        rounds = run(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    counted = [r for r in rounds if not r["warm_up"]]
    through: list[list[Any]] = []
    latency: list[list[Any]] = []
    summary: dict[str, Any] = {}
    for threads in args.sync_threads:
        key = f"threads_{threads}"
        runs = [r[key] for r in counted]
        over_bare = median(
            [r[key]["pipeline"]["images_per_s"] / r["bare"]["images_per_s"] for r in counted]
        )
        slower = median([v["busy"]["median"] / v["idle"]["median"] for v in runs])
        slower_p99 = median([v["busy"]["p99"] / v["idle"]["p99"] for v in runs])
        summary[key] = {
            "ratio_pipeline_over_bare": over_bare,
            "ratio_busy_over_idle_median": slower,
            "ratio_busy_over_idle_p99": slower_p99,
        }
        label = f"thaw serve --sync-threads {threads}"
        through.append(
            [
                f"through the pipeline, {label}",
                median([v["pipeline"]["images_per_s"] for v in runs]),
                over_bare,
            ]
        )
        latency.append(
            [
                f"while the pipeline runs, {label}",
                median([v["busy"]["median"] for v in runs]),
                median([v["busy"]["p99"] for v in runs]),
                median([v["busy"]["max"] for v in runs]),
                slower,
                slower_p99,
            ]
        )
        latency.append(
            [
                f"idle, {label}",
                median([v["idle"]["median"] for v in runs]),
                median([v["idle"]["p99"] for v in runs]),
                median([v["idle"]["max"] for v in runs]),
                1.0,
                1.0,
            ]
        )
    through.append(
        ["bare Pillow work, one process", median([r["bare"]["images_per_s"] for r in counted]), 1.0]
    )
    print(table(["what", "images/s", "x bare Pillow"], through))
    print()
    headers = ["GET /healthz", "median us", "p99 us", "max us", "x idle (median)", "x idle (p99)"]
    print(table(headers, latency))
    if not PIN:
        print("(not pinned: taskset is missing or there is one core)")
    write_json(
        args.json,
        {
            "benchmark": "image_pipeline",
            "machine": machine(extra=("Pillow",)),
            "pinned": PIN,
            "images_per_round": args.images,
            "image_bytes": len(make_image()),
            "sync_threads": args.sync_threads,
            "rounds": rounds,
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()

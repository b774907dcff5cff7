"""Host boot: a new ``thaw serve`` process from a snapshot until its first answers.

Per boot, a new ``thaw serve SNAPSHOT --backbone nats --url URL --http PORT`` process
(what an operator or an autoscaler starts) is timed from just before its spawn until
(a) its first HTTP answer and (b) the ack of the first stream message: the message is
published to the capability's stream before the spawn, so the host finds it waiting,
and the ack is seen by a subscriber on ``$JS.ACK.>`` (the host's own ack, the same
observable as in ``coldstart_host.py``). The HTTP request is sent as soon as the port
accepts a connection (polled every 0.5 ms from the start). Streams, consumers and
buckets exist already (a warm-up boot provisioned them, as a host restart finds
them), and the children run with Python's bytecode cache on, as an installed package
does (``PYTHONDONTWRITEBYTECODE`` is removed from their environment; the warm-up
writes the caches).

Peers in the same rounds, alternating: ``python -c pass`` (the floor of any Python
process; issue 15's target is a boot within 4x of it), ``python -c "import asyncio,
uvloop, anyio._backends._asyncio, msgspec, httptools, nats.js"`` (the libraries a host
on this stack imports before any code of its own: anyio's asyncio backend is what
``anyio.run`` loads), and uvicorn serving a raw ASGI app until its
first HTTP answer (the usual Python server's boot).

    python benchmarks/host_boot.py [--boots 15] [--app examples/hello] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, median, summarize, table, write_json

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LIBRARIES = "import asyncio, uvloop, anyio._backends._asyncio, msgspec, httptools, nats.js"
RAW_ASGI = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})
"""
READY_LIMIT = 30.0  # seconds a child may take to answer before the run fails


def child_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def first_answer(port: int, request: bytes, child: subprocess.Popen[bytes]) -> float:
    """perf_counter when the first whole answer line from ``port`` arrived."""
    deadline = time.monotonic() + READY_LIMIT
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            break
        except OSError:
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no server on port {port} (exit {child.poll()})") from None
            await asyncio.sleep(0.0005)
    writer.write(request)
    line = await asyncio.wait_for(reader.readline(), READY_LIMIT)
    answered = time.perf_counter()
    writer.close()
    if not line.startswith(b"HTTP/1.1 2"):
        raise RuntimeError(f"first answer was {line!r}")
    return answered


def stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, url: str, nc: Any) -> None:
        self.args, self.work, self.url, self.nc = args, work, url, nc
        self.env = child_environment()
        self.acks: asyncio.Queue[float] = asyncio.Queue()
        self.snapshot = str(work / "app.snap")
        method, path = args.http.split(" ", 1)
        body = args.data.encode()
        self.request = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        (work / "asgi_app.py").write_text(RAW_ASGI)
        self.log = open(work / "serve.err", "ab")  # noqa: SIM115 (closed in run)
        self.prepare()

    def prepare(self) -> None:
        """The snapshot, and what it declares provisioned (as a restarted host finds it)."""
        build = [PYTHON, "-m", "thaw.adapters.cli", "snapshot", "build", self.args.app]
        build += ["-o", self.snapshot]
        subprocess.run(build, check=True, env=self.env, stdout=subprocess.DEVNULL)
        provision = [PYTHON, "-m", "thaw.adapters.cli", "provision", self.snapshot]
        provision += ["--backbone", "nats", "--url", self.url]
        subprocess.run(provision, check=True, env=self.env, stdout=subprocess.DEVNULL)

    async def setup(self) -> None:
        async def seen(msg: Any) -> None:
            self.acks.put_nowait(time.perf_counter())

        await self.nc.subscribe("$JS.ACK.>", cb=seen)
        await self.thaw()  # writes the bytecode caches
        await self.uvicorn()

    async def thaw(self) -> tuple[float, float]:
        """Seconds from spawn to the first HTTP answer and to the first stream ack."""
        while not self.acks.empty():
            self.acks.get_nowait()
        js = self.nc.jetstream()
        message_id = uuid.uuid4().hex
        await js.publish(
            self.args.subject, self.args.data.encode(), headers={"Nats-Msg-Id": message_id}
        )
        port = free_port()
        command = [PYTHON, "-m", "thaw.adapters.cli", "serve", self.snapshot]
        command += ["--backbone", "nats", "--url", self.url, "--http", str(port)]
        command += ["--no-access-log", "--state-dir", str(self.work / "state")]
        started = time.perf_counter()
        # Spawned directly: the spawn is part of what is timed, and nothing else runs here.
        child = subprocess.Popen(  # noqa: ASYNC220
            command, env=self.env, cwd=self.work, stdout=subprocess.DEVNULL, stderr=self.log
        )
        try:
            answered = await first_answer(port, self.request, child)
            acked = await asyncio.wait_for(self.acks.get(), READY_LIMIT)
        except (TimeoutError, RuntimeError) as exc:
            log = (self.work / "serve.err").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"thaw serve did not answer: {exc}\n{log}") from exc
        finally:
            stop(child)
        return answered - started, acked - started

    async def uvicorn(self) -> float:
        port = free_port()
        command = [PYTHON, "-m", "uvicorn", "asgi_app:app", "--port", str(port)]
        command += ["--loop", "uvloop", "--http", "httptools", "--log-level", "warning"]
        started = time.perf_counter()
        child = subprocess.Popen(  # noqa: ASYNC220 (as above)
            command, env=self.env, cwd=self.work, stdout=subprocess.DEVNULL
        )
        try:
            request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            return await first_answer(port, request, child) - started
        finally:
            stop(child)

    def process(self, code: str) -> float:
        started = time.perf_counter()
        subprocess.run([PYTHON, "-c", code], check=True, env=self.env)
        return time.perf_counter() - started


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import nats

    from thaw.adapters.nats import EmbeddedServer, ServerConfig

    server = EmbeddedServer(ServerConfig(store_dir=str(work / "jetstream")))
    server.start(timeout=30.0)
    samples: dict[str, list[float]] = {
        "python -c pass": [],
        "import the libraries": [],
        "uvicorn, raw ASGI: first HTTP answer": [],
        "thaw serve: first HTTP answer": [],
        "thaw serve: first stream message acked": [],
    }
    try:
        nc = await nats.connect(server.url)
        try:
            bench = Bench(args, work, server.url, nc)
            await bench.setup()
            for boot in range(args.boots):
                print(f"boot {boot + 1}/{args.boots}", file=sys.stderr, flush=True)
                samples["python -c pass"].append(bench.process("pass"))
                samples["import the libraries"].append(bench.process(LIBRARIES))
                samples["uvicorn, raw ASGI: first HTTP answer"].append(await bench.uvicorn())
                http_s, stream_s = await bench.thaw()
                samples["thaw serve: first HTTP answer"].append(http_s)
                samples["thaw serve: first stream message acked"].append(stream_s)
            bench.log.close()
        finally:
            await nc.close()
    finally:
        server.stop()
    floor = samples["python -c pass"]
    series = []
    for name, values in samples.items():
        ratios = [v / f for v, f in zip(values, floor, strict=True)]
        series.append(
            {
                "series": name,
                "ms": {k: v * 1000 if k != "n" else v for k, v in summarize(values).items()},
                "x_python_c_pass": median(ratios),
                "samples_s": values,
            }
        )
    return {
        "benchmark": "host_boot",
        "machine": machine(extra=("uvicorn",)),
        "settings": {
            "boots": args.boots,
            "app": args.app,
            "http": args.http,
            "subject": args.subject,
            "command": " ".join(["python", "benchmarks/host_boot.py", *sys.argv[1:]]),
        },
        "series": series,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boots", type=int, default=15, help="boots per series (15)")
    parser.add_argument("--app", default=str(ROOT / "examples" / "hello"), help="app to boot")
    parser.add_argument("--http", default="POST /greet", help="METHOD PATH of the HTTP call")
    parser.add_argument("--subject", default="hello.greet", help="subject of the stream call")
    parser.add_argument("--data", default='{"name":"Ada"}', help="JSON payload of both calls")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="thaw-boot-") as folder:
        report = asyncio.run(run(args, Path(folder)))
    rows = [
        [s["series"], s["ms"]["median"], s["ms"]["p99"], f"{s['x_python_c_pass']:.2f}x"]
        for s in report["series"]
    ]
    print(table(["series", "median ms", "p99 ms", "x python -c pass (median of boots)"], rows))
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

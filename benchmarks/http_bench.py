"""HTTP throughput and latency: Thaw's server (native and under uvicorn) against peers.

Same work for everyone: ``GET /ok`` answers ``{"ok":true}``; ``POST /order``
decodes a 44-byte JSON contract and answers a small JSON object. Each server is a
fresh process with one worker on uvloop, pinned to one core (``taskset -c 0``);
the load generator is pinned to the other (``taskset -c 1``): wrk when installed
(``apt-get install -y wrk``), else a bounded Python generator (the table says
which). Servers alternate within each round (A B C, A B C, ...); each run is
warmed up first; ratios are medians of per-round ratios. Server CPU time per
request (from /proc) is reported too: it is steadier than req/s on a shared VM.

    python benchmarks/http_bench.py [--duration 10] [--rounds 3] [--json FILE]

Servers: ``thaw`` (the native httptools server), ``thaw-asgi`` (the same app
through ``thaw.adapters.asgi`` under uvicorn: what the adapter costs over a raw ASGI
app on the same server), ``uvicorn`` (a raw ASGI app, ``--loop uvloop --http
httptools``) and ``raw`` (a minimal httptools + uvloop protocol written here,
the practical Python ceiling), ``granian-asgi`` and ``granian-rsgi`` (Granian, a
Rust server, one worker with one runtime thread on uvloop, serving the same raw ASGI
app and an RSGI app doing the same work: what a compiled-core server gets). The
uvicorn- and Granian-based ones run when those are installed (both are in the dev
extra); ``--servers`` picks a subset. Server CPU counts the server's child processes
too (Granian runs its worker in one).
"""

from __future__ import annotations

import os
import sys

# Run as a script: put the project root, not this folder, on sys.path so that "import http"
# (http.HTTPStatus, http.client) still finds the standard library.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import msgspec  # noqa: E402

from benchmarks._common import machine, median, table, write_json  # noqa: E402

ORDER = b'{"order_id":"A-1042","amount":1999,"qty":3}'
ROUTES = {"get": ("GET", "/ok", b""), "post": ("POST", "/order", ORDER)}
SERVERS = ("thaw", "thaw-asgi", "uvicorn", "granian-asgi", "granian-rsgi", "raw")
NEEDS_UVICORN = frozenset({"thaw-asgi", "uvicorn"})
NEEDS_GRANIAN = frozenset({"granian-asgi", "granian-rsgi"})
PEERS = ("uvicorn", "granian-rsgi", "raw")  # the ratio columns
CONNECTIONS = 64
SERVER_CORE, LOAD_CORE = "0", "1"


class Order(msgspec.Struct, frozen=True):
    order_id: str
    amount: int
    qty: int


class Total(msgspec.Struct, frozen=True):
    order_id: str
    total: int


# -- the servers (run in child processes: python benchmarks/http_bench.py --serve NAME) -------


def _bench_app() -> Any:
    """The app both Thaw servers serve (built in the server process)."""
    from thaw import App, http

    app = App("bench")

    @app.capability(http("GET", "/ok"))
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    @app.capability(http("POST", "/order"))
    async def order(request: Order) -> Total:
        return Total(request.order_id, request.amount * request.qty)

    return app


def serve_thaw(port: int) -> None:
    import uvloop

    from thaw.adapters.http import open_http_server
    from thaw.lowlevel import Invoker

    async def main() -> None:
        async with open_http_server(Invoker(_bench_app()), port=port):
            await asyncio.Event().wait()

    uvloop.run(main())


def serve_raw(port: int) -> None:
    """The ceiling: ~40 lines of httptools + uvloop, no limits, no routing table."""
    import httptools
    import uvloop

    decode, encode = msgspec.json.Decoder(Order).decode, msgspec.json.Encoder().encode
    ok = b'{"ok":true}'
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"

    class Raw(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.url = b""
            self.body: list[bytes] = []

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def on_url(self, url: bytes) -> None:
            self.url = url

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            if self.url == b"/ok":
                payload = ok
            else:
                order = decode(b"".join(self.body))
                payload = encode(Total(order.order_id, order.amount * order.qty))
            self.body = []
            self.transport.write(head % len(payload) + payload)

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Raw, "127.0.0.1", port)
        async with server:
            await asyncio.Event().wait()

    uvloop.run(main())


def _run_uvicorn(app: Any, port: int) -> None:
    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
    )


def serve_thaw_asgi(port: int) -> None:
    from thaw.adapters.asgi import asgi_app
    from thaw.lowlevel import Invoker

    _run_uvicorn(asgi_app(Invoker(_bench_app())), port)


def _raw_asgi_app() -> Any:
    decode, encode = msgspec.json.Decoder(Order).decode, msgspec.json.Encoder().encode
    headers = [(b"content-type", b"application/json")]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # lifespan is on for every ASGI peer: same work
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/ok":
            payload = b'{"ok":true}'
        else:
            body, more = b"", True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            order = decode(body)
            payload = encode(Total(order.order_id, order.amount * order.qty))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app


def serve_uvicorn(port: int) -> None:
    _run_uvicorn(_raw_asgi_app(), port)


def _rsgi_app() -> Any:
    decode, encode = msgspec.json.Decoder(Order).decode, msgspec.json.Encoder().encode
    headers = [("content-type", "application/json")]

    async def app(scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return
        if scope.path == "/ok":
            protocol.response_bytes(200, headers, b'{"ok":true}')
            return
        order = decode(await protocol())
        protocol.response_bytes(
            200, headers, encode(Total(order.order_id, order.amount * order.qty))
        )

    return app


# Granian imports its target by name in its worker process.
granian_asgi = _raw_asgi_app()
granian_rsgi = _rsgi_app()


def _run_granian(interface: str, port: int) -> None:
    from granian import Granian  # type: ignore[import-not-found,unused-ignore]

    Granian(
        f"benchmarks.http_bench:granian_{interface}",
        address="127.0.0.1",
        port=port,
        interface=interface,
        workers=1,
        runtime_threads=1,
        loop="uvloop",
        http="1",
        websockets=False,
        log_enabled=False,
        working_dir=Path(os.path.dirname(_HERE)),
    ).serve()


# -- load generators ---------------------------------------------------------------------


def wrk_run(port: int, route: str, seconds: float) -> dict[str, float]:
    method, path, body = ROUTES[route]
    command = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s"]
    command += ["--latency", f"http://127.0.0.1:{port}{path}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if method == "POST":
            script.write(
                f'wrk.method = "POST"\nwrk.body = {json.dumps(body.decode())}\n'
                'wrk.headers["Content-Type"] = "application/json"\n'
            )
    try:
        if method == "POST":
            command += ["-s", script.name]
        output = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 30, check=True
        ).stdout
    finally:
        os.unlink(script.name)
    return _parse_wrk(output)


def _parse_wrk(output: str) -> dict[str, float]:
    def latency(label: str) -> float:
        found = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if not found:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
        return float(found.group(1)) * scale

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    return {
        "rps": float(rps.group(1)) if rps else float("nan"),
        "requests": float(total.group(1)) if total else 0.0,
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "bad_responses": float(errors.group(1)) if errors else 0.0,
        "socket_errors": 1.0 if socket_errors else 0.0,
    }


async def _python_load(port: int, route: str, seconds: float) -> dict[str, float]:
    """Bounded by time and by count: CONNECTIONS keep-alive clients, one request at a time."""
    method, path, body = ROUTES[route]
    wire = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n"
    request = (wire + "Content-Type: application/json\r\n\r\n").encode() + body
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    bad = 0
    cap = 5_000_000

    async def client() -> None:
        nonlocal bad
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline and len(latencies) < cap:
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                bad += not head.startswith(b"HTTP/1.1 200")
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CONNECTIONS)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "requests": float(len(latencies)),
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan"),
        "bad_responses": float(bad),
        "socket_errors": 0.0,
    }


def python_run(port: int, route: str, seconds: float) -> dict[str, float]:
    command = ["taskset", "-c", LOAD_CORE, sys.executable, __file__, "--load", route]
    command += ["--port", str(port), "--duration", str(seconds)]
    output = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- orchestration ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (user + system)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for child in _children(pid):
        total += _cpu_seconds(child)
    return total


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(child) for child in handle.read().split()]
        except OSError:
            continue
    return found


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start listening within 20 s")


def measure(server: str, route: str, args: argparse.Namespace, use_wrk: bool) -> dict[str, float]:
    port = _free_port()
    command = ["taskset", "-c", SERVER_CORE, sys.executable, __file__, "--serve", server]
    process = subprocess.Popen([*command, "--port", str(port)])
    try:
        _wait_listening(port, process)
        run = wrk_run if use_wrk else python_run
        run(port, route, args.warmup)  # warm-up, discarded
        cpu_before = _cpu_seconds(process.pid)
        result = run(port, route, args.duration)
        cpu = _cpu_seconds(process.pid) - cpu_before
        result["cpu_us_per_request"] = cpu / result["requests"] * 1e6 if result["requests"] else 0
        return result
    finally:
        process.terminate()  # stopped by PID, also on error
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--routes", default="get,post", help="comma-separated: get, post")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--load", choices=sorted(ROUTES), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve = {
            "thaw": serve_thaw,
            "thaw-asgi": serve_thaw_asgi,
            "raw": serve_raw,
            "uvicorn": serve_uvicorn,
            "granian-asgi": lambda port: _run_granian("asgi", port),
            "granian-rsgi": lambda port: _run_granian("rsgi", port),
        }
        serve[args.serve](args.port)
        return 0
    if args.load:
        import uvloop

        print(json.dumps(uvloop.run(_python_load(args.port, args.load, args.duration))))
        return 0
    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    chosen = [s.strip() for s in args.servers.split(",") if s.strip()]
    if args.rounds < 1 or args.duration <= 0 or not set(routes) <= set(ROUTES):
        parser.error("--rounds must be >= 1, --duration > 0, --routes from get,post")
    if not chosen or not set(chosen) <= set(SERVERS):
        parser.error(f"--servers from {','.join(SERVERS)}")
    if shutil.which("taskset") is None:
        parser.error("taskset (util-linux) is needed to pin server and load generator")
    use_wrk = shutil.which("wrk") is not None
    has_uvicorn, has_granian = _installed("uvicorn"), _installed("granian")
    servers = [
        s
        for s in SERVERS
        if s in chosen
        and (has_uvicorn or s not in NEEDS_UVICORN)
        and (has_granian or s not in NEEDS_GRANIAN)
    ]
    notes = []
    if not has_uvicorn and NEEDS_UVICORN & set(chosen):
        notes.append(
            "uvicorn is NOT installed: it is the peer this benchmark exists for. Add "
            "uvicorn to the dev extra (pyproject.toml) and constraints.txt, then re-run. "
            "Measured here: Thaw and the raw httptools ceiling only."
        )
    if not has_granian and NEEDS_GRANIAN & set(chosen):
        notes.append("granian is NOT installed (it is in the dev extra): Granian peers left out.")
    if not use_wrk:
        notes.append(
            "wrk is not installed (apt-get install -y wrk): using the bounded Python load "
            "generator, which saturates before fast servers do; compare ratios only."
        )
    for note in notes:
        print(f"NOTE: {note}", file=sys.stderr, flush=True)
    raw: dict[str, dict[str, list[dict[str, float]]]] = {
        r: {s: [] for s in servers} for r in routes
    }
    for round_number in range(args.rounds):
        for route in routes:
            for server in servers:
                result = measure(server, route, args, use_wrk)
                raw[route][server].append(result)
                print(
                    f"round {round_number + 1}/{args.rounds} {route:4} {server:12} "
                    f"{result['rps']:>10,.0f} req/s  p99 {result['p99_ms']:.2f} ms  "
                    f"cpu {result['cpu_us_per_request']:.1f} us/req",
                    file=sys.stderr,
                    flush=True,
                )
    results = report(raw, routes, servers)
    info = machine()
    print(
        f"\nhttp benchmark: {args.duration:g}s x {args.rounds} rounds (+{args.warmup:g}s warm-up "
        f"each), {CONNECTIONS} connections, load: {'wrk -t1' if use_wrk else 'python'}, "
        f"server on core {SERVER_CORE}, load on core {LOAD_CORE}, python {info['python']}, "
        f"{info['nproc']} cpus, {info['date']}"
    )
    rows = []
    for route in routes:
        for server in servers:
            r = results[route][server]
            rows.append(
                [
                    f"{ROUTES[route][0]} {ROUTES[route][1]}",
                    server,
                    r["rps"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["cpu_us_per_request"],
                    _ratio(r.get("rps_vs_uvicorn")),
                    _ratio(r.get("rps_vs_granian-rsgi")),
                    _ratio(r.get("rps_vs_raw")),
                    _ratio(r.get("p99_vs_uvicorn")),
                ]
            )
    headers = ["route", "server", "req/s", "p50 ms", "p99 ms", "cpu us/req"]
    headers += ["req/s / uvicorn", "req/s / granian-rsgi", "req/s / raw", "p99 / uvicorn"]
    print(table(headers, rows))
    for note in notes:
        print(f"NOTE: {note}")
    write_json(
        args.json,
        {
            "benchmark": "http",
            "machine": info,
            "load_generator": "wrk" if use_wrk else "python",
            "connections": CONNECTIONS,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "servers": servers,
            "notes": notes,
            "results": results,
            "raw": raw,
        },
    )
    return 0


def report(
    raw: dict[str, dict[str, list[dict[str, float]]]], routes: list[str], servers: list[str]
) -> dict[str, dict[str, dict[str, float]]]:
    results: dict[str, dict[str, dict[str, float]]] = {}
    for route in routes:
        results[route] = {}
        for server in servers:
            runs = raw[route][server]
            entry = {
                key: median([run[key] for run in runs])
                for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request")
            }
            entry["bad_responses"] = sum(run["bad_responses"] for run in runs)
            for peer in PEERS:
                if peer in servers and peer != server:
                    peers = raw[route][peer]
                    entry[f"rps_vs_{peer}"] = median(
                        [a["rps"] / b["rps"] for a, b in zip(runs, peers, strict=True)]
                    )
                    if peer == "uvicorn":
                        entry["p99_vs_uvicorn"] = median(
                            [a["p99_ms"] / b["p99_ms"] for a, b in zip(runs, peers, strict=True)]
                        )
            results[route][server] = entry
    return results


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if isinstance(value, float) else "-"


if __name__ == "__main__":
    sys.exit(main())

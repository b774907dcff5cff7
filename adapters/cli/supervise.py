"""``thaw serve --workers N``: N worker processes sharing one HTTP port (SO_REUSEPORT, Linux).

The parent serves nothing itself. It reserves the port (a bound, never listening
socket with SO_REUSEPORT, which also resolves ``--http 0`` and fails early when
another program holds the port), opens the backbone once when it is the
embedded nats-server (and provisions the app there, so workers only confirm),
then runs N copies of ``thaw serve`` with ``--worker-of <parent pid>``: each
opens its own host and its own listening socket on the same port, and the
kernel spreads new connections over them. The workers' NATS settings, secrets
included, travel in their environment, never on their command line (every user
can read ``/proc/PID/cmdline``).

Invariants:
- Every worker is the parent's child, in its own session (a terminal's Ctrl-C
  reaches the parent only, which forwards one SIGTERM, so a worker never gets a
  second signal mid-drain), and dies with the parent (PR_SET_PDEATHSIG).
- On SIGTERM/SIGINT the parent forwards SIGTERM to every worker, waits for them
  within the drain timeout plus a grace, SIGKILLs what is left, and only then
  exits: the port is free when it has exited.
- A worker that exits unexpectedly is logged (ERROR) and restarted after a
  backoff (``restart_delay``, a pure function); a slot that crashes
  ``RESTART_LIMIT`` times within ``RESTART_WINDOW`` is given up; when every slot
  is given up the parent exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack

import anyio
import anyio.abc

from thaw.adapters.cli.nats_options import (
    child_environment,
    connection_options,
    strip_credentials,
)
from thaw.adapters.cli.serve_options import ServeOptionError, consumer_flags, prepare_apps
from thaw.adapters.telemetry.metrics_peers import PEERS_ENV
from thaw.backbone._registry import open_backbone
from thaw.declarations._app import App
from thaw.host._provision import apply_plan, plan_for

__all__ = [
    "KILL_GRACE",
    "MAX_WORKERS",
    "backbone_url",
    "worker_command",
    "WorkerPlan",
    "become_worker",
    "reserve_port",
    "restart_delay",
    "serve_workers",
    "supervise",
    "worker_count",
]

log = logging.getLogger("thaw.workers")

MAX_WORKERS = 64
RESTART_LIMIT = 5
RESTART_WINDOW = 60.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
KILL_GRACE = 5.0  # past the drain timeout: how long a worker gets before SIGKILL
_PR_SET_PDEATHSIG = 1


def worker_count(text: str) -> int:
    """argparse type of ``--workers``: an int in 1..MAX_WORKERS."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not a whole number of processes"
        ) from None
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{value} is not between 1 and {MAX_WORKERS}")
    return value


def restart_delay(crashes: Sequence[float], now: float) -> float | None:
    """Seconds to wait before restarting a crashed worker, or None to give the slot up.

    ``crashes`` are the times of this slot's earlier crashes (this one excluded).
    The delay doubles with each crash in the window, from BACKOFF_FIRST to BACKOFF_MAX.
    """
    recent = [at for at in crashes if now - at < RESTART_WINDOW]
    if len(recent) + 1 >= RESTART_LIMIT:
        return None
    return float(min(BACKOFF_FIRST * 2 ** len(recent), BACKOFF_MAX))


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (never listen) ``host:port`` with SO_REUSEPORT; workers bind beside it."""
    if not hasattr(socket, "SO_REUSEPORT") or not sys.platform.startswith("linux"):
        raise OSError("--workers above 1 needs SO_REUSEPORT load balancing (Linux)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reserved = socket.socket(family, socket.SOCK_STREAM)
    try:
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind((host, port))
    except OSError:
        reserved.close()
        raise
    return reserved


def become_worker(parent: int) -> None:
    """In a worker: die with the parent (Linux), and refuse to run if it is gone already."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        raise SystemExit("thaw: the supervising process is gone; worker not started")


class WorkerPlan:
    """What the parent runs: ``command`` N times; the line the workers print when ready."""

    def __init__(
        self,
        command: list[str],
        count: int,
        *,
        drain_timeout: float,
        ready_marker: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.command = command
        self.env = env  # None: this process's; NATS secrets travel here, never in argv
        self.count = count
        self.drain_timeout = drain_timeout
        self.ready_marker = ready_marker


class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: anyio.abc.Process | None = None
        self.crashes: list[float] = []
        self.ready = False
        self.given_up = False


async def supervise(plan: WorkerPlan, *, on_ready: str) -> int:
    """Run the workers until SIGTERM/SIGINT (exit 0) or until every slot is given up (1).

    ``on_ready`` is printed once every worker has printed ``plan.ready_marker``.
    """
    slots = [_Slot(index) for index in range(plan.count)]
    stopping = anyio.Event()
    announced = False

    def announce() -> None:
        nonlocal announced
        if not announced and all(slot.ready for slot in slots):
            announced = True
            pids = ", ".join(str(s.process.pid) for s in slots if s.process is not None)
            print(f"{on_ready} (worker pids: {pids})", flush=True)

    async def relay(slot: _Slot, process: anyio.abc.Process) -> None:
        from anyio.streams.text import TextReceiveStream

        assert process.stdout is not None
        pending = ""
        async for text in TextReceiveStream(process.stdout, errors="replace"):
            pending += text
            *lines, pending = pending.split("\n")
            for line in lines:
                print(f"[worker {slot.index} pid {process.pid}] {line}", flush=True)
                if plan.ready_marker in line:
                    slot.ready = True
                    announce()

    async def run(slot: _Slot) -> None:
        while not stopping.is_set():
            slot.ready = False
            process = await anyio.open_process(
                plan.command,
                env=plan.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=None,  # logs go straight to the parent's stderr
                start_new_session=True,
            )
            slot.process = process
            if stopping.is_set():  # the stop began while this one was starting
                process.send_signal(signal.SIGTERM)
            async with anyio.create_task_group() as relays:
                relays.start_soon(relay, slot, process)
                code = await process.wait()
            if stopping.is_set():
                return
            now = time.monotonic()
            delay = restart_delay(slot.crashes, now)
            slot.crashes.append(now)
            log.error(
                "worker %d (pid %d) exited unexpectedly with code %s%s",
                slot.index,
                process.pid,
                code,
                "" if delay is None else f"; restarting in {delay:g}s",
            )
            if delay is None:
                slot.given_up = True
                log.critical(
                    "worker %d crashed %d times within %gs: not restarting it",
                    slot.index,
                    RESTART_LIMIT,
                    RESTART_WINDOW,
                )
                if all(s.given_up for s in slots):
                    log.critical("every worker is down: stopping")
                    stopping.set()
                return
            with anyio.move_on_after(delay):
                await stopping.wait()

    async def stop_all() -> None:
        await stopping.wait()
        live = [s.process for s in slots if s.process is not None and s.process.returncode is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(plan.drain_timeout + KILL_GRACE):
            for process in live:
                await process.wait()
        for process in live:
            if process.returncode is None:
                log.error("worker pid %d did not stop in time: killing it", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

    by_signal = False

    async def watch_signals() -> None:
        nonlocal by_signal
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for received in signals:
                by_signal = True
                name = signal.Signals(received).name
                print(f"thaw: {name}: draining {plan.count} workers", flush=True)
                stopping.set()
                return

    async with anyio.create_task_group() as group:
        group.start_soon(watch_signals)
        for slot in slots:
            group.start_soon(run, slot)
        await stop_all()
        group.cancel_scope.cancel()
    return 0 if by_signal else 1


def worker_command(args: argparse.Namespace, *, kind: str, url: str | None, port: int) -> list[str]:
    """The ``thaw serve`` command line of one worker (the parent's own, made concrete).

    ``url`` must be free of credentials: the worker's NATS settings, secrets included,
    are in its environment (``child_environment``), which only its user can read.
    """
    targets = args.app if isinstance(args.app, list) else [args.app]
    command = [sys.executable, "-m", "thaw.adapters.cli", "serve", *targets]
    for name in getattr(args, "deployed", None) or []:  # each worker follows the record
        command += ["--deployed", name]
    command += ["--backbone", kind, "--state-dir", args.state_dir]
    if url is not None:
        command += ["--url", url]
    command += ["--drain-timeout", repr(args.drain_timeout)]
    if getattr(args, "idle_timeout", None) is not None:
        command += ["--idle-timeout", repr(args.idle_timeout)]
    command += ["--http", str(port), "--http-host", args.http_host]
    if args.ack_wait is not None:
        command += ["--ack-wait", repr(args.ack_wait)]
    if args.max_body is not None:
        command += ["--max-body", str(args.max_body)]
    command += ["--sync-threads", str(getattr(args, "sync_threads", 8))]
    command += ["--sync-processes", str(getattr(args, "sync_processes", 0))]
    command += consumer_flags(args)  # --consumer, --bind-stream, --max-body-cap, resolved
    for key in getattr(args, "trust_keys", None) or []:  # public keys: workers verify too
        command += ["--trust-key", os.path.abspath(key)]
    if args.no_http:
        command.append("--no-http")
    command.append("--access-log" if args.access_log else "--no-access-log")
    command += ["--log-format", getattr(args, "log_format", None) or "text"]
    command += ["--workers", "1", "--worker-of", str(os.getpid())]
    return command


def serve_workers(
    args: argparse.Namespace, apps: App | list[App], *, kind: str, url: str | None
) -> int:
    """``thaw serve --workers N`` in the parent: reserve, provision once, supervise."""
    apps = apps if isinstance(apps, list) else [apps]
    try:  # checked here, before any worker starts; each worker checks them again
        prepared = prepare_apps(apps, args)
    except ServeOptionError as exc:
        print(f"thaw serve: {exc}", file=sys.stderr)
        return 2
    reserved: socket.socket | None = None
    port = args.http
    if not args.no_http:
        try:
            reserved = reserve_port(args.http_host, args.http)
        except OSError as exc:
            print(
                f"thaw: cannot serve on {args.http_host}:{args.http} with --workers: "
                f"{exc.strerror or exc}",
                file=sys.stderr,
            )
            return 2
        port = reserved.getsockname()[1]

    async def main() -> int:
        async with AsyncExitStack() as stack:
            # The workers' private metrics sockets (one /metrics for all: metrics_peers).
            peers = stack.enter_context(tempfile.TemporaryDirectory(prefix="thaw-metrics-"))
            worker_url = url
            if kind == "memory":
                log.warning(
                    "--workers %d on the memory backbone: each worker has its own in-memory "
                    "state (idempotency, streams); use NATS to share it",
                    args.workers,
                )
            else:
                backbone = await stack.enter_async_context(
                    open_backbone(kind, url, state_dir=args.state_dir, **connection_options(args))
                )
                for app in apps:
                    if app.name in prepared:  # with the operator's consumer settings
                        provision = prepared[app.name]
                    elif args.ack_wait is None:
                        provision = plan_for(app)
                    else:
                        provision = plan_for(app, ack_wait=args.ack_wait)
                    await apply_plan(provision, backbone)
                if worker_url is None:  # the embedded server: workers connect to it
                    worker_url = backbone_url(backbone)
                    if worker_url is None:
                        print(
                            f"thaw: the {kind} backbone does not say where its embedded server "
                            "is: pass --url for --workers",
                            file=sys.stderr,
                        )
                        return 2
            plan = WorkerPlan(
                worker_command(args, kind=kind, url=worker_url, port=port),
                args.workers,
                drain_timeout=args.drain_timeout,
                ready_marker="thaw: serving app",
                env={**child_environment(args), PEERS_ENV: peers},
            )
            where = "" if args.no_http else f"; http on http://{args.http_host}:{port}"
            names = [a.name for a in apps] + list(getattr(args, "deployed", None) or [])
            ready = (
                f"thaw: serving app {', '.join(names)} with {args.workers} "
                f"workers on the {kind} "
                f"backbone{where}; SIGTERM or Ctrl-C drains and stops"
            )
            return await supervise(plan, on_ready=ready)

    try:
        code = anyio.run(main)
    finally:
        if reserved is not None:
            reserved.close()
    print("thaw: stopped", flush=True)
    return code


def backbone_url(backbone: object) -> str | None:
    """The URL a connected backbone's client uses (duck-typed: the core imports no adapter)."""
    client = getattr(backbone, "client", None)
    connected = getattr(client, "connected_url", None)
    geturl = getattr(connected, "geturl", None)
    return strip_credentials(str(geturl()))[0] if callable(geturl) else None

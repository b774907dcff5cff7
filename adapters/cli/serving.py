"""What ``thaw serve`` serves: a loaded revision of the app, with process pools where it can fork.

``thaw serve APP`` always serves a snapshot, so what production runs is what was
built and measured: a snapshot file is loaded as it is; source (a file, a
package, ``module:attribute``) is first built into ``<state-dir>/snapshots/``
(``thaw snapshot build`` in a clean child Python, which also checks that the
result loads) and that file is loaded. The same sources give the same file and
revision id, so a restart rebuilds to the same revision. ``--workers`` children
are given the built file, never the source, so every worker serves one revision.

``process_pools_for`` gives the host its ``process`` isolation on Linux: each
forked instance opens its own connection to the backbone (a connection inherited
across fork would be shared with the parent), with the command's NATS settings, and
closes it when it stops;
on the memory backbone a forked instance has none (it cannot reach the parent's
memory) and its ``ctx.publish``/``ctx.kv`` fail with a clear error.

What the operator sets per environment (``--consumer``, ``--bind-stream``,
``--max-body-cap``; ``thaw.adapters.cli.serve_options``) is checked against the
served apps before any host starts; an app they change is given its adjusted plan
(``open_host(plan=...)``), which it provisions and its workers follow.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

from thaw._errors import ConfigError, ThawError
from thaw._trace import Tracer
from thaw.adapters.cli.serve_options import ServeOptionError, prepare_apps
from thaw.adapters.http.config import HttpConfig
from thaw.adapters.threads import SyncPool
from thaw.backbone._contract import Backbone
from thaw.backbone._registry import open_backbone
from thaw.host._router import ProcessPools
from thaw.snapshots._revision import Revision, is_snapshot, load_revision

__all__ = ["build_if_needed", "process_pools_for", "revision_to_serve"]

log = logging.getLogger("thaw.serve")


def build_if_needed(target: str, state_dir: str) -> str:
    """The snapshot file to serve for ``target``: itself, or one built from its source.

    A build is reused while its source tree is unchanged: the fingerprint of every
    file under the app's folder (path, size, modification time), the Python and the
    thaw version are stored beside it; any difference builds again.
    """
    if is_snapshot(target):
        return target
    from thaw.adapters.process.build import build_snapshot

    folder = Path(state_dir) / "snapshots"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    where = os.path.abspath(target.rpartition(":")[0] if _is_module_form(target) else target)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(where).stem or "app")[:40]
    digest = hashlib.sha256(f"{where}|{target}".encode("utf-8", "surrogateescape")).hexdigest()
    output = folder / f"{stem}-{digest[:10]}.snap"
    stamp = output.with_suffix(".fingerprint")
    fingerprint = _fingerprint(where, exclude=Path(state_dir))
    if fingerprint is not None and output.is_file() and _read(stamp) == fingerprint:
        log.info("using %s, built from %s (its files are unchanged)", output, target)
        return str(output)
    result = build_snapshot(target, str(output))
    if fingerprint is not None:
        stamp.write_text(fingerprint)
    log.info(
        "built %s from %s: revision %s, %d modules, %d data files",
        output,
        target,
        result.revision[:12],
        len(result.modules),
        len(result.data_files),
    )
    return str(output)


_MAX_FINGERPRINT_FILES = 5000


def _fingerprint(where: str, *, exclude: Path) -> str | None:
    """A digest of the app folder's files (None: no folder, or too many files to look)."""
    root = Path(where)
    if root.is_file():
        root = root.parent
    elif not root.is_dir():
        return None
    from thaw import __version__

    skip = exclude.resolve()
    digest = hashlib.sha256(f"{sys.version}|{__version__}".encode())
    count = 0
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and (here / d).resolve() != skip)
        for name in sorted(files):
            try:
                info = (here / name).lstat()
            except OSError:
                continue
            count += 1
            if count > _MAX_FINGERPRINT_FILES:
                return None
            relative = (here / name).relative_to(root).as_posix()
            digest.update(
                f"{relative}|{info.st_size}|{info.st_mtime_ns}\n".encode("utf-8", "surrogateescape")
            )
    return digest.hexdigest()


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _is_module_form(target: str) -> bool:
    return ":" in target and not os.path.exists(target)


def revision_to_serve(target: str, state_dir: str, **load_options: Any) -> tuple[Revision, str]:
    """The loaded revision ``thaw serve`` serves, and the snapshot file it came from."""
    path = build_if_needed(target, state_dir)
    return load_revision(path, **load_options), path


def process_pools_for(
    kind: str, url: str | None, *, state_dir: str, connection: dict[str, Any]
) -> ProcessPools | None:
    """The host's ``process`` isolation, or None where this platform cannot fork."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return None

    async def connect_nats() -> Backbone:
        # In the instance process: its own connection, closed when the instance stops.
        import msgspec

        from thaw.adapters.nats.backbone import JetStreamBackbone
        from thaw.adapters.nats.connection import JetStreamOptions

        options = msgspec.convert(connection, JetStreamOptions)
        return await JetStreamBackbone.connect(url or "", options=options)

    # A forked instance cannot reach in-process state: without NATS it has no backbone.
    connect = connect_nats if kind == "nats" and url is not None else None

    def make(revision: Revision, **options: Any) -> Any:
        # The pool's modules are imported by the first revision that uses `process`
        # isolation, not by every host at start.
        from thaw.adapters.process.pool import process_pool_factory

        return process_pool_factory(backbone_factory=connect)(revision, **options)

    return make


class AppToServe:
    """One app of ``thaw serve``: its loaded revision, or why it could not be loaded."""

    def __init__(self, target: str, revision: Revision | None, path: str, error: str = "") -> None:
        self.target = target
        self.revision = revision
        self.path = path  # the snapshot file (what --workers children are given)
        self.error = error


def apps_to_serve(targets: list[str], state_dir: str, **load_options: Any) -> list[AppToServe]:
    """Build (if source) and load every app; one failing is reported, never fatal here."""
    apps: list[AppToServe] = []
    for target in targets:
        try:
            revision, path = revision_to_serve(target, state_dir, **load_options)
        except ThawError as exc:
            apps.append(AppToServe(target, None, target, f"[{exc.code}] {exc.message}"))
            continue
        apps.append(AppToServe(target, revision, path))
    names: dict[str, str] = {}
    for app in apps:
        if app.revision is None:
            continue
        name = app.revision.app.name
        if name in names:
            app.error = f"[app_name_taken] app {name!r} is already served here (from {names[name]})"
            app.revision = None
        else:
            names[name] = app.target
    return apps


async def serve_apps(
    args: Any,
    revisions: list[Revision],
    *,
    kind: str,
    url: str | None,
    connection: dict[str, Any],
    not_served: dict[str, str] | None = None,
    deployed: list[str] | None = None,
    verifier: Any = None,
) -> int:
    """Serve ``revisions`` on one backbone and one HTTP server until SIGTERM/SIGINT.

    Each app runs in its own task with its own host (consumers, routes, limits): an
    app whose host fails to start or stops with an error is logged and its routes
    answer 503 ``app_unavailable``; the others keep serving. On a signal the HTTP
    server drains first, then every host. Exit code 0 after a signal; 1 when no app
    started or every app has stopped. ``not_served``: apps that could not be loaded
    (target -> why), reported beside the others. ``deployed``: names of apps whose
    revisions come from ``thaw deploy``: the host loads the one with most traffic,
    then follows the deployment record (``follow_deployment``). ``verifier``: every
    snapshot loaded (deployed revisions included) must be signed by a trusted key.
    """
    import signal

    import anyio

    from thaw.adapters.cli.supervise import backbone_url
    from thaw.backbone._registry import load_server
    from thaw.declarations._triggers import HttpTrigger, SubjectTrigger
    from thaw.host._host import Host, open_host

    stop = anyio.Event()  # a signal, or no app left
    release = anyio.Event()  # the hosts may drain (the HTTP server has)
    hosts: dict[str, Host] = {}
    down: dict[str, str] = dict(not_served or {})
    failed: list[tuple[Any, str]] = []  # (App, why) of hosts that did not start
    front: dict[str, Any] = {}  # "apps": the ServiceSet, once the HTTP server is up
    by_signal = False

    async with AsyncExitStack() as stack:
        backbone = await stack.enter_async_context(
            open_backbone(kind, url, state_dir=args.state_dir, **connection)
        )
        # Spans only when the OTEL_* variables ask for an exporter (docs/observability.md).
        tracer = _tracer_from_environment()
        sync = SyncPool(  # ctx.run_sync: threads, and processes when asked for
            threads=getattr(args, "sync_threads", 8), processes=getattr(args, "sync_processes", 0)
        )
        stack.callback(sync.close)
        pools = process_pools_for(
            kind, url or backbone_url(backbone), state_dir=args.state_dir, connection=connection
        )
        subjects = load_server("subjects")
        following: dict[str, Revision] = {}
        for name in deployed or []:
            try:
                following[name] = await _deployed_revision(backbone, name, verifier)
            except ThawError as exc:
                down[name] = f"[{exc.code}] {exc.message}"
                print(f"thaw: error: app {name} is not served: {down[name]}", file=sys.stderr)
        revisions = [*revisions, *following.values()]
        try:  # what the operator set per environment, against what is served
            prepared = prepare_apps([r.app for r in revisions], args)
        except ServeOptionError as exc:
            print(f"thaw serve: {exc}", file=sys.stderr)
            return 2

        async def run_app(revision: Revision, started: anyio.Event) -> None:
            name = revision.app.name
            try:
                async with AsyncExitStack() as app_stack:
                    host = await app_stack.enter_async_context(
                        open_host(
                            revision,
                            backbone,
                            plan=prepared.get(name),  # None: as the app declares
                            drain_timeout=args.drain_timeout,
                            ack_wait=args.ack_wait,
                            idle_timeout=args.idle_timeout,
                            process_pools=pools,
                            run_sync=sync,
                            tracer=tracer,
                        )
                    )
                    if subjects is not None and _has(host, SubjectTrigger):
                        await app_stack.enter_async_context(subjects(host))
                    hosts[name] = host
                    started.set()
                    async with anyio.create_task_group() as follower:
                        if following.get(name) is revision:
                            follower.start_soon(_follow, host, backbone, revision, verifier)
                        await release.wait()
                        follower.cancel_scope.cancel()
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                log.exception("app %s stopped: %s", name, reason)
                down[name] = reason
                if name not in hosts:  # it never started: its routes answer 503
                    failed.append((revision.app, reason))
                if "apps" in front:
                    front["apps"].down[name] = reason
                if not any(other != name for other in hosts):
                    log.critical("no app is serving any more: stopping")
                    stop.set()
            finally:
                hosts.pop(name, None)
                started.set()

        async with anyio.create_task_group() as group:
            for revision in revisions:
                started = anyio.Event()
                group.start_soon(run_app, revision, started)
                await started.wait()
            if hosts:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async with AsyncExitStack() as http:
                        where = ""
                        # Every app gets the HTTP server, http triggers or not: /metrics,
                        # /healthz and /readyz are how a stream-only consumer is scraped.
                        served = list(hosts.values())
                        unavailable = [(a, why) for a, why in failed if _has_app(a, HttpTrigger)]
                        if served and not args.no_http and not _http_available():
                            wanted = any(_has(h, HttpTrigger) for h in served)
                            print(
                                "thaw: "
                                + ("http triggers and " if wanted else "")
                                + "/metrics not served: install the 'fast' extra",
                                file=sys.stderr,
                            )
                        elif served and not args.no_http:
                            server, apps, refused = await http.enter_async_context(
                                _open_http(args, served, unavailable)
                            )
                            front["apps"] = apps
                            for name, reason in refused:
                                log.error(
                                    "app %s: its HTTP routes are not served: %s", name, reason
                                )
                            for name, reason in down.items():
                                apps.down[name] = reason
                            where = f"; http on http://{server.host}:{server.port}"
                        for host in list(hosts.values()):
                            print(_ready_line(host, kind, where), flush=True)
                        for name, reason in down.items():
                            print(f"thaw: app {name} is not serving: {reason}", flush=True)
                        async with anyio.create_task_group() as waiting:

                            async def on_signal() -> None:
                                nonlocal by_signal
                                async for received in signals:
                                    name = signal.Signals(received).name
                                    print(f"thaw: {name}: draining", flush=True)
                                    by_signal = True
                                    stop.set()
                                    return

                            waiting.start_soon(on_signal)
                            await stop.wait()
                            waiting.cancel_scope.cancel()
            release.set()
    print("thaw: stopped", flush=True)
    return 0 if by_signal else 1


async def _deployed_revision(backbone: Any, name: str, verifier: Any) -> Revision:
    """The revision with most traffic in ``name``'s deployment, fetched and loaded."""
    import anyio.to_thread

    from thaw.host._deployments import (
        DeploymentError,
        ensure_deployment_stores,
        fetch_snapshot,
        read_deployment,
    )

    await ensure_deployment_stores(backbone)
    record, _ = await read_deployment(backbone, name)
    if record is None or not any(record.weights().values()):
        raise DeploymentError(f"app {name!r} is not deployed: run `thaw deploy` first")
    weights = record.weights()
    primary = max(weights, key=lambda rid: weights[rid])
    blob = await fetch_snapshot(backbone, name, primary)
    load = partial(load_revision, blob, verifier=verifier)
    revision: Revision = await anyio.to_thread.run_sync(load)
    return revision


async def _follow(host: Any, backbone: Any, revision: Revision, verifier: Any) -> None:
    import socket

    from thaw._clock import SystemClock
    from thaw.adapters.threads import run_in_thread
    from thaw.host._deployments import fetch_snapshot
    from thaw.host._rollout import Rollout, follow_deployment

    name = revision.app.name
    rollout = Rollout(
        host.router,
        partial(fetch_snapshot, backbone, name),
        run_blocking=run_in_thread,
        load=partial(load_revision, verifier=verifier),
        app=name,
    )
    await follow_deployment(
        rollout,
        backbone,
        revision.app,
        host_id=f"{socket.gethostname()}-{os.getpid()}",
        clock=SystemClock(),
    )


def _ready_line(host: Any, kind: str, where: str) -> str:
    revision = next(iter(host.router.revisions), "")
    workers = ", ".join(host.workers) or "none"
    return (
        f"thaw: serving app {host.app.name} on the {kind} backbone (revision {revision[:12]}; "
        f"stream consumers: {workers}){where}; SIGTERM or Ctrl-C drains and stops"
    )


def _http_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("httptools") is not None


def _has(host: Any, kind: type) -> bool:
    return _has_app(host.app, kind)


def _has_app(app: Any, kind: type) -> bool:
    return any(isinstance(t, kind) for s in app.capabilities.values() for t in s.triggers)


def _open_http(args: Any, hosts: list[Any], unavailable: list[tuple[Any, str]]) -> Any:
    from thaw.adapters.http.server import open_apps_http_server

    cap = getattr(args, "max_body_cap", None)  # --max-body-cap, checked against the routes
    return open_apps_http_server(
        hosts,
        host=args.http_host,
        port=args.http,
        reuse_port=bool(args.worker_of),
        access_log=args.access_log,
        # Buffered, beside the other log lines; through logging (one JSON object a line)
        # with --log-format json.
        access_log_stream="" if getattr(args, "log_format", None) == "json" else "stderr",
        max_body=args.max_body,
        unavailable=unavailable,
        config=HttpConfig(max_body_cap=cap) if cap else None,
    )


def _tracer_from_environment() -> Tracer | None:
    """The OpenTelemetry tracer the OTEL_* variables configure, or None (tracing off)."""
    if not any(name.startswith("OTEL_") for name in os.environ):
        return None  # the common case: not even the OpenTelemetry API is imported
    try:
        from thaw.adapters.telemetry.tracing import tracer_from_environment
    except ImportError:
        raise ConfigError(
            "OTEL_* variables are set but OpenTelemetry is not installed: "
            "pip install 'thaw-runtime[otel]' (or unset them)"
        ) from None
    return tracer_from_environment()

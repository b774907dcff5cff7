"""``thaw edge serve`` and ``thaw edge build``, registered through ``thaw.commands``.

    thaw edge serve APP [--port 8787] [--host 127.0.0.1] [--nats URL]   the Node host
    thaw edge build APP -o DIR [--no-snapshot] [--memory-snapshot]   a bundle

``serve --nats URL`` (or ``THAW_NATS_URL``) runs the app on JetStream, as ``thaw serve --nats
URL`` does natively: the Node host's npm NATS client fetches from the app's durable consumers
and the unchanged host inside Pyodide acks, naks or dead-letters each message by its
Outcome, with idempotency in the app's KV bucket (shared with Python hosts). It
provisions nothing: run ``thaw provision APP --nats URL`` first. It takes ``thaw serve``'s
credential and TLS options (``--nats-user``, ``--nats-password-file``, ...,
``THAW_NATS_*``; docs/security.md); Node gets the URL without credentials on its
command line and the secrets in its environment.

Both need the edge cache (``python -m thaw.adapters.edge.prepare``); without it they
exit 3 naming that step. ``serve`` replaces this process with Node, so signals
(SIGTERM, Ctrl-C) reach the host directly and its exit status is the command's.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from thaw.adapters.cli.nats_options import (
    ENVIRONMENT,
    add_nats_options,
    environment_for_child,
    nats_settings,
)
from thaw.adapters.edge import prepare
from thaw.adapters.edge.bundle import build_bundle

__all__ = ["EXIT_SETUP", "register"]

EXIT_SETUP = 3  # the edge cache or the bundle's input is missing


def register(commands: Any) -> None:
    """Add ``edge serve`` and ``edge build`` to the ``thaw`` command's subparsers."""
    edge = commands.add_parser("edge", help="run or bundle an app for Pyodide (JS edge)")
    actions = edge.add_subparsers(dest="edge_command", metavar="ACTION")
    edge.set_defaults(handler=lambda _args: _usage(edge))

    serve = actions.add_parser("serve", help="serve APP's http triggers from Pyodide under Node")
    serve.add_argument("app", help="app folder, .py file or snapshot built inside Pyodide")
    serve.add_argument("--port", type=int, default=8787, help="default: 8787 (0: any)")
    serve.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    serve.add_argument(
        "--nats",
        metavar="URL",
        help="run on this NATS server's JetStream (consume stream triggers, KV, publish); "
        "provision first with `thaw provision APP --nats URL` (env THAW_NATS_URL)",
    )
    add_nats_options(serve, url_flag=False)
    serve.set_defaults(handler=_serve)

    build = actions.add_parser("build", help="write a self-contained bundle for a JS edge")
    build.add_argument("app", help="app folder or .py file")
    build.add_argument("-o", "--output", required=True, type=Path, help="a new, empty folder")
    build.add_argument(
        "--no-snapshot",
        dest="snapshot",
        action="store_false",
        help="ship sources only (no snapshot built inside Pyodide)",
    )
    build.add_argument(
        "--memory-snapshot",
        action="store_true",
        help="add a Pyodide memory snapshot (about 31 MB) that serve boots from, faster",
    )
    build.set_defaults(handler=_build)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _serve(args: argparse.Namespace) -> int:
    problems = prepare.check(test_wheels=False)
    if problems:
        return _fail("; ".join(problems))
    try:
        options = ["--port", str(args.port), "--host", args.host]
        env = dict(os.environ)
        if args.nats or os.environ.get(ENVIRONMENT["url"]):
            # The URL without credentials on Node's command line; secrets in its environment.
            settings = nats_settings(args, url=args.nats)
            options += ["--nats", str(settings.url)]
            env = environment_for_child(settings)
        command = prepare.host_command("serve", args.app, *options)
    except prepare.EdgeSetupError as exc:
        return _fail(str(exc))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)  # never returns: Node is this process now


def _build(args: argparse.Namespace) -> int:
    try:
        manifest = build_bundle(
            args.app, args.output, snapshot=args.snapshot, memory_snapshot=args.memory_snapshot
        )
    except prepare.EdgeSetupError as exc:
        return _fail(str(exc))
    sizes = manifest.sizes
    print(
        f"built {args.output}: {sizes['total']:,} bytes (Pyodide {sizes['pyodide']:,}, "
        f"wheels {sizes['wheels']:,}, Thaw {sizes['thaw']:,}, app {sizes['app']:,}, "
        f"snapshot {sizes['snapshot']:,}); run: node {args.output}/thaw_edge.mjs serve"
    )
    return 0


def _fail(message: str) -> int:
    print(f"thaw edge: {message}", file=sys.stderr)
    return EXIT_SETUP

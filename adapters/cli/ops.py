"""Operational commands of ``thaw``: serve, provision and dead-letter tooling.

They work on any backbone by name (``--backbone``; ``--nats URL`` is short for
``--backbone nats --url URL``). Without a URL the NATS backbone starts the
embedded nats-server with its store under ``--state-dir`` (default ``.thaw``),
so dead letters and KV state survive between commands. ``thaw dlq`` and ``thaw
provision`` first look for the server a running ``thaw serve``/``thaw dev`` keeps
on that store (its URL is recorded there, see ``thaw.adapters.nats.server``) and
use it; they never start a second server on a store in use. Dead letters are
shown with credentials redacted (``--json``: one JSON document).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import anyio
import msgspec

from thaw._errors import ConfigError
from thaw.adapters.cli.nats_options import (
    add_nats_options,
    backbone_target,
    connection_options,
    export_to_children,
)
from thaw.adapters.cli.supervise import (
    MAX_WORKERS,
    become_worker,
    serve_workers,
    worker_count,
)
from thaw.backbone._registry import available_backbones, is_backbone, open_backbone
from thaw.decisions._redaction import (
    EXTRA_REDACTED,
    KNOWN_SECRETS,
    REDACT_HEADERS_ENV,
    known_secrets,
    parse_header_names,
    redact_headers,
    scrub_secrets,
)
from thaw.host._dead_letters import (
    DeadLetterRecord,
    list_dead_letters,
    purge_dead_letters,
    replay_dead_letter,
    show_dead_letter,
)
from thaw.host._provision import apply_plan, plan_for
from thaw.host._retention import (
    DLQ_MAX_AGE_ENV,
    STREAM_MAX_AGE_ENV,
    parse_duration,
    retention_from_environment,
)

__all__ = ["add_commands"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _backbone_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backbone",
        type=_backbone_name,
        default="nats",
        metavar="{memory,nats,...}",
        help="messaging and state backbone: memory, nats or an installed adapter's (default: nats)",
    )
    parser.add_argument(
        "--url", help="backbone URL (default: THAW_NATS_URL, else start the embedded server)"
    )
    parser.add_argument(
        "--state-dir", default=".thaw", help="where embedded servers keep their data (.thaw)"
    )
    add_nats_options(parser)


def _backbone_name(text: str) -> str:
    """A backbone that exists; the installed ones are listed only when it does not."""
    if is_backbone(text):
        return text
    known = ", ".join(sorted(available_backbones()))
    raise argparse.ArgumentTypeError(f"no such backbone here (available: {known})")


def _target(args: argparse.Namespace) -> tuple[str, str | None]:
    """The backbone and its URL, without credentials (those are in _connection)."""
    kind, url, _settings = backbone_target(args)
    return kind, url


def _connection(args: argparse.Namespace) -> dict[str, Any]:
    return connection_options(args)


def add_commands(commands: Any, positive_int: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="run an app on a backbone until SIGTERM/SIGINT, then drain",
        description="Provision what the app needs, run its stream consumers and schedules, "
        "and drain gracefully on SIGTERM or SIGINT.",
    )
    _serve_options(serve, several=True)
    from thaw.adapters.cli.snapshot_trust import add_trust_options

    add_trust_options(serve)
    serve.add_argument(
        "--deployed",
        action="append",
        default=[],
        type=_app_name,
        metavar="APP_NAME",
        help="serve the revisions `thaw deploy` recorded for this app and follow its "
        "deployment (canary, rollback); repeatable",
    )
    serve.add_argument(
        "--workers",
        type=worker_count,
        default=1,
        metavar="N",
        help=f"worker processes sharing the HTTP port with SO_REUSEPORT (1..{MAX_WORKERS}; "
        "Linux); the parent restarts a crashed worker with backoff (1)",
    )
    serve.add_argument("--worker-of", type=int, default=0, help=argparse.SUPPRESS)
    serve.set_defaults(handler=_cmd_serve)

    dev = commands.add_parser(
        "dev",
        help="serve an app and restart it when its files change (development)",
        description="Like serve, with the embedded nats-server kept across restarts: the "
        "app runs in a child process that is drained and started again whenever a watched "
        "file (the app's folder, plus --watch) changes.",
    )
    _serve_options(dev)
    dev.add_argument(
        "--watch",
        action="append",
        default=[],
        metavar="PATH",
        help="also watch this file or folder (repeatable)",
    )
    dev.add_argument(
        "--poll", type=_poll_period, default=0.5, metavar="SECONDS", help="check files every (0.5)"
    )
    dev.set_defaults(handler=_cmd_dev, workers=1)

    provision = commands.add_parser(
        "provision", help="create or confirm the streams, consumers and buckets an app needs"
    )
    provision.add_argument("app", metavar="APP", help="app or snapshot")
    provision.add_argument("--dry-run", action="store_true", help="only print the plan")
    _retention_options(provision)
    _backbone_options(provision)
    provision.set_defaults(handler=_cmd_provision)

    dlq = commands.add_parser("dlq", help="list, show, replay or purge dead letters")
    actions = dlq.add_subparsers(dest="dlq_command", metavar="ACTION")
    dlq.set_defaults(handler=lambda args: (dlq.print_help(), EXIT_USAGE)[1])
    listing = actions.add_parser("list", help="list dead letters, oldest first")
    listing.add_argument("--app")
    listing.add_argument("--capability")
    listing.add_argument("--limit", type=positive_int, default=100)
    show = actions.add_parser("show", help="show one dead letter with its headers and payload")
    show.add_argument("seq", type=positive_int)
    replay = actions.add_parser("replay", help="re-publish dead letters to their subjects")
    replay.add_argument("seq", type=positive_int, nargs="+")
    purge = actions.add_parser("purge", help="delete dead letters")
    purge.add_argument("--app")
    purge.add_argument("--capability")
    purge.add_argument("--yes", action="store_true", help="really delete (required)")
    for parser, handler in (
        (listing, _dlq_list),
        (show, _dlq_show),
        (replay, _dlq_replay),
        (purge, _dlq_purge),
    ):
        _backbone_options(parser)
        parser.set_defaults(handler=handler)
        if parser is not purge:
            parser.add_argument(
                "--json",
                action="store_true",
                help="print one JSON document (credentials redacted)",
            )


def _serve_options(parser: argparse.ArgumentParser, *, several: bool = False) -> None:
    """What ``serve`` and ``dev`` share: the app(s), HTTP, draining, the backbone."""
    parser.add_argument(
        "app",
        metavar="APP",
        nargs="*" if several else None,
        help="app or snapshot (source is built into a snapshot under --state-dir first)"
        + (
            "; several apps share the host, each with its own consumers and routes"
            if several
            else ""
        ),
    )
    parser.add_argument("--drain-timeout", type=float, default=10.0, help="seconds (10)")
    parser.add_argument(
        "--sync-threads",
        type=int,
        default=8,
        metavar="N",
        help="threads for ctx.run_sync (8); more calls wait for one",
    )
    parser.add_argument(
        "--sync-processes",
        type=int,
        default=0,
        metavar="N",
        help="forkserver processes for ctx.run_sync(..., process=True) (0: none)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=_idle_timeout,
        default=None,
        metavar="SECONDS",
        help="stop an instance after this long without events (scale to zero); "
        "default: the app's idle_timeout (300) or its capabilities' own",
    )
    parser.add_argument(
        "--http",
        type=int,
        default=8000,
        metavar="PORT",
        help="serve the app's http triggers on 127.0.0.1:PORT (8000; 0 picks a free port)",
    )
    parser.add_argument("--http-host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--no-http", action="store_true", help="do not start the HTTP server")
    parser.add_argument(
        "--ack-wait",
        type=_ack_wait,
        default=None,
        metavar="SECONDS",
        help="AckWait of the stream consumers this host provisions (30)",
    )
    parser.add_argument(
        "--max-body",
        type=_byte_size,
        default=None,
        metavar="BYTES",
        help="largest HTTP request body, e.g. 8MiB (1MiB); each capability's max_payload "
        "still applies",
    )
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one INFO line per HTTP request on logger thaw.http.access (on)",
    )
    if several:  # thaw serve (thaw dev keeps its own text lines)
        parser.add_argument(
            "--log-format",
            choices=("text", "json"),
            default=None,
            help="text (thaw: logger: message) or json: one object per line with time, "
            "level, logger, message, trace_id, span_id, capability, revision, event_id "
            "(THAW_LOG_FORMAT; text)",
        )
    parser.add_argument(
        "--redact-header",
        action="append",
        type=_header_name,
        metavar="NAME",
        help="also redact this header in dead letters (repeatable; adds to "
        "THAW_REDACT_HEADERS and the built-in Authorization, Cookie, *-Token, ...)",
    )
    _retention_options(parser)
    _backbone_options(parser)


def _app_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", text):
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an app name")
    return text


def _seconds_between(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number of seconds from ``low`` to ``high``."""

    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number of seconds") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{value:g} is not between {low:g} and {high:g} seconds"
            )
        return value

    return seconds


_ack_wait = _seconds_between(0.5, 3600)
_idle_timeout = _seconds_between(0.01, 7 * 24 * 3600)
_poll_period = _seconds_between(0.05, 60)


def _byte_size(text: str) -> int:
    number, unit = text.strip(), 1
    for suffix, size in (("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)):
        if number.endswith(suffix):
            number, unit = number[: -len(suffix)].strip(), size
            break
    if not number.isdigit() or not 1 <= int(number) * unit <= 1 << 32:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not a size from 1 byte to 4GiB (BYTES, or N KiB, MiB, GiB)"
        )
    return int(number) * unit


def _retention_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dlq-max-age",
        type=_max_age,
        metavar="DURATION",
        help="how long dead letters are kept, e.g. 14d, 12h, 0 for ever "
        "(default: THAW_DLQ_MAX_AGE, else 14d)",
    )
    parser.add_argument(
        "--stream-max-age",
        type=_max_age,
        metavar="DURATION",
        help="an age limit for the app's streams (default: THAW_STREAM_MAX_AGE, else none; "
        "an existing stream then keeps its own)",
    )


def _max_age(text: str) -> str:
    try:
        parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return text.strip()


def _header_name(text: str) -> str:
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}", text):
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an HTTP header name")
    return text.lower()


def _export_host_settings(args: argparse.Namespace) -> None:
    """Put the flags the core reads from the environment there: this process's host
    and provisioning read them, and the children it starts (``--workers``, ``dev``)
    inherit them. A bad ``THAW_*`` value fails here, before anything starts."""
    for flag, name in (("dlq_max_age", DLQ_MAX_AGE_ENV), ("stream_max_age", STREAM_MAX_AGE_ENV)):
        value = getattr(args, flag, None)
        if value is not None:
            os.environ[name] = value
    names = getattr(args, "redact_header", None)
    if names:
        listed = parse_header_names(os.environ.get(REDACT_HEADERS_ENV, ""))
        os.environ[REDACT_HEADERS_ENV] = ",".join(dict.fromkeys([*listed, *names]))
    retention_from_environment()


def _cmd_dev(args: argparse.Namespace) -> int:
    from thaw.adapters.cli.dev import run_dev

    _export_host_settings(args)
    kind, url = _target(args)
    export_to_children(args)  # the app runs in a child: it connects with these settings
    try:
        return run_dev(args, kind=kind, url=url)
    except ValueError as exc:  # a watched tree that is far too large
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE


def _load(target: str) -> Any:
    from thaw.snapshots._revision import load_target

    return load_target(target)


def _cmd_serve(args: argparse.Namespace) -> int:
    from thaw.adapters.cli.serving import apps_to_serve, serve_apps

    # Operators see where the embedded server is, warnings and dead letters, on stderr.
    from thaw.adapters.telemetry.logs import configure_logging, log_format

    try:
        args.log_format = log_format(getattr(args, "log_format", None))
    except ValueError as exc:
        print(f"thaw serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(args.log_format)
    _export_host_settings(args)
    targets = args.app if isinstance(args.app, list) else [args.app]
    if not targets and not args.deployed:
        print("thaw serve: give an APP, or --deployed APP_NAME", file=sys.stderr)
        return EXIT_USAGE
    from thaw.adapters.cli.snapshot_trust import verifier_from

    verifier = verifier_from(args)  # None: signatures not required
    apps = apps_to_serve(targets, args.state_dir, verifier=verifier)
    failed = {a.target: a.error for a in apps if a.revision is None}
    for target, error in failed.items():
        print(f"thaw: error: app {target} is not served: {error}", file=sys.stderr)
    revisions = [a.revision for a in apps if a.revision is not None]
    if not revisions and not args.deployed:
        return EXIT_FAILED
    args.app = [a.path for a in apps if a.revision is not None]  # workers get the files
    kind, url = _target(args)
    if args.workers > 1:  # with --deployed, each worker reads and follows the record itself
        if args.deployed and kind == "memory":
            print(
                "thaw serve: --deployed with --workers needs a shared backbone (NATS): "
                "each worker would have its own empty in-memory deployment record",
                file=sys.stderr,
            )
            return EXIT_USAGE
        return serve_workers(args, [r.app for r in revisions], kind=kind, url=url)
    if args.worker_of:
        become_worker(args.worker_of)

    async def main() -> int:
        # The workers open_host starts inherit it: their dead letters honour the list.
        EXTRA_REDACTED.set(parse_header_names(os.environ.get(REDACT_HEADERS_ENV, "")))
        # The NATS credentials this host connects with never reach a dead letter either.
        credentials = connection_options(args)
        KNOWN_SECRETS.set(known_secrets([credentials.get("password"), credentials.get("token")]))
        return await serve_apps(
            args,
            revisions,
            kind=kind,
            url=url,
            connection=_connection(args),
            not_served=failed,
            deployed=args.deployed,
            verifier=verifier,
        )

    return int(anyio.run(main, backend_options={"use_uvloop": _uvloop_available()}))


def _uvloop_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("uvloop") is not None


def _cmd_provision(args: argparse.Namespace) -> int:
    _export_host_settings(args)
    app = _load(args.app)
    plan = plan_for(app)
    for line in plan.describe():
        print(line)
    if args.dry_run:
        return EXIT_OK
    _with_backbone(args, lambda backbone: apply_plan(plan, backbone))
    print(f"provisioned app {app.name} on the {_target(args)[0]} backbone")
    return EXIT_OK


def _with_backbone(args: argparse.Namespace, work: Any) -> Any:
    kind, url = _target(args)
    if kind == "nats" and url is None:
        url = _running_server(args.state_dir)

    async def main() -> Any:
        async with open_backbone(
            kind, url, state_dir=args.state_dir, **_connection(args)
        ) as backbone:
            return await work(backbone)

    return anyio.run(main)


def _running_server(state_dir: str) -> str | None:
    """The URL of the embedded server a running ``thaw serve``/``dev`` keeps on this store.

    None when nothing holds the store (the command then starts its own, as the only
    one); ``NatsStoreInUse`` when something holds it but does not answer: a second
    server on one store would split it (a replay would land in the copy).
    """
    from thaw.adapters.nats.server import find_running_server

    # The layout of the nats factory: the store is <state-dir>/nats.
    url = find_running_server(os.path.join(state_dir, "nats"))
    if url is not None:
        print(f"thaw: using the running nats-server at {url} ({state_dir})", file=sys.stderr)
    return url


def _letter_document(record: DeadLetterRecord) -> dict[str, Any]:
    """One dead letter as JSON: credentials redacted (also in letters stored before
    redaction existed), the payload as text (invalid UTF-8 replaced) and as base64."""
    document: dict[str, Any] = msgspec.to_builtins(record)
    document["message"] = scrub_secrets(record.message)
    document["headers"] = redact_headers(record.headers)
    document["data_base64"] = document["data"]
    document["data"] = record.data.decode("utf-8", "replace")
    return document


def _print_json(document: Any) -> None:
    print(msgspec.json.format(msgspec.json.encode(document), indent=2).decode())


def _dlq_list(args: argparse.Namespace) -> int:
    records = _with_backbone(  # one more than asked for: to say that there are more
        args,
        lambda b: list_dead_letters(
            b, app=args.app, capability=args.capability, limit=args.limit + 1
        ),
    )
    more = len(records) > args.limit
    records = records[: args.limit]
    if more:
        print(
            f"thaw dlq: showing the oldest {args.limit} dead letters; there are more "
            "(--limit N shows more, --app/--capability narrow the list)",
            file=sys.stderr,
        )
    if args.json:
        _print_json({"dead_letters": [_letter_document(r) for r in records], "more": more})
        return EXIT_OK
    if not records:
        print("no dead letters")
    for r in records:
        print(
            f"{r.seq:>6}  {r.app}.{r.capability}  [{r.code}] attempts {r.attempts}  "
            f"from {r.original_stream}#{r.original_seq} ({r.original_subject}): "
            f"{scrub_secrets(r.message)}"
        )
    return EXIT_OK


def _dlq_show(args: argparse.Namespace) -> int:
    record = _with_backbone(args, lambda b: show_dead_letter(b, args.seq))
    _print_json(_letter_document(record))  # one JSON document, with or without --json
    return EXIT_OK


def _dlq_replay(args: argparse.Namespace) -> int:
    async def work(backbone: Any) -> list[dict[str, Any]]:
        done: list[dict[str, Any]] = []
        for seq in args.seq:
            ack = await replay_dead_letter(backbone, seq)
            done.append({"dead_letter": seq, "stream": ack.stream, "seq": ack.seq})
            if not args.json:
                print(f"replayed dead letter {seq} as {ack.stream}#{ack.seq}", flush=True)
        return done

    replayed = _with_backbone(args, work)
    if args.json:
        _print_json({"replayed": replayed})
    return EXIT_OK


def _dlq_purge(args: argparse.Namespace) -> int:
    if not args.yes:
        print("thaw dlq purge deletes dead letters for good: add --yes", file=sys.stderr)
        return EXIT_USAGE
    count = _with_backbone(
        args, lambda b: purge_dead_letters(b, app=args.app, capability=args.capability)
    )
    print(f"purged {count} dead letters")
    return EXIT_OK

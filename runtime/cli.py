"""The ``thaw`` command line.

Exit codes: 0 the capability answered Ok; 3 it asked for a Retry; 4 it was
Rejected; 1 the app could not be loaded or is invalid; 2 bad command-line usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec

from . import __version__
from ._errors import ThawError
from ._event import Event, Ok, Outcome, Retry
from ._invoker import Invoker
from ._loader import load_app
from ._memory_backbone import MemoryBackbone
from ._triggers import (
    HttpTrigger,
    KvTrigger,
    ScheduleTrigger,
    StreamTrigger,
    SubjectTrigger,
    Trigger,
)

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_RETRY, EXIT_REJECT = 0, 1, 2, 3, 4
MAX_CLI_DATA = 64 * 1024 * 1024  # refuse to read more than this from a file or stdin


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.handler(args))
    except ThawError as exc:
        print(f"thaw: error [{exc.code}]: {exc.message}", file=sys.stderr)
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thaw",
        description="Thaw: an async micro-runtime for serverless capability functions.",
        epilog="APP is a .py file, a package folder, a folder with app.py, or module:attribute.",
    )
    parser.add_argument("--version", action="version", version=f"thaw {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="invoke one capability of an app in process and print the outcome",
        description="Invoke one capability in process (on an in-memory backbone) and print "
        "its outcome. Exit code: 0 ok, 3 retry, 4 reject, 1 app error, 2 usage.",
    )
    run.add_argument("app", metavar="APP", help="the app to load")
    run.add_argument("--capability", "-c", required=True, metavar="NAME", help="capability name")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--data", "-d", metavar="JSON", help="the payload, as JSON text")
    source.add_argument(
        "--data-file", metavar="FILE", help="read the payload from FILE ('-' for stdin)"
    )
    run.add_argument("--id", default="cli-1", help="event id (the default idempotency key)")
    run.add_argument(
        "--attempt", type=_positive_int, default=1, help="delivery attempt number (default 1)"
    )
    run.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    run.set_defaults(handler=_cmd_run)

    listing = commands.add_parser("list", help="list an app's capabilities and triggers")
    listing.add_argument("app", metavar="APP", help="the app to load")
    listing.set_defaults(handler=_cmd_list)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{value} is not between 1 and 1000000")
    return value


def _read_data(args: argparse.Namespace) -> bytes:
    if args.data is not None:
        return str(args.data).encode("utf-8", "surrogateescape")
    if args.data_file is None:
        return b""
    try:
        if args.data_file == "-":
            data = sys.stdin.buffer.read(MAX_CLI_DATA + 1)
        else:
            with open(args.data_file, "rb") as handle:
                data = handle.read(MAX_CLI_DATA + 1)
    except OSError as exc:
        raise _UsageError(f"cannot read --data-file {args.data_file!r}: {exc.strerror}") from exc
    if len(data) > MAX_CLI_DATA:
        raise _UsageError(f"--data-file is larger than {MAX_CLI_DATA} bytes")
    return data


class _UsageError(ThawError):
    code = "cli_usage"


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        data = _read_data(args)
    except _UsageError as exc:
        print(f"thaw run: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    app = load_app(args.app)
    invoker = Invoker(app, backbone=MemoryBackbone())
    capability = invoker.capability(args.capability)
    event = Event(id=args.id, data=data, attempt=args.attempt)

    async def call() -> Outcome:
        return await capability(event)

    outcome = anyio.run(call)
    _print_outcome(outcome, as_json=args.json)
    if type(outcome) is Ok:
        return EXIT_OK
    return EXIT_RETRY if type(outcome) is Retry else EXIT_REJECT


def _cmd_list(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    print(f"app {app.name}: {len(app.capabilities)} capabilities")
    for spec in app.capabilities.values():
        policy = spec.policy
        triggers = ", ".join(describe_trigger(t) for t in spec.triggers) or "(invoked directly)"
        print(f"  {spec.name}  <- {triggers}")
        print(
            f"    in: {_type_name(spec.input_type)}  out: {_type_name(spec.output_type)}  "
            f"timeout: {policy.timeout:g}s  attempts: {policy.retry.max_attempts}  "
            f"idempotent: {'yes' if policy.idempotency else 'no'}  "
            f"concurrency: {policy.concurrency or 'unlimited'}"
        )
    return EXIT_OK


def describe_trigger(trigger: Trigger) -> str:
    if isinstance(trigger, HttpTrigger):
        suffix = f" (enqueue to {trigger.enqueue})" if trigger.enqueue else ""
        return f"http {trigger.method} {trigger.path}{suffix}"
    if isinstance(trigger, ScheduleTrigger):
        return f"schedule '{trigger.cron.expression}' {trigger.timezone}"
    if isinstance(trigger, StreamTrigger | SubjectTrigger):
        return f"{type(trigger).__name__[:-7].lower()} {trigger.subject}"
    if isinstance(trigger, KvTrigger):
        return f"kv {trigger.bucket} {trigger.key}"
    return f"objects {trigger.bucket}"


def _type_name(contract: Any) -> str:
    if contract is None:
        return "-"
    return getattr(contract, "__name__", None) or repr(contract)


def _print_outcome(outcome: Outcome, *, as_json: bool) -> None:
    if as_json:
        document: dict[str, Any] = {"outcome": type(outcome).__name__.lower()}
        if type(outcome) is Ok:
            document["data"] = _as_json_value(outcome.data)
        else:
            document.update(msgspec.to_builtins(outcome))
        print(msgspec.json.encode(document).decode())
        return
    if isinstance(outcome, Ok):
        print(f"ok {outcome.data.decode('utf-8', 'replace')}")
    elif isinstance(outcome, Retry):
        print(f"retry in {outcome.delay:.3f}s [{outcome.code}] {outcome.reason}")
    else:
        print(f"reject [{outcome.code}] {outcome.reason}")


def _as_json_value(data: bytes) -> Any:
    if not data:
        return None
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        return data.decode("utf-8", "replace")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``thaw`` command line.

Exit codes: 0 the capability answered Ok; 3 it asked for a Retry; 4 it was
Rejected; 1 the app could not be loaded or is invalid; 2 bad command-line usage.
"""

from __future__ import annotations

import argparse
import re
import sys
import typing
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec

from thaw import __version__
from thaw._errors import ThawError
from thaw._event import Event, Ok, Outcome, Retry
from thaw.backbone.memory._backbone import MemoryBackbone
from thaw.declarations._triggers import (
    HttpTrigger,
    KvTrigger,
    ScheduleTrigger,
    StreamTrigger,
    SubjectTrigger,
    Trigger,
)
from thaw.host._provision import apply_plan, plan_for
from thaw.invocation._invoker import Invoker
from thaw.snapshots._revision import load_target

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_RETRY, EXIT_REJECT = 0, 1, 2, 3, 4
MAX_CLI_DATA = 64 * 1024 * 1024  # refuse to read more than this from a file or stdin


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.handler(args))
    except ThawError as exc:
        print(f"thaw: error [{exc.code}]: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except BaseExceptionGroup as group:
        # A ThawError raised inside a task group (a host refusing its app as it starts)
        # is the same one line, not a traceback of the group around it.
        errors = group.subgroup(ThawError)
        if errors is None:
            raise
        for error in _leaves(errors):
            print(f"thaw: error [{error.code}]: {error.message}", file=sys.stderr)
        return EXIT_FAILED


def _leaves(group: BaseExceptionGroup[ThawError]) -> list[ThawError]:
    found: list[ThawError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found += _leaves(exc)
        else:
            found.append(exc)
    return found


_OPTION_VALUE = re.compile(r"(--?[A-Za-z0-9][A-Za-z0-9-]*)=[^\s',]+")


class _Parser(argparse.ArgumentParser):
    """argparse, whose errors never repeat an ``--option=value``'s value.

    argparse echoes what it could not match (``ambiguous option: --nats-pass=s3cret
    could match ...``, ``unrecognized arguments: ...``); the value may be a secret
    typed into the wrong flag. Subcommand parsers are of this class too.
    """

    def error(self, message: str) -> typing.NoReturn:
        super().error(_OPTION_VALUE.sub(r"\1=***", message))


# The commands other modules add, by the names they add: a command line that names one of
# them imports only its module (``thaw serve`` does not import the SLO, cost or deploy
# modules, a third of its start-up); help, no command or an unknown name builds them all.
_COMMAND_MODULES: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"serve", "dev", "provision", "dlq"}), "ops"),
    (frozenset({"deploy", "revisions", "rollback"}), "deploy"),
    (frozenset({"policy"}), "policy"),
    (frozenset({"slo"}), "slo"),
    (frozenset({"cost"}), "cost_command"),
)
_OWN_COMMANDS = frozenset({"run", "list", "snapshot", "bench"})


def _named_command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names (its first word that is no option), or None."""
    for word in argv:
        if word in ("-h", "--help", "--version"):
            return None
        if not word.startswith("-"):
            return word
    return None


def _parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (``argv`` naming a known command) the part that parses it."""
    named = _named_command(sys.argv[1:] if argv is None else argv)
    parser = _Parser(
        prog="thaw",
        description="Thaw: an async micro-runtime for serverless capability functions.",
        epilog="APP is a .py file, a package folder, a folder with app.py, or module:attribute.",
    )
    parser.add_argument("--version", action="version", version=f"thaw {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    if named is not None and named not in _OWN_COMMANDS:
        for names, module in _COMMAND_MODULES:
            if named in names:
                _add_module_commands(commands, module)
                return parser
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
    listing.add_argument("app", metavar="APP", help="the app or snapshot to load")
    listing.set_defaults(handler=_cmd_list)

    snapshot = commands.add_parser("snapshot", help="build and inspect snapshot files")
    snapshot_commands = snapshot.add_subparsers(dest="snapshot_command", metavar="ACTION")
    snapshot.set_defaults(handler=lambda args: _subcommand_help(snapshot))
    build = snapshot_commands.add_parser(
        "build",
        help="freeze an app into one snapshot file",
        description="Import APP in a clean child process and write its compiled modules, "
        "data files and manifest to one file. Same sources, same revision id.",
    )
    build.add_argument("app", metavar="APP", help="the app to build")
    build.add_argument("-o", "--output", required=True, metavar="FILE", help="snapshot to write")
    build.set_defaults(handler=_cmd_snapshot_build)
    inspect = snapshot_commands.add_parser(
        "inspect", help="validate a snapshot, print its manifest"
    )
    inspect.add_argument("file", metavar="FILE", help="the snapshot file")
    inspect.add_argument("--json", action="store_true", help="print the manifest as JSON")
    inspect.set_defaults(handler=_cmd_snapshot_inspect)
    from thaw.adapters.cli.snapshot_trust import register as register_trust

    register_trust(snapshot_commands)  # keygen, sign, verify

    bench = commands.add_parser("bench", help="benchmarks you can run on your own app")
    bench_commands = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    bench.set_defaults(handler=lambda args: _subcommand_help(bench))
    coldstart = bench_commands.add_parser(
        "coldstart",
        help="measure every cold-start layer of an app or snapshot",
        description="Measure, per capability: instance thaw from a preloaded revision, "
        "revision load from the snapshot, import from source (with and without bytecode "
        "cache), a new process, and a fork; print a table and optionally write JSON.",
    )
    coldstart.add_argument("app", metavar="APP_OR_SNAPSHOT")
    coldstart.add_argument("--trials", type=_positive_int, default=300, help="trials per layer")
    coldstart.add_argument(
        "--process-trials", type=_positive_int, default=30, help="trials for new processes"
    )
    coldstart.add_argument("--data", metavar="JSON", help="payload (default: {} or per-capability)")
    coldstart.add_argument("--json", metavar="FILE", help="write the results as JSON")
    coldstart.set_defaults(handler=_cmd_bench_coldstart)

    for _names, module in _COMMAND_MODULES:
        _add_module_commands(commands, module)
    _add_plugin_commands(commands)
    return parser


def _add_module_commands(commands: Any, module: str) -> None:
    if module == "ops":
        from thaw.adapters.cli.ops import add_commands
        from thaw.adapters.cli.serve_options import add_serve_options

        add_commands(commands, _positive_int)
        add_serve_options(commands.choices["serve"])  # --consumer, --bind-stream, ...
    elif module == "deploy":
        from thaw.adapters.cli.deploy import add_deploy_commands

        add_deploy_commands(commands)
    elif module == "policy":
        from thaw.adapters.cli.policy import add_policy_command

        add_policy_command(commands)
    elif module == "slo":
        from thaw.adapters.cli.slo import add_slo_command

        add_slo_command(commands)
    else:
        from thaw.adapters.cli.cost_command import add_cost_command

        add_cost_command(commands)


def _add_plugin_commands(commands: Any) -> None:
    """Commands adapters contribute through the ``thaw.commands`` entry point.

    Each entry point names a function ``register(commands)`` that adds its own
    subparser(s) and sets ``handler`` on them; the core never imports adapters.
    """
    from thaw.backbone._registry import registered

    for entry in registered("thaw.commands"):
        try:
            register = entry.load()
        except ImportError:
            continue  # the adapter's extra is not installed: its commands are absent
        register(commands)


def _subcommand_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


def _cmd_snapshot_build(args: argparse.Namespace) -> int:
    from thaw.adapters.process.build import build_snapshot

    result = build_snapshot(args.app, args.output)
    print(
        f"built {result.path}: revision {result.revision}, {result.size} bytes, "
        f"{len(result.modules)} modules ({', '.join(result.modules)}), "
        f"{len(result.data_files)} data files, preloads: {', '.join(result.preload) or 'none'}"
    )
    return EXIT_OK


def _cmd_snapshot_inspect(args: argparse.Namespace) -> int:
    from thaw.snapshots._files import read_snapshot_file, unmarshal_modules
    from thaw.snapshots._format import decode_snapshot

    blob = read_snapshot_file(args.file, label=args.file)  # a FIFO or 2 GB file: refused
    payload = decode_snapshot(blob, source=args.file)
    unmarshal_modules(payload, label=args.file)  # code that cannot load is no valid snapshot
    manifest = payload.manifest
    from thaw.adapters.cli.snapshot_trust import signature_summary
    from thaw.snapshots._format import read_header

    header = read_header(blob, source=args.file)
    if args.json:
        document = msgspec.to_builtins(manifest)
        document["revision"] = payload.revision
        document["signature"] = {"key_id": header.key_id} if header.signed else None
        print(msgspec.json.format(msgspec.json.encode(document), indent=2).decode())
        return EXIT_OK
    print(f"snapshot {args.file}")
    print(f"  revision     {payload.revision}")
    print(f"  app          {manifest.app} ({manifest.entry_module}:{manifest.app_attribute})")
    print(f"  python       {manifest.python} ({manifest.implementation}, magic {manifest.magic})")
    print(f"  built        {manifest.built_at} with thaw {manifest.thaw_version or '?'}")
    print(f"  size         {len(blob)} bytes")
    print(f"  signature    {signature_summary(header)}")
    print(f"  modules      {', '.join(manifest.modules)}")
    print(f"  preload      {', '.join(manifest.preload) or '-'}")
    deps = ", ".join(f"{k} {v}" for k, v in manifest.dependencies.items())
    print(f"  dependencies {deps or '-'}")
    print(f"  data files   {', '.join(manifest.data_files) or '-'}")
    print("  capabilities")
    for capability in manifest.capabilities:
        triggers = ", ".join(_describe_trigger_dict(t) for t in capability.triggers) or "-"
        policy = capability.policy
        print(
            f"    {capability.name}  <- {triggers}  timeout {policy.get('timeout')}s, "
            f"attempts {policy.get('max_attempts')}, "
            f"idempotent {'yes' if policy.get('idempotency') else 'no'}"
        )
    return EXIT_OK


def _describe_trigger_dict(trigger: dict[str, Any]) -> str:
    kind = trigger.get("type", "?")
    detail = (
        trigger.get("path")
        or trigger.get("subject")
        or (trigger.get("cron") or {}).get("expression")
        or trigger.get("bucket")
        or ""
    )
    method = trigger.get("method")
    return f"{kind} {method + ' ' if method else ''}{detail}".strip()


def _cmd_bench_coldstart(args: argparse.Namespace) -> int:
    from thaw.adapters.cli.coldstart import run_coldstart_cli

    return run_coldstart_cli(
        args.app,
        trials=args.trials,
        process_trials=args.process_trials,
        data=args.data,
        json_path=args.json,
    )


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
    app = load_target(args.app)
    backbone = MemoryBackbone()
    invoker = Invoker(app, backbone=backbone)
    capability = invoker.capability(args.capability)
    event = Event(id=args.id, data=data, attempt=args.attempt)

    async def call() -> Outcome:
        await apply_plan(plan_for(app), backbone)  # the buckets and streams the app declares
        # An instance's life in miniature: on_start, one invocation, on_stop.
        for hook in app.start_hooks:
            await hook()
        try:
            return await capability(event)
        finally:
            for hook in reversed(app.stop_hooks):
                await hook()

    outcome = anyio.run(call)
    _print_outcome(outcome, as_json=args.json)
    if type(outcome) is Ok:
        return EXIT_OK
    return EXIT_RETRY if type(outcome) is Retry else EXIT_REJECT


def _cmd_list(args: argparse.Namespace) -> int:
    app = load_target(args.app)
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
        if policy.slo:
            print(f"    slo: {', '.join(_describe_objective(o) for o in policy.slo)}")
    return EXIT_OK


def _describe_objective(objective: Any) -> str:
    """``latency_p99_200ms (99% within 0.2s, 30d budget)``: what ``thaw list`` shows."""
    within = getattr(objective, "within", None)
    bound = f" within {within:g}s" if within is not None else ""
    target = f"{round(objective.target * 100, 4):g}%"
    return f"{objective.key} ({target}{bound}, {objective.window / 86400:g}d budget)"


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

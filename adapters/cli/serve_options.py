"""What operators set per environment on ``thaw serve``: consumers, bound streams, the body cap.

``--consumer [APP/]CAPABILITY:KEY=VALUE[,KEY=VALUE...]`` (repeatable; ``THAW_CONSUMERS``
holds entries separated by ``;``) overrides a capability's stream consumers: ``ack_wait``
(seconds), ``max_ack_pending`` (1..1000000), ``deliver`` (``all`` or ``new``). They become
``plan_for(consumer_settings=)``. ``--bind-stream NAME`` (repeatable; ``THAW_BIND_STREAMS``,
comma-separated) treats a stream the app's stream triggers name as someone else's, as
``bind=True`` does: never defined or changed, only checked that it exists and captures
every subject the app would have put in it. ``--max-body-cap BYTES``
(``THAW_MAX_BODY_CAP``) is the most a route's ``http(..., max_body=)`` may declare.

Invariants: every value is checked here, whole, before anything starts; a bad one is one
line on stderr and exit 2, naming the flag or variable, the entry and the key, never the
value (a secret typed into the wrong place stays out of the terminal and the logs). A
flag entry for a capability replaces the environment's for it; two flag entries (or two
environment entries) for one capability are an error.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from thaw._errors import ConfigError
from thaw.declarations._app import App
from thaw.declarations._triggers import MAX_ACK_PENDING, MAX_ACK_WAIT, HttpTrigger, StreamTrigger
from thaw.host._provision import (
    DEFAULT_ACK_WAIT,
    BoundStream,
    ConsumerSettings,
    ProvisionPlan,
    plan_for,
)

__all__ = [
    "BIND_STREAMS_ENV",
    "CONSUMERS_ENV",
    "MAX_BODY_CAP_ENV",
    "ConsumerEntry",
    "ServeOptionError",
    "add_serve_options",
    "check_body_caps",
    "consumer_flags",
    "parse_consumer",
    "plan_to_apply",
    "prepare_apps",
    "resolve_serve_options",
    "settings_for",
    "trigger_streams",
]

CONSUMERS_ENV = "THAW_CONSUMERS"
BIND_STREAMS_ENV = "THAW_BIND_STREAMS"
MAX_BODY_CAP_ENV = "THAW_MAX_BODY_CAP"
DEFAULT_MAX_BODY_CAP = 64 * 1024 * 1024  # HttpConfig.max_body_cap's default
MAX_BODY_CAP = 1 << 32
MAX_ENTRIES = 256  # --consumer / --bind-stream entries, flags and environment each
MAX_ENTRY = 256  # characters of one entry
MAX_ENV = 16 * 1024  # characters of one variable
MIN_ACK_WAIT = 0.1  # seconds; shorter would redeliver work before it could be acked
MAX_SYNC_THREADS = 1024
MAX_SYNC_PROCESSES = 256

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}\Z", re.ASCII)
_STREAM = re.compile(r"[A-Za-z0-9_-]{1,255}\Z", re.ASCII)  # a JetStream stream name
_KEY = re.compile(r"[a-z_]{1,32}\Z", re.ASCII)  # a key safe to repeat in an error
_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?\Z", re.ASCII)
_COUNT = re.compile(r"[0-9]{1,9}\Z", re.ASCII)
_SIZE = re.compile(r"([0-9]{1,12}) ?(KiB|MiB|GiB)?\Z", re.ASCII)
_UNITS = {None: 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_KEYS = ("ack_wait", "max_ack_pending", "deliver")


class ServeOptionError(ValueError):
    """A ``thaw serve`` operator setting that cannot be used; the message is one line."""


class ConsumerEntry(msgspec.Struct, frozen=True):
    """One ``--consumer`` entry: ``app`` None applies to every served app with ``capability``."""

    capability: str
    settings: ConsumerSettings
    app: str | None = None

    @property
    def target(self) -> str:
        return self.capability if self.app is None else f"{self.app}/{self.capability}"

    def flag(self) -> str:
        """The entry as ``--consumer`` takes it (what ``--workers`` children are given)."""
        s = self.settings
        parts = [f"ack_wait={s.ack_wait!r}"] if s.ack_wait is not None else []
        if s.max_ack_pending is not None:
            parts.append(f"max_ack_pending={s.max_ack_pending}")
        if s.deliver is not None:
            parts.append(f"deliver={s.deliver}")
        return f"{self.target}:{','.join(parts)}"


def parse_consumer(text: str, *, where: str) -> ConsumerEntry:
    """``[APP/]CAPABILITY:KEY=VALUE[,...]``; ``where`` names it in errors ("--consumer 2")."""
    if not text or len(text) > MAX_ENTRY:
        raise ServeOptionError(
            f"{where}: give [APP/]CAPABILITY:KEY=VALUE[,KEY=VALUE...] of at most {MAX_ENTRY} "
            "characters"
        )
    target, colon, body = text.partition(":")
    app, slash, capability = target.rpartition("/")
    if not colon or not _NAME.match(capability) or (slash and not _NAME.match(app)):
        raise ServeOptionError(
            f"{where}: start with a capability name (or APP/CAPABILITY) and ':', e.g. "
            "take:ack_wait=30"
        )
    values: dict[str, Any] = {}
    for part in body.split(","):
        key, equals, value = part.partition("=")
        key = key.strip()
        named = repr(key) if _KEY.match(key) else "a key"
        if not equals:
            raise ServeOptionError(f"{where} ({target}): {named} needs =VALUE")
        if key not in _KEYS:
            raise ServeOptionError(f"{where} ({target}): {named} is not one of {', '.join(_KEYS)}")
        if key in values:
            raise ServeOptionError(f"{where} ({target}): {key} is given twice")
        values[key] = _consumer_value(key, value.strip(), where=f"{where} ({target})")
    try:
        settings = ConsumerSettings(**values)
    except ConfigError:  # the ranges are checked above; this only backs them up
        raise ServeOptionError(f"{where} ({target}): settings out of range") from None
    return ConsumerEntry(capability, settings, app if slash else None)


def _consumer_value(key: str, value: str, *, where: str) -> Any:
    if key == "ack_wait":
        seconds = float(value) if _SECONDS.match(value) else 0.0
        if not MIN_ACK_WAIT <= seconds <= MAX_ACK_WAIT:
            raise ServeOptionError(
                f"{where}: ack_wait must be seconds from {MIN_ACK_WAIT:g} to {MAX_ACK_WAIT:g} "
                "(e.g. ack_wait=30 or 2.5)"
            )
        return seconds
    if key == "max_ack_pending":
        count = int(value) if _COUNT.match(value) else 0
        if not 1 <= count <= MAX_ACK_PENDING:
            raise ServeOptionError(
                f"{where}: max_ack_pending must be a whole number from 1 to {MAX_ACK_PENDING}"
            )
        return count
    if value not in ("all", "new"):
        raise ServeOptionError(f"{where}: deliver must be all or new")
    return value


def _consumer_entries(texts: Sequence[str], *, source: str) -> dict[str, ConsumerEntry]:
    if len(texts) > MAX_ENTRIES:
        raise ServeOptionError(f"{source}: at most {MAX_ENTRIES} entries")
    entries: dict[str, ConsumerEntry] = {}
    for index, text in enumerate(texts, 1):
        entry = parse_consumer(text, where=f"{source} entry {index}")
        if entry.target in entries:
            raise ServeOptionError(
                f"{source} entry {index}: {entry.target} already has an entry (merge them: "
                "one entry takes several KEY=VALUE)"
            )
        entries[entry.target] = entry
    return entries


def _stream_names(texts: Sequence[str], *, source: str) -> list[str]:
    if len(texts) > MAX_ENTRIES:
        raise ServeOptionError(f"{source}: at most {MAX_ENTRIES} streams")
    for index, name in enumerate(texts, 1):
        if not _STREAM.match(name):
            raise ServeOptionError(
                f"{source} entry {index}: a stream name is 1 to 255 letters, digits, '_' or '-'"
            )
    return list(dict.fromkeys(texts))


def _byte_cap(text: str, *, where: str) -> int:
    match = _SIZE.match(text.strip()) if len(text) <= 64 else None
    size = int(match.group(1)) * _UNITS[match.group(2)] if match else 0
    if not 1 <= size <= MAX_BODY_CAP:
        raise ServeOptionError(
            f"{where}: give a size from 1 byte to 4GiB (BYTES, or N KiB/MiB/GiB)"
        )
    return size


def _env_list(environ: Mapping[str, str], name: str, separator: str) -> list[str]:
    text = environ.get(name, "")
    if len(text) > MAX_ENV:
        raise ServeOptionError(f"{name}: longer than {MAX_ENV} characters")
    return [part.strip() for part in text.split(separator) if part.strip()]


def resolve_serve_options(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Check the flags and ``THAW_*`` variables of this module; put the results on ``args``:
    ``consumers`` (target -> ConsumerEntry), ``bind_streams``, ``max_body_cap``."""
    consumers = _consumer_entries(_env_list(environ, CONSUMERS_ENV, ";"), source=CONSUMERS_ENV)
    consumers.update(_consumer_entries(args.consumer or [], source="--consumer"))
    args.consumers = consumers
    from_env = _stream_names(_env_list(environ, BIND_STREAMS_ENV, ","), source=BIND_STREAMS_ENV)
    from_flags = _stream_names(args.bind_stream or [], source="--bind-stream")
    args.bind_streams = list(dict.fromkeys([*from_env, *from_flags]))
    cap, where = args.max_body_cap, "--max-body-cap"
    if cap is None and environ.get(MAX_BODY_CAP_ENV, "").strip():
        cap, where = environ[MAX_BODY_CAP_ENV], MAX_BODY_CAP_ENV
    args.max_body_cap = None if cap is None else _byte_cap(str(cap), where=where)
    limit = args.max_body_cap or DEFAULT_MAX_BODY_CAP
    if args.max_body is not None and args.max_body > limit:
        raise ServeOptionError(
            f"--max-body ({args.max_body} bytes) is above the server's max_body_cap "
            f"({limit} bytes): lower it or raise --max-body-cap"
        )
    for flag, low, high in (
        ("sync_threads", 1, MAX_SYNC_THREADS),
        ("sync_processes", 0, MAX_SYNC_PROCESSES),
    ):
        value = getattr(args, flag, low)
        if not low <= value <= high:
            raise ServeOptionError(f"--{flag.replace('_', '-')} must be from {low} to {high}")


def settings_for(
    apps: Sequence[App], consumers: Mapping[str, ConsumerEntry]
) -> dict[str, dict[str, ConsumerSettings]]:
    """Per served app, its capabilities' consumer settings; ``ServeOptionError`` for an
    entry no served app can take (no such app, or no capability of that name with a
    ``stream`` trigger)."""
    names = {app.name for app in apps}
    chosen: dict[str, dict[str, ConsumerSettings]] = {app.name: {} for app in apps}
    for entry in consumers.values():
        if entry.app is not None and entry.app not in names:
            raise ServeOptionError(f"--consumer {entry.target}: app {entry.app} is not served here")
        takers = [
            app
            for app in apps
            if entry.app in (None, app.name) and _has_stream_trigger(app, entry.capability)
        ]
        if not takers:
            raise ServeOptionError(
                f"--consumer {entry.target}: no served app has a capability "
                f"{entry.capability} with a stream trigger"
            )
        for app in takers:
            qualified = f"{app.name}/{entry.capability}"
            if entry.app is None and qualified in consumers:
                continue  # APP/CAPABILITY is more specific than CAPABILITY
            chosen[app.name][entry.capability] = entry.settings
    return chosen


def _has_stream_trigger(app: App, capability: str) -> bool:
    spec = app.capabilities.get(capability)
    return spec is not None and any(isinstance(t, StreamTrigger) for t in spec.triggers)


def check_bind_streams(apps: Sequence[App], names: Sequence[str]) -> None:
    """``ServeOptionError`` for a ``--bind-stream`` no served app's stream trigger names."""
    for name in names:
        if not any(name in trigger_streams(app) for app in apps):
            raise ServeOptionError(
                f"--bind-stream {name}: no served app has a stream trigger on that stream"
            )


def trigger_streams(app: App) -> set[str]:
    plan = plan_for(app)
    return {c.stream for c in plan.consumers if isinstance(c.trigger, StreamTrigger)}


def plan_to_apply(
    app: App,
    *,
    ack_wait: float | None,
    settings: dict[str, ConsumerSettings],
    bind_streams: Sequence[str],
) -> ProvisionPlan:
    """The app's plan with the operator's consumer settings and bound streams.

    A bound stream's definition is dropped; every subject it would have held is checked
    to be captured (the planner puts a published subject in a stream only when one of
    the stream's consumed subjects covers it, so these are the consumed ones).
    """
    plan = plan_for(app, ack_wait=ack_wait or DEFAULT_ACK_WAIT, consumer_settings=settings)
    binding = set(bind_streams) & trigger_streams(app)
    if not binding:
        return plan
    bound = list(plan.bound)
    for stream in plan.streams:
        if stream.name in binding:
            owner = next(c.capability for c in plan.consumers if c.stream == stream.name)
            bound += [BoundStream(stream.name, subject, owner) for subject in stream.subjects]
    return msgspec.structs.replace(
        plan,
        streams=[s for s in plan.streams if s.name not in binding],
        kept_ages=tuple(n for n in plan.kept_ages if n not in binding),
        bound=tuple(bound),
    )


def check_body_caps(apps: Sequence[App], cap: int | None) -> None:
    """``ServeOptionError`` for a route whose ``max_body`` is above the server's cap."""
    limit = cap or DEFAULT_MAX_BODY_CAP
    for app in apps:
        for spec in app.capabilities.values():
            for trigger in spec.triggers:
                if isinstance(trigger, HttpTrigger) and (trigger.max_body or 0) > limit:
                    raise ServeOptionError(
                        f"app {app.name}: route {trigger.method} {trigger.path} "
                        f"({spec.name}) declares max_body={trigger.max_body}, above the "
                        f"server's max_body_cap of {limit} bytes: raise --max-body-cap"
                    )


def prepare_apps(apps: Sequence[App], args: Any) -> dict[str, ProvisionPlan]:
    """Check ``--consumer``, ``--bind-stream`` and ``--max-body-cap`` against the apps;
    for each app they change, the plan its host provisions and follows.

    ``ServeOptionError`` (exit 2) for an entry no served app can take. Apps they do not
    touch are absent: their hosts provision as always.
    """
    check_body_caps(apps, getattr(args, "max_body_cap", None))
    consumers = getattr(args, "consumers", {})
    binds = getattr(args, "bind_streams", [])
    settings = settings_for(apps, consumers)
    check_bind_streams(apps, binds)
    prepared: dict[str, ProvisionPlan] = {}
    for app in apps:
        if not settings[app.name] and not set(binds) & trigger_streams(app):
            continue
        try:
            plan = plan_to_apply(
                app, ack_wait=args.ack_wait, settings=settings[app.name], bind_streams=binds
            )
        except ConfigError as exc:
            raise ServeOptionError(f"app {app.name}: {exc.message}") from None
        prepared[app.name] = plan
    return prepared


def consumer_flags(args: argparse.Namespace) -> list[str]:
    """The resolved settings as ``thaw serve`` flags (for ``--workers`` children)."""
    flags: list[str] = []
    for entry in getattr(args, "consumers", {}).values():
        flags += ["--consumer", entry.flag()]
    for name in getattr(args, "bind_streams", []):
        flags += ["--bind-stream", name]
    if getattr(args, "max_body_cap", None) is not None:
        flags += ["--max-body-cap", str(args.max_body_cap)]
    return flags


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """Add this module's flags to ``thaw serve``, and check them (whole) before it runs."""
    group = parser.add_argument_group(
        "operator settings per environment",
        "Checked before anything starts; a bad value is exit 2 (docs/operations.md).",
    )
    group.add_argument(
        "--consumer",
        action="append",
        metavar="[APP/]CAPABILITY:KEY=VALUE[,...]",
        help="override a capability's stream consumer: ack_wait=SECONDS, "
        f"max_ack_pending=N (1..{MAX_ACK_PENDING}), deliver=all|new; repeatable "
        f"(adds to {CONSUMERS_ENV}, entries separated by ';'; a flag wins for its capability)",
    )
    group.add_argument(
        "--bind-stream",
        action="append",
        metavar="STREAM",
        help="a stream the app's stream triggers name is someone else's: never defined or "
        "changed, only checked that it exists and captures the app's subjects; repeatable "
        f"(adds to {BIND_STREAMS_ENV}, comma-separated)",
    )
    group.add_argument(
        "--max-body-cap",
        metavar="BYTES",
        help="the most a route's http(..., max_body=) may declare, e.g. 256MiB; a route "
        f"above it stops the start ({MAX_BODY_CAP_ENV}, else 64MiB)",
    )
    handler: Callable[[argparse.Namespace], int] = parser.get_default("handler")

    def checked(args: argparse.Namespace) -> int:
        try:
            resolve_serve_options(args, os.environ)
        except ServeOptionError as exc:
            print(f"thaw serve: {exc}", file=sys.stderr)
            return 2
        return handler(args)

    parser.set_defaults(handler=checked)

"""``thaw policy export APP``: the least-privilege NATS permissions a host of APP needs.

``permissions_for(app)`` derives them from the provisioning plan (``plan_for``), the
same source ``thaw provision`` and every host use, plus what a host touches beyond
the plan: Thaw's own buckets (the event-id key, schedule claims), reply inboxes and
the service-discovery subjects of ``subject`` triggers. The result is two
allow-lists (publish, subscribe) and whether the account must allow responses
(``allow_responses``: a ``subject`` capability answers requesters' inboxes), in
nats-server's configuration syntax or as JSON.

Invariants: the lists name only this app's streams, consumers, buckets and
subjects (a ``*`` stands only for a consumer or reply name Thaw picks at run time);
every ``$`` subject is quoted so nats-server never reads it as a variable; the
order is stable (sorted), so an export is diffable. What a host publishes to
another app's stream is listed only if the app declares it (``Access.publishes``,
``Access.requests``, ``http(..., enqueue=...)``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import msgspec

from thaw.backbone._buckets import kv_stream_name, kv_subject_prefix, object_stream_name
from thaw.backbone._subjects import subject_is_subset, validate_subject
from thaw.decisions._delivery import DEAD_LETTER_STREAM, dead_letter_subject
from thaw.declarations._app import App
from thaw.declarations._triggers import HttpTrigger, ScheduleTrigger, SubjectTrigger
from thaw.host._identity import KEYS_BUCKET
from thaw.host._provision import ProvisionPlan, plan_for
from thaw.host._schedule import SCHEDULE_BUCKET, tick_subject

__all__ = ["Permissions", "add_policy_command", "nats_config", "permissions_for"]

API = "$JS.API"
SERVICES = "$SRV"  # NATS micro discovery (PING, INFO, STATS) of subject services
DEFAULT_INBOX_PREFIX = "_INBOX"


class SubjectList(msgspec.Struct, frozen=True):
    allow: list[str]


class Permissions(msgspec.Struct, frozen=True):
    """One NATS user's permissions, in nats-server's own shape (``permissions: {...}``)."""

    publish: SubjectList
    subscribe: SubjectList
    allow_responses: bool = False


def permissions_for(app: App, *, inbox_prefix: str = DEFAULT_INBOX_PREFIX) -> Permissions:
    """What a host serving ``app`` publishes and subscribes to, and nothing else."""
    validate_subject(inbox_prefix, wildcards=False)
    plan = plan_for(app)
    publish = _api_calls(app, plan) | _messages(app, plan)
    subscribe = {f"{inbox_prefix}.>"}
    responses = False
    subjects = [t for s in app.capabilities.values() for t in s.triggers]
    served = [t.subject for t in subjects if isinstance(t, SubjectTrigger)]
    if served:
        responses = True  # replies go to each requester's own inbox
        subscribe |= set(served)
        for verb in ("PING", "INFO", "STATS"):
            subscribe |= {f"{SERVICES}.{verb}", f"{SERVICES}.{verb}.{app.name}"}
            subscribe.add(f"{SERVICES}.{verb}.{app.name}.*")
    return Permissions(
        publish=SubjectList(_minimal(publish)),
        subscribe=SubjectList(_minimal(subscribe)),
        allow_responses=responses,
    )


def _minimal(subjects: set[str]) -> list[str]:
    """Sorted, without the subjects another one in the set already allows."""
    return sorted(
        subject
        for subject in subjects
        if not any(other != subject and subject_is_subset(subject, other) for other in subjects)
    )


def _own_buckets(app: App, plan: ProvisionPlan) -> tuple[list[str], list[str]]:
    """(KV buckets, object stores) a host of ``app`` opens: the plan's and Thaw's own."""
    kv = [bucket.bucket for bucket in plan.buckets]
    kv.append(KEYS_BUCKET)  # the event-id key every host with workers or intake reads
    if any(isinstance(t, ScheduleTrigger) for s in app.capabilities.values() for t in s.triggers):
        kv.append(SCHEDULE_BUCKET)
    return sorted(set(kv)), sorted({store.bucket for store in plan.object_stores})


def _api_calls(app: App, plan: ProvisionPlan) -> set[str]:
    """The JetStream API requests: look up or create each stream and consumer, read
    stored messages, pull; short-lived consumers only on bucket streams."""
    kv, stores = _own_buckets(app, plan)
    streams = [stream.name for stream in plan.streams]
    streams += [kv_stream_name(bucket) for bucket in kv]
    streams += [object_stream_name(bucket) for bucket in stores]
    calls = {f"{API}.INFO", f"{API}.STREAM.NAMES"}  # account check; naming an overlap
    # Provisioning changes an existing stream's age limit (--dlq-max-age, --stream-max-age).
    calls |= {f"{API}.STREAM.UPDATE.{stream.name}" for stream in plan.streams}
    for name in streams:
        calls |= {f"{API}.STREAM.{verb}.{name}" for verb in ("INFO", "CREATE")}
        if name != DEAD_LETTER_STREAM:  # dead letters are written, read by operators only
            calls.add(f"{API}.STREAM.MSG.GET.{name}")
    for consumer in plan.consumers:
        where = f"{consumer.stream}.{consumer.config.durable}"
        calls |= {f"{API}.CONSUMER.{verb}.{where}" for verb in ("INFO", "CREATE", "MSG.NEXT")}
    for bucket in kv:  # direct reads of a key
        calls.add(f"{API}.DIRECT.GET.{kv_stream_name(bucket)}.>")
    for config in plan.buckets:  # a keys listing makes a short-lived consumer of its own
        stream = kv_stream_name(config.bucket)
        calls |= {f"{API}.CONSUMER.{verb}.{stream}.*" for verb in ("CREATE", "DELETE", "MSG.NEXT")}
    for bucket in stores:  # nats-py's object store: ordered consumers, purges
        stream = object_stream_name(bucket)
        calls |= {f"{API}.CONSUMER.CREATE.{stream}", f"{API}.STREAM.PURGE.{stream}"}
        calls |= {f"{API}.CONSUMER.{verb}.{stream}.>" for verb in ("CREATE", "DELETE", "INFO")}
    return calls


def _messages(app: App, plan: ProvisionPlan) -> set[str]:
    """The subjects a host publishes to: its declared ones, acks, buckets, dead letters."""
    kv, stores = _own_buckets(app, plan)
    subjects: set[str] = set()
    for spec in app.capabilities.values():
        access = spec.policy.access
        if access is not None:
            subjects |= set(access.publishes) | set(access.requests)
        for trigger in spec.triggers:
            if isinstance(trigger, HttpTrigger) and trigger.enqueue:
                subjects.add(trigger.enqueue)
            if isinstance(trigger, ScheduleTrigger):  # every host publishes the ticks
                subjects.add(tick_subject(app.name, spec.name))
        subjects.add(dead_letter_subject(app.name, spec.name))
    for consumer in plan.consumers:  # ack, nak, in-progress and term of its deliveries
        subjects.add(f"$JS.ACK.{consumer.stream}.{consumer.config.durable}.>")
    subjects |= {kv_subject_prefix(bucket) + ">" for bucket in kv}
    for bucket in stores:
        subjects.add(f"$O.{bucket}.>")
        subjects.add(f"$JS.FC.{object_stream_name(bucket)}.>")  # ordered consumers' flow
    return subjects


def nats_config(permissions: Permissions, *, app: str = "") -> str:
    """The ``permissions`` block of a nats-server user, in its configuration syntax."""

    def listing(subjects: list[str]) -> list[str]:
        return [f"      {msgspec.json.encode(subject).decode()}" for subject in subjects]

    lines = [f"# thaw policy export {app}: least-privilege NATS permissions of its hosts"]
    lines.append("permissions: {")
    for name, allowed in (("publish", permissions.publish), ("subscribe", permissions.subscribe)):
        lines += [f"  {name}: {{", "    allow: ["]
        lines += listing(allowed.allow)
        lines += ["    ]", "  }"]
    if permissions.allow_responses:
        lines.append("  allow_responses: true")
    lines.append("}")
    return "\n".join(lines) + "\n"


def add_policy_command(commands: Any) -> None:
    """``thaw policy export APP [--json] [-o FILE] [--inbox-prefix PREFIX]``."""
    policy = commands.add_parser("policy", help="security policies an app needs")
    actions = policy.add_subparsers(dest="policy_command", metavar="ACTION")
    policy.set_defaults(handler=lambda _args: (policy.print_help(), 2)[1])
    export = actions.add_parser(
        "export",
        help="print the least-privilege NATS permissions of the app's hosts",
        description="Derive, from the app's provisioning plan, the subjects its hosts "
        "publish and subscribe to, as the permissions block of a nats-server user "
        "(or JSON). See docs/security.md.",
    )
    export.add_argument("app", metavar="APP", help="app or snapshot")
    export.add_argument("--json", action="store_true", help="JSON instead of nats-server syntax")
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE, not stdout")
    export.add_argument(
        "--inbox-prefix",
        default=None,
        metavar="PREFIX",
        help="the hosts' reply inbox prefix (THAW_NATS_INBOX_PREFIX; _INBOX)",
    )
    export.set_defaults(handler=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from thaw.snapshots._revision import load_target

    app = load_target(args.app)
    prefix = args.inbox_prefix or os.environ.get("THAW_NATS_INBOX_PREFIX") or DEFAULT_INBOX_PREFIX
    permissions = permissions_for(app, inbox_prefix=prefix)
    if args.json:
        text = msgspec.json.format(msgspec.json.encode(permissions), indent=2).decode() + "\n"
    else:
        text = nats_config(permissions, app=app.name)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    with open(args.output, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(f"wrote the NATS permissions of app {app.name} to {args.output}", file=sys.stderr)
    return 0

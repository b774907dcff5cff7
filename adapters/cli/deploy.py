"""``thaw deploy``, ``thaw revisions`` and ``thaw rollback``: the deployment record from
the command line.

They write and read the records of ``thaw.host._deployments`` (the KV bucket
``thaw_deployments``, the object store ``thaw_snapshots``, the hosts' reports in
``thaw_hosts``) on the backbone the ``thaw dlq`` commands reach, with the same
options (``--url``, ``--backbone``, ``--state-dir``, the NATS credentials); a
running ``thaw serve`` with the embedded server on ``--state-dir`` is used when
no URL is given. Source given to ``deploy`` is built into a snapshot in a
temporary folder first (``thaw snapshot build``); the snapshot is validated
before anything is stored.

Every failure is one line and exit 1 (unknown app or revision, an invalid
snapshot, an unreachable backbone); bad usage (a weight outside 0..100, a note
with control characters) is exit 2.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from typing import Any

import msgspec

from thaw._errors import BucketNotFound
from thaw.adapters.cli.ops import _backbone_options, _print_json, _with_backbone
from thaw.backbone._contract import Backbone
from thaw.host._deployments import (
    Deployment,
    DeploymentError,
    HostReport,
    deploy,
    read_deployment,
    revision_report,
    rollback,
)
from thaw.snapshots._format import MAX_SNAPSHOT_BYTES, SnapshotError
from thaw.snapshots._revision import is_snapshot

__all__ = ["add_deploy_commands"]

EXIT_OK = 0
MAX_NOTE = 500  # characters of --note kept in the record (and its bounded history)
SHORT = 12  # characters of a revision id shown in tables


def add_deploy_commands(commands: Any) -> None:
    deploy_parser = commands.add_parser(
        "deploy",
        help="publish an app's snapshot and give it a share of the app's traffic",
        description="Store the snapshot (source is built into one first) in the object "
        "store thaw_snapshots and its revision in the deployment record (KV "
        "thaw_deployments) that hosts run with `thaw serve --deployed` follow. "
        "--weight 100 (the default) is a full rollout; a lower weight is a canary beside "
        "the stable revision.",
    )
    deploy_parser.add_argument("target", metavar="APP_OR_SNAPSHOT")
    deploy_parser.add_argument(
        "--weight",
        type=_weight,
        default=100,
        metavar="N",
        help="percent of the traffic for this revision, 0..100 (100)",
    )
    deploy_parser.add_argument("--note", type=_note, default="", help="kept in the record")
    deploy_parser.set_defaults(handler=_cmd_deploy)

    revisions = commands.add_parser(
        "revisions",
        help="an app's deployed revisions: weights, calls and faults, where they are loaded",
    )
    revisions.add_argument("app", metavar="APP", help="the app's name")
    revisions.set_defaults(handler=_cmd_revisions)

    back = commands.add_parser(
        "rollback",
        help="give all of an app's traffic to its stable (or the named) revision",
    )
    back.add_argument("app", metavar="APP", help="the app's name")
    back.add_argument(
        "revision", metavar="REVISION", nargs="?", help="a revision id or unique prefix"
    )
    back.add_argument("--note", type=_note, default="", help="kept in the record")
    back.set_defaults(handler=_cmd_rollback)

    for parser in (deploy_parser, revisions, back):
        parser.add_argument("--json", action="store_true", help="print one JSON document")
        _backbone_options(parser)


def _weight(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a whole percentage") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{value} is not from 0 to 100")
    return value


def _note(text: str) -> str:
    if len(text) > MAX_NOTE:
        raise argparse.ArgumentTypeError(f"is {len(text)} characters; at most {MAX_NOTE}")
    if any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in text):
        raise argparse.ArgumentTypeError("holds a control character (a note is one line)")
    return text


# -- deploy ---------------------------------------------------------------------------


def _snapshot_bytes(target: str) -> bytes:
    """The snapshot file's bytes, or source built into a snapshot in a temporary folder."""
    if is_snapshot(target):
        try:
            with open(target, "rb") as handle:
                blob = handle.read(MAX_SNAPSHOT_BYTES + 1)
        except OSError as exc:
            raise SnapshotError(f"cannot read snapshot {target!r}: {exc.strerror}") from None
        if len(blob) > MAX_SNAPSHOT_BYTES:
            raise SnapshotError(f"{target} is larger than {MAX_SNAPSHOT_BYTES} bytes")
        return blob
    from thaw.adapters.process.build import build_snapshot

    with tempfile.TemporaryDirectory(prefix="thaw-deploy-") as folder:
        output = os.path.join(folder, "app.snap")
        build_snapshot(target, output)
        with open(output, "rb") as handle:
            return handle.read()


def _cmd_deploy(args: argparse.Namespace) -> int:
    blob = _snapshot_bytes(args.target)
    record: Deployment = _with_backbone(
        args, lambda backbone: deploy(backbone, blob, weight=args.weight, note=args.note)
    )
    digest = hashlib.sha256(blob).hexdigest()
    revision = next(r for r in record.revisions if r.sha256 == digest)
    if args.json:
        _print_json({"deployed": revision.revision, **_record_document(record, [])})
        return EXIT_OK
    given = record.weights()[revision.revision]
    print(f"deployed app {record.app} revision {revision.revision} ({revision.size} bytes)")
    if given != args.weight:
        print(f"  it takes {given}%: there is no stable revision to share the traffic with")
    print(f"  weights: {_describe(record.weights())} (generation {record.generation})")
    return EXIT_OK


# -- revisions --------------------------------------------------------------------------


async def _read(backbone: Backbone, app: str) -> tuple[Deployment, list[HostReport]]:
    try:
        record, _ = await read_deployment(backbone, app)
    except BucketNotFound:  # nothing was ever deployed on this backbone
        record = None
    if record is None:
        raise DeploymentError(f"app {app!r} is not deployed: run `thaw deploy` first")
    return record, await revision_report(backbone, app)


def _cmd_revisions(args: argparse.Namespace) -> int:
    record, reports = _with_backbone(args, lambda backbone: _read(backbone, args.app))
    if args.json:
        _print_json(_record_document(record, reports))
        return EXIT_OK
    rows = _revision_rows(record, reports)
    hosts = len(reports)
    print(
        f"app {record.app}: generation {record.generation}, stable "
        f"{record.stable[:SHORT] or '-'}, {hosts} host{'s' * (hosts != 1)} reporting"
    )
    header = ("REVISION", "WEIGHT", "CALLS", "FAULTS", "RATE", "DEPLOYED", "LOADED ON")
    print("  {:<12}  {:>6}  {:>5}  {:>6}  {:>5}  {:<25}  {}".format(*header))
    for row in rows:
        rate = "-" if row["error_rate"] is None else f"{row['error_rate']:.1%}"
        role = "stable" if row["stable"] else "canary" if row["canary"] else ""
        print(
            f"  {row['revision'][:SHORT]:<{SHORT}}  {row['weight']:>5}%  {row['calls']:>5}  "
            f"{row['faults']:>6}  {rate:>5}  {row['deployed_at']:<25}  "
            f"{', '.join(row['hosts']) or '-'}  {role}{'  ' + row['note'] if row['note'] else ''}"
        )
        for host, reason in row["pending"].items():
            print(f"      not loaded on {host}: {reason}")
    target = record.stable if record.canary() is not None else record.previous
    print(f"`thaw rollback {record.app}` goes to: {target[:SHORT] or '- (name a revision)'}")
    print("recent changes:")
    for change in record.history[-5:]:
        note = f"  ({change.note})" if change.note else ""
        print(f"  {change.at}  {change.action:<13}  {_describe(change.weights)}{note}")
    return EXIT_OK


def _revision_rows(record: Deployment, reports: list[HostReport]) -> list[dict[str, Any]]:
    """One row per revision in the record: its weight and, summed over the hosts'
    reports, calls and faults in their canary window, and where it is loaded."""
    canary = record.canary()
    rows = []
    for entry in record.revisions:
        rid = entry.revision
        counts = [report.counts[rid] for report in reports if rid in report.counts]
        calls, faults = sum(c.calls for c in counts), sum(c.faults for c in counts)
        rows.append(
            {
                "revision": rid,
                "weight": entry.weight,
                "stable": rid == record.stable,
                "canary": rid == canary,
                "calls": calls,
                "faults": faults,
                "error_rate": min(faults / calls, 1.0) if calls else None,
                "hosts": sorted(r.host for r in reports if rid in r.weights),
                "pending": {r.host: r.pending[rid] for r in reports if rid in r.pending},
                "size": entry.size,
                "sha256": entry.sha256,
                "deployed_at": entry.deployed_at,
                "note": entry.note,
            }
        )
    return rows


def _record_document(record: Deployment, reports: list[HostReport]) -> dict[str, Any]:
    return {
        "app": record.app,
        "generation": record.generation,
        "stable": record.stable,
        "canary": record.canary(),
        "previous": record.previous,
        "revisions": _revision_rows(record, reports),
        "hosts": msgspec.to_builtins(reports),
        "history": msgspec.to_builtins(record.history),
    }


# -- rollback ---------------------------------------------------------------------------


async def _rollback(backbone: Backbone, args: argparse.Namespace) -> Deployment:
    await _read(backbone, args.app)  # an unknown app is "not deployed", not a bucket error
    return await rollback(backbone, args.app, args.revision or None, note=args.note)


def _cmd_rollback(args: argparse.Namespace) -> int:
    record: Deployment = _with_backbone(args, lambda backbone: _rollback(backbone, args))
    if args.json:
        _print_json(_record_document(record, []))
        return EXIT_OK
    print(
        f"rolled app {record.app} back to revision {record.stable} "
        f"(weights: {_describe(record.weights())}, generation {record.generation})"
    )
    return EXIT_OK


def _describe(weights: dict[str, int]) -> str:
    shown = sorted(weights.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{rid[:SHORT]} {weight}%" for rid, weight in shown) or "none"

"""``thaw bench coldstart``: where a cold start goes, for any app or snapshot.

Layers, measured per capability (a, a-fresh, d, d-snapshot, e) or per app (b, c):

- (a) instance thaw: an event for a capability with no live instance of a
  preloaded revision, until its Outcome is ready (``shared`` isolation);
  (a-fresh) the same with ``fresh`` isolation (module bodies re-executed);
- (b) revision load from the snapshot: validate, unmarshal, preload, execute;
- (c) import from source with the app's modules gone from ``sys.modules``,
  without and with a bytecode cache (a private ``sys.pycache_prefix``);
- (d) a new Python process that imports the app from source and answers one
  event; (d-snapshot) the same booting from the snapshot;
- (e) ``os.fork()`` of the preloaded parent until the child answers (Linux).

Layers run in alternating rounds; each trial is timed on its own with
``perf_counter``; ratios are medians of per-round ratios to (a). Capabilities
get a sample payload built from their input contract unless ``--data`` is given;
the outcome each one produced is reported next to its numbers.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec

from thaw._errors import BucketNotFound
from thaw._event import Event, Ok, Outcome
from thaw.adapters.process.build import build_snapshot
from thaw.backbone._contract import KeyValue, KvConfig, StreamConfig
from thaw.backbone.memory._backbone import MemoryBackbone
from thaw.declarations._app import App
from thaw.declarations._loader import load_app
from thaw.declarations._sample import sample_payload
from thaw.host._instances import InstancePool
from thaw.snapshots._format import SnapshotPayload, decode_snapshot
from thaw.snapshots._revision import Revision, load_revision

__all__ = ["run_coldstart", "run_coldstart_cli", "format_report"]

ROUNDS = 3
_ids = itertools.count(1)


class _BenchBackbone(MemoryBackbone):
    """A MemoryBackbone that captures every subject and creates KV buckets on first use."""

    async def kv(self, bucket: str) -> KeyValue:
        try:
            return await super().kv(bucket)
        except BucketNotFound:
            return await self.add_kv(KvConfig(bucket=bucket))


async def _bench_backbone() -> MemoryBackbone:
    backbone = _BenchBackbone()
    await backbone.add_stream(StreamConfig(name="THAW_BENCH", subjects=(">",)))
    return backbone


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"n": len(ordered), "p50": at(0.5), "p99": at(0.99), "max": ordered[-1]}


def _median(values: list[float]) -> float:
    ordered = sorted(v for v in values if v == v)
    if not ordered:
        return float("nan")
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _outcome_label(outcome: Outcome) -> str:
    if isinstance(outcome, Ok):
        return "ok"
    return f"{type(outcome).__name__.lower()}:{outcome.code}"


class _Target:
    """The app under test as a snapshot (bytes) and as a source tree (a path to import)."""

    def __init__(self, target: str, workdir: Path) -> None:
        from thaw.snapshots._revision import is_snapshot

        if is_snapshot(target):
            self.blob = Path(target).read_bytes()
            self.payload = decode_snapshot(self.blob, source=target)
            self.source = _write_sources(self.payload, workdir / "src")
        else:
            snapshot = workdir / "app.snap"
            build_snapshot(target, str(snapshot))
            self.blob = snapshot.read_bytes()
            self.payload = decode_snapshot(self.blob, source=str(snapshot))
            self.source = target
        self.snapshot_path = workdir / "boot.snap"
        self.snapshot_path.write_bytes(self.blob)


def _write_sources(payload: SnapshotPayload, root: Path) -> str:
    """Write a snapshot's sources and data files out, so it can also be imported from source."""
    sources = ((module.path, module.source) for module in payload.modules)
    for relative, content in itertools.chain(sources, payload.data.items()):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    entry = next(m for m in payload.modules if m.name == payload.manifest.entry_module)
    top = entry.path.split("/")[0]
    return str(root / top) if entry.is_package or "/" in entry.path else str(root / entry.path)


def run_coldstart(
    target: str,
    *,
    trials: int = 300,
    process_trials: int = 20,
    data: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    say = progress or (lambda text: None)
    with tempfile.TemporaryDirectory(prefix="thaw-coldstart-") as tmp:
        workdir = Path(tmp)
        subject = _Target(target, workdir)
        revision = load_revision(subject.blob, data_dir=workdir / "data")
        app = revision.app
        payloads = {
            name: (data.encode() if data is not None else sample_payload(spec.input_type))
            for name, spec in app.capabilities.items()
        }
        per_round = max(trials // ROUNDS, 1)
        per_round_process = max(process_trials // ROUNDS, 1)
        samples: dict[str, list[list[float]]] = {}
        phases: dict[str, list[float]] = {}
        outcomes: dict[str, str] = {}

        def add(layer: str, round_samples: list[float]) -> None:
            samples.setdefault(layer, []).append(round_samples)

        for round_number in range(ROUNDS):
            say(f"round {round_number + 1}/{ROUNDS}: instance thaw")
            thaw = anyio.run(_thaw_round, revision, payloads, per_round, phases, outcomes)
            for layer, values in thaw.items():
                add(layer, values)
            say(f"round {round_number + 1}/{ROUNDS}: revision load and source import")
            add("b", _load_round(subject.blob, workdir, per_round, phases))
            cold, warm = _import_round(subject.source, revision, workdir, per_round)
            add("c_nocache", cold)
            add("c_cache", warm)
            if hasattr(os, "fork"):
                say(f"round {round_number + 1}/{ROUNDS}: fork")
                for name in app.capabilities:
                    add(f"e:{name}", _fork_round(app, name, payloads[name], per_round))
            say(f"round {round_number + 1}/{ROUNDS}: new processes")
            for name in app.capabilities:
                for mode, where in (
                    ("source", subject.source),
                    ("snapshot", subject.snapshot_path),
                ):
                    add(
                        f"d_{mode}:{name}",
                        _process_round(mode, str(where), name, payloads[name], per_round_process),
                    )
        revision.unload()
        return _report(target, revision, samples, phases, outcomes, trials, process_trials)


async def _thaw_round(
    revision: Revision,
    payloads: dict[str, bytes],
    count: int,
    phases: dict[str, list[float]],
    outcomes: dict[str, str],
) -> dict[str, list[float]]:
    backbone = await _bench_backbone()
    clock = time.perf_counter
    result: dict[str, list[float]] = {}
    for isolation in ("shared", "fresh"):
        for name, data in payloads.items():
            totals: list[float] = []
            for _ in range(count):
                pool = InstancePool(revision, isolation=isolation, backbone=backbone)
                event = Event(id=f"cold-{next(_ids)}", data=data)
                started = clock()
                outcome = await pool.invoke(name, event)
                totals.append(clock() - started)
                await pool.aclose()
                outcomes[f"{isolation}:{name}"] = _outcome_label(outcome)
                # The same again, split into its phases.
                pool = InstancePool(revision, isolation=isolation, backbone=backbone)
                started = clock()
                await pool.thaw()
                thawed = clock()
                await pool.invoke(name, Event(id=f"cold-{next(_ids)}", data=data))
                called = clock()
                await pool.aclose()
                phases.setdefault(f"a_{isolation}:{name}:thaw", []).append(thawed - started)
                phases.setdefault(f"a_{isolation}:{name}:first_call", []).append(called - thawed)
            result[f"a_{isolation}:{name}"] = totals
    if hasattr(os, "fork"):
        from thaw.adapters.process.pool import ProcessPool

        for name, data in payloads.items():
            totals = []
            for _ in range(count):
                forked = ProcessPool(revision, backbone_factory=_bench_backbone)
                event = Event(id=f"cold-{next(_ids)}", data=data)
                started = clock()
                outcome = await forked.invoke(name, event)
                totals.append(clock() - started)
                await forked.aclose()
                outcomes[f"process:{name}"] = _outcome_label(outcome)
            result[f"a_process:{name}"] = totals
    return result


def _load_round(
    blob: bytes, workdir: Path, count: int, phases: dict[str, list[float]]
) -> list[float]:
    totals = []
    for _ in range(count):
        started = time.perf_counter()
        revision = load_revision(blob, data_dir=workdir / "data")
        totals.append(time.perf_counter() - started)
        timings = revision.timings
        for phase in ("validate", "unmarshal", "preload", "execute"):
            phases.setdefault(f"b:{phase}", []).append(getattr(timings, phase))
        for module, seconds in timings.modules.items():
            phases.setdefault(f"b:module:{module}", []).append(seconds)
        revision.unload()
    return totals


def _import_round(
    source: str, revision: Revision, workdir: Path, count: int
) -> tuple[list[float], list[float]]:
    names = revision.manifest.modules
    saved = (sys.pycache_prefix, sys.dont_write_bytecode, list(sys.path))
    results: list[list[float]] = []
    try:
        for cached in (False, True):
            prefix = workdir / ("pyc-warm" if cached else f"pyc-none-{next(_ids)}")
            sys.pycache_prefix = str(prefix)
            sys.dont_write_bytecode = not cached
            if cached:
                _forget(names)
                load_app(source)  # writes the bytecode cache once
            totals = []
            for _ in range(count):
                _forget(names)
                started = time.perf_counter()
                load_app(source)
                totals.append(time.perf_counter() - started)
            results.append(totals)
    finally:
        sys.pycache_prefix, sys.dont_write_bytecode, sys.path[:] = saved
        _forget(names)
    return results[0], results[1]


def _forget(names: list[str]) -> None:
    for name in names:
        sys.modules.pop(name, None)


def _fork_round(app: App, capability: str, data: bytes, count: int) -> list[float]:
    totals = []
    for _ in range(count):
        read_end, write_end = os.pipe()
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the caller
            status = 1
            try:
                os.close(read_end)
                asyncio.events._set_running_loop(None)
                label = asyncio.run(_answer_once(app, capability, data))
                os.write(write_end, label.encode() + b"\n")
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        answer = b""
        while not answer.endswith(b"\n"):  # the answer, not the child's exit, stops the clock
            chunk = os.read(read_end, 4096)
            if not chunk:
                break
            answer += chunk
        totals.append(time.perf_counter() - started)
        os.close(read_end)
        os.waitpid(pid, 0)
    return totals


async def _answer_once(app: App, capability: str, data: bytes) -> str:
    from thaw.invocation._invoker import Invoker

    backbone = await _bench_backbone()
    for hook in app.start_hooks:
        await hook()
    outcome = await Invoker(app, backbone=backbone).invoke(
        capability, Event(id=f"fork-{os.getpid()}", data=data)
    )
    return _outcome_label(outcome)


_BOOT_SCRIPT = """
import asyncio, base64, sys
mode, where, capability, data = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
from thaw.adapters.cli.coldstart import _answer_once
if mode == "snapshot":
    from thaw.snapshots._revision import load_revision
    app = load_revision(where).app
else:
    from thaw.declarations._loader import load_app
    app = load_app(where)
print(asyncio.run(_answer_once(app, capability, base64.b64decode(data))))
"""


def _process_round(mode: str, where: str, capability: str, data: bytes, count: int) -> list[float]:
    env = dict(os.environ)
    command = [
        sys.executable,
        "-c",
        _BOOT_SCRIPT,
        mode,
        where,
        capability,
        base64.b64encode(data).decode(),
    ]
    totals = []
    for _ in range(count):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, env=env, timeout=120, check=False)
        totals.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(
                f"the {mode} boot process failed: {done.stderr.decode(errors='replace')[-500:]}"
            )
    return totals


def _report(
    target: str,
    revision: Revision,
    samples: dict[str, list[list[float]]],
    phases: dict[str, list[float]],
    outcomes: dict[str, str],
    trials: int,
    process_trials: int,
) -> dict[str, Any]:
    layers: dict[str, Any] = {}
    for layer, rounds in samples.items():
        flat = [v for r in rounds for v in r]
        layers[layer] = {**_stats(flat), "round_p50": [_stats(r)["p50"] for r in rounds]}
    capabilities = list(revision.app.capabilities)

    def ratio(layer: str, capability: str) -> float:
        base = samples[f"a_shared:{capability}"]
        values = [
            _stats(layer_round)["p50"] / _stats(base_round)["p50"]
            for layer_round, base_round in zip(samples[layer], base, strict=True)
        ]
        return _median(values)

    for capability in capabilities:
        for layer in list(layers):
            if ":" not in layer or layer.endswith(f":{capability}"):
                key = f"x_a:{capability}"
                layers[layer].setdefault(key, ratio(layer, capability))
    return {
        "benchmark": "coldstart",
        "target": target,
        "app": revision.manifest.app,
        "revision": revision.revision_id,
        "modules": revision.manifest.modules,
        "trials": trials,
        "process_trials": process_trials,
        "rounds": ROUNDS,
        "bytecode_cache_env": "off" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "on",
        "capabilities": {
            c: {
                "outcome_shared": outcomes.get(f"shared:{c}"),
                "outcome_fresh": outcomes.get(f"fresh:{c}"),
            }
            for c in capabilities
        },
        "layers": layers,
        "phases": {name: _stats(values) for name, values in phases.items()},
    }


_LABELS = {
    "b": "(b) revision load from snapshot",
    "c_nocache": "(c) import from source, no bytecode cache",
    "c_cache": "(c) import from source, bytecode cache",
}


def _ms(value: float) -> str:
    return "-" if value != value else f"{value * 1000:.3f}"


def format_report(report: dict[str, Any]) -> str:
    layers = report["layers"]
    lines = [
        f"cold start of app {report['app']} (revision {report['revision'][:12]}), "
        f"{report['trials']} trials per layer ({report['process_trials']} for new processes), "
        f"{report['rounds']} rounds, times in ms",
    ]
    header = f"{'layer':48} {'p50':>9} {'p99':>9} {'max':>9} {'x (a)':>9}"
    for capability, info in report["capabilities"].items():
        lines += ["", f"capability {capability} (outcome: {info['outcome_shared']})", header]
        rows = [
            (f"a_shared:{capability}", "(a) instance thaw, shared (the cold start)"),
            (f"a_fresh:{capability}", "(a) instance thaw, fresh (modules re-executed)"),
            (f"a_process:{capability}", "(a) instance thaw, process (fork, on_start)"),
            ("b", _LABELS["b"]),
            ("c_nocache", _LABELS["c_nocache"]),
            ("c_cache", _LABELS["c_cache"]),
            (f"d_source:{capability}", "(d) new process from source, answers"),
            (f"d_snapshot:{capability}", "(d) new process from snapshot, answers"),
            (f"e:{capability}", "(e) fork of preloaded parent, child answers"),
        ]
        for key, label in rows:
            if key not in layers:
                continue
            row = layers[key]
            factor = row.get(f"x_a:{capability}", float("nan"))
            lines.append(
                f"{label:48} {_ms(row['p50']):>9} {_ms(row['p99']):>9} {_ms(row['max']):>9} "
                f"{factor:>8.1f}x"
            )
        thaw = report["phases"].get(f"a_shared:{capability}:thaw", {})
        call = report["phases"].get(f"a_shared:{capability}:first_call", {})
        if thaw:
            lines.append(
                f"  (a) phases p50: thaw/on_start {_ms(thaw['p50'])}, first call {_ms(call['p50'])}"
            )
    phases = report["phases"]
    lines += ["", "(b) revision load phases, p50 ms:"]
    lines.append(
        "  "
        + ", ".join(
            f"{p} {_ms(phases[f'b:{p}']['p50'])}"
            for p in ("validate", "unmarshal", "preload", "execute")
            if f"b:{p}" in phases
        )
    )
    modules = sorted(
        ((k.split(":", 2)[2], v["p50"]) for k, v in phases.items() if k.startswith("b:module:")),
        key=lambda item: -item[1],
    )
    lines.append(
        "  module bodies: " + ", ".join(f"{name} {_ms(seconds)}" for name, seconds in modules)
    )
    return "\n".join(lines)


def run_coldstart_cli(
    target: str, *, trials: int, process_trials: int, data: str | None, json_path: str | None
) -> int:
    def progress(text: str) -> None:
        print(f"  ... {text}", file=sys.stderr, flush=True)

    report = run_coldstart(
        target, trials=trials, process_trials=process_trials, data=data, progress=progress
    )
    print(format_report(report))
    if json_path:
        with open(json_path, "wb") as handle:
            handle.write(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    return 0

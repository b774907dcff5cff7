"""Cold starts and warm calls of one capability, measured the same way in Pyodide and CPython.

``benchmarks/edge.py`` runs ``measure`` natively and asks the edge host to run it
inside Pyodide (``thaw_edge.mjs bench``), so both columns come from this code.

- build: the snapshot builder's collection step, in this interpreter (in Pyodide
  this is how an edge build gets bytecode for Pyodide's own Python);
- load: ``load_revision`` of that snapshot (validate, unmarshal, execute);
- cold (instance): ``thaw bench coldstart``'s layer (a), shared isolation, with
  the pool's construction (compiling the capabilities) inside the timing: a new
  ``InstancePool`` for the preloaded revision, the event, until its Outcome;
- cold (source): the app's modules forgotten, ``load_app`` + a new ``Invoker``
  + the first call (a cold start without snapshots);
- warm: the compiled capability called again and again (the hot path), and the
  same through the edge's HTTP service (routing, Event, problem details).

Every trial is timed on its own with ``perf_counter``; figures are microseconds.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from typing import Any

from thaw import Event
from thaw.adapters.edge._guest import _app_root, _forget_tree, open_edge
from thaw.host._instances import InstancePool
from thaw.lowlevel import Invoker, MemoryBackbone, StreamConfig, load_app
from thaw.snapshots._collect import collect_snapshot  # in-process build: Pyodide cannot spawn
from thaw.snapshots._format import encode_snapshot
from thaw.snapshots._revision import load_revision

__all__ = ["measure", "measure_json", "summarize"]

_ids = itertools.count(1)
_clock = time.perf_counter


def summarize(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]

    return {"n": len(ordered), "p50": at(0.5), "p99": at(0.99), "max": ordered[-1]}


async def measure(
    target: str, capability: str, data: str, trials: int = 300, *, warm_calls: int = 20_000
) -> dict[str, Any]:
    """Every figure for ``capability`` of the app at ``target``; ``data`` is its JSON input."""
    payload = data.encode()
    root = _app_root(target)
    _forget_tree(root)
    started = _clock()
    snapshot = encode_snapshot(collect_snapshot(target))
    build = _clock() - started
    started = _clock()
    revision = load_revision(snapshot)
    load = _clock() - started

    backbone = MemoryBackbone()
    await backbone.add_stream(StreamConfig(name="THAW_BENCH", subjects=(">",)))
    cold_shared: list[float] = []
    outcome = ""
    for _ in range(trials):
        event = Event(id=f"cold-{next(_ids)}", data=payload)
        started = _clock()
        pool = InstancePool(revision, isolation="shared", backbone=backbone)
        answer = await pool.invoke(capability, event)
        cold_shared.append((_clock() - started) * 1e6)
        await pool.aclose()
        outcome = type(answer).__name__
    revision.unload()

    cold_source: list[float] = []
    saved = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # every trial compiles, as a first start would
    try:
        for _ in range(max(trials // 3, 1)):
            _forget_tree(root)
            event = Event(id=f"source-{next(_ids)}", data=payload)
            started = _clock()
            invoker = Invoker(load_app(target), backbone=backbone)
            await invoker.invoke(capability, event)
            cold_source.append((_clock() - started) * 1e6)
    finally:
        sys.dont_write_bytecode = saved

    app = load_app(target)
    compiled = Invoker(app, backbone=backbone).capability(capability)
    warm: list[float] = []
    events = [Event(id=f"warm-{next(_ids)}", data=payload) for _ in range(warm_calls)]
    for event in events:
        started = _clock()
        await compiled(event)
        warm.append((_clock() - started) * 1e6)

    service: list[float] = []
    route = _route_of(app, capability)
    if route is not None:
        method, path = route
        headers = [("content-type", "application/json")]
        async with open_edge(app, backbone=MemoryBackbone()) as edge:
            for _ in range(max(warm_calls // 10, 1)):
                started = _clock()
                await edge.handle(method, path, headers, payload)
                service.append((_clock() - started) * 1e6)

    return {
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "outcome": outcome,
        "snapshot_bytes": len(snapshot),
        "build_ms": build * 1e3,
        "load_ms": load * 1e3,
        "cold_shared_us": cold_shared,
        "cold_source_us": cold_source,
        "warm_us": summarize(warm),
        "service_us": summarize(service),
    }


async def measure_json(target: str, capability: str, data: str, trials: int) -> str:
    return json.dumps(await measure(target, capability, data, trials))


def _route_of(app: Any, capability: str) -> tuple[str, str] | None:
    for trigger in app.capabilities[capability].triggers:
        if getattr(trigger, "method", None) and not getattr(trigger, "params", ()):
            return trigger.method, trigger.path
    return None

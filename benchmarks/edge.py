"""Thaw at the edge: Pyodide boot, cold starts and warm calls inside Pyodide, bundle size.

One run, against native CPython for the same capability (the same measuring
code, ``adapters/edge/_bench.py``, runs in both):

- boot: fresh Node processes, each booting Pyodide from a minimal bundle folder
  (only the Pyodide files and wheels the host reads, which also proves that
  set is enough), opening the app and answering one request;
- cold start inside a booted Pyodide: a new instance of a preloaded revision
  (snapshot built inside Pyodide, for its Python) until the Outcome, and a cold
  start from source (modules executed, first call);
- warm: the compiled capability, the edge HTTP service, and JavaScript's
  ``handle(Request)`` end to end;
- boot to first response: ``serve`` spawned until its first 200, from a full boot
  and from a Pyodide memory snapshot (``memory-snapshot``: stdlib and pure-Python
  third-party modules imported, the wheels' files and Thaw's and the app's bytecode
  kept; msgspec's compiled module is loaded after the restore);
- size: what a bundle needs (Pyodide files, wheels, Thaw's sources, the app).

    python benchmarks/edge.py [--trials 300] [--boots 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio

# Run as a script: the project root, not this folder, goes on sys.path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from benchmarks._common import machine, median, table, write_json  # noqa: E402
from thaw.adapters.edge import prepare  # noqa: E402
from thaw.adapters.edge._bench import measure, summarize  # noqa: E402
from thaw.adapters.edge.bundle import PYODIDE_FILES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGET_COLD_P99_MS = 3.0


def make_bundle(folder: Path) -> dict[str, int]:
    """The Pyodide files and runtime wheels the host needs, copied; their sizes."""
    source = prepare.CACHE / "node_modules" / "pyodide"
    (folder / "node_modules" / "pyodide").mkdir(parents=True)
    sizes = {"pyodide": 0, "wheels": 0}
    for name in PYODIDE_FILES:
        shutil.copyfile(source / name, folder / "node_modules" / "pyodide" / name)
        sizes["pyodide"] += (source / name).stat().st_size
    shutil.copytree(prepare.CACHE / "wheels" / "runtime", folder / "wheels" / "runtime")
    sizes["wheels"] = sum(p.stat().st_size for p in (folder / "wheels" / "runtime").iterdir())
    return sizes


def run_host(args: list[str], bundle: Path, *, stdin: str = "", timeout: float = 600) -> Any:
    env = {**os.environ, "THAW_EDGE_CACHE": str(bundle)}
    completed = subprocess.run(
        prepare.host_command(*args),
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"edge host failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def first_response_ms(
    args: list[str], bundle: Path, *, route: str, data: str, timeout: float = 120
) -> float:
    """Milliseconds from spawning ``serve`` to the first answered request (Node start included)."""
    env = {**os.environ, "THAW_EDGE_CACHE": str(bundle)}
    method, target = route.split(" ", 1)
    started = time.perf_counter()
    process = subprocess.Popen(
        prepare.host_command("serve", *args, "--port", "0"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        base = ""
        while not base:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"edge serve {' '.join(args)} did not listen")
            ready, _, _ = select.select([process.stdout], [], [], 0.5)
            line = process.stdout.readline() if ready else ""
            if line.startswith("{"):
                base = json.loads(line)["listening"]
        request = urllib.request.Request(f"{base}{target}", data=data.encode(), method=method)
        request.add_header("content-type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            if response.status != 200:
                raise SystemExit(f"first response was {response.status}")
        elapsed = (time.perf_counter() - started) * 1000
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        return elapsed
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--app", default=str(ROOT / "examples" / "hello"))
    parser.add_argument("--capability", default="greet")
    parser.add_argument("--route", default="POST /greet")
    parser.add_argument("--data", default='{"name": "Ada", "language": "fr"}')
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--boots", type=int, default=5)
    parser.add_argument("--json", help="write the results to this file")
    options = parser.parse_args()
    problems = prepare.check(test_wheels=False)
    if problems:
        raise SystemExit("\n".join(problems))

    with tempfile.TemporaryDirectory(prefix="thaw-edge-bundle-") as tmp:
        bundle = Path(tmp)
        sizes = make_bundle(bundle)
        method, path = options.route.split(" ", 1)
        request = [{"method": method, "path": path, "body": options.data}]
        print(f"booting Pyodide {options.boots} times from a minimal bundle ...", file=sys.stderr)
        boots = [
            run_host(["handle", options.app], bundle, stdin=json.dumps(request))
            for _ in range(options.boots)
        ]
        print(f"boot to first response, {options.boots} x 2 serve processes ...", file=sys.stderr)
        memory = bundle / "app.mem"
        made = run_host(["memory-snapshot", options.app, "--output", str(memory)], bundle)
        first = {
            "full_ms": [
                first_response_ms([options.app], bundle, route=options.route, data=options.data)
                for _ in range(options.boots)
            ],
            "memory_snapshot_ms": [
                first_response_ms(
                    [options.app, "--memory-snapshot", str(memory)],
                    bundle,
                    route=options.route,
                    data=options.data,
                )
                for _ in range(options.boots)
            ],
        }
        print(f"measuring inside Pyodide ({options.trials} cold starts) ...", file=sys.stderr)
        edge = run_host(
            [
                "bench",
                options.app,
                "--capability",
                options.capability,
                "--data",
                options.data,
                "--trials",
                str(options.trials),
                "--route",
                options.route,
            ],
            bundle,
        )
    print("measuring native CPython ...", file=sys.stderr)
    native = anyio.run(measure, options.app, options.capability, options.data, options.trials)

    sizes["sources"] = edge["sizes"]["sources"]
    sizes["app"] = edge["sizes"]["app"]
    sizes["total"] = sum(sizes.values())
    boot_phases = {
        key: median([boot["timings"][key] for boot in boots])
        for key in (
            "load_pyodide_ms",
            "unpack_wheels_ms",
            "copy_sources_ms",
            "open_app_ms",
            "boot_to_ready_ms",
        )
    }
    inside = edge["inside"]
    figures = {
        "cold_instance_us": (
            summarize(inside["cold_shared_us"]),
            summarize(native["cold_shared_us"]),
        ),
        "cold_source_us": (
            summarize(inside["cold_source_us"]),
            summarize(native["cold_source_us"]),
        ),
        "warm_invoke_us": (inside["warm_us"], native["warm_us"]),
        "edge_service_us": (inside["service_us"], native["service_us"]),
    }
    handle = summarize(edge["handle_us"])

    rows: list[list[Any]] = []
    labels = {
        "cold_instance_us": "cold start: new instance of a preloaded revision -> Outcome",
        "cold_source_us": "cold start from source: import app + first call",
        "warm_invoke_us": "warm call: compiled capability",
        "edge_service_us": "warm call: edge HTTP service (route, Event, answer)",
    }
    for key, (wasm, cpython) in figures.items():
        rows.append(
            [
                labels[key],
                wasm["p50"],
                wasm["p99"],
                cpython["p50"],
                cpython["p99"],
                f"{wasm['p50'] / cpython['p50']:.1f}x",
            ]
        )
    rows.append(
        ["JS handle(Request) -> Response, end to end", handle["p50"], handle["p99"], "", "", ""]
    )
    print()
    print(f"Pyodide {edge['inside']['python']} vs CPython {native['python']}, microseconds")
    print(table(["path", "wasm p50", "wasm p99", "native p50", "native p99", "wasm/native"], rows))
    print()
    boot_rows = [[key.removesuffix("_ms"), value] for key, value in boot_phases.items()]
    boot_rows.append(["first response after ready (one boot)", edge["first_response_ms"]])
    boot_rows.append(["snapshot build inside Pyodide", inside["build_ms"]])
    boot_rows.append(["snapshot load inside Pyodide", inside["load_ms"]])
    print(f"boot, median of {options.boots} fresh processes, milliseconds")
    print(table(["phase", "ms"], boot_rows))
    print()
    full_boot, snapshot_boot = median(first["full_ms"]), median(first["memory_snapshot_ms"])
    print(f"boot to first response (spawn serve -> 200), median of {options.boots}, ms")
    print(
        table(
            ["boot", "ms"],
            [
                ["full boot", full_boot],
                [f"memory snapshot ({made['bytes']:,} bytes)", snapshot_boot],
                ["snapshot / full", f"{snapshot_boot / full_boot:.2f}"],
            ],
        )
    )
    print()
    print("bundle size, bytes")
    print(table(["part", "bytes"], [[key, value] for key, value in sizes.items()]))
    cold_p99_ms = figures["cold_instance_us"][0]["p99"] / 1000
    verdict = "met" if cold_p99_ms < TARGET_COLD_P99_MS else "MISSED"
    print(
        f"\ntarget: cold start p99 inside Pyodide < {TARGET_COLD_P99_MS} ms: "
        f"{cold_p99_ms:.3f} ms, {verdict}"
    )
    ratio = snapshot_boot / full_boot
    print(
        f"target: memory-snapshot boot <= 1/4 of a full boot: {ratio:.2f}, "
        f"{'met' if ratio <= 0.25 else 'MISSED'}"
    )

    document = {
        "machine": {
            **machine(),
            "node": prepare.find_node().version,
            "pyodide": edge["inside"]["python"],
        },
        "app": options.app,
        "capability": options.capability,
        "trials": options.trials,
        "boots": boots,
        "boot_median_ms": boot_phases,
        "first_response_ms": edge["first_response_ms"],
        "boot_to_first_response_ms": {
            **first,
            "full_median": full_boot,
            "memory_snapshot_median": snapshot_boot,
            "memory_snapshot_bytes": made["bytes"],
        },
        "figures_us": {key: {"pyodide": w, "cpython": c} for key, (w, c) in figures.items()},
        "handle_us": handle,
        "snapshot": {
            "build_ms": inside["build_ms"],
            "load_ms": inside["load_ms"],
            "bytes": inside["snapshot_bytes"],
            "native_build_ms": native["build_ms"],
            "native_load_ms": native["load_ms"],
        },
        "sizes": sizes,
        "targets": {
            "cold_p99_ms": cold_p99_ms,
            "cold_p99_below_3ms": cold_p99_ms < TARGET_COLD_P99_MS,
            "memory_snapshot_boot_ratio": ratio,
            "memory_snapshot_boot_quarter": ratio <= 0.25,
        },
    }
    write_json(options.json, document)


if __name__ == "__main__":
    main()

"""Regression guard: short versions of the hot-path benchmarks for two revisions, alternately.

    .venv/bin/python benchmarks/compare.py REV_A REV_B [--rounds 3] [--only invoke,http,boot]
    make compare A=a117a3a B=HEAD          # defaults: A=HEAD, B=. (the working tree)

Each revision is checked out once (``git worktree add --detach`` under
``.thaw/compare/<sha>``) and imported through a tree of links (``thaw`` -> its
``runtime/*``, ``thaw/adapters`` -> its ``adapters/``) put first on ``PYTHONPATH``, so
both run in this checkout's venv with the same dependencies (a revision that needs
other packages is not compared fairly: the table says which versions ran). The
benchmark scripts are this checkout's, for both revisions: one harness, two codes.

Per round the two revisions run every benchmark, in alternating order (A B, B A,
...); the table gives each metric's median over rounds and the median of per-round
ratios B/A with the direction that is better (see BENCHMARKING.md). Short runs are
noisy: a ratio within about 5% is not a change. ``--json FILE`` writes every round.
Not a test: no thresholds, nothing fails on a slowdown; it prints so a person sees it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".thaw" / "compare"


@dataclass(frozen=True)
class Metric:
    name: str
    read: Callable[[dict[str, Any]], float]
    higher_is_better: bool
    unit: str


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    args: tuple[str, ...]
    metrics: tuple[Metric, ...]


def _invoke(variant: str) -> Callable[[dict[str, Any]], float]:
    return lambda data: float(data["results"][variant]["median_ns"])


def _peer(peer: str) -> Callable[[dict[str, Any]], float]:
    return lambda data: float(data["results"]["peers"][peer]["throughput_median"])


def _http(route: str) -> Callable[[dict[str, Any]], float]:
    return lambda data: float(data["results"][route]["thaw"]["rps"])


def _boot(series: str) -> Callable[[dict[str, Any]], float]:
    return lambda data: float(
        next(s["ms"]["median"] for s in data["series"] if s["series"] == series)
    )


BENCHES = (
    Bench(
        "invoke",
        "invoke.py",
        ("--calls", "20000", "--rounds", "2"),
        (
            Metric("warm invoke (deadline enforced)", _invoke("thaw"), False, "ns"),
            Metric("warm invoke + idempotency", _invoke("thaw_idem"), False, "ns"),
            Metric("warm invoke, fn suspends once", _invoke("thaw_susp"), False, "ns"),
        ),
    ),
    Bench(
        "jetstream",
        "jetstream.py",
        ("--messages", "10000", "--rounds", "1", "--peers", "thaw,thaw_idem"),
        (
            Metric("JetStream consume + ack", _peer("thaw"), True, "msgs/s"),
            Metric("JetStream consume + ack, idempotent", _peer("thaw_idem"), True, "msgs/s"),
        ),
    ),
    Bench(
        "http",
        "http_bench.py",
        ("--duration", "3", "--warmup", "1", "--rounds", "1", "--servers", "thaw"),
        (
            Metric("HTTP GET", _http("get"), True, "req/s"),
            Metric("HTTP POST", _http("post"), True, "req/s"),
        ),
    ),
    Bench(
        "boot",
        "host_boot.py",
        ("--boots", "4"),
        (
            Metric(
                "host boot to first HTTP answer",
                _boot("thaw serve: first HTTP answer"),
                False,
                "ms",
            ),
            Metric(
                "host boot to first stream ack",
                _boot("thaw serve: first stream message acked"),
                False,
                "ms",
            ),
        ),
    ),
)


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def prepare(rev: str) -> tuple[str, Path]:
    """(label, link tree) of ``rev``; ``.`` is the working tree as it is."""
    if rev == ".":
        source, label = ROOT, "working tree"
    else:
        sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
        source, label = CACHE / sha[:12], f"{rev} ({sha[:10]})"
        if not (source / "runtime").is_dir():
            CACHE.mkdir(parents=True, exist_ok=True)
            _git("worktree", "add", "--detach", "--force", str(source), sha)
    links = Path(tempfile.mkdtemp(prefix="thaw-compare-")) / "thaw"
    links.mkdir()
    for entry in (source / "runtime").iterdir():
        (links / entry.name).symlink_to(entry)
    (links / "adapters").symlink_to(source / "adapters")
    return label, links.parent


def run(bench: Bench, tree: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ, PYTHONPATH=str(tree))
        command = [sys.executable, str(ROOT / "benchmarks" / bench.script), *bench.args]
        done = subprocess.run(
            [*command, "--json", str(out)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0 or not out.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            print(f"  {bench.name} failed: {' | '.join(tail)}", file=sys.stderr)
            return {}
        data = json.loads(out.read_text())
    return {m.name: m.read(data) for m in bench.metrics}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev_a", help="the revision to compare against (a commit, or .)")
    parser.add_argument("rev_b", help="the revision under test (a commit, or . for the tree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(b.name for b in BENCHES))
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    chosen = [b for b in BENCHES if b.name in args.only.split(",")]
    if not chosen or args.rounds < 1:
        parser.error(f"--only takes some of {', '.join(b.name for b in BENCHES)}; --rounds >= 1")
    try:
        sides = [prepare(args.rev_a), prepare(args.rev_b)]
    except subprocess.CalledProcessError as exc:
        parser.error(f"git: {exc.stderr.strip().splitlines()[-1] if exc.stderr else exc}")
    rounds: list[dict[str, dict[str, float]]] = []
    for n in range(args.rounds):
        order = [0, 1] if n % 2 == 0 else [1, 0]
        found: dict[str, dict[str, float]] = {"a": {}, "b": {}}
        for bench in chosen:
            for side in order:
                print(f"round {n + 1}: {bench.name} on {sides[side][0]}", file=sys.stderr)
                found["ab"[side]].update(run(bench, sides[side][1]))
        rounds.append(found)
    print(f"A = {sides[0][0]}, B = {sides[1][0]}; {args.rounds} alternating rounds")
    print(f"{'metric':<40}{'A':>18}{'B':>18}{'B vs A':>16}")
    for metric in (m for b in chosen for m in b.metrics):
        pairs = [
            (r["a"][metric.name], r["b"][metric.name])
            for r in rounds
            if metric.name in r["a"] and metric.name in r["b"]
        ]
        if not pairs:
            print(f"{metric.name:<40}{'failed':>14}")
            continue
        ratio = statistics.median(b / a if metric.higher_is_better else a / b for a, b in pairs)
        word = "faster" if ratio >= 1 else "slower"
        a_med = statistics.median(a for a, _ in pairs)
        b_med = statistics.median(b for _, b in pairs)
        print(
            f"{metric.name:<40}{a_med:>11,.0f} {metric.unit:<6}{b_med:>11,.0f} {metric.unit:<6}"
            f"{ratio:>9.3f}x {word}"
        )
    if args.json:
        machine = {"nproc": os.cpu_count(), "python": platform.python_version()}
        record = {"a": sides[0][0], "b": sides[1][0], "rounds": rounds, "machine": machine}
        Path(args.json).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

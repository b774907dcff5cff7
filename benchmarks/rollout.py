"""Rollout across a fleet: seconds from `thaw deploy` to 100% of traffic on three hosts.

The fleet: a three-node JetStream cluster on loopback (``EmbeddedCluster``, a
temporary folder, every stream and bucket with three replicas) and three ``thaw
serve --deployed APP`` hosts, each a child process connected to a different node,
polling the deployment record every second (the hosts' fixed ``poll``). A bounded
Python load generator in this process keeps one keep-alive connection per host and
asks ``GET /version`` of the three in turn, without pause, for the whole run; every
answer is kept with its time.

A round: ``thaw deploy SNAPSHOT --url <a node>`` (the command, as an operator runs
it; t0 is just before it starts) gives the round's revision 100% of the traffic.
The round ends once every host has answered only that revision for ``--hold``
seconds (or after ``ROUND_LIMIT``). For each host, the moment it moved is its first
answer of the new revision after its last answer of an earlier one; the round's
figure is the latest of the three, minus t0 ("deploy to 100%"), and minus the moment
the command returned ("record to 100%": what the hosts themselves take). Failed
requests are answers that are not 200 and connections that fail, during the round.

Two series, one after the other on the same fleet:

- ``alternating``: v1, v2, v1, ... both revisions stay loaded on every host (the
  record keeps an old revision at weight 0), so a round is the record's poll plus
  the weight shift. The first round (v2's first deploy) is a warm-up, not counted.
- ``new revision``: a revision never deployed before in each round (built before the
  fleet starts), so each host also fetches the snapshot from the object store and
  loads it in a thread while the current one keeps serving.

There is no peer in the same run: no other tool serves these snapshots. The figure
is dominated by the one-second poll (a host notices a change 0-1 s after it), so
read it against that. The machine has two cores for three nats-servers, three hosts
and the load generator: nothing is pinned, and the load generator (one thread,
closed loop) is what bounds the request rate.

    python benchmarks/rollout.py [--rounds 10] [--hold 1.0] [--json FILE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, summarize, table, write_json  # noqa: E402

APP_NAME = "rolloutbench"
START_LIMIT = 60.0  # seconds for the cluster or a host to start
ROUND_LIMIT = 30.0  # seconds one round may take before it is given up (and reported)
COMMAND_LIMIT = 60.0
POLL = 1.0  # seconds between a host's reads of the deployment record (follow_deployment)
APP = """
from thaw import App, http

app = App("{name}")


@app.capability(http("GET", "/version"))
async def version() -> str:
    return "{version}"
"""


class Load:
    """One thread, one keep-alive connection per port, round-robin, no pause, until stopped.

    ``answers``: (perf_counter at the answer, port index, version or None, problem).
    """

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.answers: list[tuple[float, int, str | None, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(COMMAND_LIMIT)

    def _run(self) -> None:
        connections = [
            http.client.HTTPConnection("127.0.0.1", port, timeout=10) for port in self.ports
        ]
        record = self.answers.append
        clock = time.perf_counter
        while not self._stop.is_set():
            for index, connection in enumerate(connections):
                try:
                    connection.request("GET", "/version")
                    response = connection.getresponse()
                    body = response.read()
                    if response.status == 200:
                        record((clock(), index, json.loads(body), ""))
                    else:
                        record((clock(), index, None, f"{response.status} {body[:100]!r}"))
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    record((clock(), index, None, f"{type(exc).__name__}: {exc}"))
                    connection.close()  # reconnects on the next request
        for connection in connections:
            connection.close()


def build(folder: Path, version: str) -> Path:
    from thaw.adapters.process.build import build_snapshot

    source = folder / "src" / version
    source.mkdir(parents=True)
    (source / "app.py").write_text(textwrap.dedent(APP.format(name=APP_NAME, version=version)))
    output = folder / f"{version}.snap"
    build_snapshot(str(source / "app.py"), str(output))
    return output


def environment() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), THAW_NATS_REPLICAS="3")


def deploy_command(snapshot: Path, url: str) -> None:
    command = [sys.executable, "-m", "thaw.adapters.cli", "deploy", str(snapshot), "--url", url]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=COMMAND_LIMIT, env=environment()
    )
    if done.returncode != 0:
        raise RuntimeError(f"thaw deploy failed: {done.stderr.strip()}")


class Host:
    def __init__(self, url: str, folder: Path) -> None:
        folder.mkdir(parents=True)
        command = [sys.executable, "-m", "thaw.adapters.cli", "serve", "--deployed", APP_NAME]
        command += ["--url", url, "--http", "0", "--no-access-log"]
        command += ["--state-dir", str(folder / "state")]
        self.log = (folder / "host.log").open("w")  # a pipe nobody reads would fill up
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=environment(),
            cwd=folder,
        )
        self.port = 0

    def wait_ready(self) -> None:
        import select

        assert self.process.stdout is not None
        deadline = time.monotonic() + START_LIMIT
        while time.monotonic() < deadline and self.process.poll() is None:
            readable, _, _ = select.select([self.process.stdout], [], [], 0.5)
            line = self.process.stdout.readline() if readable else ""
            found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if "thaw: serving app" in line and found:
                self.port = int(found.group(1))
                return
        raise RuntimeError(f"a host did not start (see {self.log.name})")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(COMMAND_LIMIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(COMMAND_LIMIT)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log.close()


def one_round(
    load: Load, snapshot: Path, version: str, url: str, hosts: int, hold: float, pause: float
) -> dict[str, Any]:
    time.sleep(pause)  # a random phase against the hosts' one-second polls (see main)
    start = len(load.answers)
    t0 = time.perf_counter()
    deploy_command(snapshot, url)
    returned = time.perf_counter()
    deadline = t0 + ROUND_LIMIT
    moved: dict[int, float] = {}
    seen = start
    while time.perf_counter() < deadline:
        end = len(load.answers)
        for at, index, answer, _ in load.answers[seen:end]:
            if answer == version:
                moved.setdefault(index, at)
            elif answer is not None:
                moved.pop(index, None)  # an earlier revision answered: not moved yet
        seen = end
        if len(moved) == hosts and time.perf_counter() - max(moved.values()) >= hold:
            break
        time.sleep(0.01)  # the load thread runs meanwhile; this only paces the check
    answers = load.answers[start:seen]
    failures = [problem for _, _, answer, problem in answers if answer is None]
    complete = len(moved) == hosts
    last = max(moved.values()) if complete else float("nan")
    span = answers[-1][0] - t0 if answers else 0.0
    return {
        "version": version,
        "deploy_to_100_s": last - t0,
        "record_to_100_s": last - returned,
        "command_s": returned - t0,
        "complete": complete,
        "requests": len(answers),
        "requests_per_s": len(answers) / span if span > 0 else 0.0,
        "failed": len(failures),
        "failures": failures[:20],
    }


def series_row(name: str, rounds: list[dict[str, Any]]) -> list[Any]:
    to_100 = summarize([r["deploy_to_100_s"] for r in rounds if r["complete"]])
    record = summarize([r["record_to_100_s"] for r in rounds if r["complete"]])
    command = summarize([r["command_s"] for r in rounds])
    rate = summarize([r["requests_per_s"] for r in rounds])
    return [
        name,
        f"{sum(r['complete'] for r in rounds)}/{len(rounds)}",
        to_100["median"],
        to_100["p99"],
        to_100["max"],
        record["median"],
        command["median"],
        sum(r["failed"] for r in rounds),
        sum(r["requests"] for r in rounds),
        rate["median"],
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds per series")
    parser.add_argument("--hold", type=float, default=1.0, help="seconds all on the new one")
    parser.add_argument("--seed", type=int, default=None, help="of the pauses between rounds")
    parser.add_argument("--json", metavar="FILE", help="write results as JSON")
    parser.add_argument(
        "--keep", action="store_true", help="keep the fleet's folder (logs) when all went well"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 200 or not 0.1 <= args.hold <= 10:
        parser.error("--rounds from 1 to 200 and --hold from 0.1 to 10 seconds please")

    import anyio

    # Each round would otherwise start ``hold`` seconds after the previous one ended,
    # always at the same phase of the hosts' polls: a pause drawn from 0..POLL seconds
    # spreads the deploys over the poll interval, as operators' deploys are.
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    pauses = random.Random(seed)

    from thaw.adapters.nats.cluster import EmbeddedCluster

    folder = Path(tempfile.mkdtemp(prefix="thaw-rollout-bench-"))
    cluster = EmbeddedCluster(3, name="rolloutbench", base_dir=folder / "cluster")
    hosts: list[Host] = []
    load: Load | None = None
    results: dict[str, list[dict[str, Any]]] = {"alternating": [], "new revision": []}
    warmup: dict[str, Any] = {}
    try:
        cluster.start(timeout=START_LIMIT)
        anyio.run(lambda: cluster.wait_jetstream(timeout=START_LIMIT))
        urls = [node.url for node in cluster.nodes]
        fresh = [f"fresh{number}" for number in range(args.rounds)]
        snapshots = {version: build(folder, version) for version in ("v1", "v2", *fresh)}
        deploy_command(snapshots["v1"], urls[0])
        hosts = [Host(url, folder / f"host{index}") for index, url in enumerate(urls)]
        for host in hosts:
            host.wait_ready()
        print(
            f"rollout benchmark: 3 nodes, 3 hosts (ports {[h.port for h in hosts]}), "
            f"{args.rounds} rounds per series, hold {args.hold:g}s",
            flush=True,
        )
        load = Load([host.port for host in hosts])
        load.start()
        time.sleep(1.0)  # the load runs a second before the first deploy
        order = ["v2", *(["v1", "v2"] * args.rounds)][: args.rounds + 1]
        for number, version in enumerate(order):
            url = urls[number % 3]
            pause = pauses.uniform(0, POLL)
            outcome = one_round(
                load, snapshots[version], version, url, len(hosts), args.hold, pause
            )
            if number == 0:
                warmup = outcome
            else:
                results["alternating"].append(outcome)
            print(f"  alternating {number}: {_line(outcome)}", flush=True)
        for number, version in enumerate(fresh):
            url = urls[number % 3]
            pause = pauses.uniform(0, POLL)
            outcome = one_round(
                load, snapshots[version], version, url, len(hosts), args.hold, pause
            )
            results["new revision"].append(outcome)
            print(f"  new revision {number}: {_line(outcome)}", flush=True)
    finally:
        if load is not None:
            load.stop()
        for host in hosts:
            host.stop()
        cluster.stop()  # every node by PID; removes the cluster's folder under ours
    headers = [
        "series",
        "rounds",
        "deploy->100% median s",
        "p99 s",
        "max s",
        "record->100% median s",
        "thaw deploy s",
        "failed",
        "requests",
        "req/s",
    ]
    print()
    print(table(headers, [series_row(name, rounds) for name, rounds in results.items()]))
    failed = sum(r["failed"] for rounds in results.values() for r in rounds) + warmup.get(
        "failed", 0
    )
    kept = args.keep or failed or any(not r["complete"] for v in results.values() for r in v)
    if kept:
        where = f"logs under {folder}"
    else:
        shutil.rmtree(folder, ignore_errors=True)
        where = "folder removed (--keep keeps it)"
    print(f"\nfailed requests during rollouts (must be 0): {failed}; seed {seed}; {where}")
    write_json(
        args.json,
        {
            "benchmark": "rollout",
            "machine": machine(),
            "nodes": 3,
            "hosts": 3,
            "hold_s": args.hold,
            "poll_s": POLL,
            "seed": seed,
            "warmup": warmup,
            "series": results,
        },
    )
    return 0 if failed == 0 else 1


def _line(outcome: dict[str, Any]) -> str:
    return (
        f"{outcome['version']}: deploy->100% {outcome['deploy_to_100_s']:.3f}s "
        f"(command {outcome['command_s']:.3f}s), {outcome['requests']} requests, "
        f"{outcome['failed']} failed"
    )


if __name__ == "__main__":
    sys.exit(main())

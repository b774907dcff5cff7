"""A fleet: three ``thaw serve --deployed`` hosts on a three-node JetStream cluster.

The cluster runs on loopback (``EmbeddedCluster``, temp dirs); every stream and
bucket is created with three replicas (``THAW_NATS_REPLICAS=3``, read by ``thaw
deploy`` and ``thaw serve`` alike). Each host is a child process connected to a
different node, and the deployment record is changed through the ``thaw deploy`` /
``thaw rollback`` commands, as an operator would. One fleet serves the whole module;
each test first deploys the revisions it starts from, so none depends on another's
end state.

Covered: a deploy reaches every host with no failed request under a steady load
across the hosts; a host that joins late serves the deployed revision from its
first request; a host SIGKILLed in the middle of a rollout (the new revision loads
slowly, so it is killed before it has loaded it) does not split the fleet, the
record reads back consistent and the host, restarted, catches up; a rollback
returns every host; a failing canary is rolled back by the hosts themselves; and
an idle host scales to zero and thaws on the next event of each trigger kind.
Every wait is bounded and waits on the condition (answers, the record, /metrics).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import anyio
import pytest
from nats_fixtures import wait_line, wait_until

from thaw.adapters.nats import JetStreamBackbone
from thaw.adapters.nats.cluster import EmbeddedCluster
from thaw.adapters.process.build import build_snapshot
from thaw.host._deployments import Deployment, fetch_snapshot, read_deployment

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
WAIT = 30.0  # seconds any one condition may take before the test fails
LOAD_DELAY = 3.0  # seconds the "slow" revision takes to load on a fleet host
STREAK = 5  # answers in a row that count as "this host serves it"
T = TypeVar("T")

APP = """
import os
import time

from thaw import App, CanaryPolicy, http

{prelude}
app = App("{name}", canary=CanaryPolicy(min_calls=10, window=10.0))


@app.capability(http("GET", "/version"))
async def version() -> str:
    {body}
"""

VERSIONS = {
    "one": ("", 'return "one"'),
    "two": ("", 'return "two"'),
    "three": ("", 'return "three"'),
    # Loads for LOAD_DELAY seconds on a fleet host (the build has no FLEET_LOAD_DELAY).
    "slow": ('time.sleep(float(os.environ.get("FLEET_LOAD_DELAY", "0")))', 'return "slow"'),
    "broken": ("", 'raise RuntimeError("this canary is broken")'),
}


def env(**more: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), THAW_NATS_REPLICAS="3", **more)


def run_async(work: Callable[[], Awaitable[T]]) -> T:
    return anyio.run(work)


class Host:
    """One ``thaw serve`` child; stdout is read by ``wait_line``'s thread, stderr to a file."""

    def __init__(self, command: list[str], folder: Path, environment: dict[str, str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / "host.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=environment,
            cwd=folder,
        )
        try:
            line = wait_line(self.process, "thaw: serving app", limit=WAIT)
        except Exception as exc:  # it exited, or said nothing in time (queue.Empty)
            self.end()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            pytest.fail(f"a host did not start ({type(exc).__name__}: {exc}); its log: {tail}")
        self.port = int(re.search(r"http://127\.0\.0\.1:(\d+)", line).group(1))  # type: ignore[union-attr]

    def get(self, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def version(self) -> str:
        status, body = self.get("/version")
        assert status == 200, body
        return str(json.loads(body))

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as {'name{labels}': value}."""
        status, body = self.get("/metrics")
        assert status == 200, body
        samples = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(WAIT)

    def end(self) -> None:
        """SIGTERM (the host drains), SIGKILL if it does not stop in time; by PID."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(WAIT)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


class Load:
    """A steady client load: one keep-alive connection per host, round-robin, in a thread.

    Every answer that is not a 200 (or a connection that fails) is a failure, kept
    with what it said. ``wait_serving`` waits until each host's last ``STREAK``
    answers are one version.
    """

    def __init__(self, hosts: list[Host]) -> None:
        self.ports = [host.port for host in hosts]
        self.failures: list[str] = []
        self.requests = 0
        self.seen: set[str] = set()
        self._last = {port: deque[str](maxlen=STREAK) for port in self.ports}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(WAIT)

    def _run(self) -> None:
        connections = {
            port: http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT) for port in self.ports
        }
        while not self._stop.is_set():
            for port, connection in connections.items():
                try:
                    connection.request("GET", "/version")
                    response = connection.getresponse()
                    body = response.read()
                    answer = str(json.loads(body)) if response.status == 200 else None
                    problem = "" if answer is not None else f"{response.status} {body[:120]!r}"
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    answer, problem = None, f"{type(exc).__name__}: {exc}"
                    connection.close()  # http.client reconnects on the next request
                with self._changed:
                    self.requests += 1
                    if answer is None:
                        self.failures.append(f"port {port}: {problem}")
                    else:
                        self.seen.add(answer)
                        self._last[port].append(answer)
                    self._changed.notify_all()
        for connection in connections.values():
            connection.close()

    def serving(self, version: str) -> bool:
        return all(list(last) == [version] * STREAK for last in self._last.values())

    def wait_serving(self, version: str) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self.serving(version), timeout=WAIT):
                answers = {port: list(last) for port, last in self._last.items()}
                pytest.fail(f"not every host serves {version!r} within {WAIT:g}s: {answers}")


class Fleet:
    def __init__(self, cluster: EmbeddedCluster, folder: Path, name: str) -> None:
        self.cluster = cluster
        self.folder = folder
        self.name = name
        self.snapshots: dict[str, Path] = {}
        self.revisions: dict[str, str] = {}
        self.hosts: list[Host] = []
        self._started = 0

    def build(self) -> None:
        for version, (prelude, body) in VERSIONS.items():
            source = self.folder / "src" / version
            source.mkdir(parents=True)
            text = APP.format(name=self.name, prelude=prelude, body=body)
            (source / "app.py").write_text(textwrap.dedent(text))
            output = self.folder / f"{version}.snap"
            self.revisions[version] = build_snapshot(str(source / "app.py"), str(output)).revision
            self.snapshots[version] = output

    def thaw(self, *args: str, node: int = 0) -> subprocess.CompletedProcess[str]:
        """A ``thaw`` command against ``node``; it must succeed."""
        done = subprocess.run(
            [sys.executable, "-m", "thaw.adapters.cli", *args, "--url", self.cluster.urls[node]],
            capture_output=True,
            text=True,
            timeout=WAIT,
            env=env(),
            cwd=self.folder,
        )
        assert done.returncode == 0, done.stderr
        return done

    def deploy(self, version: str, *, weight: int = 100, node: int = 0) -> None:
        self.thaw("deploy", str(self.snapshots[version]), "--weight", str(weight), node=node)

    def start_host(self, node: int) -> Host:
        self._started += 1
        command = [sys.executable, "-m", "thaw.adapters.cli", "serve", "--deployed", self.name]
        command += ["--url", self.cluster.nodes[node].url, "--http", "0", "--no-access-log"]
        folder = self.folder / f"host{self._started}"
        command += ["--state-dir", str(folder / "state")]
        return Host(command, folder, env(FLEET_LOAD_DELAY=str(LOAD_DELAY)))

    def record(self) -> Deployment:
        async def read(backbone: JetStreamBackbone) -> Deployment | None:
            return (await read_deployment(backbone, self.name))[0]

        found = self.on_backbone(read)
        assert found is not None
        return found

    def on_backbone(self, work: Callable[[JetStreamBackbone], Awaitable[T]]) -> T:
        async def connected() -> T:
            backbone = await JetStreamBackbone.connect(self.cluster.urls)
            try:
                return await work(backbone)
            finally:
                await backbone.aclose()

        return run_async(connected)

    def wait_record(self, holds: Callable[[Deployment], bool], what: str) -> Deployment:
        async def waiting(backbone: JetStreamBackbone) -> Deployment:
            with anyio.move_on_after(WAIT):
                while True:
                    record, _ = await read_deployment(backbone, self.name)
                    if record is not None and holds(record):
                        return record
                    await anyio.sleep(0.1)
            pytest.fail(f"the deployment record never showed {what} within {WAIT:g}s")

        return self.on_backbone(waiting)

    def wait_weight(self, revision: str, weight: int) -> None:
        """Every fleet host's /metrics gives ``revision`` that weight (a canary's split is
        invisible in a few answers: 70% of them come from the stable revision)."""
        series = f'thaw_revision_weight{{revision="{revision[:12]}"}}'
        deadline = time.monotonic() + WAIT
        for host in self.hosts:
            while host.metrics().get(series) != weight:
                assert time.monotonic() < deadline, f"port {host.port}: {series} != {weight}"

    def serving_everywhere(self, version: str) -> None:
        """Every fleet host answers ``version`` (and its weight there is 100)."""
        with Load(self.hosts) as load:
            load.wait_serving(version)
        assert load.failures == [], load.failures[:10]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("fleet")
    cluster = EmbeddedCluster(3, name="fleet", base_dir=folder / "cluster")
    cluster.start(timeout=WAIT)
    fleet = Fleet(cluster, folder, f"fleet{os.getpid()}")
    try:
        run_async(lambda: cluster.wait_jetstream(timeout=WAIT))
        fleet.build()
        fleet.deploy("one")
        for node in range(3):
            fleet.hosts.append(fleet.start_host(node))
        yield fleet
    finally:
        for host in fleet.hosts:
            host.end()
        cluster.stop()


def test_a_deploy_reaches_every_host_without_failing_a_request(fleet: Fleet) -> None:
    fleet.deploy("one", node=1)
    fleet.serving_everywhere("one")
    with Load(fleet.hosts) as load:
        load.wait_serving("one")
        fleet.deploy("two", node=2)
        load.wait_serving("two")
    assert load.failures == [], load.failures[:10]
    assert load.seen == {"one", "two"} and load.requests > 0
    two = fleet.revisions["two"][:12]
    for host in fleet.hosts:
        assert host.metrics()[f'thaw_revision_weight{{revision="{two}"}}'] == 100


def test_a_host_that_joins_late_serves_the_deployed_revision_from_its_first_request(
    fleet: Fleet,
) -> None:
    fleet.deploy("three")
    fleet.serving_everywhere("three")
    late = fleet.start_host(1)
    try:
        assert late.version() == "three"
        with Load([*fleet.hosts, late]) as load:
            load.wait_serving("three")
        assert load.failures == [], load.failures[:10]
        late_id = f"-{late.process.pid}"

        def reported() -> bool:
            listed = json.loads(fleet.thaw("revisions", fleet.name, "--json").stdout)
            row = next(r for r in listed["revisions"] if r["revision"] == listed["stable"])
            return any(h.endswith(late_id) for h in row["hosts"])

        deadline = time.monotonic() + WAIT
        while not reported():  # its report reaches thaw_hosts within a poll or two
            assert time.monotonic() < deadline, "the late host never reported"
    finally:
        late.end()


def test_a_host_killed_mid_rollout_does_not_split_the_fleet(fleet: Fleet) -> None:
    fleet.deploy("one")
    fleet.serving_everywhere("one")
    before = fleet.record()
    victim, survivors = fleet.hosts[2], fleet.hosts[:2]
    slow = fleet.revisions["slow"]
    with Load(survivors) as load:
        fleet.deploy("slow", node=1)
        # "slow" takes LOAD_DELAY seconds to load: the victim has not loaded it yet.
        assert f'thaw_revision_weight{{revision="{slow[:12]}"}}' not in victim.metrics()
        assert victim.version() == "one"
        victim.kill()
        load.wait_serving("slow")
    assert load.failures == [], load.failures[:10]
    record = fleet.record()
    assert record.stable == slow and record.generation == before.generation + 1
    assert record.weights() == {r: (100 if r == slow else 0) for r in record.weights()}
    assert record.history[-1].action == "deploy"
    stored = fleet.on_backbone(lambda b: fetch_snapshot(b, fleet.name, slow))
    assert stored == fleet.snapshots["slow"].read_bytes()
    victim.end()
    fleet.hosts[2] = fleet.start_host(2)
    assert fleet.hosts[2].version() == "slow"
    fleet.serving_everywhere("slow")


def test_a_rollback_returns_every_host_to_the_previous_revision(fleet: Fleet) -> None:
    fleet.deploy("one")
    fleet.deploy("two")
    fleet.serving_everywhere("two")
    with Load(fleet.hosts) as load:
        fleet.thaw("rollback", fleet.name, node=2)
        load.wait_serving("one")
    assert load.failures == [], load.failures[:10]
    record = fleet.record()
    assert record.stable == fleet.revisions["one"] and record.history[-1].action == "rollback"


def test_a_failing_canary_is_rolled_back_by_the_hosts(fleet: Fleet) -> None:
    fleet.deploy("one")
    fleet.serving_everywhere("one")
    one, broken = fleet.revisions["one"], fleet.revisions["broken"]
    with Load(fleet.hosts) as load:
        fleet.deploy("broken", weight=30)
        record = fleet.wait_record(
            lambda r: r.history[-1].action == "auto_rollback", "an automatic rollback"
        )
        fleet.wait_weight(one, 100)
    assert load.failures, "the canary's calls failed: the load saw it"
    assert all("500" in failure for failure in load.failures), load.failures[:10]
    assert record.stable == one and record.weights() == {one: 100, broken: 0} | {
        r: 0 for r in record.weights() if r not in (one, broken)
    }
    assert record.history[-2].action == "deploy" and record.history[-2].weights[broken] == 30
    assert f"canary {broken[:12]}" in record.history[-1].note
    for host in fleet.hosts:
        assert host.metrics()[f'thaw_revision_weight{{revision="{broken[:12]}"}}'] == 0
    fleet.serving_everywhere("one")  # and now nothing fails


IDLE_APP = """
from thaw import Access, App, Context, KvChange, ObjectChange, http, kv, objects, stream, subject

app = App("{name}")
SEEN = "{name}_seen"


@app.capability(http("GET", "/hello"))
async def hello() -> str:
    return "hello"


@app.capability(stream("{name}.jobs"), access=Access(buckets=(SEEN,)))
async def job(data: dict, ctx: Context) -> None:
    await (await ctx.kv(SEEN)).put("job." + data["id"], b"done")


@app.capability(subject("{name}.ask"))
async def ask(data: dict) -> dict:
    return {{"answer": data["question"] * 2}}


@app.capability(kv("{name}_watched"), access=Access(buckets=(SEEN,)))
async def watched(change: KvChange, ctx: Context) -> None:
    await (await ctx.kv(SEEN)).put("kv." + change.key, b"done")


@app.capability(objects("{name}_files"), access=Access(buckets=(SEEN,)))
async def uploaded(change: ObjectChange, ctx: Context) -> None:
    await (await ctx.kv(SEEN)).put("file." + change.name, b"done")
"""


def test_an_idle_host_scales_to_zero_and_thaws_on_the_next_event_of_every_kind(
    fleet: Fleet,
) -> None:
    name = f"idle{os.getpid()}"
    source = fleet.folder / "idle"
    source.mkdir()
    (source / "app.py").write_text(IDLE_APP.format(name=name))
    command = [sys.executable, "-m", "thaw.adapters.cli", "serve", str(source / "app.py")]
    command += ["--url", fleet.cluster.urls[1], "--http", "0", "--idle-timeout", "0.2"]
    command += ["--no-access-log", "--state-dir", str(source / "state")]
    host = Host(command, source / "run", env())

    def cold_starts(capability: str) -> float:
        return sum(
            value
            for key, value in host.metrics().items()
            if key.startswith("thaw_cold_starts_total{") and f'capability="{capability}"' in key
        )

    def wait_idle() -> None:
        deadline = time.monotonic() + WAIT
        while True:
            instances = [v for k, v in host.metrics().items() if k.startswith("thaw_instances{")]
            if instances and not any(instances):
                return
            assert time.monotonic() < deadline, f"never scaled to zero: {instances}"

    async def seen(backbone: JetStreamBackbone, key: str) -> None:
        bucket = await backbone.kv(f"{name}_seen")

        async def there() -> bool:
            return await bucket.get(key) is not None

        await wait_until(there, limit=WAIT)

    async def job(backbone: JetStreamBackbone) -> None:
        await backbone.client.jetstream().publish(f"{name}.jobs", b'{"id": "j1"}')
        await seen(backbone, "job.j1")

    async def ask(backbone: JetStreamBackbone) -> None:
        reply = await backbone.client.request(f"{name}.ask", b'{"question": 21}', timeout=WAIT)
        assert json.loads(reply.data) == {"answer": 42}

    async def watched(backbone: JetStreamBackbone) -> None:
        await (await backbone.kv(f"{name}_watched")).put("k1", b"v")
        await seen(backbone, "kv.k1")

    async def uploaded(backbone: JetStreamBackbone) -> None:
        await (await backbone.object_store(f"{name}_files")).put("f1", b"data")
        await seen(backbone, "file.f1")

    def hello(backbone: JetStreamBackbone) -> Awaitable[None]:
        async def call() -> None:
            assert await anyio.to_thread.run_sync(host.get, "/hello") == (200, b'"hello"')

        return call()

    events: dict[str, Callable[[JetStreamBackbone], Awaitable[None]]] = {
        "hello": hello,
        "job": job,
        "ask": ask,
        "watched": watched,
        "uploaded": uploaded,
    }
    try:
        for capability, event in events.items():
            wait_idle()
            before = cold_starts(capability)
            fleet.on_backbone(event)
            assert cold_starts(capability) == before + 1, capability
        wait_idle()  # and each went back to zero after its event
    finally:
        host.end()
    assert "Traceback" not in host.log_path.read_text()

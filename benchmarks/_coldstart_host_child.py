"""The children of ``coldstart_host.py``: a generated app, the fork floor, and memory.

- ``write_generated_app(folder, isolation=..., seed=...)`` writes an app the benchmark has
  never seen: a package with module state, a data file read at import, an ``on_start``
  that allocates nothing, and one capability reachable over HTTP and from a stream,
  declared with the given isolation.
- ``python _coldstart_host_child.py fork-floor SNAPSHOT PAD_TO_KIB`` loads the snapshot as
  the host does, imports what ``thaw serve`` imports, grows to the host's resident size,
  then answers each stdin line ``N`` with one JSON line: N timings (ns) of a bare
  ``os.fork()`` whose child calls ``os._exit(0)``, until ``waitpid`` returns.
- ``python _coldstart_host_child.py memory SNAPSHOT COUNT CAPABILITY PAYLOAD`` loads COUNT
  distinct revisions of the snapshot into a ``RevisionRouter`` (each variant's module
  source gets a trailing comment, so the content hash, hence the revision id, differs;
  the code is the same), thaws a shared instance of each, invokes it once, scales every
  instance to zero, and prints the resident size (VmRSS, KiB) after each step as JSON.

Every child reads only its arguments and stdin and writes one JSON document per answer.
"""

from __future__ import annotations

import gc
import json
import os
import random
import sys
import tempfile
import textwrap
import time
from pathlib import Path

GENERATED_MODULE = '''\
"""A generated app (seed {seed}): module state, a data file read at import, an on_start."""

import json
from pathlib import Path

import msgspec

from thaw import App, http, stream

# Through __file__, not importlib.resources: files() of a snapshot module finds no
# reader (its .py is not on disk) and fails with "Can't open orphan path".
TABLE = json.loads((Path(__file__).parent / "data" / "table.json").read_text())
CALLS = [0]  # module state: shared by "shared" instances, fresh per "fresh"/"process" one
STARTS = [0]

app = App("{name}")


class Query(msgspec.Struct, frozen=True):
    key: str


class Answer(msgspec.Struct, frozen=True):
    key: str
    value: int
    calls: int


@app.on_start
async def start() -> None:
    STARTS[0] += 1  # allocates nothing the measurement could see


@app.capability(
    http("POST", "/lookup"),
    stream("{name}.lookup"),
    timeout=1.0,
    isolation="{isolation}",
)
async def lookup(query: Query) -> Answer:
    """The table's value for a key, and how many calls this instance's module state saw."""
    CALLS[0] += 1
    return Answer(key=query.key, value=TABLE.get(query.key, -1), calls=CALLS[0])
'''


def generated_name(isolation: str, seed: int) -> str:
    return f"gen{seed % 10000:04d}-{isolation}"


def write_generated_app(folder: Path, *, isolation: str, seed: int) -> tuple[Path, str]:
    """Write the generated package under ``folder``; its path and its app's name."""
    name = generated_name(isolation, seed)
    package = folder / f"gen{seed % 10000:04d}_{isolation}"
    (package / "data").mkdir(parents=True, exist_ok=True)
    rand = random.Random(seed)
    table = {f"k{n}": rand.randrange(10**6) for n in range(256)}
    (package / "data" / "table.json").write_text(json.dumps(table))
    (package / "__init__.py").write_text(
        textwrap.dedent('''\
        """The generated app's package."""

        from .app import app

        __all__ = ["app"]
        ''')
    )
    (package / "app.py").write_text(
        GENERATED_MODULE.format(seed=seed, name=name, isolation=isolation)
    )
    return package, name


def vm_rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def import_what_serve_imports() -> None:
    """The modules a running ``thaw serve --backbone nats`` has imported (roughly)."""
    import uvloop  # noqa: F401

    import thaw.adapters.cli.command
    import thaw.adapters.cli.serving
    import thaw.adapters.http.server
    import thaw.adapters.nats
    import thaw.adapters.process.pool
    import thaw.host._host  # noqa: F401


def fork_floor(snapshot: str, pad_to_kib: int) -> int:
    from thaw.snapshots._revision import load_revision

    import_what_serve_imports()
    revision = load_revision(snapshot)
    before = vm_rss_kib()
    padding = bytearray(max(pad_to_kib - before, 0) * 1024)
    for offset in range(0, len(padding), 4096):  # touch every page: resident, like a heap
        padding[offset] = 1
    gc.freeze()  # the collector must not run inside a timed fork
    print(json.dumps({"ready": True, "rss_kib": vm_rss_kib(), "unpadded_kib": before}), flush=True)
    for line in sys.stdin:
        timings = []
        for _ in range(int(line)):
            started = time.perf_counter_ns()
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            timings.append(time.perf_counter_ns() - started)
        print(json.dumps({"ns": timings, "rss_kib": vm_rss_kib()}), flush=True)
    del revision, padding
    return 0


def variants(snapshot: bytes, count: int) -> list[bytes]:
    """``count`` snapshots of the same app whose revision ids differ (see the docstring)."""
    import msgspec

    from thaw.snapshots._format import decode_snapshot, encode_snapshot, revision_id

    payload = decode_snapshot(snapshot)
    blobs = []
    for n in range(count):
        modules = [
            msgspec.structs.replace(m, source=m.source + f"\n# variant {n}\n".encode())
            for m in payload.modules
        ]
        rid = revision_id(payload.manifest, modules, payload.data)
        blobs.append(
            encode_snapshot(msgspec.structs.replace(payload, revision=rid, modules=modules))
        )
    return blobs


async def _memory(snapshot: str, count: int, capability: str, data: bytes) -> dict[str, object]:
    from thaw._event import Event
    from thaw.host._router import RevisionRouter
    from thaw.snapshots._revision import load_revision

    import_what_serve_imports()
    with open(snapshot, "rb") as handle:  # noqa: ASYNC230 - before anything runs
        blobs = variants(handle.read(), count)
    data_dir = tempfile.mkdtemp(prefix="thaw-bench-memory-")
    router = RevisionRouter(idle_timeout=300.0)
    gc.collect()
    steps: dict[str, int] = {"imported": vm_rss_kib()}
    revisions = [load_revision(blob, data_dir=data_dir) for blob in blobs]
    del blobs
    for revision in revisions:
        router.add(revision, weight=0)
    gc.collect()
    steps["loaded"] = vm_rss_kib()
    for loaded in router.loaded.values():
        await loaded.warm()
    gc.collect()
    steps["thawed"] = vm_rss_kib()
    for n, loaded in enumerate(router.loaded.values()):
        outcome = await loaded.invoke(capability, Event(id=f"memory-{n}", data=data))
        if type(outcome).__name__ != "Ok":
            raise RuntimeError(f"{capability} answered {outcome!r}")
    gc.collect()
    steps["invoked"] = vm_rss_kib()
    await router.stop_instances()
    gc.collect()
    steps["scaled_to_zero"] = vm_rss_kib()
    live = sum(loaded.live for loaded in router.loaded.values())
    return {"count": len(router.loaded), "live_after": live, "rss_kib": steps}


def main(argv: list[str]) -> int:
    if argv[:1] == ["fork-floor"] and len(argv) == 3:
        return fork_floor(argv[1], int(argv[2]))
    if argv[:1] == ["memory"] and len(argv) == 5:
        import anyio

        result = anyio.run(_memory, argv[1], int(argv[2]), argv[3], argv[4].encode())
        print(json.dumps(result), flush=True)
        return 0
    print(
        "usage: _coldstart_host_child.py fork-floor SNAPSHOT PAD_TO_KIB | "
        "memory SNAPSHOT COUNT CAPABILITY PAYLOAD",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main(sys.argv[1:]))

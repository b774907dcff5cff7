"""``thaw serve --consumer``, ``--bind-stream``, ``--max-body-cap`` and what ``--workers`` forwards.

Pure parts first (the entry grammar, hostile input with hypothesis: every bad value is
one line naming the flag, never the value), then the command line (exit 2 before
anything starts, for flags and ``THAW_*`` variables alike), then ``thaw serve`` as a
child on a real nats-server: the settings reach the JetStream consumer, a bound stream
is left as its owner made it, ``--workers`` children get the settings and the sync
pool sizes, and a route over ``--max-body-cap`` stops the start while a body over a
route's ``max_body`` gets 413.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import nats
import nats.js.api
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats_fixtures import end_process, nats_server, wait_line  # noqa: F401

from thaw import Access, App, stream
from thaw.adapters.cli import command as cli
from thaw.adapters.cli.serve_options import (
    BIND_STREAMS_ENV,
    CONSUMERS_ENV,
    MAX_BODY_CAP_ENV,
    ConsumerEntry,
    ServeOptionError,
    check_bind_streams,
    parse_consumer,
    plan_to_apply,
    prepare_apps,
    resolve_serve_options,
    settings_for,
)
from thaw.adapters.cli.supervise import worker_command
from thaw.adapters.nats import EmbeddedServer
from thaw.host._provision import ConsumerSettings

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0  # bound on a start: a snapshot build in a child Python, then the host(s)

APP_SOURCE = """
import os

from thaw import App, Context, http, stream

app = App("{name}")


@app.capability(stream("{prefix}.take"))
async def take(payload: dict) -> None:
    return None


@app.capability(stream("{prefix}.foreign", stream="{foreign}"))
async def foreign(payload: dict) -> None:
    return None


@app.capability(http("PUT", "/blob", max_body=2 * 1024 * 1024))
async def blob(data: bytes) -> dict:
    return {{"size": len(data)}}


@app.capability(http("GET", "/pid"))
async def pid(ctx: Context) -> dict:
    return {{"pid": await ctx.run_sync(os.getpid, process=True)}}
"""


class Served:
    def __init__(self, tmp_path: Path) -> None:
        self.prefix = f"c{uuid.uuid4().hex[:10]}"
        self.name = self.prefix
        self.foreign = f"{self.prefix.upper()}_FOREIGN"
        self.folder = tmp_path
        self.app = tmp_path / "app.py"
        self.app.write_text(
            APP_SOURCE.format(name=self.name, prefix=self.prefix, foreign=self.foreign)
        )
        self.stderr = tmp_path / "stderr.log"


@pytest.fixture
def served(tmp_path: Path) -> Served:
    return Served(tmp_path)


# -- the entry grammar -----------------------------------------------------------------


def test_an_entry_takes_every_key_and_round_trips() -> None:
    entry = parse_consumer("take:ack_wait=2.5,max_ack_pending=64,deliver=new", where="x")
    assert entry == ConsumerEntry(
        "take", ConsumerSettings(ack_wait=2.5, max_ack_pending=64, deliver="new")
    )
    assert parse_consumer(entry.flag(), where="x") == entry
    qualified = parse_consumer("shop/take: deliver = all ", where="x")
    assert (qualified.app, qualified.capability, qualified.settings.deliver) == (
        "shop",
        "take",
        "all",
    )
    assert parse_consumer(qualified.flag(), where="x") == qualified


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "[APP/]CAPABILITY"),
        ("take", "':'"),
        (":ack_wait=3", "capability name"),
        ("9take:ack_wait=3", "capability name"),
        ("a/b/c:ack_wait=3", "capability name"),
        ("take:", "needs =VALUE"),
        ("take:ack_wait", "needs =VALUE"),
        ("take:ackwait=3", "'ackwait' is not one of"),
        ("take:ACK_WAIT=3", "a key is not one of"),
        ("take:ack_wait=3,ack_wait=4", "given twice"),
        ("take:ack_wait=0", "ack_wait must be"),
        ("take:ack_wait=-1", "ack_wait must be"),
        ("take:ack_wait=0.01", "ack_wait must be"),
        ("take:ack_wait=86401", "ack_wait must be"),
        ("take:ack_wait=nan", "ack_wait must be"),
        ("take:ack_wait=inf", "ack_wait must be"),
        ("take:ack_wait=1e3", "ack_wait must be"),
        ("take:ack_wait=1_000", "ack_wait must be"),
        ("take:ack_wait=", "ack_wait must be"),
        ("take:ack_wait=\u0663", "ack_wait must be"),  # an Arabic-Indic digit
        ("take:max_ack_pending=0", "max_ack_pending must be"),
        ("take:max_ack_pending=1000001", "max_ack_pending must be"),
        ("take:max_ack_pending=2.5", "max_ack_pending must be"),
        ("take:max_ack_pending=-3", "max_ack_pending must be"),
        ("take:max_ack_pending=" + "9" * 400, "[APP/]CAPABILITY"),  # too long an entry
        ("take:deliver=last", "deliver must be all or new"),
        ("take:deliver=", "deliver must be all or new"),
        ("take:deliver=ALL", "deliver must be all or new"),
    ],
)
def test_bad_entries_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ServeOptionError) as caught:
        parse_consumer(text, where="--consumer entry 1")
    message = str(caught.value)
    assert says in message and "\n" not in message
    assert message.startswith("--consumer entry 1")


SECRET = "S3cr3tV4lu3"


@settings(max_examples=300, deadline=None)
@given(
    key=st.sampled_from(["ack_wait", "max_ack_pending", "deliver", "bogus", "Ack"]),
    noise=st.text(max_size=40),
)
def test_a_value_is_never_repeated_in_an_error(key: str, noise: str) -> None:
    # A secret pasted into the wrong flag stays out of the terminal and the logs.
    text = f"take:{key}={SECRET}{noise}"
    with pytest.raises(ServeOptionError) as caught:
        parse_consumer(text, where="--consumer entry 1")
    assert SECRET not in str(caught.value) and "\n" not in str(caught.value)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_an_entry_or_one_clear_line(text: str) -> None:
    try:
        entry = parse_consumer(text, where="--consumer entry 1")
    except ServeOptionError as exc:
        message = str(exc)
    else:
        assert parse_consumer(entry.flag(), where="x") == entry
        return
    assert "\n" not in message and len(message) < 300


@settings(max_examples=200, deadline=None)
@given(
    ack_wait=st.one_of(st.none(), st.floats(0.1, 86400).map(lambda x: round(x, 3))),
    pending=st.one_of(st.none(), st.integers(1, 1_000_000)),
    deliver=st.sampled_from([None, "all", "new"]),
)
def test_every_valid_setting_parses(
    ack_wait: float | None, pending: int | None, deliver: str | None
) -> None:
    if ack_wait is None and pending is None and deliver is None:
        return
    entry = ConsumerEntry(
        "take", ConsumerSettings(ack_wait=ack_wait, max_ack_pending=pending, deliver=deliver)
    )
    assert parse_consumer(entry.flag(), where="x") == entry


def namespace(**given: Any) -> argparse.Namespace:
    values: dict[str, Any] = {
        "consumer": None,
        "bind_stream": None,
        "max_body_cap": None,
        "max_body": None,
        "sync_threads": 8,
        "sync_processes": 0,
    }
    values.update(given)
    return argparse.Namespace(**values)


def test_flags_win_over_the_environment_per_capability() -> None:
    args = namespace(consumer=["take:ack_wait=5"], bind_stream=["B", "A"], max_body_cap="2MiB")
    environ = {
        CONSUMERS_ENV: "take:ack_wait=9; other:deliver=new ;",
        BIND_STREAMS_ENV: "A, C",
        MAX_BODY_CAP_ENV: "1",
    }
    resolve_serve_options(args, environ)
    assert {t: e.settings for t, e in args.consumers.items()} == {
        "take": ConsumerSettings(ack_wait=5),
        "other": ConsumerSettings(deliver="new"),
    }
    assert args.bind_streams == ["A", "C", "B"]
    assert args.max_body_cap == 2 * 1024 * 1024
    resolve_serve_options(namespace(), {MAX_BODY_CAP_ENV: "3 KiB"})


@pytest.mark.parametrize(
    ("given", "environ", "says"),
    [
        ({}, {CONSUMERS_ENV: "take:ack_wait=3;take:deliver=new"}, "THAW_CONSUMERS entry 2"),
        ({}, {CONSUMERS_ENV: "take:ack_wait=" + SECRET}, "THAW_CONSUMERS entry 1"),
        ({}, {CONSUMERS_ENV: "x:deliver=new;" * 2000}, "THAW_CONSUMERS: longer"),
        ({}, {BIND_STREAMS_ENV: "OK,not ok"}, "THAW_BIND_STREAMS entry 2"),
        ({}, {BIND_STREAMS_ENV: "A." + SECRET}, "THAW_BIND_STREAMS entry 1"),
        ({}, {MAX_BODY_CAP_ENV: SECRET}, "THAW_MAX_BODY_CAP"),
        ({}, {MAX_BODY_CAP_ENV: "5GiB"}, "THAW_MAX_BODY_CAP"),
        ({}, {MAX_BODY_CAP_ENV: "1" + " " * 70 + "x"}, "THAW_MAX_BODY_CAP"),
        ({"bind_stream": ["*"]}, {}, "--bind-stream entry 1"),
        ({"bind_stream": [""]}, {}, "--bind-stream entry 1"),
        ({"bind_stream": ["S"] * 300}, {}, "at most 256"),
        ({"consumer": ["t:deliver=new"] * 300}, {}, "at most 256"),
        ({"max_body_cap": "-1"}, {}, "--max-body-cap"),
        ({"max_body_cap": "1.5MiB"}, {}, "--max-body-cap"),
        ({"max_body_cap": "1TiB"}, {}, "--max-body-cap"),
        ({"max_body_cap": ""}, {}, "--max-body-cap"),
        ({"max_body": 2 << 20, "max_body_cap": "1MiB"}, {}, "--max-body"),
        ({"max_body": 65 << 20}, {}, "--max-body"),  # above the default cap, 64 MiB
        ({"sync_threads": 0}, {}, "--sync-threads"),
        ({"sync_threads": 10**6}, {}, "--sync-threads"),
        ({"sync_processes": -1}, {}, "--sync-processes"),
    ],
)
def test_bad_settings_are_one_line(
    given: dict[str, Any], environ: dict[str, str], says: str
) -> None:
    with pytest.raises(ServeOptionError) as caught:
        resolve_serve_options(namespace(**given), environ)
    message = str(caught.value)
    assert says in message and "\n" not in message and SECRET not in message


def test_workers_are_given_the_settings_and_the_sync_pool() -> None:
    args = namespace(
        consumer=["shop/take:max_ack_pending=13,ack_wait=7", "other:deliver=new"],
        bind_stream=["ORDERS"],
        max_body_cap="3MiB",
        sync_threads=3,
        sync_processes=2,
        app=["app.snap"],
        state_dir=".thaw",
        drain_timeout=10.0,
        idle_timeout=None,
        http_host="127.0.0.1",
        ack_wait=None,
        max_body=None,
        no_http=False,
        access_log=True,
        trust_keys=["keys/ops.pub"],
    )
    resolve_serve_options(args, {})
    command = worker_command(args, kind="memory", url=None, port=8123)
    pairs = list(itertools.pairwise(command))
    assert ("--sync-threads", "3") in pairs and ("--sync-processes", "2") in pairs
    assert ("--consumer", "shop/take:ack_wait=7.0,max_ack_pending=13") in pairs
    assert ("--consumer", "other:deliver=new") in pairs
    assert ("--bind-stream", "ORDERS") in pairs
    assert ("--max-body-cap", str(3 << 20)) in pairs
    assert ("--trust-key", os.path.abspath("keys/ops.pub")) in pairs  # a worker verifies too
    # What the worker parses back is what the parent resolved.
    worker = cli._parser().parse_args(command[command.index("serve") :])
    resolve_serve_options(worker, {})
    assert worker.consumers == args.consumers and worker.bind_streams == ["ORDERS"]
    assert (worker.sync_threads, worker.sync_processes) == (3, 2)


# -- the command line --------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "flags",
    [
        ["--consumer", f"take:ack_wait={SECRET}"],
        ["--consumer", "take:ack_wait=5", "--consumer", "take:deliver=new"],
        ["--consumer", f"take:{SECRET}=1"],
        ["--bind-stream", f"{SECRET}.x"],
        ["--max-body-cap", SECRET],
        ["--sync-threads", "0"],
    ],
)
def test_bad_flags_stop_before_the_app_is_built(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: list[str]
) -> None:
    missing = str(tmp_path / "not-built.py")  # never read: the flags are refused first
    code, err = run_cli(capsys, "serve", missing, "--backbone", "memory", *flags)
    assert code == cli.EXIT_USAGE
    assert err.count("\n") == 1 and err.startswith("thaw serve: ") and SECRET not in err


def test_a_bad_variable_stops_the_start(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONSUMERS_ENV, f"take:max_ack_pending={SECRET}")
    code, err = run_cli(capsys, "serve", str(tmp_path / "x.py"), "--backbone", "memory")
    assert code == cli.EXIT_USAGE
    assert err.count("\n") == 1 and CONSUMERS_ENV in err and SECRET not in err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--consumer", "nope:ack_wait=5"], "no served app has a capability nope"),
        (["--consumer", "blob:ack_wait=5"], "no served app has a capability blob"),
        (["--consumer", "other/take:ack_wait=5"], "app other is not served"),
        (["--bind-stream", "ELSEWHERE"], "no served app has a stream trigger on that stream"),
        (["--max-body-cap", "1MiB"], "declares max_body=2097152, above"),
    ],
)
def test_settings_the_app_cannot_take_are_exit_2(
    capsys: pytest.CaptureFixture[str], served: Served, flags: list[str], says: str
) -> None:
    state = str(served.folder / "state")
    code, err = run_cli(
        capsys, "serve", str(served.app), "--backbone", "memory", "--state-dir", state, *flags
    )
    assert code == cli.EXIT_USAGE, err
    assert says in err and err.strip().splitlines()[-1].startswith("thaw serve: ")
    assert "Traceback" not in err


def test_an_override_may_lower_an_ack_wait_the_trigger_declares() -> None:
    # The host is given the adjusted plan (open_host(plan=...)): its workers beat
    # in-progress acks for the AckWait the consumer really has, not the declared one.
    app = App(f"d{uuid.uuid4().hex[:8]}")

    @app.capability(stream("declared.take", ack_wait=60))
    async def take(payload: dict[str, int]) -> None:
        return None

    args = argparse.Namespace(
        ack_wait=None,
        consumers={"take": parse_consumer("take:ack_wait=5", where="--consumer")},
        bind_streams=[],
        max_body_cap=None,
    )
    prepared = prepare_apps([app], args)
    (consumer,) = prepared[app.name].consumers
    assert consumer.config.ack_wait == 5.0


# -- thaw serve on a real nats-server ------------------------------------------------------


@contextmanager
def serving(served: Served, *flags: str) -> Iterator[subprocess.Popen[str]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop(CONSUMERS_ENV, None)
    with served.stderr.open("a") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "thaw.adapters.cli", "serve", str(served.app), *flags],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            cwd=served.folder,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(WAIT)
            except subprocess.TimeoutExpired:
                pass
        end_process(process)


def consumer_config(url: str, stream: str, durable: str) -> Any:
    async def read() -> Any:
        client = await nats.connect(url, connect_timeout=5)
        try:
            return (await client.jsm().consumer_info(stream, durable)).config
        finally:
            await client.close()

    return anyio.run(read)


def stream_config(url: str, stream: str) -> Any:
    async def read() -> Any:
        client = await nats.connect(url, connect_timeout=5)
        try:
            return (await client.jsm().stream_info(stream)).config
        finally:
            await client.close()

    return anyio.run(read)


def run_on(url: str, work: Any) -> Any:
    async def go() -> Any:
        client = await nats.connect(url, connect_timeout=5)
        try:
            return await work(client.jsm())
        finally:
            await client.close()

    return anyio.run(go)


@pytest.fixture
def cleanup(nats_server: EmbeddedServer) -> Iterator[None]:  # noqa: F811
    async def names(jsm: Any) -> set[str]:
        return {info.config.name for info in await jsm.streams_info()}

    before = run_on(nats_server.url, names)
    yield

    async def delete(jsm: Any) -> None:
        for name in await names(jsm) - before:
            await jsm.delete_stream(name)

    run_on(nats_server.url, delete)


def test_consumer_settings_reach_the_jetstream_consumer(
    served: Served,
    nats_server: EmbeddedServer,  # noqa: F811
    cleanup: None,
) -> None:
    flags = ["--nats", nats_server.url, "--no-http"]
    flags += ["--consumer", "take:ack_wait=7,max_ack_pending=13,deliver=new"]
    with serving(served, *flags) as process:
        wait_line(process, "thaw: serving app", limit=WAIT)
        config = consumer_config(nats_server.url, served.name.upper(), f"{served.name}-take")
        assert (config.ack_wait, config.max_ack_pending) == (7.0, 13)
        assert config.deliver_policy == nats.js.api.DeliverPolicy.NEW
        other = consumer_config(nats_server.url, served.foreign, f"{served.name}-foreign")
        assert (other.ack_wait, other.max_ack_pending) == (30.0, 1000)  # untouched


def test_a_bound_stream_is_left_as_its_owner_made_it(
    served: Served,
    nats_server: EmbeddedServer,  # noqa: F811
    cleanup: None,
) -> None:
    async def create(jsm: Any) -> None:
        await jsm.add_stream(
            nats.js.api.StreamConfig(
                name=served.foreign,
                subjects=[f"{served.prefix}.foreign", f"{served.prefix}.audit"],
                duplicate_window=600.0,
                max_age=3600.0,
            )
        )

    run_on(nats_server.url, create)
    before = stream_config(nats_server.url, served.foreign).as_dict()
    flags = ["--nats", nats_server.url, "--no-http"]
    # Without --bind-stream the host asks for its own definition and is refused.
    with serving(served, *flags) as process:
        assert process.wait(WAIT) != 0
    assert "definition_conflict" in served.stderr.read_text()
    with serving(served, *flags, "--bind-stream", served.foreign) as process:
        wait_line(process, "thaw: serving app", limit=WAIT)
        config = consumer_config(nats_server.url, served.foreign, f"{served.name}-foreign")
        assert config.filter_subject == f"{served.prefix}.foreign"
    assert stream_config(nats_server.url, served.foreign).as_dict() == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="--workers is Linux's")
def test_workers_get_the_consumer_settings_and_the_sync_pool(
    served: Served,
    nats_server: EmbeddedServer,  # noqa: F811
    cleanup: None,
) -> None:
    flags = ["--nats", nats_server.url, "--http", "0", "--workers", "2"]
    flags += ["--consumer", "take:ack_wait=9,max_ack_pending=21"]
    flags += ["--sync-threads", "3", "--sync-processes", "1"]
    with serving(served, *flags) as process:
        line = wait_line(process, "with 2 workers", limit=WAIT)
        port = int(line.split("http://127.0.0.1:")[1].split(";")[0])
        pids = [int(p) for p in line.split("worker pids: ")[1].rstrip(")\n").split(", ")]
        # Each worker provisions again: one without the settings would have put the
        # consumer back to the defaults (AckWait and MaxAckPending are updated in place).
        config = consumer_config(nats_server.url, served.name.upper(), f"{served.name}-take")
        assert (config.ack_wait, config.max_ack_pending) == (9.0, 21)
        for pid in pids:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            pairs = list(itertools.pairwise(argv))
            assert (b"--sync-threads", b"3") in pairs and (b"--sync-processes", b"1") in pairs
            assert (b"--consumer", b"take:ack_wait=9.0,max_ack_pending=21") in pairs
        # A worker has a process pool (--sync-processes reached it): run_sync(process=True).
        status, body = fetch(port, "GET", "/pid")
        assert status == 200, body
        assert int(body.split(b":")[1].rstrip(b"}")) not in [process.pid, *pids]


def fetch(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_max_body_cap_lets_a_route_take_its_own_max_body(served: Served) -> None:
    flags = ["--backbone", "memory", "--http", "0", "--max-body-cap", "4MiB"]
    with serving(served, *flags) as process:
        line = wait_line(process, "thaw: serving app", limit=WAIT)
        port = int(line.split("http://127.0.0.1:")[1].split(";")[0])
        status, body = fetch(port, "PUT", "/blob", b"x" * (1536 * 1024))  # above 1 MiB
        assert (status, body) == (200, b'{"size":1572864}')
        status, _ = fetch(port, "PUT", "/blob", b"x" * (2 * 1024 * 1024 + 1))
        assert status == 413


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from([CONSUMERS_ENV, BIND_STREAMS_ENV, MAX_BODY_CAP_ENV]),
    text=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=200),
)
def test_any_variable_is_taken_or_refused_in_one_line(name: str, text: str) -> None:
    environ = {name: f"{text}{SECRET}"}
    try:
        resolve_serve_options(namespace(), environ)
    except ServeOptionError as exc:
        message = str(exc)
    else:  # a secret that happens to be a valid stream name, say, is simply taken
        return
    assert "\n" not in message and SECRET not in message and name in message


@pytest.mark.parametrize("text", ["take:ack_wait=\udcff", "t\udcffke:deliver=new", "take:\x00=1"])
def test_undecodable_and_control_bytes_are_refused(text: str) -> None:
    with pytest.raises(ServeOptionError) as caught:
        parse_consumer(text, where="--consumer entry 1")
    assert "\udcff" not in str(caught.value) and "\x00" not in str(caught.value)


def two_apps() -> list[App]:
    apps = []
    for name in ("shop", "billing"):
        app = App(name)

        @app.capability(stream(f"{name}.take"))
        async def take(payload: dict) -> None:
            return None

        @app.capability(
            stream(f"{name}.orders.*", stream=f"{name.upper()}_ORDERS"),
            access=Access(publishes=(f"{name}.orders.done",)),
        )
        async def orders(payload: dict) -> None:
            return None

        apps.append(app)
    return apps


def test_an_app_qualified_entry_wins_over_the_plain_one() -> None:
    args = namespace(consumer=["take:ack_wait=5", "billing/take:ack_wait=9"])
    resolve_serve_options(args, {})
    chosen = settings_for(two_apps(), args.consumers)
    assert chosen == {
        "shop": {"take": ConsumerSettings(ack_wait=5)},
        "billing": {"take": ConsumerSettings(ack_wait=9)},
    }


def test_a_bound_stream_is_checked_for_every_subject_instead_of_defined() -> None:
    shop = two_apps()[0]
    plan = plan_to_apply(shop, ack_wait=None, settings={}, bind_streams=["SHOP_ORDERS"])
    assert "SHOP_ORDERS" not in {s.name for s in plan.streams}
    # What the app publishes there (shop.orders.done) is inside what it consumes.
    assert [(b.stream, b.subject, b.capability) for b in plan.bound] == [
        ("SHOP_ORDERS", "shop.orders.*", "orders")
    ]
    consumers = {c.capability: c.config for c in plan.consumers}
    assert consumers["orders"].filter_subject == "shop.orders.*"
    with pytest.raises(ServeOptionError, match="no served app has a stream trigger"):
        check_bind_streams([shop], ["BILLING_ORDERS"])

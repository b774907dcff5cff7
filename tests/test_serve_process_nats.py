"""``thaw serve`` on NATS with ``isolation="process"``: each forked instance connects on
its own (ctx.kv works there), a crash answers 503 and the next request forks a new one,
and the host stops cleanly (each instance closed its connection)."""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path

from nats_fixtures import nats_server, thaw_serve  # noqa: F401

from thaw.adapters.nats.server import EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0

APP = """
import os

from thaw import Access, App, Context, http

app = App("isolated{suffix}")


@app.capability(http("GET", "/pid"), isolation="process", access=Access(buckets=("iso{suffix}",)))
async def pid(ctx: Context) -> dict:
    bucket = await ctx.kv("iso{suffix}")
    await bucket.put("last", str(os.getpid()).encode())
    entry = await bucket.get("last")
    return {{"pid": os.getpid(), "stored": entry.value.decode()}}


@app.capability(http("GET", "/crash"), isolation="process")
async def crash() -> None:
    os._exit(1)
"""


def get(port: int, path: str) -> tuple[int, dict[str, object]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_process_instances_connect_crash_and_stop_cleanly(
    tmp_path: Path,
    nats_server: EmbeddedServer,  # noqa: F811
) -> None:
    suffix = str(os.getpid())
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "app.py").write_text(APP.format(suffix=suffix))
    arguments = [str(tmp_path / "app"), "--url", nats_server.url, "--http", "0"]
    arguments += ["--state-dir", str(tmp_path / "s")]
    with thaw_serve(arguments, tmp_path, limit=WAIT) as (process, port):
        status, first = get(port, "/pid")
        assert status == 200 and first["pid"] != process.pid
        assert first["stored"] == str(first["pid"])  # the child reached KV on its own
        status, crashed = get(port, "/crash")
        assert status == 503 and crashed["code"] == "instance_crashed"
        status, second = get(port, "/pid")
        assert status == 200 and second["pid"] not in (first["pid"], process.pid)
    assert process.returncode == 0
    text = (tmp_path / "host.log").read_text()
    assert "error occurred during closing" not in text and "Traceback" not in text

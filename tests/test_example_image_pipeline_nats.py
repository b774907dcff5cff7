"""examples/image_pipeline end to end: ``thaw serve`` on a real nats-server, as users run it.

The test starts ``thaw serve examples/image_pipeline`` as a child process against
the session's nats-server and plays the users over real sockets: images made with
Pillow are uploaded with ``PUT /images/{name}`` (one above 1 MiB, the server's
default body limit) and put straight into the ``images`` bucket with nats-py's own
object store client (what ``nats object put`` does) and with Thaw's backbone's
object store. A subscriber on ``images.thumbnails`` waits, boundedly, for each
image's thumbnail, which must be a smaller valid JPEG in ``images_thumbs`` matching
its claim check. Poison images
(garbage bytes, a truncated file, a decompression bomb) end in the dead-letter stream
with their reason, and every message the pipeline stored is a small reference.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.to_thread
import msgspec
import nats
import pytest
from example_loader import load_example
from nats_fixtures import (  # noqa: F401
    delete_new_streams,
    nats_server,
    remove_app,
    stream_names,
    wait_line,
)
from nats_fixtures import wait_until as _wait_until
from PIL import Image
from test_example_image_pipeline import bomb, photo

from thaw import get_claim
from thaw.adapters.nats import EmbeddedServer, JetStreamBackbone
from thaw.lowlevel import list_dead_letters

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
APP, MODULES = load_example("image_pipeline")
contracts = MODULES["image_pipeline.contracts"]
WAIT = 60.0  # seconds: a bound, never a pause; Pillow on a busy 2-core VM
SMALL_MESSAGE = 1024  # bytes


def put(port: int, name: str, body: bytes) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request(
            "PUT", f"/images/{name}", body=body, headers={"Content-Type": "image/octet-stream"}
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


async def wait_until(check: Any) -> None:
    await _wait_until(check, limit=WAIT)


def start_host(url: str, folder: Path, log: IO[str]) -> subprocess.Popen[str]:
    """``thaw serve`` the example as a user would; stdout is read for its serving line."""
    command = [sys.executable, "-m", "thaw.adapters.cli", "serve"]
    command += [str(ROOT / "examples" / "image_pipeline"), "--url", url, "--http", "0"]
    command += ["--state-dir", str(folder / "state")]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=folder,
    )


class Served:
    """The ``thaw serve`` child, its HTTP port, and a connection of the test's own."""

    def __init__(self, process: subprocess.Popen[str], port: int, backbone: JetStreamBackbone):
        self.process = process
        self.port = port
        self.backbone = backbone

    async def put(self, name: str, body: bytes) -> tuple[int, dict[str, Any]]:
        return await anyio.to_thread.run_sync(put, self.port, name, body)


@pytest.fixture
async def served(
    nats_server: EmbeddedServer,  # noqa: F811
    tmp_path: Path,
) -> AsyncIterator[Served]:
    backbone = await JetStreamBackbone.connect(nats_server.url)
    before = await stream_names(backbone.client)
    log = (tmp_path / "host.log").open("w")
    process = await anyio.to_thread.run_sync(start_host, nats_server.url, tmp_path, log)
    try:
        line = await anyio.to_thread.run_sync(
            lambda: wait_line(process, "thaw: serving app", limit=WAIT)
        )
        found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert found is not None, line
        yield Served(process, int(found.group(1)), backbone)
        process.send_signal(signal.SIGTERM)
        await anyio.to_thread.run_sync(lambda: process.wait(WAIT))
        assert process.returncode == 0, (tmp_path / "host.log").read_text()[-3000:]
    finally:
        if process.poll() is None:  # only the host this test started, by its handle
            process.kill()
            process.wait(WAIT)
        if process.stdout is not None:
            process.stdout.close()
        log.close()
        await remove_app(backbone, APP)
        await delete_new_streams(nats_server, backbone, before)  # the object buckets
        await backbone.aclose()
    text = (tmp_path / "host.log").read_text()
    assert "Traceback" not in text, text[-3000:]


async def stored_messages(backbone: JetStreamBackbone, stream: str) -> list[Any]:
    jsm = backbone.client.jsm()
    info = await jsm.stream_info(stream)
    return [
        await jsm.get_msg(stream, seq)
        for seq in range(info.state.first_seq, info.state.last_seq + 1)
    ]


async def test_uploads_by_http_and_by_object_put_end_as_thumbnails_poison_as_dead_letters(
    served: Served,
    nats_server: EmbeddedServer,  # noqa: F811
) -> None:
    client = await nats.connect(nats_server.url, connect_timeout=5)
    try:
        ready: dict[str, Any] = {}

        async def collect(message: Any) -> None:
            item = msgspec.json.decode(message.data, type=contracts.ThumbnailReady)
            ready[item.name] = item

        await client.subscribe("images.thumbnails", cb=collect)
        await client.flush()

        good = {
            "cat.jpg": photo((1200, 900), format="JPEG"),
            "big.png": photo((1000, 800), format="PNG", seed=2),
            "dog.png": photo((640, 480), format="PNG", seed=3),  # nats-py object put
            "fox.jpg": photo((2000, 1000), format="JPEG", seed=4),  # nats-py object put
            "owl.jpg": photo((900, 1200), format="JPEG", seed=5),  # by Thaw's own store
        }
        assert len(good["big.png"]) > 1024 * 1024  # above thaw serve's default max body
        for name in ("cat.jpg", "big.png"):
            status, claim = await served.put(name, good[name])
            assert status == 200, claim
            assert (claim["bucket"], claim["name"], claim["size"]) == (
                "images",
                name,
                len(good[name]),
            )
        uploads = await client.jetstream().object_store("images")  # nats-py's own client
        for name in ("dog.png", "fox.jpg"):
            await uploads.put(name, good[name])
        await (await served.backbone.object_store("images")).put("owl.jpg", good["owl.jpg"])

        poison = {"garbage.jpg": b"\xff\xd8 not a JPEG at all", "cut.jpg": good["cat.jpg"][:4000]}
        for name, body in poison.items():
            status, answer = await served.put(name, body)
            assert status == 200, answer  # stored: the pipeline, not the route, judges images
        await uploads.put("bomb.png", bomb())
        expected_dead = {
            "garbage.jpg": "not_an_image",
            "cut.jpg": "image_damaged",
            "bomb.png": "image_too_large",
        }

        async def all_thumbnails() -> bool:
            return set(ready) == set(good)

        async def all_dead() -> bool:
            found = await list_dead_letters(served.backbone, app="images")
            return len(found) >= len(expected_dead)

        await wait_until(all_thumbnails)
        await wait_until(all_dead)

        thumbs = await served.backbone.object_store("images_thumbs")
        for name, original in good.items():
            item = ready[name]
            data = await get_claim(thumbs, item.thumbnail)  # there, with the claimed digest
            thumb = Image.open(io.BytesIO(data))
            thumb.load()
            width, height = Image.open(io.BytesIO(original)).size
            assert thumb.format == "JPEG" and max(thumb.size) == 128, (name, thumb.size)
            assert thumb.size[0] / thumb.size[1] == pytest.approx(width / height, rel=0.02)
            assert len(data) < len(original)

        dead = await list_dead_letters(served.backbone, app="images")
        got = {}
        for record in dead:
            name = msgspec.json.decode(record.data)["name"]
            got[name] = record.code
            assert record.capability == "resize" and name in record.message
            assert len(record.data) < SMALL_MESSAGE  # the object's record, not its bytes
        assert got == expected_dead

        messages = await stored_messages(served.backbone, "IMAGES")
        subjects = sorted(m.subject for m in messages)
        assert subjects.count("images.resized") == len(good)
        assert subjects.count("images.thumbnails") == len(good)
        assert max(len(m.data) for m in messages) < SMALL_MESSAGE, [len(m.data) for m in messages]
    finally:
        await client.close()


async def test_the_route_refuses_bad_names_empty_and_too_large_bodies(served: Served) -> None:
    for name, body, status, code in [
        (".hidden.png", b"x", 422, "image_name_invalid"),
        ("empty.png", b"", 422, "image_empty"),
        ("huge.png", b"\0" * (8 * 1024 * 1024 + 1), 413, None),
    ]:
        got, answer = await served.put(name, body)
        assert got == status, (name, answer)
        if code is not None:
            assert answer["code"] == code
    info = await served.backbone.client.jsm().stream_info("OBJ_images")
    assert info.state.messages == 0

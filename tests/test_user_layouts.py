"""Apps laid out as users lay them out: their own ``adapters`` and ``runtime`` names stay theirs.

Thaw installs as ``thaw`` only, so an app with a hexagonal layout (an ``adapters/``
package of its own) or a module named ``runtime`` is served by ``thaw serve`` as is.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
from pathlib import Path

import anyio
import pytest

pytestmark = pytest.mark.anyio

WAIT = 60.0  # seconds; a bound on a child's start-up on a loaded 2-core machine

APP = """
import msgspec
from thaw import App, http

import runtime  # the app's own module, not Thaw
from adapters.pricing import price_of  # the app's own package, not Thaw's

app = App("shop")
SEEN: list[str] = []


class Quote(msgspec.Struct):
    sku: str
    qty: int = 1


@app.capability(http("POST", "/quote"))
async def quote(request: Quote) -> dict:
    SEEN.append(request.sku)
    total = price_of(request.sku) * request.qty
    return {"total": total, "seen": len(SEEN), "owner": runtime.OWNER}
"""


def write_app(root: Path) -> Path:
    (root / "adapters").mkdir(parents=True)
    (root / "adapters" / "__init__.py").write_text('"""The app\'s own adapters."""\n')
    (root / "adapters" / "pricing.py").write_text(
        "import json, pathlib\n"
        "PRICES = json.loads((pathlib.Path(__file__).parent / 'prices.json').read_text())\n"
        "def price_of(sku: str) -> int:\n    return PRICES[sku]\n"
    )
    (root / "adapters" / "prices.json").write_text('{"apple": 3, "pear": 5}')
    (root / "runtime.py").write_text("OWNER = 'the app'\n")
    (root / "app.py").write_text(APP)
    return root / "app.py"


def post(port: int, path: str, body: bytes) -> tuple[int, dict[str, object]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request("POST", path, body=body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


async def test_an_app_with_its_own_adapters_package_serves_http(tmp_path: Path) -> None:
    app = write_app(tmp_path / "shop")
    command = [sys.executable, "-m", "thaw.adapters.cli", "serve", str(app), "--http", "0"]
    command += ["--backbone", "memory"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    async with await anyio.open_process(command, cwd=app.parent, env=env) as process:
        try:
            assert process.stdout is not None
            seen = b""
            with anyio.fail_after(WAIT):
                while b"http on http://127.0.0.1:" not in seen or not seen.endswith(b"\n"):
                    chunk = await process.stdout.receive()
                    seen += chunk
            line = seen.decode()
            assert "http triggers not served" not in line
            port = int(line.split("http on http://127.0.0.1:")[1].split(";")[0])
            status, body = await anyio.to_thread.run_sync(
                post, port, "/quote", b'{"sku": "pear", "qty": 2}'
            )
            assert (status, body) == (200, {"total": 10, "seen": 1, "owner": "the app"})
            status, body = await anyio.to_thread.run_sync(post, port, "/quote", b'{"sku": 3}')
            assert status == 422 and body["code"] == "contract_invalid"
        finally:
            process.terminate()
            with anyio.fail_after(WAIT):
                await process.wait()

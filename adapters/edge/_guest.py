"""The guest half of the edge host: runs inside Pyodide (and, for tests, in CPython).

``open_edge(app)`` opens the app the way ``thaw serve`` does (``open_host`` on a
backbone, MemoryBackbone by default: provisioning, stream workers, schedules,
on_start/on_stop) and answers HTTP requests through ``thaw.adapters.http``'s
transport-free ``HttpService``: the same routing, contract decoding and problem
details as the native server. Nothing here touches a socket; the JavaScript
host turns a fetch ``Request`` into ``handle(method, target, headers, body)``
and the returned ``EdgeResponse`` into a fetch ``Response``.

``EdgeRuntime`` is what the JavaScript host holds: Pyodide has no main task to
own the host's task group, so the runtime owns one task that keeps
``open_edge`` open, and ``stop()`` ends it and waits for it (errors propagate
there, and ``handle`` answers 503 ``not_ready`` once it has died).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import sysconfig
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgspec

from thaw import App
from thaw.adapters.http._wire import Request, Response, refusal
from thaw.adapters.http.config import HttpConfig
from thaw.adapters.http.service import HttpService
from thaw.lowlevel import Backbone, MemoryBackbone, load_app, open_host

__all__ = [
    "EdgeResponse",
    "EdgeRuntime",
    "EdgeService",
    "build_snapshot_bytes",
    "open_edge",
    "preloadable_modules",
    "preloadable_site_modules",
]

_log = logging.getLogger("thaw.edge")
_NO_BODY = frozenset({204, 304})


class EdgeResponse(msgspec.Struct, frozen=True, array_like=True):
    """What the JavaScript host turns into a fetch ``Response``."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class EdgeService:
    """Answers requests for one opened app (build it with ``open_edge``)."""

    def __init__(self, service: HttpService, *, config: HttpConfig) -> None:
        self._service = service
        self._config = config

    async def handle(
        self, method: str, target: str, headers: Sequence[Sequence[str]], body: bytes
    ) -> EdgeResponse:
        """One request; ``target`` is the path (still percent-encoded) and query."""
        path, _, query = target.partition("?")
        fields: dict[str, str] = {}
        for name, value in headers:
            key = name.lower()
            fields[key] = f"{fields[key]}, {value}" if key in fields else value
        request = Request(
            method.upper(), target, path, query, "1.1", fields, True, self._config.max_body
        )
        try:
            response = self._service.check(request)
            if response is None:
                if len(body) > request.max_body:
                    response = refusal(
                        "payload_too_large",
                        f"the body has {len(body)} bytes; this route accepts at most "
                        f"{request.max_body}",
                    )
                else:
                    request.body = body
                    response = await self._service.handle(request)
                    if response.stream is not None:  # the edge answers whole bodies
                        chunks = [chunk async for chunk in response.stream]
                        response.body, response.stream = b"".join(chunks), None
        except Exception:  # a bug in a layer below: answer, log, keep serving
            _log.exception("edge request %s %s failed", method, target[:200])
            response = refusal("internal_error", "the edge host failed to answer")
        return _encode(response, head=request.method == "HEAD")


@asynccontextmanager
async def open_edge(
    app: App,
    *,
    backbone: Backbone | None = None,
    config: HttpConfig | None = None,
    provision: bool = True,
) -> AsyncIterator[EdgeService]:
    """Open ``app`` on ``backbone`` (a new MemoryBackbone by default) for HTTP requests.

    Its ``stream`` triggers are consumed too (``open_host``'s workers); ``provision``
    False leaves streams, consumers and buckets as they are (they must exist).
    """
    config = config or HttpConfig()
    async with open_host(app, backbone or MemoryBackbone(), provision=provision) as host:
        yield EdgeService(HttpService(host.invoker, config=config), config=config)


class EdgeRuntime:
    """An opened app held by the JavaScript host: ``await start()``, ``handle``, ``stop()``."""

    def __init__(self, app: App, *, backbone: Backbone | None = None) -> None:
        self.app = app
        self._backbone = backbone
        self._provision = backbone is None
        self._service: EdgeService | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @classmethod
    def load(cls, target: str, nats: Any = None) -> EdgeRuntime:
        """The app at ``target``: a snapshot (``*.snap``), a file, a folder or ``module:name``.

        A snapshot built by another Python is refused by ``load_revision`` with a
        message naming both Pythons (bytecode is version-specific). ``nats``, the
        JavaScript host's ``NatsBridge``, puts the app on JetStream (``JsBackbone``):
        its stream triggers are consumed, its KV and idempotency records live there,
        and nothing is provisioned (``start`` fails naming ``thaw provision``).
        """
        backbone: Backbone | None = None
        if nats is not None:
            from thaw.adapters.edge._jsbackbone import JsBackbone

            backbone = JsBackbone(nats)
        if target.endswith(".snap"):
            from thaw.snapshots._revision import load_revision

            return cls(load_revision(target).app, backbone=backbone)
        return cls(load_app(target), backbone=backbone)

    async def start(self) -> None:
        ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.ensure_future(self._serve(ready))
        await asyncio.wait([ready, self._task], return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            self._task.result()  # raises why the app could not start

    async def _serve(self, ready: asyncio.Future[None]) -> None:
        from thaw.adapters.edge._jsbackbone import JsBackbone, check_provisioned

        if isinstance(self._backbone, JsBackbone):
            await check_provisioned(self.app, self._backbone)
        async with open_edge(
            self.app, backbone=self._backbone, provision=self._provision
        ) as service:
            self._service = service
            ready.set_result(None)
            try:
                await self._stopping.wait()
            finally:
                self._service = None

    async def handle(
        self, method: str, target: str, headers: Sequence[Sequence[str]], body: bytes
    ) -> EdgeResponse:
        service = self._service
        if service is None:
            return _encode(refusal("not_ready", "the app is not running"), head=False)
        return await service.handle(method, target, headers, body)

    async def handle_js(self, method: str, target: str, headers: Any, body: Any) -> Any:
        """``handle`` with the JavaScript host's values (JsProxy array, Uint8Array or None)."""
        pairs = headers.to_py() if hasattr(headers, "to_py") else headers
        data = body.to_bytes() if hasattr(body, "to_bytes") else bytes(body or b"")
        answer = await self.handle(method, target, pairs, data)
        return (answer.status, answer.headers, answer.body)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task


def preloadable_modules() -> list[str]:
    """The loaded standard-library modules a memory snapshot may hold, in load order.

    Left out: compiled extension modules loaded from files (a Pyodide memory
    snapshot taken after msgspec's was loaded crashes on restore, "table index is
    out of bounds"), and anything from site-packages, Thaw or the app, whose files
    are not part of the snapshot and are installed again after the restore.
    """
    # Pyodide's standard library is a zip (/lib/python314.zip); CPython's a folder.
    stdlib = os.path.dirname(os.__file__) + os.sep
    site = sysconfig.get_path("purelib")
    names: list[str] = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if name == "__main__" or name.startswith(("_pyodide", "pyodide", "js")):
            continue
        if file is None:
            if name in sys.builtin_module_names:
                names.append(name)
            continue
        if file.endswith(".py") and file.startswith(stdlib) and not file.startswith(site):
            names.append(name)
    return names


def preloadable_site_modules() -> list[str]:
    """The loaded third-party pure-Python modules a memory snapshot may hold, in load order.

    Modules from site-packages whose file is Python source, except those of a
    distribution that has a compiled extension module (msgspec: see
    ``preloadable_modules``). The snapshot keeps the wheels' files too, so these
    modules' files exist again after a restore.
    """
    site = os.path.realpath(sysconfig.get_path("purelib")) + os.sep  # Pyodide's has "//lib"
    loaded = [
        (name, getattr(module, "__file__", None) or "")
        for name, module in list(sys.modules.items())
    ]
    compiled = {
        name.partition(".")[0]
        for name, file in loaded
        if file.startswith(site) and not file.endswith(".py")
    }
    return [
        name
        for name, file in loaded
        if file.startswith(site) and file.endswith(".py") and name.partition(".")[0] not in compiled
    ]


def build_snapshot_bytes(target: str) -> bytes:
    """The app's snapshot for this interpreter, built in-process (Pyodide cannot spawn).

    The app's modules are forgotten first: the builder collects what importing the
    app executes, so an app this process had already imported would look empty.
    """
    from thaw.snapshots._collect import collect_snapshot
    from thaw.snapshots._format import encode_snapshot

    _forget_tree(_app_root(target))
    return encode_snapshot(collect_snapshot(target))


def _app_root(target: str) -> str:
    return os.path.abspath(target if os.path.isdir(target) else os.path.dirname(target))


def _forget_tree(root: str) -> None:
    """Drop the modules loaded from ``root``, so the next import executes them again."""
    prefix = root.rstrip(os.sep) + os.sep
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None) or ""
        if file.startswith(prefix):
            del sys.modules[name]


def _encode(response: Response, *, head: bool) -> EdgeResponse:
    headers = list(response.headers)
    if response.content_type:
        headers.append(("content-type", response.content_type))
    body = b"" if head or response.status in _NO_BODY else response.body
    return EdgeResponse(response.status, headers, body)

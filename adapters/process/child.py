"""The child side of the ``process`` isolation: what a forked instance runs (see ``pool``)."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import anyio
import anyio.abc

from thaw._event import Outcome
from thaw.adapters.process.wire import (
    _EXIT_INTERNAL,
    _LOST,
    BackboneFactory,
    _answer,
    _Call,
    _Cancel,
    _Channel,
    _flush_stdio,
    _frame,
    _Ready,
    _StartFailed,
    _to_child,
)
from thaw.declarations._app import App
from thaw.host._instances import run_stop_hooks
from thaw.invocation._invoker import Invoker
from thaw.invocation._kv_idempotency import KvIdempotencyStore

log = logging.getLogger("thaw.process")


def _child_main(
    parent_end: socket.socket,
    child_end: socket.socket,
    app: App,
    backbone_factory: BackboneFactory | None,
    rand: Callable[[], float],
    idempotency_bucket: str | None = None,
) -> NoReturn:
    """The child's whole life; it never returns into the parent's code."""
    status = _EXIT_INTERNAL
    try:
        try:
            parent_end.close()
            _reset_after_fork()
            _isolate_fds(keep=child_end.fileno())
            with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
                # A fresh context: nothing of the parent's task (its cancel scopes,
                # its trace) may reach the child's tasks.
                status = runner.run(
                    _serve(child_end, app, backbone_factory, rand, idempotency_bucket),
                    context=contextvars.Context(),
                )
        except BaseException:
            try:
                traceback.print_exc()
            except BaseException:
                pass
        _flush_stdio()
    finally:
        os._exit(status)


def _reset_after_fork() -> None:
    """Forget the parent's event loop, and its signal handlers that would write to it."""
    asyncio.events._set_running_loop(None)
    sniffio = sys.modules.get("sniffio")
    if sniffio is not None:
        sniffio.thread_local.name = None
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:  # not the main thread: nothing was set here
        return
    for number in signal.valid_signals():
        try:
            if callable(signal.getsignal(number)):
                signal.signal(number, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    # Ctrl-C reaches the whole process group: the parent decides when children stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _isolate_fds(*, keep: int) -> None:
    """Point every inherited descriptor but stdio and ``keep`` at /dev/null.

    The parent's end of other children's sockets must go, or those children would
    not see EOF when the parent dies. Closing would free the numbers while stale
    objects inherited from the parent (its event loop, those sockets) still hold
    them, and a later finalizer would close whatever the child reopened there;
    /dev/null keeps the numbers taken and still releases what they referred to.
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        os.closerange(3, keep)
        os.closerange(keep + 1, 65536)
        return
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for name in names:
            fd = int(name)
            if fd <= 2 or fd in (keep, devnull):
                continue
            try:
                os.fstat(fd)  # the listing's own descriptor is already closed
            except OSError:
                continue
            os.dup2(devnull, fd, inheritable=False)
    finally:
        os.close(devnull)


async def _serve(
    sock: socket.socket,
    app: App,
    backbone_factory: BackboneFactory | None,
    rand: Callable[[], float],
    idempotency_bucket: str | None = None,
) -> int:
    channel = _Channel(await anyio.abc.UNIXSocketStream.from_socket(sock))
    backbone: Any = None
    try:
        # Connected on first use, not before the instance reports ready: a fork answers
        # in about a millisecond, a NATS connection takes several.
        backbone = _LazyBackbone(backbone_factory) if backbone_factory is not None else None
        # With a backbone and the host's bucket, claims are shared with every other
        # instance of the app (in-memory otherwise: good for this child's life only).
        store = (
            KvIdempotencyStore(backbone, bucket=idempotency_bucket)
            if backbone is not None and idempotency_bucket is not None
            else None
        )
        invoker = Invoker(app, backbone=backbone, rand=rand, idempotency_store=store)
        for hook in app.start_hooks:
            await hook()
    except Exception as exc:
        log.exception("on_start of app %s failed in instance process %d", app.name, os.getpid())
        await _send_quietly(channel, _frame(_StartFailed(f"{type(exc).__name__}: {exc}")))
        with anyio.CancelScope(shield=True):
            await _close(backbone)
        return 0
    send_lock = anyio.Lock()
    scopes: dict[int, anyio.CancelScope] = {}
    try:
        await _send_quietly(channel, _frame(_Ready(os.getpid())))
        async with anyio.create_task_group() as group:
            while True:
                try:
                    message = _to_child.decode(await channel.receive())
                except _LOST:
                    break  # the parent is gone: finish what runs, then stop
                if isinstance(message, _Call):
                    scope = scopes[message.rid] = anyio.CancelScope()
                    group.start_soon(_respond, invoker, channel, send_lock, scopes, scope, message)
                elif isinstance(message, _Cancel):
                    if (cancelled := scopes.get(message.rid)) is not None:
                        cancelled.cancel()
                else:
                    break
    finally:
        with anyio.CancelScope(shield=True):
            await run_stop_hooks(app, log)
            await _close(backbone)
    return 0


class _LazyBackbone:
    """A backbone that calls its factory on the first call of any of its methods.

    Every method of the Backbone contract is a coroutine, so each attribute is a
    coroutine function that connects (once; concurrent first calls share it) and
    then calls the real backbone's method of that name.
    """

    def __init__(self, factory: BackboneFactory) -> None:
        self._factory = factory
        self._real: Any = None
        self._connecting = anyio.Lock()

    async def _backbone(self) -> Any:
        if self._real is None:
            async with self._connecting:
                if self._real is None:
                    made = self._factory()
                    self._real = await made if inspect.isawaitable(made) else made
        return self._real

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await getattr(await self._backbone(), name)(*args, **kwargs)

        return call

    async def aclose(self) -> None:
        if self._real is not None:
            close = getattr(self._real, "aclose", None)
            if close is not None:
                await close()


async def _close(backbone: Any) -> None:
    """Close the instance's own backbone connection (the factory made it for this child)."""
    close = getattr(backbone, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception:
        log.exception("closing the backbone of instance process %d failed", os.getpid())


async def _respond(
    invoker: Invoker,
    channel: _Channel,
    send_lock: anyio.Lock,
    scopes: dict[int, anyio.CancelScope],
    scope: anyio.CancelScope,
    call: _Call,
) -> None:
    outcome: Outcome | None = None
    try:
        with scope:  # may be cancelled before it is even entered
            outcome = await invoker.invoke(call.capability, call.event)
    finally:
        del scopes[call.rid]
    if outcome is not None:
        frame = _frame(_answer(call.rid, outcome))
        async with send_lock:
            await _send_quietly(channel, frame)


async def _send_quietly(channel: _Channel, frame: bytes) -> None:
    try:
        await channel.send(frame)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass  # the parent is gone; the read loop sees EOF and stops

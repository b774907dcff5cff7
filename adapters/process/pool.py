"""The ``process`` isolation: every instance is a child forked from the preloaded parent.

A thaw forks this process, whose revision modules are already executed, so the
child inherits them for free. The child runs ``on_start`` and serves invocations
over a socketpair until it reads a stop frame or EOF (the parent stopped or
died), lets the calls it holds finish, runs ``on_stop`` and leaves through
``os._exit``. Module state the child changes never reaches the parent or the
next instance. Linux only and opt-in: the core (``thaw``) never imports this
module (it forks and uses sockets, which the portable core must not); a host
gets it as its ``process_pools`` factory (``process_pool_factory``), which is
what ``thaw serve`` passes, so capabilities declared ``isolation="process"``
run here for every trigger.

The wire (length-prefixed msgpack frames) is ``wire``; the child's side
is ``child`` (both beside this module).

Invariants:
- Concurrent invokes are multiplexed by request id, never serialised, so the
  child serves them concurrently like an in-process instance (its invoker owns
  concurrency limits and timeouts). There is no background reader task: one
  waiting caller at a time holds the reader role, hands every answer it reads
  to its caller and passes the role on once its own answer is in.
- A frame is written whole or the child is given up: sends are shielded and
  bounded by ``grace``.
- Every child is reaped by the pool that forked it; ``aclose`` leaves none.
  Signals go only to our own unreaped children (through a pidfd), so a
  recycled pid is never hit.
"""

from __future__ import annotations

import enum
import itertools
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable

import anyio
import anyio.abc

from thaw._clock import Clock, SystemClock
from thaw._errors import ConfigError, DeadlineExceeded
from thaw._event import Event, Outcome, Reject, Retry
from thaw.adapters.process.child import _child_main
from thaw.adapters.process.wire import (
    _LOST,
    _STOP_FRAME,
    BackboneFactory,
    InstanceCrashed,
    _Answer,
    _Call,
    _Cancel,
    _Channel,
    _flush_stdio,
    _frame,
    _from_child,
    _Ready,
    _StartFailed,
)
from thaw.declarations._policy import Policy
from thaw.host._cold_starts import ColdStarts
from thaw.host._instances import _START_RETRY_DELAY, InstanceStartFailed, PoolStatistics
from thaw.invocation._idempotency import IdempotencyStore
from thaw.invocation._invoker import Invoker
from thaw.snapshots._revision import Revision

__all__ = ["ProcessPool", "InstanceCrashed", "fork_and_answer", "process_pool_factory"]

log = logging.getLogger("thaw.process")

# -- the parent's handle on one child ----------------------------------------------


class _Gone(enum.Enum):
    LOST = "lost"  # the connection broke before the answer: the child crashed or hung
    STOPPING = "stopping"  # the child is being stopped and takes no new calls


class _Waiter:
    __slots__ = ("done", "outcome", "wake")

    def __init__(self) -> None:
        self.done = False
        self.outcome: Outcome | None = None  # None when done: the connection was lost
        self.wake = anyio.Event()

    def finish(self, outcome: Outcome | None) -> None:
        self.done = True
        self.outcome = outcome
        self.wake.set()


class _Child:
    """One forked instance: multiplexed calls, graceful stop, reaping."""

    def __init__(self, pid: int, pidfd: int | None, stream: anyio.abc.SocketStream) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self._channel = _Channel(stream)
        self._ids = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        self._reading = False
        self._send_lock = anyio.Lock()
        self.broken = False  # unusable: discard it (lost, hung, or a frame half-written)
        self.stopping = False
        self.closing = False
        self._closed = anyio.Event()
        self.exit = ""  # how it ended, once reaped ("exit status 1", "killed by SIGKILL")

    async def wait_ready(self) -> str | None:
        """None once on_start has run in the child; otherwise why it did not start."""
        try:
            message = _from_child.decode(await self._channel.receive())
        except _LOST:
            self.broken = True
            return "the instance process exited during on_start"
        if isinstance(message, _Ready):
            return None
        self.broken = True
        if isinstance(message, _StartFailed):
            return message.reason
        return f"the instance process sent {type(message).__name__} before it was ready"

    async def call(self, capability: str, event: Event, grace: float) -> Outcome | _Gone:
        rid = next(self._ids)
        waiter = self._waiters[rid] = _Waiter()
        sent = False
        try:
            sent = await self._send(_frame(_Call(rid, capability, event)), grace, call=True)
            if not sent:
                return _Gone.STOPPING if self.stopping and not self.broken else _Gone.LOST
            await self._wait(waiter)
            return _Gone.LOST if waiter.outcome is None else waiter.outcome
        finally:
            del self._waiters[rid]
            if sent and not waiter.done and not (self.broken or self.stopping):
                # Abandoned (our caller was cancelled): let the child cancel it too.
                await self._send(_frame(_Cancel(rid)), grace)

    async def _send(self, frame: bytes, grace: float, *, call: bool = False) -> bool:
        """Write one whole frame; False if the child is gone (or stopping, for a call)."""
        with anyio.move_on_after(grace, shield=True):
            async with self._send_lock:
                if self.broken or (call and self.stopping):
                    return False
                try:
                    await self._channel.send(frame)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self.broken = True
                    return False
                return True
        self.broken = True  # it stopped reading for `grace` seconds; the frame may be half-out
        return False

    async def _wait(self, waiter: _Waiter) -> None:
        """Until ``waiter`` is done, either wait or be the one reader (leader/follower)."""
        try:
            while not waiter.done:
                if self._reading:
                    await waiter.wake.wait()
                    waiter.wake = anyio.Event()
                    continue
                self._reading = True
                try:
                    while not waiter.done:
                        await self._read_one()
                finally:
                    self._reading = False
        finally:
            # Leaving (answered, or cancelled, perhaps just after being handed the
            # role): if nobody reads now, wake one of the others to take over.
            if not self._reading:
                for other in self._waiters.values():
                    if not other.done and other is not waiter:
                        other.wake.set()
                        break

    async def _read_one(self) -> None:
        try:
            message = _from_child.decode(await self._channel.receive())
        except _LOST:
            self._lose()
            return
        if not isinstance(message, _Answer):
            self._lose()
            return
        waiter = self._waiters.get(message.rid)  # None: its caller gave up on it
        outcome = message.ok or message.retry or message.reject
        if outcome is None:
            self._lose()
        elif waiter is not None:
            waiter.finish(outcome)

    def _lose(self) -> None:
        self.broken = True
        for waiter in self._waiters.values():
            if not waiter.done:
                waiter.finish(None)

    async def close(self, *, grace: float, kill: bool) -> None:
        """Stop the child (on_stop runs unless ``kill``) and reap it. Idempotent, shielded."""
        if self.closing:
            with anyio.CancelScope(shield=True):
                await self._closed.wait()
            return
        self.closing = self.stopping = True
        try:
            with anyio.CancelScope(shield=True):
                if not kill:
                    with anyio.move_on_after(grace):
                        await self._send(_STOP_FRAME, grace)
                        await self._drain()
                        await self._wait_exit()
                if not self.exit:
                    self._kill()
                    await self._wait_exit()
                await self._channel.stream.aclose()
                self._lose()
        finally:
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            self._closed.set()

    async def _drain(self) -> None:
        """Read (answers for calls still in flight) until EOF."""
        if self.broken:
            return
        key = next(self._ids)  # never sent: only EOF finishes this waiter
        waiter = self._waiters[key] = _Waiter()
        try:
            await self._wait(waiter)
        finally:
            del self._waiters[key]

    def _kill(self) -> None:
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            else:  # safe: not reaped yet, so the pid is still ours
                os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    async def _wait_exit(self) -> None:
        if self._pidfd is not None:
            await anyio.wait_readable(self._pidfd)
            self.exit = _reap(self.pid, 0)
            return
        delay = 0.001  # no pidfd (Linux < 5.3): poll, backing off
        while not (reaped := _reap(self.pid, os.WNOHANG)):
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.05)
        self.exit = reaped


def _reap(pid: int, options: int) -> str:
    """waitpid: how the child ended, or "" if it has not (or someone else reaped it)."""
    try:
        reaped, status = os.waitpid(pid, options)
    except ChildProcessError:
        return "" if options else "reaped elsewhere"
    if reaped == 0:
        return ""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


# -- the pool ----------------------------------------------------------------------


class ProcessPool:
    """Thaws one forked instance of a revision on demand; same interface as InstancePool.

    ``backbone_factory`` (sync or async) is called in each child after the fork
    (a connection inherited across fork is shared with the parent, so never pass
    one built here); ``grace`` bounds a graceful stop and is how long past a
    call's timeout the pool waits before deeming the child hung and killing it.
    The child's invoker runs on the system monotonic clock (``Event.deadline``
    must be on it); ``clock`` only drives idle tracking. With ``idempotency_bucket``
    (and a backbone from the factory) each child claims in that KV bucket, as the
    host's other instances do, so duplicates are recognised across instances and
    hosts; without it a child keeps an in-memory store, good for its own life
    only. ``idempotency_store`` is the parent's view of the same store: it
    answers ``peek_settled`` without forking.
    """

    isolation = "process"

    def __init__(
        self,
        revision: Revision,
        *,
        idle_timeout: float = 300.0,
        backbone_factory: BackboneFactory | None = None,
        clock: Clock | None = None,
        rand: Callable[[], float] = random.random,
        grace: float = 5.0,
        idempotency_bucket: str | None = None,
        idempotency_store: IdempotencyStore | None = None,
        cold_starts: ColdStarts | None = None,
    ) -> None:
        _require_fork()
        if not idle_timeout > 0:
            raise ConfigError(f"idle_timeout must be positive, got {idle_timeout!r}")
        if not grace > 0:
            raise ConfigError(f"grace must be positive, got {grace!r}")
        self.revision = revision
        self.idle_timeout = idle_timeout
        self.grace = grace
        self._backbone_factory = backbone_factory
        self._idempotency_bucket = idempotency_bucket
        self._cold_starts = cold_starts
        # Compiled in the parent only to read stored results (peek_settled); never run here.
        self._reference = (
            Invoker(revision.app, idempotency_store=idempotency_store)
            if idempotency_store is not None
            else None
        )
        self._clock: Clock = clock or SystemClock()
        self._rand = rand
        self._policies: dict[str, Policy] = {
            name: spec.policy for name, spec in revision.app.capabilities.items()
        }
        self._child: _Child | None = None
        self._children: set[_Child] = set()  # forked, not yet reaped
        self._thawing: anyio.Event | None = None
        self._thaws = 0
        self._drops = 0
        self._in_flight = 0
        self._last_used = 0.0
        self._calls = 0
        self._faults = 0  # answers that are the instance's or the runtime's failures

    @property
    def live(self) -> bool:
        return self._child is not None and not self._child.broken

    @property
    def pid(self) -> int | None:
        """The live child's process id."""
        return self._child.pid if self._child is not None else None

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            revision=self.revision.revision_id,
            isolation=self.isolation,
            live=self.live,
            thaws=self._thaws,
            drops=self._drops,
            in_flight=self._in_flight,
        )

    async def invoke(self, capability: str, event: Event) -> Outcome:
        """Invoke in the live child, forking one first if there is none (a cold start)."""
        while True:
            child = self._child
            if child is None or child.broken:
                started = time.perf_counter()
                thaws = self._thaws
                try:
                    child = await self._thaw()
                except InstanceStartFailed as exc:
                    return Retry(_START_RETRY_DELAY, exc.message, exc.code)
                if self._cold_starts is not None and self._thaws == thaws + 1:
                    self._cold_starts.observe(
                        capability, self.isolation, time.perf_counter() - started
                    )
            self._in_flight += 1
            try:
                with anyio.move_on_after(self._backstop(capability, event)) as hung:
                    answer = await child.call(capability, event, self.grace)
            finally:
                self._in_flight -= 1
                self._last_used = self._clock.now()
            if hung.cancelled_caught:
                await self._discard(child, kill=True)
                self._calls += 1
                self._faults += 1
                limit = self._backstop(capability, event) - self.grace
                return self._failed(
                    capability,
                    event,
                    DeadlineExceeded.code,
                    f"the instance process {child.pid} did not answer within its "
                    f"timeout ({limit:g} s) and {self.grace:g} s of grace; it was killed",
                )
            if answer is _Gone.STOPPING:
                continue  # it was being stopped before our call went out: use the next one
            self._calls += 1
            if answer is _Gone.LOST:
                await self._discard(child, kill=True)
                self._faults += 1
                return self._failed(
                    capability,
                    event,
                    InstanceCrashed.code,
                    f"the instance process {child.pid} died while serving the event ({child.exit})",
                )
            if type(answer) is Retry:  # the child's invoker retries only its own failures
                self._faults += 1
            return answer

    async def peek_settled(self, capability: str, event: Event) -> Outcome | None:
        """The stored outcome of ``event`` if an earlier delivery finished it (no fork)."""
        if self._reference is None:
            return None
        compiled = self._reference.capabilities.get(capability)
        return None if compiled is None else await compiled.peek_settled(event)

    def health(self) -> tuple[int, int]:
        """Calls answered and faults: crashes, hangs and retries the children answered."""
        return self._calls, self._faults

    def _backstop(self, capability: str, event: Event) -> float:
        policy = self._policies.get(capability)
        limit = policy.timeout if policy is not None else 0.0
        if event.deadline is not None:  # on the child's clock, which is time.monotonic
            limit = min(limit, max(event.deadline - time.monotonic(), 0.0))
        return limit + self.grace

    def _failed(self, capability: str, event: Event, code: str, reason: str) -> Outcome:
        """A runtime failure as the child's invoker would classify it: retry, or give up."""
        policy = self._policies.get(capability)
        if policy is None:
            return Retry(_START_RETRY_DELAY, reason, code)
        if event.attempt >= policy.retry.max_attempts:
            return Reject(code, f"gave up after {event.attempt} attempts: {reason}", event.attempt)
        return Retry(policy.retry.backoff.delay(event.attempt, self._rand()), reason, code)

    async def thaw(self) -> int:
        """Fork the live instance if there is none; its pid. Concurrent callers share one."""
        return (await self._thaw()).pid

    async def _thaw(self) -> _Child:
        while True:
            child = self._child
            if child is not None and not child.broken:
                return child
            if child is not None:
                await self._discard(child, kill=True)
            elif self._thawing is None:
                break
            else:
                await self._thawing.wait()
        self._thawing = done = anyio.Event()
        try:
            child = await self._start()
            self._child = child
            self._thaws += 1
            self._last_used = self._clock.now()
            return child
        finally:
            self._thawing = None
            done.set()

    async def _start(self) -> _Child:
        child = await self._fork()
        try:
            reason = await child.wait_ready()
            if reason is None and child.closing:
                reason = "the pool was closed while the instance started"
        except BaseException:
            await self._discard(child, kill=True)
            raise
        if reason is None:
            return child
        await self._discard(child, kill=False)
        log.warning("starting an instance process of %r failed: %s", self.revision, reason)
        raise InstanceStartFailed(
            f"starting an instance of app {self.revision.manifest.app!r} failed: {reason}"
            + (f" ({child.exit})" if child.exit != "exit status 0" else "")
        )

    async def _fork(self) -> _Child:
        parent_end, child_end = socket.socketpair()
        try:
            stream = await anyio.abc.UNIXSocketStream.from_socket(parent_end)
        except BaseException:
            parent_end.close()
            child_end.close()
            raise
        try:
            _flush_stdio()  # or the child would write the parent's pending output again
            pid = os.fork()
        except BaseException as exc:
            child_end.close()
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            if isinstance(exc, OSError):
                raise InstanceStartFailed(f"cannot fork an instance process: {exc}") from exc
            raise
        if pid == 0:
            _child_main(
                parent_end,
                child_end,
                self.revision.app,
                self._backbone_factory,
                self._rand,
                self._idempotency_bucket,
            )
        child_end.close()
        child = _Child(pid, _open_pidfd(pid), stream)
        self._children.add(child)
        return child

    async def _discard(self, child: _Child, *, kill: bool) -> None:
        if self._child is child:
            self._child = None
            self._drops += 1
        try:
            await child.close(grace=self.grace, kill=kill)
        finally:
            self._children.discard(child)

    async def drop_idle(self) -> bool:
        """Stop the child if idle for ``idle_timeout`` and not serving; True if dropped."""
        if self._child is None or self._in_flight:
            return False
        if self._clock.now() - self._last_used < self.idle_timeout:
            return False
        await self.scale_to_zero()
        return True

    async def scale_to_zero(self) -> None:
        """Stop the live child (calls in flight finish, then on_stop); the revision stays."""
        child = self._child
        if child is not None:
            await self._discard(child, kill=False)

    async def run_reaper(self, *, interval: float | None = None) -> None:
        """Drop idle instances until cancelled (run it in the host's task group)."""
        period = interval if interval is not None else max(self.idle_timeout / 4, 0.01)
        while True:
            await self._clock.sleep_until(self._clock.now() + period)
            await self.drop_idle()

    async def aclose(self) -> None:
        """Stop the live child gracefully, kill any still starting; reap every one."""
        await self.scale_to_zero()
        for child in list(self._children):
            await self._discard(child, kill=True)


async def fork_and_answer(
    revision: Revision,
    capability: str,
    event: Event,
    *,
    backbone_factory: BackboneFactory | None = None,
) -> Outcome:
    """Fork a child of this preloaded process, have it answer one event, stop and reap it.

    Its duration includes the stop and reap after the answer (about 1.3 ms here).
    To time only fork-to-answer, as the cold-start benchmark does, construct a
    ProcessPool (free: no fork yet), time its first ``invoke`` and ``aclose`` it
    outside the timed span.
    """
    pool = ProcessPool(revision, backbone_factory=backbone_factory)
    try:
        return await pool.invoke(capability, event)
    finally:
        await pool.aclose()


def _require_fork() -> None:
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        raise ConfigError(
            f"isolation 'process' forks the preloaded parent and needs Linux with os.fork; "
            f"this platform is {sys.platform!r}: use isolation 'shared' or 'fresh'"
        )


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # Linux < 5.3, or a sandbox that forbids it
        return None


def process_pool_factory(
    *,
    backbone_factory: BackboneFactory | None = None,
    grace: float = 5.0,
) -> Callable[..., ProcessPool]:
    """What a host takes as ``process_pools``: a ProcessPool per revision, each child
    connecting with ``backbone_factory`` (None: children have no backbone)."""
    _require_fork()

    def make(revision: Revision, **options: object) -> ProcessPool:
        return ProcessPool(
            revision,
            backbone_factory=backbone_factory,
            grace=grace,
            **options,  # type: ignore[arg-type]
        )

    return make

"""The HTTP/1.1 connection: an asyncio.Protocol over httptools (llhttp).

Bytes come in through ``data_received``; the reading half (``_reader.py``)
parses them into requests and enforces the reading limits; each complete
request runs as a task owned by this connection, and answers go out strictly
in request order.

Invariants:
- Every request the parser accepted gets exactly one answer, in order, or the
  connection closes; requests after a close decision are never read.
- Nothing grows without bound: unanswered requests per connection are capped
  (reading pauses at ``max_pipeline``), head and body sizes are capped, and a
  client that stops reading our answers stops being read.
- Once the byte stream cannot be trusted (parse error, smuggling shape, a limit
  hit mid-request, a timeout) the answer says ``connection: close``, we stop
  parsing, half-close, discard what still arrives for ``linger_timeout`` so the
  client reads the answer instead of a reset, then close.
- One timer per connection. Progress only moves a deadline; the timer checks
  the deadline when it fires and re-arms, so the hot path schedules nothing.
- Tasks belong to the connection: it cancels them when it is lost, and the
  server waits for them on shutdown. Cancellation is never swallowed.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import cast

from thaw.adapters.http._reader import Exchange, RequestReader
from thaw.adapters.http._wire import (
    CLOSE,
    CONTINUE,
    KEEP_ALIVE,
    Request,
    Response,
    encode_head,
    encode_response,
    refusal,
)
from thaw.adapters.http.access_log import peer_name
from thaw.adapters.http.state import ServerState

__all__ = ["HttpConnection"]

log = logging.getLogger("thaw.http")

_PIPELINE, _WRITE, _STOPPED = 1, 2, 4  # why reading is paused (bit flags)
_IDLE, _RECEIVE, _SEND, _LINGER = range(4)  # what the connection's timer is guarding
_STREAMED = Response(0)  # marks an exchange whose streamed answer is already written


class HttpConnection(RequestReader):
    """One client connection: reads requests, runs them, answers them in order."""

    def __init__(self, state: ServerState) -> None:
        super().__init__(state.config, state.service)
        self._state = state
        self._loop = state.loop
        self._transport: asyncio.Transport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writable: list[asyncio.Future[None]] = []
        self._read_blocks = 0
        self._lingering = False
        self._closed = False
        self._peer_eof = False
        self._write_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._now = self._last_activity = self._write_paused_at = self._loop.time()
        self._linger_deadline = 0.0
        self._access = state.access_log
        self._peer = "-"

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        state = self._state
        if self._access is not None:
            self._peer = peer_name(transport.get_extra_info("peername"))
        state.connections.add(self)
        state.accepted += 1
        if state.draining:
            self._respond_fault(refusal("draining", "the server is shutting down"))
        elif len(state.connections) > self._config.max_connections:
            self._respond_fault(refusal("overloaded", "too many open connections"))
        else:
            self._rearm()

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return  # lingering, or past a close decision: discard
        self._now = self._loop.time()
        limit = self._config.max_header_bytes
        if len(data) <= limit:
            self._feed(data)
        else:  # in slices, so a header httptools is still buffering is seen growing
            view = memoryview(data)
            for start in range(0, len(data), limit):
                if not self._feed(view[start : start + limit]):
                    break
        if self._in_message:
            self._rearm()  # a request is partly here: its receive deadline applies
        # Otherwise whatever changed state has re-armed already (answers, faults).

    def eof_received(self) -> bool:
        self._peer_eof = True
        if self._lingering:
            return False
        if self._in_message and not self._stopped:
            self._respond_fault(
                refusal("http_malformed", "the connection ended in the middle of a request")
            )
            return not self._closed
        self._closing = self._stopped = True
        return bool(self._exchanges)  # answer what was asked, then close

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = self._closing = self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._tasks:
            task.cancel()
            task.add_done_callback(self._task_done)
        for waiter in self._writable:
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("the client went away"))
        self._writable.clear()
        for exchange in self._exchanges:
            if exchange.turn is not None and not exchange.turn.done():
                exchange.turn.cancel()
        self._exchanges.clear()
        self._state.connections.discard(self)
        self._state.notify()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._write_paused_at = self._loop.time()
        self._block(_WRITE)
        self._rearm()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._unblock(_WRITE)
        for waiter in self._writable:
            if not waiter.done():
                waiter.set_result(None)
        self._writable.clear()
        self._rearm()

    def _dispatch(self, exchange: Exchange, request: Request) -> None:
        """Start the request's task (or refuse it when the server is at its limit)."""
        state = self._state
        if state.in_flight >= self._config.max_in_flight:
            exchange.response = refused = refusal(
                "overloaded", "the server is at its in-flight limit"
            )
            state.counters.refused(refused.status)
            self._flush()
            return
        state.in_flight += 1
        state.requests += 1
        task = exchange.task = self._loop.create_task(self._run(exchange, request))
        self._tasks.add(task)
        state.tasks.add(task)
        if len(self._exchanges) >= self._config.max_pipeline:
            self._block(_PIPELINE)

    # -- answering --------------------------------------------------------------

    async def _run(self, exchange: Exchange, request: Request) -> None:
        state = self._state
        try:
            try:
                response = await self._service.handle(request)
            except Exception:
                log.exception("HTTP handler failed for %r", request)
                response = refusal("internal_error", "the server failed to answer; see its log")
            finally:
                state.in_flight -= 1
            if self._closed:
                return
            if response.stream is not None:
                await self._stream(exchange, response)
                return
            exchange.response = response
            if self._exchanges and self._exchanges[0] is exchange:
                self._flush()
        finally:
            # A task cancelled before its first step never runs this: connection_lost
            # covers those with a done callback (see _cancel_tasks).
            self._tasks.discard(exchange.task)
            state.tasks.discard(exchange.task)
            if state.draining:
                state.notify()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._state.tasks.discard(task)
        self._state.notify()

    def _flush(self) -> None:
        """Write every answer that is ready at the head of the order."""
        transport = self._transport
        if transport is None or self._closed:
            return
        queue = self._exchanges
        if len(queue) == 1 and not self._closing:  # the common case, kept short
            exchange = queue[0]
            response = exchange.response
            if (
                response is not None
                and response is not _STREAMED
                and not (exchange.close or response.close or exchange.continue_pending)
            ):
                queue.popleft()
                transport.write(self._encode(exchange, response, False))
                self._last_activity = self._loop.time()
                if self._read_blocks & _PIPELINE:
                    self._unblock(_PIPELINE)
                self._rearm()
                return
        out: list[bytes] = []
        close = linger = False
        while queue:
            exchange = queue[0]
            response = exchange.response
            if exchange.continue_pending:
                exchange.continue_pending = False
                if response is None:
                    out.append(CONTINUE)
                    self._body_progress = self._loop.time()  # the body's clock starts now
            if response is None:
                if exchange.turn is not None and not exchange.turn.done():
                    exchange.turn.set_result(None)  # a streamed answer may start now
                break
            queue.popleft()
            if response is _STREAMED:
                close = exchange.close
            else:
                close = (
                    exchange.close
                    or response.close
                    or (self._closing and not queue and not self._in_message)
                )
                out.append(self._encode(exchange, response, close))
            if close:
                linger = exchange.fault or response.close
                break
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        if close:
            self._shut(linger=linger)
            return
        if not queue:
            self._last_activity = self._loop.time()
            if self._closing and not self._in_message:
                self._shut(linger=False)
                return
        if self._read_blocks & _PIPELINE and len(queue) < self._config.max_pipeline:
            self._unblock(_PIPELINE)
        self._rearm()

    def _encode(self, exchange: Exchange, response: Response, close: bool) -> bytes:
        connection = CLOSE if close else KEEP_ALIVE if exchange.http10 else b""
        self._state.counters.responses[response.status // 100] += 1
        if self._access is not None:
            self._log_access(
                exchange, response.status, 0 if exchange.head_only else len(response.body)
            )
        return encode_response(response, self._state.date.line, connection, exchange.head_only)

    def _log_access(self, exchange: Exchange, status: int, size: int) -> None:
        assert self._access is not None
        duration = perf_counter() - exchange.started if exchange.started else 0.0
        try:
            self._access.record(self._peer, exchange.request, status, size, duration)
        except Exception:  # a broken log handler must not break the answer
            log.exception("the access log failed")

    async def _stream(self, exchange: Exchange, response: Response) -> None:
        """Send a streamed answer when its turn comes: chunked, or close-delimited on 1.0."""
        stream = response.stream
        assert stream is not None
        try:
            if not (self._exchanges and self._exchanges[0] is exchange):
                exchange.turn = self._loop.create_future()
                await exchange.turn
            transport = self._transport
            assert transport is not None
            chunked = not exchange.http10
            close = exchange.close or response.close or not chunked or self._closing
            connection = CLOSE if close else b""
            self._state.counters.responses[response.status // 100] += 1
            transport.write(
                encode_head(response, self._state.date.line, connection, chunked=chunked)
            )
            sent = 0
            if not exchange.head_only:
                async for chunk in stream:
                    if chunk:
                        sent += len(chunk)
                        transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                        if self._write_paused:
                            await self._wait_writable()
                if chunked:
                    transport.write(b"0\r\n\r\n")
            if self._access is not None:
                self._log_access(exchange, response.status, sent)
        except Exception:
            log.exception("HTTP streamed answer failed")
            self._abort()  # the status is sent: only an incomplete body can say it failed
            return
        finally:
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                await closer()
        exchange.response, exchange.close = _STREAMED, close
        self._flush()

    async def _wait_writable(self) -> None:
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._writable.append(waiter)
        await waiter

    # -- failing and closing ----------------------------------------------------

    def _on_parse_error(self, exc: Exception) -> None:
        fault = self._fault
        if fault is None:
            if self._closing:  # _Stop after a close decision: the rest is not read
                self._stopped = True
                self._block(_STOPPED)
                self._flush()
                return
            reason = str(exc) or type(exc).__name__
            fault = refusal("http_malformed", f"malformed HTTP request: {reason}")
        self._respond_fault(fault)

    def _respond_fault(self, fault: Response) -> None:
        """Answer ``fault`` in order (in place of the request being received), then close."""
        self._fault = None
        self._closing = self._stopped = True
        exchange = self._exchange
        if exchange is None:
            exchange = Exchange(False, False, perf_counter() if self._timed else 0.0)
            self._exchanges.append(exchange)
        exchange.response, exchange.close, exchange.fault = fault, True, True
        exchange.continue_pending = False
        self._exchange = self._request = None
        self._in_message = self._in_head = False
        self._state.refused += 1
        self._state.counters.refused(fault.status)
        self._block(_STOPPED)
        self._flush()

    def _refuse_upgrade(self) -> None:
        # The upgrade request itself was complete and is answered; what follows it
        # is another protocol (or a smuggled request): never parse it.
        if self._last_dispatched is not None:
            self._last_dispatched.close = True
        self._closing = self._stopped = True
        self._block(_STOPPED)
        self._flush()

    def _shut(self, *, linger: bool) -> None:
        transport = self._transport
        self._closing = self._stopped = True
        if transport is None or self._closed or transport.is_closing():
            return
        if not linger or self._peer_eof or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()  # the answer is complete; what still arrives is discarded
        self._lingering = True
        self._linger_deadline = self._loop.time() + self._config.linger_timeout
        self._read_blocks = 0
        transport.resume_reading()
        self._rearm()

    def _abort(self) -> None:
        self._closing = self._stopped = True
        if self._transport is not None and not self._closed:
            self._transport.abort()

    def begin_drain(self) -> None:
        """Server shutdown: read no new requests, close once the answers are out."""
        if self._closed:
            return
        self._closing = True
        if not self._in_message and not self._exchanges:
            self._shut(linger=False)

    def abort(self) -> None:
        self._abort()

    # -- flow control and the timer ---------------------------------------------

    def _block(self, reason: int) -> None:
        if not self._read_blocks and self._transport is not None and not self._lingering:
            self._transport.pause_reading()
        self._read_blocks |= reason

    def _unblock(self, reason: int) -> None:
        if self._read_blocks & reason:
            self._read_blocks &= ~reason
            if not self._read_blocks and self._transport is not None and not self._closed:
                self._transport.resume_reading()

    def _deadline(self) -> tuple[float, int] | None:
        config = self._config
        if self._lingering:
            return self._linger_deadline, _LINGER
        if self._write_paused:
            return self._write_paused_at + config.send_timeout, _SEND
        if self._in_message:
            if self._in_head:
                return self._message_start + config.header_timeout, _RECEIVE
            exchange = self._exchange
            if exchange is not None and exchange.continue_pending:
                return None  # the client waits for our 100 Continue, not we for it
            return (
                min(
                    self._body_progress + config.body_timeout,
                    self._message_start + config.receive_timeout,
                ),
                _RECEIVE,
            )
        if self._exchanges or self._stopped:
            return None  # answering: the capability's own timeout bounds that
        return self._last_activity + config.keepalive_timeout, _IDLE

    def _rearm(self) -> None:
        due = self._deadline()
        if due is None or self._closed:
            return
        at = due[0]
        if self._timer is None or at < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(at, self._on_timer)
            self._timer_at = at

    def _on_timer(self) -> None:
        self._timer = None
        due = self._deadline()
        if due is None or self._closed or self._transport is None:
            return
        at, phase = due
        if self._loop.time() < at:
            self._timer = self._loop.call_at(at, self._on_timer)
            self._timer_at = at
        elif phase in (_IDLE, _LINGER):
            self._closing = self._stopped = True
            self._transport.close()
        elif phase == _SEND:
            self._abort()
        else:
            self._respond_fault(refusal("request_timeout", "the request arrived too slowly"))

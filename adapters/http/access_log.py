"""The access log: one line per answered request on logger ``thaw.http.access``.

    remote=127.0.0.1:50312 method=POST target=/greet?lang=* status=200 bytes=41
    ms=0.42 trace=4bf92f3577b34da6a3ce929d0e0e4736 capability=greet

What a line never holds: header values, bodies, or query-string values (tokens
travel there); the target keeps the path and the query's parameter names, is
capped at ``MAX_TARGET`` characters, and anything outside printable ASCII (CR,
LF, quotes, spaces) is percent-escaped so one request is always one line that
a client cannot forge. The trace id is the request's ``traceparent`` (the
server assigns one when the client sent none, while this log is on), so a
line leads to the function's own log records and spans.

When the log is off the connection holds None and pays one ``is None`` test per
answer; the line is built only when the logger is enabled for INFO.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TextIO

from thaw.adapters.http._wire import Request
from thaw.lowlevel import parse_traceparent

__all__ = ["AccessLog", "StreamAccessLog", "access_line", "clean_target", "open_access_log"]

log = logging.getLogger("thaw.http.access")

MAX_TARGET = 256
_UNSAFE = re.compile(r'[^\x21-\x7e]|["\\%]')


def _escape(text: str) -> str:
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8")), text)


def clean_target(target: str) -> str:
    """The request target for a log line: query values redacted, escaped, capped."""
    path, mark, query = target.partition("?")
    if mark:
        names = (pair.partition("=")[0] for pair in query.split("&") if pair)
        path += "?" + "&".join(f"{name}=*" for name in names)
    text = _escape(path)
    return text if len(text) <= MAX_TARGET else text[: MAX_TARGET - 3] + "..."


def access_line(
    remote: str,
    request: Request | None,
    status: int,
    size: int,
    duration: float,
) -> str:
    """One access-log line (``duration`` in seconds); ``request`` is None when the
    bytes never formed a request head (a parse error, a head too large)."""
    if request is None:
        method = target = trace = capability = "-"
    else:
        method = _escape(request.method[:16])
        target = clean_target(request.target)
        trace = request.trace_id
        if not trace:
            context = parse_traceparent(request.headers.get("traceparent", ""))
            trace = context.trace_id if context is not None else "-"
        route = request.route[0] if isinstance(request.route, tuple) else None
        capability = getattr(route, "name", None) or "-"
    return (
        f"remote={remote} method={method} target={target} status={status} bytes={size} "
        f"ms={duration * 1000:.2f} trace={trace} capability={capability}"
    )


class AccessLog:
    """What a connection calls once per answer when the access log is on."""

    __slots__ = ("logger",)

    def __init__(self, logger: logging.Logger = log) -> None:
        self.logger = logger

    def record(
        self, remote: str, request: Request | None, status: int, size: int, duration: float
    ) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info("%s", access_line(remote, request, status, size, duration))

    def flush(self) -> None:
        """Nothing is held back (the logging handlers write)."""


class StreamAccessLog(AccessLog):
    """Lines straight to a text stream, buffered: a tenth of the logging module's cost.

    Lines wait in memory until ``flush`` (the server calls it every second and when it
    closes) or until ``BUFFERED_LINES`` are waiting; each line carries the same
    ``thaw: thaw.http.access:`` prefix ``thaw serve`` gives its other log lines. A
    stream that fails to write loses those lines, never the answer.
    """

    __slots__ = ("_lines", "_stream")

    PREFIX = "thaw: thaw.http.access: "
    BUFFERED_LINES = 512

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        self._lines: list[str] = []

    def record(
        self, remote: str, request: Request | None, status: int, size: int, duration: float
    ) -> None:
        lines = self._lines
        lines.append(self.PREFIX + access_line(remote, request, status, size, duration))
        if len(lines) >= self.BUFFERED_LINES:
            self.flush()

    def flush(self) -> None:
        lines = self._lines
        if not lines:
            return
        self._lines = []
        try:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()
        except (OSError, ValueError) as error:  # closed or broken: the answers went out
            log.warning("could not write %d access-log lines: %s", len(lines), error)


def open_access_log(where: str) -> AccessLog:
    """The access log for ``HttpConfig.access_log_stream`` ("", "stderr", "stdout")."""
    if where == "stderr":
        return StreamAccessLog(sys.stderr)
    if where == "stdout":
        return StreamAccessLog(sys.stdout)
    return AccessLog()


def peer_name(address: object) -> str:
    """``host:port`` of a transport's peername (``-`` when unknown, e.g. a UNIX socket)."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return "-"

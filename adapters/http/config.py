"""HttpConfig: every limit and timeout of the HTTP server, with its default.

Limits are hard: past one, the client gets a clear answer (413, 414, 431, 408,
503) and, where the byte stream can no longer be trusted, the connection is
closed. Nothing queues without bound: a connection holds at most
``max_pipeline`` unanswered requests, the server at most ``max_in_flight``
running ones and ``max_connections`` open connections.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from thaw import ConfigError

__all__ = ["HttpConfig"]


class HttpConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Limits, timeouts (seconds) and operational paths of the HTTP server."""

    max_header_bytes: int = 16 * 1024
    """Request line plus header fields (and trailers), in bytes; beyond: 431 and close."""
    max_headers: int = 100
    """Header fields (and trailers) per request; beyond: 431 and close."""
    max_target: int = 8 * 1024
    """Length of the request target (path and query); beyond: 414 and close."""
    max_chunk_line: int = 4 * 1024
    """A chunked body's size line with its extensions, and a trailer field while it
    arrives, in bytes (checked once per read, so at most this plus one read gets in);
    beyond: 400 and close. Trailer fields count against the head limits too."""
    max_body: int = 1024 * 1024
    """Body bytes; a route accepts at most min(this, the capability's max_payload). 413."""
    max_body_cap: int = 64 * 1024 * 1024
    """The most a route's own ``http(..., max_body=)`` may declare; above it the server
    does not start (a ConfigError naming the route)."""
    max_pipeline: int = 32
    """Unanswered requests per connection; reading pauses there, and a burst past it
    in one read gets 503 and close."""
    max_in_flight: int = 1024
    """Requests being handled across the server; beyond: 503 with Retry-After."""
    max_connections: int = 4096
    """Open connections; a connection past it gets 503 and is closed."""
    keepalive_timeout: float = 5.0
    """An idle keep-alive connection is closed (silently) after this."""
    header_timeout: float = 10.0
    """The whole request head must arrive within this of its first byte (slowloris); 408."""
    body_timeout: float = 10.0
    """Longest silence while a body is arriving (reset on progress); 408."""
    receive_timeout: float = 60.0
    """A whole request must arrive within this of its first byte, however it trickles; 408."""
    send_timeout: float = 30.0
    """A client that reads nothing of our answers for this long is disconnected."""
    linger_timeout: float = 2.0
    """After an error answer, how long we read and discard what the client still sends
    so that it sees the answer instead of a reset."""
    drain_timeout: float = 10.0
    """On shutdown, in-flight requests get this long to finish; the rest are cancelled."""
    health_path: str = "/healthz"
    """Liveness: 200 while the process serves. Empty string: off."""
    ready_path: str = "/readyz"
    """Readiness: 200 when the app is loaded and the server is not draining, else 503."""
    metrics_path: str = "/metrics"
    """Prometheus text exposition of the server's and capabilities' metrics. Empty: off."""
    openapi_path: str = "/openapi.json"
    """The OpenAPI 3.1 document of the app's http triggers. Empty: off."""
    backlog: int = 1024
    reuse_port: bool = False
    """SO_REUSEPORT, so several worker processes can share the port."""
    access_log: bool = False
    """One INFO line per answered request on logger ``thaw.http.access`` (remote address,
    method, target, status, bytes, duration, trace id, capability; never headers or
    bodies). Off by default for embedded use; ``thaw serve`` turns it on."""
    access_log_stream: Literal["", "stderr", "stdout"] = ""
    """Where access-log lines go: "" through ``logging`` (~6 µs a line: a LogRecord and a
    write each); "stderr" or "stdout" straight to that stream, buffered and written at
    least once a second (~0.5 µs a line), as ``thaw serve`` does."""

    def __post_init__(self) -> None:
        for name in (
            "max_header_bytes",
            "max_headers",
            "max_target",
            "max_chunk_line",
            "max_body",
            "max_body_cap",
            "max_pipeline",
            "max_in_flight",
            "max_connections",
            "backlog",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"HttpConfig.{name} must be a positive int, got {value!r}")
        for name in (
            "keepalive_timeout",
            "header_timeout",
            "body_timeout",
            "receive_timeout",
            "send_timeout",
            "linger_timeout",
            "drain_timeout",
        ):
            value = getattr(self, name)
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigError(
                    f"HttpConfig.{name} must be a positive number of seconds, got {value!r}"
                )
        if self.access_log_stream not in ("", "stderr", "stdout"):
            raise ConfigError(
                "HttpConfig.access_log_stream must be '', 'stderr' or 'stdout', "
                f"got {self.access_log_stream!r}"
            )
        for name in ("reuse_port", "access_log"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"HttpConfig.{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("health_path", "ready_path", "metrics_path", "openapi_path"):
            value = getattr(self, name)
            if value and not (isinstance(value, str) and value.startswith("/")):
                raise ConfigError(
                    f"HttpConfig.{name} must start with '/' (or be ''), got {value!r}"
                )

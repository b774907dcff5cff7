"""One ``/metrics`` for ``thaw serve --workers N``: whichever worker is scraped asks its
siblings and answers with the sum.

Each worker keeps its own plain-integer counters (the recording hot path does not
change) and, besides its HTTP socket, listens on a private unix socket
``<dir>/<pid>.sock`` in a directory only the parent's user can enter (0700; the
parent makes it and hands its path in ``THAW_METRICS_PEERS``). A connection to it
gets the worker's own exposition and EOF. A scrape of ``/metrics`` on any worker
reads every sibling's socket and merges the expositions:

- counters, histograms (buckets, ``_sum``, ``_count``) and most gauges are summed
  (invocations in flight, ``process_cpu_seconds_total``, ``process_resident_memory_bytes``);
- gauges that every worker reports about one shared thing (``MAX_GAUGES``: the
  revision's traffic weight, a shared consumer's lag) take the largest value, as does
  ``process_max_resident_memory_bytes`` (the largest worker's peak);
- ``MIN_GAUGES`` take the smallest: ``process_start_time_seconds`` (the oldest worker).

A socket that refuses (a worker that died without removing it) counts as gone; a
sibling that accepts but does not answer within ``PEER_TIMEOUT`` makes the scrape
fail with 503, so Prometheus records a failed scrape instead of a counter reset.
What a worker counted dies with it: a restarted worker starts from zero (the sum
drops once, which ``rate()`` reads as a reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # thaw.adapters.http imports this module: no import cycle at run time
    from thaw.adapters.http._wire import Request, Response

__all__ = [
    "MAX_GAUGES",
    "MetricsFront",
    "MIN_GAUGES",
    "PEERS_ENV",
    "PEER_TIMEOUT",
    "PeerMetricsService",
    "merge",
    "peer_metrics",
]

log = logging.getLogger("thaw.metrics")

PEERS_ENV = "THAW_METRICS_PEERS"
PEER_TIMEOUT = 2.0
MAX_GAUGES = frozenset(
    {"thaw_revision_weight", "thaw_stream_pending", "process_max_resident_memory_bytes"}
)
MIN_GAUGES = frozenset({"process_start_time_seconds"}) | frozenset(
    {  # SLO standing: every worker computes it from the same merged view (telemetry/slo.py)
        "thaw_slo_objective",
        "thaw_slo_sli",
        "thaw_slo_events",
        "thaw_slo_burn_rate",
        "thaw_slo_error_budget_remaining",
        "thaw_slo_alert",
    }
)
_LIMIT = 64 * 1024 * 1024  # a sibling's exposition larger than this is refused
_SCRAPE = object()  # request.route of a /metrics request this wrapper answers


def merge(expositions: Iterable[bytes]) -> bytes:
    """Several Prometheus text expositions (0.0.4) as one: same series summed (or the
    largest value for ``MAX_GAUGES``, the smallest for ``MIN_GAUGES``); families and
    series in first-seen order."""
    headers: dict[str, list[str]] = {}  # family -> its HELP and TYPE lines
    series: dict[str, dict[str, float]] = {}  # family -> sample key -> value
    kinds: dict[str, str] = {}
    for text in expositions:
        family = ""
        for line in text.decode().split("\n"):
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    lines = headers.setdefault(family, [])
                    if len(lines) < 2 and line not in lines:
                        lines.append(line)
                    if parts[1] == "TYPE" and len(parts) == 4:
                        kinds[family] = parts[3]
                    series.setdefault(family, {})
                continue
            key, _, value = line.rpartition(" ")
            number = float(value)
            samples = series.setdefault(family, {})
            old = samples.get(key)
            if old is None:
                samples[key] = number
            elif family in MAX_GAUGES and kinds.get(family) == "gauge":
                samples[key] = max(old, number)
            elif family in MIN_GAUGES and kinds.get(family) == "gauge":
                samples[key] = min(old, number)
            else:
                samples[key] = old + number
    out: list[str] = []
    for family, samples in series.items():
        out.extend(headers.get(family, ()))
        out.extend(f"{key} {_number(value)}" for key, value in samples.items())
    out.append("")
    return "\n".join(out).encode()


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


class PeerUnavailable(Exception):
    """A sibling accepted the connection but did not answer in time."""


async def _read_peer(path: str) -> bytes | None:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(path, limit=_LIMIT), PEER_TIMEOUT
        )
    except (ConnectionRefusedError, FileNotFoundError):
        return None  # gone (a crashed worker's socket file, or it just stopped)
    except (OSError, TimeoutError) as exc:
        raise PeerUnavailable(f"{path}: {exc}") from exc
    try:
        return await asyncio.wait_for(reader.read(_LIMIT), PEER_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise PeerUnavailable(f"{path}: {exc!r}") from exc
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class MetricsFront:
    """A ``Service`` that answers ``/metrics`` itself (``_scrape``) and passes every other
    request, and every attribute, to the service it wraps."""

    def __init__(self, inner: Any, metrics_path: str) -> None:
        self._inner = inner
        self._path = metrics_path

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def check(self, request: Request) -> Response | None:
        if request.path == self._path and request.method in ("GET", "HEAD"):
            request.route = _SCRAPE
            return None
        answer: Response | None = self._inner.check(request)
        return answer

    def handle(self, request: Request) -> Awaitable[Response]:
        if request.route is _SCRAPE:
            return self._scrape(request)
        answer: Awaitable[Response] = self._inner.handle(request)
        return answer

    async def _scrape(self, request: Request) -> Response:
        raise NotImplementedError


class PeerMetricsService(MetricsFront):
    """A ``Service`` whose ``/metrics`` is the merge of this worker's and its siblings'."""

    def __init__(self, inner: Any, metrics_path: str, directory: str, own: str) -> None:
        super().__init__(inner, metrics_path)
        self._directory = directory
        self._own = own

    def local(self) -> bytes:
        response = self._inner.operational(self._path)
        return response.body if response is not None else b""

    async def _scrape(self, request: Request) -> Response:
        from thaw.adapters.http._wire import Response
        from thaw.adapters.http.metrics import CONTENT_TYPE

        try:
            names = sorted(os.listdir(self._directory))
        except OSError:
            names = []
        peers = [
            os.path.join(self._directory, name)
            for name in names
            if name.endswith(".sock") and os.path.join(self._directory, name) != self._own
        ]
        try:
            bodies = await asyncio.gather(*(_read_peer(path) for path in peers))
        except PeerUnavailable as exc:
            body = f"a sibling worker's metrics did not come: {exc}\n".encode()
            return Response(503, body, "text/plain; charset=utf-8")
        own = self.local()
        merged = merge([own, *(b for b in bodies if b is not None)])
        return Response(200, merged, CONTENT_TYPE)


@asynccontextmanager
async def peer_metrics(
    front: Any, metrics_path: str, directory: str | None = None
) -> AsyncIterator[Any]:
    """``front`` as a ``PeerMetricsService`` listening on its socket while open; ``front``
    itself when there is no peers directory (no ``THAW_METRICS_PEERS``) or no /metrics."""
    directory = directory if directory is not None else os.environ.get(PEERS_ENV)
    if not directory or not metrics_path:
        yield front
        return
    own = os.path.join(directory, f"{os.getpid()}.sock")
    wrapped = PeerMetricsService(front, metrics_path, directory, own)

    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(wrapped.local())
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    with contextlib.suppress(FileNotFoundError):
        os.unlink(own)  # a previous process with this pid (pids are reused)
    try:
        server = await asyncio.start_unix_server(answer, own)
    except OSError as exc:  # e.g. a path past the 107 bytes of sun_path
        log.warning("/metrics shows this worker only: cannot listen on %s: %s", own, exc)
        yield front
        return
    try:
        yield wrapped
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(own)
        await server.wait_closed()

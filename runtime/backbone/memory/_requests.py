"""In-process request/reply for MemoryBackbone: responders by subject pattern.

``MemoryResponders.respond(pattern, handler)`` registers an async handler for
requests on subjects matching ``pattern`` (NATS wildcards); ``request`` hands a
request to one matching handler and returns its ``Reply``. Differences from core
NATS, on purpose: exactly one responder gets each request (round robin over the
matching ones, as if all shared one queue group), and a handler that raises
fails the request at once with ``BackboneError`` instead of leaving the
requester to time out. No responder: ``NoResponders``; no reply within the
timeout: ``DeadlineExceeded`` (the handler is cancelled).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from types import MappingProxyType

import anyio

from thaw._errors import BackboneError, DeadlineExceeded, NoResponders, ThawError
from thaw.backbone._subjects import subject_matches, validate_subject
from thaw.decisions._reply import Reply, Responder

__all__ = ["MemoryResponders", "Responding"]

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class Responding:
    """One registered responder; ``close()`` (or leaving ``with``) unregisters it."""

    __slots__ = ("_owner", "handler", "pattern")

    def __init__(self, owner: MemoryResponders, pattern: str, handler: Responder) -> None:
        self._owner = owner
        self.pattern = pattern
        self.handler = handler

    def close(self) -> None:
        self._owner._remove(self)

    def __enter__(self) -> Responding:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class MemoryResponders:
    __slots__ = ("_responders", "_turn")

    def __init__(self) -> None:
        self._responders: list[Responding] = []
        self._turn = itertools.count()

    def respond(self, pattern: str, handler: Responder) -> Responding:
        validate_subject(pattern, wildcards=True)
        responding = Responding(self, pattern, handler)
        self._responders.append(responding)
        return responding

    def _remove(self, responding: Responding) -> None:
        if responding in self._responders:
            self._responders.remove(responding)

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        headers: Mapping[str, str] | None,
        timeout: float,
    ) -> Reply:
        validate_subject(subject, wildcards=False)
        if not isinstance(data, bytes):
            raise TypeError(f"request data must be bytes, not {type(data).__name__}")
        matching = [r for r in self._responders if subject_matches(r.pattern, subject)]
        if not matching:
            raise NoResponders(f"nobody answers requests on {subject!r}")
        responding = matching[next(self._turn) % len(matching)]
        try:
            with anyio.fail_after(max(timeout, 0.0)):
                reply = await responding.handler(subject, data, headers or _NO_HEADERS)
        except TimeoutError:
            raise DeadlineExceeded(f"no reply on {subject!r} within {timeout:g}s") from None
        except ThawError:
            raise
        except Exception as exc:
            raise BackboneError(
                f"the responder for {subject!r} failed: {type(exc).__name__}"
            ) from exc
        if not isinstance(reply, Reply):
            raise BackboneError(
                f"the responder for {subject!r} answered {type(reply).__name__}, not a Reply"
            )
        return reply

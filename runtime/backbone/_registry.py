"""Choosing a backbone by name: ``memory`` built in, others from installed adapters.

Adapters register a factory under the ``thaw.backbones`` entry-point group
(``nats = "thaw.adapters.nats:open_backbone"`` in pyproject.toml); the core finds
them by name at run time and never imports adapters itself, so the dependency
keeps pointing one way. A factory is ``(url: str | None, *, state_dir: str) ->
async context manager yielding a Backbone``; ``url=None`` means "the embedded
default" (for NATS: a local nats-server that Thaw starts and stops).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast

from thaw._errors import ConfigError
from thaw.backbone._contract import Backbone
from thaw.backbone.memory._backbone import MemoryBackbone

__all__ = ["open_backbone", "available_backbones", "load_server", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "thaw.backbones"
BackboneFactory = Callable[..., AbstractAsyncContextManager[Backbone]]


@asynccontextmanager
async def _memory(url: str | None = None, *, state_dir: str = ".thaw") -> AsyncIterator[Backbone]:
    backbone = MemoryBackbone()
    try:
        yield backbone
    finally:
        await backbone.aclose()


def available_backbones() -> dict[str, BackboneFactory | None]:
    """Names of the backbones this installation offers (None: registered, not loaded yet)."""
    found: dict[str, BackboneFactory | None] = {"memory": _memory}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, None)
    return found


def _load(name: str) -> BackboneFactory:
    if name == "memory":
        return _memory
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == name:
            try:
                return cast(BackboneFactory, entry.load())
            except ImportError as exc:
                raise ConfigError(
                    f"the {name!r} backbone is registered but cannot be imported ({exc}); "
                    f"install its extra: pip install 'thaw[{name}]'"
                ) from exc
    known = ", ".join(sorted(available_backbones()))
    raise ConfigError(
        f"no backbone named {name!r} (available: {known}); "
        f"install the adapter, e.g. pip install 'thaw[{name}]'"
    )


def open_backbone(
    name: str, url: str | None = None, *, state_dir: str = ".thaw", **options: Any
) -> AbstractAsyncContextManager[Backbone]:
    """Open the backbone ``name`` at ``url`` (None: its embedded default)."""
    return _load(name)(url, state_dir=state_dir, **options)


SERVER_GROUP = "thaw.servers"


def load_server(name: str) -> Callable[..., AbstractAsyncContextManager[Any]] | None:
    """The server factory registered as ``name`` (e.g. ``http``), or None if not installed."""
    for entry in importlib.metadata.entry_points(group=SERVER_GROUP):
        if entry.name == name:
            try:
                return cast(Callable[..., AbstractAsyncContextManager[Any]], entry.load())
            except ImportError:
                return None
    return None

"""Choosing a backbone by name: ``memory`` built in, others from installed adapters.

Adapters register a factory under the ``thaw.backbones`` entry-point group
(``nats = "thaw.adapters.nats:open_backbone"`` in pyproject.toml); the core finds
them by name at run time and never imports adapters itself, so the dependency
keeps pointing one way. A factory is ``(url: str | None, *, state_dir: str) ->
async context manager yielding a Backbone``; ``url=None`` means "the embedded
default" (for NATS: a local nats-server that Thaw starts and stops).
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

from thaw._errors import ConfigError
from thaw.backbone._contract import Backbone
from thaw.backbone.memory._backbone import MemoryBackbone

if TYPE_CHECKING:
    import importlib.metadata

__all__ = [
    "open_backbone",
    "available_backbones",
    "load_server",
    "registered",
    "announce",
    "is_backbone",
    "ENTRY_POINT_GROUP",
]

ENTRY_POINT_GROUP = "thaw.backbones"
BackboneFactory = Callable[..., AbstractAsyncContextManager[Backbone]]

_registered: dict[str, importlib.metadata.EntryPoints] = {}
# Entry points that adapters shipped with the core announce when they are imported
# (thaw.adapters), the same "module:attribute" as in pyproject.toml: a host finds its
# own backbone and servers without importlib.metadata, whose import and scan cost a new
# process about as much as Python's own start (benchmarks/host_boot.py).
_announced: dict[str, dict[str, str]] = {}


def announce(group: str, entries: Mapping[str, str]) -> None:
    """Make ``entries`` (name -> "module:attribute") of ``group`` known without a scan."""
    _announced.setdefault(group, {}).update(entries)


def registered(group: str) -> importlib.metadata.EntryPoints:
    """The installed entry points of ``group``, from one scan of the installed
    distributions per group and process (each scan reads every distribution's metadata)."""
    found = _registered.get(group)
    if found is None:
        import importlib.metadata

        found = _registered[group] = importlib.metadata.entry_points(group=group)
    return found


def _find(group: str, name: str) -> Any:
    """What the entry point ``name`` of ``group`` names, imported; None if there is none.
    ImportError if it is registered but its module (or its extra) cannot be imported."""
    target = _announced.get(group, {}).get(name)
    if target is None:
        target = next((e.value for e in registered(group) if e.name == name), None)
        if target is None:
            return None
    module, _, attribute = target.partition(":")
    found: Any = importlib.import_module(module.strip())
    for part in attribute.strip().split(".") if attribute else ():
        found = getattr(found, part)
    return found


def is_backbone(name: str) -> bool:
    """Whether a backbone called ``name`` is built in, announced or installed."""
    if name == "memory" or name in _announced.get(ENTRY_POINT_GROUP, {}):
        return True
    return any(e.name == name for e in registered(ENTRY_POINT_GROUP))


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
    found.update(dict.fromkeys(_announced.get(ENTRY_POINT_GROUP, {})))
    for entry in registered(ENTRY_POINT_GROUP):
        found.setdefault(entry.name, None)
    return found


def _load(name: str) -> BackboneFactory:
    if name == "memory":
        return _memory
    try:
        factory = _find(ENTRY_POINT_GROUP, name)
    except ImportError as exc:
        raise ConfigError(
            f"the {name!r} backbone is registered but cannot be imported ({exc}); "
            f"install its extra: pip install 'thaw[{name}]'"
        ) from exc
    if factory is not None:
        return cast(BackboneFactory, factory)
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
    try:
        found = _find(SERVER_GROUP, name)
    except ImportError:
        return None
    return cast("Callable[..., AbstractAsyncContextManager[Any]] | None", found)

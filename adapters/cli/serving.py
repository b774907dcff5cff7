"""What ``thaw serve`` serves: a loaded revision of the app, with process pools where it can fork.

``thaw serve APP`` always serves a snapshot, so what production runs is what was
built and measured: a snapshot file is loaded as it is; source (a file, a
package, ``module:attribute``) is first built into ``<state-dir>/snapshots/``
(``thaw snapshot build`` in a clean child Python, which also checks that the
result loads) and that file is loaded. The same sources give the same file and
revision id, so a restart rebuilds to the same revision. ``--workers`` children
are given the built file, never the source, so every worker serves one revision.

``process_pools_for`` gives the host its ``process`` isolation on Linux: each
forked instance opens its own connection to the backbone (a connection inherited
across fork would be shared with the parent), with the command's NATS settings;
on the memory backbone a forked instance has none (it cannot reach the parent's
memory) and its ``ctx.publish``/``ctx.kv`` fail with a clear error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from thaw.backbone._contract import Backbone
from thaw.backbone._registry import open_backbone
from thaw.host._router import ProcessPools
from thaw.snapshots._revision import Revision, is_snapshot, load_revision

__all__ = ["build_if_needed", "process_pools_for", "revision_to_serve"]

log = logging.getLogger("thaw.serve")


def build_if_needed(target: str, state_dir: str) -> str:
    """The snapshot file to serve for ``target``: itself, or one built from its source."""
    if is_snapshot(target):
        return target
    from thaw.adapters.process.build import build_snapshot

    folder = Path(state_dir) / "snapshots"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    where = os.path.abspath(target.rpartition(":")[0] if _is_module_form(target) else target)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(where).stem or "app")[:40]
    digest = hashlib.sha256(f"{where}|{target}".encode("utf-8", "surrogateescape")).hexdigest()
    output = folder / f"{stem}-{digest[:10]}.snap"
    result = build_snapshot(target, str(output))
    log.info(
        "built %s from %s: revision %s, %d modules, %d data files",
        output,
        target,
        result.revision[:12],
        len(result.modules),
        len(result.data_files),
    )
    return str(output)


def _is_module_form(target: str) -> bool:
    return ":" in target and not os.path.exists(target)


def revision_to_serve(target: str, state_dir: str, **load_options: Any) -> tuple[Revision, str]:
    """The loaded revision ``thaw serve`` serves, and the snapshot file it came from."""
    path = build_if_needed(target, state_dir)
    return load_revision(path, **load_options), path


def process_pools_for(
    kind: str, url: str | None, *, state_dir: str, connection: dict[str, Any]
) -> ProcessPools | None:
    """The host's ``process`` isolation, or None where this platform cannot fork."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return None
    from thaw.adapters.process.pool import process_pool_factory

    if kind == "memory" or url is None:
        return process_pool_factory(backbone_factory=None)

    async def connect() -> Backbone:
        # Entered for the instance's whole life and never left: the instance process
        # ends with os._exit, and the server drops its connection then.
        stack = AsyncExitStack()
        backbone: Backbone = await stack.enter_async_context(
            open_backbone(kind, url, state_dir=state_dir, **connection)
        )
        _kept.append(stack)
        return backbone

    return process_pool_factory(backbone_factory=connect)


_kept: list[AsyncExitStack] = []  # in an instance process: its backbone's context, kept open

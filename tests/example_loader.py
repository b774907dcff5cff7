"""Load an example app from source or, with THAW_EXAMPLES_FROM=snapshot, from a snapshot.

The example tests use this, so the very same tests run against a snapshot built
from each example (``tests/test_examples.py`` runs them that way in a subprocess).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from thaw import App
from thaw.adapters.process.build import build_snapshot
from thaw.lowlevel import load_app
from thaw.snapshots._revision import load_revision

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FROM_SNAPSHOT = os.environ.get("THAW_EXAMPLES_FROM") == "snapshot"


def load_example(name: str) -> tuple[App, dict[str, ModuleType]]:
    """The example's App and its modules by their plain names (e.g. "payment_webhook.rules")."""
    if not FROM_SNAPSHOT:
        app = load_app(str(EXAMPLES / name))
        prefix = name.split("/")[0]
        modules = {
            key: module
            for key, module in sys.modules.items()
            if key == prefix or key.startswith(prefix + ".") or key == "app"
        }
        return app, modules
    folder = Path(tempfile.mkdtemp(prefix="thaw-example-"))
    snapshot = folder / f"{name}.snap"
    build_snapshot(str(EXAMPLES / name), str(snapshot))
    revision = load_revision(snapshot, data_dir=folder / "data")
    return revision.app, dict(revision.namespace.modules)

"""The public surface, checked where the core cannot go: child Pythons, the adapters' sources.

Split from test_exports.py so that file stays core (it also runs inside Pyodide).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from test_exports import STILL_IMPORTED_BY_ADAPTERS

import thaw
import thaw.lowlevel
import thaw.testing


def test_importing_the_testing_surface_imports_no_test_framework() -> None:
    code = (
        "import sys, thaw.testing; "
        "assert not {'pytest', 'hypothesis'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_names_kept_for_adapters_are_the_public_objects_and_still_needed() -> None:
    adapters = Path(__file__).resolve().parents[1] / "adapters"
    sources = "\n".join(path.read_text() for path in sorted(adapters.rglob("*.py")))
    lowlevel_imports = " ".join(
        re.findall(r"from thaw\.lowlevel import (\([^)]*\)|[^\n]*)", sources)
    )
    for name, home in STILL_IMPORTED_BY_ADAPTERS.items():
        assert name in home.__all__, name
        assert getattr(thaw.lowlevel, name) is getattr(home, name), name
        assert re.search(rf"\b{name}\b", lowlevel_imports), f"no adapter needs {name} any more"


def test_tick_comes_from_thaw_without_loading_the_scheduler_at_import() -> None:
    code = (
        "import sys, thaw; assert 'thaw.host._schedule' not in sys.modules; "
        "from thaw import Tick; from thaw.host._schedule import Tick as T; assert Tick is T"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

"""thaw.__version__ is written in the package; it must say what the distribution says."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import thaw

ROOT = Path(__file__).resolve().parent.parent


def test_version_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert thaw.__version__ == project["version"]


def test_version_matches_the_installed_distribution() -> None:
    assert thaw.__version__ == importlib.metadata.version("thaw-runtime")

"""Backbones and servers found by name: announced by the adapters shipped with the core,
or registered by any installed distribution's entry points."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

import thaw.adapters  # noqa: F401  (announces the shipped adapters)
from thaw._errors import ConfigError
from thaw.backbone import _registry
from thaw.backbone._registry import (
    available_backbones,
    is_backbone,
    load_server,
    open_backbone,
    registered,
)


@pytest.mark.parametrize("group", ["thaw.backbones", "thaw.servers"])
def test_announced_entries_are_the_distributions_own(group: str) -> None:
    """What thaw.adapters announces is what pyproject.toml registers, name for name."""
    distribution = importlib.metadata.distribution("thaw-runtime")
    installed = {e.name: e.value for e in distribution.entry_points if e.group == group}
    assert _registry._announced[group] == installed


def test_shipped_backbone_and_servers_load_by_name() -> None:
    from thaw.adapters.http import open_http_server
    from thaw.adapters.nats import open_backbone as open_nats

    assert _registry._load("nats") is open_nats
    assert load_server("http") is open_http_server
    assert is_backbone("memory") and is_backbone("nats")
    assert set(available_backbones()) >= {"memory", "nats"}


def test_unknown_names() -> None:
    assert not is_backbone("no-such-backbone")
    assert load_server("no-such-server") is None
    with pytest.raises(ConfigError, match=r"no backbone named 'carrier-pigeon' \(available: "):
        open_backbone("carrier-pigeon")


def test_a_registered_entry_point_is_found_once_scanned() -> None:
    """Names nobody announced come from the installed entry points (third-party adapters)."""
    commands = registered("thaw.commands")
    assert "edge" in commands.names
    assert registered("thaw.commands") is commands  # one scan per group and process


def test_an_announced_module_that_cannot_import_is_a_clear_error() -> None:
    _registry.announce("thaw.backbones", {"broken": "thaw.adapters.no_such_module:factory"})
    try:
        with pytest.raises(ConfigError, match="'broken' backbone is registered but cannot be"):
            open_backbone("broken")
    finally:
        del _registry._announced["thaw.backbones"]["broken"]


def test_serving_finds_its_parts_without_scanning_distributions() -> None:
    """A host's start (the serve command line, the backbone's name, the HTTP server) does
    not import importlib.metadata, whose import and scan cost about a Python start
    (benchmarks/host_boot.py); nats-py, when a host uses it, imports it on its own."""
    code = (
        "import sys\n"
        "from thaw.adapters.cli.command import _parser\n"
        "_parser(['serve', 'app.py']).parse_args(['serve', 'app.py'])\n"
        "from thaw.backbone._registry import is_backbone, load_server\n"
        "assert is_backbone('nats') and load_server('http') is not None\n"
        "assert 'nats' not in sys.modules  # nats-py imports importlib.metadata itself\n"
        "print([m for m in sys.modules if m == 'importlib.metadata'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

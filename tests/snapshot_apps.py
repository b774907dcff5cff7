"""Small apps written to disk for the snapshot tests (a package with relative imports,
module state, a data file, hooks) and a helper to build them."""

from __future__ import annotations

import textwrap
from pathlib import Path

from thaw.adapters.process.build import build_snapshot

INIT = """
from .app import app

__all__ = ["app"]
"""

APP = """
import json
from pathlib import Path

import msgspec

from thaw import App, Context
from . import state
from .contracts import Query, Answer
from .helpers.words import shout

app = App("{name}")
GREETING = json.loads((Path(__file__).parent / "data" / "greeting.json").read_text())["{key}"]
state.loads += 1


@app.on_start
async def started() -> None:
    state.started += 1
    state.client = object()


@app.on_stop
async def stopped() -> None:
    state.stopped += 1
    state.client = None


@app.capability()
async def hello(query: Query) -> Answer:
    if state.client is None:
        raise RuntimeError("on_start did not run")
    state.calls += 1
    return Answer(text=shout(f"{{GREETING}} {{query.who}}"), calls=state.calls, loads=state.loads)


@app.capability()
async def counts(ctx: Context) -> dict:
    return {{"started": state.started, "stopped": state.stopped, "calls": state.calls}}
"""

STATE = """
loads = 0
started = 0
stopped = 0
calls = 0
client = None
"""

CONTRACTS = """
import msgspec


class Query(msgspec.Struct, frozen=True):
    who: str


class Answer(msgspec.Struct, frozen=True):
    text: str
    calls: int
    loads: int
"""

WORDS = """
from ..contracts import Query  # a relative import two levels up


def shout(text: str) -> str:
    assert Query  # the import worked
    return text.upper()
"""


def write_app(
    root: Path,
    *,
    package: str = "greeter",
    name: str = "greeter",
    key: str = "en",
    greeting: str = "hello",
) -> Path:
    """Write the test app as package ``package`` under ``root``; return the package folder."""
    folder = root / package
    (folder / "helpers").mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    (folder / "__init__.py").write_text(textwrap.dedent(INIT))
    (folder / "app.py").write_text(textwrap.dedent(APP.format(name=name, key=key)))
    (folder / "state.py").write_text(textwrap.dedent(STATE))
    (folder / "contracts.py").write_text(textwrap.dedent(CONTRACTS))
    (folder / "helpers" / "__init__.py").write_text("")
    (folder / "helpers" / "words.py").write_text(textwrap.dedent(WORDS))
    (folder / "data" / "greeting.json").write_text(f'{{"{key}": "{greeting}"}}')
    return folder


def build(root: Path, folder: Path, name: str = "app.snap") -> Path:
    output = root / name
    build_snapshot(str(folder), str(output))
    return output

"""Resources of snapshot modules: ``importlib.resources`` and ``pkgutil.get_data`` are
served from the snapshot, for packages and plain modules, at import time and at call time."""

from __future__ import annotations

import importlib.resources
import pkgutil
import sys
import textwrap
import warnings
from collections.abc import Iterator
from importlib.resources.abc import Traversable
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from snapshot_apps import build

from thaw import Event, Ok
from thaw.adapters.process.build import build_snapshot
from thaw.lowlevel import Invoker
from thaw.snapshots._resources import SnapshotTree
from thaw.snapshots._revision import Revision, load_revision

INIT = """
import json
import pkgutil

from .app import app

SETTINGS = json.loads(pkgutil.get_data(__name__, "x.json"))
"""

ENGINE = """
import tomllib
from importlib import resources

LIMITS = tomllib.loads(
    resources.files(__package__).joinpath("rules/limits.toml").read_text()
)
"""

APP = """
import json
import pkgutil
from importlib import resources

import msgspec

from thaw import App
from . import engine
from .engine import LIMITS

app = App("rules")


class Check(msgspec.Struct, frozen=True):
    amount: int


@app.capability()
async def check(check: Check) -> dict:
    here = resources.files(__package__)
    templates = sorted(p.name for p in (here / "templates").iterdir())
    with resources.as_file(here / "rules" / "limits.toml") as real:
        on_disk = real.read_text()
    return {{
        "allowed": check.amount <= LIMITS["max_amount"],
        "limit": engine.LIMITS["max_amount"],
        "currency": json.loads(pkgutil.get_data(__package__, "x.json"))["currency"],
        "templates": templates,
        "greeting": (here / "templates" / "a.txt").read_text().strip(),
        "same_on_disk": on_disk == (here / "rules/limits.toml").read_text(),
        "is_file": here.joinpath("rules", "limits.toml").is_file(),
        "tag": {tag!r},
    }}
"""


def write_rules_app(root: Path, *, limit: int = 100, tag: str = "one") -> Path:
    folder = root / "rules_app"
    (folder / "rules").mkdir(parents=True)
    (folder / "templates").mkdir()
    (folder / "__init__.py").write_text(textwrap.dedent(INIT))
    (folder / "engine.py").write_text(textwrap.dedent(ENGINE))
    (folder / "app.py").write_text(textwrap.dedent(APP.format(tag=tag)))
    (folder / "rules" / "limits.toml").write_text(f"max_amount = {limit}\n")
    (folder / "x.json").write_text('{"currency": "EUR"}')
    (folder / "templates" / "a.txt").write_text("hello\n")
    (folder / "templates" / "b.txt").write_text("bye\n")
    return folder


@pytest.fixture
def revision(tmp_path: Path) -> Iterator[Revision]:
    loaded = load_revision(
        build(tmp_path, write_rules_app(tmp_path / "src")), data_dir=tmp_path / "data"
    )
    yield loaded
    loaded.unload()


def package(revision: Revision) -> Traversable:
    assert revision.namespace is not None
    return importlib.resources.files(revision.namespace.modules["rules_app"])


async def check(revision: Revision, amount: int) -> dict[str, object]:
    outcome = await Invoker(revision.app).invoke(
        "check", Event(id="1", data=msgspec.json.encode({"amount": amount}))
    )
    assert isinstance(outcome, Ok), outcome
    answer: dict[str, object] = msgspec.json.decode(outcome.data)
    return answer


@pytest.mark.anyio
async def test_an_app_reading_resources_at_import_and_call_time_loads_and_answers(
    revision: Revision,
) -> None:
    assert revision.namespace is not None
    assert revision.namespace.modules["rules_app"].SETTINGS == {"currency": "EUR"}
    assert await check(revision, 50) == {
        "allowed": True,
        "limit": 100,
        "currency": "EUR",
        "templates": ["a.txt", "b.txt"],
        "greeting": "hello",
        "same_on_disk": True,
        "is_file": True,
        "tag": "one",
    }
    assert (await check(revision, 101))["allowed"] is False


def test_the_traversable_behaves_like_a_path(revision: Revision) -> None:
    here = package(revision)
    assert here.is_dir() and not here.is_file()
    assert here.name == "rules_app"
    names = {p.name for p in here.iterdir()}
    assert {"__init__.py", "app.py", "engine.py", "x.json", "rules", "templates"} <= names
    limits = here / "rules" / "limits.toml"
    assert limits == here.joinpath("rules/limits.toml") == here.joinpath("rules", "limits.toml")
    assert limits.is_file() and not limits.is_dir()
    assert limits.read_bytes() == b"max_amount = 100\n"
    with limits.open("rb") as handle:
        assert handle.read() == b"max_amount = 100\n"
    assert (here / "rules" / ".." / "x.json").read_text() == '{"currency": "EUR"}'
    assert "import json" in (here / "__init__.py").read_text()  # module sources are files too
    assert [p.name for p in (here / "rules").iterdir()] == ["limits.toml"]
    assert str(limits).endswith("rules_app/rules/limits.toml")


def test_a_missing_resource_raises_file_not_found_naming_it(revision: Revision) -> None:
    here = package(revision)
    missing = here / "rules" / "nope.toml"
    assert not missing.is_file() and not missing.is_dir()
    with pytest.raises(FileNotFoundError, match="rules_app/rules/nope.toml"):
        missing.read_text()
    with pytest.raises(FileNotFoundError, match="rules_app/nowhere"):
        list((here / "nowhere").iterdir())
    assert revision.namespace is not None
    name = revision.namespace.modules["rules_app"].__name__
    with pytest.raises(FileNotFoundError, match="nope.json"):
        pkgutil.get_data(name, "nope.json")
    opened = importlib.resources.as_file(missing)
    with pytest.raises(FileNotFoundError, match="rules_app/rules/nope.toml"):
        opened.__enter__()


def test_paths_above_the_app_tree_or_odd_modes_name_nothing(revision: Revision) -> None:
    here = package(revision)
    above = here / ".." / ".." / "etc" / "passwd"
    assert not above.is_file()
    with pytest.raises(FileNotFoundError):
        above.read_bytes()
    assert not (here / "/etc/passwd").is_file()
    with pytest.raises(ValueError, match="read-only"):
        (here / "x.json").open("w")  # type: ignore[call-overload]
    with pytest.raises(IsADirectoryError):
        (here / "rules").read_bytes()
    with pytest.raises(NotADirectoryError):
        list((here / "x.json").iterdir())


def test_legacy_functions_and_pkgutil(revision: Revision) -> None:
    assert revision.namespace is not None
    name = revision.namespace.modules["rules_app"].__name__
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated in 3.11 and 3.12
        assert importlib.resources.read_text(name, "x.json") == '{"currency": "EUR"}'
        assert importlib.resources.read_binary(name, "x.json") == b'{"currency": "EUR"}'
        assert importlib.resources.is_resource(name, "x.json")
        assert "x.json" in list(importlib.resources.contents(name))
    assert pkgutil.get_data(name, "rules/limits.toml") == b"max_amount = 100\n"
    engine = revision.namespace.modules["rules_app.engine"].__name__
    assert pkgutil.get_data(engine, "templates/b.txt") == b"bye\n"  # beside a plain module


def test_as_file_gives_the_verified_extracted_file(revision: Revision, tmp_path: Path) -> None:
    here = package(revision)
    with importlib.resources.as_file(here / "rules" / "limits.toml") as real:
        assert real.is_file()
        assert real.is_relative_to(tmp_path / "data")
        assert real.read_bytes() == b"max_amount = 100\n"
    real.write_text("max_amount = 999999\n")  # someone edits the extracted copy
    assert (here / "rules" / "limits.toml").read_text() == "max_amount = 100\n"  # memory
    with importlib.resources.as_file(here / "rules" / "limits.toml") as again:
        assert again.read_text() == "max_amount = 100\n"  # restored before it was handed out
    with importlib.resources.as_file(here / "__init__.py") as source:  # not a data file
        assert "pkgutil.get_data" in source.read_text()
    with importlib.resources.as_file(here / "templates") as folder:
        assert sorted(p.name for p in folder.iterdir()) == ["a.txt", "b.txt"]


@pytest.mark.anyio
async def test_two_revisions_side_by_side_each_see_their_own_resources(tmp_path: Path) -> None:
    one = build(tmp_path, write_rules_app(tmp_path / "v1", limit=10, tag="one"), "v1.snap")
    two = build(tmp_path, write_rules_app(tmp_path / "v2", limit=20, tag="two"), "v2.snap")
    first = load_revision(one, data_dir=tmp_path / "data")
    second = load_revision(two, data_dir=tmp_path / "data")
    try:
        a, b = await check(first, 15), await check(second, 15)
        assert (a["limit"], a["allowed"], a["tag"]) == (10, False, "one")
        assert (b["limit"], b["allowed"], b["tag"]) == (20, True, "two")
        assert package(first).joinpath("rules/limits.toml").read_text() == "max_amount = 10\n"
        assert package(second).joinpath("rules/limits.toml").read_text() == "max_amount = 20\n"
        assert "rules_app" not in sys.modules
    finally:
        first.unload()
        second.unload()


@pytest.mark.anyio
async def test_fresh_instances_read_the_same_resources(revision: Revision) -> None:
    app, namespace = revision.execute_fresh()
    try:
        assert namespace.modules["rules_app.engine"].LIMITS == {"max_amount": 100}
        outcome = await Invoker(app).invoke("check", Event(id="1", data=b'{"amount": 1}'))
        assert isinstance(outcome, Ok)
    finally:
        namespace.unregister()


SOLO = """
import json
import pkgutil
from pathlib import Path

from thaw import App

app = App("solo")
SETTINGS = json.loads(pkgutil.get_data(__name__, "solo.json"))
BESIDE = json.loads((Path(__file__).parent / "solo.json").read_text())


@app.capability()
async def settings() -> dict:
    return {"settings": SETTINGS, "beside": BESIDE}
"""


@pytest.mark.anyio
async def test_a_plain_module_app_reads_the_files_beside_it(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "solo.py").write_text(textwrap.dedent(SOLO))
    (source / "solo.json").write_text('{"level": 3}')
    output = tmp_path / "solo.snap"
    build_snapshot(str(source / "solo.py"), str(output))
    revision = load_revision(output, data_dir=tmp_path / "data")
    try:
        outcome = await Invoker(revision.app).invoke("settings", Event(id="1"))
        assert outcome == Ok(b'{"settings":{"level":3},"beside":{"level":3}}')
        assert revision.namespace is not None
        module = revision.namespace.modules["solo"]
        # What files(module) asks on Python 3.12+ (3.11 takes packages only): the folder
        # holding the module; and files(__package__) of a top-level module: the app's top.
        reader = module.__spec__.loader.get_resource_reader(module.__spec__.name)
        assert (reader.files() / "solo.json").read_bytes() == b'{"level": 3}'
        top = importlib.resources.files(module.__package__)
        assert sorted(p.name for p in top.iterdir()) == ["solo.json", "solo.py"]
    finally:
        revision.unload()


_TREE = SnapshotTree(
    revision="ab" * 16,
    data={"pkg/data/x.json": b"{}", "pkg/rules/limits.toml": b"max = 1\n"},
    sources={"pkg/__init__.py": b"", "pkg/app.py": b"app = None\n"},
    base=Path("/nonexistent/thaw/rev-" + "ab" * 16),
)
_SEGMENT = st.sampled_from(["..", ".", "", "/", "pkg", "data", "x.json", "rules", "a/../..", "//"])


@given(st.lists(st.one_of(_SEGMENT, st.text(max_size=8)), max_size=6))
def test_any_joined_path_names_a_snapshot_file_or_nothing(segments: list[str]) -> None:
    path = _TREE.path("pkg").joinpath(*segments) if segments else _TREE.path("pkg")
    try:
        content = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        assert not path.is_file()
        return
    assert content in _TREE.files.values()
    assert path.is_file()

"""Building a snapshot of an app nobody wrote for it: lazy imports, sys.exit() at
import, files beside the app (.thawignore, logs, keys, FIFOs), hostile snapshot files,
and a build that proves its snapshot loads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thaw._errors import AppLoadError
from thaw.adapters.process.build import build_snapshot
from thaw.snapshots._collect import IgnoreRules
from thaw.snapshots._format import (
    MAX_SNAPSHOT_BYTES,
    SnapshotError,
    decode_snapshot,
    encode_snapshot,
)
from thaw.snapshots._revision import is_snapshot, load_revision

CLI = [sys.executable, "-m", "thaw.adapters.cli"]
TIMEOUT = 120


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def thaw(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *argv], capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd, check=False
    )


LAZY_APP = {
    "shop/__init__.py": "from .app import app\n",
    "shop/app.py": """
        from thaw import App

        app = App("shop")


        @app.capability()
        async def price(item: str) -> dict:
            from .pricing import table  # imported lazily: not loaded by importing the app
            from . import extras

            return {"price": table()[item], "extra": extras.EXTRA}


        @app.capability()
        async def broken() -> str:
            from .nowhere import thing  # a module that does not exist

            return thing
        """,
    "shop/pricing.py": """
        from .rates.base import BASE

        def table() -> dict:
            return {"tea": BASE * 2}
        """,
    "shop/rates/__init__.py": "",
    "shop/rates/base.py": "BASE = 21\n",
    "shop/extras.py": "EXTRA = 'mint'\n",
}


def test_lazily_imported_app_modules_are_captured_and_a_missing_one_is_named(
    tmp_path: Path,
) -> None:
    write(tmp_path, LAZY_APP)
    warnings: list[str] = []
    result = build_snapshot(
        str(tmp_path / "shop"), str(tmp_path / "shop.snap"), on_warning=warnings.append
    )
    assert {"shop.pricing", "shop.rates.base", "shop.extras"} <= set(result.modules)
    assert any("shop.nowhere" in w and "app.py" in w for w in warnings), warnings
    # The snapshot answers without the sources: they are moved away first.
    (tmp_path / "shop").rename(tmp_path / "gone")
    done = thaw("run", "shop.snap", "-c", "price", "-d", '"tea"', "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    answer = msgspec.json.decode(done.stdout.strip().splitlines()[-1])
    assert answer == {"outcome": "ok", "data": {"price": 42, "extra": "mint"}}


def test_the_build_prints_its_warnings_on_stderr(tmp_path: Path) -> None:
    write(tmp_path, LAZY_APP)
    done = thaw("snapshot", "build", "shop", "-o", "shop.snap", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "thaw: warning:" in done.stderr and "shop.nowhere" in done.stderr


EXITING = """
    import sys
    from thaw import App

    app = App("exits")
    sys.exit({code})
    """


@pytest.mark.parametrize("code", ["0", "3", "'bye'"])
def test_sys_exit_at_import_is_app_load_failed_for_run_and_build(tmp_path: Path, code: str) -> None:
    write(tmp_path, {"app.py": EXITING.format(code=code)})
    ran = thaw("run", "app.py", "-c", "anything", cwd=tmp_path)
    assert ran.returncode != 0
    assert "app_load_failed" in ran.stderr and "sys.exit" in ran.stderr, ran.stderr
    built = thaw("snapshot", "build", "app.py", "-o", "x.snap", cwd=tmp_path)
    assert built.returncode != 0 and "sys.exit" in built.stderr, built.stderr
    assert not (tmp_path / "x.snap").exists()


def test_load_app_turns_sys_exit_into_app_load_error(tmp_path: Path) -> None:
    from thaw.declarations._loader import load_app

    write(tmp_path, {"exiting_app_mod.py": EXITING.format(code="0")})
    with pytest.raises(AppLoadError, match=r"sys\.exit\(0\)"):
        load_app(str(tmp_path / "exiting_app_mod.py"))


BESIDE_APP = {
    "app.py": """
        from pathlib import Path
        from thaw import App

        app = App("beside")
        RULES = (Path(__file__).parent / "rules.txt").read_text()


        @app.capability()
        async def rules() -> str:
            return RULES
        """,
    "rules.txt": "no spam\n",
    "keep/important.csv": "a,b\n",
    "results/run-1.json": "{}\n",
    "keep/scratch.parquet": "x",
    "server.log": "a log line\n",
    "serve.out": "thaw: serving app\n",  # thaw serve app.py > serve.out 2> serve.err
    "serve.err": "thaw: warning\n",
    "nohup.out": "\n",
    "notes.txt~": "editor backup\n",
    ".env": "SECRET=1\n",
    "deploy.key": "key\n",
    "cert/leaf.pem": "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n",
    ".thawignore": """
        # results of runs and column files are not data
        results/
        *.parquet
        """,
}


def test_files_beside_the_app_follow_thawignore_and_the_default_skips(tmp_path: Path) -> None:
    write(tmp_path, BESIDE_APP)
    warnings: list[str] = []
    result = build_snapshot(
        str(tmp_path / "app.py"), str(tmp_path / "app.snap"), on_warning=warnings.append
    )
    assert sorted(result.data_files) == ["keep/important.csv", "rules.txt"]
    assert any("cert/leaf.pem" in w and "private key" in w for w in warnings), warnings
    before = result.revision
    (tmp_path / "server.log").write_text("more lines\n")  # a running app's log
    (tmp_path / "serve.out").write_text("thaw: serving app\nmore\n")
    (tmp_path / "results" / "run-2.json").write_text("{}\n")
    again = build_snapshot(str(tmp_path / "app.py"), str(tmp_path / "again.snap"))
    assert again.revision == before


def test_a_fifo_beside_the_app_is_left_out_unopened(tmp_path: Path) -> None:
    write(tmp_path, {"app.py": BESIDE_APP["app.py"], "rules.txt": "ok\n"})
    os.mkfifo(tmp_path / "pipe")  # opening it for reading would block the build forever
    warnings: list[str] = []
    result = build_snapshot(
        str(tmp_path / "app.py"), str(tmp_path / "app.snap"), on_warning=warnings.append
    )
    assert result.data_files == ["rules.txt"]
    assert any("pipe" in w and "not a regular file" in w for w in warnings), warnings


def test_a_snapshot_that_does_not_load_fails_the_build_and_is_removed(tmp_path: Path) -> None:
    # From source the app reads a .log file beside it; a snapshot leaves logs out.
    write(
        tmp_path,
        {
            "app.py": """
                from pathlib import Path
                from thaw import App

                app = App("needs_log")
                SEED = (Path(__file__).parent / "seed.log").read_text()
                """,
            "seed.log": "42\n",
        },
    )
    output = tmp_path / "app.snap"
    with pytest.raises(SnapshotError, match=r"does not load.*seed\.log"):
        build_snapshot(str(tmp_path / "app.py"), str(output))
    assert not output.exists()


def test_a_broken_thawignore_is_a_clear_build_error(tmp_path: Path) -> None:
    write(tmp_path, {"app.py": BESIDE_APP["app.py"], "rules.txt": "ok\n"})
    (tmp_path / ".thawignore").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SnapshotError, match=r"\.thawignore.*not UTF-8"):
        build_snapshot(str(tmp_path / "app.py"), str(tmp_path / "app.snap"))


# -- hostile snapshot files -------------------------------------------------------------


@pytest.fixture
def small_snapshot(tmp_path: Path) -> Path:
    write(tmp_path / "src", {"app.py": BESIDE_APP["app.py"], "rules.txt": "ok\n"})
    output = tmp_path / "small.snap"
    build_snapshot(str(tmp_path / "src" / "app.py"), str(output))
    return output


def test_a_fifo_named_like_a_snapshot_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "x.snap"
    os.mkfifo(fifo)
    with pytest.raises(SnapshotError, match="not a regular file"):
        load_revision(fifo)
    os.mkfifo(tmp_path / "plain")
    assert not is_snapshot(str(tmp_path / "plain"))
    done = thaw("snapshot", "inspect", "x.snap", cwd=tmp_path)
    assert done.returncode != 0 and "not a regular file" in done.stderr, done.stderr


def test_an_oversized_snapshot_is_refused_by_its_size_before_reading(tmp_path: Path) -> None:
    huge = tmp_path / "huge.snap"
    with open(huge, "wb") as handle:  # sparse: no disk used, nothing to read
        handle.truncate(MAX_SNAPSHOT_BYTES + 1)
    with pytest.raises(SnapshotError, match="more than the limit"):
        load_revision(huge)
    done = thaw("snapshot", "inspect", "huge.snap", cwd=tmp_path)
    assert done.returncode != 0 and "more than the limit" in done.stderr, done.stderr


def test_inspect_fails_on_code_that_cannot_be_unmarshalled(
    small_snapshot: Path, tmp_path: Path
) -> None:
    payload = decode_snapshot(small_snapshot.read_bytes())
    modules = [msgspec.structs.replace(m, code=b"\x00garbage") for m in payload.modules]
    damaged = tmp_path / "damaged.snap"
    damaged.write_bytes(encode_snapshot(msgspec.structs.replace(payload, modules=modules)))
    done = thaw("snapshot", "inspect", "damaged.snap", cwd=tmp_path)
    assert done.returncode != 0 and "unreadable code" in done.stderr, done.stderr
    good = thaw("snapshot", "inspect", str(small_snapshot), cwd=tmp_path)
    assert good.returncode == 0, good.stderr


# -- .thawignore patterns -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "path", "folder", "ignored"),
    [
        ("*.csv", "a/b/c.csv", False, True),
        ("*.csv", "c.csv", False, True),
        ("/c.csv", "a/c.csv", False, False),
        ("data/*.csv", "data/x.csv", False, True),
        ("data/*.csv", "other/data/x.csv", False, False),
        ("**/tmp", "a/b/tmp", True, True),
        ("out/", "out", True, True),
        ("out/", "out", False, False),
        ("*.csv\n!keep.csv", "keep.csv", False, False),
        ("*.csv\n!keep.csv", "drop.csv", False, True),
        ("\\#hash", "#hash", False, True),
        ("# a comment\n\n   ", "anything", False, False),
    ],
)
def test_ignore_patterns(patterns: str, path: str, folder: bool, ignored: bool) -> None:
    assert IgnoreRules.parse(patterns).ignored(path, folder=folder) is ignored


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(max_size=300),
    path=st.lists(st.text(min_size=1, max_size=12).filter(lambda p: "/" not in p), max_size=8),
)
def test_any_ignore_text_parses_and_answers(text: str, path: list[str]) -> None:
    rules = IgnoreRules.parse(text)
    if path:
        assert rules.ignored("/".join(path), folder=False) in (True, False)


def test_many_stars_do_not_backtrack() -> None:
    rules = IgnoreRules.parse("/".join(["**"] * 40 + ["x"]))
    assert rules.ignored("/".join(["a"] * 60), folder=False) is False

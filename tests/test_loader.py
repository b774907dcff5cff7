"""Loading an App from what a user typed: files, folders, packages, 'module:attribute'."""

from __future__ import annotations

import importlib
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from thaw._errors import AppLoadError
from thaw.declarations._app import App
from thaw.declarations._loader import load_app


@pytest.fixture(autouse=True)
def isolated_imports() -> Iterator[None]:
    """Undo what loading does to sys.path and sys.modules, so tests cannot see each other."""
    saved_path = list(sys.path)
    saved_modules = dict(sys.modules)
    yield
    sys.path[:] = saved_path
    for name in [name for name in sys.modules if name not in saved_modules]:
        del sys.modules[name]
    for name, module in saved_modules.items():
        if sys.modules.get(name) is not module:
            sys.modules[name] = module
    importlib.invalidate_caches()


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def app_source(name: str) -> str:
    return f"from thaw import App\n\napp = App({name!r})\n"


# -- accepted forms ----------------------------------------------------------------


def test_loads_a_python_file(tmp_path: Path) -> None:
    path = write(tmp_path / "billing.py", app_source("billing"))
    app = load_app(str(path))
    assert isinstance(app, App)
    assert app.name == "billing"
    assert str(tmp_path) in sys.path  # the file's folder, for its own imports
    assert load_app(str(path)) is app  # loading again reuses the imported module


def test_a_file_may_import_its_neighbours(tmp_path: Path) -> None:
    write(tmp_path / "names_for_loader_test.py", "NAME = 'neighbour'\n")
    path = write(
        tmp_path / "main.py",
        """
        from names_for_loader_test import NAME
        from thaw import App

        app = App(NAME)
        """,
    )
    assert load_app(str(path)).name == "neighbour"


def test_loads_app_py_from_a_folder(tmp_path: Path) -> None:
    write(tmp_path / "svc" / "app.py", app_source("svc"))
    assert load_app(str(tmp_path / "svc")).name == "svc"
    assert load_app(str(tmp_path / "svc") + "/").name == "svc"


def test_loads_a_package_whose_init_uses_a_relative_import(tmp_path: Path) -> None:
    write(tmp_path / "orders_pkg" / "names.py", "NAME = 'orders'\n")
    write(
        tmp_path / "orders_pkg" / "__init__.py",
        """
        from thaw import App

        from .names import NAME

        app = App(NAME)
        """,
    )
    assert load_app(str(tmp_path / "orders_pkg")).name == "orders"
    assert "orders_pkg.names" in sys.modules


def test_loads_the_app_submodule_of_a_package(tmp_path: Path) -> None:
    write(tmp_path / "stock_pkg" / "__init__.py", "")
    write(tmp_path / "stock_pkg" / "names.py", "NAME = 'stock'\n")
    write(
        tmp_path / "stock_pkg" / "app.py",
        """
        from thaw import App

        from .names import NAME

        app = App(NAME)
        """,
    )
    assert load_app(str(tmp_path / "stock_pkg")).name == "stock"
    assert "stock_pkg.app" in sys.modules


def test_module_and_attribute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(
        tmp_path / "loader_test_mod.py",
        """
        from thaw import App

        public = App("public")
        admin = App("admin")
        """,
    )
    write(tmp_path / "loader_test_pkg" / "__init__.py", "")
    write(tmp_path / "loader_test_pkg" / "service.py", app_source("nested"))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_app("loader_test_mod:admin").name == "admin"
    assert load_app("loader_test_mod:public").name == "public"
    assert load_app("loader_test_pkg.service:app").name == "nested"
    assert load_app("loader_test_pkg.service:").name == "nested"  # empty name: the default


def test_file_and_name_picks_one_of_several_apps(tmp_path: Path) -> None:
    path = write(
        tmp_path / "both.py",
        """
        from thaw import App

        public = App("public")
        admin = App("admin")
        """,
    )
    assert load_app(f"{path}:admin").name == "admin"
    assert load_app(f"{path}:public").name == "public"


def test_a_single_app_is_found_under_any_variable_name(tmp_path: Path) -> None:
    path = write(tmp_path / "single.py", "from thaw import App\n\nservice = App('only')\n")
    assert load_app(str(path)).name == "only"


def test_a_variable_named_app_wins_over_other_apps(tmp_path: Path) -> None:
    path = write(
        tmp_path / "several.py",
        """
        from thaw import App

        helper = App("helper")
        app = App("main")
        """,
    )
    assert load_app(str(path)).name == "main"


def test_two_folders_with_app_py_give_two_apps(tmp_path: Path) -> None:
    write(tmp_path / "first" / "app.py", app_source("first"))
    write(tmp_path / "second" / "app.py", app_source("second"))
    first = load_app(str(tmp_path / "first"))
    second = load_app(str(tmp_path / "second"))
    assert (first.name, second.name) == ("first", "second")
    assert load_app(str(tmp_path / "first")).name == "first"
    assert load_app(str(tmp_path / "second" / "app.py")).name == "second"


def test_two_packages_with_the_same_folder_name_give_two_apps(tmp_path: Path) -> None:
    for side in ("left", "right"):
        write(tmp_path / side / "svc_pkg" / "__init__.py", "")
        write(tmp_path / side / "svc_pkg" / "names.py", f"NAME = {side!r}\n")
        write(
            tmp_path / side / "svc_pkg" / "app.py",
            "from thaw import App\n\nfrom .names import NAME\n\napp = App(NAME)\n",
        )
    assert load_app(str(tmp_path / "left" / "svc_pkg")).name == "left"
    assert load_app(str(tmp_path / "right" / "svc_pkg")).name == "right"
    assert load_app(str(tmp_path / "left" / "svc_pkg")).name == "left"


# -- errors ------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["", "   "])
def test_empty_target(target: str) -> None:
    with pytest.raises(AppLoadError, match="no app given"):
        load_app(target)


def test_missing_path(tmp_path: Path) -> None:
    target = str(tmp_path / "nope.py")
    with pytest.raises(AppLoadError) as info:
        load_app(target)
    assert info.value.message == f"{target!r} does not exist"


def test_missing_module() -> None:
    with pytest.raises(AppLoadError, match="cannot find module 'no_such_module_for_thaw'"):
        load_app("no_such_module_for_thaw:app")


@pytest.mark.parametrize("target", [":app", ".relative:app"])
def test_unimportable_module_names(target: str) -> None:
    with pytest.raises(AppLoadError, match=re.escape(repr(target))):
        load_app(target)


def test_folder_without_app_py(tmp_path: Path) -> None:
    write(tmp_path / "empty" / "other.py", app_source("other"))
    target = str(tmp_path / "empty")
    with pytest.raises(AppLoadError) as info:
        load_app(target)
    assert info.value.message == f"{target!r} is a folder without __init__.py or app.py"


def test_not_a_python_file(tmp_path: Path) -> None:
    path = write(tmp_path / "app.txt", app_source("txt"))
    with pytest.raises(AppLoadError, match=r"is not a Python file \(\*\.py\)") as info:
        load_app(str(path))
    assert str(path) in info.value.message


def test_module_without_an_app(tmp_path: Path) -> None:
    path = write(tmp_path / "plain.py", "from thaw import App\n\nVALUE = 1\n")
    with pytest.raises(AppLoadError, match="defines no App; create one with app = App"):
        load_app(str(path))


def test_package_without_an_app(tmp_path: Path) -> None:
    write(tmp_path / "bare_pkg" / "__init__.py", "VALUE = 1\n")
    with pytest.raises(AppLoadError, match="defines no App"):
        load_app(str(tmp_path / "bare_pkg"))


def test_several_apps_without_a_name(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pair.py",
        """
        from thaw import App

        public = App("public")
        admin = App("admin")
        """,
    )
    with pytest.raises(AppLoadError) as info:
        load_app(str(path))
    assert "defines several Apps (public, admin)" in info.value.message
    assert "FILE:NAME" in info.value.message


def test_import_raising_is_reported_with_its_cause(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.py", "raise RuntimeError('database url missing')\n")
    with pytest.raises(AppLoadError) as info:
        load_app(str(path))
    assert "RuntimeError: database url missing" in info.value.message
    assert isinstance(info.value.__cause__, RuntimeError)


def test_missing_dependency_is_not_mistaken_for_a_missing_app(tmp_path: Path) -> None:
    path = write(tmp_path / "needs_dep.py", "import thaw_missing_dependency_xyz\n")
    with pytest.raises(AppLoadError) as info:
        load_app(str(path))
    assert info.value.message.startswith(f"importing {str(path)!r} failed")
    assert "thaw_missing_dependency_xyz" in info.value.message


def test_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path / "typo.py", "from thaw import App\napp = App('x'\n")
    with pytest.raises(AppLoadError, match="SyntaxError") as info:
        load_app(str(path))
    assert isinstance(info.value.__cause__, SyntaxError)


@pytest.mark.parametrize("attribute", ["helper", "missing", "App"])
def test_attribute_that_is_not_an_app(tmp_path: Path, attribute: str) -> None:
    path = write(
        tmp_path / "attrs.py",
        "from thaw import App\n\napp = App('real')\nhelper = 42\n",
    )
    with pytest.raises(AppLoadError, match=f"{attribute!r} is not an App"):
        load_app(f"{path}:{attribute}")


def test_a_failed_load_does_not_poison_the_next_one(tmp_path: Path) -> None:
    write(tmp_path / "bad" / "app.py", "raise ValueError('no')\n")
    write(tmp_path / "good" / "app.py", app_source("good"))
    with pytest.raises(AppLoadError):
        load_app(str(tmp_path / "bad"))
    assert load_app(str(tmp_path / "good")).name == "good"

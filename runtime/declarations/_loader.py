"""Find and import an App from a path a user typed.

Accepted forms:
- ``path/to/file.py``: imported as a top-level module, its folder on ``sys.path``;
- ``path/to/pkg`` with ``__init__.py``: imported as a package (relative imports work),
  the App taken from the package or its ``app`` submodule;
- ``path/to/dir`` without ``__init__.py``: ``dir/app.py``;
- ``module.name:attribute``: an importable module and the App's variable name.

The App is the module's ``app`` variable, or its only ``App`` instance. Every
failure is an ``AppLoadError`` that says what was looked for and where, including
an app that calls ``sys.exit()`` (or raises ``KeyboardInterrupt``) while imported.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from thaw._errors import AppLoadError
from thaw.declarations._app import App

__all__ = ["load_app"]


def load_app(target: str) -> App:
    if not isinstance(target, str) or not target.strip():
        raise AppLoadError("no app given: pass a file, a package folder or 'module:attribute'")
    attribute: str | None = None
    location = target
    if ":" in target and not os.path.exists(target):
        location, _, attribute = target.rpartition(":")
        attribute = attribute or None
        if not os.path.exists(location):
            return _pick_app(_import(location, target), target, attribute)
    path = os.path.abspath(location)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "__init__.py")):
            parent, name = os.path.split(path)
            _forget_if_elsewhere(name, os.path.join(path, "__init__.py"))
            module = _import(name, target, search=parent)
            if attribute or _find_apps(module) or not os.path.isfile(os.path.join(path, "app.py")):
                return _pick_app(module, target, attribute)
            return _pick_app(_import(f"{name}.app", target, search=parent), target, None)
        path = os.path.join(path, "app.py")
        if not os.path.isfile(path):
            raise AppLoadError(f"{target!r} is a folder without __init__.py or app.py")
    if not os.path.isfile(path):
        raise AppLoadError(f"{target!r} does not exist")
    if not path.endswith(".py"):
        raise AppLoadError(f"{target!r} is not a Python file (*.py)")
    folder, filename = os.path.split(path)
    name = filename[:-3]
    _forget_if_elsewhere(name, path)
    return _pick_app(_import(name, target, search=folder), target, attribute)


def _forget_if_elsewhere(name: str, path: str) -> None:
    """Drop module ``name`` and its submodules if they were loaded from another file.

    Another file or package of the same name (say, a second app.py) was loaded
    before; without this, import would hand back the cached one.
    """
    existing = sys.modules.get(name)
    if existing is None or os.path.abspath(getattr(existing, "__file__", "") or "") == path:
        return
    for key in [key for key in sys.modules if key == name or key.startswith(name + ".")]:
        del sys.modules[key]


def _import(module_name: str, target: str, *, search: str | None = None) -> ModuleType:
    if search is not None:
        if search in sys.path:
            sys.path.remove(search)
        sys.path.insert(0, search)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name.split(".")[0] or exc.name == module_name:
            raise AppLoadError(f"cannot find module {module_name!r} for {target!r}") from exc
        raise AppLoadError(f"importing {target!r} failed: {exc}") from exc
    except Exception as exc:
        raise AppLoadError(f"importing {target!r} failed: {type(exc).__name__}: {exc}") from exc
    except SystemExit as exc:
        # Left alone, sys.exit() at import would end `thaw run` (exit 0, no output) or a
        # build child as if the app had been dealt with.
        raise AppLoadError(
            f"importing {target!r} failed: the app called sys.exit({exc.code!r}) while it "
            "was being imported; an app module must not exit at import"
        ) from exc
    except KeyboardInterrupt as exc:
        raise AppLoadError(
            f"importing {target!r} failed: KeyboardInterrupt raised while it was being imported"
        ) from exc


def _find_apps(module: ModuleType) -> list[tuple[str, App]]:
    return [(name, value) for name, value in vars(module).items() if isinstance(value, App)]


def _pick_app(module: ModuleType, target: str, attribute: str | None) -> App:
    if attribute is not None:
        value = getattr(module, attribute, None)
        if not isinstance(value, App):
            raise AppLoadError(f"{target!r}: {attribute!r} is not an App (got {type(value)})")
        return value
    value = getattr(module, "app", None)
    if isinstance(value, App):
        return value
    apps = _find_apps(module)
    if len(apps) == 1:
        return apps[0][1]
    if not apps:
        raise AppLoadError(f"{target!r} defines no App; create one with app = App('name')")
    names = ", ".join(name for name, _ in apps)
    raise AppLoadError(f"{target!r} defines several Apps ({names}); say which with FILE:NAME")

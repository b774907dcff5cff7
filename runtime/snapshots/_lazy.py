"""Finding the app modules an import did not load: lazy imports, named in the sources.

An app may import its own modules inside functions (``def handler(): from .heavy
import thing``); importing the app does not run those lines, so a snapshot built
from what the import loaded would miss ``heavy`` and fail at call time.
``import_lazy_modules`` reads the source of every app module with ``ast`` and finds
every import statement anywhere in it (function bodies included; absolute and
relative; ``importlib.import_module("literal")`` and ``__import__("literal")``),
keeps those naming a module of the app's own tree, and imports them, transitively,
so the build captures them. What it cannot import or find, it names in a warning.

Rules, so the warnings stay honest:

- an import inside ``if TYPE_CHECKING:`` or ``if __name__ == "__main__":`` is not
  followed (it never runs when the app serves);
- an import inside ``try:`` with a handler for ``ImportError`` (or a broader one) is
  followed, but its failure is not warned about: the app is ready for it;
- names computed at run time (``import_module(name)``) cannot be seen: such modules
  are captured only if the app's import loaded them (the docs say so).

Invariants: only modules whose file lies inside the app tree (or whose top-level
name is one of the app's) are imported here; failures never escape as exceptions,
they become warnings (``SystemExit`` included).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

__all__ = ["Reference", "find_references", "import_lazy_modules", "own_modules"]

_IMPORT_CALLS = {"import_module", "importlib.import_module", "__import__", "builtins.__import__"}
_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


class Reference(NamedTuple):
    """One import in a source: ``import a.b`` / ``from .x import y`` / ``import_module("z")``."""

    level: int  # dots of a relative import; 0 for an absolute one
    module: str  # the module part as written, without the dots ("" in ``from . import x``)
    names: tuple[str, ...]  # ``from ... import names`` (each maybe a submodule); () otherwise
    line: int
    guarded: bool  # inside ``try`` with a handler that catches ImportError


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(_dotted(kind).rpartition(".")[2] in _IMPORT_ERRORS for kind in kinds)


def _never_runs_when_served(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` / ``typing.TYPE_CHECKING`` / ``__name__ == "__main__"``."""
    if _dotted(test).rpartition(".")[2] == "TYPE_CHECKING":
        return True
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
        sides = [test.left, test.comparators[0]]
        names = {_dotted(side) for side in sides}
        texts = {side.value for side in sides if isinstance(side, ast.Constant)}
        return "__name__" in names and "__main__" in texts
    return False


class _Finder(ast.NodeVisitor):
    def __init__(self, module_name: str, package: str) -> None:
        self.found: list[Reference] = []
        self._guards = 0
        self._module_name = module_name
        self._package = package

    def visit_Try(self, node: ast.Try | ast.TryStar) -> None:
        guarded = any(_catches_import_error(handler) for handler in node.handlers)
        self._guards += guarded
        for child in node.body:
            self.visit(child)
        self._guards -= guarded
        for other in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(other)

    visit_TryStar = visit_Try

    def visit_If(self, node: ast.If) -> None:
        if _never_runs_when_served(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(0, alias.name, (), node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        names = tuple(alias.name for alias in node.names if alias.name != "*")
        self._add(node.level, node.module or "", names, node)

    def visit_Call(self, node: ast.Call) -> None:
        if _dotted(node.func) in _IMPORT_CALLS and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                self._add_call(node, first.value)
        self.generic_visit(node)

    def _add_call(self, node: ast.Call, text: str) -> None:
        if _dotted(node.func).endswith("__import__"):
            if not text.startswith("."):  # __import__ spells relative imports with level=
                self._add(0, text, (), node)
            return
        level = len(text) - len(text.lstrip("."))
        if not level:
            self._add(0, text, (), node)
            return
        anchor = node.args[1] if len(node.args) > 1 else None
        for keyword in node.keywords:
            if keyword.arg == "package":
                anchor = keyword.value
        package = None
        if isinstance(anchor, ast.Constant) and isinstance(anchor.value, str):
            package = anchor.value
        elif isinstance(anchor, ast.Name) and anchor.id == "__package__":
            package = self._package
        elif isinstance(anchor, ast.Name) and anchor.id == "__name__":
            package = self._module_name
        if package is not None:
            try:
                absolute = importlib.util.resolve_name(text, package)
            except (ImportError, ValueError):
                return
            self._add(0, absolute, (), node)

    def _add(
        self, level: int, module: str, names: tuple[str, ...], node: ast.stmt | ast.expr
    ) -> None:
        self.found.append(Reference(level, module, names, node.lineno, self._guards > 0))


def find_references(source: bytes, *, module_name: str, package: str) -> list[Reference]:
    """Every import in ``source`` (see the module doc); [] if it does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    finder = _Finder(module_name, package)
    finder.visit(tree)
    return finder.found


def _module_file(module: types.ModuleType) -> Path | None:
    file = getattr(module, "__file__", None)
    if not isinstance(file, str) or not file.endswith(".py"):
        return None
    return Path(file).resolve()


def own_modules(root: Path, loaded_before: set[str]) -> list[tuple[str, types.ModuleType, Path]]:
    """Modules loaded since ``loaded_before`` from ``.py`` files inside ``root``, in order."""
    found = []
    for name, module in list(sys.modules.items()):
        if name in loaded_before or module is None:
            continue
        path = _module_file(module)
        if path is not None and path.is_relative_to(root):
            found.append((name, module, path))
    return found


class _Resolver:
    def __init__(self, root: Path, base: Path, warn: Callable[[str], None]) -> None:
        self._root = root
        self._base = base
        self._warn = warn
        self._tops: set[str] = set()

    def tops(self, names: Iterable[str]) -> None:
        self._tops.update(name.partition(".")[0] for name in names)

    def _where_is(self, name: str) -> str:
        """Where ``name`` lives: "own" (the app's tree), "foreign" or "missing"."""
        top = name.partition(".")[0]
        if top in self._tops:
            return "own"
        module = sys.modules.get(top)
        if module is not None:
            path = _module_file(module)
            locations = [str(path)] if path else list(getattr(module, "__path__", []) or [])
        else:
            try:
                spec = importlib.util.find_spec(top)  # a top-level name: imports nothing
            except (ImportError, ValueError):
                return "missing"
            if spec is None:
                return "missing"
            locations = [spec.origin or "", *(spec.submodule_search_locations or [])]
        inside = any(loc and Path(loc).resolve().is_relative_to(self._root) for loc in locations)
        return "own" if inside else "foreign"

    def follow(self, module_name: str, module: types.ModuleType, path: Path) -> None:
        try:
            source = path.read_bytes()
        except OSError:
            return
        package = module.__package__ or ""
        inside = path.is_relative_to(self._base)
        where_path = path.relative_to(self._base).as_posix() if inside else str(path)
        for ref in find_references(source, module_name=module_name, package=package):
            where = f"{where_path}:{ref.line}"
            if ref.level:
                try:
                    target = importlib.util.resolve_name("." * ref.level + ref.module, package)
                except (ImportError, ValueError):
                    if not ref.guarded:
                        self._warn(f"{where}: a relative import beyond the top-level package")
                    continue
            else:
                target = ref.module
                place = self._where_is(target)
                if place == "foreign":
                    continue  # the standard library or a third-party package: not ours to copy
                if place == "missing":
                    if not ref.guarded:
                        self._warn(
                            f"{where}: the lazily imported module {target!r} is found nowhere "
                            "(neither in the app's tree nor installed); that import will fail"
                        )
                    continue
            imported = self._import(target, where, guarded=ref.guarded)
            if imported is not None:
                self._names(imported, ref.names, where, guarded=ref.guarded)

    def _import(self, name: str, where: str, *, guarded: bool) -> types.ModuleType | None:
        if name in sys.modules:
            return sys.modules[name]
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            if not guarded:
                missing = getattr(exc, "name", None) or name
                self._warn(
                    f"{where}: the lazily imported module {name!r} cannot be imported "
                    f"({type(exc).__name__}: {exc}); it is not in the snapshot"
                    + (f" (missing: {missing!r})" if missing != name else "")
                )
        except (Exception, SystemExit) as exc:
            self._warn(
                f"{where}: the lazily imported module {name!r} failed while being imported "
                f"({type(exc).__name__}: {exc}); it is not in the snapshot"
            )
        return None

    def _names(
        self, module: types.ModuleType, names: tuple[str, ...], where: str, *, guarded: bool
    ) -> None:
        """``from module import name``: each name a submodule to capture, or an attribute."""
        for item in names:
            child = f"{module.__name__}.{item}"
            if child in sys.modules or not hasattr(module, "__path__"):
                continue
            try:
                spec = importlib.util.find_spec(child)
            except (ImportError, ValueError):
                spec = None
            if spec is not None:
                self._import(child, where, guarded=guarded)
            elif not hasattr(module, item) and not guarded:
                self._warn(
                    f"{where}: {module.__name__!r} has no module or attribute {item!r} "
                    "(imported lazily; it would fail when that line runs)"
                )


def import_lazy_modules(
    root: Path, base: Path, loaded_before: set[str], warn: Callable[[str], None]
) -> None:
    """Import the app modules named by imports in the app's sources, until none is new."""
    resolver = _Resolver(root, base, warn)
    scanned: set[str] = set()
    while True:
        pending = [m for m in own_modules(root, loaded_before) if m[0] not in scanned]
        if not pending:
            return
        resolver.tops(name for name, _, _ in pending)
        for name, module, path in pending:
            scanned.add(name)
            resolver.follow(name, module, path)

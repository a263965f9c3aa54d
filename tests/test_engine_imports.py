"""The engine stays pure Python: no Django, no Celery, nothing of layerhub above it.

Checked by reading the source with ``ast``, not by importing it, so an import hidden behind a
condition or inside a function is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parent.parent / "layerhub" / "engine"
FORBIDDEN_TOP_LEVEL = frozenset({"django", "celery", "kombu", "rest_framework"})
DYNAMIC_IMPORTERS = frozenset({"import_module", "__import__"})


def module_name(path: Path) -> str:
    """``layerhub/engine/x/y.py`` -> ``layerhub.engine.x.y``; an ``__init__`` names its package."""
    parts = list(path.relative_to(ENGINE.parent.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(module: str | None, level: int, importer: str, is_package: bool) -> str:
    """The absolute name a possibly relative ``from ... import`` refers to."""
    if level == 0:
        return module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join([*base, module] if module else base)


def forbidden(name: str) -> bool:
    """True for a module the engine may not import."""
    top = name.split(".")[0]
    if top in FORBIDDEN_TOP_LEVEL:
        return True
    inside_engine = name == "layerhub.engine" or name.startswith("layerhub.engine.")
    return top == "layerhub" and not inside_engine


def imported_names(source: str, importer: str, is_package: bool) -> list[tuple[int, str]]:
    """Every module ``source`` imports, statically or through importlib, with its line."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = resolve(node.module, node.level, importer, is_package)
            found.append((node.lineno, target))
            if node.module is None:  # `from .. import x` may name a module x
                found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if called in DYNAMIC_IMPORTERS and isinstance(first, ast.Constant):
                found.append((node.lineno, str(first.value)))
    return found


def violations_in(path: Path) -> list[str]:
    importer = module_name(path)
    names = imported_names(path.read_text(), importer, path.name == "__init__.py")
    return [f"{path}:{line}: imports {name}" for line, name in names if forbidden(name)]


def test_engine_imports_nothing_from_above() -> None:
    modules = sorted(ENGINE.rglob("*.py"))
    assert modules, f"no engine modules found under {ENGINE}"
    problems = [problem for path in modules for problem in violations_in(path)]
    assert not problems, "the engine must stay pure Python:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "source",
    [
        "import django",
        "from django.conf import settings",
        "import celery.signals",
        "from kombu import Connection",
        "import rest_framework",
        "from layerhub.core.store import get_store",
        "import layerhub.settings",
        "from .. import settings",
        "from ..core import store",
        "def f():\n    import django.db",
        "import importlib\nimportlib.import_module('celery')",
        "__import__('django')",
    ],
)
def test_checker_catches(source: str) -> None:
    names = imported_names(source, "layerhub.engine.store", is_package=False)
    assert any(forbidden(name) for _, name in names), names


@pytest.mark.parametrize(
    "source",
    [
        "import os, hashlib",
        "from pathlib import Path",
        "from . import fsutil",
        "from .digest import digest_hex",
        "from layerhub.engine.errors import LayerhubError",
        "import layerhub.engine.store",
        "import zstandard",
    ],
)
def test_checker_allows(source: str) -> None:
    names = imported_names(source, "layerhub.engine.store", is_package=False)
    assert not any(forbidden(name) for _, name in names), names

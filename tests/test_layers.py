"""The package's layers (api/__init__.py): an import that crosses them the wrong way fails here.

Every import of every module under api/ counts: at the top, inside a function (a lazy import) or under
``if TYPE_CHECKING:`` (a type-only import is still a dependency a reader must follow).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

API = Path(__file__).resolve().parents[1] / "api"

LEAVES = {"api.errors", "api.jsonio", "api.logs"}
# The exception root: the one module a leaf may import; it imports nothing from api.
ROOT_OF_ERRORS = "api.errors"
# What each layer may import besides itself and the leaves.
ALLOWED: dict[str, set[str]] = {
    "api.ledger": set(),
    "api.tools": set(),
    "api.payments": {"api.ledger"},
    "api.abuse": {"api.ledger"},
    "api.gateway": {"api.ledger", "api.tools", "api.payments", "api.abuse"},
    "api.ops": {"api.ledger", "api.tools", "api.payments", "api.abuse", "api.gateway"},
}
COMPOSITION_ROOT = "api.gateway.app"
MAY_IMPORT_ROOT = {"api.ops.cli"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(API.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str) -> set[str]:
    """Every ``api`` module ``source`` imports (``from api.x import y`` counts as ``api.x`` and, when ``y`` is a
    submodule, as ``api.x.y`` too: the checker sees the longest name it can resolve)."""
    found: set[str] = set()
    package = module if module == "api" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "api")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "api":
                continue
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def layer_of(module: str) -> str | None:
    for layer in [*ALLOWED, *LEAVES]:
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def violations(module: str, imported: set[str]) -> list[str]:
    existing = {module_name(p) for p in API.rglob("*.py")}
    found: list[str] = []
    own = layer_of(module)
    for target in sorted(imported):
        if target not in existing:
            continue  # a name imported from a module, not a module
        if target == COMPOSITION_ROOT and module not in MAY_IMPORT_ROOT:
            found.append(f"{module} imports the composition root {target}")
            continue
        theirs = layer_of(target)
        if theirs is None or theirs == own:
            continue
        if own == ROOT_OF_ERRORS:
            found.append(f"{module} is the exception root and imports {target}")
        elif own in LEAVES and theirs != ROOT_OF_ERRORS:
            found.append(f"{module} is a leaf and imports {target}")
        elif theirs in LEAVES:
            continue
        elif own is None:
            found.append(f"{module} belongs to no layer and imports {target}")
        elif theirs not in ALLOWED[own]:
            found.append(f"{module} ({own}) imports {target} ({theirs})")
    return found


def all_modules() -> list[tuple[str, Path]]:
    return sorted((module_name(path), path) for path in API.rglob("*.py"))


def test_every_module_belongs_to_a_layer() -> None:
    orphans = [name for name, _ in all_modules() if name != "api" and layer_of(name) is None]
    assert orphans == [], f"modules outside every layer (api/__init__.py lists them): {orphans}"


@pytest.mark.parametrize("name,path", all_modules(), ids=[name for name, _ in all_modules()])
def test_imports_follow_the_layers(name: str, path: Path) -> None:
    assert violations(name, imports_of(path.read_text("utf-8"), name)) == []


def test_a_leaf_may_import_the_exception_root() -> None:
    assert violations("api.jsonio", imports_of("from api.errors import TollgateError", "api.jsonio")) == []


def test_every_subpackage_says_what_it_may_import() -> None:
    for init in API.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text("utf-8"))) or ""
        assert "import" in doc, f"{init} has no docstring saying what it may import"


@pytest.mark.parametrize(
    "module,source,expected",
    [
        ("api.ledger.sync", "from api.gateway import metering", "api.ledger.sync (api.ledger) imports api.gateway"),
        (
            "api.ledger.db",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from api.gateway.config import Settings",
            "imports api.gateway.config",
        ),
        ("api.tools.config", "def f():\n    from api.ledger import sync", "api.tools.config (api.tools) imports"),
        ("api.gateway.http.endpoints", "from api.gateway.app import create_app", "imports the composition root"),
        ("api.gateway.mcp", "from ..gateway import app", "imports the composition root"),
        ("api.payments.service", "from api.ops import cli", "imports api.ops.cli"),
        ("api.jsonio", "from api.ledger import errors", "is a leaf"),
        ("api.logs", "from api.jsonio import dumps", "is a leaf"),
        ("api.errors", "from api.jsonio import dumps", "is the exception root"),
    ],
)
def test_the_checker_catches_a_crossing(module: str, source: str, expected: str) -> None:
    found = violations(module, imports_of(source, module))
    assert any(expected in line for line in found), found

"""evspec/models/ has no import circle: the loading helpers sit below the families, the registry above."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import evspec.models

MODELS = Path(evspec.models.__file__).parent
MODULES = sorted(p.stem for p in MODELS.glob("*.py") if p.stem != "__init__")
FAMILIES = {"eventgpt", "llava", "tiny", "registry"}


def imported_modules(path: Path) -> set[str]:
    """Every ``evspec.*`` module a file imports, at top level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.startswith("evspec")}


def test_loading_imports_no_family_and_no_registry() -> None:
    imported = imported_modules(MODELS / "loading.py")
    assert not {f"evspec.models.{name}" for name in FAMILIES} & imported, imported


@pytest.mark.parametrize("family", ["eventgpt", "llava", "tiny"])
def test_families_do_not_import_the_registry(family: str) -> None:
    assert "evspec.models.registry" not in imported_modules(MODELS / f"{family}.py")


@pytest.mark.parametrize("module", MODULES)
def test_each_models_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    """Importing a module first (before anything else of evspec) is where a circle breaks."""
    result = subprocess.run(
        [sys.executable, "-c", f"import evspec.models.{module}"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]

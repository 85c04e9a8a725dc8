"""The package's layers import one way: import-linter's contracts in pyproject.toml hold."""
from __future__ import annotations

import ast
from pathlib import Path

from importlinter import cli

ROOT = Path(__file__).resolve().parents[1]

# Function-level imports kept on purpose: optional heavy dependencies only (docs/architecture.md).
LAZY_IMPORTS_ALLOWED = {"torch", "transformers"}


def test_import_contracts_hold(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == cli.EXIT_STATUS_SUCCESS


def _function_level_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.Import):
                found += [(node.lineno, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                found.append((node.lineno, node.module or ""))
    return found


def test_function_level_imports_are_optional_heavy_dependencies_only():
    offending = [f"{path.relative_to(ROOT)}:{line}: {module}"
                 for path in sorted((ROOT / "recfound_jax").rglob("*.py"))
                 for line, module in _function_level_imports(path)
                 if module not in LAZY_IMPORTS_ALLOWED]
    assert offending == []

"""The package's structure rules (docs/ARCHITECTURE.md), checked on the source itself.

The layering (imports point down, no cycles) is import-linter's job (`make lint`, contracts in
pyproject.toml); these tests check what it cannot: imports hidden in functions, private names
used across modules, module size, and that the folder tree matches the documented layers.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "m3bert"
MAX_LINES = 500
# The documented layers, bottom to top; every top-level module/package must be one of them.
LAYERS = ["core", "audio", "corpus", "features", "windows", "models", "embed", "hear", "tasks", "train",
          "pretrain", "enrich", "evaluate", "app"]


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "data" not in p.relative_to(PKG).parts[:1])


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _inner_imports(tree: ast.Module) -> list[ast.stmt]:
    top = set(map(id, tree.body))
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in top
            and not _in_type_checking(tree, n)]


def _in_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    for n in tree.body:
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            if any(node is m for m in ast.walk(n)):
                return True
    return False


def test_tree_is_the_documented_layers():
    found = {p.stem if p.is_file() else p.name for p in PKG.iterdir()
             if (p.suffix == ".py" and p.stem not in ("__init__", "__main__")) or (p.is_dir() and (p / "__init__.py").is_file())}
    assert found == set(LAYERS), f"top-level modules {sorted(found)} differ from the documented layers {LAYERS}"
    arch = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for layer in LAYERS:
        assert f"`{layer}" in arch, f"docs/ARCHITECTURE.md does not describe the layer {layer!r}"


def test_no_package_imports_hidden_in_functions():
    """Imports of m3bert modules sit at module top, so the import graph shows every real edge.

    Third-party imports inside functions are allowed only for optional dependencies or heavy
    imports used on one path (music21, matplotlib), and must say so on the line (``# optional``
    / ``# heavy``)."""
    bad = []
    for path in _modules():
        src = path.read_text(encoding="utf-8")
        lines = src.splitlines()
        tree = ast.parse(src)
        for node in _inner_imports(tree):
            mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if mod and mod.split(".")[0] == "m3bert" and path != PKG / "__init__.py":
                bad.append(f"{where} imports {mod} inside a function")
            elif mod and mod.split(".")[0] != "m3bert" and not re.search(r"#.*\b(optional|heavy)\b", lines[node.lineno - 1]):
                bad.append(f"{where} imports {mod} inside a function without saying why (# optional / # heavy ...)")
    assert not bad, "\n".join(bad)


def test_no_private_names_across_modules():
    bad = []
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("m3bert"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports private {node.module}.{alias.name}")
    assert not bad, "\n".join(bad)


def test_modules_are_small_or_say_why():
    bad = []
    for path in _modules():
        src = path.read_text(encoding="utf-8")
        n = len(src.splitlines())
        doc = ast.get_docstring(ast.parse(src)) or ""
        if n > MAX_LINES and not re.search(r"longer than \d+ lines because", doc, re.IGNORECASE):
            bad.append(f"{path.relative_to(ROOT)}: {n} lines and no 'Longer than {MAX_LINES} lines because ...'")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", ["load_model", "hear"])
def test_public_api_from_the_readme(name):
    import m3bert

    assert getattr(m3bert, name) is not None
    from m3bert.features import get_feature_set
    from m3bert.features.store import FeatureStore
    from m3bert.tasks import load_task

    assert callable(get_feature_set) and callable(load_task) and hasattr(FeatureStore, "open")


def test_the_structure_tests_can_fail(tmp_path, monkeypatch):
    """The checks above find what they look for (a test that cannot fail proves nothing)."""
    pkg = tmp_path / "src" / "m3bert"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("def f():\n    from m3bert.core import io\n    import h5py\n"
                              "from m3bert.core.io import _hidden\n" + "y = 1\n" * 600)
    monkeypatch.setattr(__import__(__name__), "PKG", pkg, raising=False)
    globals()["PKG"], saved = pkg, PKG
    globals()["ROOT"], saved_root = tmp_path, ROOT
    try:
        for check in (test_no_package_imports_hidden_in_functions, test_no_private_names_across_modules,
                      test_modules_are_small_or_say_why):
            with pytest.raises(AssertionError):
                check()
    finally:
        globals()["PKG"], globals()["ROOT"] = saved, saved_root


def test_no_function_calls_its_own_bool_flag():
    """A parameter `progress: bool` once shadowed the imported `progress()` bar and crashed every
    progress-on run (the tests run with progress off); a call to a bool-annotated parameter is that bug."""
    bad = []
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = fn.args.args + fn.args.kwonlyargs + fn.args.posonlyargs
            flags = {a.arg for a in args if a.annotation is not None and ast.unparse(a.annotation) == "bool"}
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in flags:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} calls its bool parameter {node.func.id!r}")
    assert not bad, "\n".join(bad)

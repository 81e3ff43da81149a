"""The layout's rules: the board side imports no TensorFlow and no workstation module, and only the CLI
imports `converters` (no cycle between the two packages)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from tests.harness import ROOT, run_python

BOARD = ("edgemeta.format", "edgemeta.data", "edgemeta.runtime", "edgemeta.serve", "edgemeta.profiles")
WORKSTATION = ("edgemeta.train", "edgemeta.compress", "edgemeta.deploy", "edgemeta.cli", "converters")


def _modules(package_dir: Path) -> dict[str, Path]:
    """Every module under `package_dir` (a folder of ROOT) by dotted name."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, module: str) -> set[str]:
    """The absolute names a module imports, at top level or inside functions (relative imports resolved)."""
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_board_modules_import_nothing_from_the_workstation():
    modules = {**_modules(ROOT / "edgemeta")}
    wrong = []
    for name, path in modules.items():
        if _within(name, BOARD):
            wrong += [f"{name} imports {i}" for i in _imports(path, name)
                      if _within(i, WORKSTATION) or i.split(".")[0] in ("tensorflow", "tf_keras", "keras")]
    assert not wrong, "\n".join(sorted(wrong))


def test_only_the_cli_imports_converters():
    wrong = [f"{name} imports {i}" for name, path in _modules(ROOT / "edgemeta").items() if not _within(name, ("edgemeta.cli",))
             for i in _imports(path, name) if _within(i, ("converters",))]
    assert not wrong, "\n".join(sorted(wrong))


def test_every_board_module_imports_with_tensorflow_blocked():
    # Static checks miss what a dependency pulls in; importing each module for real catches it.
    names = sorted(n for n in _modules(ROOT / "edgemeta") if _within(n, BOARD) and not n.endswith("__main__"))
    code = f"""
import importlib, json, sys
for blocked in ("tensorflow", "tf_keras", "keras", "sklearn"):
    sys.modules[blocked] = None  # any import of these now raises ImportError
failed = {{}}
for name in {names!r}:
    try:
        importlib.import_module(name)
    except Exception as e:
        failed[name] = repr(e)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "keras") and sys.modules[m] is not None)
print(json.dumps({{"failed": failed, "loaded": loaded, "count": {len(names)}}}))
"""
    result = run_python(code, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["count"] >= 20 and report["failed"] == {} and report["loaded"] == [], report


def test_each_package_says_its_job():
    for init in sorted((ROOT / "edgemeta").rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and doc.strip(), f"{init.relative_to(ROOT)} has no docstring saying its job"

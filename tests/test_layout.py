"""The layout keeps its promises: no import cycles, imports at module top, one import name.

Read from the source (``ast``), so a new module that breaks a rule fails here with its name.
"""

import ast
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Set

import pytest

import amsrepomirror

PACKAGE = Path(amsrepomirror.__file__).parent
ROOT = Path(__file__).resolve().parent.parent


def modules() -> Dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(["amsrepomirror", *parts])] = path
    return out


def imported(node: ast.AST, known: Set[str]) -> List[str]:
    """Modules of this package that an import statement names (``from pkg import module`` too)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("amsrepomirror"):
        named = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
        return named or ([node.module] if node.module in known else [])
    return []


def test_no_import_cycles_between_modules():
    mods = modules()
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        graph[name] = {m for node in tree.body for m in imported(node, set(mods)) if m != name}
    # A package's __init__ may re-export its own modules; that is not a cycle between modules.
    for name in graph:
        graph[name] = {m for m in graph[name] if not (m.startswith(name + ".") or name.startswith(m + ".") and m in
                                                      {k for k, p in mods.items() if p.name == "__init__.py"})}
    state: Dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_imports_sit_at_module_top_unless_a_comment_says_why():
    offenders = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        above = lines[inner.lineno - 2].strip() if inner.lineno > 1 else ""
                        if not above.startswith("#") and "#" not in lines[inner.lineno - 1]:
                            offenders.append(f"{name}:{inner.lineno}")
    assert offenders == []


def test_nothing_imports_the_source_folder_name():
    """The source folder is pipeline/, the import name amsrepomirror: a second name would load every
    module (and register every Luigi task) twice."""
    offenders = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "bench").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if any(n == "pipeline" or n.startswith("pipeline.") for n in names):
                offenders.append(f"{path}:{node.lineno}")
    assert offenders == []


def test_no_source_file_is_ignored_by_git():
    """``.gitignore``'s patterns for the output folders (``bundle/``, ``mirror/``) are anchored to the
    top level: unanchored, ``bundle/`` also matched ``pipeline/bundle/``, so ruff (which respects
    ``.gitignore``) skipped its modules and a new module there would be left out of a commit."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    sources = [str(p.relative_to(ROOT)) for d in ("pipeline", "tests", "bench") for p in (ROOT / d).rglob("*.py")]
    sources += ["pipeline/bundle/new_module.py", "pipeline/mirror/new_module.py", "tests/bundle/test_x.py"]
    ignored = subprocess.run([git, "check-ignore", "--no-index", *sources], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == []

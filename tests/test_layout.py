"""The layout keeps its promises: layers that point down only, no import cycles, imports at module top, one
import name, every subpackage in the wheel.

Read from the source (``ast``), so a new module that breaks a rule fails here with its name.
"""

import ast
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import amsrepomirror

PACKAGE = Path(amsrepomirror.__file__).parent
ROOT = Path(__file__).resolve().parent.parent


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(["amsrepomirror", *parts])] = path
    return out


def imported(node: ast.AST, known: set[str]) -> list[str]:
    """Modules of this package that an import statement names (``from pkg import module`` too)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("amsrepomirror"):
        named = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
        return named or ([node.module] if node.module in known else [])
    return []


#: What each part of the package may import: layers point down only. Bottom up: errors; util (files,
#: hashing, sizes, paths, progress); config (settings); bundle (what both sides read: the format, sums,
#: signatures, chunk and receipt checks, verify); online (mirroring from SCM); offline (unpacking into
#: AMSHOME: needs no online module); pack (building a bundle from a mirror); tasks (the Luigi graph);
#: cli, module by module: what all commands share (output, then exit_codes, runner, options and report), the
#: commands (bundle builds on mirror and plan), the parser that puts them together, and the package's
#: main. ``testing`` (the SCM double) is for tests, bench and the demo only. The package root
#: (``__version__``) may be imported by all.
BELOW_CLI = {"errors", "util", "config", "bundle", "online", "offline", "pack", "tasks"}
CLI_SHARED = {"cli.output", "cli.exit_codes", "cli.runner", "cli.options", "cli.report"}
CLI_COMMANDS = {f"cli.{name}" for name in ("mirror", "bundle", "plan", "verify", "repair", "unpack", "receipt", "config",
                                                     "demo")}
MAY_IMPORT = {
    "errors": set(),
    "util": {"errors"},
    "config": {"errors", "util"},
    "bundle": {"errors", "util", "config"},
    "online": {"errors", "util", "config"},
    "offline": {"errors", "util", "config", "bundle"},
    "pack": {"errors", "util", "config", "bundle", "online"},
    "tasks": {"errors", "util", "config", "bundle", "online", "offline", "pack"},
    "cli.output": BELOW_CLI,
    "cli.exit_codes": BELOW_CLI | {"cli.output"},
    "cli.runner": BELOW_CLI | {"cli.output"},
    "cli.options": BELOW_CLI | {"cli.output"},
    "cli.report": BELOW_CLI | {"cli.output", "cli.exit_codes"},
    **{command: BELOW_CLI | CLI_SHARED for command in CLI_COMMANDS},
    "cli.bundle": BELOW_CLI | CLI_SHARED | {"cli.mirror", "cli.plan"},
    "cli.demo": BELOW_CLI | CLI_SHARED | {"cli", "testing"},  # cli: main(), to run each step
    "cli.parser": BELOW_CLI | CLI_SHARED | CLI_COMMANDS,
    "cli": BELOW_CLI | CLI_SHARED | {"cli.parser"},
    "__main__": {"errors", "config", "cli"},  # config: which settings files a start read (read_at_import)
    "testing": {"errors", "util"},
}
#: The only module of the package that may import the SCM double.
DEMO_MODULES = {"amsrepomirror.cli.demo"}
#: Packages whose modules are layered among themselves too (``part_of`` names each module).
LAYERED_INSIDE = {"cli"}


def part_of(module: str) -> str:
    """``amsrepomirror.online.http`` -> ``online``, ``amsrepomirror.cli.plan`` -> ``cli.plan``; the package
    root -> ``""``."""
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in LAYERED_INSIDE:
        return ".".join(parts[1:3])
    return parts[1] if len(parts) > 1 else ""


def test_layers_point_down_only():
    mods = modules()
    assert {part_of(m) for m in mods} - {""} <= set(MAY_IMPORT), "a new part of the package: add it to MAY_IMPORT"
    arrows = []
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            for target in imported(node, set(mods)):
                src, dst = part_of(name), part_of(target)
                if dst in ("", src):
                    continue
                if dst not in MAY_IMPORT.get(src, set()) or (dst == "testing" and name not in DEMO_MODULES):
                    arrows.append(f"{name} -> {target}")
    assert arrows == []


def test_offline_side_loads_no_module_of_the_online_side():
    """Importing every module of offline/ and bundle/ (what the far side runs) loads nothing of online/,
    pack/, tasks/, cli or testing: the far side can be read, installed and changed on its own."""
    far_side = sorted(m for m in modules() if part_of(m) in ("offline", "bundle"))
    code = ("import importlib, sys\n"
            f"for m in {far_side!r}: importlib.import_module(m)\n"
            "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('amsrepomirror.'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "amsrepomirror.offline.unpack" in loaded
    assert [m for m in loaded if part_of(m) not in ("errors", "util", "config", "bundle", "offline")] == []


def test_every_subpackage_is_listed_for_the_wheel():
    """pyproject lists packages by name: one left out is missing from the wheel (and from a bundle's
    --with-tool wheel) while an editable install still finds it."""
    text = (ROOT / "pyproject.toml").read_text()
    listed = text.split("packages = [", 1)[1].split("]", 1)[0]
    listed = {name.strip().strip('"') for name in listed.split(",") if name.strip()}
    subpackages = {".".join(["amsrepomirror", *p.parent.relative_to(PACKAGE).parts]) for p in PACKAGE.rglob("__init__.py")}
    assert subpackages == listed


def test_the_built_wheel_imports_every_module_of_the_source_tree(tmp_path):
    """The wheel, built without network, holds every module: imported from the wheel alone (its
    dependencies from this environment, no .pth file read, so no editable install's finder), each
    module of the source tree loads from it. A subpackage left out of pyproject's list fails here, and so does
    a settings file left out of its package-data (defaults.cfg, luigid's scheduler.cfg)."""
    setuptools = pytest.importorskip("setuptools", reason="no setuptools to build the wheel: pip install -e '.[test]'")
    needed = re.search(r'requires = \["setuptools>=(\d+)"\]', (ROOT / "pyproject.toml").read_text())
    if needed and int(setuptools.__version__.split(".")[0]) < int(needed[1]):
        pytest.skip(f"setuptools {setuptools.__version__} is older than build-system requires (>={needed[1]}): "
                    "pip install -e '.[test]' installs a newer one")
    # Built from a copy, so that building leaves no build/ folder or egg-info in the checkout.
    source = tmp_path / "source"
    shutil.copytree(PACKAGE, source / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (tmp_path / "dist").glob("amsrepomirror-*.whl")
    with zipfile.ZipFile(wheel) as built_wheel:  # the settings files, read with importlib.resources
        assert {"amsrepomirror/defaults.cfg", "amsrepomirror/scheduler.cfg"} <= set(built_wheel.namelist())
    dependencies = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    code = ("import importlib, sys\n"
            f"sys.path[:0] = [{str(wheel)!r}]\n"
            f"sys.path += {dependencies!r}\n"
            f"for name in {sorted(modules())!r}:\n"
            f"    where = importlib.import_module(name).__file__\n"
            f"    assert where.startswith({str(wheel)!r}), f'{{name}} loaded from {{where}}'\n"
            "from amsrepomirror import config\n"
            "assert '[scheduler]' in open(config.scheduler_settings()).read()\n"
            "assert '[BundleArchive]' in open(config.shipped_defaults()).read()\n")
    # -S: the site-packages' .pth files are not read (the editable install's finder would find any module).
    result = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


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
    state: dict[str, int] = {}

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


@pytest.mark.slow
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

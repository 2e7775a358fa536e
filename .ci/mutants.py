"""``make mutants``: break each integrity-critical check on purpose and require that its tests fail.

Each section of ``.ci/mutants.ini`` is one guard::

    [verify-chunk-hash]
    file = pipeline/bundle/verify.py
    function = _check_chunk
    find = digest != expected.sha256[name]
    replace = False
    tests = tests/test_bitrot.py -k corrupt
    note = optional words for the report

The check's line carries the marker comment ``# guard: verify-chunk-hash`` at its end, inside
``function`` (a function, or ``Class.method``) of ``file``: the line is found by the marker, never
by its number. For each entry the runner copies the tree (the files git knows of, as they are in
the working tree, uncommitted changes included) into a temporary folder, replaces ``find`` by
``replace`` on that one line of the copy, and runs ``pytest -x -q <tests>`` against the copy:

* killed: pytest fails (exit 1): the tests notice the broken check;
* survived: pytest passes: nothing notices, the tests must get better;
* broken: the entry cannot be trusted: marker missing, twice, outside its function, ``find`` not
  once on the line, a mutant that is not Python, tests that select nothing, fail or are all
  skipped before any mutation, or pytest ending in any other way (time-out, usage error).

The checkout is only read. ``amsrepomirror`` is imported from the copy (a folder holding the link
``amsrepomirror -> COPY/pipeline`` comes first on PYTHONPATH; every pytest run and every command the
tests start inherit it), which the runner checks in each run (``mutants_probe.py``). Exit 0 only
when every entry is killed.
"""

import argparse
import ast
import configparser
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tokenize
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().with_name("mutants_probe.py")
PACKAGE = "amsrepomirror"  # the import name ...
SOURCE = "pipeline"        # ... of this folder
#: What is copied when the tree is not a git checkout.
FALLBACK = ("pipeline", "tests", "bench", "docs", ".ci", "pyproject.toml", "luigi.cfg", "Makefile", "README.md")
#: Folders of tools' caches, never copied (a .hypothesis/ example database the checkout does not ignore).
CACHES = {"__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache"}
REQUIRED = ("file", "function", "find", "replace", "tests")
OPTIONAL = ("note",)
ENTRY_ID = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
MARKER = re.compile(r"#\s*guard:\s*(\S+)\s*$")
ROOT_INI_NAME = "mutants.ini"
PYTEST = ("-q", "-p", "no:cacheprovider", "-p", "mutants_probe")
TAIL = 15  # lines of pytest's output shown for an entry that is not killed


class Broken(Exception):
    """The entry cannot be trusted (its marker, its mutation or its tests); the message says why."""


@dataclass
class Entry:
    id: str
    file: str = ""
    function: str = ""
    find: str = ""
    replace: str = ""
    tests: list[str] = field(default_factory=list)
    note: str = ""
    problem: str = ""  # what is wrong with the section itself


@dataclass
class Row:
    id: str
    result: str  # killed, survived, broken, timeout, not run
    seconds: float = 0.0
    detail: str = ""


# --- the list of guards -----------------------------------------------------------------------

def read_entries(ini: Path) -> list[Entry]:
    parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
    parser.optionxform = str  # keys as written
    try:
        with open(ini, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, configparser.Error) as exc:
        raise SystemExit(f"error: cannot read {ini}: {exc}") from None
    entries = []
    for name in parser.sections():
        section = parser[name]
        entry = Entry(name)
        problems = []
        if not ENTRY_ID.fullmatch(name):
            problems.append("its id must be lowercase words joined by dashes")
        unknown = sorted(set(section) - set(REQUIRED) - set(OPTIONAL))
        missing = [k for k in REQUIRED if k not in section or (k != "replace" and not section[k].strip())]
        if unknown:
            problems.append("unknown key(s) " + ", ".join(unknown))
        if missing:
            problems.append("missing key(s) " + ", ".join(missing))
        entry.file, entry.function = section.get("file", "").strip(), section.get("function", "").strip()
        entry.find, entry.replace = section.get("find", "").strip(), section.get("replace", "").strip()
        entry.note = " ".join(section.get("note", "").split())
        try:
            entry.tests = split_tests(section.get("tests", ""))
        except ValueError as exc:
            problems.append(f"tests: {exc}")
        if any(os.path.isabs(arg) for arg in entry.tests):
            problems.append("tests: name test files relative to the tree (they run in its copy)")
        if entry.find and entry.find == entry.replace:
            problems.append("replace equals find: nothing would change")
        entry.problem = "; ".join(problems)
        entries.append(entry)
    return entries


def split_tests(text: str) -> list[str]:
    """pytest's arguments from an entry's ``tests``, split as the shell would; an unquoted ``-k`` or
    ``-m`` expression (``-k a or b``) runs up to the next option or test path."""
    args: list[str] = []
    words = shlex.split(text)
    while words:
        word = words.pop(0)
        args.append(word)
        if word in ("-k", "-m"):
            expression = []
            while words and not (words[0].startswith("-") or "/" in words[0] or "::" in words[0]
                                 or words[0].endswith(".py")):
                expression.append(words.pop(0))
            if expression:
                args.append(" ".join(expression))
    return args


def simple_selection(tests: Sequence[str]) -> tuple[list[str], str] | None:
    """(test paths, -k expression) when ``tests`` is only that: such entries are collected together."""
    paths, keyword = [], ""
    words = list(tests)
    while words:
        word = words.pop(0)
        if word == "-k" and words and not keyword:
            keyword = words.pop(0)
        elif word.startswith("-") or "*" in word:
            return None
        else:
            file, sep, rest = word.partition("::")
            paths.append(os.path.normpath(file) + sep + rest)
    return (paths, keyword) if paths else None


# --- the copy ---------------------------------------------------------------------------------

def tree_files(root: Path) -> list[str]:
    """The files of the tree: what git tracks plus new files it does not ignore (as they are in the
    working tree: uncommitted changes included); without git, the folders in FALLBACK."""
    try:
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                capture_output=True, check=True, timeout=60).stdout
        if (root / ".git").exists():
            names = sorted({n for n in listed.decode("utf-8", "surrogateescape").split("\0") if n})
            return [n for n in names if os.path.lexists(root / n) and not (root / n).is_dir()
                    and not set(n.split("/")) & CACHES]
    except (OSError, subprocess.SubprocessError):
        pass
    names = []
    for top in FALLBACK:
        path = root / top
        if path.is_file():
            names.append(top)
        elif path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = [d for d in dirnames if d not in CACHES and not d.startswith(".")]
                names += [Path(dirpath, f).relative_to(root).as_posix() for f in filenames if not f.endswith(".pyc")]
    return sorted(names)


def copy_tree(root: Path, files: Sequence[str], dest: Path) -> None:
    for name in files:
        src, out = root / name, dest / name
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), out)
        else:
            shutil.copy2(src, out)


class Sandbox:
    """A copy of the tree, the folder that makes ``amsrepomirror`` import from it, and pytest's temp folder."""

    def __init__(self, workdir: Path, name: str, root: Path, files: Sequence[str]):
        self.home = workdir / name
        self.src = self.home / "src"
        self.path = self.home / "path"
        self.basetemp = self.home / "t"
        self.src.mkdir(parents=True)
        self.path.mkdir()
        copy_tree(root, files, self.src)
        os.symlink(self.src / SOURCE, self.path / PACKAGE)
        shutil.copy2(PROBE, self.path / PROBE.name)
        self.package = os.path.realpath(self.src / SOURCE)

    def env(self, probe_out: Path) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.path)  # nothing else: no other copy of the package can come first
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["MUTANTS_PROBE_OUT"] = str(probe_out)
        return env

    def ours(self, path: str | None) -> bool:
        return path is not None and os.path.realpath(path).startswith(self.package + os.sep)

    def check_import(self) -> None:
        """What ``python -m amsrepomirror`` and ``import amsrepomirror`` find, started as the tests
        start the CLI (this interpreter, the copy's folder as working folder): the copy, else stop."""
        code = f"import importlib.util; print(importlib.util.find_spec({PACKAGE!r}).origin)"
        found = subprocess.run([sys.executable, "-c", code], cwd=self.src, env=self.env(self.home / "unused"),
                               capture_output=True, text=True, timeout=60)
        origin = found.stdout.strip()
        if found.returncode != 0 or not self.ours(origin):
            raise SystemExit(f"error: in the copy {self.src}, {PACKAGE} is imported from {origin or found.stderr.strip()!r}, "
                             f"not from {self.package}: the runner would test the checkout, not the mutant")

    def remove(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


# --- finding and breaking the check -----------------------------------------------------------

Marker = tuple[str, int, int]  # file, line (1-based), column where the comment starts


def markers(tree: Path, files: Sequence[str]) -> dict[str, list[Marker]]:
    """{entry id: [(file, line, column)]} of every ``# guard: <id>`` comment in the tree's Python files."""
    found: dict[str, list[Marker]] = {}
    for name in files:
        if not name.endswith(".py") or name.startswith(".ci/"):
            continue
        try:
            text = (tree / name).read_text(encoding="utf-8")
            tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
        except (OSError, UnicodeDecodeError, SyntaxError, tokenize.TokenError):
            continue
        for tok in tokens:
            match = MARKER.fullmatch(tok.string) if tok.type == tokenize.COMMENT else None
            if match:
                found.setdefault(match.group(1), []).append((name, *tok.start))
    return found


def function_node(module: ast.Module, dotted: str, where: str):
    scopes = [module]
    for part in dotted.split("."):
        hits = [n for n in scopes[0].body
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == part]
        if not hits:
            raise Broken(f"{where} has no {dotted} ({part} not found)")
        if len(hits) > 1:
            raise Broken(f"{where} defines {part} twice: say which one")
        scopes = hits
    if not isinstance(scopes[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise Broken(f"{dotted} in {where} is a class, not a function: name the method (Class.method)")
    return scopes[0]


def locate(tree: Path, entry: Entry, marks: dict[str, list[Marker]]) -> Marker:
    """Where the entry's mutation goes: its marker; Broken unless it is exactly one line inside the
    entry's function whose code holds ``find`` once."""
    if entry.problem:
        raise Broken(f"{ROOT_INI_NAME}: {entry.problem}")
    where = marks.get(entry.id, [])
    tag = f"# guard: {entry.id}"
    if not where:
        raise Broken(f"no line carries '{tag}'")
    if len(where) > 1:
        raise Broken(f"'{tag}' is on {len(where)} lines: " + ", ".join(f"{f}:{n}" for f, n, _ in where))
    name, line, column = where[0]
    if name != entry.file:
        raise Broken(f"'{tag}' is in {name}:{line}, the entry names {entry.file}")
    source = (tree / name).read_text(encoding="utf-8")
    node = function_node(ast.parse(source, name), entry.function, name)
    if not node.lineno < line <= node.end_lineno:
        raise Broken(f"'{tag}' ({name}:{line}) is outside {entry.function} (lines {node.lineno}-{node.end_lineno})")
    code = physical_lines(source)[line - 1][:column]
    count = code.count(entry.find)
    if count != 1:
        raise Broken(f"'{entry.find}' is {count} times on {name}:{line} (must be once): {code.strip()!r}")
    return where[0]


def physical_lines(text: str) -> list[str]:
    """The lines as tokenize counts them (``str.splitlines`` also splits at form feeds and the like)."""
    return re.findall(r"[^\n]*\n|[^\n]+\Z", text)


def mutate(tree: Path, entry: Entry, where: Marker) -> str:
    """Apply the entry's replacement to the code of the marked line of its file in ``tree``; the mutated line."""
    _, line, column = where
    path = tree / entry.file
    lines = physical_lines(path.read_text(encoding="utf-8"))
    old = lines[line - 1]
    lines[line - 1] = old[:column].replace(entry.find, entry.replace, 1) + old[column:]
    text = "".join(lines)
    try:
        compile(text, str(path), "exec")
    except SyntaxError as exc:
        raise Broken(f"the mutant is not valid Python: {exc.msg} in {lines[line - 1].strip()!r}") from None
    path.write_text(text, encoding="utf-8")
    return lines[line - 1].strip()


# --- running pytest ---------------------------------------------------------------------------

@dataclass
class Outcome:
    code: int | None  # None: timed out
    probe: dict
    output: str
    seconds: float


def run_pytest(box: Sandbox, args: Sequence[str], timeout: float, label: str,
               extra_env: dict[str, str] | None = None) -> Outcome:
    """pytest ARGS in the copy (its folder as working folder and rootdir); killed with every
    process it started when ``timeout`` runs out. Output goes to a file: a server a test leaves
    behind cannot hold a pipe open."""
    probe_out, log = box.home / f"probe-{label}.json", box.home / f"pytest-{label}.log"
    command = [sys.executable, "-m", "pytest", *PYTEST, f"--rootdir={box.src}", f"--basetemp={box.basetemp}", *args]
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=box.src, env={**box.env(probe_out), **(extra_env or {})}, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            code = None
        finally:
            _kill_group(proc)  # also what a test left running (a server, a CLI)
            proc.wait()
    try:
        probe = json.loads(probe_out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        probe = {}
    return Outcome(code, probe, log.read_text(encoding="utf-8", errors="replace"), time.monotonic() - started)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


def tail(output: str, lines: int = TAIL) -> str:
    return "\n".join("      " + line for line in output.rstrip().splitlines()[-lines:])


def check_probe(box: Sandbox, outcome: Outcome) -> None:
    """The run imported ``amsrepomirror`` from the copy, else nothing it says counts: a run that
    says nothing is Broken, one that used another copy stops the runner."""
    imported = outcome.probe.get(PACKAGE)
    if outcome.code is None:
        return  # timed out: reported as such
    if imported is None:
        raise Broken(f"pytest did not report where {PACKAGE} came from ({PYTEST_EXIT.get(outcome.code, outcome.code)})"
                     f"\n{tail(outcome.output)}")
    if not box.ours(imported):
        raise SystemExit(f"error: pytest in {box.src} imported {PACKAGE} from {imported}, not from the copy: "
                         "the results would be the checkout's, stopped")


PYTEST_EXIT = {2: "interrupted or a collection error", 3: "pytest internal error", 4: "pytest usage error",
               5: "no tests selected"}


# --- the run ----------------------------------------------------------------------------------

class Runner:
    def __init__(self, root: Path, entries: list[Entry], budget: float, timeout: float, keep: bool, check_orphans: bool):
        self.root = root
        self.entries = entries
        self.deadline = time.monotonic() + budget
        self.budget = budget
        self.timeout = timeout
        self.keep = keep
        self.check_orphans = check_orphans
        self.rows: dict[str, Row] = {}
        self.known_ids: set = set()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def report(self, row: Row) -> None:
        self.rows[row.id] = row
        print(f"  {row.id:<32} {row.result:<9} {row.seconds:7.1f}s" + (f"  {row.detail}" if row.detail else ""),
              flush=True)

    def run(self) -> int:
        workdir = Path(tempfile.mkdtemp(prefix="mutants-"))
        try:
            return self._run(workdir)
        finally:
            if self.keep:
                print(f"the copies are kept in {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)

    def _run(self, workdir: Path) -> int:
        files = tree_files(self.root)
        base = Sandbox(workdir, "base", self.root, files)
        base.check_import()
        marks = markers(base.src, files)
        print(f"mutants: {len(self.entries)} entr{'y' if len(self.entries) == 1 else 'ies'}, "
              f"a copy of {len(files)} files in {workdir}, time budget {self.budget:.0f}s", flush=True)
        located = self.locate_all(base, marks)
        selected = self.collect_together(base, [e for e in self.entries if e.id in located])
        self.collect_each(base, located, selected)
        if self.check_orphans:
            self.report_orphans(marks)
        if selected:
            self.run_unmutated(base, selected)
        base.remove()
        for n, entry in enumerate(self.entries):
            if entry.id not in selected:
                continue
            if self.left() < 5:
                self.report(Row(entry.id, "not run", 0.0, f"the time budget ({self.budget:.0f}s) is spent"))
                continue
            self.run_mutant(Sandbox(workdir, f"m{n}", self.root, files), entry, located[entry.id])
        return self.summary()

    def locate_all(self, base: Sandbox, marks: dict[str, list[Marker]]) -> dict[str, Marker]:
        """Where each entry's mutation goes; an entry that cannot be placed is reported broken."""
        located: dict[str, Marker] = {}
        for entry in self.entries:
            try:
                located[entry.id] = locate(base.src, entry, marks)
            except Broken as exc:
                self.report(Row(entry.id, "broken", 0.0, str(exc)))
        return located

    def collect_each(self, base: Sandbox, located: dict[str, Marker], selected: dict[str, list[str]]) -> None:
        """Which tests each entry runs, collected alone for those that collecting together did not
        answer (added to ``selected``); one whose tests cannot be collected is reported broken."""
        for entry in self.entries:
            if entry.id not in located or entry.id in selected:
                continue
            started = time.monotonic()
            try:
                collect = run_pytest(base, ["--collect-only", *entry.tests], min(self.timeout, self.left()), entry.id)
                check_probe(base, collect)
                if collect.code is None:
                    raise Broken("collecting its tests timed out")
                if collect.code != 0 or not collect.probe.get("collected"):
                    why = PYTEST_EXIT.get(collect.code, f"pytest exit {collect.code}")
                    raise Broken(f"its tests cannot be collected ({why}): {shlex.join(entry.tests)}\n{tail(collect.output)}")
                selected[entry.id] = collect.probe["collected"]
            except Broken as exc:
                self.report(Row(entry.id, "broken", time.monotonic() - started, str(exc)))

    def report_orphans(self, marks: dict[str, list[Marker]]) -> None:
        """A marker in the tree that no entry names is broken: its check is guarded by nothing."""
        for tag, where in sorted(marks.items()):
            if tag not in self.known_ids:
                self.report(Row(tag, "broken", 0.0, f"marker without an entry in {ROOT_INI_NAME}: "
                                                    + ", ".join(f"{f}:{n}" for f, n, _ in where)))

    def run_unmutated(self, base: Sandbox, selected: dict[str, list[str]]) -> None:
        """Every subset once, unmutated, all together: it must pass. An entry whose tests fail, or none
        of which pass, is reported broken and dropped from ``selected``."""
        union = list(dict.fromkeys(t for tests in selected.values() for t in tests))
        print(f"unmutated: {len(union)} test(s) of {len(selected)} subset(s)", flush=True)
        plain = run_pytest(base, union, self.left(), "unmutated")
        print(f"  unmutated run: {plain.seconds:.1f}s", flush=True)
        try:
            check_probe(base, plain)
            lost = "the unmutated run of the subsets timed out (time budget)" if plain.code is None else ""
        except Broken as exc:
            lost = f"the unmutated run of the subsets: {exc}"
        failed, passed = set(plain.probe.get("failed", [])), set(plain.probe.get("passed", []))
        for tag in list(selected):
            mine = selected[tag]
            if lost:
                why = lost
            elif failed & set(mine):
                why = "its tests fail unmutated: " + ", ".join(t for t in mine if t in failed)[:400]
            elif not passed & set(mine):
                why = "none of its tests passed unmutated (all skipped? AMSREPOMIRROR_REQUIRE_TOOLS=1 names a missing tool)"
            else:
                continue
            self.report(Row(tag, "broken", 0.0, why))
            del selected[tag]

    def run_mutant(self, box: Sandbox, entry: Entry, where: Marker) -> None:
        """One entry: its line mutated in the copy ``box``, its tests run there, the verdict reported."""
        try:
            mutated = mutate(box.src, entry, where)
            box.check_import()
            limit = min(self.timeout, self.left())
            out = run_pytest(box, ["-x", *entry.tests], limit, entry.id)
            check_probe(box, out)
            self.report(self.verdict(entry, out, f"{entry.file}:{where[1]} as `{mutated}`", limit))
        except Broken as exc:
            self.report(Row(entry.id, "broken", 0.0, str(exc)))
        finally:
            if not self.keep:
                box.remove()

    @staticmethod
    def verdict(entry: Entry, out: Outcome, mutated: str, limit: float) -> Row:
        """What a mutant's pytest exit means: 1 killed, 0 survived, none timed out, else broken."""
        if out.code == 1:
            return Row(entry.id, "killed", out.seconds)
        if out.code == 0:
            return Row(entry.id, "survived", out.seconds, f"{mutated}: {shlex.join(entry.tests)} still passes")
        if out.code is None:
            return Row(entry.id, "timeout", out.seconds, f"no verdict within {limit:.0f}s" "\n" + tail(out.output))
        return Row(entry.id, "broken", out.seconds, f"{PYTEST_EXIT.get(out.code, f'pytest exit {out.code}')}\n{tail(out.output)}")

    def collect_together(self, base: Sandbox, entries: list[Entry]) -> dict[str, list[str]]:
        """{entry: its tests} from one collection of every test path the entries name (most entries
        are test paths and a -k expression; the probe applies each expression as -k would). Entries
        this cannot answer, or that it finds no test for, are left to a collection of their own."""
        quick = {e.id: q for e in entries for q in [simple_selection(e.tests)]
                 if q is not None and all((base.src / p.partition("::")[0]).exists() for p in q[0])}
        if len(quick) < 2:
            return {}
        spec = base.home / "select.json"
        spec.write_text(json.dumps(quick), encoding="utf-8")
        paths = list(dict.fromkeys(p.partition("::")[0] for ps, _ in quick.values() for p in ps))  # node ids: by the probe
        collect = run_pytest(base, ["--collect-only", *paths], min(self.timeout, self.left()), "together",
                             {"MUTANTS_PROBE_SELECT": str(spec)})
        chosen = collect.probe.get("selected", {}) if collect.code == 0 else {}
        if collect.code != 0 or "\0error" in chosen:
            print(f"note: collecting the subsets together failed ({collect.code}, {chosen.get(chr(0) + 'error', '')}): "
                  "one by one", flush=True)
            return {}
        check_probe(base, collect)
        return {tag: tests for tag, tests in chosen.items() if tests}

    def summary(self) -> int:
        order = [e.id for e in self.entries] + sorted(set(self.rows) - {e.id for e in self.entries})
        print()
        print(f"{'entry':<34} {'result':<9} {'seconds':>8}")
        for tag in order:
            row = self.rows.get(tag)
            if row is not None:
                print(f"{row.id:<34} {row.result:<9} {row.seconds:8.1f}")
        bad = [r for r in self.rows.values() if r.result != "killed"]
        total = self.budget - self.left()
        if bad:
            print(f"error: {len(bad)} of {len(self.rows)} not killed ({', '.join(sorted({r.result for r in bad}))}): "
                  + ", ".join(r.id for r in bad) + f"; {total:.0f}s")
            return 1
        print(f"all {len(self.rows)} killed in {total:.0f}s")
        return 0


def list_entries(root: Path, entries: list[Entry]) -> int:
    """Each entry, where its marker is and what its mutant reads (nothing is run)."""
    files = tree_files(root)
    marks = markers(root, files)
    for entry in entries:
        try:
            _, line, column = locate(root, entry, marks)
            text = physical_lines((root / entry.file).read_text(encoding="utf-8"))[line - 1][:column].strip()
            where = f"{entry.file}:{line} {entry.function}: `{text}` -> `{text.replace(entry.find, entry.replace, 1)}`"
        except Broken as exc:
            where = f"broken: {exc}"
        note = f"\n    note: {entry.note}" if entry.note else ""
        print(f"{entry.id}\n    {where}\n    tests: {shlex.join(entry.tests)}{note}")
    return 0


def _interrupted(signum, frame):
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the running pytest is killed, the copies removed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mutants.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ini", type=Path, default=None, help="the list of guards (default: .ci/mutants.ini of --root)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the tree to copy (default: this checkout)")
    parser.add_argument("--only", default="", help="run only these entries: ID[,ID...]")
    parser.add_argument("--list", action="store_true", help="list the entries, where their markers are and the mutants")
    parser.add_argument("--budget", type=float, default=1500.0, help="seconds for the whole run (default 1500)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds for one pytest run (default 180)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies (their folder is printed)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    ini = args.ini or root / ".ci" / ROOT_INI_NAME
    entries = read_entries(ini)
    known = {e.id for e in entries}
    if args.only:
        wanted = [i.strip() for i in args.only.split(",") if i.strip()]
        unknown = [i for i in wanted if i not in known]
        if unknown:
            print(f"error: no entry {', '.join(unknown)} in {ini} (--list shows them)", file=sys.stderr)
            return 2
        entries = [e for e in entries if e.id in wanted]
    if not entries:
        print(f"error: {ini} holds no entries", file=sys.stderr)
        return 2
    if args.list:
        return list_entries(root, entries)
    runner = Runner(root, entries, args.budget, args.timeout, args.keep, check_orphans=not args.only)
    runner.known_ids = known
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        return runner.run()
    except KeyboardInterrupt:
        print("error: interrupted; the checkout was never changed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

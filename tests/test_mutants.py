"""The mutation runner (.ci/mutants.py, `make mutants`) on a tiny project of its own: a mutant the
tests notice is killed, a harmless one survives, a guard whose marker is missing or whose tests
fail unmutated is broken, and the project itself is never changed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from clihelp import REPO, tree_hashes

pytestmark = pytest.mark.slow  # every test here is of the slow tier (make test-all)

RUNNER = REPO / ".ci" / "mutants.py"

GATE = '''\
class Gate:
    def allows(self, size):
        if size > 10:  # guard: gate-limit
            return False
        return True  # guard: gate-answer


def shout(word):
    return word.upper()  # guard: gate-failing


def stray():
    return 1  # guard: gate-orphan


def other():
    return 2  # guard: gate-elsewhere
'''

TESTS = '''\
import os

import amsrepomirror
from amsrepomirror.gate import Gate, shout


def test_the_package_is_the_copy_in_the_working_folder():
    assert os.path.realpath(amsrepomirror.__file__).startswith(os.path.realpath(os.getcwd()) + os.sep)


def test_limit():
    assert Gate().allows(10) and not Gate().allows(11)


def test_shout_is_wrong():
    assert shout("a") == "a"
'''

INI = '''\
[gate-limit]
file = pipeline/gate.py
function = Gate.allows
find = size > 10
replace = False
tests = tests/test_gate.py -k "limit or copy"

[gate-answer]
file = pipeline/gate.py
function = Gate.allows
find = True
replace = bool(1)
tests = tests/test_gate.py -k limit -m not slow

[gate-missing]
file = pipeline/gate.py
function = Gate.allows
find = size
replace = 0
tests = tests/test_gate.py -k limit

[gate-elsewhere]
file = pipeline/gate.py
function = Gate.allows
find = 2
replace = 3
tests = tests/test_gate.py -k limit

[gate-failing]
file = pipeline/gate.py
function = shout
find = word.upper()
replace = word
tests = tests/test_gate.py -k shout
'''


def project(root: Path) -> Path:
    (root / "pipeline").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pipeline" / "__init__.py").write_text("")
    (root / "pipeline" / "gate.py").write_text(GATE)
    (root / "tests" / "test_gate.py").write_text(TESTS)
    (root / "mutants.ini").write_text(INI)
    return root


def run_runner(root: Path, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")  # faster, and -p names what is needed
    return subprocess.run([sys.executable, str(RUNNER), "--root", str(root), "--ini", str(root / "mutants.ini"), *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def results(stdout: str) -> dict:
    """{entry: result} from the summary table."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == ["entry", "result", "seconds"])
    return {line.split()[0]: line.split()[1] for line in lines[start + 1:] if len(line.split()) == 3}


def git(root: Path, *args) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True, capture_output=True)


def test_killed_survived_and_broken_entries_and_the_exit_code(tmp_path):
    """In a git checkout: tracked files as they are in the working tree, and new files, are what is mutated and run."""
    root = project(tmp_path / "project")
    final_gate = (root / "pipeline" / "gate.py").read_text()
    (root / "pipeline" / "gate.py").write_text(final_gate.split("\n\n\ndef other")[0] + "\n")
    (root / "tests" / "test_gate.py").rename(root / "test_gate.py")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "tracked")
    (root / "pipeline" / "gate.py").write_text(final_gate)  # other() and its marker: not committed
    (root / "test_gate.py").rename(root / "tests" / "test_gate.py")  # not in git at all
    before = tree_hashes(root, skip_state=False)
    done = run_runner(root)
    assert done.returncode == 1, done.stdout + done.stderr
    assert results(done.stdout) == {"gate-limit": "killed", "gate-answer": "survived", "gate-missing": "broken",
                                    "gate-elsewhere": "broken", "gate-failing": "broken", "gate-orphan": "broken"}, done.stdout
    out = done.stdout
    assert ("pipeline/gate.py:5 as `return bool(1)  # guard: gate-answer`: "
            "tests/test_gate.py -k limit -m 'not slow' still passes") in out
    assert "no line carries '# guard: gate-missing'" in out
    assert "'# guard: gate-elsewhere' (pipeline/gate.py:17) is outside Gate.allows (lines 2-5)" in out
    assert "its tests fail unmutated: tests/test_gate.py::test_shout_is_wrong" in out
    assert "marker without an entry in mutants.ini: pipeline/gate.py:13" in out
    assert out.splitlines()[-1].startswith("error: 5 of 6 not killed (broken, survived): ")
    assert tree_hashes(root, skip_state=False) == before  # the project itself is never changed
    assert sorted(p.name for p in root.rglob("*") if p.is_dir() and ".git" not in p.parts) == ["pipeline", "tests"]


def test_only_the_killed_entry_passes(tmp_path):
    root = project(tmp_path / "project")
    done = run_runner(root, "--only", "gate-limit")
    assert done.returncode == 0, done.stdout + done.stderr
    assert results(done.stdout) == {"gate-limit": "killed"}
    assert done.stdout.splitlines()[-1].startswith("all 1 killed in ")
    unknown = run_runner(root, "--only", "gate-none")
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: no entry gate-none in ")

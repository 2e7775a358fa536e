"""The man page and shell completion that `make man completion` generates from the parser, and
`make install-extras` installs: every command and option is in the page, the page renders without a
warning, and bash completes command names, options and folders.

The Makefile's own recipes run, in a scratch folder (make -f), so the checkout is not written to."""

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from clihelp import REPO
from servers import require_tool

from amsrepomirror.cli.parser import build_parser

# The venv whose argparse-manpage and shtab run (EXTRAS_VENV=DIR: try other versions of them, e.g. the lowest).
VENV = Path(os.environ.get("EXTRAS_VENV", Path(sys.executable).parent.parent))
pytestmark = pytest.mark.slow  # the generators import the package: about 3 s


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """`make man completion install-extras` run in a scratch folder: (that folder, the PREFIX installed to)."""
    make = require_tool("make")
    work = tmp_path_factory.mktemp("extras")
    (work / "man").mkdir()
    shutil.copy(REPO / "man" / "amsrepomirror.include", work / "man")
    prefix = work / "prefix"
    done = subprocess.run([make, "-s", "-f", REPO / "Makefile", f"VENV={VENV}", "-o", VENV / "bin" / "amsrepomirror",
                           f"PREFIX={prefix}", "install-extras"], cwd=work, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return work, prefix


def commands() -> dict[str, argparse.ArgumentParser]:
    """{"": the top parser, "mirror": its parser, ...}."""
    top = build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return {"": top, **sub.choices}


def rendered(page: Path) -> str:
    """The page as man shows it: plain text, no hyphenation, long lines; any groff warning fails the test."""
    groff = require_tool("groff")
    shown = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-rHY=0", "-rLL=250n", "-P", "-cbou", page],
                           capture_output=True, text=True, timeout=60)
    assert (shown.returncode, shown.stderr) == (0, "")
    return shown.stdout.replace("\u2212", "-").replace("\u2010", "-")


def test_man_page_has_every_command_and_option(made):
    work, prefix = made
    page = prefix / "share" / "man" / "man1" / "amsrepomirror.1"
    assert page.read_bytes() == (work / "man" / "amsrepomirror.1").read_bytes()
    text = rendered(page)
    sections = text.split("COMMAND 'amsrepomirror ")
    by_command = {part.split("'", 1)[0]: part for part in sections[1:]}
    parsers = commands()
    assert set(by_command) == set(parsers) - {""}
    for name, parser in parsers.items():
        where = by_command.get(name, sections[0] + sections[-1].split("\nOPTIONS\n", 1)[-1])
        missing = [option for action in parser._actions for option in action.option_strings
                   if option not in where and not isinstance(action, argparse._HelpAction)]  # -h: in the synopsis
        assert missing == [], f"{name or 'amsrepomirror'}: {missing}"
    for section in ("ENVIRONMENT", "FILES", "SEE ALSO", "NOTES"):
        assert f"\n{section}\n" in text
    assert "130  interrupted" in text and "SCM_PASSWORD" in text


def test_man_renders_the_installed_page(made):
    _, prefix = made
    man = require_tool("man")
    shown = subprocess.run([man, "-l", prefix / "share" / "man" / "man1" / "amsrepomirror.1"], capture_output=True,
                           text=True, timeout=60, env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "100"})
    assert shown.returncode == 0 and "amsrepomirror - mirror SCM's AMS package repository" in shown.stdout


def complete(script: Path, *words: str, cwd: Path | None = None) -> list[str]:
    """What bash offers for the last of ``words`` (the command line typed so far)."""
    line = " ".join(words)
    shell = (f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; COMP_LINE='{line}'; "
             f"COMP_POINT={len(line)}; _shtab_amsrepomirror; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=30, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_bash_completes_commands_options_and_folders(made):
    work, prefix = made
    script = prefix / "share" / "bash-completion" / "completions" / "amsrepomirror"
    assert complete(script, "amsrepomirror", "ver") == ["verify"]
    assert sorted(complete(script, "amsrepomirror", "")) == sorted(commands()[""]._subparsers._group_actions[0].choices)
    assert complete(script, "amsrepomirror", "unpack", "--am") == ["--amshome"]
    assert complete(script, "amsrepomirror", "bundle", "--qu") == ["--quiet"]
    (work / "homes" / "ams2026").mkdir(parents=True)
    (work / "homes" / "notes.txt").write_text("")
    assert complete(script, "amsrepomirror", "unpack", "BUNDLE", "--amshome", "homes/", cwd=work) == ["homes/ams2026"]


def test_zsh_completion_is_valid_zsh(made):
    _, prefix = made
    zsh = require_tool("zsh")
    script = prefix / "share" / "zsh" / "site-functions" / "_amsrepomirror"
    checked = subprocess.run([zsh, "-n", script], capture_output=True, text=True, timeout=30)
    assert (checked.returncode, checked.stderr) == (0, "")
    assert script.read_text().startswith("#compdef amsrepomirror")

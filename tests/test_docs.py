"""The commands in README.md and docs/*.md are run, so that the manual stays true.

A fenced block whose info string is exactly ``sh runnable`` is run (docs/development.md, "Runnable docs"): a page's
runnable blocks, in order, as one bash script (variables and the working folder carry over, as in a reader's
shell), with ``set -e -o pipefail``, in an empty temporary folder, against the SCM double serving a small synthetic
repository. The environment names what a reader would fill in: ``LISTING_URL`` (the double's listing), ``MIRROR``,
``STICK``, ``AMSHOME`` (empty folders), ``PORT`` (a free port), the double's demo account in ``SCM_USER`` and
``SCM_PASSWORD``, and the tool on ``PATH``. Between two blocks one file of the served repository changes, as SCM's
does between months, so a ``--since last`` block has something to carry.
"""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from clihelp import REPO, cli_env
from servers import free_port, require_tool

from amsrepomirror.testing.repository import DEFAULT_VERSION, make_repository
from amsrepomirror.testing.scmdouble import ScmDouble

MARKER = "sh runnable"
FENCE = re.compile(r"^(```+|~~~+)\s*(.*?)\s*$")
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PAGE_TIMEOUT = 60
CHANGED_UPSTREAM = "common/docs/manual-2026.101.tar.zst"  # a file the double's synthetic repository holds


def closes(line: str, fence: str) -> bool:
    """A closing fence: only the opening's character, at least as many times."""
    bare = line.strip()
    return bare.startswith(fence) and not bare.strip(fence[0])


def fenced_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line number of the opening fence, info string, body) of every fenced block of a Markdown page."""
    blocks, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, info, start, body = opening.group(1), opening.group(2), i + 1, []
        i += 1
        while i < len(lines) and not closes(lines[i], fence):
            body.append(lines[i])
            i += 1
        blocks.append((start, info, "\n".join(body) + "\n"))
        i += 1
    return blocks


def runnable_blocks(page: Path) -> list[tuple[int, str]]:
    return [(line, body) for line, info, body in fenced_blocks(page.read_text(encoding="utf-8")) if info == MARKER]


def page_script(page: Path, python: str, served: Path) -> str:
    """The page's runnable blocks as one script; each is announced on stderr (so a failure names its block), and
    between two of them the served repository changes."""
    change = (f"{python} -c 'import sys; from amsrepomirror.testing.repository import change_file; "
              f"change_file(sys.argv[1], sys.argv[2], seed=sys.argv[3])' '{served}' '{CHANGED_UPSTREAM}'")
    parts = ["set -e -o pipefail\n"]
    for n, (line, body) in enumerate(runnable_blocks(page)):
        if n:
            parts.append(f"{change} {n}\n")
        parts.append(f"echo '>>> {page.relative_to(REPO)}:{line}' >&2\n{body}")
    return "".join(parts)


def test_a_block_meant_to_run_is_marked_exactly():
    """A misspelt marker would leave a block silently unrun."""
    near = [(page.relative_to(REPO), line, info) for page in PAGES
            for line, info, _ in fenced_blocks(page.read_text(encoding="utf-8")) if "runnable" in info and info != MARKER]
    assert near == []


LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings (outside fenced blocks): lower case, punctuation dropped, spaces as -."""
    fenced = {line for start, _, body in fenced_blocks(page.read_text(encoding="utf-8"))
              for line in range(start, start + body.count("\n") + 1)}
    anchors = set()
    for n, line in enumerate(page.read_text(encoding="utf-8").split("\n"), start=1):
        if n not in fenced and re.match(r"#{1,6} ", line):
            anchors.add(re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-"))
    return anchors


def test_links_between_the_pages_resolve():
    """A page moved or a heading renamed leaves no link pointing at nothing."""
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or (anchor and anchor not in heading_anchors(linked)):
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert broken == []


def test_the_readme_and_the_operations_page_have_runnable_blocks():
    assert len(runnable_blocks(REPO / "README.md")) >= 3
    assert len(runnable_blocks(REPO / "docs" / "operations.md")) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if runnable_blocks(p)], ids=lambda p: str(p.relative_to(REPO)))
def test_the_runnable_blocks_of_a_page_run_against_the_double(page, tmp_path):
    served = tmp_path / "scm"
    make_repository(served, DEFAULT_VERSION, big_size=200_000)
    work, amshome = tmp_path / "work", tmp_path / "ams"
    work.mkdir()
    amshome.mkdir()
    python = sys.executable
    path = [str(Path(python).parent)]
    if any(re.search(r"\b7zz\b", body) for _, body in runnable_blocks(page)):  # checking by hand with 7-Zip
        path.append(str(Path(require_tool("7zz")).parent))
    with ScmDouble(served) as double:
        env = cli_env(home=str(tmp_path / "home"), LISTING_URL=double.listing_url(DEFAULT_VERSION),
                      MIRROR=str(tmp_path / "mirror"), STICK=str(tmp_path / "stick"), AMSHOME=str(amshome),
                      PORT=str(free_port()), PATH=os.pathsep.join([*path, os.environ["PATH"]]))
        script = page_script(page, python, served)
        proc = subprocess.Popen(["bash", "-c", script], cwd=work, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=PAGE_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        finally:
            try:  # whatever a block left running (a double started in the background)
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    blocks = [line for line in output.splitlines() if line.startswith(">>> ")]
    tail = "\n".join(output.splitlines()[-30:])
    assert proc.returncode == 0, f"the block at {blocks[-1][4:] if blocks else page} exited {proc.returncode}:\n{tail}"
    assert len(blocks) == len(runnable_blocks(page)), tail

"""Guards on behaviour that once could break with the suite still green: the index a bundle must
hold, partial downloads left by a killed run, and which exit code wins when several tasks fail."""

import itertools
import shutil
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import luigi
import pytest
from clihelp import popen_cli, run_cli, served_tree, tree_hashes
from servers import require_tool

from amsrepomirror.bundle.format import MANIFEST_NAME, README_NAME, BundleManifest
from amsrepomirror.bundle.sums import write_sums
from amsrepomirror.cli.exit_codes import most_severe_failure
from amsrepomirror.cli.runner import run_graph
from amsrepomirror.errors import AuthError, DiskSpaceError, FetchError, IntegrityError, UsageError
from amsrepomirror.offline.placement import LOCK
from amsrepomirror.online.workspace import Workspace
from amsrepomirror.tasks.base import ReportsFailure
from amsrepomirror.testing.repository import change_file, make_repository, remove_file, repository_files, write_listing
from amsrepomirror.testing.scmdouble import ScmDouble
from amsrepomirror.util.hashing import sha256_file

VERSION = "AMS2026.1"
INDEX = f"{VERSION}.yml"
UNPACK_LOG = ".amsrepomirror-unpack.log"


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


# --- unpack refuses a bundle without <VERSION>.yml ------------------------------------------------

@pytest.fixture(scope="module")
def bundle_of_the_double(tmp_path_factory):
    """A bundle the tool built from the double's repository (do not change it: copy it)."""
    root = tmp_path_factory.mktemp("built")
    make_repository(root / "scm", VERSION)
    with ScmDouble(root / "scm") as double:
        made = run_cli("bundle", "--version", VERSION, "--mirror", root / "mirror", "--listing-url",
                       double.listing_url(VERSION), "--out", root / "bundle", "--chunk-size", "1MiB")
    assert made.returncode == 0, made.stderr
    return root / "bundle"


def without_index(bundle: Path, out: Path) -> Path:
    """A copy of ``bundle`` with ``<VERSION>.yml`` taken out of its chunk (real 7-Zip) and out of
    manifest.json, and SHA256SUMS written anew: consistent in every other respect."""
    shutil.copytree(bundle, out)
    manifest = BundleManifest.read(out / MANIFEST_NAME)
    chunk = next(c for c in manifest.chunks if INDEX in c.members)
    subprocess.run([require_tool("7zz"), "d", str(out / chunk.name), INDEX], check=True, capture_output=True)
    shrunk = replace(chunk, size=(out / chunk.name).stat().st_size, sha256=sha256_file(out / chunk.name),
                     members=[m for m in chunk.members if m != INDEX])
    manifest = replace(manifest, files=[f for f in manifest.files if f.path != INDEX],
                       chunks=[shrunk if c.name == chunk.name else c for c in manifest.chunks])
    manifest.write(out / MANIFEST_NAME)
    write_sums(out, [c.name for c in manifest.chunks] + [MANIFEST_NAME, README_NAME])
    return out


def amshome_state(home: Path) -> dict:
    """Everything in AMSHOME but the unpack log (which says what happened) and the lock file
    (empty; it stays by design)."""
    return {p: h for p, h in tree_hashes(home, skip_state=False).items() if p not in (UNPACK_LOG, LOCK)}


@pytest.mark.slow
@pytest.mark.parametrize("installed", [True, False], ids=["over-an-installed-tree", "first-install"])
def test_unpack_refuses_a_bundle_without_the_version_index(bundle_of_the_double, tmp_path, installed):
    out = without_index(bundle_of_the_double, tmp_path / "no-index")
    home = tmp_path / "ams"
    home.mkdir()
    if installed:
        first = run_cli("unpack", bundle_of_the_double, "--amshome", home)
        assert first.returncode == 0, first.stderr
        assert (home / "repository" / INDEX).is_file()
    before = amshome_state(home)
    result = run_cli("unpack", out, "--amshome", home)
    assert result.returncode == 4, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and INDEX in lines[0], result.stderr
    assert amshome_state(home) == before
    assert sorted(p.name for p in home.iterdir() if p.name.startswith(".repository")) == []


def test_verify_refuses_a_bundle_without_the_version_index(bundle_of_the_double, tmp_path):
    """verify applies what unpack applies: a bundle unpack refuses never verifies as intact."""
    out = without_index(bundle_of_the_double, tmp_path / "no-index")
    result = run_cli("verify", out)
    assert result.returncode == 4, result.stdout + result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and INDEX in lines[0], result.stderr


# --- no stale .part after a complete run ----------------------------------------------------------

def parts_left(mirror: Path) -> list:
    state = Workspace(mirror).state
    return sorted(p.relative_to(state).as_posix() for p in state.rglob("*") if ".part" in p.name)


def kill_mid_download(double, mirror: Path, rel: str, at_least: int) -> None:
    """Start a mirror run and kill -9 it once ``rel``'s part holds ``at_least`` bytes."""
    double.throttle(300_000)
    proc = popen_cli("mirror", "--version", VERSION, "--mirror", mirror, "--listing-url", double.listing_url(VERSION))
    part = Workspace(mirror).part_path(rel)
    deadline = time.monotonic() + 180  # a guard against a hang only
    try:
        while time.monotonic() < deadline and (not part.exists() or part.stat().st_size < at_least):
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        double.throttle(None)
    assert part.stat().st_size >= at_least


BIG = "linux/x86_64/python3.11-2026.101.tar.zst"


@pytest.mark.slow
@pytest.mark.parametrize("then", ["changed-on-the-server", "no-longer-listed"])
def test_a_complete_run_leaves_no_partial_download(scm_double, repo_tree, tmp_path, then):
    mirror = tmp_path / "mirror"
    kill_mid_download(scm_double, mirror, BIG, at_least=400_000)
    assert parts_left(mirror)  # the kill left the big file's part (and its validators)
    if then == "changed-on-the-server":
        change_file(repo_tree, BIG, seed="v2")
    else:
        remove_file(repo_tree, BIG)
        write_listing(repo_tree, VERSION, scm_double.base_url, repository_files(repo_tree))
    result = run_cli("mirror", "--version", VERSION, "--mirror", mirror, "--listing-url",
                     scm_double.listing_url(VERSION))
    assert result.returncode == 0, result.stderr
    assert tree_hashes(mirror) == served_tree(repo_tree, VERSION)
    assert parts_left(mirror) == []


# --- which exit code wins when several tasks fail -------------------------------------------------

#: As documented: authentication, then disk space, then integrity, then usage, then runtime.
DOCUMENTED_PRIORITY = (3, 5, 4, 2, 1)
ERROR_FOR_CODE = {3: AuthError, 5: DiskSpaceError, 4: IntegrityError, 2: UsageError, 1: FetchError}


class FailsWith(ReportsFailure, luigi.Task):
    """A real task that fails with the MirrorError of ``code``."""

    code = luigi.IntParameter()
    case = luigi.Parameter()  # one task instance per test case

    def complete(self):
        return False

    def run(self):
        raise ERROR_FOR_CODE[self.code](f"failure with exit code {self.code}")


def expected_winner(codes) -> int:
    return min(codes, key=DOCUMENTED_PRIORITY.index)


@pytest.mark.parametrize("codes", list(itertools.permutations(DOCUMENTED_PRIORITY, 2)) +
                         [DOCUMENTED_PRIORITY, DOCUMENTED_PRIORITY[::-1]], ids=str)
def test_the_documented_exit_code_wins_whatever_the_order(codes, tmp_path):
    case = "-".join(map(str, codes))
    failures = run_graph([FailsWith(code=c, case=case) for c in codes], log_file=tmp_path / "luigi.log")
    assert [f["code"] for f in failures] == list(codes)  # each task's failure, in the order they ran
    winner = most_severe_failure(failures)
    assert winner["code"] == expected_winner(codes)
    assert winner["message"] == f"failure with exit code {expected_winner(codes)}"

"""Staging, atomic swap and crash recovery inside AMSHOME (including real kill -9 runs)."""

import ctypes
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clihelp import REPO, cli_env

from amsrepomirror.bundle.format import MANIFEST_NAME, README_NAME
from amsrepomirror.bundle.receipt import make_receipt
from amsrepomirror.bundle.sums import write_sums
from amsrepomirror.errors import DiskSpaceError, IntegrityError, LockHeld, UsageError
from amsrepomirror.offline import placement
from amsrepomirror.offline.placement import (
    JOURNAL,
    LOCK,
    PREVIOUS,
    RECEIPT,
    REPOSITORY,
    STAGING,
    TRASH_PREFIX,
    check_amshome,
    check_version,
    installed_version,
    read_receipt,
    recover,
    require_space,
    staging_dir,
    swap_into_place,
    usage_hint,
    write_receipt,
)
from amsrepomirror.pack.readme import readme_text

try:  # the bundle builder lives in test_extract.py
    from test_extract import build_bundle, tree
except ImportError:  # pragma: no cover - when tests/ is a package
    from tests.test_extract import build_bundle, tree

TREE_A = {
    "AMS2026.1.yml": b"index: A\n",
    "packages/a/a-1.0.zip": bytes(range(256)) * 3,  # split across chunks
    "packages/common.txt": b"same in both\n",
}
TREE_B = {
    "AMS2026.1.yml": b"index: B\n",
    "packages/b/b-2.0.zip": bytes(reversed(range(256))) * 3,
    "packages/common.txt": b"same in both\n",
    "extra/only-in-b.txt": b"b\n",
}


def make_tree(path: Path, files: dict) -> None:
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)


UNPACK_LOG = ".amsrepomirror-unpack.log"


def files_of(t: dict) -> dict:
    return {k: v for k, v in t.items() if v != "DIR"}


def expect(files: dict) -> dict:
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "amshome"
    h.mkdir()
    return h


def names(home):
    return sorted(os.listdir(home))


# ---------------------------------------------------------------------------------------------
# AMSHOME checks


def test_check_amshome_missing_and_not_a_dir(tmp_path):
    with pytest.raises(UsageError, match=r"AMSHOME .*nope does not exist") as info:
        check_amshome(tmp_path / "nope")
    assert info.value.exit_code == 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is not a directory"):
        check_amshome(tmp_path / "file")
    assert check_amshome(tmp_path) == tmp_path
    assert os.listdir(tmp_path) == ["file"]  # the probe file was removed


def test_check_amshome_read_only_mount(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        with pytest.raises(UsageError, match="is on a read-only file system") as info:
            check_amshome(mnt)
        assert "\n" not in str(info.value)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_check_amshome_immutable_dir_names_the_cause(tmp_path):
    d = tmp_path / "immutable"
    d.mkdir()
    r = subprocess.run(["chattr", "+i", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"chattr +i not possible here: {r.stderr.decode().strip()}")
    try:
        # as root the cause is never "this user"
        why = r"refuses writes even to root" if os.geteuid() == 0 else r"not writable by this user"
        with pytest.raises(UsageError, match=why + r" \(Operation not permitted\)"):
            check_amshome(d)
    finally:
        subprocess.run(["chattr", "-i", str(d)], check=False)


def test_installed_version_and_check_version(home):
    cands = ["config/version.txt", "lib/*.ver", "missing/file"]
    assert installed_version(home, cands) is None
    msg = check_version("AMS2026.1", home, cands)
    assert msg.startswith("could not read the installed AMS version from AMSHOME (looked at config/version.txt")
    assert msg.endswith("not checked")
    (home / "lib").mkdir()
    (home / "lib" / "ams.ver").write_text("ADF build info\nrelease AMS2026.1 (r123)\n")
    assert installed_version(home, cands) == "AMS2026.1"
    assert check_version("AMS2026.1", home, cands) == "installed AMS version AMS2026.1 matches"
    with pytest.raises(UsageError, match="bundle is for AMS2025.1 but .* has AMS2026.1") as info:
        check_version("AMS2025.1", home, cands)
    assert info.value.exit_code == 2
    # only the first KB is read; first candidate wins
    (home / "config").mkdir()
    (home / "config" / "version.txt").write_text("x" * 2000 + "AMS2024.1")
    assert installed_version(home, cands) == "AMS2026.1"
    (home / "config" / "version.txt").write_text("AMS2024.104")
    assert installed_version(home, cands) == "AMS2024.104"


def test_staging_dir_and_usage_hint(home):
    assert staging_dir(home) == home / STAGING
    hint = usage_hint(home, "AMS2026.1")
    assert str(home / "repository") in hint
    assert "amspackages" in hint
    assert f"export SCM_AMSPKGS_REPO={home}/repository/AMS2026.1.yml" in hint


def test_require_space_on_tiny_tmpfs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")
    try:
        require_space(mnt, 100 * 1024)
        with pytest.raises(DiskSpaceError, match="not enough disk space") as info:
            require_space(mnt, 2 * 1024 * 1024)
        assert info.value.exit_code == 5
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_amshome_lock_excludes_a_second_unpack(home):
    with placement.amshome_lock(home):
        with pytest.raises(LockHeld, match="another amsrepomirror unpack is running") as held:
            with placement.amshome_lock(home):
                pass
        assert held.value.exit_code == 75
        recover(home)  # the lock file is not a leftover
        assert (home / placement.LOCK).exists()
    with placement.amshome_lock(home):  # released
        pass


# ---------------------------------------------------------------------------------------------
# receipt


def test_receipt_roundtrip(home):
    assert read_receipt(home) is None
    r = write_receipt(home, "ab" * 32, "AMS2026.1", home / "bundle")
    assert read_receipt(home) == r
    assert r["manifest_sha256"] == "ab" * 32 and r["version"] == "AMS2026.1"
    assert (home / RECEIPT).exists() and not (home / REPOSITORY).exists()
    (home / RECEIPT).write_text("{not json")
    with pytest.raises(IntegrityError):
        read_receipt(home)


# ---------------------------------------------------------------------------------------------
# swap


@pytest.fixture(params=["exchange", "rename"])
def mode(request, monkeypatch):
    if request.param == "rename":
        monkeypatch.setattr(placement, "_renameat2", None)
    elif placement._renameat2 is None:
        pytest.skip("renameat2 not available here")
    return request.param


def test_first_install(home, mode):
    stg = staging_dir(home)
    make_tree(stg, TREE_A)
    assert swap_into_place(home, stg) == "first-install"
    assert files_of(tree(home / REPOSITORY)) == expect(TREE_A)
    assert names(home) == [REPOSITORY]


def test_swap_replaces_and_removes_old(home, mode):
    make_tree(home / REPOSITORY, TREE_A)
    write_receipt(home, "a" * 64, "AMS2026.1", "bundleA")
    stg = staging_dir(home)
    make_tree(stg, TREE_B)
    assert swap_into_place(home, stg) == mode
    assert files_of(tree(home / REPOSITORY)) == expect(TREE_B)
    assert names(home) == [REPOSITORY]  # old tree removed, stale receipt removed
    write_receipt(home, "b" * 64, "AMS2026.1", "bundleB")


def test_swap_keep_previous_and_receipt(home, mode):
    make_tree(home / REPOSITORY, TREE_A)
    make_tree(home / PREVIOUS, {"older.txt": b"older"})
    stg = staging_dir(home)
    make_tree(stg, TREE_B)
    rec = make_receipt("b" * 64, "AMS2026.1", "bundleB")
    swap_into_place(home, stg, keep_previous=True, receipt=rec)
    assert files_of(tree(home / REPOSITORY)) == expect(TREE_B)
    assert files_of(tree(home / PREVIOUS)) == expect(TREE_A)
    assert read_receipt(home) == rec
    assert names(home) == sorted([REPOSITORY, PREVIOUS, RECEIPT])


def test_exchange_falls_back_on_einval(home, monkeypatch):
    def fake(*args):
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(placement, "_renameat2", fake)
    make_tree(home / REPOSITORY, TREE_A)
    make_tree(staging_dir(home), TREE_B)
    assert swap_into_place(home, staging_dir(home)) == "rename"
    assert files_of(tree(home / REPOSITORY)) == expect(TREE_B)


def test_swap_refuses_staging_outside_amshome(home, tmp_path):
    make_tree(tmp_path / "elsewhere", TREE_B)
    with pytest.raises(UsageError, match="directly inside AMSHOME"):
        swap_into_place(home, tmp_path / "elsewhere")


# ---------------------------------------------------------------------------------------------
# recover() from hand-made intermediate states


def _journal(home, staging_ident, keep=False, receipt=None):
    (home / JOURNAL).write_text(json.dumps({"schema": placement.JOURNAL_SCHEMA, "new": staging_ident,
                                            "staging": STAGING, "keep_previous": keep, "receipt": receipt}))


def _ident(p):
    st = os.lstat(p)
    return [st.st_dev, st.st_ino]


def test_recover_nothing_to_do(home):
    make_tree(home / REPOSITORY, TREE_A)
    assert recover(home) == []
    assert names(home) == [REPOSITORY]


def test_recover_killed_between_fallback_renames(home):
    # journal written, repository -> repository.previous done, staging -> repository not yet
    write_receipt(home, "a" * 64, "AMS2026.1", "A")
    make_tree(home / PREVIOUS, TREE_A)
    make_tree(home / STAGING, TREE_B)
    _journal(home, _ident(home / STAGING), receipt=make_receipt("b" * 64, "v", "B"))
    actions = recover(home)
    assert any("rolled back" in a for a in actions)
    assert files_of(tree(home / REPOSITORY)) == expect(TREE_A)
    assert names(home) == sorted([REPOSITORY, RECEIPT])
    assert read_receipt(home)["manifest_sha256"] == "a" * 64  # still describes the old tree


def test_recover_no_journal_repository_missing(home):
    make_tree(home / PREVIOUS, TREE_A)
    recover(home)
    assert files_of(tree(home / REPOSITORY)) == expect(TREE_A)
    assert names(home) == [REPOSITORY]


@pytest.mark.parametrize("keep", [False, True])
def test_recover_after_exchange_before_rename(home, keep):
    # exchange done: repository is the new tree (journal names its inode), staging holds the old
    write_receipt(home, "a" * 64, "AMS2026.1", "A")
    make_tree(home / REPOSITORY, TREE_B)
    make_tree(home / STAGING, TREE_A)
    _journal(home, _ident(home / REPOSITORY), keep=keep, receipt=make_receipt("b" * 64, "v", "B"))
    recover(home)
    assert files_of(tree(home / REPOSITORY)) == expect(TREE_B)
    assert read_receipt(home)["manifest_sha256"] == "b" * 64
    if keep:
        assert files_of(tree(home / PREVIOUS)) == expect(TREE_A)
        assert names(home) == sorted([REPOSITORY, PREVIOUS, RECEIPT])
    else:
        assert names(home) == sorted([REPOSITORY, RECEIPT])


def test_recover_after_swap_without_receipt_removes_stale_receipt(home):
    write_receipt(home, "a" * 64, "AMS2026.1", "A")
    make_tree(home / REPOSITORY, TREE_B)
    make_tree(home / PREVIOUS, TREE_A)
    _journal(home, _ident(home / REPOSITORY), keep=False, receipt=None)
    recover(home)
    assert names(home) == [REPOSITORY]


def test_recover_swap_not_started(home):
    write_receipt(home, "a" * 64, "AMS2026.1", "A")
    make_tree(home / REPOSITORY, TREE_A)
    make_tree(home / STAGING, TREE_B)
    _journal(home, _ident(home / STAGING))
    recover(home)
    assert files_of(tree(home / REPOSITORY)) == expect(TREE_A)
    assert names(home) == sorted([REPOSITORY, RECEIPT])
    assert read_receipt(home)["manifest_sha256"] == "a" * 64


def test_recover_removes_trash_and_stale_staging(home):
    make_tree(home / REPOSITORY, TREE_A)
    make_tree(home / (TRASH_PREFIX + "x1z") / "t", TREE_B)
    make_tree(home / STAGING, {"half.txt": b"half"})
    make_tree(home / (STAGING + ".old"), {"half.txt": b"half"})
    (home / "unrelated").mkdir()
    recover(home)
    assert names(home) == sorted([REPOSITORY, "unrelated"])


# ---------------------------------------------------------------------------------------------
# real kill -9, through the real command: `python -m amsrepomirror unpack` kills itself at a named
# step (placement.KILL_AT_ENV, the one test seam) or is killed from outside at a random moment.

#: The same command on a system without renameat2 (not Linux, or a libc without the wrapper):
#: the loader found nothing, so the swap takes the two-rename path.
WITHOUT_RENAMEAT2 = ("import runpy, amsrepomirror.offline.placement as placement; placement._renameat2 = None; "
                     "runpy.run_module('amsrepomirror', run_name='__main__', alter_sys=True)")


def unpack_command(bundles, name, home, mode, keep=False):
    args = ["unpack", str(bundles[name][0]), "--amshome", str(home)] + (["--keep-previous"] if keep else [])
    entry = ["-c", WITHOUT_RENAMEAT2] if mode == "rename" else ["-m", "amsrepomirror"]
    return [sys.executable, *entry, *args]


def run_unpack(bundles, name, home, mode, kill_at=None, keep=False) -> subprocess.CompletedProcess:
    """Run the unpack of bundle ``name`` (returncode -9 when it was killed)."""
    env = cli_env(**({placement.KILL_AT_ENV: kill_at} if kill_at else {}))
    result = subprocess.run(unpack_command(bundles, name, home, mode, keep), cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Complete bundles A and B (chunks, manifest.json, README.txt, SHA256SUMS) of TREE_A and TREE_B."""
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for name, files in (("A", TREE_A), ("B", TREE_B)):
        manifest = build_bundle(root / name, files, chunk_size=300)
        (root / name / README_NAME).write_text(readme_text(manifest), encoding="utf-8")
        write_sums(root / name, [c.name for c in manifest.chunks] + [MANIFEST_NAME, README_NAME])
        sha = hashlib.sha256((root / name / MANIFEST_NAME).read_bytes()).hexdigest()
        out[name] = (root / name, expect(files), sha)
    return out


@pytest.fixture(scope="module")
def installed_a(bundles, tmp_path_factory):
    """An AMSHOME holding bundle A, unpacked by the command (copy it: do not change it)."""
    home = tmp_path_factory.mktemp("installed") / "amshome"
    home.mkdir()
    assert run_unpack(bundles, "A", home, "exchange").returncode == 0
    return home


def amshome_with_a(installed_a, tmp_path):
    home = tmp_path / "amshome"
    shutil.copytree(installed_a, home)
    return home


def which_tree(bundles, path: Path):
    """'A' or 'B' when path holds exactly that tree (else fail)."""
    got = files_of(tree(path))
    for n in ("A", "B"):
        if got == bundles[n][1]:
            return n
    raise AssertionError(f"{path} is a mix or incomplete: {sorted(got)}")


def assert_consistent(bundles, home, mode):
    repo = home / REPOSITORY
    if not repo.exists():
        # only the fallback has a window without repository, and then the old tree is complete
        assert mode == "rename" and (home / JOURNAL).exists(), names(home)
        which_tree(bundles, home / PREVIOUS)
        return None
    return which_tree(bundles, repo)


def assert_clean(bundles, home, expected):
    """``expected`` is in place, the receipt names it, and nothing of an unpack is left over."""
    assert which_tree(bundles, home / REPOSITORY) == expected
    assert read_receipt(home)["manifest_sha256"] == bundles[expected][2]
    leftovers = [x for x in names(home) if x not in (REPOSITORY, PREVIOUS, RECEIPT, LOCK, UNPACK_LOG)]
    assert leftovers == []
    if (home / PREVIOUS).exists():
        which_tree(bundles, home / PREVIOUS)


KILL_POINTS = {
    "exchange": ["unpack:chunk-extracted", "unpack:verified", "swap:begin", "swap:journal-written",
                 "swap:exchanged", "swap:new-in-place", "swap:old-handled", "swap:receipt",
                 "swap:journal-removed"],
    "rename": ["unpack:verified", "swap:journal-written", "swap:old-renamed", "swap:new-in-place",
               "swap:old-handled", "swap:receipt"],
}


@pytest.mark.slow
@pytest.mark.parametrize("mode,kill_at,keep", [(m, k, keep) for m in KILL_POINTS for k in KILL_POINTS[m]
                                               for keep in (False, True)
                                               if not keep or k in ("swap:exchanged", "swap:old-renamed",
                                                                    "swap:new-in-place")])
def test_kill_at_each_step(tmp_path, bundles, installed_a, mode, kill_at, keep):
    if mode == "exchange" and placement._renameat2 is None:
        pytest.skip("renameat2 not available here")
    home = amshome_with_a(installed_a, tmp_path)

    killed = -signal.SIGKILL
    assert run_unpack(bundles, "B", home, mode, kill_at=kill_at, keep=keep).returncode == killed
    assert_consistent(bundles, home, mode)

    # the rerun is itself killed while recovering (when there is a journal to act on) ...
    assert run_unpack(bundles, "B", home, mode, kill_at="recover:journal-found", keep=keep).returncode in (0, killed)
    assert_consistent(bundles, home, mode)
    # ... or after the old tree was handled during recovery
    assert run_unpack(bundles, "B", home, mode, kill_at="swap:old-to-previous", keep=keep).returncode in (0, killed)
    assert_consistent(bundles, home, mode)

    # a plain rerun completes the job
    assert run_unpack(bundles, "B", home, mode, keep=keep).returncode == 0
    assert_clean(bundles, home, "B")
    if keep:
        assert which_tree(bundles, home / PREVIOUS) in ("A", "B")
    else:
        assert not (home / PREVIOUS).exists()


@pytest.mark.slow
def test_two_rename_fallback_unpacks_and_a_kill_between_the_renames_is_rolled_back(tmp_path, bundles, installed_a):
    """Where renameat2 is unavailable the swap is two renames, with a moment without repository:
    a kill there leaves the old tree as repository.previous, and the next unpack restores it
    before it goes on."""
    home = amshome_with_a(installed_a, tmp_path)
    assert run_unpack(bundles, "B", home, "rename", kill_at="swap:old-renamed").returncode == -signal.SIGKILL
    assert not (home / REPOSITORY).exists() and which_tree(bundles, home / PREVIOUS) == "A"
    assert which_tree(bundles, home / STAGING) == "B" and (home / JOURNAL).exists()
    assert read_receipt(home)["manifest_sha256"] == bundles["A"][2]  # still true of the tree at previous

    rerun = run_unpack(bundles, "B", home, "rename", kill_at="swap:begin")  # stopped right after its recovery
    assert rerun.returncode == -signal.SIGKILL
    assert "interrupted swap rolled back: restored repository from repository.previous" in rerun.stderr
    assert which_tree(bundles, home / REPOSITORY) == "A" and not (home / PREVIOUS).exists()

    result = run_unpack(bundles, "B", home, "rename")
    assert result.returncode == 0, result.stderr
    assert "now holds AMS2026.1 (rename)" in result.stderr  # the fallback did the swap
    assert_clean(bundles, home, "B")


def test_rerun_of_the_installed_bundle_still_clears_what_a_killed_unpack_left(tmp_path, bundles, installed_a):
    """The receipt says A is in place, but a killed unpack of B left its staging tree (which can be
    as large as the repository): unpacking A again must not skip the recovery that removes it."""
    home = amshome_with_a(installed_a, tmp_path)
    assert run_unpack(bundles, "B", home, "exchange", kill_at="unpack:verified").returncode == -signal.SIGKILL
    assert which_tree(bundles, home / STAGING) == "B"
    result = run_unpack(bundles, "A", home, "exchange")
    assert result.returncode == 0, result.stderr
    assert "removed stale staging .repository.staging" in result.stderr and "already holds" in result.stderr
    assert_clean(bundles, home, "A")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exchange", "rename"])
def test_kill_at_random_moments(tmp_path, bundles, installed_a, mode):
    """Kills between the named steps too: at moments that home in on the swap (later after a kill
    that came before it, earlier after one that came after it), so both sides are hit."""
    if mode == "exchange" and placement._renameat2 is None:
        pytest.skip("renameat2 not available here")
    home = amshome_with_a(installed_a, tmp_path)

    def start(target, keep=False):
        """The unpack, once it printed its first line (recovery done; the work starts)."""
        proc = subprocess.Popen(unpack_command(bundles, target, home, mode, keep), cwd=REPO, env=cli_env(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:
            if line.startswith("unpack: checking every chunk"):
                break
        return proc, time.monotonic()

    proc, started = start("B")  # one whole run: how long the work takes up to the swap, here and now
    for line in proc.stderr:
        if line.startswith("unpack: ") and " now holds " in line:
            break
    delay = time.monotonic() - started
    assert proc.wait(timeout=120) == 0
    rng = random.Random(1234)
    seen = set()
    for i in range(8):
        target = "A" if i % 2 == 0 else "B"
        proc, started = start(target, keep=bool(i % 3 == 0))
        try:
            time.sleep(delay * (0.5 + rng.random()))
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode in (0, -signal.SIGKILL)  # (an exit code 1 would mean the unpack failed)
        after_swap = assert_consistent(bundles, home, mode) == target
        seen.add(after_swap)
        delay *= 0.6 if after_swap else 1.6
    assert seen == {True, False}
    assert run_unpack(bundles, "B", home, mode).returncode == 0
    assert_clean(bundles, home, "B")



#: Two unpacks of the same bundle folder in one process (Luigi hands out the same Unpack object for
#: the same parameters): argv is BUNDLE AMSHOME ACTION, where ACTION, done between the two, is
#: "replace:FOLDER" (the bundle folder now holds FOLDER's bundle) or "damage:PATH" (a file of the
#: installed tree removed).
UNPACK_TWICE = """
import os, shutil, sys
from amsrepomirror import cli
bundle, home, action = sys.argv[1:4]
unpack = ["unpack", bundle, "--amshome", home]
print("first:", cli.main(unpack), file=sys.stderr, flush=True)
what, _, arg = action.partition(":")
if what == "replace":
    shutil.rmtree(bundle)
    shutil.copytree(arg, bundle)
else:
    os.remove(arg)
print("second:", cli.main(unpack), file=sys.stderr, flush=True)
"""


def unpack_twice(bundles, tmp_path, action) -> subprocess.CompletedProcess:
    """Copy bundle A to a folder of its own and unpack it twice in one process (see UNPACK_TWICE);
    stderr holds the second unpack's lines after "first: 0"."""
    home, bundle = tmp_path / "amshome", tmp_path / "bundle"
    home.mkdir()
    shutil.copytree(bundles["A"][0], bundle)
    result = subprocess.run([sys.executable, "-c", UNPACK_TWICE, str(bundle), str(home), action], cwd=REPO,
                            env=cli_env(), capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert "Traceback" not in result.stderr, result.stderr
    assert "first: 0" in result.stderr, result.stderr
    return result


def test_a_second_unpack_in_the_same_process_installs_the_bundle_now_in_the_folder(tmp_path, bundles):
    result = unpack_twice(bundles, tmp_path, f"replace:{bundles['B'][0]}")
    second = result.stderr.split("first: 0", 1)[1]
    assert "second: 0" in second and "nothing to do" not in second, result.stderr
    assert files_of(tree(tmp_path / "amshome" / REPOSITORY)) == bundles["B"][1]
    assert read_receipt(tmp_path / "amshome")["manifest_sha256"] == bundles["B"][2]


def test_a_second_unpack_in_the_same_process_finds_the_installed_tree_damaged(tmp_path, bundles):
    result = unpack_twice(bundles, tmp_path, f"damage:{tmp_path / 'amshome' / REPOSITORY / 'packages/common.txt'}")
    second = result.stderr.split("first: 0", 1)[1]
    assert "second: 4" in second and "nothing to do" not in second, result.stderr
    assert "no longer matches the bundle its receipt names" in second


#: One unpack whose completeness check passes, after which the bundle folder is gone (the stick
#: pulled) before the command prints its end lines: argv is BUNDLE AMSHOME.
UNPACK_THEN_EJECT = """
import shutil, sys
from amsrepomirror import cli
from amsrepomirror.tasks import Unpack
bundle, home = sys.argv[1:3]
checked = Unpack.complete
def complete_then_eject(task):
    done = checked(task)
    shutil.rmtree(bundle, ignore_errors=True)
    return done
Unpack.complete = complete_then_eject
sys.exit(cli.main(["unpack", bundle, "--amshome", home]))
"""


def test_already_installed_ends_with_what_the_check_read_not_a_fresh_read_of_the_folder(tmp_path, bundles, installed_a):
    home, bundle = amshome_with_a(installed_a, tmp_path), tmp_path / "bundle"
    shutil.copytree(bundles["A"][0], bundle)
    result = subprocess.run([sys.executable, "-c", UNPACK_THEN_EJECT, str(bundle), str(home)], cwd=REPO,
                            env=cli_env(), capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and "already holds this bundle; nothing to do" in result.stderr, result.stderr
    assert not bundle.exists() and placement.usage_hint(home, "AMS2026.1") in result.stdout


def test_unpack_runs_in_its_own_process_whatever_the_worker_settings(tmp_path, bundles):
    """What unpack checked and placed is read back from the task: [worker] force_multiprocessing
    (run() in a child process) must not lose it."""
    settings = tmp_path / "luigi.cfg"
    settings.write_text((REPO / "tests" / "luigi-test.cfg").read_text() + "\n[worker]\nforce_multiprocessing = true\n")
    home = tmp_path / "amshome"
    home.mkdir()
    result = subprocess.run(unpack_command(bundles, "A", home, "exchange"), cwd=REPO, capture_output=True, text=True,
                            env=cli_env(LUIGI_CONFIG_PATH=str(settings)), timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert files_of(tree(home / REPOSITORY)) == bundles["A"][1]
    assert placement.usage_hint(home, "AMS2026.1") in result.stdout

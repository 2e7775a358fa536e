"""SIGTERM and kill -9 of a running command, the locks they leave (none), and the exit code of a run that
finds the lock held (75); the same exit codes from a plain ``luigi`` run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clihelp import REPO, cli_env, popen_cli, probe_bytes, run_cli, served_tree, tree_hashes

from amsrepomirror.errors import LOCK_HELD, TERMINATED, TERMINATED_LINE
from amsrepomirror.testing.repository import make_repository
from amsrepomirror.testing.scmdouble import ScmDouble

VERSION = "AMS2026.1"


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """(double, mirror folder): a repository with a 24 MiB file, mirrored; packing it with LZMA2 takes seconds,
    so a bundle run can be caught while its task processes write chunks."""
    root = tmp_path_factory.mktemp("scm")
    make_repository(root, VERSION, big_size=24 * 1024 * 1024)
    with ScmDouble(root) as double:
        dest = tmp_path_factory.mktemp("mirror") / "m"
        done = run_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", double.listing_url(VERSION))
        assert done.returncode == 0, done.stderr
        yield double, dest


def group_members(pgid: int, *, zombies: bool = True) -> list[tuple[int, str]]:
    """(pid, state) of the processes of process group ``pgid``, read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == pgid and (zombies or fields[0] not in "ZX"):
            found.append((int(stat.parent.name), fields[0]))
    return found


def wait_for(condition, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout  # a guard against a hang only
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"no {what} within {timeout} s")


def slow_bundle(dest: Path, out: Path) -> subprocess.Popen:
    """A bundle run in its own process group, caught once a task process writes a chunk (a .tmp in ``out``)."""
    proc = popen_cli("bundle", "--version", VERSION, "--mirror", dest, "--out", out, "--offline",
                     "--compression", "lzma2", "--chunk-size", "8MiB", start_new_session=True)
    wait_for(lambda: list(out.glob(".chunk-*.tmp")) if out.is_dir() else [], "chunk being written")
    members = group_members(proc.pid, zombies=False)
    assert len(members) >= 2, members  # the command and at least one of Luigi's task processes
    return proc


def bundle_again(dest: Path, out: Path) -> subprocess.CompletedProcess:
    return run_cli("bundle", "--version", VERSION, "--mirror", dest, "--out", out, "--offline")


@pytest.mark.slow
def test_sigterm_ends_bundle_and_its_task_processes_and_frees_the_lock(mirrored, tmp_path):
    double, dest = mirrored
    out = tmp_path / "bundle"
    first = slow_bundle(dest, out)

    # Meanwhile a second run finds the mirror locked: exit 75, one line, nothing written.
    held = bundle_again(dest, tmp_path / "other")
    assert held.returncode == LOCK_HELD == 75, held.stderr
    assert [line for line in held.stderr.splitlines() if line.startswith("error:")] == [
        f"error: another amsrepomirror run is using the mirror {dest} (lock {dest}/.amsrepomirror/lock is held); "
        "wait for it to finish"], held.stderr
    assert not (tmp_path / "other").exists()

    first.send_signal(signal.SIGTERM)
    first.wait(timeout=120)  # not communicate(): it would wait for every holder of the pipes, children too
    left = group_members(first.pid)
    _, err = first.communicate(timeout=120)
    assert first.returncode == TERMINATED == 143, err
    assert err.splitlines()[-1] == TERMINATED_LINE and err.count("terminated") == 1, err
    assert "Traceback" not in err
    assert left == []  # every task process ended (and was waited for) before the command did

    again = bundle_again(dest, out)  # at once: no lock left behind, and the partial chunks are not taken as done
    assert again.returncode == 0, again.stderr
    checked = run_cli("verify", out)
    assert checked.returncode == 0, checked.stderr + checked.stdout


@pytest.mark.slow
def test_kill_9_of_bundle_takes_its_task_processes_and_the_lock_with_it(mirrored, tmp_path):
    double, dest = mirrored
    out = tmp_path / "bundle"
    first = slow_bundle(dest, out)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=120)  # not communicate(): it would wait for every holder of the pipes, children too
    assert first.returncode == -signal.SIGKILL
    # The task processes end with their parent, not when their chunk is written (seconds later); zombies are
    # dead, only nobody reaps them in some containers.
    wait_for(lambda: not group_members(first.pid, zombies=False), "end of the task processes", timeout=2)
    first.communicate(timeout=120)

    again = bundle_again(dest, out)
    assert again.returncode == 0, again.stderr
    assert "is held" not in again.stderr
    checked = run_cli("verify", out)
    assert checked.returncode == 0, checked.stderr + checked.stdout


def test_sigterm_ends_mirror_like_ctrl_c_and_the_rerun_resumes(mirrored, tmp_path):
    double, _ = mirrored
    dest = tmp_path / "m"
    double.throttle(300_000)
    try:
        proc = popen_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", double.listing_url(VERSION),
                         start_new_session=True)
        parts = dest / ".amsrepomirror" / "parts"
        # a transfer under way: beyond the first bytes a first run's probe brought, which start a part at once
        wait_for(lambda: [p for p in parts.rglob("*.part") if p.stat().st_size > probe_bytes()] if parts.is_dir() else [],
                 "download")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # again, while the first one's cleanup runs: still one line, no traceback
        proc.wait(timeout=120)
        left = group_members(proc.pid)
        _, err = proc.communicate(timeout=120)
    finally:
        double.throttle(None)
    assert proc.returncode == 143, err
    assert err.splitlines()[-1] == TERMINATED_LINE and "Traceback" not in err, err
    assert left == []
    double.clear_log()
    again = run_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", double.listing_url(VERSION))
    assert again.returncode == 0, again.stderr
    assert tree_hashes(dest) == served_tree(double.root, VERSION)
    assert any(r.range for r in double.records("GET"))  # the partial file was resumed, not taken as done


def test_plain_luigi_run_ends_with_the_commands_exit_code_and_one_line(mirrored, tmp_path):
    double, _ = mirrored
    result = subprocess.run(
        [sys.executable, "-m", "luigi", "--module", "amsrepomirror.tasks", "VerifyTree", "--version", VERSION,
         "--mirror", str(tmp_path / "m"), "--listing-url", double.listing_url(VERSION), "--local-scheduler"],
        cwd=REPO, env=cli_env(password="wrong"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr
    failed = [line for line in result.stderr.splitlines() if " failed " in line]
    assert len(failed) == 1 and failed[0].endswith("(HTTP 401): check SCM_USER/SCM_PASSWORD or ~/.netrc"), result.stderr
    assert "wrong" not in result.stderr


def test_luigi_summary_on_request_only(mirrored, tmp_path):
    double, dest = mirrored
    args = ("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", double.listing_url(VERSION))
    plain = run_cli(*args)
    assert plain.returncode == 0, plain.stderr
    assert "Luigi Execution Summary" not in plain.stderr
    shown = run_cli(*args, "--luigi-summary")
    assert shown.returncode == 0, shown.stderr
    summary = shown.stderr[shown.stderr.index("===== Luigi Execution Summary ====="):]
    assert "VerifyTree" in summary and "This progress looks :) because there were no failed tasks" in summary, summary
    logs = sorted((dest / ".amsrepomirror" / "runs").glob("*/luigi.log"), key=os.path.getmtime)
    assert "Luigi Execution Summary" in logs[-1].read_text()  # in the run's log in any case



def lock_is_free(path: Path) -> bool:
    """Whether another process can take the flock on ``path`` now."""
    taken = subprocess.run([sys.executable, "-c", "import fcntl, os, sys; "
                            "fcntl.flock(os.open(sys.argv[1], os.O_RDWR), fcntl.LOCK_EX | fcntl.LOCK_NB)", str(path)],
                           capture_output=True, text=True, timeout=60)
    return taken.returncode == 0


def test_a_forked_child_does_not_keep_its_parents_lock(tmp_path):
    """A flock belongs to the open file, which fork shares: a task process forked while the command holds the
    mirror's lock must not keep it held once the command let go (or died)."""
    import multiprocessing

    from amsrepomirror.util.fsutil import exclusive_lock

    lock = tmp_path / "lock"
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    try:
        with exclusive_lock(lock, "busy"):
            child.start()
            assert not lock_is_free(lock)
        assert child.is_alive() and lock_is_free(lock)
    finally:
        child.kill()
        child.join()

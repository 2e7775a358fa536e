"""Several processes on one mirror through Luigi's central scheduler: a real ``luigid`` on a free
loopback port (its state in the test's folder), real CLI processes, the SCM double counting what it serves."""

import collections
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
import requests
from clihelp import (
    REPO,
    cli_env,
    popen_cli,
    probe_range,
    run_cli,
    served_bytes,
    served_more_than_once,
    served_tree,
    tree_hashes,
)

from amsrepomirror.testing.repository import DEFAULT_VERSION, PACKAGES_PREFIX, listing_path, make_repository
from amsrepomirror.testing.scmdouble import ScmDouble

VERSION = DEFAULT_VERSION


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def luigid(tmp_path):
    """A real luigid on loopback; a dead worker's batch is given up after 3 s (not the default 60 s)."""
    folder = tmp_path / "luigid"
    folder.mkdir()
    (folder / "luigid.cfg").write_text("[scheduler]\nworker_disconnect_delay = 3\nprune_on_get_work = true\n"
                                       "record_task_history = false\n")
    port = free_port()
    env = cli_env(LUIGI_CONFIG_PATH=str(folder / "luigid.cfg"))
    proc = subprocess.Popen([sys.executable, "-c", "from luigi.cmdline import luigid; luigid()", "--address", "127.0.0.1",
                             "--port", str(port), "--state-path", str(folder / "state.pickle"), "--logdir", str(folder)],
                            cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # a guard against a hang only
    while True:
        try:
            requests.get(f"{url}/api/worker_list", timeout=2).raise_for_status()
            break
        except requests.RequestException:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("luigid did not start")
            time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def many_files(tmp_path):
    """A repository with 600 tiny files besides the usual ones, served by the double."""
    root = tmp_path / "scm"
    make_repository(root, VERSION, tiny=600)
    with ScmDouble(root) as double:
        yield root, double


def mirror_args(double, dest: Path, *extra):
    return ("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", double.listing_url(VERSION), *extra)


def scheduler_tasks(url: str, search: str) -> dict:
    answer = requests.get(f"{url}/api/task_list", params={"data": json.dumps({"status": "", "upstream_status": "",
                                                                              "search": search, "limit": False})})
    return answer.json()["response"]


def wait_for_task(url: str, family: str, status: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(t["name"] == family and t["status"] == status for t in scheduler_tasks(url, "").values()):
            return
        time.sleep(0.1)
    pytest.fail(f"no {family} task went {status} in {timeout} s")


@pytest.mark.slow
def test_two_processes_share_one_run_each_file_served_once(many_files, luigid, tmp_path):
    root, double = many_files
    dest = tmp_path / "mirror"
    double.throttle(200_000)  # the run lasts long enough for the second process to join it
    first = popen_cli(*mirror_args(double, dest, "--scheduler-url", luigid, "--report", tmp_path / "first.json"))
    wait_for_task(luigid, "DownloadFile", "RUNNING")
    second = popen_cli(*mirror_args(double, dest, "--scheduler-url", luigid, "--report", tmp_path / "second.json"))
    out_first, out_second = first.communicate(timeout=600), second.communicate(timeout=600)
    assert first.returncode == 0, out_first[1]
    assert second.returncode == 0, out_second[1]
    expected = served_tree(root, VERSION)
    assert tree_hashes(dest) == expected
    served = served_bytes(double)
    assert set(served) | {"common/data/empty.dat"} == set(expected)
    assert served_more_than_once(double, root) == {}  # neither process asked again for a byte the other had
    reports = [json.loads((tmp_path / name).read_text()) for name in ("first.json", "second.json")]
    assert reports[0]["run_id"] == reports[1]["run_id"]  # one shared run, one snapshot
    # Each says what it fetched itself and what the run did: the two shares add up to the run's count.
    mine = [r["fetched_by_this_process"] for r in reports]
    assert all(mine) and sum(mine) == reports[0]["fetched"] == reports[1]["fetched"] == len(served), (mine, reports)
    for report, (_, err) in zip(reports, (out_first, out_second), strict=True):
        assert f": this process fetched {report['fetched_by_this_process']}, " in err
        assert f"; the shared run {report['run_id']}: {report['fetched']} fetched, " in err
    # Both did a share of the downloads: each process's worker ran batches (the shared log names their pids).
    log = (dest / ".amsrepomirror" / "runs" / reports[0]["run_id"] / "luigi.log").read_text()
    assert set(re.findall(r"\[pid (\d+)\] Worker .* running   DownloadFile", log)) == {str(first.pid), str(second.pid)}

    # luigid's page shows each batch's progress and what it did (the API behind the page).
    batches = [t for t in scheduler_tasks(luigid, f"DownloadFile {reports[0]['run_id']}").values() if t["status"] == "DONE"]
    messages = {t["status_message"] for t in batches}
    assert all(re.fullmatch(r"\d+ fetched, 0 failed, \d+ already current of \d+ file\(s\); .* transferred", m or "")
               for m in messages), messages
    assert {t["progress_percentage"] for t in batches} == {100}

    double.clear_log()
    again = run_cli(*mirror_args(double, dest, "--scheduler-url", luigid))
    assert again.returncode == 0, again.stderr
    assert served_bytes(double) == collections.Counter()
    assert tree_hashes(dest) == expected


@pytest.mark.slow
def test_a_worker_killed_mid_run_the_other_goes_on_and_a_rerun_completes(many_files, luigid, tmp_path):
    root, double = many_files
    dest = tmp_path / "mirror"
    double.throttle(200_000)
    victim = popen_cli(*mirror_args(double, dest, "--scheduler-url", luigid))
    wait_for_task(luigid, "DownloadFile", "RUNNING")
    survivor = popen_cli(*mirror_args(double, dest, "--scheduler-url", luigid))
    time.sleep(1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    survivor.communicate(timeout=600)
    assert survivor.returncode in (0, 1)  # 1: the killed worker's batch failed; the rerun fetches it
    double.throttle(None)
    rerun = run_cli(*mirror_args(double, dest, "--scheduler-url", luigid))
    assert rerun.returncode == 0, rerun.stderr
    assert tree_hashes(dest) == served_tree(root, VERSION)


def test_an_unreachable_scheduler_is_one_line_and_exit_1(scm_double, tmp_path):
    port = free_port()  # nothing listens there
    result = run_cli(*mirror_args(scm_double, tmp_path / "mirror", "--scheduler-url", f"http://127.0.0.1:{port}"),
                     timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0].startswith(f"error: cannot reach the Luigi scheduler at http://127.0.0.1:{port}")
    assert len(result.stderr.splitlines()) == 1
    assert scm_double.records() == []  # found before any work


def test_default_scheduler_url_setting_is_used_and_local_scheduler_overrides_it(scm_double, repo_tree, tmp_path):
    port = free_port()
    settings = tmp_path / "site.cfg"
    settings.write_text(f"[core]\ndefault-scheduler-url = http://127.0.0.1:{port}\n")
    refused = run_cli("--config", settings, *mirror_args(scm_double, tmp_path / "mirror"), timeout=60)
    assert refused.returncode == 1 and "cannot reach the Luigi scheduler" in refused.stderr
    local = run_cli("--config", settings, *mirror_args(scm_double, tmp_path / "mirror", "--local-scheduler"))
    assert local.returncode == 0, local.stderr
    assert tree_hashes(tmp_path / "mirror") == served_tree(repo_tree, VERSION)


@pytest.mark.slow
def test_the_mirror_lock_keeps_local_runs_and_other_runs_out_of_a_shared_one(many_files, luigid, tmp_path):
    root, double = many_files
    dest = tmp_path / "mirror"
    double.throttle(100_000)
    shared = popen_cli(*mirror_args(double, dest, "--scheduler-url", luigid))
    wait_for_task(luigid, "DownloadFile", "RUNNING")
    local = run_cli(*mirror_args(double, dest))
    other_run = run_cli(*mirror_args(double, dest, "--scheduler-url", luigid, "--run-id", "another-run"))
    double.throttle(None)
    shared.communicate(timeout=600)
    assert local.returncode == 75 and "another amsrepomirror run is using the mirror" in local.stderr
    assert other_run.returncode == 75 and "another amsrepomirror run is using the mirror" in other_run.stderr
    assert shared.returncode == 0
    assert tree_hashes(dest) == served_tree(root, VERSION)


@pytest.mark.slow
def test_failures_of_other_runs_on_the_scheduler_are_not_reported(scm_double, repo_tree, luigid, tmp_path):
    scm_double.fail_status("common/data/forcefields-*", status=404, times=None, method="GET")
    broken = run_cli(*mirror_args(scm_double, tmp_path / "other", "--scheduler-url", luigid))
    assert broken.returncode == 1 and "forcefields" in broken.stderr
    scm_double.clear_faults()
    fine = run_cli(*mirror_args(scm_double, tmp_path / "mirror", "--scheduler-url", luigid))
    assert fine.returncode == 0, fine.stderr
    assert tree_hashes(tmp_path / "mirror") == served_tree(repo_tree, VERSION)


def test_plain_luigi_runs_against_the_scheduler(scm_double, repo_tree, luigid, tmp_path):
    dest = tmp_path / "mirror"
    result = subprocess.run([sys.executable, "-m", "luigi", "--module", "amsrepomirror.tasks", "VerifyTree",
                             "--version", VERSION, "--mirror", str(dest), "--listing-url", scm_double.listing_url(VERSION),
                             "--scheduler-url", luigid], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                            timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    trees = [t for t in scheduler_tasks(luigid, "VerifyTree").values() if t["name"] == "VerifyTree"]
    assert [t["status"] for t in trees] == ["DONE"]
    # luigid's status line of the finished task says so, not the step it was at ("verifying ...").
    assert trees[0]["status_message"] == f"done: {len(served_tree(repo_tree, VERSION))} file(s) verified, manifest written"


@pytest.mark.slow
def test_five_thousand_listed_files_through_the_scheduler_first_run_and_no_op_rerun(luigid, tmp_path):
    """Many small batches through luigid: complete on the first run, nothing fetched on the rerun (20,000 files
    and the timing: bench/scale.py)."""
    root = tmp_path / "scm"
    make_repository(root, VERSION, tiny=5_000)
    dest = tmp_path / "mirror"
    with ScmDouble(root) as double:
        first = run_cli(*mirror_args(double, dest, "--scheduler-url", luigid), timeout=1200)
        assert first.returncode == 0, first.stderr
        expected = served_tree(root, VERSION)
        assert len(expected) > 5_000 and tree_hashes(dest) == expected
        assert served_more_than_once(double, root) == {}
        double.clear_log()
        again = run_cli(*mirror_args(double, dest, "--scheduler-url", luigid), timeout=1200)
        assert again.returncode == 0, again.stderr
        assert served_bytes(double) == collections.Counter()
        assert tree_hashes(dest) == expected


def short_listing(root: Path, double, lines: int = 7) -> tuple:
    """A second listing of the double's version (its .yml, the largest file and others, ``lines`` in
    all; nothing unlicensed): its URL and the tree a mirror of it holds."""
    full = listing_path(root, VERSION).read_text().splitlines()
    served = served_tree(root, VERSION)
    packages = root / "Downloads" / "packages"
    relpath = {line: unquote(line.split(PACKAGES_PREFIX, 1)[1]) for line in full}
    usable = [line for line in full if relpath[line] in served]
    largest = max(usable, key=lambda line: (packages / relpath[line]).stat().st_size)
    chosen = sorted({usable[0], largest, *usable[1:lines - 1]})
    assert len(chosen) == lines and any(relpath[line] == f"{VERSION}.yml" for line in chosen)
    (packages / "listings" / "short.txt").write_text("".join(line + "\n" for line in chosen))
    return f"{double.base_url}{PACKAGES_PREFIX}listings/short.txt", {relpath[line]: served[relpath[line]] for line in chosen}


@pytest.mark.slow
def test_a_run_id_is_joined_only_by_the_same_work(scm_double, repo_tree, luigid, tmp_path):
    dest = tmp_path / "mirror"
    short_url, short_tree = short_listing(repo_tree, scm_double)

    def mirror(listing_url, *extra):
        return ("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", listing_url, "--scheduler-url",
                luigid, "--run-id", "2026-11-27", *extra)

    scm_double.throttle(300_000)  # the first run is still downloading when the second process comes
    first = popen_cli(*mirror(short_url))
    wait_for_task(luigid, "DownloadFile", "RUNNING")
    other = run_cli(*mirror(scm_double.listing_url(VERSION)))
    scm_double.throttle(None)
    out = first.communicate(timeout=300)
    assert first.returncode == 0, out[1]
    assert other.returncode == 2, other.stderr
    assert other.stderr.splitlines() == [other.stderr.splitlines()[0]]
    line = other.stderr.splitlines()[0]
    assert line.startswith("error: run 2026-11-27 is a run of other work (listing: ") and "listing sha256: " in line
    assert "platforms" not in line and "version" not in line  # only what differs is named
    assert tree_hashes(dest) == short_tree  # the other listing's files were not fetched under this run

    # The run over: its snapshot still names its work. Another listing, other platforms, or the same listing
    # with other content are refused; the same work joins (nothing to fetch).
    again = run_cli(*mirror(scm_double.listing_url(VERSION)))
    assert again.returncode == 2 and "listing sha256: " in again.stderr, again.stderr
    platforms = run_cli(*mirror(short_url, "--platform", "linux"))
    assert platforms.returncode == 2 and "platforms: all in the run, linux here" in platforms.stderr, platforms.stderr
    same = run_cli(*mirror(short_url))
    assert same.returncode == 0, same.stderr
    (repo_tree / "Downloads" / "packages" / "listings" / "short.txt").write_text(
        "".join(line + "\n" for line in listing_path(repo_tree, VERSION).read_text().splitlines()[:3]))
    changed = run_cli(*mirror(short_url))
    assert changed.returncode == 2, changed.stderr
    assert "listing sha256: " in changed.stderr and "listing: " not in changed.stderr.replace("listing sha256: ", "")
    assert tree_hashes(dest) == short_tree


def test_processes_of_other_work_started_at_once_under_one_run_id_one_is_refused(scm_double, repo_tree, luigid,
                                                                                 tmp_path):
    dest = tmp_path / "mirror"
    short_url, short_tree = short_listing(repo_tree, scm_double)
    listings = {"short": short_url, "full": scm_double.listing_url(VERSION)}
    started = {name: popen_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", url,
                               "--scheduler-url", luigid, "--run-id", "at-once") for name, url in listings.items()}
    results = {name: (proc.communicate(timeout=300), proc.returncode) for name, proc in started.items()}
    codes = sorted(code for _, code in results.values())
    assert codes == [0, 2], {name: (code, out[1]) for name, (out, code) in results.items()}
    winner = next(name for name, (_, code) in results.items() if code == 0)
    loser_err = next(out[1] for name, (out, code) in results.items() if code == 2)
    assert "error: run at-once is a run of other work" in loser_err
    assert tree_hashes(dest) == (short_tree if winner == "short" else served_tree(repo_tree, VERSION))


@pytest.mark.slow
def test_processes_of_the_same_work_started_at_once_take_the_listing_once(many_files, luigid, tmp_path):
    """The scheduler hands the run's FetchListing to one of them: only its probes ask (with [http] first_bytes,
    bring) files; no byte is served twice."""
    root, double = many_files
    dest = tmp_path / "mirror"
    started = [popen_cli(*mirror_args(double, dest, "--scheduler-url", luigid, "--run-id", "at-once")) for _ in range(2)]
    results = [(proc.communicate(timeout=300), proc.returncode) for proc in started]
    assert [code for _, code in results] == [0, 0], [out[1] for out, _ in results]
    assert tree_hashes(dest) == served_tree(root, VERSION)
    assert served_more_than_once(double, root) == {}
    probes = [r for r in double.log if r.relpath and not r.relpath.startswith("listings/") and
              (r.method == "HEAD" or r.range == probe_range())]
    asked = collections.Counter(r.relpath for r in probes)
    # one question per file, by one process (an empty file's GET of the first bytes, 416, is asked again as HEAD)
    assert [p for p, n in asked.items() if n > 1] in ([], ["common/data/empty.dat"]), asked

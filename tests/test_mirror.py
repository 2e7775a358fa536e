"""End to end: the real `amsrepomirror mirror` command against the SCM double and a real nginx."""

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import clihelp
import pytest
from clihelp import (
    cli_env,
    popen_cli,
    probe_bytes,
    probe_range,
    run_cli,
    served_tree,
    spare_probes,
    transfer_gets,
    tree_hashes,
)

from amsrepomirror.errors import MirrorError
from amsrepomirror.online.workspace import Workspace
from amsrepomirror.testing.repository import change_file, listing_path, remove_file, repository_files, write_listing
from amsrepomirror.testing.scmdouble import ScmDouble

VERSION = "AMS2026.1"
pytestmark = pytest.mark.usefixtures("probe_mode")  # each test with both probes (conftest.py)
#: Run with both probes in the fast tier (a 401 to the probe, an error status to a file, Ctrl-C); the others'
#: second probe is in the slow tier.
BOTH_PROBES_FAST = {
    "test_401_skipped_by_default_fatal_when_strict",
    "test_index_yml_refused_by_the_server_fails_verification",
    "test_ctrl_c_stops_promptly_and_the_rerun_resumes",
}


def mirror(double_or_url, dest, *extra, env=None):
    url = double_or_url if isinstance(double_or_url, str) else double_or_url.listing_url(VERSION)
    return run_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", url, *extra, env=env)


def body_gets(double, glob="*"):
    """GET requests that carried file bodies (the listing itself left out)."""
    return [r for r in double.records("GET", glob) if r.body_bytes > 0 and not (r.relpath or "").startswith("listings/")]


@pytest.mark.slow
def test_first_run_mirrors_exactly_what_is_served_and_rerun_transfers_no_bodies(scm_double, repo_tree, tmp_path):
    dest = tmp_path / "mirror"
    report = tmp_path / "report.json"
    first = mirror(scm_double, dest, "--report", report)
    assert first.returncode == 0, first.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    summary = json.loads(report.read_text())
    expected = served_tree(repo_tree, VERSION)
    assert summary["fetched"] == len(expected) and summary["failed"] == []
    assert sorted(summary["skipped_unauthorized"]) == ["licensed/adfcrs-db-2026.101.tar.zst",
                                                       "licensed/qe-pseudopotentials-2026.101.tar.zst"]
    assert summary["bytes_fetched"] == sum((dest / p).stat().st_size for p in expected)
    assert "skipped (HTTP 401" in first.stderr and "fetched" in first.stderr

    manifest = json.loads((dest / ".amsrepomirror" / f"{VERSION}.manifest.json").read_text())
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == expected
    assert all(f["etag"] and f["last_modified"] and f["url"].startswith("http") for f in manifest["files"])

    scm_double.clear_log()
    again = mirror(scm_double, dest, "--report", report)
    assert again.returncode == 0, again.stderr
    assert body_gets(scm_double) == []
    summary = json.loads(report.read_text())
    assert (summary["fetched"], summary["up_to_date"], summary["bytes_transferred"]) == (0, len(expected), 0)
    assert tree_hashes(dest) == expected


@pytest.mark.slow
def test_changed_and_removed_files_are_detected_on_rerun(scm_double, repo_tree, tmp_path):
    dest = tmp_path / "mirror"
    assert mirror(scm_double, dest).returncode == 0
    # Same size, new content: only the validators (ETag/Last-Modified) tell.
    same_size = "linux/x86_64/adf-2026.101.tar.zst"
    size = (dest / same_size).stat().st_size
    change_file(repo_tree, same_size, seed="v2", size=size)
    change_file(repo_tree, "common/data/forcefields-2026.101.tar.zst", seed="v2", size=1234)
    scm_double.clear_log()
    result = mirror(scm_double, dest)
    assert result.returncode == 0, result.stderr
    assert sorted(r.relpath for r in body_gets(scm_double)) == sorted([same_size, "common/data/forcefields-2026.101.tar.zst"])
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)

    # A file dropped from the server and the listing: kept without --delete-unlisted, removed with it.
    gone = "macos/arm64/band-2026.101.tar.zst"
    remove_file(repo_tree, gone)
    write_listing(repo_tree, VERSION, scm_double.base_url, [p for p in repository_files(repo_tree) if p != gone])
    assert mirror(scm_double, dest).returncode == 0
    assert (dest / gone).exists()
    dry = mirror(scm_double, dest, "--delete-unlisted", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.splitlines() == [gone] and (dest / gone).exists()
    real = mirror(scm_double, dest, "--delete-unlisted")
    assert real.returncode == 0, real.stderr
    assert not (dest / gone).exists()
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)


@pytest.mark.slow
def test_delete_unlisted_refuses_to_wipe_most_of_the_mirror(scm_double, repo_tree, tmp_path):
    dest = tmp_path / "mirror"
    assert mirror(scm_double, dest).returncode == 0
    before = tree_hashes(dest)
    write_listing(repo_tree, VERSION, scm_double.base_url, [f"{VERSION}.yml", "common/data/empty.dat"])  # truncated
    refused = mirror(scm_double, dest, "--delete-unlisted")
    assert refused.returncode == 2
    assert "more than a quarter" in refused.stderr
    assert tree_hashes(dest) == before
    forced = mirror(scm_double, dest, "--delete-unlisted", "--force")
    assert forced.returncode == 0, forced.stderr
    assert sorted(tree_hashes(dest)) == [f"{VERSION}.yml", "common/data/empty.dat"]


@pytest.mark.slow
def test_faults_drops_503_429_and_throttling_end_byte_identical(scm_double, repo_tree, tmp_path):
    big = max(repository_files(repo_tree), key=lambda p: (repo_tree / "Downloads/packages" / p).stat().st_size)
    spare_probes(scm_double)  # the faults meet the transfers, not a first run's probes of the first bytes
    scm_double.cut_after(big, nbytes=700_000, times=2, method="GET")
    scm_double.cut_after("linux/*", nbytes=10, times=3, method="GET")
    scm_double.fail_status("common/*", status=503, retry_after=1, times=2)
    scm_double.fail_status("windows/*", status=429, retry_after=1, times=2)
    scm_double.throttle(4_000_000)
    result = mirror(scm_double, tmp_path / "mirror", env=cli_env())
    assert result.returncode == 0, result.stderr
    assert tree_hashes(tmp_path / "mirror") == served_tree(repo_tree, VERSION)
    resumed = [r for r in transfer_gets(scm_double.records("GET", big)) if r.range]
    assert resumed and resumed[0].range.startswith("bytes=") and resumed[0].if_range
    assert resumed[-1].status == 206
    # 503/429 were answered, then retried after Retry-After.
    assert scm_double.records(glob="common/*", status=503) and scm_double.records(glob="windows/*", status=429)


@pytest.mark.slow
def test_kill_9_mid_file_then_rerun_resumes_at_the_byte(scm_double, repo_tree, tmp_path):
    dest = tmp_path / "mirror"
    packages = repo_tree / "Downloads/packages"
    big = max(repository_files(repo_tree), key=lambda p: (packages / p).stat().st_size)
    scm_double.throttle(300_000)
    proc = popen_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", scm_double.listing_url(VERSION))
    part = Workspace(dest).part_path(big)
    deadline = time.monotonic() + 180  # a guard against a hang only
    while time.monotonic() < deadline and (not part.exists() or part.stat().st_size < 400_000):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = part.stat().st_size
    assert 0 < kept < (packages / big).stat().st_size
    assert not (dest / big).exists()  # a partial file is never taken as done
    scm_double.throttle(None)
    scm_double.clear_log()
    result = mirror(scm_double, dest)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    gets = scm_double.records("GET", big)
    assert [r.range for r in gets] == [f"bytes={kept}-"] and gets[0].status == 206
    assert gets[0].body_bytes == (packages / big).stat().st_size - kept


@pytest.mark.slow
def test_kill_9_while_small_files_are_recorded_in_groups_leaves_no_wrong_record(tmp_path):
    """Small files are made durable and recorded a group at a time: after a kill -9 mid-run every
    record on disk describes exactly the file in place and the server's bytes; the rerun fetches
    just the files without one and ends with the exact tree."""
    from amsrepomirror.testing.repository import make_repository
    root = tmp_path / "scm"
    make_repository(root, VERSION, tiny=2000)
    dest = tmp_path / "m"
    ws = Workspace(dest)
    served = served_tree(root, VERSION)
    with ScmDouble(root) as double:
        proc = popen_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", double.listing_url(VERSION))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(ws.state.glob("records/*/*.json"))) < 200:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        recorded = {rel for rel in served if ws.record_path(rel).exists()}
        assert 200 <= len(recorded) < len(served)  # killed mid-run, some groups in
        for rel in recorded:
            record = json.loads(ws.record_path(rel).read_text())
            st = (dest / rel).stat()
            assert (record["size"], record["mtime_ns"]) == (st.st_size, st.st_mtime_ns), rel
            assert record["sha256"] == served[rel] == tree_hashes(dest).get(rel), rel
        double.clear_log()
        result = mirror(double, dest)
        assert result.returncode == 0, result.stderr
        assert tree_hashes(dest) == served
        fetched = {r.relpath for r in double.records("GET") if not (r.relpath or "").startswith("listings/")}
        assert fetched == set(served) - recorded  # an empty file has no body: counted by its GET


@pytest.mark.slow
def test_file_that_keeps_failing_is_reported_others_complete_exit_1(scm_double, repo_tree, tmp_path):
    dest = tmp_path / "mirror"
    scm_double.fail_status("common/data/basis-sets-2026.101.tar.zst", status=500, times=None)
    report = tmp_path / "r.json"
    result = mirror(scm_double, dest, "--report", report)
    assert result.returncode == 1
    summary = json.loads(report.read_text())
    assert summary["failed"] == ["common/data/basis-sets-2026.101.tar.zst"]
    expected = served_tree(repo_tree, VERSION)
    got = tree_hashes(dest)
    assert got == {p: h for p, h in expected.items() if p != "common/data/basis-sets-2026.101.tar.zst"}
    assert "error:" in result.stderr
    scm_double.clear_faults()
    assert mirror(scm_double, dest).returncode == 0
    assert tree_hashes(dest) == expected


def test_401_skipped_by_default_fatal_when_strict(scm_double, repo_tree, tmp_path):
    strict = mirror(scm_double, tmp_path / "strict", "--strict-authentication")
    assert strict.returncode == 3
    assert "licensed/" in strict.stderr and strict.stderr.count("error:") == 1
    assert tree_hashes(tmp_path / "strict") == {}


@pytest.mark.parametrize("user, password", [("demo", "wrong-password"), ("nobody", "x"), (None, None)])
def test_wrong_or_missing_account_is_fatal_with_one_line(scm_double, tmp_path, user, password):
    result = mirror(scm_double, tmp_path / "m", env=cli_env(user, password, home=str(tmp_path)))
    assert result.returncode == 3
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "listing" in errors[0]
    assert "Traceback" not in result.stderr
    assert tree_hashes(tmp_path / "m") == {}


def test_netrc_is_used_when_no_environment(scm_double, repo_tree, tmp_path):
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login demo password demo-pass\n")
    netrc.chmod(0o600)
    result = mirror(scm_double, tmp_path / "m", env=cli_env(None, None, home=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert tree_hashes(tmp_path / "m") == served_tree(repo_tree, VERSION)


@pytest.mark.slow
def test_password_never_written_anywhere(repo_tree, tmp_path):
    secret = "Sup3r-S3cret-pw"
    with ScmDouble(repo_tree, users={"alice": secret}) as double:
        double.fail_status("common/data/basis-sets-2026.101.tar.zst", status=500, times=None)
        report = tmp_path / "r.json"
        result = mirror(double, tmp_path / "m", "--report", report, "--verbose", env=cli_env("alice", secret))
    assert result.returncode == 1
    assert secret not in result.stdout + result.stderr
    for path in list((tmp_path / "m").rglob("*")) + [report]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("listing, code, message", [
    ("https://elsewhere.example/Downloads/packages/x.zip\n", 2, "outside the repository root"),
    ("{root}linux/../../../etc/passwd\n", 2, "unsafe path"),
    ("ftp://127.0.0.1/Downloads/packages/x\n", 2, "non-HTTP"),
])
def test_bad_listing_refused_before_anything_is_fetched(scm_double, repo_tree, tmp_path, listing, code, message):
    dest = tmp_path / "m"
    good = listing_path(repo_tree, VERSION).read_text()
    root = scm_double.base_url + "/Downloads/packages/"
    listing_path(repo_tree, VERSION).write_text(good + listing.format(root=root))
    scm_double.clear_log()
    result = mirror(scm_double, dest)
    assert result.returncode == code
    assert message in result.stderr and "Traceback" not in result.stderr
    assert [r for r in scm_double.log if r.relpath != f"listings/{VERSION}.txt"] == []
    assert tree_hashes(dest) == {}


def test_crlf_comments_blank_lines_and_duplicates_are_tolerated(scm_double, repo_tree, tmp_path):
    path = listing_path(repo_tree, VERSION)
    lines = path.read_text().splitlines()
    path.write_bytes(("# AMS listing\r\n\r\n" + "\r\n".join(lines + lines[:3]) + "\r\n").encode())
    scm_double.clear_log()
    result = mirror(scm_double, tmp_path / "m")
    assert result.returncode == 0, result.stderr
    assert tree_hashes(tmp_path / "m") == served_tree(repo_tree, VERSION)
    gets = [r.relpath for r in transfer_gets(body_gets(scm_double))]
    assert len(gets) == len(set(gets))  # duplicates fetched once
    probes = [r.relpath for r in body_gets(scm_double) if r.range == probe_range()]  # with first_bytes on
    assert len(probes) == len(set(probes))  # and asked about once


@pytest.mark.slow
def test_platform_selection_keeps_platform_and_independent_files(scm_double, repo_tree, tmp_path):
    result = mirror(scm_double, tmp_path / "m", "--platform", "linux")
    assert result.returncode == 0, result.stderr
    got = set(tree_hashes(tmp_path / "m"))
    assert any(p.startswith("linux/") for p in got) and any(p.startswith("common/") for p in got)
    assert not any(p.startswith(("windows/", "macos/")) for p in got)
    assert not any(p.endswith(("win_amd64.whl", "macosx_11_0_arm64.whl")) for p in got)
    assert f"{VERSION}.yml" in got
    bad = mirror(scm_double, tmp_path / "m2", "--platform", "beos")
    assert bad.returncode == 2 and "unknown platform" in bad.stderr


@pytest.mark.slow
def test_scm_scripts_form_mirrors_the_same_tree_and_local_platform_only_is_this_machines(scm_double, repo_tree,
                                                                                          tmp_path):
    # download_repository.py LISTING_URL DOWNLOAD_FOLDER: the version comes from the listing's name.
    result = run_cli("mirror", scm_double.listing_url(VERSION), tmp_path / "m")
    assert result.returncode == 0, result.stderr
    assert tree_hashes(tmp_path / "m") == served_tree(repo_tree, VERSION)
    local = run_cli("mirror", scm_double.listing_url(VERSION), tmp_path / "local", "--local-platform-only")
    assert local.returncode == 0, local.stderr
    assert sys.platform == "linux"  # the machines this suite runs on
    linux = mirror(scm_double, tmp_path / "linux", "--platform", "linux")
    assert linux.returncode == 0, linux.stderr
    assert tree_hashes(tmp_path / "local") == tree_hashes(tmp_path / "linux") != tree_hashes(tmp_path / "m")


def test_scm_scripts_user_and_password_are_refused_without_repeating_them(scm_double, tmp_path):
    scm_double.clear_log()
    result = run_cli("mirror", scm_double.listing_url(VERSION), tmp_path / "m", "scmuser", "s3cret-pass-42",
                     env=cli_env(user=None, password=None))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: mirror takes LISTING_URL FOLDER; the SCM account is never given on the command line, where the process "
        "list shows it: set SCM_USER and SCM_PASSWORD in the environment, put it in ~/.netrc (machine "
        "downloads.scm.com login USER password PASS), or answer the prompt"]
    assert "s3cret" not in result.stdout + result.stderr and "scmuser" not in result.stdout + result.stderr
    assert not (tmp_path / "m").exists() and scm_double.records() == []  # refused before anything was asked
    url, m = scm_double.listing_url(VERSION), tmp_path / "m"
    for words in ([url, m, "--local-platform-only", "scmuser", "s3cret-pass-42"],  # an option between them
                  [url, m, "scmuser", "--local-platform-only", "s3cret-pass-42"],
                  ["--mirror", m, "--version", VERSION, "--password=s3cret-pass-42"],
                  ["--version", VERSION, "--mirror", m, "--jobs", "s3cret-pass-42"]):
        result = run_cli("mirror", *words, env=cli_env(user=None, password=None))
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, (words, result.stderr)
        assert "s3cret" not in result.stdout + result.stderr and "scmuser" not in result.stderr, (words, result.stderr)
    result = run_cli("--password", "s3cret-pass-42", "mirror", env=cli_env(user=None, password=None))
    assert result.returncode == 2 and "s3cret" not in result.stderr, result.stderr


@pytest.mark.slow
def test_adopt_takes_over_a_wget_folder_whose_size_and_date_are_the_servers_and_fetches_the_rest(scm_double, repo_tree,
                                                                                                  tmp_path):
    served = served_tree(repo_tree, VERSION)
    packages = repo_tree / "Downloads" / "packages"
    for folder in ("wget", "plain"):  # as wget -x leaves them: each file with the server's Last-Modified as its mtime
        for rel in served:
            (tmp_path / folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(packages / rel, tmp_path / folder / rel)
    truncated, redated = "common/docs/manual-2026.101.tar.zst", "windows/x86_64/adf-2026.101.zip"
    with open(tmp_path / "wget" / truncated, "r+b") as f:  # a download cut short
        f.truncate(100)
    os.utime(tmp_path / "wget" / redated, (1_600_000_000, 1_600_000_000))  # the right size, another date
    scm_double.clear_log()
    result = mirror(scm_double, tmp_path / "wget", "--adopt", "--report", tmp_path / "report.json")
    assert result.returncode == 0, result.stderr
    assert sorted(r.relpath for r in body_gets(scm_double)) == sorted([truncated, redated])  # nothing else again
    assert tree_hashes(tmp_path / "wget") == served
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["fetched"], report["adopted"]) == (2, len(served) - 2), report
    assert f"{len(served) - 2} of them adopted: size and date the server's" in result.stderr
    scm_double.clear_log()  # without --adopt nothing of a folder this tool has no record of is taken as it is
    assert mirror(scm_double, tmp_path / "plain").returncode == 0
    # (with first_bytes, a larger file's probe carries bytes too, and a refused one's an error page)
    fetched = {r.relpath for r in body_gets(scm_double) if r.status in (200, 206)}
    assert fetched == {p for p in served if (packages / p).stat().st_size}


def test_listing_without_the_version_index_is_refused_before_downloading(scm_double, repo_tree, tmp_path):
    write_listing(repo_tree, VERSION, scm_double.base_url,
                  [p for p in repository_files(repo_tree) if p != f"{VERSION}.yml"])
    scm_double.clear_log()
    result = mirror(scm_double, tmp_path / "m")
    assert result.returncode == 2
    assert f"{VERSION}.yml" in result.stderr
    assert body_gets(scm_double) == [] and scm_double.records("HEAD") == []


def test_index_yml_refused_by_the_server_fails_verification(repo_tree, tmp_path):
    with ScmDouble(repo_tree, unauthorized_prefixes=("licensed/", f"{VERSION}.yml")) as double:
        result = mirror(double, tmp_path / "m")
    assert result.returncode == 4
    assert f"{VERSION}.yml" in result.stderr and "401" in result.stderr
    assert not (tmp_path / "m" / ".amsrepomirror" / f"{VERSION}.manifest.json").exists()


def test_credentials_in_the_listing_url_are_refused(scm_double, tmp_path):
    url = scm_double.listing_url(VERSION).replace("http://", "http://demo:demo-pass@")
    result = mirror(url, tmp_path / "m")
    assert result.returncode == 2 and "SCM_PASSWORD" in result.stderr
    assert "demo-pass" not in result.stderr
    assert not (tmp_path / "m").exists()


def test_no_ssl_warns_every_run(scm_double, tmp_path):
    for _ in range(2):
        result = mirror(scm_double, tmp_path / "m", "--no-ssl")
        assert result.returncode == 0
        assert "WARNING: --no-ssl" in result.stderr


def test_not_enough_disk_space_fails_early(scm_double, repo_tree, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=1m tmpfs {small} 2>/dev/null") != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        scm_double.clear_log()
        result = mirror(scm_double, small / "m")
        assert result.returncode == 5, result.stderr
        assert "not enough disk space" in result.stderr
        assert transfer_gets(body_gets(scm_double)) == []  # a first run's probes of the first bytes may come first
    finally:
        os.system(f"umount {small}")


def test_plain_luigi_invocation_runs_the_same_graph(scm_double, repo_tree, tmp_path):
    import subprocess
    import sys
    dest = tmp_path / "m"
    result = subprocess.run(
        [sys.executable, "-m", "luigi", "--module", "amsrepomirror.tasks", "VerifyTree", "--version", VERSION,
         "--mirror", str(dest), "--listing-url", scm_double.listing_url(VERSION), "--local-scheduler"],
        cwd=Path(__file__).resolve().parent.parent, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)


@pytest.mark.slow
def test_mirror_from_real_nginx(nginx_server, repo_tree, tmp_path):
    dest = tmp_path / "m"
    result = mirror(nginx_server.listing_url(VERSION), dest)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    nginx_server.clear_access_log()
    again = mirror(nginx_server.listing_url(VERSION), dest)
    assert again.returncode == 0
    bodies = [r for r in nginx_server.access_log() if r.method == "GET" and r.body_bytes > 0
              and not (r.relpath or "").startswith("listings/")]
    assert bodies == []
    strict = mirror(nginx_server.listing_url(VERSION), tmp_path / "s", "--strict-authentication")
    assert strict.returncode == 3


@pytest.mark.slow
@pytest.mark.parametrize("max_batch_size, batches", [
    (500, 3),  # 1,225 files in batches of at most 500
    (20, 16),  # 62 batches of 20 would cost Luigi's scheduler O(tasks) each: at most 16, of ceil(1,225 / 16) = 77
])
def test_many_files_run_in_several_luigi_batches(tmp_path, max_batch_size, batches):
    """1,200 listed files in batches: every file lands once, the rerun fetches nothing."""
    from amsrepomirror.testing.repository import make_repository
    root = tmp_path / "scm"
    make_repository(root, VERSION, tiny=1200)
    cfg = tmp_path / "batch.cfg"
    cfg.write_text(clihelp.TEST_SETTINGS.read_text() + f"\n[DownloadFile]\nmax_batch_size = {max_batch_size}\n")
    env = cli_env(LUIGI_CONFIG_PATH=str(cfg))
    report = tmp_path / "r.json"
    with ScmDouble(root) as double:
        result = mirror(double, tmp_path / "m", "--jobs", "8", "--report", report, env=env)
        assert result.returncode == 0, result.stderr
        runs = list((tmp_path / "m" / ".amsrepomirror" / "runs").glob("*/luigi.log"))
        ran = [line for line in runs[0].read_text().splitlines() if "running   DownloadFile" in line]
        assert len(ran) == batches
        assert tree_hashes(tmp_path / "m") == served_tree(root, VERSION)
        gets = [r.relpath for r in transfer_gets(body_gets(double))]
        assert len(gets) == len(set(gets))
        probes = [r.relpath for r in body_gets(double) if r.range == probe_range()]  # with first_bytes on
        assert len(probes) == len(set(probes))
        double.clear_log()
        assert mirror(double, tmp_path / "m", "--report", report, env=env).returncode == 0
        assert body_gets(double) == []
    assert json.loads(report.read_text())["up_to_date"] == len(served_tree(root, VERSION))


@pytest.mark.slow
def test_verify_trusts_size_and_mtime_unless_deep(scm_double, repo_tree, tmp_path):
    """The hash cache is keyed on size+mtime: a same-size, same-mtime corruption is only found by --deep."""
    dest = tmp_path / "m"
    assert mirror(scm_double, dest).returncode == 0
    victim = dest / "common/data/basis-sets-2026.101.tar.zst"
    st = victim.stat()
    with open(victim, "r+b") as f:
        f.seek(10)
        f.write(b"\x00\xff\x00")
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert mirror(scm_double, dest).returncode == 0  # trusted: not re-read
    deep = mirror(scm_double, dest, "--deep")
    assert deep.returncode == 4 and "basis-sets" in deep.stderr
    scm_double.clear_log()
    assert mirror(scm_double, dest).returncode == 0
    assert [r.relpath for r in body_gets(scm_double)] == ["common/data/basis-sets-2026.101.tar.zst"]
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)


def _wait_for_part(dest, min_bytes=1, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parts = [p for p in (dest / ".amsrepomirror" / "parts").rglob("*.part") if p.stat().st_size >= min_bytes] \
            if (dest / ".amsrepomirror" / "parts").exists() else []
        if parts:
            return parts[0]
        time.sleep(0.02)
    raise AssertionError("no download started")


@pytest.mark.slow
def test_bundle_without_listing_url_uses_the_listing_the_mirror_was_made_from(scm_double, repo_tree, tmp_path):
    dest, url = tmp_path / "m", scm_double.listing_url(VERSION)
    assert mirror(scm_double, dest).returncode == 0
    scm_double.clear_log()
    made = run_cli("bundle", "--version", VERSION, "--mirror", dest, "--out", tmp_path / "b1")
    assert made.returncode == 0, made.stderr
    assert f"bundle: {VERSION}: the listing this mirror was made from, {url} (--listing-url to use another)" \
        in made.stderr.splitlines()
    assert [r.relpath for r in scm_double.records("GET")] == [f"listings/{VERSION}.txt"]  # asked there, nothing changed
    scm_double.stop()  # the server cannot be reached: the line says so and names --offline
    failed = run_cli("bundle", "--version", VERSION, "--mirror", dest, "--out", tmp_path / "b2")
    assert failed.returncode == 1, failed.stderr
    lines = failed.stderr.splitlines()
    assert f"error: cannot fetch the listing {url}: connection refused" in lines, failed.stderr
    assert lines[-1].startswith("bundle: not written: the mirror could not be brought up to date (above); it still "
                                "holds what was verified ") and lines[-1].endswith(": to bundle that without contacting "
                                                                                   "the server, add --offline"), lines[-1]
    assert not (tmp_path / "b2").exists()
    offline = run_cli("bundle", "--version", VERSION, "--mirror", dest, "--out", tmp_path / "b2", "--offline")
    assert offline.returncode == 0, offline.stderr


def test_ctrl_c_stops_promptly_and_the_rerun_resumes(scm_double, repo_tree, tmp_path):
    dest = tmp_path / "m"
    scm_double.throttle(200_000)
    proc = popen_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", scm_double.listing_url(VERSION))
    _wait_for_part(dest, probe_bytes() + 50_000)  # a transfer under way (a probe's first bytes start a part at once)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)  # a guard against a hang only; promptness is asserted below
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert tree_hashes(dest) != served_tree(repo_tree, VERSION)  # it stopped before every queued file was in
    scm_double.throttle(None)
    scm_double.clear_log()
    assert mirror(scm_double, dest).returncode == 0
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    assert any(r.range for r in scm_double.records("GET"))  # something resumed at the byte


def test_disk_filling_up_during_download_is_exit_5(scm_double, repo_tree, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=8m tmpfs {small} 2>/dev/null") != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        scm_double.throttle(500_000)
        proc = popen_cli("mirror", "--version", VERSION, "--mirror", small / "m",
                         "--listing-url", scm_double.listing_url(VERSION))
        _wait_for_part(small / "m")
        os.system(f"dd if=/dev/zero of={small}/filler bs=64k 2>/dev/null")  # another process fills the disk
        scm_double.throttle(None)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 5, err
        assert "disk full" in err and "Traceback" not in err
        os.unlink(small / "filler")
        assert mirror(scm_double, small / "m").returncode == 0
        assert tree_hashes(small / "m") == served_tree(repo_tree, VERSION)
    finally:
        os.system(f"umount {small}")


def test_two_runs_on_one_mirror_do_not_collide(scm_double, tmp_path):
    dest = tmp_path / "m"
    scm_double.throttle(300_000)
    first = popen_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", scm_double.listing_url(VERSION))
    _wait_for_part(dest)
    second = mirror(scm_double, dest)
    assert second.returncode == 75 and "another amsrepomirror run" in second.stderr
    first.kill()
    first.wait()


def test_download_file_is_named_by_mirror_run_and_path_and_takes_the_rest_from_its_run(scm_double, tmp_path):
    """The scheduler and the worker keep every DownloadFile: its parameters only name it, and the
    run's other parameters come from the snapshot its FetchListing wrote; connections and TLS
    checking stay each process's own."""
    import shutil
    import subprocess
    import sys

    import luigi

    from amsrepomirror.tasks.mirror import DownloadFile, listing_of_run
    assert [name for name, _ in DownloadFile.get_params()] == ["mirror", "run_id", "path"]

    dest = tmp_path / "m"
    assert mirror(scm_double, dest, "--jobs", "3", "--no-ssl").returncode == 0
    (run_id,) = [p.name for p in (dest / ".amsrepomirror" / "runs").iterdir()]
    snapshot_file = dest / ".amsrepomirror" / "runs" / run_id / "listing.json"
    recorded = json.loads(snapshot_file.read_text())["task"]
    assert recorded["version"] == VERSION and "jobs" not in recorded and "no_ssl" not in recorded

    settings = luigi.configuration.get_config()
    shipped = settings.get("FetchListing", "jobs")
    settings.set("FetchListing", "jobs", "7")  # what the CLI sets from this process's --jobs
    try:
        listing = listing_of_run(str(dest.absolute()), run_id)
        assert (listing.version, listing.jobs, listing.no_ssl, listing.run_id) == (VERSION, 7, False, run_id)
        assert listing.complete() and listing.listing_url == scm_double.listing_url(VERSION)
    finally:
        settings.set("FetchListing", "jobs", shipped)
    assert listing_of_run(str(dest.absolute()), run_id).jobs == int(shipped)  # the setting, not a cached listing

    # The mirror moved (or is mounted elsewhere): the run's listing task follows it.
    moved = tmp_path / "moved"
    shutil.copytree(dest, moved)
    assert listing_of_run(str(moved.absolute()), run_id).mirror == str(moved.absolute())

    # A snapshot from a version that did not record the run's parameters: one line saying what to do.
    old = dest / ".amsrepomirror" / "runs" / "old-run" / "listing.json"
    old.parent.mkdir()
    old.write_text(json.dumps({k: v for k, v in json.loads(snapshot_file.read_text()).items() if k != "task"}))
    with pytest.raises(MirrorError, match="taken by an earlier amsrepomirror .* start a new run"):
        listing_of_run(str(dest.absolute()), "old-run")

    def plain(run):
        return subprocess.run(
            [sys.executable, "-m", "luigi", "--module", "amsrepomirror.tasks", "DownloadFile", "--mirror", str(dest),
             "--run-id", run, "--path", "common/data/empty.dat", "--local-scheduler",
             "--retcode-scheduling-error", "7", "--retcode-task-failed", "8"],
            cwd=Path(__file__).resolve().parent.parent, env=cli_env(), capture_output=True, text=True, timeout=120)
    before = tree_hashes(dest)
    (dest / "common" / "data" / "empty.dat").unlink()
    scm_double.clear_log()
    assert plain(run_id).returncode == 0 and tree_hashes(dest) == before  # fetched again through the rebuilt listing
    assert [r.relpath for r in scm_double.records("GET", "*empty.dat")] == ["common/data/empty.dat"]
    unknown = plain("no-such-run")
    assert unknown.returncode == 7 and "run no-such-run of the mirror" in unknown.stderr, unknown.stderr[-2000:]
    assert "has no listing yet" in unknown.stderr
    with pytest.raises(MirrorError, match="run no-such-run of the mirror .* has no listing yet"):
        listing_of_run(str(dest.absolute()), "no-such-run")


def test_a_command_leaves_luigi_settings_as_it_found_them(scm_double, repo_tree, tmp_path, monkeypatch):
    """Luigi's settings are the whole process's: --jobs and --no-ssl of one mirror command must not
    become the next command's (tests and Python callers run several in one process)."""
    import luigi

    from amsrepomirror import cli, config
    for name, value in cli_env().items():
        monkeypatch.setenv(name, value)
    config.install_defaults()  # as after any first command: the shipped defaults are not this command's leftovers
    settings = luigi.configuration.get_config()
    before = {(s, n): settings.get(s, n, fallback=None) for s, n in
              (("FetchListing", "jobs"), ("FetchListing", "no_ssl"), ("DownloadFile", "run_batch_size"))}
    args = ["mirror", "--version", VERSION, "--mirror", str(tmp_path / "m"), "--listing-url", scm_double.listing_url(VERSION)]
    assert cli.main(args + ["--jobs", "9", "--no-ssl"]) == 0
    assert tree_hashes(tmp_path / "m") == served_tree(repo_tree, VERSION)
    assert {key: settings.get(*key, fallback=None) for key in before} == before
    (tmp_path / "ro").write_text("a file where the mirror folder would go")
    assert cli.main(["mirror", "--version", VERSION, "--mirror", str(tmp_path / "ro"), "--listing-url",
                     scm_double.listing_url(VERSION), "--jobs", "9"]) == 2
    assert {key: settings.get(*key, fallback=None) for key in before} == before

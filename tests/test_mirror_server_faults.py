"""A server that lies or misbehaves: every case ends, and nothing SCM never served is taken as done.

Each test drives the real `amsrepomirror mirror` command against the SCM double switched to one
misbehaviour (``ScmDouble.misbehave``, ``cut_after(then=...)``, ``throttle``, ``fail_status``).
"""

import gzip
import os
import random
import signal
import time

import luigi
import pytest
from clihelp import (
    cli_env,
    first_bytes,
    popen_cli,
    probe_bytes,
    probe_method,
    probe_range,
    run_cli,
    served_tree,
    sha256,
    spare_probes,
    transfer_gets,
    tree_hashes,
)

from amsrepomirror.cli.runner import run_graph
from amsrepomirror.online.http import MAX_RETRY_AFTER
from amsrepomirror.testing.repository import change_file, listing_path, write_listing
from amsrepomirror.testing.scmdouble import ScmDouble

VERSION = "AMS2026.1"
pytestmark = pytest.mark.usefixtures("probe_mode")  # each test with both probes (conftest.py)
#: Run with both probes in the fast tier (a cut body and a changed file, a body longer than announced, a 403
#: to the probe, a compressed body); the others' second probe is in the slow tier.
BOTH_PROBES_FAST = {
    "test_resume_against_server_ignoring_if_range_never_splices",
    "test_a_resume_body_longer_than_announced_fails_the_file",
    "test_head_403_with_get_allowed_is_mirrored_and_403_is_named",
    "test_server_compressing_on_the_fly_fails_that_file",
}
BIG = "linux/x86_64/python3.11-2026.101.tar.zst"  # 3 MiB, the largest file of the synthetic tree


def mirror(double, dest, *extra, env=None, timeout=180):
    return run_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", double.listing_url(VERSION),
                   *extra, env=env, timeout=timeout)


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def without(tree, path):
    return {p: h for p, h in tree.items() if p != path}


def config_with(tmp_path, **http):
    """A luigi.cfg for one test: the test [http] settings with these values changed."""
    settings = {"retries": 3, "backoff": 0.1, "timeout": 10, "first_bytes": first_bytes(), **http}  # probe_mode's
    path = tmp_path / "luigi.cfg"
    path.write_text("[http]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    return str(path)


# 1. One expected length per run: HEAD and GET disagreeing is a failed file, never a loop.

@pytest.mark.slow
@pytest.mark.parametrize("head_length", [+100, -100], ids=["head-says-more", "head-says-less"])
def test_head_and_get_lengths_disagree_file_fails_run_ends(scm_double, repo_tree, tmp_path, head_length):
    dest = tmp_path / "m"
    if probe_range() is None:
        scm_double.misbehave(BIG, head_length=head_length)
    else:  # the probe of the first bytes announces the length, in its Content-Range
        scm_double.lie(BIG, "total", times=1, nbytes=head_length)
    result = mirror(scm_double, dest, timeout=120)  # before the fix this run never ended
    assert result.returncode == 1, result.stderr
    assert "error:" in error_line(result.stderr)
    assert "python3.11" in result.stderr and "announces" in result.stderr
    assert tree_hashes(dest) == without(served_tree(repo_tree, VERSION), BIG)  # never a truncated file
    # failed once, not fetched again and again (with first bytes: the probe, the resume from its bytes, refused
    # for another length, and the whole file, refused)
    assert len(scm_double.records("GET", BIG)) <= (2 if probe_range() is None else 3)
    scm_double.clear_faults()
    assert mirror(scm_double, dest).returncode == 0
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)


def test_a_task_whose_output_is_missing_after_run_fails_instead_of_looping(tmp_path):
    runs = []

    class NeverDone(luigi.Task):
        def output(self):
            return luigi.LocalTarget(str(tmp_path / "never-written"))

        def run(self):
            runs.append(1)

    class Wants(luigi.WrapperTask):
        def requires(self):
            return NeverDone()

    failures = run_graph([Wants()])
    assert runs == [1]
    assert [f["code"] for f in failures] == [1]
    assert "complete() is still returning false" in failures[0]["message"]


# 2. A resume is joined only to bytes of the same file.

def test_resume_against_server_ignoring_if_range_never_splices(scm_double, repo_tree, tmp_path):
    dest = tmp_path / "m"
    scm_double.misbehave(BIG, ignore_if_range=True)
    spare_probes(scm_double)  # the faults meet the transfer, not a first run's probe of the first bytes
    # The connection drops after 700 kB and the file changes (same size) before the client resumes.
    scm_double.cut_after(BIG, nbytes=700_000, method="GET", then=lambda: change_file(repo_tree, BIG, seed=99))
    first = mirror(scm_double, dest)
    assert first.returncode == 1, first.stderr
    assert "changed on the server" in error_line(first.stderr)
    resumed = [r for r in transfer_gets(scm_double.records("GET", BIG)) if r.range]
    assert resumed and resumed[0].status == 206  # the server did splice; the client refused it
    assert not (dest / BIG).exists()
    assert not list((dest / ".amsrepomirror").rglob("*.part"))  # the part was dropped
    scm_double.clear_log()
    second = mirror(scm_double, dest)
    assert second.returncode == 0, second.stderr
    assert [r.range for r in scm_double.records("GET", BIG)] == [None]  # fetched whole (a rerun sends HEAD)
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    assert mirror(scm_double, dest, "--deep").returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("how", ["gzip-200", "multipart", "range-end", "range-start", "total", "no-etag"])
def test_a_resume_answer_that_is_not_the_bytes_asked_starts_the_file_again(scm_double, repo_tree, tmp_path, how):
    # The connection drops after 700 kB; the answer to the resume lies (http.accept_response refuses
    # it): the part is dropped and the file fetched again whole, never joined to the lie.
    spare_probes(scm_double)  # the faults meet the transfer, not a first run's probe of the first bytes
    scm_double.cut_after(BIG, nbytes=700_000, method="GET")
    scm_double.lie(BIG, how, times=1)
    dest = tmp_path / "m"
    result = mirror(scm_double, dest)
    assert result.returncode == 0, result.stderr  # before: exit 1 (or other bytes) for gzip, multipart, range-end
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    gets = transfer_gets(scm_double.records("GET", BIG))
    if probe_range() is None:
        assert [(r.range, r.fault) for r in gets] == [(None, "cut"), ("bytes=700000-", f"lie:{how}"), (None, None)]
    else:  # the first resume is the one from the probe's bytes: its lie starts the file again
        assert [(r.range, r.fault) for r in gets] == [(f"bytes={probe_bytes()}-", f"lie:{how}"), (None, "cut"),
                                                      ("bytes=700000-", None)]


def test_a_resume_body_longer_than_announced_fails_the_file(scm_double, repo_tree, tmp_path):
    spare_probes(scm_double)  # the faults meet the transfer, not a first run's probe of the first bytes
    scm_double.cut_after(BIG, nbytes=700_000, method="GET")
    scm_double.lie(BIG, "long", times=1)  # the right headers, no Content-Length, 1000 bytes too many
    dest = tmp_path / "m"
    result = mirror(scm_double, dest)
    assert result.returncode == 1, result.stderr
    assert "went on past" in error_line(result.stderr)
    assert tree_hashes(dest) == without(served_tree(repo_tree, VERSION), BIG)
    assert not list((dest / ".amsrepomirror").rglob("*.part*"))


@pytest.mark.slow
def test_a_206_to_a_whole_file_request_fails_that_file(scm_double, repo_tree, tmp_path):
    spare_probes(scm_double)  # a 206 to the whole-file GET, not to a first run's probe (a range)
    if probe_range() is not None:  # the transfer goes on from the probe's bytes; that resume refused, it is asked whole
        scm_double.lie(BIG, "range-start", times=1)
    scm_double.lie(BIG, "206-whole", times=1)
    dest = tmp_path / "m"
    result = mirror(scm_double, dest)
    assert result.returncode == 1, result.stderr
    assert "HTTP 206" in error_line(result.stderr)
    assert tree_hashes(dest) == without(served_tree(repo_tree, VERSION), BIG)
    assert mirror(scm_double, dest).returncode == 0
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)


def served_path(repo_tree, path):
    return repo_tree / "Downloads" / "packages" / path


@pytest.mark.parametrize("etag", [None, "weak", "none"], ids=["strong-etag", "weak-etag", "no-etag"])
def test_if_range_carries_a_strong_etag_else_the_date(scm_double, repo_tree, tmp_path, etag):
    a_minute_ago = time.time_ns() - 60 * 10**9  # a date that ties: at least a second before the answers' Date
    os.utime(served_path(repo_tree, BIG), ns=(a_minute_ago, a_minute_ago))
    scm_double.misbehave(BIG, etag=etag)
    spare_probes(scm_double)  # the cut meets the transfer, not a first run's probe of the first bytes
    scm_double.cut_after(BIG, nbytes=700_000, method="GET")
    result = mirror(scm_double, tmp_path / "m")
    assert result.returncode == 0, result.stderr
    assert tree_hashes(tmp_path / "m") == served_tree(repo_tree, VERSION)
    resumed = [r for r in transfer_gets(scm_double.records("GET", BIG)) if r.range]
    assert resumed and resumed[0].status == 206
    if etag is None:
        assert resumed[0].if_range.startswith('"')
    else:  # never a weak tag: the Last-Modified date
        assert resumed[0].if_range.endswith("GMT")


def test_a_cut_file_whose_date_is_this_second_starts_again_never_resumed(scm_double, repo_tree, tmp_path):
    """No ETag and a Last-Modified not a second before the answer's Date (RFC 9110, 13.1.5): the file may change
    again within that second and keep its date, so a resume tied to it could join two versions: the cut file is
    asked again from its first byte, without If-Range."""
    in_30_s = time.time_ns() + 30 * 10**9  # not a second before the server's Date (after it: as weak as the same second)
    os.utime(served_path(repo_tree, BIG), ns=(in_30_s, in_30_s))
    scm_double.misbehave(BIG, etag="none")
    spare_probes(scm_double)
    scm_double.cut_after(BIG, nbytes=700_000, method="GET")
    result = mirror(scm_double, tmp_path / "m")
    assert result.returncode == 0, result.stderr
    assert tree_hashes(tmp_path / "m") == served_tree(repo_tree, VERSION)
    gets = transfer_gets(scm_double.records("GET", BIG))
    assert len(gets) == 2 and all(r.range is None and r.if_range is None for r in gets), [(r.range, r.if_range) for r in gets]


@pytest.mark.slow
def test_a_part_fetched_while_its_date_tied_nothing_is_not_resumed_once_it_does(scm_double, repo_tree, tmp_path):
    """No ETag: a first run fetches the file while its Last-Modified is not a second before the answers' Date,
    is cut, and stops. The file is rewritten in that same second (same length, same date). By the next run the
    date does tie; but the part's bytes were never tied to it, so they are not resumed: never one version's start
    joined to another's rest."""
    served = served_path(repo_tree, BIG)
    second = int(time.time()) + 2  # "now" as far as the first run's Date goes
    os.utime(served, ns=(second * 10**9,) * 2)
    scm_double.misbehave(BIG, etag="none")
    spare_probes(scm_double)
    scm_double.cut_after(BIG, nbytes=700_000, method="GET",
                         then=lambda: scm_double.fail_status("*", status=503, times=None))
    dest = tmp_path / "m"
    first = mirror(scm_double, dest)
    assert first.returncode != 0 and BIG not in tree_hashes(dest), first.stderr
    scm_double.clear_faults()
    change_file(repo_tree, BIG, seed=7)
    os.utime(served, ns=(second * 10**9 + 5 * 10**8,) * 2)  # the same Last-Modified
    scm_double.misbehave(BIG, etag="none")
    time.sleep(max(0.0, second + 1.5 - time.time()))  # now a second before any Date: it ties
    again = mirror(scm_double, dest)
    assert again.returncode == 0, again.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)  # the new version, whole


# 3. Only identity bodies are stored, exactly as sent, never decoded.

@pytest.mark.slow
def test_a_gzip_label_on_a_whole_tgz_stores_its_bytes_as_sent(scm_double, repo_tree, tmp_path):
    # Apache labels .tgz files "Content-Encoding: gzip" (AddEncoding) and sends the file's own bytes:
    # stored raw, with HEAD's length, never decoded.
    packages = repo_tree / "Downloads/packages"
    tgz = packages / "common/data/extra-2026.101.tgz"
    tgz.write_bytes(gzip.compress(random.Random(5).randbytes(300_000), mtime=0))
    write_listing(repo_tree, VERSION, scm_double.base_url)
    scm_double.misbehave("common/data/*", content_encoding="gzip")  # bytes unchanged, labelled gzip
    dest = tmp_path / "m"
    result = mirror(scm_double, dest)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    assert (dest / "common/data/extra-2026.101.tgz").read_bytes() == tgz.read_bytes()


def test_server_compressing_on_the_fly_fails_that_file(scm_double, repo_tree, tmp_path):
    victim = "common/docs/manual-2026.101.tar.zst"
    scm_double.misbehave(victim, gzip_on_the_fly=True)
    dest = tmp_path / "m"
    result = mirror(scm_double, dest)
    assert result.returncode == 1, result.stderr
    assert "manual-2026.101" in result.stderr
    assert tree_hashes(dest) == without(served_tree(repo_tree, VERSION), victim)


# 7. A trickle ends the attempt; Ctrl-C ends the run while bytes trickle.

@pytest.mark.slow
def test_trickling_server_is_given_up_and_the_run_ends(scm_double, repo_tree, tmp_path):
    env = cli_env(LUIGI_CONFIG_PATH=config_with(tmp_path, low_speed_limit=5000, low_speed_time=1, retries=1))
    scm_double.throttle(400)  # every read arrives well within the timeout
    # The run must end: the subprocess timeout fails the test when it does not (before the fix it never did).
    result = mirror(scm_double, tmp_path / "m", "--jobs", "16", env=env, timeout=150)
    assert result.returncode == 1, result.stderr
    assert "slower than 5000 bytes/s" in result.stderr
    scm_double.clear_faults()
    assert mirror(scm_double, tmp_path / "m").returncode == 0
    assert tree_hashes(tmp_path / "m") == served_tree(repo_tree, VERSION)


@pytest.mark.slow
def test_ctrl_c_while_bytes_trickle_ends_the_run_with_130(scm_double, repo_tree, tmp_path):
    scm_double.throttle(400)
    proc = popen_cli("mirror", "--version", VERSION, "--mirror", tmp_path / "m", "--listing-url",
                     scm_double.listing_url(VERSION))
    deadline = time.monotonic() + 180  # a guard against a hang only
    while time.monotonic() < deadline and not [r for r in scm_double.records("GET") if r.body_bytes > 0
                                                 and not r.relpath.startswith("listings/")]:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # once
    try:
        out, err = proc.communicate(timeout=300)  # a guard against a hang only: at 400 bytes/s the run lasts hours
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err


# 9. HEAD refused while GET works; a password outside Latin-1.

def test_head_403_with_get_allowed_is_mirrored_and_403_is_named(scm_double, repo_tree, tmp_path):
    head_only = "common/data/forcefields-2026.101.tar.zst"
    refused = "windows/x86_64/band-2026.101.zip"
    scm_double.fail_status(head_only, status=403, times=None, method="HEAD")
    scm_double.fail_status(refused, status=403, times=None)
    dest = tmp_path / "m"
    result = mirror(scm_double, dest)
    assert result.returncode == 0, result.stderr
    assert sha256(dest / head_only) == sha256(repo_tree / "Downloads/packages" / head_only)
    assert tree_hashes(dest) == without(served_tree(repo_tree, VERSION), refused)
    assert f"skipped (HTTP 403, not licensed for this account): {refused}" in result.stderr
    assert "skipped (HTTP 401, not licensed for this account): licensed/" in result.stderr


@pytest.mark.slow
def test_password_outside_latin1_works_and_never_shows_in_messages(repo_tree, tmp_path):
    password = "pässwörd-€-密码"
    with ScmDouble(repo_tree, users={"démo": password}) as double:
        good = mirror(double, tmp_path / "good", env=cli_env(user="démo", password=password))
        assert good.returncode == 0, good.stderr
        assert tree_hashes(tmp_path / "good") == served_tree(repo_tree, VERSION)
        bad = mirror(double, tmp_path / "bad", env=cli_env(user="démo", password="wröng-€-密"))
    assert bad.returncode == 3, bad.stderr
    assert error_line(bad.stderr).startswith("error: the server refused the SCM account")
    for secret in ("wröng", "€", "密", "\\u20ac", "position"):
        assert secret not in bad.stderr and secret not in good.stderr


# A server's Retry-After is honoured only up to http.MAX_RETRY_AFTER: no answer parks a run for hours.

@pytest.mark.slow
@pytest.mark.parametrize("glob,method", [("listings/*", None), (BIG, "HEAD"), (BIG, "GET")],
                         ids=["listing", "head", "body"])
def test_a_retry_after_of_hours_is_not_slept(scm_double, repo_tree, tmp_path, glob, method):
    records_of = transfer_gets if method == "GET" else list  # the transfer's, or the probe's
    if method == "HEAD":  # the probe: a HEAD, or with [http] first_bytes the GET of the first bytes
        method = probe_method()
    elif method == "GET":  # the transfer, not a first run's probe of the first bytes
        spare_probes(scm_double)
    dest = tmp_path / "m"
    scm_double.fail_status(glob, 503, retry_after=100000, times=1, method=method)
    result = mirror(scm_double, dest, timeout=25)  # before the fix: asleep for 27 hours (the timeout fails it)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    records = records_of(scm_double.records(method, glob))
    assert records[0].status == 503 and records[-1].status in (200, 206), [r.status for r in records]
    # What the server saw: the retry came on the run's own backoff, not after the 100000 s it asked for.
    assert records[1].started - records[0].started <= MAX_RETRY_AFTER


# The listing is read as it arrives and refused past http.LISTING_MAX_BYTES once decoded: a small
# gzip body that inflates to gigabytes (or a body that never ends) must not fill the memory.

@pytest.mark.slow
def test_a_listing_that_inflates_past_the_bound_is_refused(scm_double, repo_tree, tmp_path):
    from amsrepomirror.testing.repository import listing_path

    LISTING_MAX_BYTES = 64 * 2**20  # http.LISTING_MAX_BYTES
    listing = listing_path(repo_tree, VERSION)
    with open(listing, "ab") as f:  # the real lines, then comment lines past the bound
        line = b"#" * 1023 + b"\n"
        for _ in range(LISTING_MAX_BYTES // len(line) + 1):
            f.write(line)
    scm_double.misbehave("listings/*", gzip_on_the_fly=True)
    dest = tmp_path / "m"
    result = mirror(scm_double, dest, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "larger than 64 MiB" in error_line(result.stderr)
    assert scm_double.records("GET", "linux/*") == []  # nothing fetched on such a listing
    assert tree_hashes(dest) == {}


# A HEAD answer's Content-Length is read by the GET's rule (http.parse_content_length): a value that
# is no plain number ('²' passes str.isdigit) leaves the length to the GET, never a traceback.

@pytest.mark.slow
@pytest.mark.parametrize("value", ["\xb2", "+3145728", "3145728, 3145728", "-1"])
def test_an_unreadable_head_content_length_leaves_the_length_to_the_get(scm_double, repo_tree, tmp_path, value):
    dest = tmp_path / "m"
    scm_double.misbehave(BIG, head_headers={"Content-Length": value})
    result = mirror(scm_double, dest)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "ValueError" not in result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)


# A status line and headers must arrive within http.HEADER_DEADLINE_TIMEOUTS read timeouts: a server
# that sends one header byte at a time beats every read timeout and held the run forever.

@pytest.mark.slow
@pytest.mark.parametrize("glob,method", [("listings/*", None), (BIG, "HEAD"), (BIG, "GET")],
                         ids=["listing", "head", "body"])
def test_headers_that_trickle_end_the_attempt(scm_double, repo_tree, tmp_path, glob, method):
    records_of = transfer_gets if method == "GET" else list  # the transfer's, or the probe's
    if method == "HEAD":  # the probe: a HEAD, or with [http] first_bytes the GET of the first bytes
        method = probe_method()
    elif method == "GET":  # the transfer, not a first run's probe of the first bytes
        spare_probes(scm_double)
    dest = tmp_path / "m"
    scm_double.slow_headers(glob, seconds=1.0, times=1, method=method)
    config = config_with(tmp_path, timeout=3)  # headers within 3 × 3 s
    result = mirror(scm_double, dest, env=cli_env(LUIGI_CONFIG_PATH=config), timeout=45)  # before: held for ever
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    records = records_of(scm_double.records(method, glob))
    # What the server saw: the trickling answer was given up and the request asked again, answered whole.
    assert records[0].fault == "slow-headers" and len(records) >= 2 and records[-1].fault is None, records


# A part's download record is JSON read back from the mirror: one that is valid JSON but no record
# (a list, a string) means "nothing to resume", never a traceback.

@pytest.mark.parametrize("record", ["[]", '"x"', "null"])
def test_a_part_record_that_is_no_record_starts_the_file_again(scm_double, repo_tree, tmp_path, record):
    from amsrepomirror.online.workspace import Workspace

    dest = tmp_path / "m"
    part = Workspace(dest).part_path(BIG)
    part.parent.mkdir(parents=True, exist_ok=True)
    served = repo_tree / "Downloads" / "packages" / BIG
    part.write_bytes(served.read_bytes()[:400_000])
    part.with_name(part.name + ".json").write_text(record)
    result = mirror(scm_double, dest)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)


# The mirror's manifest is JSON read back by bundle: valid JSON that is no manifest (a list, fields
# missing or of another type) is one line, exit 4, never a traceback.

@pytest.mark.slow
@pytest.mark.parametrize("body", ["[]", '{"schema": "amsrepomirror/mirror-manifest/1"}',
                                  '{"schema": "amsrepomirror/mirror-manifest/1", "version": "AMS2026.1", "files": [1]}'],
                         ids=["list", "no-fields", "files-not-objects"])
def test_a_mirror_manifest_that_is_no_manifest_is_exit_4(scm_double, repo_tree, tmp_path, body):
    from amsrepomirror.online.workspace import Workspace

    dest = tmp_path / "m"
    assert mirror(scm_double, dest).returncode == 0
    Workspace(dest).manifest_path(VERSION).write_text(body)
    result = run_cli("bundle", "--version", VERSION, "--mirror", dest, "--out", tmp_path / "b", "--offline")
    assert result.returncode == 4, result.stderr
    assert "cannot read mirror manifest" in error_line(result.stderr) and "Traceback" not in result.stderr
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").glob("*.7z"))


# A file is up to date only when the server's answer carries a validator that agrees
# (FileRecord.matches_remote): a HEAD with neither ETag nor Last-Modified proves nothing.

@pytest.mark.slow
@pytest.mark.parametrize("head_headers", [{"Content-Length": None, "ETag": None, "Last-Modified": None},
                                          {"ETag": None, "Last-Modified": None}], ids=["nothing", "size-only"])
def test_a_file_whose_head_carries_no_validator_is_fetched_again(scm_double, repo_tree, tmp_path, head_headers):
    small = "linux/x86_64/dftb-2026.101.tar.zst"
    dest = tmp_path / "m"
    scm_double.misbehave(small, head_headers=head_headers)
    assert mirror(scm_double, dest).returncode == 0
    change_file(repo_tree, small, seed=7)  # the same length, other bytes
    result = mirror(scm_double, dest)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)  # before the fix: the old bytes, "up to date"


# The listing's body is held to the run's low-speed limit ([http] low_speed_limit/low_speed_time),
# as file bodies are: a listing that trickles just faster than the read timeout must not hold the run.

@pytest.mark.slow
def test_a_listing_that_trickles_is_given_up(scm_double, repo_tree, tmp_path):
    dest = tmp_path / "m"
    scm_double.throttle(40)  # bytes/s: a 3 KB listing would take over a minute
    config = config_with(tmp_path, low_speed_limit=1000, low_speed_time=2, retries=1)
    result = mirror(scm_double, dest, env=cli_env(LUIGI_CONFIG_PATH=config), timeout=25)  # before the fix: 70 s
    assert result.returncode == 1, result.stderr
    assert "slower than 1000 bytes/s" in error_line(result.stderr) and "listing" in error_line(result.stderr)
    size = listing_path(repo_tree, VERSION).stat().st_size
    listing = scm_double.records("GET", "listings/*")
    assert listing and all(r.body_bytes < size for r in listing), (size, listing)  # given up before it was all sent
    assert scm_double.records("HEAD") == [] and tree_hashes(dest) == {}

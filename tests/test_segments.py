"""Large files as parallel byte ranges under one connection budget: every guarantee of one stream holds.

Each test drives the real `amsrepomirror mirror` command against the SCM double with a large file
(fetched as ranges: the test settings lower the threshold), a fault switched on, and asserts the
tree's hashes and the exit code.
"""

import json
import os
import re
import signal
import time

import pytest
from clihelp import (
    cli_env,
    first_bytes,
    popen_cli,
    probe_bytes,
    run_cli,
    served_tree,
    spare_probes,
    transfer_gets,
    tree_hashes,
)

from amsrepomirror.testing.repository import change_file, write_file, write_listing

VERSION = "AMS2026.1"
pytestmark = pytest.mark.usefixtures("probe_mode")  # each test with both probes (conftest.py)
#: Run with both probes in the fast tier (a range answer that is not the bytes asked, a 200 to a range, a file
#: changed between requests); the others' second probe is in the slow tier.
BOTH_PROBES_FAST = {
    "test_a_range_answer_that_is_not_the_bytes_asked_is_asked_again",
    "test_a_whole_file_without_validators_is_never_joined_to_ranges",
    "test_file_changing_between_two_range_requests_is_caught_never_spliced",
}
HUGE = "linux/x86_64/huge-2026.101.tar.zst"
MiB = 1024 * 1024


def settings(tmp_path, **http):
    """A luigi.cfg for one test: quick retries, and files of 4 MiB or more fetched as ranges."""
    values = {"retries": 3, "backoff": 0.1, "timeout": 10, "segment_threshold": "4MiB",
              "first_bytes": first_bytes(), **http}
    path = tmp_path / "luigi.cfg"
    path.write_text("[http]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
    return cli_env(LUIGI_CONFIG_PATH=str(path))


def add_huge(double, root, size=24 * MiB):
    """The huge file, listed (its path as served); the faults armed for it meet its transfer, not a first run's
    probe of its first bytes."""
    served = write_file(root, HUGE, size)
    write_listing(root, VERSION, double.base_url)
    spare_probes(double)
    return served


def mirror(double, dest, *extra, env, timeout=240):
    return run_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", double.listing_url(VERSION),
                   *extra, env=env, timeout=timeout)


def before_the_second_get(double, change):
    """Call ``change()`` when the huge file's second transfer GET arrives, before it is answered (a first run's
    probe of its first bytes is spared, ``add_huge``)."""
    seen = []

    def on_get():
        seen.append(1)
        if len(seen) == 2:
            change()

    double.on_request(HUGE, on_get, times=None, method="GET")


def huge_gets(double):
    """The GETs of the huge file's transfer (a first run's probe of its first bytes left out)."""
    return transfer_gets(double.records("GET", HUGE))


def without(tree, path):
    return {p: h for p, h in tree.items() if p != path}


def test_drops_in_several_ranges_give_the_exact_file(scm_double, repo_tree, tmp_path):
    add_huge(scm_double, repo_tree)
    scm_double.throttle(12 * MiB)  # slow enough that the file is split while its first range runs
    scm_double.cut_after(HUGE, nbytes=MiB, times=4, method="GET")  # the first four bodies drop after 1 MiB
    dest = tmp_path / "m"
    result = mirror(scm_double, dest, "--jobs", "6", env=settings(tmp_path))
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    gets = huge_gets(scm_double)
    cut = [r for r in gets if r.fault == "cut"]
    assert len(cut) == 4 and len({r.range for r in cut}) >= 2  # drops hit different ranges
    assert all(r.status == 206 and r.if_range for r in gets)  # every request a range tied to the HEAD answer
    assert sum(r.body_bytes for r in gets) < 24 * MiB + 8 * MiB  # each range resumed where it dropped
    assert not list((dest / ".amsrepomirror").rglob("*.part*"))
    ended = [m for log in (dest / ".amsrepomirror" / "runs").glob("*/luigi.log")
             for m in re.finditer(r"ranges ended: (\S+) \((\d+) bytes, (\d+) range requests\) on disk .*?; (\d+) bytes hashed "
                                  r"after in [\d.]+ s, fsync [\d.]+ s", log.read_text())]
    assert [(m.group(1), int(m.group(2))) for m in ended] == [(HUGE, 24 * MiB)]  # the end of the file, timed in the log
    assert int(ended[0].group(3)) >= 2 and 0 <= int(ended[0].group(4)) <= 24 * MiB
    scm_double.clear_log()
    assert mirror(scm_double, dest, "--deep", env=settings(tmp_path)).returncode == 0
    assert not [r for r in scm_double.records("GET") if r.body_bytes and not r.relpath.startswith("listings/")]  # 0 bodies


def test_a_whole_file_without_validators_is_never_joined_to_ranges(scm_double, repo_tree, tmp_path):
    # After a drop, the file changes (same size) and the server stops honouring Range and stops
    # sending validators: the 200 it sends cannot be tied to the bytes already written.
    add_huge(scm_double, repo_tree)
    scm_double.throttle(12 * MiB)

    def change_and_stop_honouring_ranges():
        change_file(repo_tree, HUGE, seed=7)
        scm_double.misbehave(HUGE, ignore_range=True, bare_get=True)

    scm_double.cut_after(HUGE, nbytes=MiB, times=1, method="GET", then=change_and_stop_honouring_ranges)
    dest, env = tmp_path / "m", settings(tmp_path)
    first = mirror(scm_double, dest, "--jobs", "6", env=env)
    assert first.returncode == 1, first.stderr
    assert "no ETag or Last-Modified" in first.stderr
    assert tree_hashes(dest) == without(served_tree(repo_tree, VERSION), HUGE)  # nothing spliced into the mirror
    assert not list((dest / ".amsrepomirror").rglob("*.part*"))
    scm_double.clear_faults()
    assert mirror(scm_double, dest, env=env).returncode == 0
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)


def _ranges_record(dest):
    for path in (dest / ".amsrepomirror" / "parts").rglob("*.ranges"):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None
    return None


@pytest.mark.slow
def test_kill_9_with_ranges_half_done_resumes_every_range(scm_double, repo_tree, tmp_path):
    add_huge(scm_double, repo_tree, 32 * MiB)
    scm_double.throttle(2 * MiB)
    dest, env = tmp_path / "m", settings(tmp_path)
    proc = popen_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url",
                     scm_double.listing_url(VERSION), "--jobs", "4", env=env)
    try:
        deadline, record = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            record = _ranges_record(dest)
            if record and sum(1 for start, end, pos in record["extents"] if pos > start) >= 3:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    record = _ranges_record(dest)  # as the killed run left it
    assert record and sum(1 for start, end, pos in record["extents"] if pos > start) >= 3, record
    assert not (dest / HUGE).exists()
    scm_double.clear_log()
    result = mirror(scm_double, dest, "--jobs", "4", env=env)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    gets = huge_gets(scm_double)
    starts = {int(r.range.split("=")[1].split("-")[0]) for r in gets}
    assert {pos for start, end, pos in record["extents"] if start < pos < end} <= starts  # each range went on where it stopped
    written = [(start, pos) for start, end, pos in record["extents"] if pos > start]
    assert not [s for s in starts if any(a <= s < b for a, b in written)]  # no recorded byte asked for again
    assert sum(r.body_bytes for r in gets) < 32 * MiB
    assert mirror(scm_double, dest, "--deep", env=env).returncode == 0


@pytest.mark.slow
def test_server_ignoring_range_falls_back_to_one_stream(scm_double, repo_tree, tmp_path):
    add_huge(scm_double, repo_tree)
    scm_double.misbehave(HUGE, ignore_range=True)
    scm_double.throttle(12 * MiB)
    dest = tmp_path / "m"
    result = mirror(scm_double, dest, "--jobs", "6", env=settings(tmp_path))
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    gets = huge_gets(scm_double)
    assert all(r.status == 200 for r in gets)
    assert len(gets) == 1 and gets[0].body_bytes == 24 * MiB  # one stream: never split, nothing fetched twice


def test_file_changing_between_two_range_requests_is_caught_never_spliced(scm_double, repo_tree, tmp_path):
    add_huge(scm_double, repo_tree)
    scm_double.throttle(12 * MiB)
    before_the_second_get(scm_double, lambda: change_file(repo_tree, HUGE, seed=7))
    dest, env = tmp_path / "m", settings(tmp_path)
    first = mirror(scm_double, dest, "--jobs", "6", env=env)
    assert first.returncode == 1, first.stderr
    assert "changed on the server" in first.stderr
    assert tree_hashes(dest) == without(served_tree(repo_tree, VERSION), HUGE)  # nothing spliced into the mirror
    assert not list((dest / ".amsrepomirror").rglob("*.part*"))  # the part and its ranges were dropped
    scm_double.clear_faults()
    second = mirror(scm_double, dest, "--jobs", "6", env=env)
    assert second.returncode == 0, second.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)  # the new version, whole


def test_a_file_rewritten_within_its_last_modified_second_is_one_get_never_ranges(scm_double, repo_tree, tmp_path):
    """No ETag, and a Last-Modified not a second before the answer's Date (RFC 9110, 13.1.5): it ties nothing,
    since the file may change again within that second and keep it. The file is fetched as one GET, without
    If-Range: had it been ranges, the rewrite before the second one (same length, same second) would be spliced."""
    served = add_huge(scm_double, repo_tree)
    second = int(time.time()) + 30  # not a second before the server's Date (after it: as weak as the same second)
    os.utime(served, ns=(second * 10**9,) * 2)
    scm_double.misbehave(HUGE, etag="none")
    scm_double.throttle(12 * MiB)

    def rewrite_in_the_same_second():
        change_file(repo_tree, HUGE, seed=7)
        os.utime(served, ns=(second * 10**9 + 5 * 10**8,) * 2)

    before_the_second_get(scm_double, rewrite_in_the_same_second)
    dest, env = tmp_path / "m", settings(tmp_path)
    done = mirror(scm_double, dest, "--jobs", "6", env=env)
    assert done.returncode == 0, done.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)  # the version served, whole: nothing rewritten
    gets = huge_gets(scm_double)
    assert [(r.range, r.if_range) for r in gets] == [(None, None)], [(r.range, r.body_bytes) for r in gets]


@pytest.mark.slow
def test_503_storm_lowers_the_number_of_connections(scm_double, repo_tree, tmp_path):
    for i in range(36):
        write_file(repo_tree, f"common/storm/part-{i:02d}.bin", MiB)
    write_listing(repo_tree, VERSION, scm_double.base_url)
    spare_probes(scm_double)  # the storm meets the transfers (the probes keep their connections, as HEADs do)
    scm_double.throttle(2 * MiB)
    gets = []

    def storm_after_a_while():
        gets.append(1)
        if len(gets) == 14:  # all connections busy by now: 6 answers of 503, Retry-After 1
            scm_double.fail_status("common/storm/*", 503, retry_after=1, times=6, method="GET")

    scm_double.on_request("common/storm/*", storm_after_a_while, times=None, method="GET")
    dest = tmp_path / "m"
    result = mirror(scm_double, dest, "--jobs", "6", env=settings(tmp_path))
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    storm = transfer_gets(scm_double.records("GET", "common/storm/*"))
    busy = [i for i, r in enumerate(storm) if r.status == 503]
    assert len(busy) == 6
    before, after = storm[:busy[0]], storm[busy[-1] + 1:]
    assert max(r.concurrent for r in before) >= 5  # (the double also counts a request until its handler returns)
    assert after and max(r.concurrent for r in after) <= 3  # the double counted fewer requests at once
    assert "slowed down" in result.stdout + result.stderr and "503" in result.stdout + result.stderr


# What the mirror accepts from the network (http.accept_response): an answer to a range that is not
# exactly the bytes asked for is never written; the range is asked again, or the file fails.

def range_start(header):
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", header or "")
    return int(match.group(1)) if match else None


def lied_then_asked_again(double, how):
    """The lying answer, and whether the same first byte was asked for again after it."""
    gets = huge_gets(double)
    lied = [i for i, r in enumerate(gets) if r.fault == f"lie:{how}"]
    assert len(lied) == 1, [(r.range, r.status, r.fault) for r in gets]
    start = range_start(gets[lied[0]].range)
    return gets[lied[0]], any(range_start(r.range) == start for r in gets[lied[0] + 1:])


@pytest.mark.parametrize("how", ["gzip-200", "multipart", "range-end", "range-start", "total", "no-etag"])
def test_a_range_answer_that_is_not_the_bytes_asked_is_asked_again(scm_double, repo_tree, tmp_path, how):
    add_huge(scm_double, repo_tree)
    scm_double.lie(HUGE, how, times=1)  # the first answer to a range of the huge file lies
    dest = tmp_path / "m"
    result = mirror(scm_double, dest, "--jobs", "4", env=settings(tmp_path))
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)  # before: gzip or multipart bytes in the file
    lie, asked_again = lied_then_asked_again(scm_double, how)
    assert lie.range and lie.body_bytes
    assert asked_again  # nothing of the lie was kept: its first byte was asked for again
    assert not list((dest / ".amsrepomirror").rglob("*.part*"))


# Another ETag on a range answer, or a body longer than announced (no Content-Length: it ends when the
# connection closes, 1000 bytes after the range asked; one connection, so the range is never split).
@pytest.mark.parametrize("lie, jobs, says", [("validators", "4", "changed on the server"), ("long", "1", "went on past")],
                         ids=["another_etag", "body_longer_than_announced"])
def test_a_range_answer_that_is_another_file_fails_the_file_and_drops_its_part(scm_double, repo_tree, tmp_path,
                                                                                lie, jobs, says):
    add_huge(scm_double, repo_tree)
    scm_double.lie(HUGE, lie, times=1)
    dest, env = tmp_path / "m", settings(tmp_path)
    result = mirror(scm_double, dest, "--jobs", jobs, env=env)
    assert result.returncode == 1, result.stderr
    assert says in result.stderr
    assert tree_hashes(dest) == without(served_tree(repo_tree, VERSION), HUGE)
    assert not list((dest / ".amsrepomirror").rglob("*.part*"))
    assert mirror(scm_double, dest, env=env).returncode == 0
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)


def test_a_range_body_that_ends_early_is_resumed_where_it_ended(scm_double, repo_tree, tmp_path):
    # No Content-Length and 1000 bytes short: indistinguishable from a cut, so what came is kept.
    add_huge(scm_double, repo_tree)
    scm_double.lie(HUGE, "short", times=1)
    dest = tmp_path / "m"
    result = mirror(scm_double, dest, "--jobs", "1", env=settings(tmp_path))
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    gets = huge_gets(scm_double)
    assert [range_start(r.range) for r in gets] == [probe_bytes(), 24 * MiB - 1000]  # after what the probe brought


def test_a_range_answer_without_the_validator_asked_is_never_written(scm_double, repo_tree, tmp_path):
    add_huge(scm_double, repo_tree)
    scm_double.misbehave(HUGE, bare_get=True)  # every GET answer without ETag and Last-Modified
    dest, env = tmp_path / "m", settings(tmp_path)
    result = mirror(scm_double, dest, env=env)
    assert result.returncode == 1, result.stderr
    assert "If-Range" in result.stderr
    assert not (dest / HUGE).exists()
    assert len(huge_gets(scm_double)) == 4  # asked once and retried 3 times, then given up

"""A first run asks each file it has never held with a GET of its first bytes instead of a HEAD: a small
file arrives with its answer (one request, data from the start), a larger one is planned as HEAD would
have planned it and fetched on from the bytes that came. Against the SCM double, whose log shows every request in order."""

import os
from pathlib import Path

import pytest
from clihelp import REPO, cli_env, run_cli, served_tree, tree_hashes

from amsrepomirror.errors import DiskSpaceError
from amsrepomirror.online.sync import Prefetch
from amsrepomirror.online.workspace import Workspace
from amsrepomirror.testing.repository import make_repository, repository_files
from amsrepomirror.testing.scmdouble import ScmDouble

VERSION = "AMS2026.1"
PREFETCH_BYTES = 64 * 1024  # [http] first_bytes as docs/design.md suggests turning it on
FIRST_BYTES = f"bytes=0-{PREFETCH_BYTES - 1}"


@pytest.fixture
def settings(tmp_path_factory) -> Path:
    """The tests' settings with first_bytes on at the size these tests count with (as shipped, and in
    tests/luigi-test.cfg; the fault suites also run with HEAD probes)."""
    cfg = tmp_path_factory.mktemp("settings") / "luigi.cfg"
    cfg.write_text((REPO / "tests" / "luigi-test.cfg").read_text().replace("first_bytes = 0", "first_bytes = 64KiB"))
    return cfg


def mirror(double, dest, cfg, *extra):
    return run_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", double.listing_url(VERSION), *extra,
                   env=cli_env(LUIGI_CONFIG_PATH=str(cfg)))


def file_records(double):
    return [r for r in double.log if r.relpath and not r.relpath.startswith("listings/")]


def sizes(root):
    packages = root / "Downloads" / "packages"
    return {p: (packages / p).stat().st_size for p in repository_files(root)}


@pytest.mark.slow
def test_small_files_come_with_their_answer_and_a_rerun_asks_heads(scm_double, repo_tree, tmp_path, settings):
    dest = tmp_path / "m"
    first = mirror(scm_double, dest, settings)
    assert first.returncode == 0, first.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    records = file_records(scm_double)
    served = {p: s for p, s in sizes(repo_tree).items() if not p.startswith("licensed/")}
    small = [p for p, s in served.items() if 0 < s <= PREFETCH_BYTES]
    assert small, "the repository must hold small files for this test"
    for path in small:  # one request each: the GET of the first bytes, which carried the whole file
        asked = [(r.method, r.range, r.status, r.body_bytes) for r in records if r.relpath == path]
        assert asked == [("GET", FIRST_BYTES, 206, served[path])], path
    assert not [r for r in records if r.method == "HEAD" and r.relpath in small]
    # data flows while the files are still being asked about: a whole body before the last question
    probes = [i for i, r in enumerate(records) if r.method == "HEAD" or r.range == FIRST_BYTES]
    bodies = [i for i, r in enumerate(records) if r.body_bytes and r.relpath in small]
    assert bodies[0] < probes[-1]
    larger = [p for p, s in served.items() if s > PREFETCH_BYTES]
    for path in larger:  # its first bytes with the answer, then the rest from there, tied to them by If-Range
        gets = [r for r in records if r.relpath == path and r.method == "GET"]
        assert (gets[0].range, gets[0].body_bytes) == (FIRST_BYTES, PREFETCH_BYTES), path
        assert gets[1].range.startswith(f"bytes={PREFETCH_BYTES}-") and gets[1].if_range, path
        assert sum(r.body_bytes for r in gets) == served[path], path  # no byte served twice
    assert not list((dest / ".amsrepomirror").rglob("*.first-*"))  # every copy the probes brought was installed

    scm_double.clear_log()
    again = mirror(scm_double, dest, settings)
    assert again.returncode == 0, again.stderr
    records = file_records(scm_double)
    assert {r.method for r in records} == {"HEAD"}  # every file has a record: no body asked for
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)


def probed_snapshot(scm_double, ws):
    from amsrepomirror.online import sync
    from amsrepomirror.online.http import make_session

    session = make_session(None)
    session.auth = (b"demo", b"demo-pass")
    return session, sync.take_snapshot(session, VERSION, scm_double.listing_url(VERSION), [], {},
                                       strict_authentication=False, jobs=4, timeout=10, ws=ws,
                                       first_bytes=PREFETCH_BYTES)


@pytest.mark.parametrize("brought", ["whole", "start"])
@pytest.mark.parametrize("changed", [False, True], ids=["as-brought", "changed"])
def test_a_changed_copy_of_what_the_probe_brought_is_fetched_again(scm_double, repo_tree, tmp_path, brought, changed):
    """What the probe brought (a small file whole, the first bytes of a larger one) is used only while it holds
    the bytes it hashed: the small file installed, the larger one's download going on from there; else the file
    is fetched from its first byte."""
    from amsrepomirror.online import sync

    ws = Workspace(tmp_path / "m")
    session, snapshot = probed_snapshot(scm_double, ws)
    entry = next(e for e in snapshot["files"] if e.get("prefetched") and e["size"] > 10
                 and (e["prefetched"]["bytes"] == e["size"]) == (brought == "whole"))
    held = sync.prefetched_path(ws, entry["path"], entry["prefetched"]["by"])
    assert held.stat().st_size == min(entry["size"], PREFETCH_BYTES)
    if changed:
        data = bytearray(held.read_bytes())
        data[0] ^= 1
        held.write_bytes(bytes(data))
    scm_double.clear_log()
    outcome = sync.download_many(session, ws, [entry], "run", jobs=1, timeout=10, progress=None)
    assert outcome.fetched == [entry["path"]]
    asked = {("whole", False): [], ("start", False): [("GET", f"bytes={PREFETCH_BYTES}-")]}.get((brought, changed),
                                                                                              [("GET", None)])
    assert [(r.method, r.range) for r in file_records(scm_double)] == asked
    assert tree_hashes(tmp_path / "m")[entry["path"]] == served_tree(repo_tree, VERSION)[entry["path"]]


def test_the_probes_bodies_never_go_beyond_the_free_space(tmp_path):
    account = Prefetch(None, Workspace(tmp_path / "m"), VERSION, PREFETCH_BYTES, 10, None)
    account.free = 3 * Prefetch.BLOCK
    account.reserve(1)
    account.reserve(Prefetch.BLOCK + 1)  # two blocks
    with pytest.raises(DiskSpaceError, match="not enough disk space for the small files"):
        account.reserve(1)
    assert account.reserved == 3 * Prefetch.BLOCK


@pytest.mark.slow
def test_small_files_beyond_the_free_space_stop_the_run_with_exit_5(tmp_path, settings):
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=256k tmpfs {small} 2>/dev/null") != 0:
        pytest.skip("needs root to mount a small tmpfs")
    root = tmp_path / "scm"
    make_repository(root, VERSION, tiny=400)
    double = ScmDouble(root)
    double.start()
    try:
        result = mirror(double, small / "m", settings, "--jobs", "4")
        assert result.returncode == 5, result.stderr
        assert "not enough disk space for the small files of the listing" in result.stderr
        sent = sum(r.body_bytes for r in file_records(double) if r.range == FIRST_BYTES and r.status == 206
                   and r.body_bytes < PREFETCH_BYTES)
        assert sent <= 256 * 1024
    finally:
        double.stop()
        os.system(f"umount {small}")


def test_a_cut_small_body_is_not_kept(scm_double, tmp_path):
    """A probe whose body ends early says what HEAD would, and keeps nothing: its DownloadFile fetches the file."""
    from amsrepomirror.online.http import make_session, probe_with_body

    path = "common/docs/AMS 2026.1 release notes.pdf"  # 20,000 bytes
    scm_double.cut_after(path, nbytes=1000, times=1, method="GET")
    session = make_session(None, retries=0)
    session.auth = (b"demo", b"demo-pass")
    into = tmp_path / "part"
    remote, sha256 = probe_with_body(session, scm_double.url(path), 10, into, PREFETCH_BYTES, lambda n: None)
    assert (remote.status, remote.size, sha256) == (200, 20_000, None)
    assert remote.etag and not into.exists()


@pytest.mark.parametrize("how", ["gzip-200", "range-start", "multipart"])
def test_a_first_bytes_answer_the_gate_refuses_is_asked_again_as_a_head(scm_double, repo_tree, tmp_path, settings, how):
    """The answer to the probe of a larger file passes the response gate too (http.accept_response), although its
    bytes are dropped: the run plans with its length and validators. A whole file gzip-compressed on the fly (its
    Content-Length not the file's), another range, a multipart body: the file is asked again as a HEAD, and
    mirrored exactly."""
    big = "linux/x86_64/python3.11-2026.101.tar.zst"  # 3 MiB: more than the first bytes
    scm_double.lie(big, how, times=1)  # the first answer to a range of it: the probe's
    dest = tmp_path / "m"
    result = mirror(scm_double, dest, settings)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    asked = [(r.method, r.range, r.fault) for r in file_records(scm_double) if r.relpath == big]
    assert asked == [("GET", FIRST_BYTES, f"lie:{how}"), ("HEAD", None, None), ("GET", None, None)]


def test_a_head_that_a_303_turns_into_a_get_is_never_read_nor_its_connection_reused(scm_double, repo_tree):
    """urllib3 follows a 303 to a HEAD with a GET. Its body is not read (not into memory, whatever its length), and
    its connection is not given back to the pool with the body unread: the next answer on it would be read from
    that body, here a forged answer with another length and ETag."""
    from amsrepomirror.online.http import make_session, probe

    forged = b'HTTP/1.1 200 OK\r\nContent-Length: 999\r\nETag: "forged"\r\n\r\n'
    # after the byte that tells a body is there, the rest starts with a forged answer
    (repo_tree / "Downloads" / "packages" / "common" / "forged.txt").write_bytes(b"x" + forged * 4)
    scm_double.redirect("common/moved.bin", lambda _target: scm_double.url("common/forged.txt"), 303, method="HEAD")
    session = make_session(None, retries=2, backoff=0, pool_size=1)
    session.auth = (b"demo", b"demo-pass")
    moved = probe(session, scm_double.url("common/moved.bin"), 10)
    assert (moved.status, moved.size) == (200, 1 + len(forged) * 4)  # what the 303 pointed to, as its GET's headers say
    notes = probe(session, scm_double.url("common/docs/AMS 2026.1 release notes.pdf"), 10)
    assert (notes.status, notes.size) == (200, 20_000) and notes.etag != '"forged"'
    redirected, = scm_double.records("GET", "common/forged.txt")
    after, = scm_double.records("HEAD", "common/docs/AMS 2026.1 release notes.pdf")
    assert after.client_port != redirected.client_port  # the connection that carried the unread body was closed

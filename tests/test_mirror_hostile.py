"""End to end, against the SCM double: listings and trees that are legal but awkward.

Non-ASCII names and a BOM in a listing served as ``text/plain`` without a charset, paths that
change between file and folder upstream, names as long as the filesystem allows, several
corrupt files found by one ``--deep`` run, and a ``~/.netrc`` others can read.
"""

import json
import os
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from clihelp import cli_env, run_cli, served_tree, tree_hashes

from amsrepomirror.online.workspace import Workspace
from amsrepomirror.testing.repository import listing_path, remove_file, repository_files, write_file, write_listing

VERSION = "AMS2026.1"
pytestmark = pytest.mark.usefixtures("probe_mode")  # each test with both probes (conftest.py)
#: Run with both probes in the fast tier (names the listing escapes); the others' second probe is in the slow
#: tier.
BOTH_PROBES_FAST = {
    "test_utf8_names_and_a_bom_mirror_exactly",
}


def mirror(double, dest, *extra, env=None):
    return run_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", double.listing_url(VERSION),
                   *extra, env=env)


def body_gets(double):
    """GET requests that carried file bodies (the listing itself left out)."""
    return [r for r in double.records("GET") if r.body_bytes > 0 and not (r.relpath or "").startswith("listings/")]


def stderr_lines(result):
    return [line for line in result.stderr.splitlines() if line.strip()]


def packages(repo_tree) -> Path:
    return repo_tree / "Downloads" / "packages"


# ---- listing decoding --------------------------------------------------------------------------

def test_double_serves_the_listing_without_a_charset(scm_double):
    """The premise of the decoding tests: requests alone would read this listing as ISO-8859-1."""
    resp = requests.get(scm_double.listing_url(VERSION), auth=("demo", "demo-pass"), timeout=10)
    assert resp.headers["Content-Type"] == "text/plain"
    assert resp.encoding == "ISO-8859-1"


def test_utf8_names_and_a_bom_mirror_exactly(scm_double, repo_tree, tmp_path):
    encoded, raw = "données/ünï.tgz", "données/räw-ñame.tgz"
    write_file(repo_tree, encoded, 3000)
    write_file(repo_tree, raw, 2000)
    write_listing(repo_tree, VERSION, scm_double.base_url, [p for p in repository_files(repo_tree) if p != raw])
    listing = listing_path(repo_tree, VERSION)
    body = listing.read_bytes()
    assert b"donn%C3%A9es/%C3%BCn%C3%AF.tgz" in body  # percent-encoded UTF-8
    raw_line = f"{scm_double.base_url}/Downloads/packages/{raw}\n".encode()  # raw UTF-8 in the URL line
    listing.write_bytes(b"\xef\xbb\xbf" + body + raw_line)

    dest = tmp_path / "m"
    result = mirror(scm_double, dest)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    assert {encoded, raw} <= set(tree_hashes(dest))
    scm_double.clear_log()
    again = mirror(scm_double, dest)
    assert again.returncode == 0 and body_gets(scm_double) == []


def test_percent_escape_that_is_not_utf8_is_refused_with_its_line(scm_double, repo_tree, tmp_path):
    listing = listing_path(repo_tree, VERSION)
    root = f"{scm_double.base_url}/Downloads/packages/"
    lines = listing.read_text().splitlines()
    listing.write_text("\n".join(lines + [f"{root}common/bad%FF.tgz", f"{root}common/bad%FE.tgz"]) + "\n")
    scm_double.clear_log()
    result = mirror(scm_double, tmp_path / "m")
    assert result.returncode == 2, result.stderr
    lines_out = stderr_lines(result)
    assert len(lines_out) == 1 and lines_out[0].startswith("error:"), result.stderr
    assert f"listing line {len(lines) + 1}" in lines_out[0] and "UTF-8" in lines_out[0]
    assert [r for r in scm_double.log if r.relpath != f"listings/{VERSION}.txt"] == []
    assert tree_hashes(tmp_path / "m") == {}


def test_listing_body_that_is_not_utf8_is_refused_with_its_line(scm_double, repo_tree, tmp_path):
    listing = listing_path(repo_tree, VERSION)
    body = listing.read_bytes()
    latin1 = f"{scm_double.base_url}/Downloads/packages/common/donn\xe9es.tgz\n".encode("latin-1")
    listing.write_bytes(body + latin1)
    scm_double.clear_log()
    result = mirror(scm_double, tmp_path / "m")
    assert result.returncode == 2, result.stderr
    lines_out = stderr_lines(result)
    assert len(lines_out) == 1 and lines_out[0].startswith("error:"), result.stderr
    bad_line = body.count(b"\n") + 1
    assert f"line {bad_line}" in lines_out[0] and "UTF-8" in lines_out[0]
    assert [r for r in scm_double.log if r.relpath != f"listings/{VERSION}.txt"] == []


# ---- a path that changes between file and folder upstream -------------------------------------

def _relist(repo_tree, double):
    write_listing(repo_tree, VERSION, double.base_url)


def test_folder_that_becomes_a_file_upstream(scm_double, repo_tree, tmp_path):
    dest = tmp_path / "m"
    write_file(repo_tree, "flip/b.tgz", 5000)
    write_file(repo_tree, "flip/deeper/c.tgz", 500)
    _relist(repo_tree, scm_double)
    assert mirror(scm_double, dest).returncode == 0
    assert (dest / "flip/deeper/c.tgz").is_file()

    shutil.rmtree(packages(repo_tree) / "flip")
    write_file(repo_tree, "flip", 4000, seed="file")
    _relist(repo_tree, scm_double)
    result = mirror(scm_double, dest)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    assert not Workspace(dest).read_record("flip/b.tgz")  # the records of what was removed went with it
    scm_double.clear_log()
    assert mirror(scm_double, dest, "--delete-unlisted").returncode == 0
    assert body_gets(scm_double) == [] and tree_hashes(dest) == served_tree(repo_tree, VERSION)


@pytest.mark.slow
def test_file_that_becomes_a_folder_upstream(scm_double, repo_tree, tmp_path):
    dest = tmp_path / "m"
    write_file(repo_tree, "flip", 4000)
    write_file(repo_tree, "common/data/nest", 100)
    _relist(repo_tree, scm_double)
    assert mirror(scm_double, dest).returncode == 0
    assert (dest / "flip").is_file()

    remove_file(repo_tree, "flip")
    remove_file(repo_tree, "common/data/nest")
    for rel in ("flip/b.tgz", "flip/c.tgz", "common/data/nest/deep/d.tgz"):
        write_file(repo_tree, rel, 3000, seed="folder")
    _relist(repo_tree, scm_double)
    result = mirror(scm_double, dest, "--delete-unlisted", "--force")
    assert result.returncode == 0, result.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    assert not Workspace(dest).read_record("flip")
    scm_double.clear_log()
    assert mirror(scm_double, dest).returncode == 0
    assert body_gets(scm_double) == []


# ---- the tool's own state must not limit names --------------------------------------------------

def test_name_of_255_bytes_mirrors_and_reruns_up_to_date(scm_double, repo_tree, tmp_path):
    name = "common/" + "n" * 251 + ".tgz"
    target = packages(repo_tree) / name
    with open(target, "wb") as f:  # write_file's temporary name would itself be too long
        f.write(os.urandom(70_000))
    _relist(repo_tree, scm_double)
    dest, report = tmp_path / "m", tmp_path / "r.json"
    first = mirror(scm_double, dest)
    assert first.returncode == 0, first.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    scm_double.clear_log()
    again = mirror(scm_double, dest, "--report", report)
    assert again.returncode == 0, again.stderr
    assert body_gets(scm_double) == []
    summary = json.loads(report.read_text())
    assert (summary["fetched"], summary["up_to_date"]) == (0, len(served_tree(repo_tree, VERSION)))


@pytest.mark.slow
def test_name_of_255_bytes_split_across_chunks_crosses_the_gap(scm_double, repo_tree, tmp_path):
    """A file whose name is as long as allowed and that is larger than a chunk: bundle and unpack."""
    name = "common/" + "s" * 251 + ".tgz"
    with open(packages(repo_tree) / name, "wb") as f:
        f.write(os.urandom(300_000))
    _relist(repo_tree, scm_double)
    dest, out, amshome = tmp_path / "m", tmp_path / "bundle", tmp_path / "ams"
    amshome.mkdir()
    bundled = run_cli("bundle", "--version", VERSION, "--mirror", dest, "--listing-url", scm_double.listing_url(VERSION),
                      "--out", out, "--chunk-size", "128KiB")
    assert bundled.returncode == 0, bundled.stderr
    unpacked = run_cli("unpack", out, "--amshome", amshome)
    assert unpacked.returncode == 0, unpacked.stderr
    assert tree_hashes(amshome / "repository") == served_tree(repo_tree, VERSION)


def _legacy_record_path(ws, rel):
    """Where records lived before state names were hashed: ``records/<path>.json``."""
    return ws.state.joinpath("records", *rel.split("/")).with_name(rel.rsplit("/", 1)[-1] + ".json")


def test_records_of_the_earlier_layout_are_taken_over(scm_double, repo_tree, tmp_path):
    """A mirror written before state names were hashed is not fetched again."""
    dest = tmp_path / "m"
    assert mirror(scm_double, dest).returncode == 0
    ws = Workspace(dest)
    for rel in served_tree(repo_tree, VERSION):
        legacy = _legacy_record_path(ws, rel)
        legacy.parent.mkdir(parents=True, exist_ok=True)
        os.replace(ws.record_path(rel), legacy)
    scm_double.clear_log()
    again = mirror(scm_double, dest)
    assert again.returncode == 0, again.stderr
    assert body_gets(scm_double) == []
    for rel in served_tree(repo_tree, VERSION):
        assert ws.record_path(rel).is_file() and not _legacy_record_path(ws, rel).exists()


# ---- --deep reports every corrupt file ----------------------------------------------------------

def _corrupt_keeping_size_and_mtime(path: Path) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(10)
        f.write(b"\x00\xff\x00")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_deep_reports_every_corrupt_file_and_the_next_run_fetches_them_all(scm_double, repo_tree, tmp_path):
    dest = tmp_path / "m"
    assert mirror(scm_double, dest).returncode == 0
    victims = ["common/data/basis-sets-2026.101.tar.zst", "linux/x86_64/adf-2026.101.tar.zst",
               "windows/x86_64/band-2026.101.zip"]
    for rel in victims:
        _corrupt_keeping_size_and_mtime(dest / rel)
    deep = mirror(scm_double, dest, "--deep")
    assert deep.returncode == 4, deep.stderr
    lines = stderr_lines(deep)
    for rel in victims:
        assert len([line for line in lines if rel in line and not line.startswith("error:")]) == 1, deep.stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "3 file(s)" in errors[0], deep.stderr
    assert lines[-1] == errors[0]
    scm_double.clear_log()
    assert mirror(scm_double, dest).returncode == 0
    assert sorted(r.relpath for r in body_gets(scm_double)) == sorted(victims)
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)


# ---- ~/.netrc that others can read ---------------------------------------------------------------

def _netrc_run(scm_double, tmp_path, mode):
    home = tmp_path / f"home-{mode:o}"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text("machine 127.0.0.1 login demo password demo-pass\n")
    netrc.chmod(mode)
    return mirror(scm_double, tmp_path / f"m-{mode:o}", env=cli_env(None, None, home=str(home))), netrc


def test_netrc_others_can_read_or_write_is_used_with_one_warning(scm_double, repo_tree, tmp_path):
    for mode in (0o666, 0o640):
        result, netrc = _netrc_run(scm_double, tmp_path, mode)
        assert result.returncode == 0, result.stderr
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1, result.stderr
        assert str(netrc) in warnings[0] and "chmod 600" in warnings[0]
        assert "demo-pass" not in result.stderr + result.stdout
        assert tree_hashes(tmp_path / f"m-{mode:o}") == served_tree(repo_tree, VERSION)


def test_private_netrc_gives_no_warning(scm_double, tmp_path):
    result, _ = _netrc_run(scm_double, tmp_path, 0o600)
    assert result.returncode == 0, result.stderr
    assert "warning:" not in result.stderr


# ---- names a case- or normalisation-insensitive filesystem would merge -------------------------

def _refused_before_any_download(double, repo_tree, tmp_path, extra_lines):
    """The listing plus ``extra_lines`` (paths, percent-encoded as UTF-8): mirror exit 2 with one error
    line, nothing but the listing fetched, nothing written."""
    listing = listing_path(repo_tree, VERSION)
    root = f"{double.base_url}/Downloads/packages/"
    listing.write_text(listing.read_text() + "".join(f"{root}{quote(p)}\n" for p in extra_lines))
    double.clear_log()
    result = mirror(double, tmp_path / "m")
    assert result.returncode == 2, result.stderr
    errors = stderr_lines(result)
    assert len(errors) == 1 and errors[0].startswith("error:"), result.stderr
    assert [r for r in double.log if r.relpath != f"listings/{VERSION}.txt"] == []
    assert tree_hashes(tmp_path / "m") == {}
    return errors[0]


def test_state_folder_in_another_case_is_refused_on_every_system(scm_double, repo_tree, tmp_path):
    """A case-insensitive filesystem (or a copy of the mirror onto one) would write it into the state folder."""
    for bad in (".AMSREPOMIRROR/records/x.json", ".AmsRepoMirror/locks/run", "common/x.AMSREPOMIRROR-partial"):
        error = _refused_before_any_download(scm_double, repo_tree, tmp_path, [bad])
        assert repr(bad) in error and ("state folder" in error or "reserved name" in error), error
        write_listing(repo_tree, VERSION, scm_double.base_url)


def test_names_that_differ_only_in_normalisation_are_refused(scm_double, repo_tree, tmp_path):
    nfc, nfd = "common/caf\u00e9.tgz", "common/cafe\u0301.tgz"
    error = _refused_before_any_download(scm_double, repo_tree, tmp_path, [nfc, nfd])
    assert "normalisation" in error and repr(nfc) in error and repr(nfd) in error, error


def test_names_that_differ_only_in_case_are_kept_on_linux_with_a_warning(scm_double, repo_tree, tmp_path):
    write_file(repo_tree, "common/Docs/readme.txt", 300, seed="upper")
    write_file(repo_tree, "common/docs/readme.txt", 200, seed="lower")
    _relist(repo_tree, scm_double)
    result = mirror(scm_double, tmp_path / "m")
    assert result.returncode == 0, result.stderr
    assert tree_hashes(tmp_path / "m") == served_tree(repo_tree, VERSION)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert "'common/Docs' and 'common/docs' differ only in case" in warnings[0]
    assert "case-insensitive filesystem" in warnings[0]

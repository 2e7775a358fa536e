"""A first run's probe brings the first bytes of a larger file and its download goes on from them with If-Range:
what the mirror ends with must be one file as the double serves it, never the start of one version joined to the
rest of another."""

import os
import time

import pytest
from clihelp import cli_env, run_cli, served_tree, tree_hashes

from amsrepomirror.testing.repository import repository_files

VERSION = "AMS2026.1"
PROBE = 64 * 1024  # [http] first_bytes of tests/luigi-test.cfg


def mirror(double, dest):
    return run_cli("mirror", "--version", VERSION, "--mirror", dest, "--listing-url", double.listing_url(VERSION),
                   env=cli_env())


def a_larger_file(repo_tree) -> str:
    packages = repo_tree / "Downloads" / "packages"
    larger = [p for p in repository_files(repo_tree)
              if not p.startswith("licensed/") and PROBE * 2 < (packages / p).stat().st_size < 8 * 1024 * 1024]
    assert larger, "the repository must hold a file larger than the probe"
    return max(larger, key=lambda p: (packages / p).stat().st_size)


@pytest.mark.slow
def test_a_file_rewritten_within_the_second_of_its_last_modified_is_never_spliced(scm_double, repo_tree, tmp_path):
    """A server that sends no ETag: If-Range then carries Last-Modified, which (RFC 9110, 13.1.5) ties nothing
    when the file may change again within that second (Last-Modified not at least a second before the answer's
    Date). The file is rewritten, same length, same second, between the probe of its first bytes and the rest."""
    path = a_larger_file(repo_tree)
    served = repo_tree / "Downloads" / "packages" / path
    second = int(time.time()) + 30  # written "now": the probe's Date is not a second after it
    os.utime(served, ns=(second * 10**9, second * 10**9))
    scm_double.misbehave(path, etag="none")
    calls = []

    def rewrite():  # the second GET of the file (the first is the probe): it changed in that same second
        calls.append(1)
        if len(calls) == 2:
            data = served.read_bytes()
            served.write_bytes(bytes(b ^ 0xFF for b in data))
            os.utime(served, ns=(second * 10**9 + 5 * 10**8,) * 2)

    scm_double.on_request(path, rewrite, times=None, method="GET")
    dest = tmp_path / "m"
    done = mirror(scm_double, dest)
    held = tree_hashes(dest).get(path)
    assert held is None or held == served_tree(repo_tree, VERSION)[path], (
        f"the mirror holds {path} as no version the server ever served (exit {done.returncode}): {done.stderr}")


def _interrupted_first_run(double, repo_tree, dest):
    """A first run whose transfer of a larger file is cut after 1 MiB, the server then answering 503 to
    everything: the file fails, its part (the probe's bytes and the 1 MiB after them) stays."""
    path = a_larger_file(repo_tree)
    double.spare_probes(PROBE)
    double.cut_after(path, nbytes=1024 * 1024, method="GET",
                     then=lambda: double.fail_status("*", status=503, times=None))
    done = mirror(double, dest)
    assert done.returncode != 0 and path not in tree_hashes(dest), done.stderr
    double.clear_faults()
    double.spare_probes(0)
    double.clear_log()
    return path


@pytest.mark.slow
def test_a_rerun_after_an_interrupted_first_run_goes_on_from_its_part(scm_double, repo_tree, tmp_path):
    dest = tmp_path / "m"
    path = _interrupted_first_run(scm_double, repo_tree, dest)
    again = mirror(scm_double, dest)
    assert again.returncode == 0, again.stderr
    assert tree_hashes(dest) == served_tree(repo_tree, VERSION)
    gets = [r for r in scm_double.records("GET", path)]
    assert gets and int(gets[0].range.split("=")[1].split("-")[0]) > PROBE, [(r.range, r.body_bytes) for r in gets]


@pytest.mark.slow
def test_a_file_changed_after_an_interrupted_first_run_is_fetched_whole_never_joined(scm_double, repo_tree, tmp_path):
    from amsrepomirror.testing.repository import change_file
    dest = tmp_path / "m"
    path = _interrupted_first_run(scm_double, repo_tree, dest)
    change_file(repo_tree, path, seed=77)
    again = mirror(scm_double, dest)
    assert tree_hashes(dest).get(path) in (None, served_tree(repo_tree, VERSION)[path]), again.stderr
    assert again.returncode == 0, again.stderr

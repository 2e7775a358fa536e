"""Listed files a bundle does not carry (not licensed for the account, left out by --platform): recorded in
the mirror and bundle manifests, told by verify and unpack, kept in the receipt."""

import json

import pytest
from clihelp import run_cli, tree_hashes

from amsrepomirror.bundle.sums import read_sums, write_sums
from amsrepomirror.online.workspace import Workspace
from amsrepomirror.testing.repository import change_file, repository_files, write_file, write_listing

pytestmark = pytest.mark.slow  # every test here is of the slow tier (make test-all)

VERSION, OLD = "AMS2026.1", "AMS2025.1"
UNLICENSED, MACOS, WINDOWS = "not licensed (HTTP 401)", "platform macos excluded", "platform windows excluded"


def bundle(url, mirror, out, *extra):
    return run_cli("bundle", "--version", VERSION, "--mirror", mirror, "--listing-url", url, "--out", out,
                   "--chunk-size", "1MiB", "--platform", "linux", *extra)


def lacking_of(path):
    return {e["path"]: e["reason"] for e in json.loads(path.read_text()).get("lacking", [])}


def expected_reason(path):
    if path.startswith("licensed/"):
        return UNLICENSED
    return MACOS if "macos" in path else WINDOWS


def test_unlicensed_and_excluded_files_are_told_by_verify_unpack_and_receipt(scm_double, repo_tree, tmp_path):
    for i in range(25):  # more than are listed one per line
        write_file(repo_tree, f"licensed/extra-{i:02d}.tar.zst", 1000, seed=i)
    write_listing(repo_tree, VERSION, scm_double.base_url)
    url, mirror, amshome = scm_double.listing_url(VERSION), tmp_path / "mirror", tmp_path / "ams"
    amshome.mkdir()
    made = bundle(url, mirror, tmp_path / "full")
    assert made.returncode == 0, made.stderr

    missing = set(repository_files(repo_tree)) - set(tree_hashes(mirror))
    expected = {p: expected_reason(p) for p in missing}
    assert {MACOS, WINDOWS, UNLICENSED} <= set(expected.values()) and len(expected) > 20
    assert lacking_of(Workspace(mirror).manifest_path(VERSION)) == expected
    assert lacking_of(tmp_path / "full" / "manifest.json") == expected

    first = sorted(expected)[:20]
    verified = run_cli("verify", tmp_path / "full")
    assert verified.returncode == 0, verified.stderr
    assert f"the bundle lacks {len(expected)} listed file(s)" in verified.stdout
    assert all(f"  {p}  ({expected[p]})" in verified.stdout for p in first)
    assert f"  … and {len(expected) - 20} more" in verified.stdout
    assert sorted(expected)[20] not in verified.stdout

    unpacked = run_cli("unpack", tmp_path / "full", "--amshome", amshome)
    assert unpacked.returncode == 0, unpacked.stderr
    assert f"repository lacks {len(expected)} listed file(s)" in unpacked.stderr
    assert all(f"  {p}  ({expected[p]})" in unpacked.stderr for p in first)
    assert lacking_of(amshome / ".amsrepomirror-receipt.json") == expected

    told = run_cli("receipt", "--amshome", amshome, "--out", tmp_path / "receipt.json")
    assert told.returncode == 0, told.stderr
    assert f"receipt: the installed tree lacks {len(expected)} listed file(s)" in told.stderr
    assert lacking_of(tmp_path / "receipt.json") == expected

    # A delta carries the list of its target, and its unpack keeps it in the receipt.
    linux = sorted(p for p in tree_hashes(mirror) if p.startswith("linux/"))[0]
    change_file(repo_tree, linux, seed="delta")
    delta = bundle(url, mirror, tmp_path / "delta", "--since", "last")
    assert delta.returncode == 0, delta.stderr
    assert lacking_of(tmp_path / "delta" / "manifest.json") == expected
    unpacked = run_cli("unpack", tmp_path / "delta", "--amshome", amshome)
    assert unpacked.returncode == 0, unpacked.stderr
    assert f"repository lacks {len(expected)} listed file(s)" in unpacked.stderr
    assert lacking_of(amshome / ".amsrepomirror-receipt.json") == expected


def test_strict_authentication_records_no_refused_file_but_platform_exclusions(scm_double, repo_tree, tmp_path):
    url, mirror = scm_double.listing_url(VERSION), tmp_path / "mirror"
    refused = bundle(url, mirror, tmp_path / "b", "--strict-authentication")
    assert refused.returncode == 3, refused.stderr
    assert not (Workspace(mirror).manifest_path(VERSION)).exists()

    write_listing(repo_tree, VERSION, scm_double.base_url,
                  [p for p in repository_files(repo_tree) if not p.startswith("licensed/")])
    made = bundle(url, mirror, tmp_path / "b", "--strict-authentication")
    assert made.returncode == 0, made.stderr
    lacking = lacking_of(tmp_path / "b" / "manifest.json")
    assert lacking and set(lacking.values()) == {MACOS, WINDOWS}
    assert lacking == lacking_of(Workspace(mirror).manifest_path(VERSION))


def test_a_bundle_of_several_versions_lacks_what_none_of_them_holds(scm_double, repo_tree, tmp_path):
    new = repository_files(repo_tree)
    write_file(repo_tree, f"{OLD}.yml", 500, seed="old")
    old = write_listing(repo_tree, OLD, scm_double.base_url,
                        [f"{OLD}.yml"] + [p for p in new if p.startswith(("licensed/", "macos/", "linux/"))])
    mirror = tmp_path / "mirror"
    made = run_cli("bundle", "--mirror", mirror, "--out", tmp_path / "b", "--chunk-size", "1MiB", "--platform", "linux",
                   *[a for v in (VERSION, OLD) for a in ("--version", v, "--listing-url", scm_double.listing_url(v))])
    assert made.returncode == 0, made.stderr
    missing = (set(new) | set(old)) - set(tree_hashes(mirror))
    assert lacking_of(tmp_path / "b" / "manifest.json") == {p: expected_reason(p) for p in missing}


def test_a_lacking_list_outside_the_vocabulary_is_refused(scm_double, tmp_path):
    made = bundle(scm_double.listing_url(VERSION), tmp_path / "mirror", tmp_path / "b")
    assert made.returncode == 0, made.stderr
    path = tmp_path / "b" / "manifest.json"
    body = json.loads(path.read_text())
    body["lacking"][0]["reason"] = "lost on the way"
    path.write_text(json.dumps(body))
    write_sums(tmp_path / "b", list(read_sums(tmp_path / "b")))
    result = run_cli("verify", tmp_path / "b")
    assert result.returncode == 4
    assert "field lacking[0].reason is 'lost on the way'" in result.stderr

"""Receipts: what every unpack records, `amsrepomirror receipt`, and receipts given as a delta's BASE."""

import json

import pytest
from clihelp import run_cli, served_tree

from amsrepomirror.bundle.receipt import InstalledFile, make_receipt, receipt_tree, tree_identity
from amsrepomirror.errors import IntegrityError
from amsrepomirror.testing.repository import change_file
from amsrepomirror.testing.scmdouble import DEMO_PASSWORD

VERSION = "AMS2026.1"


def errors(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def carried(scm_double, repo_tree, tmp_path):
    """A mirror, its full bundle unpacked into an AMSHOME, and the receipt written for carrying back."""
    url, mirror, amshome = scm_double.listing_url(VERSION), tmp_path / "mirror", tmp_path / "ams"
    amshome.mkdir()
    assert run_cli("bundle", "--version", VERSION, "--mirror", mirror, "--listing-url", url, "--out", tmp_path / "full",
                   "--chunk-size", "1MiB").returncode == 0
    assert run_cli("unpack", tmp_path / "full", "--amshome", amshome).returncode == 0
    result = run_cli("receipt", "--amshome", amshome, "--out", tmp_path / "receipt.json")
    assert result.returncode == 0, result.stderr
    return url, mirror, amshome, tmp_path / "receipt.json"


@pytest.mark.slow
def test_receipt_records_the_installed_tree_and_no_secret(carried, repo_tree, tmp_path):
    url, mirror, amshome, path = carried
    text = path.read_text()
    assert DEMO_PASSWORD not in text
    receipt = json.loads(text)
    assert receipt["version"] == VERSION and receipt["bundle_path"] == str(tmp_path / "full")
    assert receipt["bundle_created"] == json.loads((tmp_path / "full" / "manifest.json").read_text())["created"]
    tree = receipt_tree(receipt, path)
    assert {r.path: r.sha256 for r in tree} == served_tree(repo_tree, VERSION)
    for row in tree:  # mtime and inode as the placed files have them
        st = (amshome / "repository" / row.path).stat()
        assert (row.size, row.mtime_ns, row.ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    assert receipt["tree_sha256"] == tree_identity(tree)


def test_a_large_tree_is_stored_compressed_and_reads_back():
    rows = [InstalledFile(f"common/tiny/{i:06d}.dat", i, f"{i:064x}", 10**18 + i, i) for i in range(5000)]
    receipt = make_receipt("ab" * 32, VERSION, "/b", tree=rows, bundle_created="2026-01-31T12:00:00Z")
    assert "tree" not in receipt and len(json.dumps(receipt)) < 256 * 1024
    assert receipt_tree(json.loads(json.dumps(receipt)), "r") == rows
    receipt["tree_gz"] = receipt["tree_gz"][:-40]
    with pytest.raises(IntegrityError, match="receipt r is damaged"):
        receipt_tree(receipt, "r")


@pytest.mark.slow
def test_a_damaged_receipt_or_one_of_another_version_is_refused_as_base(carried, scm_double, repo_tree, tmp_path):
    url, mirror, amshome, path = carried
    change_file(repo_tree, "linux/x86_64/adf-2026.101.tar.zst", seed="next")

    def delta_since(base):
        return run_cli("bundle", "--version", VERSION, "--mirror", mirror, "--listing-url", url,
                       "--out", tmp_path / "delta", "--since", base)

    text = path.read_text()
    (tmp_path / "cut.json").write_text(text[: len(text) // 2])
    result = delta_since(tmp_path / "cut.json")
    assert result.returncode == 4 and "cut.json" in errors(result)[0] and "carry it again" in errors(result)[0]

    body = json.loads(text)
    body["tree"][0][2] = "0" * 64  # a row edited: the tree no longer has its identity
    (tmp_path / "edited.json").write_text(json.dumps(body))
    result = delta_since(tmp_path / "edited.json")
    assert result.returncode == 4 and "edited.json is damaged" in errors(result)[0]

    body = json.loads(text)
    body["version"] = "AMS2025.1"
    (tmp_path / "unnamed.json").write_text(json.dumps(body))  # its version_paths name another version
    result = delta_since(tmp_path / "unnamed.json")
    assert result.returncode == 4 and "unnamed.json is damaged" in errors(result)[0]
    body["version_paths"] = {"AMS2025.1": body["version_paths"].pop(VERSION)}
    (tmp_path / "other.json").write_text(json.dumps(body))
    result = delta_since(tmp_path / "other.json")
    assert result.returncode == 2 and "AMS2025.1" in errors(result)[0] and len(errors(result)) == 1
    assert not (tmp_path / "delta").exists()


def test_receipt_of_an_amshome_without_one_is_a_usage_error(tmp_path):
    result = run_cli("receipt", "--amshome", tmp_path, "--out", tmp_path / "r.json")
    assert result.returncode == 2 and "no receipt" in errors(result)[0]
    assert not (tmp_path / "r.json").exists()

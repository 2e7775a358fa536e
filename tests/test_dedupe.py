"""Identical bytes under several paths are carried once: the real command against the SCM double, real 7-Zip.

The bundle's chunks hold one path per distinct content; manifest.json lists the other paths as
``copies``; unpack places them (hard links in staging) and checks the whole tree.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from clihelp import run_cli, served_tree, tree_hashes

from amsrepomirror.bundle.format import BundleManifest
from amsrepomirror.bundle.receipt import receipt_tree
from amsrepomirror.offline.placement import read_receipt
from amsrepomirror.testing.repository import PLACEHOLDER_ORIGIN, make_repository, write_file, write_listing
from amsrepomirror.testing.scmdouble import ScmDouble

VERSION, OLD = "AMS2026.1", "AMS2025.1"
PACKAGES = Path("Downloads") / "packages"
SOURCE = "linux/x86_64/adf-2026.101.tar.zst"
COPIES = ["linux/x86_64/adf-latest.tar.zst", "mirror-of/linux/adf-2026.101.tar.zst"]


def copy_in_double(root, source, *paths):
    """Serve ``source``'s bytes again under each of ``paths``."""
    for path in paths:
        (root / PACKAGES / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / PACKAGES / source, root / PACKAGES / path)


def members(manifest):
    return sorted(m for c in manifest.chunks for m in c.members)


def bundle(double, mirror, out, *extra):
    return run_cli("bundle", "--version", VERSION, "--mirror", mirror, "--listing-url", double.listing_url(VERSION),
                   "--out", out, "--chunk-size", "1MiB", *extra)


@pytest.mark.slow
def test_identical_bytes_under_several_paths_are_carried_once_and_unpacked_to_every_path(repo_tree, tmp_path):
    copy_in_double(repo_tree, SOURCE, *COPIES)
    write_listing(repo_tree, VERSION)
    out, amshome = tmp_path / "bundle", tmp_path / "ams"
    amshome.mkdir()
    with ScmDouble(repo_tree) as double:
        made = bundle(double, tmp_path / "mirror", out)
    assert made.returncode == 0, made.stderr
    served = served_tree(repo_tree, VERSION)
    assert all(served[p] == served[SOURCE] for p in COPIES)

    manifest = BundleManifest.read(out / "manifest.json")
    carried = {f.path for f in manifest.files}
    assert SOURCE in carried and not carried & set(COPIES)
    assert [p for p in members(manifest) if p in [SOURCE] + COPIES] == [SOURCE]  # in one chunk, once
    assert sorted((c.path, c.source, c.sha256) for c in manifest.copies) == [(p, SOURCE, served[SOURCE]) for p in COPIES]
    assert {t.path: t.sha256 for t in manifest.tree} == served
    # a tool that cannot place copies refuses the manifest rather than install a tree without them
    assert json.loads((out / "manifest.json").read_text())["schema"] != "amsrepomirror/bundle-manifest/1"  # 2, or 3
    assert "cp -- linux/x86_64/adf-2026.101.tar.zst linux/x86_64/adf-latest.tar.zst" in (out / "README.txt").read_text()

    verified = run_cli("verify", out)
    assert verified.returncode == 0, verified.stderr
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True, timeout=120)
    assert sums.returncode == 0, sums.stdout + sums.stderr

    unpacked = run_cli("unpack", out, "--amshome", amshome)
    assert unpacked.returncode == 0, unpacked.stderr
    assert tree_hashes(amshome / "repository") == served
    receipt = read_receipt(amshome)
    assert {r.path: r.sha256 for r in receipt_tree(receipt, amshome / "receipt")} == served
    again = run_cli("unpack", out, "--amshome", amshome)  # the receipt's tree check counts the copies
    assert again.returncode == 0 and "already holds this bundle" in again.stderr, again.stderr


def test_a_copy_whose_source_is_not_carried_fails_verify(repo_tree, tmp_path):
    copy_in_double(repo_tree, SOURCE, COPIES[0])
    write_listing(repo_tree, VERSION)
    out = tmp_path / "bundle"
    with ScmDouble(repo_tree) as double:
        assert bundle(double, tmp_path / "mirror", out).returncode == 0
    text = (out / "manifest.json").read_text().replace(f'"source": "{SOURCE}"', '"source": "no/such/file"')
    (out / "manifest.json").write_text(text)
    result = run_cli("verify", out)
    assert result.returncode == 4
    assert "manifest.json: inconsistent (copy linux/x86_64/adf-latest.tar.zst does not name a carried file" in result.stderr


@pytest.mark.slow
def test_a_file_of_one_version_under_another_path_in_the_second_is_carried_once(tmp_path):
    root = tmp_path / "scm"
    new = make_repository(root, VERSION)
    renamed = "linux/x86_64/adf-2025.999.tar.zst"  # OLD holds SOURCE's bytes under another name
    write_file(root, f"{OLD}.yml", 2_000, seed="old")
    copy_in_double(root, SOURCE, renamed)
    write_listing(root, VERSION, PLACEHOLDER_ORIGIN, new)
    write_listing(root, OLD, PLACEHOLDER_ORIGIN, [f"{OLD}.yml", renamed])
    out, amshome = tmp_path / "bundle", tmp_path / "ams"
    amshome.mkdir()
    with ScmDouble(root) as double:
        versions = [a for v in (VERSION, OLD) for a in ("--version", v, "--listing-url", double.listing_url(v))]
        made = run_cli("bundle", "--mirror", tmp_path / "mirror", *versions, "--out", out, "--chunk-size", "1MiB")
    assert made.returncode == 0, made.stderr
    manifest = BundleManifest.read(out / "manifest.json")
    assert [(c.path, c.source) for c in manifest.copies] == [(SOURCE, renamed)]  # carried: the first in path order
    assert [p for p in members(manifest) if p in (SOURCE, renamed)] == [renamed]
    assert run_cli("verify", out).returncode == 0
    unpacked = run_cli("unpack", out, "--amshome", amshome)
    assert unpacked.returncode == 0, unpacked.stderr
    served = served_tree(root, VERSION)
    assert tree_hashes(amshome / "repository") == {p: served[p] for p in set(new + [f"{OLD}.yml", renamed]) if p in served}


@pytest.mark.slow
def test_a_delta_carries_new_bytes_once_and_applies_on_a_base_with_copies(repo_tree, tmp_path):
    copy_in_double(repo_tree, SOURCE, *COPIES)
    write_listing(repo_tree, VERSION)
    mirror, amshome = tmp_path / "mirror", tmp_path / "ams"
    amshome.mkdir()
    with ScmDouble(repo_tree) as double:
        assert bundle(double, mirror, tmp_path / "full").returncode == 0
        assert run_cli("unpack", tmp_path / "full", "--amshome", amshome).returncode == 0
        write_file(repo_tree, "common/data/new.dat", 40_000, seed="new")
        copy_in_double(repo_tree, "common/data/new.dat", "common/data/new-copy.dat", "other/new.dat")
        write_listing(repo_tree, VERSION, double.base_url)
        made = bundle(double, mirror, tmp_path / "delta", "--since", "last")
    assert made.returncode == 0, made.stderr
    delta = BundleManifest.read(tmp_path / "delta" / "manifest.json")
    assert delta.is_delta and [f.path for f in delta.files] == ["common/data/new-copy.dat"]  # first in path order
    assert sorted(c.path for c in delta.copies) == ["common/data/new.dat", "other/new.dat"]
    assert "cp -- common/data/new-copy.dat other/new.dat" in (tmp_path / "delta" / "README.txt").read_text()
    assert run_cli("verify", tmp_path / "delta").returncode == 0
    applied = run_cli("unpack", tmp_path / "delta", "--amshome", amshome)
    assert applied.returncode == 0, applied.stderr
    assert tree_hashes(amshome / "repository") == served_tree(repo_tree, VERSION)

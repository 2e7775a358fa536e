"""Stable chunks: a full bundle made after a small change shares every untouched chunk, by name and
byte for byte, with the previous one (content-defined cuts, fixed split offsets, content names,
deterministic 7z writing); ``plan --since`` lists what to copy; a rebuild in place keeps them."""

import json
import random
import subprocess
from pathlib import Path

import pytest
from clihelp import run_cli, sha256, tree_hashes
from servers import require_tool

from amsrepomirror.bundle.format import MANIFEST_NAME, part_member
from amsrepomirror.online.manifest import FileEntry
from amsrepomirror.pack.plan import chunk_plan
from amsrepomirror.testing.repository import change_file, make_repository

VERSION = "AMS2026.1"
BIG = "linux/x86_64/python3.11-2026.101.tar.zst"  # 3 MiB: split over many chunks of 256 KiB
MIDDLE = "macos/arm64/band-2026.101.tar.zst"       # a small file in the middle of the tree
KiB, MiB = 1024, 1024**2


def bundle(url, mirror, out, *extra):
    return run_cli("bundle", "--version", VERSION, "--mirror", mirror, "--listing-url", url, "--out", out,
                   "--chunk-size", "256KiB", *extra)


def chunk_list(out):
    """[(name, sha256)] of the bundle's chunks, in its manifest's order; each sha256 checked on disk."""
    listed = [(c["name"], c["sha256"]) for c in json.loads((Path(out) / MANIFEST_NAME).read_text())["chunks"]]
    for name, digest in listed:
        assert sha256(Path(out) / name) == digest, name
    return listed


def chunks_of(out, path):
    """Names of the chunks holding (parts of) ``path``."""
    files = json.loads((Path(out) / MANIFEST_NAME).read_text())["files"]
    return [p["chunk"] for f in files if f["path"] == path for p in f["parts"]]


@pytest.fixture
def repo_tree(tmp_path):
    """conftest's repository with 300 tiny files more, so the small-file stream spans many chunks
    (conftest's ``scm_double`` serves it)."""
    root = tmp_path / "scm"
    make_repository(root, VERSION, tiny=300)
    return root


def check_by_hand_and_with_the_tool(out, mirror, amshome):
    """sha256sum -c, 7zz t, verify and unpack all accept the bundle, and unpack gives the mirror's tree."""
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True, timeout=120)
    assert sums.returncode == 0, sums.stdout + sums.stderr
    sevenzip = require_tool("7zz")
    for name, _ in chunk_list(out):
        tested = subprocess.run([sevenzip, "t", name], cwd=out, capture_output=True, text=True, timeout=120)
        assert tested.returncode == 0, tested.stdout
    assert run_cli("verify", out).returncode == 0
    amshome.mkdir()
    unpacked = run_cli("unpack", out, "--amshome", amshome)
    assert unpacked.returncode == 0, unpacked.stderr
    assert tree_hashes(amshome / "repository") == tree_hashes(mirror)


@pytest.mark.slow
def test_same_tree_bundled_twice_gives_identical_chunk_files(scm_double, tmp_path):
    url = scm_double.listing_url(VERSION)
    mirror = tmp_path / "mirror"
    assert bundle(url, mirror, tmp_path / "one").returncode == 0
    assert bundle(url, mirror, tmp_path / "two", "--offline").returncode == 0
    one, two = chunk_list(tmp_path / "one"), chunk_list(tmp_path / "two")
    assert len(one) >= 10
    assert one == two
    for name, _ in one:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


@pytest.mark.slow
def test_small_change_in_the_middle_changes_at_most_two_chunks(scm_double, repo_tree, tmp_path):
    url = scm_double.listing_url(VERSION)
    mirror, old, new = tmp_path / "mirror", tmp_path / "old", tmp_path / "new"
    assert bundle(url, mirror, old).returncode == 0
    change_file(repo_tree, MIDDLE, seed="v2")
    assert bundle(url, mirror, new).returncode == 0

    before, after = set(chunk_list(old)), set(chunk_list(new))
    assert len(after) >= 10
    changed = sorted(name for name, _ in after - before)
    assert 1 <= len(changed) <= 2, changed
    assert set(chunks_of(new, MIDDLE)) <= set(changed)
    # the split file's parts: the same chunks, the same bytes
    big_parts = chunks_of(old, BIG)
    assert len(big_parts) >= 10 and chunks_of(new, BIG) == big_parts
    for name in big_parts:
        assert (old / name).read_bytes() == (new / name).read_bytes()

    # plan --since lists exactly the chunks to copy (and those of the old bundle no longer used)
    since = run_cli("plan", "--mirror", mirror, "--chunk-size", "256KiB", "--since", old)
    assert since.returncode == 0, since.stderr
    to_copy = sorted(line.split()[1] for line in since.stdout.splitlines() if line.startswith("  copy "))
    to_remove = sorted(line.split()[1] for line in since.stdout.splitlines() if line.startswith("  remove "))
    assert to_copy == changed
    assert to_remove == sorted(name for name, _ in before - after)
    assert f"copy {len(changed)} of {len(after)} chunks" in since.stdout
    by_manifest = run_cli("plan", "--mirror", mirror, "--chunk-size", "256KiB", "--since", old / MANIFEST_NAME)
    copy_lines = [line for line in since.stdout.splitlines() if line.startswith(("  copy ", "  remove "))]
    assert [line for line in by_manifest.stdout.splitlines() if line.startswith(("  copy ", "  remove "))] == copy_lines

    check_by_hand_and_with_the_tool(new, mirror, tmp_path / "ams")


@pytest.mark.slow
def test_rebuild_in_the_previous_folder_keeps_unchanged_chunks_and_drops_old_ones(scm_double, repo_tree, tmp_path):
    url = scm_double.listing_url(VERSION)
    mirror, out = tmp_path / "mirror", tmp_path / "bundle"
    assert bundle(url, mirror, out).returncode == 0
    before = dict(chunk_list(out))
    stamps = {name: ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) for name in before}
    change_file(repo_tree, MIDDLE, seed="v2")
    rebuilt = bundle(url, mirror, out)
    assert rebuilt.returncode == 0, rebuilt.stderr
    after = dict(chunk_list(out))
    assert sorted(p.name for p in out.glob("*.7z")) == sorted(after)  # chunks no longer planned are gone
    kept = set(before) & set(after)
    assert len(kept) >= len(after) - 2
    for name in kept:  # not rewritten: the same file
        assert ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) == stamps[name]
    # the same chunks as a bundle written into an empty folder
    assert bundle(url, mirror, tmp_path / "fresh", "--offline").returncode == 0
    assert chunk_list(tmp_path / "fresh") == list(after.items())
    check_by_hand_and_with_the_tool(out, mirror, tmp_path / "ams")


@pytest.mark.slow
def test_chunk_list_order_is_what_verify_follows_not_name_order(scm_double, tmp_path):
    """Content names sort in no useful order: the parts of a split file must follow the manifest's chunk list."""
    mirror, out = tmp_path / "mirror", tmp_path / "bundle"
    assert bundle(scm_double.listing_url(VERSION), mirror, out).returncode == 0
    names = [name for name, _ in chunk_list(out)]
    parts = chunks_of(out, BIG)
    assert [names.index(c) for c in parts] == sorted(names.index(c) for c in parts)
    assert parts != sorted(parts)  # so name order would be wrong for this split file
    body = json.loads((out / MANIFEST_NAME).read_text())
    body["chunks"].reverse()
    (out / MANIFEST_NAME).write_text(json.dumps(body))
    bad = run_cli("verify", out, "--no-test")
    assert bad.returncode == 4
    assert f"parts of {BIG} are not in successive chunks" in bad.stdout + bad.stderr


# --- the plan alone: locality on a larger synthetic tree ----------------------------------------------

def synthetic(count=2000, seed=1):
    rng = random.Random(seed)
    files = [FileEntry(f"pkgs/{i % 37:02d}/file-{i:05d}.bin", rng.randrange(0, 400 * KiB), f"{i:064x}")
             for i in range(count)]
    files += [FileEntry(f"pkgs/big/huge-{i}.iso", 9 * MiB + i * 12345, f"{count + i:064x}") for i in range(3)]
    return files


def changed_chunks(before, after):
    """Chunks of ``after`` that ``before`` lacks: by name and by what they hold."""
    def held(plan):
        return {(s.name, tuple((p.member, p.offset, p.size) for p in s.pieces)) for s in plan}
    return held(after) - held(before)


@pytest.mark.parametrize("compression", ["copy", "lzma2"])
def test_plan_is_local_after_a_change_an_insert_and_a_removal(compression):
    files = synthetic()
    plan = chunk_plan(files, 4 * MiB, VERSION, compression)
    assert len(plan) >= 100
    middle = len(files) // 2
    changed = files[:middle] + [FileEntry(files[middle].path, files[middle].size + 7, "f" * 64)] + files[middle + 1:]
    assert len(changed_chunks(plan, chunk_plan(changed, 4 * MiB, VERSION, compression))) <= 2
    added = files + [FileEntry("pkgs/17/file-00500.bin-new", 100 * KiB, "e" * 64)]
    assert len(changed_chunks(plan, chunk_plan(added, 4 * MiB, VERSION, compression))) <= 2
    removed = files[:middle] + files[middle + 1:]
    assert len(changed_chunks(plan, chunk_plan(removed, 4 * MiB, VERSION, compression))) <= 2


def test_split_offsets_depend_only_on_the_file():
    files = synthetic()
    huge = "pkgs/big/huge-1.iso"

    def parts(plan):
        return [(p.member, p.offset, p.size, s.name) for s in plan for p in s.pieces if p.path == huge]

    before = parts(chunk_plan(files, 4 * MiB, VERSION))
    grown = [FileEntry(f.path, f.size * 2, "d" * 64) if f.path < huge else f for f in files]
    after = parts(chunk_plan(grown, 4 * MiB, VERSION))
    assert len(before) == 3 and after == before
    assert [m for m, *_ in before] == [part_member(huge, i) for i in (1, 2, 3)]

"""Delta bundles end to end: full bundle → unpack → SCM changes → bundle --since → unpack, with real 7-Zip
chunks, the SCM double and the command line."""

import json
import os
import shutil
from pathlib import Path

import pytest
from clihelp import kill_unpack_repeatedly, run_cli, served_tree, sha256, tree_hashes

from amsrepomirror.bundle.format import MANIFEST_NAME, README_NAME, BundleManifest
from amsrepomirror.bundle.sums import write_sums
from amsrepomirror.offline.delta import link_or_copy
from amsrepomirror.offline.placement import RECEIPT, InstalledFile, read_receipt, tree_identity
from amsrepomirror.testing.scmdouble import change_file, remove_file, write_file, write_listing

VERSION = "AMS2026.1"
PACKAGES = Path("Downloads") / "packages"

#: One month of upstream changes each: changed, removed, added, renamed (same bytes).
MONTHS = [
    {"changed": ["linux/x86_64/adf-2026.101.tar.zst", "common/docs/manual-2026.101.tar.zst"],
     "removed": "macos/arm64/band-2026.101.tar.zst", "added": "common/data/added-1.dat",
     "renamed": ("windows/x86_64/band-2026.101.zip", "windows/x86_64/band-2026.102.zip")},
    {"changed": ["linux/x86_64/python3.11-2026.101.tar.zst", "common/data/basis-sets-2026.101.tar.zst"],
     "removed": "linux/x86_64/dftb-2026.101.tar.zst", "added": "common/data/added-2/new.dat",
     "renamed": ("macos/arm64/adf-2026.101.tar.zst", "macos/arm64/adf-2026.102.tar.zst")},
]


def bundle(url, mirror, out, *extra):
    return run_cli("bundle", "--version", VERSION, "--mirror", mirror, "--listing-url", url, "--out", out,
                   "--chunk-size", "1MiB", *extra)


def unpack(out, amshome, *extra):
    return run_cli("unpack", out, "--amshome", amshome, *extra)


def errors(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def change_month(repo_tree, double, month):
    """Apply one month of MONTHS to the double's tree and listing."""
    for i, path in enumerate(month["changed"]):
        change_file(repo_tree, path, seed=f"{month['added']}-{i}", size=150_000 + i if i else None)
    remove_file(repo_tree, month["removed"])
    write_file(repo_tree, month["added"], 50_000, seed=month["added"])
    old, new = month["renamed"]
    shutil.copyfile(repo_tree / PACKAGES / old, repo_tree / PACKAGES / new)
    remove_file(repo_tree, old)
    write_listing(repo_tree, VERSION, double.base_url)


def amshome_state(amshome):
    """Everything an unpack could change in AMSHOME: names, the tree's bytes, the receipt's bytes."""
    return (sorted(os.listdir(amshome)), tree_hashes(amshome / "repository"), (amshome / RECEIPT).read_bytes())


@pytest.fixture
def installed(scm_double, repo_tree, tmp_path):
    """A mirror, its full bundle, and an AMSHOME holding it."""
    url, mirror, amshome = scm_double.listing_url(VERSION), tmp_path / "mirror", tmp_path / "ams"
    amshome.mkdir()
    assert bundle(url, mirror, tmp_path / "full").returncode == 0
    result = unpack(tmp_path / "full", amshome)
    assert result.returncode == 0, result.stderr
    return url, mirror, amshome


def test_delta_since_last_carries_only_what_changed_and_unpacks_to_the_new_tree(installed, scm_double, repo_tree, tmp_path):
    url, mirror, amshome = installed
    old_tree = tree_hashes(amshome / "repository")
    month = MONTHS[0]
    change_month(repo_tree, scm_double, month)
    new_tree = served_tree(repo_tree, VERSION)

    plan = run_cli("plan", "--mirror", mirror, "--version", VERSION, "--since", "last", "--chunk-size", "1MiB")
    assert plan.returncode == 0, plan.stderr  # plans against the mirror as last verified (before the change)
    result = bundle(url, mirror, tmp_path / "d1", "--since", "last")
    assert result.returncode == 0, result.stderr

    delta = BundleManifest.read(tmp_path / "d1" / MANIFEST_NAME)
    old, new = month["renamed"]
    assert delta.base == read_receipt(amshome)["tree_sha256"]
    assert sorted(f.path for f in delta.files) == sorted(month["changed"] + [month["added"]])
    assert [(r.path, r.source) for r in delta.reused] == [(new, old)]  # renamed: its bytes are not carried
    assert sorted(delta.removed) == sorted([month["removed"], old])
    assert {t.path: t.sha256 for t in delta.target} == new_tree
    carried = sum(f.size for f in delta.files)
    chunk_bytes = sum(c.stat().st_size for c in (tmp_path / "d1").glob("*.7z"))
    print(f"delta chunk bytes / new and changed bytes = {chunk_bytes / carried:.4f}")
    assert chunk_bytes <= 1.05 * carried
    assert "DELTA" in (tmp_path / "d1" / README_NAME).read_text() and delta.base in (tmp_path / "d1" / README_NAME).read_text()
    assert run_cli("verify", tmp_path / "d1").returncode == 0

    unchanged = "linux/x86_64/band-2026.101.tar.zst"
    changed = month["changed"][0]
    before = {p: os.stat(amshome / "repository" / p).st_ino for p in (unchanged, changed)}
    result = unpack(tmp_path / "d1", amshome, "--keep-previous")
    assert result.returncode == 0, result.stderr
    assert tree_hashes(amshome / "repository") == new_tree
    assert not (amshome / "repository" / month["removed"]).exists()
    # Unchanged files are shared with the old tree; the old tree was never written to.
    assert os.stat(amshome / "repository" / unchanged).st_ino == before[unchanged]
    assert tree_hashes(amshome / "repository.previous") == old_tree
    assert os.stat(amshome / "repository.previous" / changed).st_ino == before[changed]
    assert read_receipt(amshome)["tree_sha256"] == tree_identity(delta.target)

    state = amshome_state(amshome)
    again = unpack(tmp_path / "d1", amshome)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr
    assert amshome_state(amshome) == state


def test_a_receipt_bases_a_delta_without_the_mirror_history(installed, scm_double, repo_tree, tmp_path):
    url, mirror, amshome = installed
    result = run_cli("receipt", "--amshome", amshome, "--out", tmp_path / "carried-back.json")
    assert result.returncode == 0, result.stderr
    shutil.rmtree(mirror / ".amsrepomirror" / "bundles")  # the online side forgot every bundle it wrote
    change_month(repo_tree, scm_double, MONTHS[0])
    assert "history" in errors(bundle(url, mirror, tmp_path / "nope", "--since", "last"))[0]
    result = bundle(url, mirror, tmp_path / "d1", "--since", tmp_path / "carried-back.json")
    assert result.returncode == 0, result.stderr
    assert sorted(f.path for f in BundleManifest.read(tmp_path / "d1" / MANIFEST_NAME).files) == \
        sorted(MONTHS[0]["changed"] + [MONTHS[0]["added"]])
    result = unpack(tmp_path / "d1", amshome)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(amshome / "repository") == served_tree(repo_tree, VERSION)


def test_deltas_chain_and_are_refused_out_of_order_or_on_another_base(installed, scm_double, repo_tree, tmp_path):
    url, mirror, amshome = installed
    change_month(repo_tree, scm_double, MONTHS[0])
    assert bundle(url, mirror, tmp_path / "d1", "--since", "last").returncode == 0
    change_month(repo_tree, scm_double, MONTHS[1])
    assert bundle(url, mirror, tmp_path / "d2", "--since", "last").returncode == 0
    d1 = BundleManifest.read(tmp_path / "d1" / MANIFEST_NAME)
    d2 = BundleManifest.read(tmp_path / "d2" / MANIFEST_NAME)
    assert d2.base == tree_identity(d1.target) and d2.base_created == d1.created

    state = amshome_state(amshome)
    early = unpack(tmp_path / "d2", amshome)  # Δ2 before Δ1
    assert early.returncode == 2, early.stderr
    assert d1.created in errors(early)[0] and d2.base[:12] in errors(early)[0]
    assert read_receipt(amshome)["tree_sha256"][:12] in errors(early)[0]
    assert amshome_state(amshome) == state

    for step in ("d1", "d2"):
        result = unpack(tmp_path / step, amshome)
        assert result.returncode == 0, result.stderr
    assert tree_hashes(amshome / "repository") == served_tree(repo_tree, VERSION)

    state = amshome_state(amshome)
    stale = unpack(tmp_path / "d1", amshome)  # another base than what is installed now
    assert stale.returncode == 2 and len(errors(stale)) == 1, stale.stderr
    assert d1.base[:12] in errors(stale)[0] and tree_identity(d2.target)[:12] in errors(stale)[0]
    assert amshome_state(amshome) == state

    elsewhere = tmp_path / "other-ams"
    elsewhere.mkdir()
    result = unpack(tmp_path / "d1", elsewhere)
    assert result.returncode == 2 and "no receipt" in errors(result)[0], result.stderr
    assert sorted(os.listdir(elsewhere)) == [".amsrepomirror-unpack.log", ".amsrepomirror.lock"]


def test_a_hand_edit_the_delta_relies_on_is_refused_and_nothing_changes(installed, scm_double, repo_tree, tmp_path):
    url, mirror, amshome = installed
    change_month(repo_tree, scm_double, MONTHS[0])
    assert bundle(url, mirror, tmp_path / "d1", "--since", "last").returncode == 0
    edited = amshome / "repository" / "linux" / "x86_64" / "band-2026.101.tar.zst"  # unchanged upstream
    st = edited.stat()
    with open(edited, "r+b") as f:  # same size, other bytes, in place (same inode)
        f.write(b"hand edit")
    state = amshome_state(amshome)
    result = unpack(tmp_path / "d1", amshome)
    assert result.returncode == 4 and len(errors(result)) == 1, result.stderr
    assert "linux/x86_64/band-2026.101.tar.zst" in errors(result)[0] and "receipt" in errors(result)[0]
    assert amshome_state(amshome) == state

    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns))  # size, mtime and inode as recorded: only --deep sees it
    state = amshome_state(amshome)
    result = unpack(tmp_path / "d1", amshome, "--deep")
    assert result.returncode == 4 and "band-2026.101.tar.zst" in errors(result)[0], result.stderr
    assert amshome_state(amshome) == state


def test_a_delta_with_a_missing_chunk_or_a_target_that_does_not_match_is_refused(installed, scm_double, repo_tree, tmp_path):
    url, mirror, amshome = installed
    change_month(repo_tree, scm_double, MONTHS[1])  # the big file changes: its parts span chunks
    assert bundle(url, mirror, tmp_path / "d", "--since", "last").returncode == 0
    state = amshome_state(amshome)

    broken = tmp_path / "missing-chunk"
    shutil.copytree(tmp_path / "d", broken)
    victim = sorted(broken.glob("*.7z"))[1]
    victim.unlink()
    result = unpack(broken, amshome)
    assert result.returncode == 4 and victim.name in errors(result)[0], result.stderr
    assert amshome_state(amshome) == state

    lying = tmp_path / "lying-target"
    shutil.copytree(tmp_path / "d", lying)
    body = json.loads((lying / MANIFEST_NAME).read_text())
    kept = next(t for t in body["target"] if t["path"] == "linux/x86_64/band-2026.101.tar.zst")
    kept["sha256"] = "0" * 64  # consistent SHA256SUMS: only the manifest's own lists disagree
    (lying / MANIFEST_NAME).write_text(json.dumps(body))
    write_sums(lying, [p.name for p in lying.glob("*.7z")] + [MANIFEST_NAME, README_NAME])
    result = unpack(lying, amshome)
    assert result.returncode == 4 and "band-2026.101.tar.zst" in errors(result)[0], result.stderr
    assert amshome_state(amshome) == state


def test_kill_9_during_a_delta_unpack_leaves_old_or_new_and_a_rerun_completes(installed, scm_double, repo_tree, tmp_path):
    url, mirror, amshome = installed
    old_tree = tree_hashes(amshome / "repository")
    change_month(repo_tree, scm_double, MONTHS[1])
    assert bundle(url, mirror, tmp_path / "d", "--since", "last").returncode == 0
    new_tree = served_tree(repo_tree, VERSION)
    seen = kill_unpack_repeatedly(tmp_path / "d", amshome, old_tree, new_tree, seed=8)
    assert "old" in seen
    result = unpack(tmp_path / "d", amshome)
    assert result.returncode == 0, result.stderr
    assert tree_hashes(amshome / "repository") == new_tree
    assert not [p.name for p in amshome.iterdir() if p.name.startswith(".repository") or p.name == "repository.previous"]


def test_a_link_refused_across_filesystems_becomes_a_checked_copy(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test folder")
    src = Path(shm) / f"amsrepomirror-test-{os.getpid()}"
    try:
        src.write_bytes(b"package bytes" * 1000)
        st = src.stat()
        row = InstalledFile("a/b.dat", st.st_size, sha256(src), st.st_mtime_ns, st.st_ino)
        assert link_or_copy(src, tmp_path / "copy", row) is False  # EXDEV: copied
        assert sha256(tmp_path / "copy") == row.sha256
        src.write_bytes(b"other bytes!" * 1000)
        with pytest.raises(Exception, match="receipt"):
            link_or_copy(src, tmp_path / "copy2", row)
    finally:
        src.unlink(missing_ok=True)

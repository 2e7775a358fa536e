"""Delta bundles end to end: full bundle → unpack → SCM changes → bundle --since → unpack, with real 7-Zip
chunks, the SCM double and the command line."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from clihelp import kill_unpack_repeatedly, run_cli, served_tree, sha256, tree_hashes
from servers import require_tool
from test_bitrot import rot

from amsrepomirror.bundle.format import MANIFEST_NAME, README_NAME, BundleManifest
from amsrepomirror.bundle.receipt import InstalledFile, receipt_tree, tree_identity
from amsrepomirror.bundle.sums import write_sums
from amsrepomirror.offline.apply_delta import link_or_copy
from amsrepomirror.offline.installed import installed_file_problem
from amsrepomirror.offline.placement import RECEIPT, read_receipt
from amsrepomirror.testing.repository import change_file, remove_file, write_file, write_listing

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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_delta_that_changes_nothing_unpacks_as_nothing_to_do(installed, tmp_path):
    url, mirror, amshome = installed
    before = amshome_state(amshome)
    result = bundle(url, mirror, tmp_path / "same", "--since", "last")  # SCM changed nothing this month
    assert result.returncode == 0, result.stderr
    assert BundleManifest.read(tmp_path / "same" / MANIFEST_NAME).files == []
    result = unpack(tmp_path / "same", amshome)
    assert result.returncode == 0, result.stderr
    # Checked as any delta first (run, not skipped as installed), then found to change nothing.
    assert errors(result) == [] and f"unpack: {amshome}/repository already holds the tree this delta makes; nothing " \
        "to do" in result.stderr.splitlines(), result.stderr
    assert amshome_state(amshome) == before  # the receipt still names the bundle that placed the tree


@pytest.mark.slow
def test_a_delta_that_changes_nothing_is_still_refused_unsigned_where_signatures_are_required(installed, keys, tmp_path):
    url, mirror, amshome = installed
    _, allowed = keys
    before = amshome_state(amshome)
    assert bundle(url, mirror, tmp_path / "same", "--since", "last").returncode == 0  # unsigned
    result = unpack(tmp_path / "same", amshome, "--allowed-signers", allowed)
    assert result.returncode == 4 and "not signed" in errors(result)[0], result.stderr
    assert amshome_state(amshome) == before


@pytest.mark.slow
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


@pytest.mark.slow
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

    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns))  # size, mtime and inode as recorded: the hash sees it
    state = amshome_state(amshome)
    for extra in ((), ("--deep",)):
        result = unpack(tmp_path / "d1", amshome, *extra)
        assert result.returncode == 4 and "band-2026.101.tar.zst" in errors(result)[0], result.stderr
        assert amshome_state(amshome) == state


@pytest.mark.slow
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


@pytest.mark.slow
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


#: Unchanged upstream in MONTHS[0]: a delta of that month reuses the installed file.
REUSED = "linux/x86_64/band-2026.101.tar.zst"


def copy_amshome(how, src: Path, dst: Path) -> None:
    """A copy of AMSHOME as a backup restore or a move makes it: same bytes, new inodes."""
    if how == "cp -a":
        subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    elif how == "rsync -a":
        subprocess.run([require_tool("rsync"), "-a", f"{src}/", f"{dst}/"], check=True)
    else:  # a copy that does not keep mtimes, then touched for good measure
        subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
        for path in (dst / "repository").rglob("*"):
            os.utime(path, ns=(1_000_000_000, 1_000_000_000))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["cp -a", "rsync -a", "cp -r, new mtimes"])
def test_a_copied_or_restored_amshome_takes_its_delta_and_other_bytes_are_still_refused(installed, scm_double,
                                                                                       repo_tree, tmp_path, how):
    url, mirror, amshome = installed
    change_month(repo_tree, scm_double, MONTHS[0])
    assert bundle(url, mirror, tmp_path / "d1", "--since", "last").returncode == 0
    new_tree = served_tree(repo_tree, VERSION)
    recorded = {r.path: r for r in receipt_tree(read_receipt(amshome), amshome)}
    for mode in ("", "--trust-installed", "--deep"):
        home = tmp_path / f"copy{mode}"
        copy_amshome(how, amshome, home)
        st = os.stat(home / "repository" / REUSED)
        assert st.st_ino != recorded[REUSED].ino  # the receipt's inodes are gone
        assert (st.st_mtime_ns == recorded[REUSED].mtime_ns) == (how != "cp -r, new mtimes")
        assert run_cli("verify", "--installed", "--amshome", home).returncode == 0  # the scrub goes by bytes too
        result = unpack(tmp_path / "d1", home, *([mode] if mode else []))
        assert result.returncode == 0, (mode, result.stderr)
        assert tree_hashes(home / "repository") == new_tree
        assert os.stat(home / "repository" / REUSED).st_ino == st.st_ino  # still linked, not copied
        assert read_receipt(home)["tree_sha256"] == tree_identity(BundleManifest.read(tmp_path / "d1" / MANIFEST_NAME).target)

    home = tmp_path / "copy-edited"  # new inodes: the fast path cannot vouch, the hash decides
    copy_amshome(how, amshome, home)
    rot(home / "repository" / REUSED, 5000)
    state = amshome_state(home)
    result = unpack(tmp_path / "d1", home, "--trust-installed")
    assert result.returncode == 4 and len(errors(result)) == 1, result.stderr
    assert REUSED in errors(result)[0] and "--reinstall" in errors(result)[0]
    assert amshome_state(home) == state


@pytest.mark.slow
def test_a_rotted_installed_file_a_delta_reuses_is_refused_unless_the_admin_trusts_the_receipt(installed, scm_double,
                                                                                              repo_tree, tmp_path):
    url, mirror, amshome = installed
    change_month(repo_tree, scm_double, MONTHS[0])
    assert bundle(url, mirror, tmp_path / "d1", "--since", "last").returncode == 0
    new_tree = served_tree(repo_tree, VERSION)
    victim = amshome / "repository" / REUSED
    inode = victim.stat().st_ino
    rot(victim, 70_000)  # in place: size, mtime and inode are the receipt's
    assert victim.stat().st_ino == inode
    state = amshome_state(amshome)

    result = unpack(tmp_path / "d1", amshome)
    assert result.returncode == 4 and len(errors(result)) == 1, result.stderr
    line = errors(result)[0]
    assert REUSED in line and "sha256 the receipt records" in line and "unpack a full bundle with --reinstall" in line
    assert amshome_state(amshome) == state

    scrub = run_cli("verify", "--installed", "--amshome", amshome)
    assert scrub.returncode == 4, scrub.stderr
    assert f"  changed: {REUSED}: bytes other than the sha256" in scrub.stderr
    assert "1 changed, 0 missing, 0 added" in errors(scrub)[0]

    # The fast path is the admin's explicit choice (a setting; --deep overrides it): it takes the file by size,
    # mtime and inode, and the receipt says so.
    site = tmp_path / "site.cfg"
    site.write_text("[unpack]\ntrust_installed = true\n")
    result = run_cli("--config", site, "unpack", tmp_path / "d1", "--amshome", amshome, "--deep")
    assert result.returncode == 4 and REUSED in errors(result)[0], result.stderr
    assert amshome_state(amshome) == state
    result = run_cli("--config", site, "unpack", tmp_path / "d1", "--amshome", amshome)
    assert result.returncode == 0, result.stderr
    receipt = read_receipt(amshome)
    assert receipt["trust_installed"] is True
    assert tree_hashes(amshome / "repository")[REUSED] != new_tree[REUSED]  # what trusting costs
    scrub = run_cli("verify", "--installed", "--amshome", amshome)
    assert scrub.returncode == 4 and REUSED in scrub.stderr and "--trust-installed" in scrub.stderr, scrub.stderr

    assert bundle(url, mirror, tmp_path / "full-new").returncode == 0
    result = unpack(tmp_path / "full-new", amshome, "--reinstall")
    assert result.returncode == 0, result.stderr
    assert tree_hashes(amshome / "repository") == new_tree and "trust_installed" not in read_receipt(amshome)
    scrub = run_cli("verify", "--installed", "--amshome", amshome)
    assert scrub.returncode == 0 and "is intact" in scrub.stdout, scrub.stderr


def test_the_installed_file_check_hashes_unless_trusted_metadata_still_matches(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"package bytes" * 100)
    st = path.stat()
    row = InstalledFile("f", st.st_size, sha256(path), st.st_mtime_ns, st.st_ino)
    assert installed_file_problem(path, row) == ("", (st.st_ino, st.st_size, st.st_mtime_ns))
    rot(path, 7)
    assert "sha256" in installed_file_problem(path, row).problem
    assert installed_file_problem(path, row, trust_metadata=True).problem == ""  # the fast path cannot see rot
    moved = InstalledFile("f", row.size, row.sha256, row.mtime_ns, row.ino + 1)
    assert "sha256" in installed_file_problem(path, moved, trust_metadata=True).problem  # other inode: hashed
    assert "size" in installed_file_problem(path, InstalledFile("f", row.size + 1, row.sha256, 0, 0)).problem
    path.unlink()
    assert installed_file_problem(path, row).problem == "missing"
    path.symlink_to(tmp_path)
    assert installed_file_problem(path, row).problem == "not a regular file"

"""Several AMS versions in one mirror: the real command against the SCM double serving two listings from one tree.

AMS2026.1 is the double's default repository; AMS2025.1 lists its own index and two packages of its own
plus every other file of AMS2026.1 (about half of it), as SCM's server shares files between versions.
"""

import json
import os
import shutil
import subprocess

import pytest
from clihelp import REPO, run_cli, served_bytes, served_more_than_once, served_tree, tree_hashes
from hypothesis import given, settings
from hypothesis import strategies as st

from amsrepomirror.bundle.delta_rules import removal_problems
from amsrepomirror.bundle.format import SCHEMA_3, SCHEMA_3_SINCE, BundleManifest, TreeFile
from amsrepomirror.bundle.receipt import tree_identity
from amsrepomirror.bundle.sums import write_sums
from amsrepomirror.errors import IntegrityError, UsageError
from amsrepomirror.offline.placement import RECEIPT, read_receipt
from amsrepomirror.online.manifest import FileEntry
from amsrepomirror.online.workspace import Workspace
from amsrepomirror.pack.delta_base import Base, select_delta
from amsrepomirror.testing.repository import (
    PLACEHOLDER_ORIGIN,
    change_file,
    make_repository,
    remove_file,
    write_file,
    write_listing,
)
from amsrepomirror.testing.scmdouble import ScmDouble

NEW, OLD = "AMS2026.1", "AMS2025.1"
OLD_ONLY = ["AMS2025.1.yml", "linux/x86_64/adf-2025.101.tar.zst", "common/docs/manual-2025.101.tar.zst"]


@pytest.fixture
def two_versions(tmp_path):
    """(server root, {version: listed paths}): two listings in one tree that share half of AMS2026.1's files."""
    root = tmp_path / "scm"
    new = make_repository(root, NEW)
    for i, rel in enumerate(OLD_ONLY):
        write_file(root, rel, 50_000 + i, seed="old")
    shared = [p for p in new if p != f"{NEW}.yml"][::2]
    old = write_listing(root, OLD, PLACEHOLDER_ORIGIN, OLD_ONLY + shared)
    return root, {NEW: new, OLD: old}


@pytest.fixture
def double(two_versions):
    with ScmDouble(two_versions[0]) as server:
        yield server


def served(root, paths):
    """The part of the served tree that ``paths`` lists (what the demo account may read)."""
    tree = served_tree(root, NEW)
    return {p: tree[p] for p in paths if p in tree}


def version_args(double, *versions):
    return [arg for v in versions for arg in ("--version", v, "--listing-url", double.listing_url(v))]


def file_gets(double):
    """Relative paths of every GET the double answered with a file (listings left out), one per request."""
    return [r.relpath for r in double.records("GET") if r.status in (200, 206) and not (r.relpath or "").startswith("listings/")]


def manifest_files(mirror, version):
    body = json.loads((mirror / ".amsrepomirror" / f"{version}.manifest.json").read_text())
    return {f["path"]: f["sha256"] for f in body["files"]}


@pytest.mark.slow
def test_two_versions_share_one_mirror_and_each_shared_file_is_fetched_once(double, two_versions, tmp_path):
    root, listed = two_versions
    mirror, report = tmp_path / "mirror", tmp_path / "report.json"
    result = run_cli("mirror", "--mirror", mirror, *version_args(double, NEW, OLD), "--report", report)
    assert result.returncode == 0, result.stderr
    union = served(root, listed[NEW] + listed[OLD])
    assert tree_hashes(mirror) == union
    assert (mirror / f"{NEW}.yml").is_file() and (mirror / f"{OLD}.yml").is_file()
    # Every byte served once: a shared file is fetched for one version only, and a larger file's download
    # goes on from the first bytes its probe brought ([http] first_bytes) instead of fetching them again.
    shared = set(listed[NEW]) & set(listed[OLD]) & set(union)
    assert len(shared) >= 10 and set(served_bytes(double)) == set(union)
    assert served_more_than_once(double, root) == {}
    # The state holds both versions, each with its own verified manifest.
    assert Workspace(mirror).held_versions() == [OLD, NEW]
    for version in (NEW, OLD):
        assert manifest_files(mirror, version) == served(root, listed[version])
    summary = json.loads(report.read_text())
    assert [s["version"] for s in summary["versions"]] == [NEW, OLD] and summary["exit_code"] == 0
    assert f"({NEW})" in result.stderr and f"({OLD})" in result.stderr

    double.clear_log()
    again = run_cli("mirror", "--mirror", mirror, *version_args(double, OLD, NEW))
    assert again.returncode == 0, again.stderr
    assert file_gets(double) == []


@pytest.mark.slow
def test_a_run_for_one_version_never_deletes_files_another_version_lists(double, two_versions, tmp_path):
    root, listed = two_versions
    mirror = tmp_path / "mirror"
    for version in (NEW, OLD):  # two separate runs: the mirror's state must remember both
        assert run_cli("mirror", "--mirror", mirror, *version_args(double, version)).returncode == 0
    old_manifest = (mirror / ".amsrepomirror" / f"{OLD}.manifest.json").read_bytes()

    pruned = run_cli("mirror", "--mirror", mirror, *version_args(double, NEW), "--delete-unlisted")
    assert pruned.returncode == 0, pruned.stderr
    assert tree_hashes(mirror) == served(root, listed[NEW] + listed[OLD])
    assert "0 unlisted file(s) deleted" in pruned.stderr
    assert (mirror / ".amsrepomirror" / f"{OLD}.manifest.json").read_bytes() == old_manifest
    offline = run_cli("bundle", "--mirror", mirror, "--version", OLD, "--offline", "--out", tmp_path / "old-bundle",
                      "--chunk-size", "1MiB")
    assert offline.returncode == 0, offline.stderr  # the other version's files are still what it verified

    # AMS2026.1 drops a file of its own and one it shares with AMS2025.1: only the first goes.
    in_mirror = set(tree_hashes(mirror))
    shared = sorted(set(listed[NEW]) & set(listed[OLD]) & in_mirror)[0]
    own = sorted((set(listed[NEW]) - set(listed[OLD]) - {f"{NEW}.yml"}) & in_mirror)[0]
    remove_file(root, own)
    write_listing(root, NEW, double.base_url, [p for p in listed[NEW] if p not in (own, shared)])
    pruned = run_cli("mirror", "--mirror", mirror, *version_args(double, NEW), "--delete-unlisted")
    assert pruned.returncode == 0, pruned.stderr
    assert not (mirror / own).exists() and (mirror / shared).is_file()
    assert "1 unlisted file(s) deleted" in pruned.stderr
    assert tree_hashes(mirror) == served(root, listed[OLD] + [p for p in listed[NEW] if p != own])


@pytest.mark.slow
def test_bundle_of_two_versions_carries_each_file_once_and_unpacks_both_indexes(double, two_versions, tmp_path):
    root, listed = two_versions
    mirror, bundle, amshome = tmp_path / "mirror", tmp_path / "bundle", tmp_path / "amshome"
    made = run_cli("bundle", "--mirror", mirror, *version_args(double, NEW, OLD), "--out", bundle, "--chunk-size", "1MiB")
    assert made.returncode == 0, made.stderr
    union = served(root, listed[NEW] + listed[OLD])
    manifest = BundleManifest.read(bundle / "manifest.json")
    assert (manifest.version, manifest.versions) == (NEW, [NEW, OLD])
    # version_paths guards removals: an older tool must refuse it (schema 3, naming the tool it needs), not skip it
    body = json.loads((bundle / "manifest.json").read_text())
    assert (body["schema"], body["requires_tool"]) == (SCHEMA_3, SCHEMA_3_SINCE)
    assert sorted(f.path for f in manifest.files) == sorted(union)  # each path once
    carried = sum(c.size for c in manifest.chunks)
    assert carried <= 1.02 * manifest.total_bytes + 4096 * len(manifest.chunks)
    assert f"{NEW} + {OLD}" in (bundle / "README.txt").read_text()
    assert run_cli("verify", bundle).returncode == 0
    plan = run_cli("plan", "--mirror", mirror, "--version", NEW, "--version", OLD, "--chunk-size", "1MiB")
    assert plan.returncode == 0 and f"{len(union)} files" in plan.stdout, plan.stdout + plan.stderr

    amshome.mkdir()
    (amshome / "VERSION.txt").write_text(f"{OLD}\n")  # the bundle holds the installed version (its second)
    unpacked = run_cli("unpack", bundle, "--amshome", amshome)
    assert unpacked.returncode == 0, unpacked.stderr
    repository = amshome / "repository"
    assert tree_hashes(repository) == union
    assert (repository / f"{NEW}.yml").is_file() and (repository / f"{OLD}.yml").is_file()
    for version in (NEW, OLD):
        assert f"SCM_AMSPKGS_REPO={repository / f'{version}.yml'}" in unpacked.stdout

    other = tmp_path / "other-home"
    other.mkdir()
    (other / "VERSION.txt").write_text("AMS2024.1\n")
    refused = run_cli("unpack", bundle, "--amshome", other)
    assert refused.returncode == 2
    assert f"bundle is for {NEW} and {OLD} but AMSHOME {other} has AMS2024.1 installed" in refused.stderr
    assert not (other / "repository").exists()


@pytest.mark.slow
def test_listing_urls_must_pair_with_versions(double, tmp_path):
    result = run_cli("mirror", "--mirror", tmp_path / "m", "--version", NEW, "--version", OLD,
                     "--listing-url", double.listing_url(NEW))
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == ("error: give --listing-url once per --version, in the same order "
                                             "(2 version(s), 1 listing URL(s))")
    twice = run_cli("mirror", "--mirror", tmp_path / "m", *version_args(double, NEW, NEW))
    assert twice.returncode == 2 and twice.stderr.splitlines()[0] == f"error: --version {NEW} is given more than once"
    assert double.log == [] and not (tmp_path / "m").exists()


@pytest.mark.parametrize("versions, why", [
    (["AMS2025.1", "AMS2026.1"], "AMS2026.1 (the field version) first"),
    (["AMS2026.1", "AMS2026.1"], "expected distinct versions"),
    (["AMS2026.1", "../AMS2025.1"], "expected AMS versions"),
    ([], "not a list of AMS versions"),
])
def test_bundle_manifest_versions_are_checked(tmp_path, versions, why):
    path = tmp_path / "manifest.json"
    body = json.loads(BundleManifest(version=NEW, files=[], chunks=[]).to_json())
    assert body["versions"] == [NEW]
    body["versions"] = versions
    path.write_text(json.dumps(body))
    with pytest.raises(IntegrityError, match="field versions"):
        BundleManifest.read(path)
    with pytest.raises(IntegrityError, match=why.replace("(", r"\(").replace(")", r"\)")):
        BundleManifest.read(path)


def test_make_refuses_several_versions_without_a_mirror_folder():
    several = subprocess.run(["make", "-s", "bundle", "VERSION=AMS2025.1 AMS2026.1", "-o", "venv"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert several.returncode != 0
    assert "give the shared mirror folder: MIRROR=DIR" in several.stdout
    dry = subprocess.run(["make", "-n", "bundle", "VERSION=AMS2025.1 AMS2026.1", "MIRROR=/srv/ams", "-o", "venv"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "--version AMS2025.1 --version AMS2026.1 --mirror /srv/ams --out bundle/AMS2025.1+AMS2026.1" in dry.stdout


# --- deltas on an AMSHOME that holds two versions -------------------------------------------------

def bundle_of(double, mirror, out, *versions, since=None, drop=()):
    extra = (["--since", since] if since else []) + [arg for v in drop for arg in ("--drop-version", v)]
    return run_cli("bundle", "--mirror", mirror, *version_args(double, *versions), "--out", out,
                   "--chunk-size", "1MiB", *extra)


def amshome_state(amshome):
    """Everything an unpack could change in AMSHOME: names, the tree's bytes, the receipt's bytes."""
    return (sorted(os.listdir(amshome)), tree_hashes(amshome / "repository"), (amshome / RECEIPT).read_bytes())


def errors(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def both_installed(double, two_versions, tmp_path):
    """One full bundle of both versions (AMS2025.1 named first, so it is the bundle's ``version``) unpacked
    into one AMSHOME; then AMS2025.1 changes upstream: one file of its own changes, one of its own and one
    it shared with AMS2026.1 leave its listing. Returns (mirror, AMSHOME, served tree of AMS2026.1,
    served tree of AMS2025.1 now, the file only AMS2025.1 lost)."""
    root, listed = two_versions
    mirror, amshome = tmp_path / "mirror", tmp_path / "ams"
    made = bundle_of(double, mirror, tmp_path / "full", OLD, NEW)
    assert made.returncode == 0, made.stderr
    amshome.mkdir()
    (amshome / "VERSION.txt").write_text(f"{NEW}\n")
    unpacked = run_cli("unpack", tmp_path / "full", "--amshome", amshome)
    assert unpacked.returncode == 0, unpacked.stderr
    receipt = read_receipt(amshome)
    assert receipt["schema"] == "amsrepomirror/receipt/2"
    assert {v: sorted(p) for v, p in receipt["version_paths"].items()} == {
        v: sorted(served(root, listed[v])) for v in (NEW, OLD)}

    change_file(root, OLD_ONLY[1], seed="next month")
    gone, shared = OLD_ONLY[2], sorted(set(listed[OLD]) & set(listed[NEW]))[0]
    remove_file(root, gone)
    old_now = write_listing(root, OLD, double.base_url, [p for p in listed[OLD] if p not in (gone, shared)])
    return mirror, amshome, served(root, listed[NEW]), served(root, old_now), gone


@pytest.mark.slow
def test_a_one_version_delta_since_last_keeps_the_other_version(double, both_installed, tmp_path):
    mirror, amshome, new_tree, old_tree, gone = both_installed
    made = bundle_of(double, mirror, tmp_path / "d1", OLD, since="last")
    assert made.returncode == 0, made.stderr
    delta = BundleManifest.read(tmp_path / "d1" / "manifest.json")
    assert delta.removed == [gone]  # not AMS2026.1's index, nor a file only AMS2026.1 lists, nor the shared one
    assert f"keeping {NEW}" in made.stderr
    assert (delta.version, delta.versions, delta.dropped) == (OLD, [OLD, NEW], [])
    assert {v: set(p) for v, p in delta.version_paths.items()} == {OLD: set(old_tree), NEW: set(new_tree)}
    assert [f.path for f in delta.files] == [OLD_ONLY[1]]

    unpacked = run_cli("unpack", tmp_path / "d1", "--amshome", amshome)
    assert unpacked.returncode == 0, unpacked.stderr
    assert tree_hashes(amshome / "repository") == {**new_tree, **old_tree}
    for version in (NEW, OLD):
        assert f"SCM_AMSPKGS_REPO={amshome / 'repository' / f'{version}.yml'}" in unpacked.stdout
    receipt = read_receipt(amshome)
    assert {v: set(p) for v, p in receipt["version_paths"].items()} == {OLD: set(old_tree), NEW: set(new_tree)}

    again = bundle_of(double, mirror, tmp_path / "d1-again", OLD, since="last")  # the same delta, from the same base
    assert again.returncode == 0, again.stderr
    assert BundleManifest.read(tmp_path / "d1-again" / "manifest.json").base == delta.base

    # The other version's --since last finds the bundles that hold it too (not only those that name it first).
    other = bundle_of(double, mirror, tmp_path / "d-new", NEW, since="last")
    assert other.returncode == 0, other.stderr
    nothing = BundleManifest.read(tmp_path / "d-new" / "manifest.json")
    assert (nothing.base, nothing.removed, nothing.files) == (tree_identity(delta.target), [], [])
    assert (nothing.versions, set(nothing.version_paths[OLD])) == ([NEW, OLD], set(old_tree))


@pytest.mark.slow
def test_a_version_is_dropped_only_when_both_sides_say_so(double, both_installed, tmp_path):
    mirror, amshome, new_tree, old_tree, gone = both_installed
    refused = bundle_of(double, mirror, tmp_path / "nope", OLD, since="last", drop=[OLD])
    assert refused.returncode == 2 and f"--drop-version {OLD}" in errors(refused)[0], refused.stderr
    made = bundle_of(double, mirror, tmp_path / "d", OLD, since="last", drop=[NEW])
    assert made.returncode == 0, made.stderr
    delta = BundleManifest.read(tmp_path / "d" / "manifest.json")
    assert (delta.versions, delta.dropped) == ([OLD], [NEW])
    body = json.loads((tmp_path / "d" / "manifest.json").read_text())  # dropped permits removals: schema 3
    assert (body["schema"], body["requires_tool"]) == (SCHEMA_3, SCHEMA_3_SINCE)
    assert f'unpack BUNDLE --amshome "$AMSHOME" --drop-version {NEW}' in (tmp_path / "d" / "README.txt").read_text()
    assert set(delta.removed) == (set(new_tree) - set(old_tree)) | {gone}

    state = amshome_state(amshome)
    unasked = run_cli("unpack", tmp_path / "d", "--amshome", amshome)
    assert unasked.returncode == 2 and len(errors(unasked)) == 1, unasked.stderr
    assert f"drops {NEW}" in errors(unasked)[0] and f"--drop-version {NEW}" in errors(unasked)[0]
    assert amshome_state(amshome) == state
    other = run_cli("unpack", tmp_path / "d", "--amshome", amshome, "--drop-version", NEW, "--drop-version", "AMS2024.1")
    assert other.returncode == 2 and "does not drop AMS2024.1" in errors(other)[0], other.stderr
    assert amshome_state(amshome) == state

    (amshome / "VERSION.txt").write_text(f"{OLD}\n")
    dropped = run_cli("unpack", tmp_path / "d", "--amshome", amshome, "--drop-version", NEW)
    assert dropped.returncode == 0, dropped.stderr
    assert tree_hashes(amshome / "repository") == old_tree
    assert {v: set(p) for v, p in read_receipt(amshome)["version_paths"].items()} == {OLD: set(old_tree)}


def reseal(bundle, edit):
    """Edit an unsigned bundle's manifest.json with ``edit`` and write SHA256SUMS to match: what an older
    tool, or a careless hand, could have written."""
    body = json.loads((bundle / "manifest.json").read_text())
    edit(body)
    (bundle / "manifest.json").write_text(json.dumps(body))
    write_sums(bundle, [p.name for p in bundle.glob("*.7z")] + ["manifest.json", "README.txt"])


@pytest.mark.slow
def test_unpack_refuses_a_delta_that_removes_what_another_installed_version_needs(double, both_installed, tmp_path):
    mirror, amshome, new_tree, old_tree, gone = both_installed
    made = bundle_of(double, mirror, tmp_path / "d", OLD, since="last", drop=[NEW])
    assert made.returncode == 0, made.stderr
    state = amshome_state(amshome)

    def as_older_tool(body):  # one version, nothing said about dropping, and no removed list to go by
        for key in ("dropped", "version_paths", "removed_files", "replaced_files"):
            body.pop(key, None)
        body["versions"], body["removed"] = [OLD], []

    hostile = tmp_path / "hostile"
    shutil.copytree(tmp_path / "d", hostile)
    reseal(hostile, as_older_tool)
    (amshome / "VERSION.txt").write_text(f"{OLD}\n")  # the installation that reads the updated version
    state = amshome_state(amshome)
    assert run_cli("verify", hostile).returncode == 0
    refused = run_cli("unpack", hostile, "--amshome", amshome)
    assert refused.returncode == 2 and len(errors(refused)) == 1, refused.stderr
    line = errors(refused)[0]
    assert f"file(s) that {NEW} still needs" in line and "nothing was changed" in line and "--drop-version" in line
    assert amshome_state(amshome) == state

    # A receipt of an older amsrepomirror does not say what each version needs: no delta may remove a file.
    receipt = json.loads((amshome / RECEIPT).read_text())
    receipt["schema"] = "amsrepomirror/receipt/1"
    del receipt["version_paths"]
    (amshome / RECEIPT).write_text(json.dumps(receipt))
    ok = bundle_of(double, mirror, tmp_path / "d1", OLD, since="last")
    assert ok.returncode == 0, ok.stderr
    state = amshome_state(amshome)
    old_receipt = run_cli("unpack", tmp_path / "d1", "--amshome", amshome)
    assert old_receipt.returncode == 2 and "does not say which files each AMS version needs" in errors(old_receipt)[0]
    assert "full bundle" in errors(old_receipt)[0]
    assert amshome_state(amshome) == state


@pytest.mark.slow
def test_a_full_bundle_of_one_version_removes_another_installed_version_only_when_asked(double, both_installed, tmp_path):
    mirror, amshome, new_tree, old_tree, gone = both_installed
    made = bundle_of(double, mirror, tmp_path / "old-only", OLD)
    assert made.returncode == 0, made.stderr
    state = amshome_state(amshome)
    refused = run_cli("unpack", tmp_path / "old-only", "--amshome", amshome)
    assert refused.returncode == 2 and len(errors(refused)) == 1, refused.stderr
    assert f"file(s) that {NEW} still needs" in errors(refused)[0] and "--drop-version" in errors(refused)[0]
    assert amshome_state(amshome) == state
    held = run_cli("unpack", tmp_path / "old-only", "--amshome", amshome, "--drop-version", OLD)
    assert held.returncode == 2 and f"holds {OLD} and installs it" in errors(held)[0], held.stderr
    assert amshome_state(amshome) == state

    (amshome / "VERSION.txt").write_text(f"{OLD}\n")
    dropped = run_cli("unpack", tmp_path / "old-only", "--amshome", amshome, "--drop-version", NEW)
    assert dropped.returncode == 0, dropped.stderr
    assert tree_hashes(amshome / "repository") == old_tree
    assert {v: set(p) for v, p in read_receipt(amshome)["version_paths"].items()} == {OLD: set(old_tree)}


# --- the rule itself, over many trees ----------------------------------------------------------------

PATHS = [f"{p}.dat" for p in "abcdefghij"]
VERSIONS = ["AMS2024.1", "AMS2025.1", "AMS2026.1"]


@st.composite
def delta_cases(draw):
    """A base of two or three versions (each needing some of PATHS), the version a delta updates, its
    files now (kept versions' files with the base's bytes, or now and then other bytes), and drops."""
    versions = VERSIONS[:draw(st.integers(2, 3))]
    held = {v: draw(st.sets(st.sampled_from(PATHS), min_size=1)) for v in versions}
    tree = [TreeFile(p, 1, f"{PATHS.index(p):064x}") for p in sorted(set().union(*held.values()))]
    updated = draw(st.sampled_from(versions))
    dropped = draw(st.sets(st.sampled_from([v for v in versions if v != updated])))
    now = draw(st.sets(st.sampled_from(PATHS), min_size=1))
    changed = draw(st.sets(st.sampled_from(sorted(now))))
    files = [FileEntry(p, 1, f"{PATHS.index(p) + (100 if p in changed else 0):064x}") for p in sorted(now)]
    base = Base(versions[0], tree, "", "the base", tuple(versions), held, tuple(sorted(dropped)))
    return base, updated, files


@pytest.mark.slow
@settings(derandomize=True, max_examples=150, deadline=None)
@given(delta_cases())
def test_a_delta_never_removes_what_a_kept_version_needs(case):
    base, updated, files = case
    kept = [v for v in base.all_versions if v != updated and v not in base.dropped]
    needed = {p for v in kept for p in base.version_paths[v]}
    at_base = {t.path: t for t in base.tree}
    clash = [f.path for f in files if f.path in needed and f.sha256 != at_base[f.path].sha256]
    if clash:
        with pytest.raises(UsageError, match="still needs it"):
            select_delta(base, files, updated)
        return
    delta = select_delta(base, files, updated)
    target = {t.path: t for t in delta.target}
    assert not needed & set(delta.removed)
    assert set(delta.removed) == set(at_base) - set(target)
    assert all(target[p] == at_base[p] for p in needed)
    assert all((target[f.path].size, target[f.path].sha256) == (f.size, f.sha256) for f in files)
    assert removal_problems(base.version_paths, delta.removed, {updated, *base.dropped}) == []
    assert delta.versions == [updated] + kept and set(delta.version_paths[updated]) == {f.path for f in files}
    # Without the kept versions' files, the same rule refuses the removal (naming the first such version).
    taken = sorted(needed - {f.path for f in files})
    if taken:
        why = removal_problems(base.version_paths, set(delta.removed) | {taken[0]}, {updated, *base.dropped})
        assert why and "still needs" in why[0]


@pytest.mark.parametrize("edit, why", [
    (lambda b: b.update(version_paths={NEW: ["AMS2026.1.yml"], OLD: ["nowhere.dat"]}), "not a path of its tree"),
    (lambda b: b.update(version_paths={NEW: ["AMS2026.1.yml"]}), "expected the versions"),
    (lambda b: b.update(version_paths={NEW: ["AMS2026.1.yml"], OLD: []}), "to no version"),
    (lambda b: b.update(dropped=[OLD]), "only a delta drops versions"),
])
def test_bundle_manifest_version_paths_and_drops_are_checked(tmp_path, edit, why):
    files = [{"path": p, "size": 1, "sha256": "0" * 64, "parts": [{"chunk": "chunk-" + "0" * 16 + ".7z", "member": p,
             "offset": 0, "size": 1, "sha256": "0" * 64}]} for p in ("AMS2026.1.yml", "AMS2025.1.yml")]
    body = json.loads(BundleManifest(version=NEW, files=[], chunks=[], versions=[NEW, OLD]).to_json())
    body["files"] = files
    edit(body)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(body))
    with pytest.raises(IntegrityError, match=why):
        BundleManifest.read(path)

"""The update cycle: what a monthly delta carries and what applying it costs (python -m bench.updates).

Driven through the command line against the SCM double, on a realistic tree (hundreds of files of
pseudo-random bytes, a few larger than a chunk):

1. ``bundle`` (mirror + full bundle), ``unpack`` into AMSHOME A.
2. A monthly-like change on the server: 5% of the files changed (same size, new bytes), 1% added,
   1% removed, one renamed with the same bytes.
3. ``bundle --since last``: delta chunk bytes ÷ bytes of new and changed files (target <= 1.05).
4. ``unpack`` of the delta into A against a full bundle of the new tree unpacked into a fresh AMSHOME B,
   and against ``rsync -a --ignore-times --files-from`` of the changed and added files into a copy of the
   old tree (plus ``rm`` of the removed ones; ``--ignore-times`` because a file rewritten within the
   second of its download keeps size and mtime, which rsync's quick check would take as unchanged).
   Every resulting tree is compared with the server's new tree by sha256. The delta unpack is timed
   as it runs by default (every installed file it reuses hashed before it is linked) and with
   ``--trust-installed`` (size, mtime and inode from the receipt), on the same delta and old tree.
5. Two versions sharing half their files by path (and two files by content under other paths):
   ``bundle --version A --version B`` chunk bytes ÷ distinct content bytes (target <= 1.02).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from amsrepomirror.bundle.format import MANIFEST_NAME, README_NAME, SUMS_NAME, BundleManifest
from amsrepomirror.offline.placement import RECEIPT
from amsrepomirror.testing.repository import PLACEHOLDER_ORIGIN, change_file, remove_file, write_file, write_listing
from amsrepomirror.testing.scmdouble import ScmDouble
from bench.common import ROOT, BenchError, Run, load_average, machine_info, ours_env, replace_section, tail, timed

MiB = 1024**2
from clihelp import served_tree, tree_hashes  # noqa: E402  (tests/clihelp.py: bench.common puts tests/ on sys.path)

DOC = ROOT / "docs" / "benchmarks.md"
HEADING = "## Update cycle: monthly delta bundles and several versions"
VERSION, OTHER = "AMS2026.1", "AMS2025.1"
PACKAGES = Path("Downloads") / "packages"
PLATFORMS = ("linux/x86_64", "macos/arm64", "windows/x86_64", "common/data")
DELTA_TARGET, MULTI_TARGET = 1.05, 1.02


@dataclass(frozen=True)
class Size:
    label: str
    total: int        # bytes of the first tree
    files: int        # package files besides the big ones
    chunk: int
    big: tuple[float, ...] = (1.1, 1.6, 2.3, 3.2)  # sizes of the files larger than a chunk, in chunks


FULL = Size("full", 1_200_000_000, 600, 64 * MiB)
QUICK = Size("quick", 50_000_000, 200, 4 * MiB)


# ---- the server's trees -----------------------------------------------------------------------


def tree_spec(size: Size, year: str, seed: str) -> dict[str, int]:
    """{path: size}: ``size.files`` packages of log-uniform sizes plus the big ones, adding up to ``size.total``."""
    rng = random.Random(seed)
    big = {f"{PLATFORMS[i % 3]}/bundle{i}-{year}.tar.zst": int(f * size.chunk) for i, f in enumerate(size.big)}
    weights = [10 ** rng.uniform(0, 3) for _ in range(size.files)]
    scale = (size.total - sum(big.values())) / sum(weights)
    small = {f"{PLATFORMS[i % len(PLATFORMS)]}/pkg{i:04d}-{year}.tar.zst": max(1, int(w * scale))
             for i, w in enumerate(weights)}
    return {**small, **big}


def write_tree(root: Path, spec: dict[str, int], seed: str) -> None:
    for rel, nbytes in spec.items():
        write_file(root, rel, nbytes, seed=seed)


def write_index(root: Path, version: str, files: int) -> str:
    index = f"{version}.yml"
    path = root / PACKAGES / index
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# synthetic benchmark index\nversion: {version}\nfiles: {files}\n")
    return index


@dataclass
class Change:
    changed: list[str]
    added: list[str]
    removed: list[str]
    renamed: tuple[str, str]


def monthly_change(root: Path, packages: Sequence[str], seed: str, small_sizes: Sequence[int]) -> Change:
    """5% of the files rewritten (same size), 1% added, 1% removed, one renamed with the same bytes."""
    rng = random.Random(seed)
    pool = sorted(packages)
    rng.shuffle(pool)
    n = len(pool)
    changed, removed = pool[:n * 5 // 100], pool[n * 5 // 100:n * 6 // 100]
    old = pool[n * 6 // 100]
    new = old.replace(".tar.zst", "-r2.tar.zst")
    added = [f"{PLATFORMS[i % len(PLATFORMS)]}/added{i:03d}.tar.zst" for i in range(max(1, n // 100))]
    for path in changed:
        change_file(root, path, seed=f"{seed}:changed")
    for path in added:
        write_file(root, path, rng.choice(small_sizes), seed=f"{seed}:added")
    for path in removed:
        remove_file(root, path)
    shutil.copyfile(root / PACKAGES / old, root / PACKAGES / new)
    shutil.copystat(root / PACKAGES / old, root / PACKAGES / new)
    remove_file(root, old)
    return Change(changed, added, removed, (old, new))


# ---- runs ---------------------------------------------------------------------------------------------


class Cache:
    """Drops the page cache before each timed step where the kernel lets us (root, writable /proc/sys)."""

    def __init__(self):
        self.works = self.drop()
        self.description = ("dropped before each timed step (`sync; echo 3 > /proc/sys/vm/drop_caches`)"
                            if self.works else "not dropped (no permission): timed steps may read from a warm cache")

    def drop(self) -> bool:
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            return True
        except OSError:
            return False


class Bench:
    def __init__(self, work: Path, cache: Cache):
        self.work, self.cache, self.logs = work, cache, work / "logs"
        self.count = 0

    def run(self, name: str, cmd: Sequence[str], timed_step: bool = False) -> Run:
        """Run ``cmd``; a failure is fatal, since every later figure would be meaningless."""
        self.count += 1
        if timed_step and self.cache.works:
            self.cache.drop()
        run = timed([str(c) for c in cmd], cwd=ROOT, env=ours_env(), log_dir=self.logs, name=f"{self.count:02d}-{name}",
                    timeout=3600)
        if run.timed_out or run.returncode != 0:
            raise BenchError(f"{name} failed (exit {run.returncode}): {' '.join(map(str, cmd))}\n{tail(run.stderr)}")
        return run

    def cli(self, name: str, *args, timed_step: bool = False) -> Run:
        return self.run(name, [sys.executable, "-m", "amsrepomirror", *args], timed_step)

    def best_of(self, runs: int, name: str, step: Callable[[int], Run], reset: Callable[[int], None]) -> float:
        """Best wall time of ``runs`` runs of ``step``; ``reset(i)`` (not timed) prepares run ``i``."""
        times = []
        for i in range(runs):
            reset(i)
            times.append(step(i).seconds)
            print(f"   {name} run {i + 1}: {times[-1]:.2f} s", flush=True)
        return min(times)


def chunk_bytes(bundle: Path) -> int:
    return sum(p.stat().st_size for p in bundle.glob("*.7z"))


def bundle_bytes(bundle: Path) -> int:
    """Chunk bytes plus what travels with them: manifest.json, SHA256SUMS, README.txt."""
    return chunk_bytes(bundle) + sum((bundle / n).stat().st_size for n in (MANIFEST_NAME, SUMS_NAME, README_NAME))


def check_tree(name: str, folder: Path, expected: dict[str, str]) -> int:
    got = tree_hashes(folder)
    if got != expected:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        differ = sorted(p for p in set(got) & set(expected) if got[p] != expected[p])
        raise BenchError(f"{name} differs from the server's tree: missing {missing[:3]}, extra {extra[:3]}, "
                         f"other bytes {differ[:3]}")
    return len(got)


# ---- the scenario -----------------------------------------------------------------------------------


@dataclass
class Scene:
    """What the steps of the scenario share: the runner, the scratch folder and the figures so far."""

    bench: Bench
    work: Path
    chunk: str  # --chunk-size
    repeats: int
    fig: dict[str, object]

    @property
    def server(self) -> Path:
        return self.work / "scm"

    @property
    def mirror(self) -> Path:
        return self.work / "mirror"

    def bundle(self, name: str, out: Path, *extra, versions: Sequence[tuple[str, str]]) -> Run:
        """``amsrepomirror bundle`` of ``versions`` ((version, listing URL) each) into ``out``."""
        args = [a for v, u in versions for a in ("--version", v, "--listing-url", u)]
        return self.bench.cli(name, "bundle", *args, "--mirror", self.mirror, "--out", out, "--chunk-size", self.chunk, *extra)


@dataclass
class NewTree:
    """The server's tree after the monthly change."""

    change: Change
    hashes: dict[str, str]  # {path: sha256} of every served file
    sizes: dict[str, int]


def scenario(size: Size, work: Path, cache: Cache, repeats: int) -> dict[str, object]:
    chunk = f"{size.chunk // MiB}MiB"
    scene = Scene(Bench(work, cache), work, chunk, repeats, {"chunk": chunk})
    index, spec = write_first_tree(scene, size)
    with ScmDouble(scene.server) as double:
        versions = ((VERSION, double.listing_url(VERSION)),)
        amshome_a = full_bundle_unpacked(scene, versions)
        new = change_the_server(scene, double, spec)
        delta = delta_bundle(scene, versions, new.change)
        print("== 4. full bundle of the new tree (for the full unpack)", flush=True)
        full_new = work / "full-new"
        scene.bundle("bundle-full-new", full_new, versions=versions)
    # Copies of the old tree for rsync, made before A changes (hard links: rsync writes each file
    # it transfers to a temporary name and renames it, so the linked originals stay untouched).
    print("== 4. timed: delta unpack, full unpack, rsync", flush=True)
    rsync_dirs = [work / f"rsync-{i}" for i in range(repeats)]
    for d in rsync_dirs:
        subprocess.run(["cp", "-al", str(amshome_a / "repository"), str(d)], check=True)
    time_delta_unpack(scene, delta, amshome_a, new)
    amshome_b = time_full_unpack(scene, full_new, new)
    time_rsync(scene, rsync_dirs, new)
    for d in (*rsync_dirs, amshome_b, full_new):
        shutil.rmtree(d, ignore_errors=True)
    two_versions(scene, index, new)
    return scene.fig


def write_first_tree(scene: Scene, size: Size) -> tuple[str, dict[str, int]]:
    """The server's first tree and its listing; returns the index's path and {path: size} of the packages."""
    print(f"== writing the server's tree ({size.total / 1e6:.0f} MB)", flush=True)
    spec = tree_spec(size, "2026.101", "tree")
    write_tree(scene.server, spec, "v1")
    index = write_index(scene.server, VERSION, len(spec))
    write_listing(scene.server, VERSION, PLACEHOLDER_ORIGIN, [index, *spec])
    scene.fig["files_before"], scene.fig["bytes_before"] = len(spec) + 1, sum(spec.values())
    return index, spec


def full_bundle_unpacked(scene: Scene, versions) -> Path:
    """Step 1: mirror and full bundle, unpacked into AMSHOME A (returned); the bundle is removed."""
    print("== 1. mirror + full bundle, unpack into AMSHOME A", flush=True)
    full, amshome_a = scene.work / "full", scene.work / "amshome-a"
    scene.fig["full_bundle_s"] = scene.bundle("bundle-full", full, versions=versions).seconds
    scene.fig["full_chunks"] = len(list(full.glob("*.7z")))
    amshome_a.mkdir()
    scene.bench.cli("unpack-full-a", "unpack", full, "--amshome", amshome_a)
    shutil.rmtree(full)
    return amshome_a


def change_the_server(scene: Scene, double: ScmDouble, spec: dict[str, int]) -> NewTree:
    """Step 2: the monthly change, and the listing that serves it."""
    print("== 2. monthly change on the server", flush=True)
    server = scene.server
    small_sizes = [s for p, s in spec.items() if "/pkg" in p]
    change = monthly_change(server, list(spec), "month", small_sizes)
    write_listing(server, VERSION, double.base_url)
    new_tree = served_tree(server, VERSION)
    sizes = {p: (server / PACKAGES / p).stat().st_size for p in new_tree}
    carried = sum(sizes[p] for p in change.changed + change.added)
    scene.fig.update(files_after=len(new_tree), bytes_after=sum(sizes.values()), changed=len(change.changed),
                     added=len(change.added), removed=len(change.removed), new_and_changed_bytes=carried,
                     changed_big=sum(1 for p in change.changed if "/bundle" in p))
    return NewTree(change, new_tree, sizes)


def delta_bundle(scene: Scene, versions, change: Change) -> Path:
    """Step 3: ``bundle --since last``, which must carry exactly the change (the renamed file reused)."""
    print("== 3. delta bundle --since last", flush=True)
    delta, fig = scene.work / "delta", scene.fig
    fig["delta_bundle_s"] = scene.bundle("bundle-delta", delta, "--since", "last", versions=versions).seconds
    manifest = BundleManifest.read(delta / MANIFEST_NAME)
    old, new = change.renamed
    if sorted(f.path for f in manifest.files) != sorted(change.changed + change.added):
        raise BenchError("the delta does not carry exactly the changed and added files")
    if sorted(manifest.removed) != sorted(change.removed + [old]):
        raise BenchError(f"the delta removes {sorted(manifest.removed)[:5]}, not the removed files")
    fig["rename_reused"] = [(r.path, r.source) for r in manifest.reused] == [(new, old)]
    fig["rename_carried"] = new in {f.path for f in manifest.files}
    fig["delta_chunk_bytes"], fig["delta_bundle_bytes"] = chunk_bytes(delta), bundle_bytes(delta)
    fig["delta_manifest_bytes"] = (delta / MANIFEST_NAME).stat().st_size
    return delta


def time_delta_unpack(scene: Scene, delta: Path, amshome_a: Path, new: NewTree) -> None:
    """Step 4: the delta unpacked into A, hashing what it reuses and then ``--trust-installed``."""
    bench, repeats = scene.bench, scene.repeats
    receipt = amshome_a / RECEIPT
    receipt_bytes = receipt.read_bytes()

    def restore_a(i):
        """Back to the old tree: the delta unpack kept it as repository.previous, inodes and all."""
        if i == 0:
            return
        shutil.rmtree(amshome_a / "repository")
        os.rename(amshome_a / "repository.previous", amshome_a / "repository")
        receipt.write_bytes(receipt_bytes)

    scene.fig["delta_unpack_s"] = bench.best_of(
        repeats, "delta unpack", lambda i: bench.cli(f"unpack-delta-{i}", "unpack", delta, "--amshome", amshome_a,
                                                     "--keep-previous", timed_step=True), restore_a)
    scene.fig["delta_unpack_trusted_s"] = bench.best_of(
        repeats, "delta unpack --trust-installed", lambda i: bench.cli(
            f"unpack-delta-trusted-{i}", "unpack", delta, "--amshome", amshome_a, "--keep-previous", "--trust-installed",
            timed_step=True), lambda i: restore_a(i + 1))
    scene.fig["checked_a"] = check_tree("AMSHOME A after the delta", amshome_a / "repository", new.hashes)
    shutil.rmtree(amshome_a / "repository.previous", ignore_errors=True)
    if tree_hashes(amshome_a / "repository") != new.hashes:  # the kept tree shared nothing it should not
        raise BenchError("removing repository.previous changed the new tree")


def time_full_unpack(scene: Scene, full_new: Path, new: NewTree) -> Path:
    """Step 4: the full bundle of the new tree unpacked into a fresh AMSHOME B (returned)."""
    bench = scene.bench
    amshome_b = scene.work / "amshome-b"

    def fresh_b(i):
        shutil.rmtree(amshome_b, ignore_errors=True)
        amshome_b.mkdir()

    scene.fig["full_unpack_s"] = bench.best_of(
        scene.repeats, "full unpack", lambda i: bench.cli(f"unpack-full-b-{i}", "unpack", full_new, "--amshome", amshome_b,
                                                          timed_step=True), fresh_b)
    scene.fig["checked_b"] = check_tree("AMSHOME B after the full unpack", amshome_b / "repository", new.hashes)
    return amshome_b


def time_rsync(scene: Scene, rsync_dirs: list[Path], new: NewTree) -> None:
    """Step 4: ``rsync -a`` of the changed and added files into copies of the old tree, ``rm`` of the removed."""
    work, change = scene.work, new.change
    files_from = work / "rsync-files.txt"
    files_from.write_text("".join(p + "\n" for p in sorted(change.changed + change.added + [change.renamed[1]])))
    gone = sorted(change.removed + [change.renamed[0]])
    script = work / "rsync.sh"
    script.write_text('set -e\nrsync -a --ignore-times --files-from="$1" "$2/" "$3/"\ncd "$3"\nshift 3\nrm -f -- "$@"\n')

    scene.fig["rsync_s"] = scene.bench.best_of(
        scene.repeats, "rsync -a + rm", lambda i: scene.bench.run(
            f"rsync-{i}", ["sh", str(script), files_from, scene.server / PACKAGES, rsync_dirs[i], *gone], timed_step=True),
        lambda i: None)
    scene.fig["checked_rsync"] = check_tree("the rsync copy", rsync_dirs[0], new.hashes)


def two_versions(scene: Scene, index: str, new: NewTree) -> None:
    """Step 5: a second version sharing half the files by path (two more by content), bundled with the first."""
    print("== 5. two versions sharing half their files", flush=True)
    server, sizes = scene.server, new.sizes
    packages = sorted(p for p in new.hashes if p != index)
    shared = packages[::2]
    own_spec = {(p.replace("2026.101", "2025.101") if "2026.101" in p else p.replace(".tar.zst", "-2025.101.tar.zst")):
                sizes[p] for p in packages[1::2]}
    write_tree(server, own_spec, "v0")
    twins = {f"common/data/twin{i}-2025.101.tar.zst": p for i, p in enumerate(packages[1:7:2][:2])}
    for twin, source in twins.items():
        shutil.copyfile(server / PACKAGES / source, server / PACKAGES / twin)
    other_index = write_index(server, OTHER, len(shared) + len(own_spec) + len(twins))
    other_listed = [other_index, *shared, *own_spec, *twins]
    multi = scene.work / "multi"
    with ScmDouble(server) as double:
        write_listing(server, OTHER, double.base_url, other_listed)
        both = served_tree(server, VERSION)  # every file on the server (both listings' union)
        listed = set(new.hashes) | set(other_listed)
        union = {p: h for p, h in both.items() if p in listed}
        scene.fig["multi_bundle_s"] = scene.bundle("bundle-two-versions", multi, versions=(
            (VERSION, double.listing_url(VERSION)), (OTHER, double.listing_url(OTHER)))).seconds
    manifest = BundleManifest.read(multi / MANIFEST_NAME)
    if sorted(manifest.versions) != sorted([VERSION, OTHER]):
        raise BenchError(f"the two-version bundle holds {manifest.versions}")
    distinct: dict[str, int] = {}
    for p, h in union.items():
        distinct[h] = (server / PACKAGES / p).stat().st_size
    scene.fig.update(multi_files=len(union), multi_listed_bytes=sum((server / PACKAGES / p).stat().st_size for p in union),
                     multi_distinct_bytes=sum(distinct.values()), multi_chunk_bytes=chunk_bytes(multi),
                     multi_bundle_bytes=bundle_bytes(multi), multi_shared=len(shared), multi_twins=len(twins),
                     shared_bytes=sum(sizes[p] for p in shared),
                     version_b_bytes=sum((server / PACKAGES / p).stat().st_size for p in other_listed))


# ---- report ---------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def rows(f: dict[str, object]) -> list[list[str]]:
    carried = f["new_and_changed_bytes"]
    delta_ratio = f["delta_chunk_bytes"] / carried
    with_meta = f["delta_bundle_bytes"] / carried
    rename_ok = f["rename_reused"] and not f["rename_carried"]
    multi_ratio = f["multi_chunk_bytes"] / f["multi_distinct_bytes"]
    multi_meta = f["multi_bundle_bytes"] / f["multi_distinct_bytes"]
    d, u, r, t = f["delta_unpack_s"], f["full_unpack_s"], f["rsync_s"], f["delta_unpack_trusted_s"]
    mb = lambda n: f"{n / 1e6:.1f} MB"  # noqa: E731
    out = [
        ["delta bytes: chunk bytes ÷ bytes of new and changed files", f"{mb(f['delta_chunk_bytes'])} ÷ {mb(carried)}",
         f"{delta_ratio:.4f}", f"≤ {DELTA_TARGET}", verdict(delta_ratio <= DELTA_TARGET),
         f"{f['changed']} changed + {f['added']} added files"],
        ["… with manifest.json, SHA256SUMS and README.txt", f"{mb(f['delta_bundle_bytes'])} ÷ {mb(carried)}",
         f"{with_meta:.4f}", f"≤ {DELTA_TARGET}", verdict(with_meta <= DELTA_TARGET),
         f"manifest.json {f['delta_manifest_bytes'] / 1e3:.0f} kB (holds the whole target tree)"],
        ["renamed file (same bytes) not carried", "reused from the installed copy" if rename_ok else "carried",
         "", "not carried", verdict(rename_ok), ""],
        ["delta unpack ÷ full unpack of the same target tree", f"{d:.2f} s ÷ {u:.2f} s", f"{d / u:.2f}",
         "(reference)", "", "full unpack into a fresh AMSHOME B"],
        ["delta unpack (every reused file hashed, the default) ÷ delta unpack `--trust-installed`",
         f"{d:.2f} s ÷ {t:.2f} s", f"{d / t:.2f}", "(reference)", "",
         "the same delta on the same old tree; the default reads each reused byte once, the fast path only stats"],
        ["delta unpack ÷ `rsync -a` of the changed files + `rm` of the removed ones",
         f"{d:.2f} s ÷ {r:.2f} s", f"{d / r:.2f}", "(reference)", "",
         "rsync checks nothing; unpack verifies the chunks, the carried files and the whole tree, and swaps atomically"],
        ["two versions: chunk bytes ÷ distinct content bytes",
         f"{mb(f['multi_chunk_bytes'])} ÷ {mb(f['multi_distinct_bytes'])}", f"{multi_ratio:.4f}",
         f"≤ {MULTI_TARGET}", verdict(multi_ratio <= MULTI_TARGET),
         f"both listings list {mb(f['multi_listed_bytes'])} in {f['multi_files']} files"],
        ["… with manifest.json, SHA256SUMS and README.txt", f"{mb(f['multi_bundle_bytes'])} ÷ "
         f"{mb(f['multi_distinct_bytes'])}", f"{multi_meta:.4f}", f"≤ {MULTI_TARGET}", verdict(multi_meta <= MULTI_TARGET), ""],
    ]
    return out


def render(f: dict[str, object], size: Size, repeats: int, cache: Cache, info: dict[str, str], elapsed: float) -> str:
    table = rows(f)
    head = ["Measure", "Measured", "Ratio", "Target", "Result", "Notes"]
    lines = [__doc__.split("\n\n", 1)[1].strip(), ""]
    if size is QUICK:
        lines += ["**Quick run (`--quick`): a 50 MB tree, not the reference figures.**", ""]
    lines += [
        f"Tree: {f['files_before']} files, {f['bytes_before'] / 1e6:.0f} MB (including {len(size.big)} files of "
        f"{', '.join(f'{x:g}' for x in size.big)} chunks), chunks of {f['chunk']} (copy compression). "
        f"Change: {f['changed']} files changed ({f['changed_big']} of them larger than a chunk), {f['added']} added, "
        f"{f['removed']} removed, 1 renamed; {f['new_and_changed_bytes'] / 1e6:.1f} MB of new and changed bytes; "
        f"new tree {f['files_after']} files, {f['bytes_after'] / 1e6:.0f} MB. "
        f"Two versions: {VERSION} (the new tree) and {OTHER} "
        f"({f['version_b_bytes'] / 1e6:.0f} MB: {f['multi_shared']} of {VERSION}'s files by path, "
        f"{f['shared_bytes'] / 1e6:.0f} MB, its own files and {f['multi_twins']} copies of {VERSION} files "
        "under other paths).", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in table]
    lines += ["",
              f"Times: wall clock, best of {repeats}; page cache {cache.description}. The delta unpack runs with "
              "`--keep-previous` (the benchmark restores the old tree and its receipt from `repository.previous` "
              "between runs). "
              f"Other times (single runs, not targets): full bundle {f['full_bundle_s']:.1f} s (includes mirroring), "
              f"delta bundle {f['delta_bundle_s']:.1f} s, two-version bundle {f['multi_bundle_s']:.1f} s "
              f"(includes mirroring {OTHER}'s own files).", "",
              f"Correctness: after each step the tree was compared with the server's new tree by sha256: "
              f"AMSHOME A after the delta {f['checked_a']} files, AMSHOME B after the full unpack {f['checked_b']} "
              f"files, the rsync copy {f['checked_rsync']} files: all equal. The delta carried exactly the changed "
              "and added files and removed exactly the removed ones and the renamed file's old path.", "",
              "Machine and tools:", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += [f"- rsync: {subprocess.run(['rsync', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}",
              f"- Load average at end (1/5/15 min): {load_average()}",
              f"- Duration: {elapsed / 60:.1f} min (including writing the trees)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.updates", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a 50 MB tree with 4 MiB chunks (smoke test)")
    p.add_argument("--out", type=Path, help=f"results file (default {DOC.relative_to(ROOT)} for a full run)")
    p.add_argument("--work", type=Path, help="scratch folder (default: a new folder under /tmp, removed afterwards)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each timed step; the best counts (default 2)")
    p.add_argument("--only", default="", help=argparse.SUPPRESS)  # accepted (make bench passes ARGS to all)
    args = p.parse_args(argv)
    for tool in ("7zz", "rsync"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not installed", file=sys.stderr)
            return 1
    size = QUICK if args.quick else FULL
    out = args.out or (None if args.quick else DOC)
    work = (args.work or Path(tempfile.mkdtemp(prefix="amsrepomirror-updates-"))).absolute()
    if args.work:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)  # mkdtemp made it already
    cache = Cache()
    info = machine_info()  # its load average is the one at the start
    started = time.monotonic()
    try:
        figures = scenario(size, work, cache, max(1, args.repeats))
    except BenchError as exc:
        print(f"bench: {exc}\nbench: scratch folder and logs kept in {work}", file=sys.stderr)
        return 1
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    body = render(figures, size, max(1, args.repeats), cache, info, time.monotonic() - started)
    print()
    for row in rows(figures):
        print("  " + "; ".join(c for c in row if c))
    print(json.dumps({k: v for k, v in figures.items() if not isinstance(v, list)}, default=str))
    if out:
        replace_section(out, HEADING, body)
        print(f"\nwrote the \"{HEADING[3:]}\" section of {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stable chunks: how much of a full bundle survives a monthly-like change (python -m bench.stable).

1. Real files, real chunks: a tree of a few hundred MB (hundreds of files, a few larger than a
   chunk) is bundled with a small chunk size; then 5% of the files change, 1% are added and 1%
   removed, and the tree is bundled again into an empty folder. Chunk files are compared by
   (name, sha256).
2. The plan alone, at the default chunk size, on a synthetic listing of a realistic size (no bytes
   are written: chunk names follow from content, and test_stable_chunks checks that equal names
   are equal bytes).

Figures: chunks that differ ÷ chunks that hold a changed, added or removed file (target <= 1.5;
a removed file counts for the chunk that now holds the file after it), and the share of chunk
bytes carried over unchanged.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path

from amsrepomirror.online.manifest import FileEntry
from amsrepomirror.pack.plan import DEFAULT_CHUNK_SIZE, ChunkSpec, chunk_plan
from amsrepomirror.pack.sevenzip import write_chunk
from amsrepomirror.util.hashing import sha256_file
from bench.common import ROOT, load_average, machine_info, replace_section

MiB = 1024**2
DOC = ROOT / "docs" / "benchmarks.md"
HEADING = "## Stable chunks: what a full bundle shares with the previous one"
VERSION = "AMS2026.1"


def monthly_change(paths: Sequence[str], rng: random.Random) -> tuple[list[str], list[str], list[str]]:
    """(changed, added, removed) paths: 5%, 1% and 1% of the files."""
    shuffled = list(paths)
    rng.shuffle(shuffled)
    n = len(paths)
    changed, removed = shuffled[:n * 5 // 100], shuffled[n * 5 // 100:n * 6 // 100]
    added = [f"{p}.new-{i}" for i, p in enumerate(shuffled[n * 6 // 100:n * 7 // 100])]
    return changed, added, removed


def locality(old: list[ChunkSpec], new: list[ChunkSpec], touched_paths: set, removed: Sequence[str],
             sizes: dict[str, int] | None = None) -> dict[str, float]:
    """Chunks that differ ÷ chunks touched by the change, and the share of bytes carried over."""
    old_names = {s.name for s in old}
    differ = [s for s in new if s.name not in old_names]
    order = sorted({p.path for s in new for p in s.pieces})
    holder = {p.path: s.name for s in new for p in s.pieces}
    touched = {holder[p] for p in touched_paths}
    for path in removed:  # the chunk that now holds the file after it
        after = [p for p in order if p > path]
        if after:
            touched.add(holder[after[0]])
    size = sizes or {s.name: s.payload for s in new}
    total = sum(size[s.name] for s in new)
    kept = sum(size[s.name] for s in new if s.name in old_names)
    return {"chunks": len(new), "differ": len(differ), "touched": len(touched),
            "ratio": len(differ) / max(1, len(touched)), "kept_share": kept / total if total else 1.0}


def write_tree(root: Path, rng: random.Random, files: int, big: int, chunk: int) -> None:
    for i in range(files):
        path = root / f"pkgs/{i % 23:02d}/pkg-{i:05d}.tar.zst"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(rng.randrange(4096, 900 * 1024)))
    for i in range(big):
        path = root / f"pkgs/big/python-{i}.tar.zst"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            for _ in range(chunk // MiB + 1 + i * 9):
                f.write(os.urandom(MiB))


def entries(root: Path, known: dict[str, FileEntry]) -> list[FileEntry]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            st = p.stat()
            old = known.get(rel)
            out.append(old if old and old.size == st.st_size and old.url == str(st.st_mtime_ns)
                       else FileEntry(rel, st.st_size, sha256_file(p), url=str(st.st_mtime_ns)))
    return out


def write_bundle(plan: list[ChunkSpec], mirror: Path, out: Path, files: list[FileEntry]) -> dict[str, str]:
    expected = {f.path: f for f in files}
    carried: dict[str, str] = {}
    sums = {}
    for spec in plan:
        result = write_chunk(spec, mirror, out, spec.compression, expected, resume=carried)
        carried.update(result.sha256_state)
        sums[spec.name] = result.chunk.sha256
    return sums


def real_files(work: Path, chunk: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    mirror = work / "mirror"
    write_tree(mirror, rng, files=600, big=4, chunk=chunk)
    before = entries(mirror, {})
    old_plan = chunk_plan(before, chunk, VERSION)
    old_sums = write_bundle(old_plan, mirror, work / "old", before)
    changed, added, removed = monthly_change([f.path for f in before], rng)
    for path in changed:
        (mirror / path).write_bytes(os.urandom((mirror / path).stat().st_size))
    for path in added:
        (mirror / path).write_bytes(os.urandom(rng.randrange(4096, 900 * 1024)))
    for path in removed:
        (mirror / path).unlink()
    after = entries(mirror, {f.path: f for f in before})
    new_plan = chunk_plan(after, chunk, VERSION)
    new_sums = write_bundle(new_plan, mirror, work / "new", after)
    sizes = {s.name: (work / "new" / s.name).stat().st_size for s in new_plan}
    figures = locality(old_plan, new_plan, set(changed) | set(added), removed, sizes)
    # the same by (name, sha256) of the chunk files written
    figures["differ_by_sha256"] = len(set(new_sums.items()) - set(old_sums.items()))
    figures["tree_mib"] = sum(f.size for f in after) / MiB
    figures["files"] = len(after)
    return figures


def plan_only(chunk: int, seed: int, files: int = 3000) -> dict[str, float]:
    rng = random.Random(seed)
    listing = [FileEntry(f"pkgs/{i % 41:02d}/pkg-{i:05d}.tar.zst", rng.randrange(4096, 2 * MiB), f"{i:064x}")
               for i in range(files)]
    listing += [FileEntry(f"pkgs/big/bundle-{i}.tar.zst", chunk + (i + 1) * 300 * MiB, f"{files + i:064x}")
                for i in range(4)]
    changed, added, removed = monthly_change([f.path for f in listing], rng)
    gone, bumped = set(removed), set(changed)
    after = [FileEntry(f.path, f.size, f"{rng.getrandbits(256):064x}") if f.path in bumped else f
             for f in listing if f.path not in gone]
    after += [FileEntry(p, rng.randrange(4096, 2 * MiB), f"{rng.getrandbits(256):064x}") for p in added]
    figures = locality(chunk_plan(listing, chunk, VERSION), chunk_plan(after, chunk, VERSION),
                       bumped | set(added), removed)
    figures["tree_mib"] = sum(f.size for f in after) / MiB
    figures["files"] = len(after)
    return figures


def describe(title: str, f: dict[str, float]) -> str:
    extra = f", by sha256 of the files {f['differ_by_sha256']}" if "differ_by_sha256" in f else ""
    return (f"{title}: {f['files']} files, {f['tree_mib']:.0f} MiB in {f['chunks']} chunks; "
            f"{f['differ']} chunks differ{extra}; {f['touched']} chunks hold a changed/added/removed file; "
            f"ratio {f['ratio']:.2f} (target <= 1.5); chunk bytes carried over unchanged {f['kept_share']:.1%}")


def render(results: list[tuple[str, dict[str, float]]]) -> str:
    lines = [__doc__.split("\n\n", 1)[1].strip(), "",
             "| Run | Files | Tree | Chunks | Differ | Hold a change | Ratio (target <= 1.5) | Result | "
             "Chunk bytes kept |", "|---|---|---|---|---|---|---|---|---|"]
    for title, f in results:
        verdict = "PASS" if f["ratio"] <= 1.5 else "FAIL"
        lines.append(f"| {title} | {f['files']} | {f['tree_mib']:.0f} MiB | {f['chunks']} | {f['differ']} | "
                     f"{f['touched']} | {f['ratio']:.2f} | **{verdict}** | {f['kept_share']:.1%} |")
    lines += ["", "The share of chunk bytes kept is low when each chunk holds many files: with 7% of the files "
              "touched, most chunks of 32 MiB hold one of them. Chunk names stand for their content "
              "(tests/test_stable_chunks.py checks equal names are equal bytes), so the plan-only rows compare names.",
              "", "Machine and tools:", ""]
    lines += [f"- {k}: {v}" for k, v in machine_info().items()]
    lines += [f"- Load average at end (1/5/15 min): {load_average()}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunk-size-mib", type=int, default=32)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-write", action="store_true", help="the plan-only figures alone")
    p.add_argument("--out", type=Path, help=f"results file (default {DOC.relative_to(ROOT)} unless --no-write)")
    p.add_argument("--only", default="", help=argparse.SUPPRESS)  # accepted (make bench passes ARGS to all)
    args = p.parse_args(argv)
    results = []
    if not args.no_write:
        with tempfile.TemporaryDirectory(prefix="bench-stable-") as work:
            results.append((f"real files, chunks of {args.chunk_size_mib} MiB",
                            real_files(Path(work), args.chunk_size_mib * MiB, args.seed)))
    for chunk in (args.chunk_size_mib * MiB, DEFAULT_CHUNK_SIZE):
        results.append((f"plan only, chunks of {chunk // MiB} MiB", plan_only(chunk, args.seed)))
    for title, figures in results:
        print(describe(title, figures))
    out = args.out or (None if args.no_write else DOC)
    if out is not None:
        replace_section(out, HEADING, render(results))
        print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

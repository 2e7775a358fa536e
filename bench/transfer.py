"""Transfer engine benchmarks: ours against aria2c and wget at an equal connection budget
(``python -m bench.transfer [--quick] [--out FILE]``; part of ``make bench``).

aria2c (Debian package ``aria2``) is a benchmark-only need: the scenarios that compare with it
fail with a clear message when it is missing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from amsrepomirror.testing.repository import listing_path

from .common import DEMO_PASSWORD as PASSWORD
from .common import DEMO_USER as USER
from .common import (
    ROOT,
    VERSION,
    BenchError,
    Nginx,
    build_tree,
    first_line,
    fmt_mb,
    fmt_s,
    load_average,
    machine_info,
    md_row,
    replace_section,
    run_wget,
    sized_files,
    tail,
    timed,
    verdict,
    warm,
)
from .mirror import Context, GiB, MiB, _bigfile_tree, _check_ours, _check_tree, _ours, _sync, _tree_size, fmt_phases

DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Transfer engine: segmented downloads and a connection budget"
COLUMNS = ("Scenario", "Measure", "ours", "peer", "peer's time", "ours ÷ peer", "Target", "Result", "Notes")

DESCRIPTION = """\
`amsrepomirror mirror --jobs N` against `aria2c` and `wget` on the same nginx (tests/servers.py:
basic auth, ETag, Range, `sendfile on`, one worker) on loopback, each from an empty destination,
best of several alternating rounds. `limit_rate 20m` limits every response (so every connection)
to 20 MiB/s, as a long-distance link limits each TCP connection. Times are wall clock around the
whole process: ours includes Python start-up, Luigi, the listing and one HEAD per file; aria2c
is handed the URLs as a local file (no listing, no HEADs) and stores files without their
folders. Ours hashes every byte (SHA-256) and fsyncs; neither peer does. Ours fetches a file of
`segment_threshold` (16 MiB) or more as byte ranges, at most `max_ranges_per_file` (8) at once;
`aria2c -s N` splits a file only above its `--min-split-size` (20 MiB by default). aria2c comes
from Debian's `aria2` package, a need of this benchmark only (not of the tool or its tests).
nginx's `limit_rate` lets each response send its first second's worth (20 MiB) at once, so a
request for a file below 20 MiB is hardly throttled: the many-files scenario measures mostly
per-request cost and start-up, the 1 GiB scenario the per-connection limit. Costs ours carries
that aria2c does not: Python and Luigi start-up (`amsrepomirror --version` takes 0.25 s here),
the listing and one HEAD per file, SHA-256 of every byte (ranges side by side finish together, so
most of a large file is read back from the page cache after its last range: about 0.6 s per GiB
at full speed), and an fsync per file.
"""


class Table:
    def __init__(self):
        self.rows: list[list[str]] = []
        self.targets: list[str] = []

    def add(self, *cells: str) -> None:
        row = list(cells) + [""] * (len(COLUMNS) - len(cells))
        self.rows.append(row)
        print("  " + "; ".join(f"{k}: {v}" for k, v in zip(COLUMNS, row, strict=True) if v), flush=True)
        if row[6]:
            self.targets.append(f"- {row[0]}, {row[1]}: {row[6]} → **{row[7]}** (ours {row[2]}, {row[3]} {row[4]})")

    def markdown(self) -> str:
        lines = [md_row(COLUMNS), md_row(["---"] * len(COLUMNS))]
        lines += [md_row(r[:7] + ([f"**{r[7]}**"] if r[7] else [""]) + r[8:]) for r in self.rows]
        return "\n".join(lines)


def run_aria2c(root: Path, dest: Path, options: Sequence[str], *, log_dir: Path, name: str):
    """``aria2c -q OPTIONS -i URLS -d DEST`` with the demo account; URLS are the listing's lines."""
    aria2c = shutil.which("aria2c")
    if aria2c is None:
        raise BenchError("aria2c is not installed (Debian: apt-get install aria2); it is needed for the benchmark only")
    urls = log_dir / f"{name}.urls"
    log_dir.mkdir(parents=True, exist_ok=True)
    urls.write_text(listing_path(root, VERSION).read_text())
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [aria2c, "-q", "--http-user", USER, "--http-passwd", PASSWORD, "--allow-overwrite=true",
           "--auto-file-renaming=false", "-d", str(dest), "-i", str(urls), *options]
    run = timed(cmd, cwd=dest, env={"PATH": "/usr/bin:/bin"}, log_dir=log_dir, name=name)
    if run.returncode != 0:
        raise BenchError(f"aria2c failed ({name}, exit {run.returncode}):\n{tail(run.stderr + run.stdout)}")
    return run


def _flat_stats(dest: Path) -> (int, int):
    files = [p for p in dest.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _ours_run(ctx: Context, web: Nginx, name: str, jobs: int, listed: int, nfiles: int, nbytes: int):
    _sync()
    dest = ctx.dest(name)
    run, report = _ours(web.listing_url, dest, log_dir=ctx.logs, name=name, extra=["--jobs", str(jobs)])
    _check_ours(report, listed, name, fetched=listed)
    _check_tree(dest, nfiles, nbytes, name)
    run.phases = report["phases"]
    return run, dest


def _aria_run(ctx: Context, root: Path, name: str, options: Sequence[str], nfiles: int, nbytes: int):
    _sync()
    dest = ctx.dest(name)
    run = run_aria2c(root, dest, options, log_dir=ctx.logs, name=name)
    if _flat_stats(dest) != (nfiles, nbytes):
        raise BenchError(f"{name}: aria2c stored {_flat_stats(dest)}, expected {(nfiles, nbytes)}")
    return run


def _best(runs) -> float:
    return min(r.seconds for r in runs)


def _phases(runs) -> str:
    """Where the best run of ours spent its time (from its Luigi log)."""
    return "best run of " + fmt_phases(min(runs, key=lambda r: r.seconds).phases)


def _all(runs) -> str:
    return ", ".join(f"{r.seconds:.2f}" for r in runs)


def throttled_files(ctx: Context, table: Table) -> None:
    count, total = (12, 40 * 10**6) if ctx.quick else (60, 250 * 10**6)
    rounds = 1 if ctx.quick else 3
    root = ctx.tree(f"throttled-{count}")
    listed = build_tree(root, sized_files("linux/x86_64", count, total, seed="throttled"))
    nfiles, nbytes = _tree_size(root)
    big = sum(1 for s in sized_files("linux/x86_64", count, total, seed="throttled").values() if s >= 16 * MiB)
    warm(root)
    runs: dict[str, list] = {k: [] for k in ("ours16", "aria4x4", "aria16", "ours4", "wget")}
    with Nginx(root, ctx.work / "nginx-throttled", limit_rate="20m") as web:
        for i in range(rounds):
            runs["ours16"].append(_ours_run(ctx, web, f"t-ours16-{i}", 16, listed, nfiles, nbytes)[0])
            runs["aria4x4"].append(_aria_run(ctx, root, f"t-aria-j4x4s4-{i}", ["-j", "4", "-x", "4", "-s", "4"], nfiles, nbytes))
            runs["aria16"].append(_aria_run(ctx, root, f"t-aria-j16-{i}", ["-j", "16"], nfiles, nbytes))
            runs["ours4"].append(_ours_run(ctx, web, f"t-ours4-{i}", 4, listed, nfiles, nbytes)[0])
            _sync()
            dest = ctx.dest(f"t-wget-{i}")
            runs["wget"].append(run_wget(web.listing_url, dest, log_dir=ctx.logs, name=f"t-wget-{i}"))
            _check_tree(dest, nfiles, nbytes, "wget")
    what = f"{count} files, {nbytes / 10**6:.0f} MB ({big} of 16 MiB or more), limit_rate 20m"
    ours16 = _best(runs["ours16"])
    peer, peer_name = min((_best(runs["aria4x4"]), "aria2c -j 4 -x 4 -s 4"), (_best(runs["aria16"]), "aria2c -j 16"))
    table.add("throttled files", f"{what}: ours --jobs 16 vs the best aria2c (best of {rounds})", fmt_s(ours16), peer_name,
              fmt_s(peer), f"{ours16 / peer:.2f}", "≤ 1.0", verdict(ours16 <= peer, ours16, peer),
              f"all runs: ours {_all(runs['ours16'])}; aria2c -j 4 -x 4 -s 4 {_all(runs['aria4x4'])}; "
              f"aria2c -j 16 {_all(runs['aria16'])}; max RSS ours {fmt_mb(max(r.max_rss_mb for r in runs['ours16']))}; "
              + _phases(runs["ours16"]))
    ours4, wget = _best(runs["ours4"]), _best(runs["wget"])
    table.add("throttled files", f"{what}: ours --jobs 4 vs wget -xi (best of {rounds})", fmt_s(ours4), "wget -x -i",
              fmt_s(wget), f"{ours4 / wget:.2f}", "wget ÷ ours ≥ 3", verdict(wget / ours4 >= 3, wget / ours4, 3),
              f"wget ÷ ours = {wget / ours4:.1f}; all runs: ours {_all(runs['ours4'])}; wget {_all(runs['wget'])}; "
              + _phases(runs["ours4"]))


def big_throttled(ctx: Context, table: Table) -> None:
    size = 200 * MiB if ctx.quick else GiB
    rounds = 1 if ctx.quick else 2
    root, listed = _bigfile_tree(ctx, size)
    nfiles, nbytes = _tree_size(root)
    warm(root)
    ours, aria = [], []
    with Nginx(root, ctx.work / "nginx-big-throttled", limit_rate="20m") as web:
        for i in range(rounds):
            run, dest = _ours_run(ctx, web, f"bt-ours8-{i}", 8, listed, nfiles, nbytes)
            ours.append(run)
            aria.append(_aria_run(ctx, root, f"bt-aria-x8s8-{i}", ["-x", "8", "-s", "8"], nfiles, nbytes))
        web.clear()
        rerun, report = _ours(web.listing_url, dest, log_dir=ctx.logs, name="bt-rerun", extra=["--jobs", "8"])
        traffic = web.traffic()
    label = f"{size // MiB} MiB" if size < GiB else f"{size // GiB} GiB"
    best, peer = _best(ours), _best(aria)
    table.add("one big file, throttled", f"1 file of {label}, limit_rate 20m: ours --jobs 8 vs aria2c -x 8 -s 8 "
              f"(best of {rounds})", fmt_s(best), "aria2c -x 8 -s 8", fmt_s(peer), f"{best / peer:.2f}", "≤ 1.0",
              verdict(best <= peer, best, peer),
              f"all runs: ours {_all(ours)}; aria2c {_all(aria)}; max RSS ours {fmt_mb(max(r.max_rss_mb for r in ours))}, "
              f"aria2c {fmt_mb(max(r.max_rss_mb for r in aria))}; " + _phases(ours))
    table.add("one big file, throttled", "no-change rerun of the same mirror: bodies fetched", str(traffic["bodies"]),
              "", "", "", "0", verdict(traffic["bodies"] == 0), f"{traffic['requests']} requests, {fmt_s(rerun.seconds)}")


def big_unthrottled(ctx: Context, table: Table) -> None:
    size = 200 * MiB if ctx.quick else GiB
    rounds = 1 if ctx.quick else 3
    root, listed = _bigfile_tree(ctx, size)
    nfiles, nbytes = _tree_size(root)
    warm(root)
    ours, wget = [], []
    with Nginx(root, ctx.work / "nginx-big") as web:
        for i in range(rounds):
            ours.append(_ours_run(ctx, web, f"bu-ours-{i}", 4, listed, nfiles, nbytes)[0])
            _sync()
            dest = ctx.dest(f"bu-wget-{i}")
            wget.append(run_wget(web.listing_url, dest, log_dir=ctx.logs, name=f"bu-wget-{i}"))
            _check_tree(dest, nfiles, nbytes, "wget")
    label = f"{size // MiB} MiB" if size < GiB else f"{size // GiB} GiB"
    best, peer = _best(ours), _best(wget)
    table.add("one big file, unthrottled", f"1 file of {label}, loopback: ours (default --jobs 4) vs wget "
              f"(best of {rounds})", fmt_s(best), "wget -x -i", fmt_s(peer), f"{best / peer:.2f}", "≤ 1.1",
              verdict(best <= 1.1 * peer, best, 1.1 * peer),
              f"all runs: ours {_all(ours)}; wget {_all(wget)}; max RSS ours {fmt_mb(max(r.max_rss_mb for r in ours))}; "
              + _phases(ours))


SCENARIOS = {"throttled_files": throttled_files, "big_throttled": big_throttled, "big_unthrottled": big_unthrottled}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.transfer", description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    p.add_argument("--quick", action="store_true", help="smaller sizes (smoke test; prints only unless --out)")
    p.add_argument("--out", type=Path, help=f"results file (default {DOC.relative_to(ROOT)} for a full run)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip() in SCENARIOS] or list(SCENARIOS)
    out = args.out or (None if args.quick or args.only else DOC)
    work = Path(tempfile.mkdtemp(prefix="amsrepomirror-bench-transfer-"))
    ctx, table, info = Context(work=work, quick=args.quick), Table(), machine_info()
    info["aria2c"] = first_line(["aria2c", "--version"])
    started = time.monotonic()
    try:
        for name in names:
            print(f"== {name}", flush=True)
            SCENARIOS[name](ctx, table)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = [DESCRIPTION.rstrip("\n"), ""]
    if args.quick:
        body += ["**Quick run (`--quick`): reduced sizes, not the reference figures.**", ""]
    body += [table.markdown(), "", "Targets:", "", *table.targets, "", "Machine and tools:", ""]
    body += [f"- {k}: {v}" for k, v in info.items()]
    body += [f"- Load average at end (1/5/15 min): {load_average()}",
             f"- Scenarios run: {', '.join(names)} ({(time.monotonic() - started) / 60:.0f} min in all)", ""]
    print(table.markdown())
    if out:
        replace_section(out, SECTION, "\n".join(body))
        print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Transfer engine benchmarks: ours against aria2c and wget at an equal connection budget
(``python -m bench.transfer [--quick] [--out FILE]``; part of ``make bench``).

aria2c (Debian package ``aria2``) is a benchmark-only need: the scenarios that compare with it
fail with a clear message when it is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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
    cache_bytecode,
    first_line,
    fmt_mb,
    fmt_s,
    load_average,
    machine_info,
    md_row,
    ours_env,
    replace_section,
    run_wget,
    sized_files,
    tail,
    timed,
    tiny_files,
    verdict,
    warm,
)
from .mirror import RTT_MS, Context, GiB, MiB, _bigfile_tree, _check_ours, _check_tree, _ours, _sync, _tree_size, fmt_phases

DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Transfer engine: segmented downloads and a connection budget"
COLUMNS = ("Scenario", "Measure", "ours", "peer", "peer's time", "ours ÷ peer", "Target", "Result", "Notes")

DESCRIPTION = """\
`amsrepomirror mirror --jobs N` against `aria2c` and `wget` on the same nginx (tests/servers.py:
basic auth, ETag, Range, `sendfile on`, one worker) on loopback, each from an empty destination,
best of several alternating rounds. `limit_rate 20m` limits every response (so every connection)
to 20 MiB/s, as a long-distance link limits each TCP connection. Times are wall clock around the
whole process: ours includes Python start-up, Luigi, the listing and a probe per file (a HEAD, or
with `[http] first_bytes` a GET of the first bytes); aria2c is handed the URLs as a local file (no
listing, no probes) and stores files without their folders. Ours hashes every byte (SHA-256) and
fsyncs; neither peer does (the unthrottled row adds a `sync` after wget). The aria2c peers are the
best an admin would type: `-k 1M` lets `-s` split files above 2 MiB (its default minimum split is
20 MiB). Ours fetches a file of `segment_threshold` (16 MiB) or more as byte ranges, at most
`max_ranges_per_file` (8) at once. aria2c comes from Debian's `aria2` package, a need of this
benchmark only (not of the tool or its tests). nginx applies `limit_rate` per request and gives each
a head start: measured with curl in this setup (2026-12-08), one request of 4 MiB ran at 38 MiB/s, 16 MiB
at 22.6, 64 MiB at 20.5 and 128 MiB at 20.1 MiB/s. A tool that asks in shorter requests is let through
faster per connection: ours asks a large file's ranges 16 MiB at a time, aria2c `-s 8` asks 8 long ones.

- **fixed cost** of a run: a no-op rerun of the same mirror (start-up, listing, a conditional HEAD
  per file, Luigi), measured in the same run; the targets "≤ aria2c + fixed cost" add it to the
  best aria2c's time.
- **busy while data flows**: what `--jobs` × 20 MiB/s needs for the bytes, ÷ the run's download
  phase (its DownloadFile tasks, from the run's Luigi log).
- **tiny files, 20 ms round trip**: the latency proxy (bench/latency.py) in front of nginx; the
  phases of ours show the listing and probes ("listing+HEADs") apart from the downloads.
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
    run.phases, run.range_ends = report["phases"], report.get("range_ends", [])
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


RATE = 20 * MiB  # nginx limit_rate 20m: bytes per second of each connection
BUSY = 0.90       # item 1: the connections carry at least this part of budget x rate while data flows
FIXED_COST = 0.3  # item 2: a no-op rerun (the fixed cost of a run) takes at most this
VERSION_COST = 0.15  # item 2: `amsrepomirror --version`


def _busy(runs, nbytes: int, connections: int) -> tuple[float, str]:
    """How much of what ``connections`` x RATE can carry the download phase of the best run carried."""
    best = min(runs, key=lambda r: r.seconds)
    download = best.phases.get("download", 0.0)
    need = nbytes / (connections * RATE)
    return (need / download if download else 0.0), (f"{nbytes / MiB:.0f} MiB over {connections} × 20 MiB/s needs "
                                                     f"{need:.2f} s; the download phase took {download:.2f} s")


def _peer_share(nbytes: int, connections: int, seconds: float, name: str) -> str:
    """What share of the limit the peer's whole run (start-up included) carried: how near this machine lets a
    tool come to the limit in this run."""
    return (f"{name}'s whole run carried {nbytes / (connections * RATE) / seconds:.0%} of the limit "
            f"({fmt_s(seconds)}, start-up included)")


def _import_floor(ctx: Context) -> float:
    """Median time of ``python -c 'import luigi.interface, requests'``: what any run of this design pays before it
    does anything."""
    runs = [timed([sys.executable, "-c", "import luigi.interface, requests"], cwd=ROOT, env=ours_env(),
                  log_dir=ctx.logs, name=f"import-floor-{i}") for i in range(5)]
    return _median_s(r.seconds for r in runs)


def _median_s(values) -> float:
    return statistics.median(values)


def _noop_reruns(ctx: Context, web: Nginx, dest: Path, jobs: int, listed: int, rounds: int, tag: str) -> list:
    """No-op reruns of a finished mirror: the fixed cost of a run (start-up, listing, a HEAD per file, Luigi)."""
    runs = []
    for i in range(rounds):
        run, report = _ours(web.listing_url, dest, log_dir=ctx.logs, name=f"{tag}-noop-{i}", extra=["--jobs", str(jobs)])
        _check_ours(report, listed, f"{tag} no-op rerun", fetched=0)
        runs.append(run)
    return runs


def throttled_files(ctx: Context, table: Table) -> None:
    count, total = (12, 40 * 10**6) if ctx.quick else (60, 250 * 10**6)
    rounds = 1 if ctx.quick else 3
    root = ctx.tree(f"throttled-{count}")
    listed = build_tree(root, sized_files("linux/x86_64", count, total, seed="throttled"))
    nfiles, nbytes = _tree_size(root)
    big = sum(1 for s in sized_files("linux/x86_64", count, total, seed="throttled").values() if s >= 16 * MiB)
    warm(root)
    runs: dict[str, list] = {k: [] for k in ("ours16", "aria4x4", "aria16", "ours4", "wget", "noop")}
    with Nginx(root, ctx.work / "nginx-throttled", limit_rate="20m") as web:
        for i in range(rounds):
            run, dest = _ours_run(ctx, web, f"t-ours16-{i}", 16, listed, nfiles, nbytes)
            runs["ours16"].append(run)
            runs["noop"] += _noop_reruns(ctx, web, dest, 16, listed, 1, f"t-ours16-{i}")
            runs["aria4x4"].append(_aria_run(ctx, root, f"t-aria-j4x4s4-{i}", ARIA_4X4, nfiles, nbytes))
            runs["aria16"].append(_aria_run(ctx, root, f"t-aria-j16-{i}", ["-j", "16"], nfiles, nbytes))
            runs["ours4"].append(_ours_run(ctx, web, f"t-ours4-{i}", 4, listed, nfiles, nbytes)[0])
            _sync()
            dest = ctx.dest(f"t-wget-{i}")
            runs["wget"].append(run_wget(web.listing_url, dest, log_dir=ctx.logs, name=f"t-wget-{i}"))
            _check_tree(dest, nfiles, nbytes, "wget")
    what = f"{count} files, {nbytes / 10**6:.0f} MB ({big} of 16 MiB or more), limit_rate 20m"
    ours16 = _best(runs["ours16"])
    fixed = _median_s(r.seconds for r in runs["noop"])
    peer, peer_name = min((_best(runs["aria4x4"]), "aria2c " + " ".join(ARIA_4X4)), (_best(runs["aria16"]), "aria2c -j 16"))
    table.add("throttled files", f"{what}: ours --jobs 16 vs the best aria2c + our fixed cost (best of {rounds})",
              fmt_s(ours16), peer_name, fmt_s(peer), f"{ours16 / peer:.2f}", f"≤ aria2c + fixed cost ({fmt_s(peer + fixed)})",
              verdict(ours16 <= peer + fixed, ours16, peer + fixed),
              f"all runs: ours {_all(runs['ours16'])}; aria2c {' '.join(ARIA_4X4)} {_all(runs['aria4x4'])}; "
              f"aria2c -j 16 {_all(runs['aria16'])}; fixed cost = median no-op rerun {fmt_s(fixed)}; "
              f"max RSS ours {fmt_mb(max(r.max_rss_mb for r in runs['ours16']))}; " + _phases(runs["ours16"]))
    busy, how = _busy(runs["ours16"], nbytes, 16)
    table.add("throttled files", f"{what}: busy while data flows, --jobs 16 (best run)", f"{busy:.0%}", "", "", "",
              f"≥ {BUSY:.0%}", verdict(busy >= BUSY, busy, BUSY), how + "; " + _peer_share(nbytes, 16, peer, peer_name))
    floor = _import_floor(ctx)
    table.add("throttled files", f"no-op rerun of the {count} files, --jobs 16: the fixed cost of a run (median of "
              f"{len(runs['noop'])})", fmt_s(fixed), "", "", "", f"≤ {FIXED_COST} s",
              verdict(fixed <= FIXED_COST, fixed, FIXED_COST),
              f"all runs: {_all(runs['noop'])}; the floor of this design, `python -c 'import luigi.interface, "
              f"requests'` alone (Luigi's import pulls in its RPC client, requests and tenacity): {fmt_s(floor)} "
              f"(median of 5)")
    ours4, wget = _best(runs["ours4"]), _best(runs["wget"])
    table.add("throttled files", f"{what}: ours --jobs 4 vs wget -xi (best of {rounds})", fmt_s(ours4), "wget -x -i",
              fmt_s(wget), f"{ours4 / wget:.2f}", "wget ÷ ours ≥ 3", verdict(wget / ours4 >= 3, wget / ours4, 3),
              f"wget ÷ ours = {wget / ours4:.1f}; all runs: ours {_all(runs['ours4'])}; wget {_all(runs['wget'])}; "
              + _phases(runs["ours4"]))


def start_up(ctx: Context, table: Table) -> None:
    """`amsrepomirror --version`: the start that costs nothing (median of several)."""
    rounds = 3 if ctx.quick else 9
    runs = []
    for i in range(rounds):
        run = timed([sys.executable, "-m", "amsrepomirror", "--version"], cwd=ROOT, env=ours_env(), log_dir=ctx.logs,
                     name=f"version-{i}")
        if run.returncode != 0:
            raise BenchError(f"amsrepomirror --version failed:\n{tail(run.stderr)}")
        runs.append(run)
    median = _median_s(r.seconds for r in runs)
    table.add("start-up", f"`amsrepomirror --version` (median of {rounds})", fmt_s(median), "", "", "",
              f"≤ {VERSION_COST} s", verdict(median <= VERSION_COST, median, VERSION_COST), f"all runs: {_all(runs)}")


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
            aria.append(_aria_run(ctx, root, f"bt-aria-x8s8-{i}", ARIA_X8, nfiles, nbytes))
        noop = _noop_reruns(ctx, web, dest, 8, listed, 3, "bt")
        web.clear()
        rerun, report = _ours(web.listing_url, dest, log_dir=ctx.logs, name="bt-rerun", extra=["--jobs", "8"])
        traffic = web.traffic()
    label = f"{size // MiB} MiB" if size < GiB else f"{size // GiB} GiB"
    best, peer = _best(ours), _best(aria)
    fixed = _median_s(r.seconds for r in noop)
    aria_name = "aria2c " + " ".join(ARIA_X8)
    table.add("one big file, throttled", f"1 file of {label}, limit_rate 20m: ours --jobs 8 vs {aria_name} + our "
              f"fixed cost (best of {rounds})", fmt_s(best), aria_name, fmt_s(peer), f"{best / peer:.2f}",
              f"≤ aria2c + fixed cost ({fmt_s(peer + fixed)})", verdict(best <= peer + fixed, best, peer + fixed),
              f"all runs: ours {_all(ours)}; aria2c {_all(aria)}; fixed cost = median no-op rerun {fmt_s(fixed)}; "
              f"max RSS ours {fmt_mb(max(r.max_rss_mb for r in ours))}, aria2c {fmt_mb(max(r.max_rss_mb for r in aria))}; "
              + _phases(ours))
    busy, how = _busy(ours, nbytes, 8)
    how += "; " + _peer_share(nbytes, 8, peer, aria_name)
    ends = "; ".join(f"run {i + 1}: {'; '.join(r.range_ends) or '(not logged)'}" for i, r in enumerate(ours))
    table.add("one big file, throttled", "busy while data flows, --jobs 8 (best run)", f"{busy:.0%}", "", "", "",
              f"≥ {BUSY:.0%}", verdict(busy >= BUSY, busy, BUSY), f"{how}; the file's end (run log): {ends}")
    table.add("one big file, throttled", "no-change rerun of the same mirror: bodies fetched", str(traffic["bodies"]),
              "", "", "", "0", verdict(traffic["bodies"] == 0), f"{traffic['requests']} requests, {fmt_s(rerun.seconds)}")


def big_unthrottled(ctx: Context, table: Table) -> None:
    size = 200 * MiB if ctx.quick else GiB
    rounds = 1 if ctx.quick else 3
    root, listed = _bigfile_tree(ctx, size)
    nfiles, nbytes = _tree_size(root)
    warm(root)
    ours, wget, durable = [], [], []
    with Nginx(root, ctx.work / "nginx-big") as web:
        for i in range(rounds):
            ours.append(_ours_run(ctx, web, f"bu-ours-{i}", 4, listed, nfiles, nbytes)[0])
            _sync()
            dest = ctx.dest(f"bu-wget-{i}")
            wget.append(run_wget(web.listing_url, dest, log_dir=ctx.logs, name=f"bu-wget-{i}"))
            t0 = time.monotonic()
            os.sync()  # wget leaves its data in the page cache; ours fsyncs each file before it counts
            durable.append(wget[-1].seconds + time.monotonic() - t0)
            _check_tree(dest, nfiles, nbytes, "wget")
    label = f"{size // MiB} MiB" if size < GiB else f"{size // GiB} GiB"
    best, peer = _best(ours), min(durable)
    table.add("one big file, unthrottled", f"1 file of {label}, loopback: ours (default --jobs 4) vs wget then `sync` "
              f"(both durable; best of {rounds})", fmt_s(best), "wget -x -i; sync", fmt_s(peer), f"{best / peer:.2f}",
              "≤ 1.0", verdict(best <= peer, best, peer),
              f"ours hashes every byte; all runs: ours {_all(ours)}; wget {_all(wget)}; wget then sync "
              f"{', '.join(f'{d:.2f}' for d in durable)}; max RSS ours {fmt_mb(max(r.max_rss_mb for r in ours))}; "
              + _phases(ours))


def head_phase(ctx: Context, table: Table) -> None:
    """Item 3: many tiny files through a 20 ms round trip at 4 connections, against aria2c -j 4 (one GET per file,
    no probes): the HEAD phase (or the first-bytes probe that replaces it) shows in the phases of ours."""
    count = 500 if ctx.quick else 2000
    rounds = 1 if ctx.quick else 2
    root = ctx.tree(f"tiny-{count}")
    listed = build_tree(root, tiny_files(count), tiny_fast=True)
    nfiles, nbytes = _tree_size(root)
    ours, aria = [], []
    with Nginx(root, ctx.work / "nginx-tiny-latency") as web, web.behind_latency(RTT_MS) as url:
        for i in range(rounds):
            _sync()
            dest = ctx.dest(f"hp-ours-{i}")
            run, report = _ours(url, dest, log_dir=ctx.logs, name=f"hp-ours-{i}", extra=["--jobs", "4"])
            _check_ours(report, listed, f"hp-ours-{i}", fetched=listed)
            _check_tree(dest, nfiles, nbytes, f"hp-ours-{i}")
            run.phases = report["phases"]
            ours.append(run)
            aria.append(_aria_run(ctx, root, f"hp-aria-j4-{i}", ["-j", "4"], nfiles, nbytes))
    best, peer = _best(ours), _best(aria)
    table.add("tiny files, 20 ms round trip", f"{count:,} tiny files, --jobs 4 vs aria2c -j 4 (best of {rounds})",
              fmt_s(best), "aria2c -j 4", fmt_s(peer), f"{best / peer:.2f}", "≤ 1.0", verdict(best <= peer, best, peer),
              f"all runs: ours {_all(ours)}; aria2c {_all(aria)}; " + _phases(ours))


SCENARIOS = {"start_up": start_up, "throttled_files": throttled_files, "big_throttled": big_throttled,
             "big_unthrottled": big_unthrottled, "head_phase": head_phase}
ARIA_4X4 = ["-j", "4", "-x", "4", "-s", "4", "-k", "1M"]  # the best aria2c an admin would type (issue 21)
ARIA_X8 = ["-x", "8", "-s", "8", "-k", "1M"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.transfer", description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    p.add_argument("--quick", action="store_true", help="smaller sizes (smoke test; prints only unless --out)")
    p.add_argument("--out", type=Path, help=f"results file (default {DOC.relative_to(ROOT)} for a full run)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip() in SCENARIOS] or list(SCENARIOS)
    out = args.out or (None if args.quick or args.only else DOC)
    work = Path(tempfile.mkdtemp(prefix="amsrepomirror-bench-transfer-"))
    cache_bytecode()
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

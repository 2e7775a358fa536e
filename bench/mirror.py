"""Mirror benchmarks: ``amsrepomirror mirror`` vs ``wget -x -i LISTING`` on the same nginx and tree.

Every scenario serves a synthetic tree (incompressible bytes, plus the ``<version>.yml`` index
the mirror requires) with tests/servers.py's nginx (basic auth, ETag, Range), and each tool
starts from an empty destination unless the measure is a rerun.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .common import (
    BenchError,
    Nginx,
    Row,
    build_tree,
    fmt_mb,
    fmt_s,
    fresh,
    print_row,
    run_ours,
    run_wget,
    sized_files,
    tiny_files,
    tree_stats,
    verdict,
    warm,
)

RTT_MS = 20  # round trip the latency proxy adds in scenario (c)

SECTION = "## Mirror (issue: resumable verified mirror)"
MiB = 1 << 20
GiB = 1 << 30


@dataclass
class Context:
    work: Path  # scratch folder: trees, destinations, logs, nginx prefixes
    quick: bool
    rows: list[Row] = field(default_factory=list)
    shared: dict[str, object] = field(default_factory=dict)  # figures one scenario hands to another
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print_row(row)
        return row

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    def tree(self, name: str) -> Path:
        return self.work / "trees" / name

    def dest(self, name: str) -> Path:
        return fresh(self.work / "dest" / name)


def _check_ours(report: dict, listed: int, name: str, *, fetched: int | None = None) -> None:
    if report.get("exit_code") != 0 or report.get("failed"):
        raise BenchError(f"{name}: mirror reported failures: {report.get('failed')} {report.get('error')}")
    if fetched is not None and report.get("fetched") != fetched:
        raise BenchError(f"{name}: expected {fetched} files fetched, report says {report.get('fetched')}")
    if report.get("fetched", 0) + report.get("up_to_date", 0) != listed:
        raise BenchError(f"{name}: {listed} listed, report says {report.get('fetched')} fetched + "
                         f"{report.get('up_to_date')} up to date")


def _check_tree(dest: Path, files: int, size: int, name: str) -> None:
    got = tree_stats(dest)
    if got != (files, size):
        raise BenchError(f"{name}: destination holds {got[0]} files / {got[1]} bytes, expected {files} / {size}")


def _tree_size(root: Path) -> (int, int):
    return tree_stats(root / "Downloads" / "packages", skip=("listings",))


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?\) (running|done|new requirements)\s+(\w+)\(")


def phases(dest: Path, report: dict, total: float) -> dict[str, float]:
    """Where a run of ours spent its wall time, from the Luigi log in its state folder:
    ``probe`` = FetchListing (listing + one HEAD per file), ``plan`` = VerifyTree's first pass
    and Luigi taking in the DownloadFile tasks, ``download`` = DownloadFile batches, ``verify`` =
    VerifyTree's final pass (manifest), ``other`` = the rest (interpreter start-up, imports,
    summary, gaps between batches)."""
    log = dest / ".amsrepomirror" / "runs" / report.get("run_id", "?") / "luigi.log"
    events = []
    try:
        for line in log.read_text(errors="replace").splitlines():
            m = _LOG_LINE.match(line)
            if m:
                when = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                events.append((when, m.group(2), m.group(3)))
    except OSError:
        return {}
    out = {"probe": 0.0, "plan": 0.0, "download": 0.0, "verify": 0.0}
    started: dict[str, float] = {}
    verify_runs = []
    for when, what, task in events:
        if what == "running":
            started[task] = when
        elif what == "done" and task in started:
            span = when - started.pop(task)
            if task == "FetchListing":
                out["probe"] += span
            elif task == "DownloadFile":
                out["download"] += span
            elif task == "VerifyTree":
                verify_runs.append(span)
        elif what == "new requirements" and task in started:
            verify_runs.append(None)
            out["plan"] += when - started.pop(task)
    # luigi re-runs VerifyTree after its dynamic dependencies; until then the worker is scheduling them
    first_download = next((w for w, what, t in events if what == "running" and t == "DownloadFile"), None)
    new_reqs = next((w for w, what, t in events if what == "new requirements"), None)
    if first_download is not None and new_reqs is not None:
        out["plan"] += first_download - new_reqs
    out["verify"] = sum(v for v in verify_runs if v)
    out["other"] = max(total - sum(out.values()), 0.0)
    return out


def fmt_phases(p: dict[str, float]) -> str:
    if not p:
        return ""
    names = {"probe": "listing+HEADs", "plan": "plan", "download": "download", "verify": "verify",
             "other": "other (start-up, gaps, summary)"}
    return "ours' time: " + ", ".join(f"{names[k]} {v:.1f} s" for k, v in p.items() if v >= 0.05)


def _ours(listing_url: str, dest: Path, **kwargs):
    """run_ours, plus where the time went (``report["phases"]``) while the run's log is still there."""
    run, report = run_ours(listing_url, dest, **kwargs)
    if report:
        report["phases"] = phases(dest, report, run.seconds)
        report["range_ends"] = range_ends(dest, report)
    return run, report


_RANGES_ENDED = re.compile(r"ranges ended: .*? \((\d+) bytes, (\d+) range requests\) on disk (.*?); (\d+) bytes hashed after in "
                           r"([\d.]+) s, fsync ([\d.]+) s")


def range_ends(dest: Path, report: dict) -> list[str]:
    """How each file fetched as ranges ended, from the run's log (segments.Transfers._log_end), in words."""
    log = dest / ".amsrepomirror" / "runs" / report.get("run_id", "?") / "luigi.log"
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    return [f"{int(m.group(1)) / 2**20:.0f} MiB in {m.group(2)} range requests: last range on disk {m.group(3)}; then "
            f"{int(m.group(4)) / 2**20:.0f} MiB hashed in {m.group(5)} s, fsync {m.group(6)} s"
            for m in _RANGES_ENDED.finditer(text)]


def _ratio(peer: float, ours: float) -> str:
    return f"{peer / ours:.2f}×" if ours > 0 else ""


def _sync() -> None:
    os.sync()  # the previous run's dirty pages must not be written back during the next one


def _median(values) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _best(runs):
    return min(runs, key=lambda pair: pair[0].seconds)


# ---- (a) many medium files, throttled per connection --------------------------------------------


def mirror_throttled(ctx: Context) -> None:
    count, total = (12, 40 * 10**6) if ctx.quick else (60, 250 * 10**6)
    root = ctx.tree(f"throttled-{count}")
    listed = build_tree(root, sized_files("linux/x86_64", count, total, seed="throttled"))
    nfiles, nbytes = _tree_size(root)
    what = f"{count} files, {nbytes / 10**6:.0f} MB, nginx limit_rate 20m/connection"
    warm(root)
    with Nginx(root, ctx.work / "nginx-throttled", limit_rate="20m") as web:
        _sync()
        web.clear()
        dest = ctx.dest("throttled-ours")
        ours, report = _ours(web.listing_url, dest, log_dir=ctx.logs, name="a-ours")
        traffic = web.traffic()
        _check_ours(report, listed, "a", fetched=listed)
        _check_tree(dest, nfiles, nbytes, "a ours")
        _sync()
        dest = ctx.dest("throttled-wget")
        wget = run_wget(web.listing_url, dest, log_dir=ctx.logs, name="a-wget")
        _check_tree(dest, nfiles, nbytes, "a wget")
    ctx.shared["throttled_rss"] = (what, ours.max_rss_mb, wget.max_rss_mb)
    speedup = wget.seconds / ours.seconds
    ctx.add(Row("(a) throttled", f"first run, {what}", fmt_s(ours.seconds), fmt_s(wget.seconds),
                _ratio(wget.seconds, ours.seconds), "wget ÷ ours ≥ 3×", verdict(speedup >= 3, speedup, 3),
                f"ours --jobs 4 (default) {nbytes / ours.seconds / 10**6:.0f} MB/s over 4 connections, "
                f"{traffic['requests']} requests; wget {nbytes / wget.seconds / 10**6:.0f} MB/s over 1 "
                f"(limit_rate is per request; a connection averaged above 20 MiB/s); " + fmt_phases(report["phases"])))


# ---- (b) one big file, unthrottled ---------------------------------------------------------------


def _bigfile_tree(ctx: Context, size: int) -> (Path, int):
    root = ctx.tree(f"big-{size // MiB}MiB")
    listed = build_tree(root, {f"linux/x86_64/python3.11-big-{size // MiB}MiB.tar.zst": size})
    return root, listed


def _big_runs(ctx: Context, size: int, *, with_wget: bool, rounds: int):
    root, listed = _bigfile_tree(ctx, size)
    nfiles, nbytes = _tree_size(root)
    warm(root)
    ours_runs, wget_runs = [], []
    with Nginx(root, ctx.work / f"nginx-big-{size // MiB}") as web:
        for i in range(rounds):
            _sync()
            dest = ctx.dest(f"big-ours-{size // MiB}")
            run, report = _ours(web.listing_url, dest, log_dir=ctx.logs, name=f"b-ours-{size // MiB}-{i}")
            _check_ours(report, listed, "b", fetched=listed)
            _check_tree(dest, nfiles, nbytes, "b ours")
            ours_runs.append((run, report))
            if with_wget:
                _sync()
                dest = ctx.dest(f"big-wget-{size // MiB}")
                wget_runs.append((run_wget(web.listing_url, dest, log_dir=ctx.logs, name=f"b-wget-{size // MiB}-{i}"), None))
                _check_tree(dest, nfiles, nbytes, "b wget")
    _sync()
    return ours_runs, wget_runs


def mirror_bigfile(ctx: Context) -> None:
    size = 100 * MiB if ctx.quick else GiB
    label = f"{size // MiB} MiB" if size < GiB else f"{size // GiB} GiB"
    rounds = 3 if ctx.quick else 5
    ours_runs, wget_runs = _big_runs(ctx, size, with_wget=True, rounds=rounds)
    (ours, report), wget = _best(ours_runs), _best(wget_runs)[0]
    ctx.shared[f"big_rss_{size}"] = (max(r.max_rss_mb for r, _ in ours_runs), max(r.max_rss_mb for r, _ in wget_runs))
    ctx.add(Row("(b) one big file", f"first run, 1 file of {label}, unthrottled (best of {rounds})", fmt_s(ours.seconds),
                fmt_s(wget.seconds), _ratio(wget.seconds, ours.seconds), "ours ≤ 1.10 × wget",
                verdict(ours.seconds <= 1.10 * wget.seconds, ours.seconds, 1.10 * wget.seconds),
                f"ours {size / ours.seconds / MiB:.0f} MiB/s (SHA-256 while streaming, fsync); "
                f"wget {size / wget.seconds / MiB:.0f} MiB/s (no hash, no fsync); medians: ours "
                f"{fmt_s(_median(r.seconds for r, _ in ours_runs))}, wget {fmt_s(_median(r.seconds for r, _ in wget_runs))}; "
                f"all runs (alternating): ours "
                + ", ".join(fmt_s(r.seconds) for r, _ in ours_runs)
                + "; wget " + ", ".join(fmt_s(r.seconds) for r, _ in wget_runs)
                + "; best run of " + fmt_phases(report["phases"])))


# ---- (c) no-change rerun -------------------------------------------------------------------------


def mirror_rerun(ctx: Context) -> None:
    count = 200 if ctx.quick else 1000
    root = ctx.tree(f"rerun-{count}")
    listed = build_tree(root, sized_files("common/data", count, count * 32 * 1024, seed="rerun", spread=0.95))
    nfiles, nbytes = _tree_size(root)
    what = f"{count:,} files of 1–64 KiB"
    with Nginx(root, ctx.work / "nginx-rerun") as web:
        _sync()
        dest_ours = ctx.dest("rerun-ours")
        first_ours, report = _ours(web.listing_url, dest_ours, log_dir=ctx.logs, name="c-ours-first")
        _check_ours(report, listed, "c", fetched=listed)
        _sync()
        dest_wget = ctx.dest("rerun-wget")
        first_wget = run_wget(web.listing_url, dest_wget, log_dir=ctx.logs, name="c-wget-first", timestamping=True)
        _check_tree(dest_wget, nfiles, nbytes, "c wget")
        reruns_ours, reruns_wget = [], []
        for i in range(2):
            _sync()
            web.clear()
            run, report = _ours(web.listing_url, dest_ours, log_dir=ctx.logs, name=f"c-ours-rerun-{i}")
            _check_ours(report, listed, "c rerun", fetched=0)
            reruns_ours.append((run, web.traffic(), report))
            _sync()
            web.clear()
            run = run_wget(web.listing_url, dest_wget, log_dir=ctx.logs, name=f"c-wget-rerun-{i}", timestamping=True)
            reruns_wget.append((run, web.traffic(), None))
        _check_tree(dest_ours, nfiles, nbytes, "c ours")
        # The same reruns with a WAN-like round trip: a proxy in front of the same nginx.
        with web.behind_latency(RTT_MS) as url:
            _sync()
            web.clear()
            wan_ours, wan_report = _ours(url, dest_ours, log_dir=ctx.logs, name="c-ours-rerun-wan")
            _check_ours(wan_report, listed, "c rerun (latency)", fetched=0)
            wan_ours_traffic = web.traffic()
            _sync()
            web.clear()
            wan_wget = run_wget(url, dest_wget, log_dir=ctx.logs, name="c-wget-rerun-wan", timestamping=True)
            wan_wget_traffic = web.traffic()
    ours, ours_traffic, ours_report = _best(reruns_ours)
    wget, wget_traffic, _ = _best(reruns_wget)
    bodies = max(t["bodies"] for _, t, _ in reruns_ours)
    ctx.add(Row("(c) no-change rerun", f"first run, {what} (reference)", fmt_s(first_ours.seconds),
                fmt_s(first_wget.seconds), _ratio(first_wget.seconds, first_ours.seconds), "", "",
                "wget with -N"))
    ok = ours.seconds <= 0.5 * wget.seconds and bodies == 0
    ctx.add(Row("(c) no-change rerun", f"rerun, nothing changed, {what} (best of 2)", fmt_s(ours.seconds),
                fmt_s(wget.seconds), _ratio(wget.seconds, ours.seconds), "ours ≤ ½ wget and 0 bodies",
                verdict(ok),
                f"bodies sent (GET with body, listing excluded): ours {bodies}, wget "
                f"{max(t['bodies'] for _, t, _ in reruns_wget)}; requests: ours {ours_traffic['requests']} "
                f"(listing + one HEAD per file), wget -N {wget_traffic['requests']} "
                f"({wget_traffic['status_401']} answered 401); " + fmt_phases(ours_report["phases"])))
    ok = wan_ours.seconds <= 0.5 * wan_wget.seconds and wan_ours_traffic["bodies"] == 0
    ctx.add(Row("(c) no-change rerun", f"same rerun through a proxy adding {RTT_MS} ms round trip (once each)",
                fmt_s(wan_ours.seconds), fmt_s(wan_wget.seconds), _ratio(wan_wget.seconds, wan_ours.seconds),
                "ours ≤ ½ wget and 0 bodies", verdict(ok),
                f"bodies: ours {wan_ours_traffic['bodies']}, wget {wan_wget_traffic['bodies']}; wget makes its "
                f"{wan_wget_traffic['requests']} requests one after another, ours its {wan_ours_traffic['requests']} "
                f"HEADs 4 at a time; " + fmt_phases(wan_report["phases"])))


# ---- (d) 1k vs 10k tiny files ---------------------------------------------------------------------


def mirror_tiny(ctx: Context) -> None:
    sizes = (200, 2000) if ctx.quick else (1000, 10000)
    figures = {}
    for count in sizes:
        root = ctx.tree(f"tiny-{count}")
        listed = build_tree(root, tiny_files(count), tiny_fast=True)
        nfiles, nbytes = _tree_size(root)
        with Nginx(root, ctx.work / f"nginx-tiny-{count}") as web:
            _sync()
            dest_ours = ctx.dest(f"tiny-ours-{count}")
            first, first_report = _ours(web.listing_url, dest_ours, log_dir=ctx.logs, name=f"d-ours-first-{count}")
            _check_ours(first_report, listed, "d", fetched=listed)
            _check_tree(dest_ours, nfiles, nbytes, "d ours")
            reruns = []
            for i in range(2):
                _sync()
                web.clear()
                run, report = _ours(web.listing_url, dest_ours, log_dir=ctx.logs, name=f"d-ours-rerun-{count}-{i}")
                _check_ours(report, listed, "d rerun", fetched=0)
                reruns.append((run, web.traffic(), report))
            rerun, traffic, rerun_report = _best(reruns)
            _sync()
            dest_wget = ctx.dest(f"tiny-wget-{count}")
            wfirst = run_wget(web.listing_url, dest_wget, log_dir=ctx.logs, name=f"d-wget-first-{count}", timestamping=True)
            _check_tree(dest_wget, nfiles, nbytes, "d wget")
            _sync()
            wrerun = run_wget(web.listing_url, dest_wget, log_dir=ctx.logs, name=f"d-wget-rerun-{count}", timestamping=True)
        figures[count] = (first.seconds, rerun.seconds)
        ctx.add(Row("(d) tiny files", f"first run, {count:,} files of 1–64 B", fmt_s(first.seconds),
                    fmt_s(wfirst.seconds), _ratio(wfirst.seconds, first.seconds), "", "",
                    f"ours {count / first.seconds:.0f} files/s; wget with -N; " + fmt_phases(first_report["phases"])))
        target, result = "", ""
        if count == sizes[1]:
            limit = 10.0
            target, result = f"< {limit:.0f} s", verdict(rerun.seconds < limit, rerun.seconds, limit)
        ctx.add(Row("(d) tiny files", f"no-op rerun, {count:,} files (ours best of 2)", fmt_s(rerun.seconds),
                    fmt_s(wrerun.seconds), _ratio(wrerun.seconds, rerun.seconds), target, result,
                    f"{traffic['requests']} requests, {traffic['bodies']} bodies; " + fmt_phases(rerun_report["phases"])))
    small, big = sizes
    factor = big // small
    for i, label in ((0, "first run"), (1, "no-op rerun")):
        ratio = figures[big][i] / figures[small][i]
        ctx.add(Row("(d) tiny files", f"scaling {big:,} ÷ {small:,} files, {label}", f"{ratio:.1f}", "", "",
                    f"≤ {factor * 1.2:.0f}", verdict(ratio <= factor * 1.2, ratio, factor * 1.2),
                    f"{factor}× the files; linear = {factor}"))


# ---- (e) Luigi scheduling: batches vs one task per file -----------------------------------------


def mirror_batching(ctx: Context) -> None:
    count = 500 if ctx.quick else 5000
    cap_after = 300 if ctx.quick else 900  # seconds; beyond that one-file tasks are re-measured on fewer files
    cfg = ctx.work / "luigi-batch1.cfg"
    cfg.write_text("[DownloadFile]\nmax_batch_size = 1\n")

    def measure(n: int, timeout: float | None):
        root = ctx.tree(f"tiny-{n}")
        listed = build_tree(root, tiny_files(n), tiny_fast=True)
        with Nginx(root, ctx.work / f"nginx-batch-{n}") as web:
            _sync()
            batched, report = _ours(web.listing_url, ctx.dest(f"batch-default-{n}"), log_dir=ctx.logs,
                                    name=f"e-default-{n}")
            _check_ours(report, listed, "e default", fetched=listed)
            batched.phases = report["phases"]
            _sync()
            single, report = _ours(web.listing_url, ctx.dest(f"batch-one-{n}"), log_dir=ctx.logs,
                                   name=f"e-batch1-{n}", config=cfg, timeout=timeout)
            single.phases = {}
            if not single.timed_out:
                _check_ours(report, listed, "e batch=1", fetched=listed)
                single.phases = report["phases"]
        return batched, single

    batched, single = measure(count, cap_after)
    note = ""
    if single.timed_out:
        note = (f"max_batch_size = 1 on {count:,} files was stopped after {cap_after} s; both re-measured "
                f"on {count * 2 // 5:,} files. ")
        count = count * 2 // 5
        batched, single = measure(count, None)
    ctx.add(Row("(e) scheduling", f"first run, {count:,} tiny files, default batching (max_batch_size = 2000)",
                fmt_s(batched.seconds), "", "", "", "", note + fmt_phases(batched.phases)))
    ctx.add(Row("(e) scheduling", f"first run, {count:,} tiny files, one task per file (max_batch_size = 1)",
                fmt_s(single.seconds), "", "", "", "",
                f"{single.seconds / batched.seconds:.1f}× the batched run, "
                f"{(single.seconds - batched.seconds) / count * 1000:.0f} ms more per file; " + fmt_phases(single.phases)))


# ---- (f) peak memory -----------------------------------------------------------------------------


def mirror_memory(ctx: Context) -> None:
    big = 100 * MiB if ctx.quick else GiB
    small = 20 * MiB if ctx.quick else 100 * MiB
    rss = {}
    for size in (small, big):
        key = f"big_rss_{size}"
        if key not in ctx.shared:
            runs, wruns = _big_runs(ctx, size, with_wget=True, rounds=1)
            ctx.shared[key] = (max(r.max_rss_mb for r, _ in runs), max(r.max_rss_mb for r, _ in wruns))
        rss[size] = ctx.shared[key]

    def label(size):
        return f"{size // MiB} MiB" if size < GiB else f"{size // GiB} GiB"

    ctx.add(Row("(f) peak memory", f"max RSS, 1 file of {label(small)}", fmt_mb(rss[small][0]), fmt_mb(rss[small][1]),
                "", "", "", "mirror process and its children"))
    flat = rss[big][0] <= 1.10 * rss[small][0]
    ctx.add(Row("(f) peak memory", f"max RSS, 1 file of {label(big)}", fmt_mb(rss[big][0]), fmt_mb(rss[big][1]),
                "", f"flat: ≤ 1.10 × the {label(small)} figure", verdict(flat),
                f"{rss[big][0] - rss[small][0]:+.1f} MB for {big // small}× the bytes"))
    if "throttled_rss" not in ctx.shared:
        ctx.notes.append("(f): max RSS of scenario (a) is reported only when (a) runs in the same invocation.")
    else:
        what, ours_mb, wget_mb = ctx.shared["throttled_rss"]
        ctx.add(Row("(f) peak memory", f"max RSS, scenario (a): {what.split(', nginx')[0]}", fmt_mb(ours_mb),
                    fmt_mb(wget_mb), "", f"≤ 1.10 × the {label(small)} figure",
                    verdict(ours_mb <= 1.10 * rss[small][0]), "4 concurrent downloads"))


SCENARIOS: dict[str, Callable[[Context], None]] = {
    "mirror_throttled": mirror_throttled,
    "mirror_bigfile": mirror_bigfile,
    "mirror_rerun": mirror_rerun,
    "mirror_tiny": mirror_tiny,
    "mirror_batching": mirror_batching,
    "mirror_memory": mirror_memory,
}

DESCRIPTION = """\
`amsrepomirror mirror` (default `--jobs 4`, credentials from `SCM_USER`/`SCM_PASSWORD`, run
from the project folder so `luigi.cfg` applies) against `wget --user demo --password demo-pass
-x -nH -q [-N] -i LISTING-URL`, both fetching from the same nginx (tests/servers.py: basic auth,
ETag, Range, `sendfile on`, one worker) on loopback serving the same synthetic tree of
incompressible pseudo-random files plus the `AMS2026.1.yml` index. Each tool starts from an
empty destination unless the measure is a rerun. Times are wall clock (`time.monotonic()`
around the whole process, Python start-up and Luigi included); peak memory is the max RSS of
the process and its children (`/usr/bin/time -v`). `os.sync()` runs before every measured run,
and the served files of (a) and (b) are read once beforehand so nginx serves both tools from
the page cache.
Ours also hashes every byte (SHA-256) and fsyncs each file and its record; wget does neither.
Loopback has no round-trip time, so per-request CPU decides the rerun figures; the extra (c) row
repeats the rerun through a small proxy (bench/latency.py) that delays each direction by 10 ms.
"ours' time" splits our wall time using the Luigi log of that run: listing+HEADs = FetchListing,
plan = VerifyTree's first pass plus Luigi taking in the DownloadFile tasks, download =
DownloadFile batches, verify = VerifyTree's final pass (for a no-op rerun: all of VerifyTree).
The machine is shared (other jobs were running; see the load average below), so expect a few
percent of noise, more on sub-second figures.
"""

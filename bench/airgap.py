"""``python -m bench.airgap [--quick] [--out FILE] [--work DIR] [--keep]``: bundle and unpack
against what an admin does by hand with 7-Zip and coreutils.

Scenario (one run): a verified mirror of a ~2 GB tree with one 700 MB file (bigger than the
512 MiB chunk size) among 40 others, and the same shape scaled to ~200 MB (70 MB file, 64 MiB
chunks).

1. ``amsrepomirror bundle --offline`` (copy compression) against ``7zz a -mx0 -v<chunk>`` of the
   tree plus ``sha256sum`` of every file of the tree.
2. ``amsrepomirror unpack`` into a fresh AMSHOME against ``sha256sum -c SHA256SUMS`` of our
   bundle plus ``7zz x`` of every chunk.
3. Peak memory of our bundle and unpack: ``ru_maxrss`` of the process tree (the largest single
   process, Luigi's forked workers included), and the sampled peak of the summed PSS of all
   processes of the run.

The page cache is dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``) before every measured
run; when that is not permitted, every command is run once as a warm-up and the figures are
warm-cache. The full run measures each command once; ``--quick`` (200 MB tree only) takes the
best of 2 and writes ``docs/benchmarks.md`` only when ``--out`` is given. After our unpack,
``$AMSHOME/repository`` is compared with the mirror manifest (every path, size and sha256).

Not a test: nothing here asserts timings. Results go to the "## Bundle and unpack" section of
``docs/benchmarks.md``; every other section of that file is kept as it is.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from amsrepomirror.testing.repository import (  # noqa: E402
    DEFAULT_VERSION,
    PLACEHOLDER_ORIGIN,
    listing_path,
    write_file,
    write_listing,
)
from amsrepomirror.testing.scmdouble import DEMO_PASSWORD, DEMO_USER, ScmDouble  # noqa: E402
from bench.common import first_line, replace_section  # noqa: E402

VERSION = DEFAULT_VERSION
DOC = ROOT / "docs" / "benchmarks.md"
HEADING = "## Bundle and unpack"
STATE_DIR = ".amsrepomirror"

BUNDLE_SPEEDUP = 1.2  # target: peer time / our time for bundling
UNPACK_SPEEDUP = 1.0  # target: at least as fast
RSS_LIMIT_MB = 200.0
RSS_SPREAD_MB = 20.0  # "independent of file size": 2 GB and 200 MB trees within this of each other


class BenchError(RuntimeError):
    """A benchmarked command failed or produced a wrong result: its figure would be meaningless."""


# ---- trees ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeSpec:
    key: str          # folder name under the work folder
    label: str        # as shown in the table
    total: int        # bytes of package files (the index comes on top)
    big: int          # the one file larger than a chunk
    others: int       # how many other files
    chunk: str        # --chunk-size of our bundle
    volume: str       # 7zz -v of the peer (same size)

    def files(self) -> dict[str, int]:
        """{relpath: size}: the big file plus ``others`` files of ±50 % around the mean."""
        rng = random.Random(f"airgap:{self.key}")
        weights = [0.5 + rng.random() for _ in range(self.others)]
        rest = self.total - self.big
        sizes = [int(w * rest / sum(weights)) for w in weights]
        sizes[-1] += rest - sum(sizes)
        folders = ["linux/x86_64", "macos/arm64", "windows/x86_64", "common/data"]
        out = {"linux/x86_64/python3.11-2026.101.tar.zst": self.big}
        for i, size in enumerate(sizes):
            out[f"{folders[i % len(folders)]}/pkg{i:02d}-2026.101.tar.zst"] = size
        return out


FULL = TreeSpec("tree-2gb", "2 GB", 2_000_000_000, 700_000_000, 40, "512MiB", "512m")
SMALL = TreeSpec("tree-200mb", "200 MB", 200_000_000, 70_000_000, 40, "64MiB", "64m")


def ours_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LUIGI_CONFIG_PATH", "SCM_USER", "SCM_PASSWORD")}
    env.update(SCM_USER=DEMO_USER, SCM_PASSWORD=DEMO_PASSWORD, PYTHONPATH=str(ROOT))
    return env


def manifest_path(mirror: Path) -> Path:
    return mirror / STATE_DIR / f"{VERSION}.manifest.json"


def prepare_mirror(spec: TreeSpec, work: Path) -> Path:
    """A verified mirror of ``spec`` (generated and mirrored once; reused when the spec matches)."""
    base = work / spec.key
    server, mirror, stamp = base / "scm", base / "mirror", base / "spec.json"
    files = spec.files()
    digest = hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()
    if stamp.is_file() and json.loads(stamp.read_text()).get("spec") == digest and manifest_path(mirror).is_file():
        print(f"   reusing the verified mirror {mirror}", flush=True)
        return mirror
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    t0 = time.monotonic()
    packages = listing_path(server, VERSION).parent.parent  # <server>/Downloads/packages
    packages.mkdir(parents=True)
    index = f"{VERSION}.yml"
    (packages / index).write_text("# synthetic benchmark index\n" + f"version: {VERSION}\n" +
                                  "".join(f"# {rel} {size}\n" for rel, size in sorted(files.items())))
    for rel, size in files.items():
        write_file(server, rel, size)
    write_listing(server, VERSION, PLACEHOLDER_ORIGIN, [index, *files])
    print(f"   generated {len(files) + 1} files, {sum(files.values()) / 1e6:.0f} MB ({time.monotonic() - t0:.0f} s)",
          flush=True)
    t0 = time.monotonic()
    with ScmDouble(server) as double:
        cmd = [sys.executable, "-m", "amsrepomirror", "mirror", "--version", VERSION, "--mirror", str(mirror),
               "--listing-url", double.listing_url(VERSION)]
        p = subprocess.run(cmd, cwd=ROOT, env=ours_env(), capture_output=True, text=True)
    if p.returncode != 0 or not manifest_path(mirror).is_file():
        raise BenchError(f"mirror of the synthetic tree failed (exit {p.returncode}):\n{tail(p.stderr)}")
    print(f"   mirrored through the SCM double ({time.monotonic() - t0:.0f} s)", flush=True)
    shutil.rmtree(server)  # not needed any more: keep the disk (and page cache) for the measurements
    stamp.write_text(json.dumps({"spec": digest}))
    return mirror


# ---- timed runs with peak memory ------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    returncode: int
    max_rss_kb: int       # ru_maxrss: largest single process of the tree (reaped children included)
    peak_pss_kb: int      # sampled: largest sum of Pss over all processes of the run
    peak_procs: int       # most processes of the run alive at one sample
    stdout: str
    stderr: str

    @property
    def rss_mb(self) -> float:
        return self.max_rss_kb / 1024.0

    @property
    def pss_mb(self) -> float:
        return self.peak_pss_kb / 1024.0


def tail(text: str, n: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def _group_pss_kb(pgid: int) -> tuple[int, int]:
    """(sum of Pss in kB, number of processes) over the processes of process group ``pgid``."""
    total = count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            # fields after the ")" closing comm: state ppid pgrp ...
            if int(stat[stat.rindex(b")") + 2:].split()[2]) != pgid:
                continue
            with open(f"/proc/{entry}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Pss:"):
                        total += int(line.split()[1])
                        count += 1
                        break
        except (OSError, ValueError, IndexError):
            continue
    return total, count


TIME_BIN = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def timed(cmd: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None, log_dir: Path,
          name: str) -> Run:
    """Run ``cmd`` once in its own session; wall-clock seconds, ru_maxrss and sampled PSS.

    ru_maxrss of a forked child starts at its parent's RSS (Linux carries the high-water mark
    across exec), so a command forked straight from this Python process would report at least
    this process's RSS. GNU time is a small C program: the ru_maxrss it reports for its child
    is the command's own. Without it, wait4's figure is used (an overestimate)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / f"{name}.stdout", log_dir / f"{name}.stderr"
    rss_path = log_dir / f"{name}.maxrss"
    rss_path.unlink(missing_ok=True)
    argv = [str(c) for c in cmd]
    if TIME_BIN:
        argv = [TIME_BIN, "-f", "%M", "-o", str(rss_path), "--"] + argv
    done = threading.Event()
    peak = {"pss": 0, "procs": 0}
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, cwd=cwd, env=env or dict(os.environ),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)

        def sample():
            while not done.wait(0.05):
                pss, procs = _group_pss_kb(proc.pid)
                peak["pss"] = max(peak["pss"], pss)
                peak["procs"] = max(peak["procs"], procs)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - started
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss = usage.ru_maxrss
    if TIME_BIN:
        found = re.findall(r"^(\d+)$", rss_path.read_text() if rss_path.is_file() else "", re.M)
        if not found:
            raise BenchError(f"{TIME_BIN} wrote no peak RSS for {name}")
        rss = int(found[-1])
    return Run(seconds, proc.returncode, rss, peak["pss"], peak["procs"],
               out_path.read_text(errors="replace"), err_path.read_text(errors="replace"))


def timed_sync() -> float:
    t0 = time.monotonic()
    os.sync()
    return time.monotonic() - t0


class Cache:
    """Drops the page cache before each measured run, or says that it cannot."""

    def __init__(self):
        self.cold = self._drop()

    @staticmethod
    def _drop() -> bool:
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            return True
        except OSError:
            return False

    def before_run(self) -> None:
        if self.cold:
            self.cold = self._drop()
            if not self.cold:
                raise BenchError("dropping the page cache stopped working in the middle of the run")
        else:
            os.sync()

    @property
    def description(self) -> str:
        if self.cold:
            return "cold cache: `sync; echo 3 > /proc/sys/vm/drop_caches` before every measured run"
        return ("warm cache (dropping the page cache is not permitted here): every command ran once "
                "as a warm-up before it was measured")


# ---- the commands -----------------------------------------------------------------------------------


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def ours_bundle(mirror: Path, out: Path, spec: TreeSpec, logs: Path, name: str):
    remove(out)
    cmd = [sys.executable, "-m", "amsrepomirror", "bundle", "--version", VERSION, "--mirror", str(mirror),
           "--out", str(out), "--chunk-size", spec.chunk, "--offline"]
    return cmd, dict(cwd=ROOT, env=ours_env(), log_dir=logs, name=name)


def peer_bundle(mirror: Path, out: Path, spec: TreeSpec, logs: Path, name: str):
    remove(out)
    out.mkdir(parents=True)
    script = (
        f"set -e; cd {sh(mirror)}; {MARK}; "
        f"7zz a -mx0 -v{spec.volume} -bso0 -bsp0 {sh(out / 'tree.7z')} . '-xr!{STATE_DIR}'; {MARK}; "
        f"find . -path ./{STATE_DIR} -prune -o -type f -print0 | sort -z | xargs -0 sha256sum > {sh(out / 'tree.sha256')}; "
        f"{MARK}"
    )
    return ["sh", "-c", script], dict(cwd=ROOT, log_dir=logs, name=name)


def ours_unpack(bundle: Path, amshome: Path, logs: Path, name: str):
    remove(amshome)
    amshome.mkdir(parents=True)
    cmd = [sys.executable, "-m", "amsrepomirror", "unpack", str(bundle), "--amshome", str(amshome)]
    return cmd, dict(cwd=ROOT, env=ours_env(), log_dir=logs, name=name)


def peer_unpack(bundle: Path, dest: Path, logs: Path, name: str):
    remove(dest)
    dest.mkdir(parents=True)
    script = (
        f"set -e; cd {sh(bundle)}; {MARK}; sha256sum -c --quiet SHA256SUMS; {MARK}; "
        f"for c in *.7z; do 7zz x -y -bso0 -bsp0 -o{sh(dest)} \"$c\"; done; {MARK}"
    )
    return ["sh", "-c", script], dict(cwd=ROOT, log_dir=logs, name=name)


MARK = 'echo "mark $(date +%s.%N)"'  # timestamps between the steps of a peer script


def steps(stdout: str) -> list[float]:
    """Seconds between consecutive MARK lines of a peer script's output."""
    marks = [float(m) for m in re.findall(r"^mark (\d+\.\d+)$", stdout, re.M)]
    return [b - a for a, b in zip(marks, marks[1:], strict=False)]


def sh(path: Path) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"


@dataclass
class Measured:
    run: Run
    sync_after: float  # seconds a `sync` took right after the run (data the tool left unwritten)


def measure(what: str, make, cache: Cache, *, warm_up: bool, check=None) -> Measured:
    """Run ``make(name)`` -> (cmd, kwargs) once, after dropping the page cache (or, when that is
    not permitted and ``warm_up`` is set, after one warm-up run). ``check(run)`` raises BenchError
    on a wrong result."""
    rounds = 2 if (warm_up and not cache.cold) else 1
    for i in range(rounds):
        name = f"{what}-{i}" if rounds == 2 else what
        cmd, kwargs = make(name)
        cache.before_run()
        run = timed(cmd, **kwargs)
        sync_after = timed_sync()
        if run.returncode != 0:
            raise BenchError(f"{what} failed (exit {run.returncode}): {' '.join(map(str, cmd))}\n{tail(run.stderr)}")
        if check:
            check(run)
        if rounds == 2 and i == 0:
            print(f"   {what}: warm-up {run.seconds:.2f} s", flush=True)
    print(f"   {what}: {run.seconds:.2f} s (+ sync {sync_after:.2f} s), max RSS {run.rss_mb:.0f} MB, "
          f"peak PSS sum {run.pss_mb:.0f} MB over up to {run.peak_procs} process(es)"
          + (f"; steps {', '.join(f'{t:.2f} s' for t in steps(run.stdout))}" if steps(run.stdout) else ""), flush=True)
    return Measured(run, sync_after)


def best(a: Measured | None, b: Measured) -> Measured:
    return b if a is None or b.run.seconds < a.run.seconds else a


def check_unpacked(mirror: Path, repository: Path) -> int:
    """``repository`` holds exactly the files of the mirror manifest, same size and sha256."""
    want = {f["path"]: (f["size"], f["sha256"]) for f in json.loads(manifest_path(mirror).read_text())["files"]}
    found: dict[str, tuple[int, str]] = {}
    for dirpath, _dirnames, filenames in os.walk(repository):
        for name in filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(repository).as_posix()
            h = hashlib.sha256()
            with open(full, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            found[rel] = (full.stat().st_size, h.hexdigest())
    if found != want:
        missing = sorted(set(want) - set(found))[:5]
        extra = sorted(set(found) - set(want))[:5]
        wrong = sorted(p for p in set(want) & set(found) if want[p] != found[p])[:5]
        raise BenchError(f"unpacked tree differs from the mirror manifest: missing {missing}, extra {extra}, "
                         f"wrong {wrong}")
    return len(found)


# ---- one tree ---------------------------------------------------------------------------------------


@dataclass
class TreeResult:
    spec: TreeSpec
    files: int
    bytes: int
    chunks: int
    ours_bundle: Measured
    peer_bundle: Measured
    ours_unpack: Measured
    peer_unpack: Measured
    checked: int


def bench_tree(spec: TreeSpec, work: Path, cache: Cache, repeats: int) -> TreeResult:
    print(f"== {spec.label} tree: one {spec.big / 1e6:.0f} MB file among {spec.others} others, "
          f"chunks of {spec.chunk}", flush=True)
    mirror = prepare_mirror(spec, work)
    base = work / spec.key
    logs = base / "logs"
    ours_out, peer_out = base / "bundle-ours", base / "bundle-peer"
    amshome, peer_dest = base / "amshome", base / "unpacked-peer"
    manifest = json.loads(manifest_path(mirror).read_text())
    files, size = len(manifest["files"]), sum(f["size"] for f in manifest["files"])

    def chunk_check(run):
        if not (ours_out / "SHA256SUMS").is_file():
            raise BenchError(f"bundle exited 0 but {ours_out}/SHA256SUMS is missing")

    def peer_check(run):
        lines = (peer_out / "tree.sha256").read_text().count("\n")
        if lines != files:
            raise BenchError(f"the peer hashed {lines} files, the mirror has {files}")

    # Order: ours, then the peer, per step (and per round in quick mode). Both unpacks read the
    # bundle of our last bundle run.
    ours_b = peer_b = None
    for i in range(repeats):
        ours_b = best(ours_b, measure("ours-bundle", lambda n, i=i: ours_bundle(mirror, ours_out, spec, logs, f"{n}-{i}"),
                                      cache, warm_up=i == 0, check=chunk_check))
        peer_b = best(peer_b, measure("peer-bundle", lambda n, i=i: peer_bundle(mirror, peer_out, spec, logs, f"{n}-{i}"),
                                      cache, warm_up=i == 0, check=peer_check))
    remove(peer_out)
    chunks = len(list(ours_out.glob("*.7z")))

    checked = 0

    def unpack_check(run):
        nonlocal checked
        checked = check_unpacked(mirror, amshome / "repository")

    def peer_unpack_check(run):
        if not any(peer_dest.iterdir()):
            raise BenchError("7zz x extracted nothing")

    ours_u = peer_u = None
    for i in range(repeats):
        ours_u = best(ours_u, measure("ours-unpack", lambda n, i=i: ours_unpack(ours_out, amshome, logs, f"{n}-{i}"),
                                      cache, warm_up=i == 0, check=unpack_check))
        peer_u = best(peer_u, measure("peer-unpack", lambda n, i=i: peer_unpack(ours_out, peer_dest, logs, f"{n}-{i}"),
                                      cache, warm_up=i == 0, check=peer_unpack_check))
    print(f"   unpacked tree equals the mirror manifest ({checked} files, sizes and sha256)", flush=True)
    for p in (peer_dest, amshome):
        remove(p)
    return TreeResult(spec, files, size, chunks, ours_b, peer_b, ours_u, peer_u, checked)


# ---- report -------------------------------------------------------------------------------------------


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s"


def md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


@dataclass
class Verdicts:
    rows: list[list[str]] = field(default_factory=list)
    results: dict[str, bool] = field(default_factory=dict)


def table(results: list[TreeResult]) -> Verdicts:
    v = Verdicts()
    head = ["Tree", "Measure", "ours", "peer", "peer ÷ ours", "Target", "Result", "Notes"]
    v.rows += [head, ["---"] * len(head)]
    main = results[0]  # the biggest tree measured carries the speed targets
    for r in results:
        speed = r is main
        for step, ours, peer, target, names in (
                ("bundle", r.ours_bundle, r.peer_bundle, BUNDLE_SPEEDUP, ("7zz a", "sha256sum")),
                ("unpack", r.ours_unpack, r.peer_unpack, UNPACK_SPEEDUP, ("sha256sum -c", "7zz x"))):
            ratio = peer.run.seconds / ours.run.seconds
            split = steps(peer.run.stdout)
            note = ""
            if len(split) == 2:
                note = "peer: " + " + ".join(f"`{n}` {t:.2f} s" for n, t in zip(names, split, strict=True))
            if step == "bundle" and note:
                note += " (of every file)"
            ok = ratio >= target
            if speed:
                v.results[f"{step} speed ({r.spec.label})"] = ok
            v.rows.append([r.spec.label, f"{step}: wall time", fmt_s(ours.run.seconds), fmt_s(peer.run.seconds),
                           f"{ratio:.2f}", f"≥ {target:.1f}" if speed else "(reference)",
                           f"**{'PASS' if ok else 'FAIL'}**" if speed else "", note])
            with_sync = (peer.run.seconds + peer.sync_after) / (ours.run.seconds + ours.sync_after)
            v.rows.append([r.spec.label, f"{step}: wall time + `sync` after it",
                           fmt_s(ours.run.seconds + ours.sync_after), fmt_s(peer.run.seconds + peer.sync_after),
                           f"{with_sync:.2f}", "(reference)", "", ""])
        for step, m in (("bundle", r.ours_bundle), ("unpack", r.ours_unpack)):
            ok = m.run.rss_mb < RSS_LIMIT_MB
            v.results[f"{step} peak RSS ({r.spec.label})"] = ok
            peer = r.peer_bundle if step == "bundle" else r.peer_unpack
            v.rows.append([r.spec.label, f"{step}: peak RSS, largest process", f"{m.run.rss_mb:.0f} MB",
                           f"{peer.run.rss_mb:.0f} MB", "", f"< {RSS_LIMIT_MB:.0f} MB",
                           f"**{'PASS' if ok else 'FAIL'}**", ""])
            v.rows.append([r.spec.label, f"{step}: peak PSS, sum over all processes (sampled)",
                           f"{m.run.pss_mb:.0f} MB ({m.run.peak_procs} proc.)",
                           f"{peer.run.pss_mb:.0f} MB", "", "(reference)", "",
                           "processes counted include GNU time"])
    if len(results) > 1:
        big, small = results[0], results[-1]
        for step in ("bundle", "unpack"):
            a = getattr(big, f"ours_{step}").run.rss_mb
            b = getattr(small, f"ours_{step}").run.rss_mb
            ok = abs(a - b) <= RSS_SPREAD_MB
            v.results[f"{step} peak RSS independent of file size"] = ok
            v.rows.append([f"{big.spec.label} vs {small.spec.label}", f"{step}: peak RSS difference",
                           f"{round(a - b) + 0:+d} MB", "", "", f"within ±{RSS_SPREAD_MB:.0f} MB",
                           f"**{'PASS' if ok else 'FAIL'}**", ""])
    return v



def hash_speeds(work: Path) -> str:
    """Warm-cache sha256 throughput of coreutils' sha256sum and of Python's hashlib (OpenSSL) on
    one 256 MiB file: the peers hash with the former, amsrepomirror with the latter."""
    probe = work / "sha256-probe.bin"
    size = 256 << 20
    try:
        with open(probe, "wb") as f:
            block = random.Random(0).randbytes(1 << 20)
            for _ in range(size >> 20):
                f.write(block)
        t0 = time.monotonic()
        subprocess.run(["sha256sum", str(probe)], check=True, capture_output=True)
        coreutils = size / (time.monotonic() - t0) / 1e6
        t0 = time.monotonic()
        h = hashlib.sha256()
        with open(probe, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        ours = size / (time.monotonic() - t0) / 1e6
        return f"sha256sum {coreutils:.0f} MB/s, Python hashlib {ours:.0f} MB/s (warm cache, 256 MiB file)"
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"not measured ({exc})"
    finally:
        probe.unlink(missing_ok=True)


def machine_info(work: Path, cache: Cache) -> dict[str, str]:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, AttributeError):
        mem = "unknown"
    versions = {}
    for mod in ("py7zr", "luigi"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - informational only
            versions[mod] = "unknown"
    try:
        fs = " ".join(subprocess.run(["df", "--output=source,fstype,avail", "-h", str(work)], capture_output=True,
                                     text=True, timeout=10).stdout.splitlines()[-1].split())
    except (OSError, subprocess.TimeoutExpired, IndexError):
        fs = "unknown"
    return {
        "Date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "CPU": f"{os.cpu_count()} × {cpu}",
        "Memory": mem,
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "py7zr": versions["py7zr"],
        "luigi": versions["luigi"],
        "7zz": first_line(["7zz"], "7-Zip"),
        "sha256sum": first_line(["sha256sum", "--version"]),
        "sha256 speed": hash_speeds(work),
        "Scratch filesystem": f"{work} ({fs})",
        "Page cache": cache.description,
        "Peak RSS from": ("GNU time (`/usr/bin/time -f %M`), i.e. ru_maxrss of the command's process tree"
                          if TIME_BIN else "wait4's ru_maxrss (includes the benchmark process's RSS at fork: an overestimate)"),
        "Commit": first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
    }


def render(results: list[TreeResult], verdicts: Verdicts, info: dict[str, str], quick: bool, repeats: int,
           elapsed: float) -> str:
    lines = [
        "`python -m bench.airgap` (run by `make bench` after `bench.run`): `amsrepomirror bundle --offline` "
        "(copy compression, 2 Luigi workers) and `amsrepomirror unpack` against what an admin does by hand.",
        "",
        "- **Bundle peer**: `7zz a -mx0 -v<chunk size>` of the mirror tree, then `sha256sum` of every file "
        "of the tree (one shell script, timed as a whole).",
        "- **Unpack peer**: `sha256sum -c SHA256SUMS` in our bundle folder, then `7zz x` of every chunk. It does "
        "less than `unpack`: it leaves the split file in parts and checks no file against the manifest.",
        "- Trees: pseudo-random (incompressible) files; one file bigger than the chunk size among 40 others, "
        "plus the `<VERSION>.yml` index; a verified mirror made once with `amsrepomirror mirror` from the SCM "
        "double (not measured).",
        "- Peak RSS is `ru_maxrss` of the process tree (the largest single process: the CLI or a forked Luigi "
        "worker, whichever peaks higher). The PSS sum adds up all processes alive at once (sampled every 50 ms).",
        "- “+ `sync`”: a `sync` right after the run. Our bundle fsyncs each chunk and unpack syncs the "
        "staging filesystem once before the swap; 7zz and sha256sum do not, so their data may still be in the page "
        "cache when they exit.",
        "",
    ]
    if quick:
        lines += ["**Quick run (`--quick`): 200 MB tree only, best of 2; not the reference figures.**", ""]
    else:
        lines += [f"Each command measured {'once' if repeats == 1 else f'best of {repeats}'}; the speed targets "
                  f"apply to the {results[0].spec.label} tree. Single runs on a shared VM can differ from a repeat "
                  "by tens of percent (disk and CPU): read a ratio near its target as inconclusive.", ""]
    lines += ["| Tree | Files | Bytes | Chunk size | Chunks |", "| --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r.spec.label} | {r.files} (one of {r.spec.big / 1e6:.0f} MB) | {r.bytes / 1e6:.0f} MB "
                     f"| {r.spec.chunk} | {r.chunks} |")
    lines += [""]
    lines += [md_row(row) for row in verdicts.rows]
    lines += ["", "Ratios are the peer's time ÷ ours (above 1: ours is faster).", ""]
    lines += ["Targets:", ""]
    lines += [f"- {name}: **{'PASS' if ok else 'FAIL'}**" for name, ok in verdicts.results.items()]
    lines += ["", "Correctness: after each `unpack`, `$AMSHOME/repository` was compared with the mirror manifest "
              "(every path, size and sha256): "
              + ", ".join(f"{r.spec.label}: {r.checked} files equal" for r in results) + ".", ""]
    lines += ["Machine and tools:", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += [f"- Duration: {elapsed / 60:.0f} min (including generating and mirroring the trees when not reused)", ""]
    return "\n".join(lines)




# ---- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.airgap", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="200 MB tree only, best of 2 (smoke test)")
    p.add_argument("--out", type=Path, help=f"results file (default {DOC.relative_to(ROOT)} for a full run)")
    p.add_argument("--work", type=Path, help="scratch folder (default: a new folder under /tmp, removed "
                                             "afterwards); mirrors in it are reused")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--only", default="", help=argparse.SUPPRESS)  # accepted (make bench passes ARGS to both)
    args = p.parse_args(argv)
    for tool in ("7zz", "sha256sum"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not installed", file=sys.stderr)
            return 1
    out = args.out or (None if args.quick else DOC)
    work = (args.work or Path(tempfile.mkdtemp(prefix="amsrepomirror-airgap-"))).absolute()
    work.mkdir(parents=True, exist_ok=True)
    cache = Cache()
    info = machine_info(work, cache)
    print("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    specs = [SMALL] if args.quick else [FULL, SMALL]
    repeats = 2 if args.quick else 1
    started = time.monotonic()
    try:
        results = [bench_tree(spec, work, cache, repeats) for spec in specs]
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if not (args.keep or args.work):
            shutil.rmtree(work, ignore_errors=True)
    verdicts = table(results)
    body = render(results, verdicts, info, args.quick, repeats, time.monotonic() - started)
    print()
    print("\n".join(md_row(r) for r in verdicts.rows))
    for name, ok in verdicts.results.items():
        print(f"  {name}: {'PASS' if ok else 'FAIL'}")
    if out:
        replace_section(out, HEADING, body)
        print(f"\nwrote the \"{HEADING[3:]}\" section of {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

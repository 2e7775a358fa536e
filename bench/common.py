"""Shared benchmark machinery: timed subprocess runs with peak memory, synthetic trees, nginx,
machine information, the results table and the per-section update of ``docs/benchmarks.md``."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
for _p in (str(ROOT), str(TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from servers import NginxServer, find_tool, parse_access_log  # noqa: E402  (tests/servers.py, reused as is)

from amsrepomirror.testing.repository import (  # noqa: E402
    DEFAULT_VERSION,
    PLACEHOLDER_ORIGIN,
    retarget_listing,
    write_file,
    write_listing,
)
from amsrepomirror.testing.scmdouble import DEMO_PASSWORD, DEMO_USER  # noqa: E402
from bench.latency import LatencyProxy  # noqa: E402

VERSION = DEFAULT_VERSION
TIME_BIN = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


class BenchError(RuntimeError):
    """A benchmarked command failed or produced the wrong result: the figure would be meaningless."""


# ---- timed runs ----------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    returncode: int
    max_rss_kb: int  # peak RSS of the process and its reaped children
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def max_rss_mb(self) -> float:
        return self.max_rss_kb / 1024.0


def timed(cmd: Sequence[str], *, cwd: Path, env: dict[str, str], log_dir: Path, name: str,
          timeout: float | None = None) -> Run:
    """Run ``cmd`` once; wall-clock seconds (time.monotonic) and peak RSS (``/usr/bin/time -v``
    when installed, else the rusage ``wait4`` returns, which covers the same process tree).

    ``timeout``: kill the process group and return ``timed_out=True``.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / f"{name}.stdout", log_dir / f"{name}.stderr"
    rss_path = log_dir / f"{name}.time"
    argv = [str(c) for c in cmd]
    if TIME_BIN:
        argv = [TIME_BIN, "-v", "-o", str(rss_path)] + argv
    killed = threading.Event()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
        timer = None
        if timeout:
            def kill():
                killed.set()
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            timer = threading.Timer(timeout, kill)
            timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - started
        if timer:
            timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss = usage.ru_maxrss
    if TIME_BIN and rss_path.is_file():
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", rss_path.read_text(errors="replace"))
        if m:
            rss = int(m.group(1))
        m = re.search(r"Exit status: (\d+)", rss_path.read_text(errors="replace"))
        if m and proc.returncode == 0:
            proc.returncode = int(m.group(1))
    return Run(seconds, proc.returncode, rss, out_path.read_text(errors="replace"),
               err_path.read_text(errors="replace"), killed.is_set())


def tail(text: str, n: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


# ---- the two tools -------------------------------------------------------------------------------


def cache_bytecode() -> None:
    """Compile the tool's modules once, as an installed wheel has them: with PYTHONDONTWRITEBYTECODE set (or a
    read-only source folder) every run of an editable install would compile them again at start-up (about
    0.1-0.2 s per run), which is no cost of the tool's."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "pipeline")], check=False,
                   capture_output=True)


def ours_env(config: Path | None = None) -> dict[str, str]:
    """Environment of an amsrepomirror run: credentials from the environment,
    luigi.cfg from the project folder (plus ``config`` read after it, if given)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LUIGI_CONFIG_PATH", "SCM_USER", "SCM_PASSWORD")}
    env.update(SCM_USER=DEMO_USER, SCM_PASSWORD=DEMO_PASSWORD)
    if config is not None:
        env["LUIGI_CONFIG_PATH"] = str(config)
    return env


def run_ours(listing_url: str, dest: Path, *, log_dir: Path, name: str, config: Path | None = None,
             timeout: float | None = None, extra: Sequence[str] = ()) -> (Run, dict):
    """``python -m amsrepomirror mirror`` with its default --jobs; returns the run and its --report."""
    report = log_dir / f"{name}.report.json"
    if report.exists():
        report.unlink()
    cmd = [sys.executable, "-m", "amsrepomirror", "mirror", "--version", VERSION, "--mirror", str(dest),
           "--listing-url", listing_url, "--report", str(report), *extra]
    run = timed(cmd, cwd=ROOT, env=ours_env(config), log_dir=log_dir, name=name, timeout=timeout)
    if run.timed_out:
        return run, {}
    if run.returncode != 0:
        raise BenchError(f"amsrepomirror failed ({name}, exit {run.returncode}):\n{tail(run.stderr)}")
    return run, json.loads(report.read_text())


def run_wget(listing_url: str, dest: Path, *, log_dir: Path, name: str, timestamping: bool = False) -> Run:
    """``wget --user demo --password demo-pass -x -nH -q [-N] -i LISTING-URL`` in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = ["wget", "--user", DEMO_USER, "--password", DEMO_PASSWORD, "-x", "-nH", "-q"]
    if timestamping:
        cmd.append("-N")
    cmd += ["-i", listing_url]
    run = timed(cmd, cwd=dest, env=dict(os.environ), log_dir=log_dir, name=name)
    if run.returncode != 0:
        raise BenchError(f"wget failed ({name}, exit {run.returncode}):\n{tail(run.stderr)}")
    return run


def tree_stats(folder: Path, skip: Iterable[str] = (".amsrepomirror", "listings")) -> (int, int):
    """(files, bytes) under ``folder``, state folders left out."""
    files = size = 0
    skip = set(skip)
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            files += 1
            size += os.stat(os.path.join(dirpath, name)).st_size
    return files, size


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# ---- synthetic trees -----------------------------------------------------------------------------


def build_tree(root: Path, files: dict[str, int], *, tiny_fast: bool = False) -> int:
    """A tree ``root/Downloads/packages/`` holding ``files`` {relpath: size} of incompressible
    pseudo-random bytes, plus the ``<version>.yml`` index a mirror must contain, and the
    listing of all of them (placeholder origin; nginx retargets it on start). Reused when the
    same spec was built before. Returns the number of listed files."""
    spec = hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()
    stamp = root / "bench-tree.json"
    listed = len(files) + 1
    if stamp.is_file() and json.loads(stamp.read_text()).get("spec") == spec:
        return listed
    shutil.rmtree(root, ignore_errors=True)
    packages = root / "Downloads" / "packages"
    index = f"{VERSION}.yml"
    (packages).mkdir(parents=True)
    (packages / index).write_text(f"# synthetic benchmark index\nversion: {VERSION}\nfiles: {len(files)}\n")
    made = set()
    for rel, size in files.items():
        if tiny_fast and size < (1 << 20):  # like make_repository's tiny files: no temp file, one write
            path = packages / rel
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            rng = random.Random(f"scmdouble:0:{rel}")
            path.write_bytes(rng.randbytes(size))
        else:
            write_file(root, rel, size)
    write_listing(root, VERSION, PLACEHOLDER_ORIGIN, [index, *files])
    stamp.write_text(json.dumps({"spec": spec}))
    return listed


def warm(root: Path) -> None:
    """Read every file of the tree once, so that nginx serves both tools from the page cache
    (the VM reclaims cold pages, and the first tool measured would otherwise pay for the disk)."""
    for dirpath, _, filenames in os.walk(root / "Downloads" / "packages"):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                while f.read(1 << 24):
                    pass


def sized_files(prefix: str, count: int, total: int, seed: str, spread: float = 0.5) -> dict[str, int]:
    """``count`` files under ``prefix`` whose sizes vary by ±``spread`` and add up to ``total``."""
    rng = random.Random(seed)
    weights = [1 + spread * (2 * rng.random() - 1) for _ in range(count)]
    scale = total / sum(weights)
    sizes = [int(w * scale) for w in weights]
    sizes[-1] += total - sum(sizes)
    width = len(str(count))
    return {f"{prefix}/pkg-{i:0{width}d}.tar.zst": s for i, s in enumerate(sizes)}


def tiny_files(count: int, prefix: str = "common/tiny") -> dict[str, int]:
    """``count`` files of 1..64 bytes in folders of at most 1,000 (like make_repository's tiny=N)."""
    out = {}
    for i in range(count):
        rel = f"{prefix}/{i // 1000:04d}/f{i:05d}.dat"
        out[rel] = 1 + random.Random(f"size:{rel}").randrange(64)
    return out


class Nginx:
    """tests/servers.py's NginxServer, plus access-log accounting per measured run."""

    def __init__(self, root: Path, workdir: Path, limit_rate: str | None = None):
        nginx = find_tool("nginx")
        if nginx is None:
            raise BenchError("nginx is not installed (apt-get install nginx)")
        shutil.rmtree(workdir, ignore_errors=True)
        self.server = NginxServer(root, limit_rate=limit_rate, nginx=nginx, workdir=workdir)

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        self.server.stop()

    @property
    def listing_url(self) -> str:
        return self.server.listing_url(VERSION)

    def clear(self) -> None:
        self.server.clear_access_log()

    @contextlib.contextmanager
    def behind_latency(self, rtt_ms: float) -> Iterator[str]:
        """This nginx behind a LatencyProxy adding ``rtt_ms`` of round trip; yields the listing URL
        through the proxy. The listing on disk names the proxy until the block ends."""
        with LatencyProxy(self.server.host, self.server.port, rtt_ms / 2000) as proxy:
            retarget_listing(self.server.root, VERSION, proxy.base_url)
            try:
                yield self.listing_url.replace(self.server.base_url, proxy.base_url, 1)
            finally:
                retarget_listing(self.server.root, VERSION, self.server.base_url)

    def traffic(self) -> dict[str, int]:
        """Requests since ``clear()``: all of them, and GETs that carried a body (listing left out)."""
        time.sleep(0.2)  # nginx logs a request just after its response
        records = parse_access_log(self.server.access_log_path)
        bodies = [r for r in records if r.method == "GET" and r.body_bytes > 0
                  and not (r.relpath or "").startswith("listings/")]
        return {"requests": len(records), "bodies": len(bodies), "body_bytes": sum(r.body_bytes for r in bodies),
                "status_401": sum(1 for r in records if r.status == 401)}


# ---- results -------------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    measure: str
    ours: str = ""
    peer: str = ""
    ratio: str = ""
    target: str = ""
    result: str = ""  # PASS / FAIL / "" (informational)
    notes: str = ""


COLUMNS = ("Scenario", "Measure", "ours", "wget", "wget ÷ ours", "Target", "Result", "Notes")


def fmt_s(seconds: float | None) -> str:
    return "" if seconds is None else (f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s")


def fmt_mb(value: float) -> str:
    return f"{value:.0f} MB"


def verdict(ok: bool, value: float | None = None, limit: float | None = None) -> str:
    """PASS/FAIL; "(marginal)" when ``value`` is within 5 % of ``limit``, i.e. within run-to-run noise."""
    text = "PASS" if ok else "FAIL"
    if value is not None and limit and abs(value / limit - 1) < 0.05:
        text += " (marginal)"
    return text


def md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def md_table(rows: list[Row]) -> str:
    lines = [md_row(COLUMNS), md_row(["---"] * len(COLUMNS))]
    for r in rows:
        result = f"**{r.result}**" if r.result else ""
        lines.append(md_row([r.scenario, r.measure, r.ours, r.peer, r.ratio, r.target, result, r.notes]))
    return "\n".join(lines)


def print_row(r: Row) -> None:
    bits = [f"[{r.scenario}] {r.measure}: ours {r.ours or '-'}"]
    if r.peer:
        bits.append(f"wget {r.peer}")
    if r.ratio:
        bits.append(f"wget/ours {r.ratio}")
    if r.target:
        bits.append(f"target {r.target}" + (f" -> {r.result}" if r.result else ""))
    if r.notes:
        bits.append(r.notes)
    print("  " + "; ".join(bits), flush=True)


# ---- machine -------------------------------------------------------------------------------------


def first_line(cmd: Sequence[str], pattern: str = "") -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    for line in (p.stdout + p.stderr).splitlines():
        if line.strip() and (not pattern or re.search(pattern, line)):
            return line.strip()
    return "unknown"


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, AttributeError):
        pass
    try:
        import luigi
        luigi_version = luigi.__version__
    except Exception:  # noqa: BLE001 - informational only
        luigi_version = "unknown"
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    return {
        "Date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "CPU": f"{os.cpu_count()} × {cpu}",
        "Memory": mem,
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "luigi": luigi_version,
        "nginx": first_line([find_tool("nginx") or "nginx", "-v"]),
        "wget": first_line(["wget", "--version"]),
        "7zz": first_line(["7zz"], "7-Zip"),
        "sha256sum": first_line(["sha256sum", "--version"]),
        "Commit": commit,
        "Load average at start (1/5/15 min)": load_average(),
    }


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


# ---- docs/benchmarks.md --------------------------------------------------------------------------


def replace_section(doc: Path, heading: str, body: str, title: str = "# Benchmarks") -> None:
    """Put ``heading`` + ``body`` into ``doc``, replacing only that ``## `` section (up to the
    next ``## `` heading) and keeping every other section as it is."""
    text = doc.read_text() if doc.is_file() else f"{title}\n\nProduced by `make bench` (`python -m bench.run`).\n"
    lines = text.splitlines()
    section = [heading, "", *body.strip("\n").splitlines(), ""]
    try:
        start = lines.index(heading)
    except ValueError:
        while lines and not lines[-1].strip():
            lines.pop()
        new = lines + [""] + section
    else:
        end = start + 1
        while end < len(lines) and not lines[end].startswith("## "):
            end += 1
        new = lines[:start] + section + lines[end:]
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_name(f".{doc.name}.tmp")  # two benchmarks may write their sections in turn
    tmp.write_text("\n".join(new).rstrip("\n") + "\n")
    os.replace(tmp, doc)

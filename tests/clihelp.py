"""Driving the real ``amsrepomirror`` command in a subprocess, and comparing trees by content."""

import collections
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATE_DIR = ".amsrepomirror"
#: The tests' settings, which every CLI test reads through $LUIGI_CONFIG_PATH; the ``probe_mode`` fixture
#: (conftest.py) points this at a copy with the other [http] first_bytes for one test.
TEST_SETTINGS = REPO / "tests" / "luigi-test.cfg"


def first_bytes() -> str:
    """[http] first_bytes of the tests' settings now: what a settings file a test writes for itself carries too."""
    return re.search(r"(?m)^first_bytes = (\S+)$", TEST_SETTINGS.read_text())[1]


def probe_range() -> str | None:
    """The Range of a first run's probe of a file's first bytes with the tests' [http] first_bytes (None: HEAD)."""
    size = first_bytes()
    return None if size == "0" else f"bytes=0-{int(size.removesuffix('KiB')) * 1024 - 1}"


def probe_bytes() -> int:
    """The bytes a first run's probe brings of a file larger than them (0 with HEAD probes): its transfer starts
    after them."""
    asked = probe_range()
    return 0 if asked is None else int(asked.split("-")[-1]) + 1


def probe_method() -> str:
    """The method of a first run's probe of a file it has no record of: HEAD, or GET with [http] first_bytes on."""
    return "HEAD" if probe_range() is None else "GET"


def spare_probes(double) -> None:
    """The faults of ``double`` pass over a first run's probe of the first bytes (with the tests' [http]
    first_bytes; nothing to spare with HEAD probes): they meet the file's transfer, as with HEAD probes."""
    double.spare_probes(probe_bytes())


def transfer_gets(records) -> list:
    """The GET records of a file's transfer: without a first run's probe of its first bytes."""
    asked = probe_range()
    return [r for r in records if asked is None or r.range != asked]


def cli_env(user: str | None = "demo", password: str | None = "demo-pass", **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SCM_USER", "SCM_PASSWORD")}
    env["HOME"] = extra.pop("home", env.get("HOME", "/nonexistent"))
    if user is not None:
        env["SCM_USER"] = user
    if password is not None:
        env["SCM_PASSWORD"] = password
    env["LUIGI_CONFIG_PATH"] = str(TEST_SETTINGS)
    env.update(extra)
    return env


def run_cli(*args, env=None, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m amsrepomirror ARGS`` from the project folder (so luigi.cfg applies)."""
    return subprocess.run([sys.executable, "-m", "amsrepomirror", *map(str, args)], cwd=REPO, env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)


def popen_cli(*args, env=None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "amsrepomirror", *map(str, args)], cwd=REPO, env=env or cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, **kwargs)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_hashes(folder: Path, skip_state: bool = True) -> dict[str, str]:
    """{relative path: sha256} of every regular file (the mirror's state folder left out)."""
    folder = Path(folder)
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if skip_state and (rel == STATE_DIR or rel.startswith(STATE_DIR + "/")):
            continue
        if path.is_file() and not path.is_symlink():
            out[rel] = sha256(path)
    return out


def served_tree(repo_root: Path, version: str, unauthorized_prefixes=("licensed/",)) -> dict[str, str]:
    """What a complete mirror of the double's tree must hold: every listed file the demo account may read."""
    packages = Path(repo_root) / "Downloads" / "packages"
    hashes = tree_hashes(packages, skip_state=False)
    return {p: h for p, h in hashes.items()
            if not p.startswith("listings/") and not any(p.startswith(u) for u in unauthorized_prefixes)}


def served_bytes(double) -> collections.Counter:
    """Body bytes the double served of each file (GETs answered 200 or 206; listings left out). A file served
    once shows its size, whether in one answer or in several (a probe's first bytes, then the rest from there)."""
    served: collections.Counter = collections.Counter()
    for r in double.records(method="GET"):
        if r.relpath and r.status in (200, 206) and not r.relpath.startswith("listings/"):
            served[r.relpath] += r.body_bytes
    return served


def served_more_than_once(double, repo_root: Path) -> dict[str, tuple[int, int]]:
    """Files of which the double served more bytes than the file holds: path -> (bytes served, size)."""
    packages = Path(repo_root) / "Downloads" / "packages"
    served = served_bytes(double)
    sizes = {p: (packages / p).stat().st_size for p in served}
    return {p: (n, sizes[p]) for p, n in served.items() if n > sizes[p]}


def kill_unpack_repeatedly(bundle: Path, amshome: Path, old_tree: dict[str, str], new_tree: dict[str, str],
                           seed: int) -> set:
    """Start ``amsrepomirror unpack`` and kill -9 it, up to 6 times (the first as soon as staging
    begins, then at random moments); after each kill the repository must be the old tree or the
    new one, never a mix. Returns which were seen ("old", "new")."""
    rng = random.Random(seed)
    seen = set()
    for attempt in range(6):
        proc = popen_cli("unpack", bundle, "--amshome", amshome)
        if attempt == 0:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (amshome / ".repository.staging").exists():
                time.sleep(0.002)
        else:
            time.sleep(rng.uniform(0.3, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = tree_hashes(amshome / "repository")
        assert now in (old_tree, new_tree), f"attempt {attempt}: a mixed repository"
        seen.add("new" if now == new_tree else "old")
        if now == new_tree:
            break
    return seen

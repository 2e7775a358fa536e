"""The SCM double's repository: a deterministic synthetic tree of SCM's packages, and its listings.

:func:`make_repository` writes the tree under ``root/Downloads/packages/`` (URL path == disk path, so
nginx with ``root <root>`` serves the same tree as :class:`~amsrepomirror.testing.scmdouble.ScmDouble`),
with a listing of absolute URLs in ``listings/<version>.txt``.

Listings and ports: a listing holds absolute URLs but a server's port is only known once it listens.
:func:`make_repository` writes the listing with the placeholder origin ``https://downloads.scm.com``;
a server that starts on the tree (the double, the tests' nginx helper) rewrites the *origin* of every
URL line of every ``listings/*.txt`` on disk to its own base URL (:func:`retarget_listing`), keeping
the set of entries as it is. So the file on disk is exactly what is served, and two servers started
on the same tree leave it pointing at the one started last. To change *which* files are listed, call
:func:`write_listing` (walks the tree) or pass ``relpaths`` explicitly.

Changing the repository between runs is a filesystem operation: :func:`write_file`,
:func:`change_file` (also bumps the mtime so ETags change even within one second) and
:func:`remove_file` are conveniences; editing files directly works just as well.

Stdlib only.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

from amsrepomirror.util.fsutil import atomic_write_bytes

__all__ = [
    "DEFAULT_BIG_SIZE",
    "DEFAULT_VERSION",
    "PACKAGES_PREFIX",
    "PLACEHOLDER_ORIGIN",
    "PLATFORM_PREFIXES",
    "make_repository",
    "write_listing",
    "retarget_listing",
    "listing_path",
    "listing_versions",
    "repository_files",
    "url_for",
    "write_file",
    "change_file",
    "remove_file",
]

DEFAULT_VERSION = "AMS2026.1"
PACKAGES_PREFIX = "/Downloads/packages/"
PLACEHOLDER_ORIGIN = "https://downloads.scm.com"
DEFAULT_BIG_SIZE = 3 * 1024 * 1024

# Top-level folders (relative to /Downloads/packages/) that hold platform-specific files.
PLATFORM_PREFIXES = {
    "linux-x86_64": "linux/x86_64/",
    "macos-arm64": "macos/arm64/",
    "windows-x86_64": "windows/x86_64/",
}

_GEN_BLOCK = 1024 * 1024


def _packages_dir(root: Path) -> Path:
    return Path(root) / "Downloads" / "packages"


def listing_path(root: Path, version: str = DEFAULT_VERSION) -> Path:
    """Disk path of the listing of ``version`` under ``root``."""
    return _packages_dir(root) / "listings" / f"{version}.txt"


def _check_relpath(relpath: str) -> str:
    relpath = relpath.lstrip("/")
    parts = relpath.split("/")
    if not relpath or any(p in ("", ".", "..") for p in parts) or "\\" in relpath or "\0" in relpath:
        raise ValueError(f"not a safe relative path: {relpath!r}")
    return relpath


def write_file(root: Path, relpath: str, size: int, seed=0) -> Path:
    """Write ``size`` deterministic pseudo-random bytes at ``relpath`` (relative to
    ``/Downloads/packages/``), streaming in blocks. Content depends only on (seed, relpath, size)."""
    relpath = _check_relpath(relpath)
    path = _packages_dir(root) / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"scmdouble:{seed}:{relpath}")
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        remaining = size
        while remaining > 0:
            n = min(_GEN_BLOCK, remaining)
            f.write(rng.randbytes(n))
            remaining -= n
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def change_file(root: Path, relpath: str, seed, size: int | None = None) -> Path:
    """Rewrite an existing file with new content (``seed``), same size unless ``size`` is given.

    The mtime is moved at least one second forward so that validators change for nginx too
    (its ETag/Last-Modified have one-second resolution)."""
    path = _packages_dir(root) / _check_relpath(relpath)
    st = path.stat()
    write_file(root, relpath, st.st_size if size is None else size, seed=seed)
    new_mtime_ns = max(time.time_ns(), st.st_mtime_ns + 1_000_000_000)
    os.utime(path, ns=(new_mtime_ns, new_mtime_ns))
    return path


def remove_file(root: Path, relpath: str) -> None:
    """Delete a repository file. Listings are left alone (the file stays listed and answers
    404); call :func:`write_listing` afterwards to unlist it."""
    (_packages_dir(root) / _check_relpath(relpath)).unlink()


def repository_files(root: Path) -> list[str]:
    """All files under ``/Downloads/packages/`` except ``listings/`` and temp files, as sorted
    relative paths with ``/`` separators."""
    base = _packages_dir(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        rel_dir = os.path.relpath(dirpath, base)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != "listings"]
            rel_dir = ""
        for name in filenames:
            if name.startswith(".") and name.endswith(".tmp"):
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def url_for(base_url: str, relpath: str) -> str:
    """Absolute URL of a file given relative to ``/Downloads/packages/``, quoted as listings have it."""
    return base_url.rstrip("/") + PACKAGES_PREFIX + quote(relpath, safe="/")


def write_listing(
    root: Path,
    version: str = DEFAULT_VERSION,
    base_url: str = PLACEHOLDER_ORIGIN,
    relpaths: Iterable[str] | None = None,
) -> list[str]:
    """(Re)write ``listings/<version>.txt``: one absolute URL per line (LF, sorted), each
    ``base_url + "/Downloads/packages/" + quoted relpath``. ``relpaths=None`` lists every file
    on disk (:func:`repository_files`). Returns the sorted relpaths. Only writes when the
    content changes (so the listing's own validators stay stable)."""
    rels = sorted(repository_files(root) if relpaths is None else {_check_relpath(r) for r in relpaths})
    data = "".join(url_for(base_url, r) + "\n" for r in rels).encode("utf-8")
    path = listing_path(root, version)
    if not (path.is_file() and path.read_bytes() == data):
        atomic_write_bytes(path, data)
    return rels


_ORIGIN_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/\s]*")


def retarget_listing(root: Path, version: str, base_url: str) -> bool:
    """Replace the origin (scheme://host[:port]) of every absolute URL line of a listing with
    ``base_url``; other lines are kept verbatim. Returns True if the file changed."""
    path = listing_path(root, version)
    old = path.read_bytes()
    base = base_url.rstrip("/")
    lines = old.decode("utf-8").split("\n")
    new = "\n".join(_ORIGIN_RE.sub(lambda m: base, line, count=1) for line in lines).encode("utf-8")
    if new == old:
        return False
    atomic_write_bytes(path, new)
    return True


def listing_versions(root: Path) -> list[str]:
    d = _packages_dir(root) / "listings"
    if not d.is_dir():
        return []
    return sorted(p.name[:-4] for p in d.iterdir() if p.is_file() and p.name.endswith(".txt"))


def _version_parts(version: str) -> tuple[str, str]:
    """``AMS2026.1`` -> (package version ``2026.101``, channel ``2026.1``)."""
    m = re.fullmatch(r"(?:AMS)?(\d{4})\.(\d+)", version)
    if not m:
        safe = re.sub(r"[^A-Za-z0-9.]+", "-", version).strip("-") or "0"
        return safe, safe
    year, minor = m.group(1), int(m.group(2))
    return f"{year}.{minor}01", f"{year}.{minor}"


def make_repository(
    root: Path,
    version: str = DEFAULT_VERSION,
    *,
    tiny: int = 0,
    big_size: int = DEFAULT_BIG_SIZE,
    seed=0,
) -> list[str]:
    """Generate a deterministic synthetic repository under ``root/Downloads/packages/`` and its
    listing (placeholder origin, see module doc). Returns the sorted relative paths listed.

    Layout (relative to ``/Downloads/packages/``, V = e.g. ``2026.101``, C = ``2026.1``)::

        AMS2026.1.yml                         opaque index (text)
        listings/AMS2026.1.txt                the listing (not listed itself)
        linux/x86_64/{adf,band,dftb}-V.tar.zst, linux/x86_64/python3.11-V.tar.zst (the big file)
        macos/arm64/{adf,band,python3.11}-V.tar.zst
        windows/x86_64/{adf,band,python3.11}-V.zip
        common/docs/AMS C release notes.pdf   (space in name: URL-quoted in the listing)
        common/docs/manual-V.tar.zst, common/data/*.tar.zst, common/data/empty.dat (0 bytes)
        licensed/{adfcrs-db,qe-pseudopotentials}-V.tar.zst   (401 for the demo account)
        uv/channels/C/simple/index.html, uv/channels/C/simple/<project>/index.html
        uv/channels/C/packages/*.whl          (platform-tagged and py3-none-any wheels;
                                               one name contains '+', quoted as %2B)
        common/tiny/NNNN/fNNNNN.dat           only with tiny=N (folders of <= 1000 files)
    """
    root = Path(root)
    pv, channel = _version_parts(version)
    uv = f"uv/channels/{channel}"
    wheels = _wheels(pv)
    sizes = _package_sizes(pv, channel, big_size)
    for project in wheels.values():
        for name, size in project:
            sizes[f"{uv}/packages/{name}"] = size
    for rel, size in sizes.items():
        write_file(root, rel, size, seed=seed)

    base = _packages_dir(root)
    texts = _simple_index(base, uv, wheels)
    texts[f"{version}.yml"] = _package_index(version, seed, sizes)
    for rel, text in texts.items():
        atomic_write_bytes(base / rel, text.encode("utf-8"))
    _write_tiny_files(base, tiny, seed)
    return write_listing(root, version, PLACEHOLDER_ORIGIN)


def _package_sizes(pv: str, channel: str, big_size: int) -> dict[str, int]:
    """The packages of one version (outside the wheel channel) and their sizes."""
    return {
        f"linux/x86_64/adf-{pv}.tar.zst": 300_000,
        f"linux/x86_64/band-{pv}.tar.zst": 120_000,
        f"linux/x86_64/dftb-{pv}.tar.zst": 40_000,
        f"linux/x86_64/python3.11-{pv}.tar.zst": big_size,
        f"macos/arm64/adf-{pv}.tar.zst": 280_000,
        f"macos/arm64/band-{pv}.tar.zst": 110_000,
        f"macos/arm64/python3.11-{pv}.tar.zst": 90_000,
        f"windows/x86_64/adf-{pv}.zip": 310_000,
        f"windows/x86_64/band-{pv}.zip": 125_000,
        f"windows/x86_64/python3.11-{pv}.zip": 95_000,
        f"common/docs/AMS {channel} release notes.pdf": 20_000,
        f"common/docs/manual-{pv}.tar.zst": 150_000,
        f"common/data/basis-sets-{pv}.tar.zst": 200_000,
        f"common/data/forcefields-{pv}.tar.zst": 60_000,
        "common/data/empty.dat": 0,
        f"licensed/adfcrs-db-{pv}.tar.zst": 50_000,
        f"licensed/qe-pseudopotentials-{pv}.tar.zst": 30_000,
    }


def _wheels(pv: str) -> dict[str, list[tuple[str, int]]]:
    """The wheel channel's projects: wheel file names and sizes."""
    return {
        "plams": [(f"plams-{pv}-py3-none-any.whl", 30_000)],
        "numpy": [
            ("numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", 80_000),
            ("numpy-1.26.4-cp311-cp311-macosx_11_0_arm64.whl", 70_000),
            ("numpy-1.26.4-cp311-cp311-win_amd64.whl", 75_000),
        ],
        "torch": [("torch-2.3.1+cpu-cp311-cp311-linux_x86_64.whl", 60_000)],
    }


def _simple_index(base: Path, uv: str, wheels: dict[str, list[tuple[str, int]]]) -> dict[str, str]:
    """The channel's PEP 503 pages (relpath -> text), each link carrying the wheel's sha256 as written."""
    texts: dict[str, str] = {}
    links = []
    for project, files in sorted(wheels.items()):
        anchors = []
        for name, _ in files:
            digest = _sha256_file(base / uv / "packages" / name)
            href = f"../../packages/{quote(name)}#sha256={digest}"
            anchors.append(f'    <a href="{href}">{name}</a><br/>\n')
        texts[f"{uv}/simple/{project}/index.html"] = (
            "<!DOCTYPE html>\n<html>\n  <head><title>Links for "
            f"{project}</title></head>\n  <body>\n    <h1>Links for {project}</h1>\n"
            + "".join(anchors)
            + "  </body>\n</html>\n"
        )
        links.append(f'    <a href="{project}/">{project}</a><br/>\n')
    texts[f"{uv}/simple/index.html"] = (
        "<!DOCTYPE html>\n<html>\n  <head><title>Simple index</title></head>\n  <body>\n"
        + "".join(links)
        + "  </body>\n</html>\n"
    )
    return texts


def _package_index(version: str, seed, sizes: dict[str, int]) -> str:
    """The version's ``.yml`` index: opaque to the mirror, one more text file to carry."""
    yml = [
        "# Synthetic AMS package index written by amsrepomirror's SCM double (opaque to the mirror)",
        f"version: {version}",
        f"seed: {seed}",
        "packages:",
    ]
    for rel in sorted(sizes):
        yml.append(f"  - path: {rel}")
        yml.append(f"    size: {sizes[rel]}")
    return "\n".join(yml) + "\n"


def _write_tiny_files(base: Path, tiny: int, seed) -> None:
    """``tiny`` files of 1-64 bytes in folders of 1000, written with bare os calls (there may be many)."""
    base_str = str(base)
    for i in range(tiny):
        shard = f"common/tiny/{i // 1000:04d}"
        if i % 1000 == 0:
            os.makedirs(os.path.join(base_str, shard), exist_ok=True)
        rel = f"{shard}/f{i:05d}.dat"
        rng = random.Random(f"scmdouble:{seed}:{rel}")
        fd = os.open(os.path.join(base_str, rel), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, rng.randbytes(1 + rng.randrange(64)))
        finally:
            os.close(fd)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_GEN_BLOCK), b""):
            h.update(block)
    return h.hexdigest()

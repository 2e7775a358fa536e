"""The SCM double: a small, real HTTP server standing in for SCM's package repository.

Tests and ``make demo`` run the mirror against it on 127.0.0.1. It is not a mock: it speaks
HTTP/1.1 with keep-alive over a real socket, serves whatever is on disk at the moment of each
request (no caching), and can be told to misbehave (cut connections, answer 503, throttle).

Two parts:

* :func:`make_repository` writes a deterministic synthetic repository under
  ``root/Downloads/packages/`` (URL path == disk path, so nginx with ``root <root>`` serves the
  same tree), with a listing of absolute URLs in ``listings/<version>.txt``.
* :class:`ScmDouble` serves ``root`` with HTTP basic auth, Range, ETag/Last-Modified validators,
  conditional requests, a request log and fault switches; over HTTPS when given a certificate
  (``tls=``: one PEM file holding the private key and the certificate chain, e.g. made with
  ``trustme`` in a test), which can be swapped while it runs (:meth:`ScmDouble.use_certificate`).

Listings and ports: a listing holds absolute URLs but a server's port is only known once it
listens. :func:`make_repository` writes the listing with the placeholder origin
``https://downloads.scm.com``; on ``start()`` the double (and the tests' nginx helper) rewrites the
*origin* of every URL line of every ``listings/*.txt`` on disk to its own base URL
(:func:`retarget_listing`), keeping the set of entries as it is. So the file on disk is exactly
what is served, and two servers started on the same tree leave it pointing at the one started
last. To change *which* files are listed, call :func:`write_listing` (walks the tree) or pass
``relpaths`` explicitly.

Changing the repository between runs is a filesystem operation: :func:`write_file`,
:func:`change_file` (also bumps the mtime so ETags change even within one second) and
:func:`remove_file` are conveniences; editing files directly works just as well.

Stdlib only.
"""

from __future__ import annotations

import argparse
import base64
import email.utils
import fnmatch
import gzip
import hashlib
import hmac
import io
import mimetypes
import os
import random
import re
import signal
import socket
import ssl
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import quote, unquote, urlsplit

from amsrepomirror.util.fsutil import atomic_write_bytes

__all__ = [
    "DEFAULT_VERSION",
    "DEMO_USER",
    "DEMO_PASSWORD",
    "PACKAGES_PREFIX",
    "PLACEHOLDER_ORIGIN",
    "PLATFORM_PREFIXES",
    "make_repository",
    "write_listing",
    "retarget_listing",
    "listing_path",
    "listing_versions",
    "repository_files",
    "write_file",
    "change_file",
    "remove_file",
    "RequestRecord",
    "ScmDouble",
    "main",
]

DEFAULT_VERSION = "AMS2026.1"
DEMO_USER = "demo"
DEMO_PASSWORD = "demo-pass"  # public credentials of the double's demo account, not a secret
PACKAGES_PREFIX = "/Downloads/packages/"
PLACEHOLDER_ORIGIN = "https://downloads.scm.com"
DEFAULT_BIG_SIZE = 3 * 1024 * 1024
REALM = "SCM"

# Top-level folders (relative to /Downloads/packages/) that hold platform-specific files.
PLATFORM_PREFIXES = {
    "linux-x86_64": "linux/x86_64/",
    "macos-arm64": "macos/arm64/",
    "windows-x86_64": "windows/x86_64/",
}

_GEN_BLOCK = 1024 * 1024
_SEND_BLOCK = 64 * 1024


# --------------------------------------------------------------------------------------------
# Synthetic repository
# --------------------------------------------------------------------------------------------


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


def change_file(root: Path, relpath: str, seed, size: Optional[int] = None) -> Path:
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


def repository_files(root: Path) -> List[str]:
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


def _url_for(base_url: str, relpath: str) -> str:
    return base_url.rstrip("/") + PACKAGES_PREFIX + quote(relpath, safe="/")


def write_listing(
    root: Path,
    version: str = DEFAULT_VERSION,
    base_url: str = PLACEHOLDER_ORIGIN,
    relpaths: Optional[Iterable[str]] = None,
) -> List[str]:
    """(Re)write ``listings/<version>.txt``: one absolute URL per line (LF, sorted), each
    ``base_url + "/Downloads/packages/" + quoted relpath``. ``relpaths=None`` lists every file
    on disk (:func:`repository_files`). Returns the sorted relpaths. Only writes when the
    content changes (so the listing's own validators stay stable)."""
    rels = sorted(repository_files(root) if relpaths is None else {_check_relpath(r) for r in relpaths})
    data = "".join(_url_for(base_url, r) + "\n" for r in rels).encode("utf-8")
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


def listing_versions(root: Path) -> List[str]:
    d = _packages_dir(root) / "listings"
    if not d.is_dir():
        return []
    return sorted(p.name[:-4] for p in d.iterdir() if p.is_file() and p.name.endswith(".txt"))


def _version_parts(version: str) -> Tuple[str, str]:
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
) -> List[str]:
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
    sizes: Dict[str, int] = {
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
    uv = f"uv/channels/{channel}"
    wheels = {
        "plams": [(f"plams-{pv}-py3-none-any.whl", 30_000)],
        "numpy": [
            ("numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", 80_000),
            ("numpy-1.26.4-cp311-cp311-macosx_11_0_arm64.whl", 70_000),
            ("numpy-1.26.4-cp311-cp311-win_amd64.whl", 75_000),
        ],
        "torch": [("torch-2.3.1+cpu-cp311-cp311-linux_x86_64.whl", 60_000)],
    }
    for project in wheels.values():
        for name, size in project:
            sizes[f"{uv}/packages/{name}"] = size

    for rel, size in sizes.items():
        write_file(root, rel, size, seed=seed)

    base = _packages_dir(root)
    texts: Dict[str, str] = {}
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
    yml = [
        "# Synthetic AMS package index written by amsrepomirror's SCM double (opaque to the mirror)",
        f"version: {version}",
        f"seed: {seed}",
        "packages:",
    ]
    for rel in sorted(sizes):
        yml.append(f"  - path: {rel}")
        yml.append(f"    size: {sizes[rel]}")
    texts[f"{version}.yml"] = "\n".join(yml) + "\n"
    for rel, text in texts.items():
        atomic_write_bytes(base / rel, text.encode("utf-8"))

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

    return write_listing(root, version, PLACEHOLDER_ORIGIN)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_GEN_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


@dataclass
class RequestRecord:
    """One request as the double saw it. Fields are set *before* the matching bytes go out on
    the socket (``body_bytes`` counts bytes handed to the socket), so a client that has read a
    response can assert on its record without racing the server."""

    method: str
    path: str  # URL path, percent-decoded, without query, e.g. /Downloads/packages/AMS2026.1.yml
    relpath: Optional[str]  # relative to /Downloads/packages/, or None outside it
    range: Optional[str]  # Range request header
    if_range: Optional[str]  # If-Range request header
    user: Optional[str]  # authenticated user, None if auth failed or missing
    client_port: int  # peer port: equal ports = same (keep-alive) connection
    status: Optional[int] = None
    body_bytes: int = 0
    fault: Optional[str] = None  # "cut", "stall", "status" when a fault switch fired
    tls: Optional[str] = None  # TLS version of the connection (e.g. "TLSv1.3"); None over plain HTTP
    concurrent: int = 0  # requests being answered when this one arrived, itself included
    started: float = field(default_factory=time.monotonic)
    duration: Optional[float] = None  # set when the handler finished (informational)


@dataclass
class _Fault:
    kind: str  # "cut" | "status" | "stall" | "hook" | "lie" | "redirect" | "slow-headers"
    glob: str
    times: Optional[int]
    method: Optional[str]
    nbytes: int = 0
    status: int = 503
    retry_after: Optional[str] = None
    seconds: float = 0.0
    then: Optional[Callable[[], None]] = None  # run (in the server thread) right after a cut; a hook's action
    how: str = ""  # a lie's kind (see ScmDouble.lie)
    location: Callable[[str], str] = str  # a redirect's Location for the target

    def matches(self, method: str, target: str) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        return fnmatch.fnmatchcase(target, self.glob)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
    double: "ScmDouble"

    def get_request(self):
        """Accept; over HTTPS wrap the socket with the certificate in use now. The handshake is
        left to the handler's thread (``_Handler.handle``), so a slow client blocks no one."""
        conn, address = super().get_request()
        context = self.double._tls_context
        if context is not None:
            conn = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, address

    def handle_error(self, request, client_address):
        """Dropped connections are normal here (faults, clients giving up): quiet unless
        verbose. Anything else is a bug in the double: always print it."""
        exc = sys.exc_info()[1]
        if self.double.verbose or not isinstance(exc, (ConnectionError, socket.timeout, ssl.SSLError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SCMDouble/1.0"
    timeout = 60  # idle keep-alive connections are closed after this many seconds
    disable_nagle_algorithm = True  # headers and body go out in separate writes: avoid 40 ms stalls
    server: _Server

    # -- connection bookkeeping so stop() can drop keep-alive connections --------------------
    def setup(self):
        super().setup()
        self.server.double._register(self.connection)

    def handle(self):
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                # e.g. the client did not trust the certificate: no request was sent
                self.server.double._note_handshake_failure(exc)
                self.close_connection = True
                return
        super().handle()

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.double._unregister(self.connection)

    def version_string(self):
        return self.server_version

    def log_message(self, format, *args):
        if self.server.double.verbose:
            super().log_message(format, *args)

    _override: Dict[str, str] = {}

    def send_header(self, keyword, value):
        """As sent, unless a ``misbehave(head_headers=/get_headers=)`` quirk replaces it (a value
        of None drops the header; a list sends it once per item)."""
        override = self._override
        for name, replacement in override.items():
            if name.lower() == keyword.lower():
                for item in ([] if replacement is None else [replacement] if isinstance(replacement, str)
                             else replacement):
                    super().send_header(keyword, item)
                return
        super().send_header(keyword, value)

    def end_headers(self):
        self._override = {}
        super().end_headers()

    def send_response(self, code, message=None):
        rec = getattr(self, "_rec", None)
        if rec is not None:
            rec.status = code
        super().send_response(code, message)

    # -- methods -------------------------------------------------------------------------------
    def do_GET(self):
        self._serve(head=False)

    def do_HEAD(self):
        self._serve(head=True)

    def _not_allowed(self):
        self._drain_body()
        self._simple(405, "method not allowed\n", {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    # -- helpers -------------------------------------------------------------------------------
    def _drain_body(self):
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = 0
        if n > 1024 * 1024:
            self.close_connection = True
            return
        if n > 0:
            self.rfile.read(n)

    def _simple(self, status: int, text: str, headers: Optional[Dict[str, str]] = None, head=False):
        body = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self._rec.body_bytes += len(body)
            self.wfile.write(body)

    def _auth_user(self) -> Optional[str]:
        value = self.headers.get("Authorization") or ""
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        if not sep:
            return None
        expected = self.server.double.users.get(user)
        if expected is None:
            return None
        if not hmac.compare_digest(password.encode("utf-8"), expected.encode("utf-8")):
            return None
        return user

    def _serve(self, head: bool):
        double = self.server.double
        raw_path = urlsplit(self.path).path if "://" in self.path else self.path.split("?", 1)[0].split("#", 1)[0]
        path = unquote(raw_path, errors="replace") if raw_path else "/"
        relpath = path[len(PACKAGES_PREFIX):] if path.startswith(PACKAGES_PREFIX) else None
        rec = RequestRecord(
            method=self.command,
            path=path,
            relpath=relpath,
            range=self.headers.get("Range"),
            if_range=self.headers.get("If-Range"),
            user=None,
            client_port=self.client_address[1] if isinstance(self.client_address, tuple) else 0,
            tls=self.connection.version() if isinstance(self.connection, ssl.SSLSocket) else None,
        )
        self._rec = rec
        double._append(rec)
        try:
            self._drain_body()
            self._serve_inner(double, head, path, relpath, rec)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout, OSError):
            self.close_connection = True
        finally:
            rec.duration = time.monotonic() - rec.started
            self._rec = None
            with double._lock:
                double._in_flight -= 1

    def _serve_inner(self, double: "ScmDouble", head: bool, path: str, relpath: Optional[str], rec: RequestRecord):
        segments = path.split("/")
        if not path.startswith("/") or ".." in segments or "\0" in path or "\\" in path:
            self._simple(400, "bad request\n", head=head)
            return
        user = self._auth_user()
        rec.user = user
        target = relpath if relpath is not None else path

        hook = double._take_fault(("hook",), self.command, target)
        if hook is not None:
            hook.then()

        fault = double._take_fault(("status",), self.command, target)
        if fault is not None:
            rec.fault = "status"
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            self._simple(fault.status, f"injected status {fault.status}\n", extra, head=head)
            return

        slow = double._take_fault(("slow-headers",), self.command, target)
        if slow is not None:  # a status line, then one byte of a header line every `seconds`
            rec.fault, self.close_connection = "slow-headers", True
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not double._stopping.wait(slow.seconds):
                self.wfile.write(b"a")
                self.wfile.flush()
            return

        moved = double._take_fault(("redirect",), self.command, target)
        if moved is not None:
            rec.fault = "redirect"
            self._simple(moved.status, "moved\n", {"Location": moved.location(target)}, head=head)
            return

        challenge = {"WWW-Authenticate": f'Basic realm="{REALM}"'}
        if user is None:
            self._simple(401, "authorization required\n", challenge, head=head)
            return
        if relpath is not None and any(relpath.startswith(p) for p in double.unauthorized_prefixes):
            self._simple(401, "not licensed for this file\n", challenge, head=head)
            return

        fs_path = os.path.join(double.root_str, path.lstrip("/"))
        try:
            f = open(fs_path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
            self._simple(404, "not found\n", head=head)
            return
        with f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                self._simple(404, "not found\n", head=head)
                return
            self._serve_file(double, head, f, st, rec, target)

    def _serve_file(self, double: "ScmDouble", head: bool, f, st, rec: RequestRecord, target: str):
        size = st.st_size
        mtime = int(st.st_mtime)
        quirks = double._quirks_for(target)
        etag = f'"{st.st_mtime_ns:x}-{size:x}"'
        if quirks.get("etag") == "weak":
            etag = "W/" + etag
        last_modified = email.utils.formatdate(mtime, usegmt=True)
        validators = {"ETag": etag, "Last-Modified": last_modified}
        if quirks.get("etag") == "none":
            del validators["ETag"]
        if quirks.get("bare_get") and not head:
            validators = {}

        inm = self.headers.get("If-None-Match")
        if inm is not None:
            if _etag_list_matches(inm, etag):
                self._not_modified(validators)
                return
        else:
            ims = _parse_http_date(self.headers.get("If-Modified-Since"))
            if ims is not None and mtime <= ims:
                self._not_modified(validators)
                return

        byte_range = None
        range_header = self.headers.get("Range")
        if range_header is not None:
            if_range = self.headers.get("If-Range")
            if quirks.get("ignore_range"):
                pass  # a server without range support: every GET is the whole file, with a 200
            elif if_range is None or quirks.get("ignore_if_range") or _if_range_matches(if_range, etag, mtime):
                byte_range = _parse_range(range_header, size)
        if byte_range == "unsatisfiable":
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            for k, v in validators.items():
                self.send_header(k, v)
            self.end_headers()
            return

        ctype = mimetypes.guess_type(target)[0] or "application/octet-stream"
        if byte_range is None:
            start, length, status = 0, size, 200
        else:
            start, end = byte_range
            length, status = end - start + 1, 206
        if quirks.get("gzip_on_the_fly") and status == 200 and not head:
            # Compress on the fly, as a misconfigured front end would (test files are small).
            f = io.BytesIO(gzip.compress(f.read(), mtime=0))
            length = len(f.getvalue())
        if not head and self.command == "GET":
            lie = double._take_fault(("lie",), self.command, target,
                                     lambda fault: _LIES[fault.how] == ("range" if status == 206 else "whole"))
            if lie is not None:
                rec.fault = f"lie:{lie.how}"
                f.seek(start)
                self._send_lie(double, f, size, start, length, lie, validators, ctype, rec)
                return
        announced = length + (quirks.get("head_length", 0) if head else 0)
        self._override = quirks.get("head_headers" if head else "get_headers") or {}
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(announced))
        self.send_header("Accept-Ranges", "none" if quirks.get("ignore_range") else "bytes")
        if quirks.get("gzip_on_the_fly") or quirks.get("content_encoding"):
            self.send_header("Content-Encoding", quirks.get("content_encoding") or "gzip")
        for k, v in validators.items():
            self.send_header(k, v)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + length - 1}/{size}")
        self.end_headers()
        if head or length == 0:
            return

        cut = double._take_fault(("cut",), self.command, target)
        stall = double._take_fault(("stall",), self.command, target)
        if cut is not None:
            rec.fault = "cut"
        elif stall is not None:
            rec.fault = "stall"
        f.seek(start)
        self._send_body(double, f, length, rec, cut, stall)

    def _send_lie(self, double: "ScmDouble", f, size: int, start: int, length: int, lie: _Fault,
                  validators: Dict[str, str], ctype: str, rec: RequestRecord):
        """Answer as a hostile or broken server would (``ScmDouble.lie``): headers that look right
        around other bytes, or bytes that look right under other headers."""
        how, n = lie.how, lie.nbytes or 1000
        wanted = f.read(length)
        status, headers, delimited = 206, {"Content-Type": ctype}, True
        first, last, total = start, start + length - 1, size
        if how == "gzip-200":  # the whole file, compressed on the fly, same validators, no length
            f.seek(0)
            status, body, delimited = 200, gzip.compress(f.read(), mtime=0), False
            headers["Content-Encoding"] = "gzip"
        elif how == "multipart":  # the right Content-Range header over a multipart/byteranges body, no length
            boundary, delimited = "SCMDOUBLEBOUNDARY", False
            headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
            body = (f"--{boundary}\r\nContent-Type: {ctype}\r\nContent-Range: bytes {first}-{last}/{total}\r\n\r\n"
                    .encode() + wanted + f"\r\n--{boundary}--\r\n".encode())
        elif how == "range-end":  # a shorter range than asked, said honestly
            last, body = max(first, last - n), wanted[:max(1, length - n)]
        elif how == "range-start":  # the bytes n after the first byte asked, said honestly
            f.seek(min(start + n, size - 1))
            first = min(start + n, size - 1)
            body = f.read(last - first + 1)
        elif how == "total":  # another complete length
            body, total = wanted, size + n
        elif how == "validators":  # a strong ETag other than the one asked for
            body = wanted
            validators = {**validators, "ETag": f'"other-{size:x}"'}
        elif how == "no-etag":  # the Last-Modified date only, though If-Range carried the ETag
            body = wanted
            validators = {k: v for k, v in validators.items() if k != "ETag"}
        elif how == "long":  # right headers, no Content-Length, n bytes more than the range
            body, delimited = wanted + b"\0" * n, False
        elif how == "short":  # right headers, no Content-Length, the body ends n bytes early
            body, delimited = wanted[:max(0, length - n)], False
        elif how == "206-whole":  # a 206 to a GET without Range
            body = wanted
        else:
            raise ValueError(f"unknown lie {how!r}")
        self.send_response(status)
        for k, v in {**headers, **validators}.items():
            self.send_header(k, v)
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{last}/{total}")
        if delimited:
            self.send_header("Content-Length", str(len(body)))
        else:  # the body ends when the connection closes (HTTP/1.1 without a length)
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        rec.body_bytes += len(body)
        self.wfile.write(body)

    def _not_modified(self, validators: Dict[str, str]):
        self.send_response(304)
        for k, v in validators.items():
            self.send_header(k, v)
        self.end_headers()

    def _send_body(self, double: "ScmDouble", f, length: int, rec: RequestRecord, cut: Optional[_Fault], stall: Optional[_Fault]):
        sent = 0
        limit = min(length, cut.nbytes) if cut is not None else length
        stalled = stall is None
        rate = double._rate
        pace_t0, pace_sent = time.monotonic(), 0
        while sent < limit:
            if double._stopping.is_set():
                break
            if not stalled and sent >= stall.nbytes:
                stalled = True
                self.wfile.flush()
                if double._stopping.wait(stall.seconds):
                    break
            n = min(_SEND_BLOCK, limit - sent)
            if not stalled:
                n = min(n, stall.nbytes - sent)
            current = double._rate
            if current != rate:
                rate, pace_t0, pace_sent = current, time.monotonic(), 0
            if rate:
                n = min(n, max(1, rate // 20))
            data = f.read(n)
            if not data:  # file shrank under us: we cannot honour Content-Length any more
                break
            rec.body_bytes += len(data)
            self.wfile.write(data)
            sent += len(data)
            if rate:
                pace_sent += len(data)
                delay = pace_sent / rate - (time.monotonic() - pace_t0)
                if delay > 0 and double._stopping.wait(delay):
                    break
        if sent < length:
            self.close_connection = True
            try:
                self.wfile.flush()
            except OSError:
                pass
            if cut is not None and cut.then is not None:
                cut.then()


def _etag_list_matches(header: str, etag: str) -> bool:
    """Weak comparison as If-None-Match requires."""
    header = header.strip()
    if header == "*":
        return True
    bare = etag[2:] if etag.startswith("W/") else etag
    for item in header.split(","):
        item = item.strip()
        if item.startswith("W/"):
            item = item[2:]
        if item == bare:
            return True
    return False


def _if_range_matches(value: str, etag: str, mtime: int) -> bool:
    """Strong comparison: an entity tag must equal ours exactly (weak tags never match); a date
    must equal Last-Modified exactly."""
    value = value.strip()
    if value.startswith('"') or value.startswith("W/"):
        return value == etag and not etag.startswith("W/")
    date = _parse_http_date(value)
    return date is not None and date == mtime


def _parse_http_date(value: Optional[str]) -> Optional[int]:
    if not value:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:
        return None
    if dt.tzinfo is None:
        return None
    return int(dt.timestamp())


#: Each lie (``ScmDouble.lie``) and the requests it answers: "range" (a Range the double would
#: honour with a 206) or "whole" (a GET without Range).
_LIES = {"gzip-200": "range", "multipart": "range", "range-end": "range", "range-start": "range",
         "total": "range", "validators": "range", "no-etag": "range", "long": "range", "short": "range", "206-whole": "whole"}

_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def _parse_range(header: str, size: int):
    """Return (start, end) inclusive, "unsatisfiable", or None to ignore the header (syntax we
    do not support, e.g. several ranges: the full body is then sent, as RFC 9110 allows)."""
    m = _RANGE_RE.match(header)
    if not m:
        return None
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


class ScmDouble:
    """A real HTTP/1.1 server on loopback serving ``root`` the way SCM's repository would.

    >>> with ScmDouble(root) as srv:
    ...     requests.get(srv.listing_url(), auth=("demo", "demo-pass"))
    """

    def __init__(
        self,
        root: Path,
        users: Optional[Dict[str, str]] = None,
        unauthorized_prefixes: Sequence[str] = ("licensed/",),
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        verbose: bool = False,
        tls: Optional[Path] = None,
    ):
        self.root = Path(root).resolve()
        self.root_str = str(self.root)
        self.users = dict(users) if users is not None else {DEMO_USER: DEMO_PASSWORD}
        self.unauthorized_prefixes = tuple(unauthorized_prefixes)
        self.host = host
        self.port = port
        self.verbose = verbose
        self.scheme = "https" if tls is not None else "http"
        self._tls_context: Optional[ssl.SSLContext] = None
        self._handshake_failures: List[str] = []
        if tls is not None:
            self.use_certificate(tls)
        self._lock = threading.Lock()
        self._log: List[RequestRecord] = []
        self._faults: List[_Fault] = []
        self._quirks: List[Tuple[str, Dict[str, object]]] = []
        self._rate: Optional[int] = None
        self._in_flight = 0  # requests being answered now
        self._conns: set = set()
        self._stopping = threading.Event()
        self._httpd: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "ScmDouble":
        if self._httpd is not None:
            raise RuntimeError("already started")
        self._stopping.clear()
        httpd = _Server((self.host, self.port), _Handler)
        httpd.double = self
        self._httpd = httpd
        self.port = httpd.server_address[1]
        for version in listing_versions(self.root):
            retarget_listing(self.root, version, self.base_url)
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"scmdouble:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop open (keep-alive or in-flight) connections."""
        httpd = self._httpd
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> "ScmDouble":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def listing_url(self, version: str = DEFAULT_VERSION) -> str:
        return f"{self.base_url}{PACKAGES_PREFIX}listings/{quote(version)}.txt"

    def url(self, relpath: str) -> str:
        """Absolute URL of a file given relative to ``/Downloads/packages/``."""
        return _url_for(self.base_url, relpath)

    # -- request log ---------------------------------------------------------------------------
    @property
    def log(self) -> List[RequestRecord]:
        """Snapshot (a new list) of the request records, oldest first."""
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        """Forget the request records and the failed TLS handshakes."""
        with self._lock:
            self._log.clear()
            self._handshake_failures.clear()

    # -- TLS -----------------------------------------------------------------------------------
    def use_certificate(self, pem: Path) -> None:
        """Serve new connections with the key and certificate chain in ``pem`` (connections
        already open keep theirs). Only for a double made with ``tls=``."""
        if self.scheme != "https":
            raise RuntimeError("this double serves plain HTTP: make it with tls=")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(pem))
        self._tls_context = context

    @property
    def handshake_failures(self) -> List[str]:
        """Why TLS handshakes failed (the client refused the certificate, ...), oldest first. No
        request record exists for these connections: the client sent nothing."""
        with self._lock:
            return list(self._handshake_failures)

    def _note_handshake_failure(self, exc: BaseException) -> None:
        with self._lock:
            self._handshake_failures.append(f"{exc.__class__.__name__}: {exc}")

    def records(self, method: Optional[str] = None, glob: str = "*", status: Optional[int] = None) -> List[RequestRecord]:
        """Filtered log: ``glob`` matches the relpath (or the URL path outside the repository)."""
        out = []
        for r in self.log:
            target = r.relpath if r.relpath is not None else r.path
            if method is not None and r.method != method.upper():
                continue
            if status is not None and r.status != status:
                continue
            if fnmatch.fnmatchcase(target, glob):
                out.append(r)
        return out

    def _append(self, rec: RequestRecord) -> None:
        with self._lock:
            self._in_flight += 1
            rec.concurrent = self._in_flight
            self._log.append(rec)

    def _register(self, conn) -> None:
        with self._lock:
            self._conns.add(conn)

    def _unregister(self, conn) -> None:
        with self._lock:
            self._conns.discard(conn)

    # -- fault switches ------------------------------------------------------------------------
    # ``glob`` (fnmatch, ``*`` crosses ``/``) matches the path relative to /Downloads/packages/
    # (e.g. "linux/*", "*.zst", "listings/*"); ``times`` limits the switch to the first N
    # matching requests (None = until cleared); ``method`` restricts it to GET or HEAD.
    # fail_status fires before the auth check (like an overloaded front end) and counts any
    # matching request; cut_after/stall_after only count responses that carry a body.

    def cut_after(self, glob: str = "*", nbytes: int = 0, times: Optional[int] = 1, method: Optional[str] = None,
                  then: Optional[Callable[[], None]] = None) -> None:
        """Send full headers (whole Content-Length), then close after ``nbytes`` of body; call
        ``then()`` right after the cut (e.g. to change the file before the client resumes)."""
        self._add_fault(_Fault("cut", glob, times, method, nbytes=nbytes, then=then))

    def fail_status(self, glob: str = "*", status: int = 503, retry_after=None, times: Optional[int] = 1,
                    method: Optional[str] = None) -> None:
        """Answer ``status`` (with ``Retry-After`` when given) instead of serving."""
        ra = None if retry_after is None else str(retry_after)
        self._add_fault(_Fault("status", glob, times, method, status=status, retry_after=ra))

    def stall_after(self, glob: str = "*", nbytes: int = 0, seconds: float = 5.0, times: Optional[int] = 1,
                    method: Optional[str] = None) -> None:
        """Send headers and ``nbytes`` of body, then go silent for ``seconds`` before going on
        (for client read timeouts)."""
        self._add_fault(_Fault("stall", glob, times, method, nbytes=nbytes, seconds=seconds))

    def on_request(self, glob: str, then: Callable[[], None], times: Optional[int] = 1,
                   method: Optional[str] = None) -> None:
        """Call ``then()`` (in the server thread) when a matching request arrives, before it is
        answered: e.g. ``on_request("listings/*", lambda: double.use_certificate(other))``."""
        self._add_fault(_Fault("hook", glob, times, method, then=then))

    def lie(self, glob: str, how: str, times: Optional[int] = None, nbytes: int = 1000) -> None:
        """Answer GETs with a response that is not the bytes asked for, its status and validators
        otherwise as usual. To a Range request the double would honour:
        ``gzip-200``: 200, the whole file gzip-compressed on the fly with ``Content-Encoding: gzip``
        and the same ETag, no Content-Length; ``multipart``: 206 with the right Content-Range header
        but a ``multipart/byteranges`` body, no Content-Length; ``range-end``: a range ``nbytes`` shorter than asked;
        ``range-start``: a range starting ``nbytes`` later; ``total``: another complete length;
        ``validators``: another strong ETag; ``no-etag``: no ETag, only Last-Modified; ``long`` / ``short``: the right headers, no
        Content-Length, and ``nbytes`` more / fewer body bytes. To a GET without Range:
        ``206-whole``: the whole file as a 206. ``times`` counts only requests the lie applies to."""
        if how not in _LIES:
            raise ValueError(f"unknown lie {how!r}: one of {sorted(_LIES)}")
        self._add_fault(_Fault("lie", glob, times, "GET", nbytes=nbytes, how=how))

    def redirect(self, glob: str, location: Callable[[str], str], status: int = 302, times: Optional[int] = None,
                 method: Optional[str] = None) -> None:
        """Answer ``status`` with ``Location: location(target)`` (before any auth check, as a front
        end would) instead of serving."""
        self._add_fault(_Fault("redirect", glob, times, method, status=status, location=location))

    def slow_headers(self, glob: str, seconds: float, times: Optional[int] = 1, method: Optional[str] = None) -> None:
        """Send a status line, then a header one byte every ``seconds`` without end (a slowloris:
        each byte beats any read timeout)."""
        self._add_fault(_Fault("slow-headers", glob, times, method, seconds=seconds))

    def throttle(self, bytes_per_second: Optional[int]) -> None:
        """Limit every body to ``bytes_per_second`` per connection; ``None`` lifts it. Takes
        effect on transfers already running too."""
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive or None")
        self._rate = bytes_per_second

    def misbehave(self, glob: str = "*", *, head_length: int = 0, ignore_if_range: bool = False,
                  content_encoding: Optional[str] = None, gzip_on_the_fly: bool = False,
                  etag: Optional[str] = None, ignore_range: bool = False, bare_get: bool = False,
                  head_headers: Optional[Dict[str, object]] = None, get_headers: Optional[Dict[str, object]] = None) -> None:
        """Lasting quirks of real servers, for files matching ``glob`` (until ``clear_faults``):

        ``head_length``: HEAD announces this many bytes more (or fewer) than GET sends;
        ``ignore_if_range``: honour Range even when If-Range no longer matches (splices a resume);
        ``content_encoding``: label bodies with this Content-Encoding, bytes unchanged (a common
        setting for files that are gzip on disk); ``gzip_on_the_fly``: gzip 200 bodies and announce
        the compressed length; ``etag``: "weak" sends a weak tag, "none" sends no ETag at all;
        ``ignore_range``: answer every GET with the whole file and a 200, Range or not;
        ``bare_get``: GET answers carry no ETag or Last-Modified (HEAD still does);
        ``head_headers`` / ``get_headers``: ``{name: value}`` sent instead of that header of a file's
        HEAD / GET answer (None drops it, a list repeats it; headers not sent are not added).
        """
        quirks = {"head_length": head_length, "ignore_if_range": ignore_if_range, "content_encoding": content_encoding,
                  "gzip_on_the_fly": gzip_on_the_fly, "etag": etag, "ignore_range": ignore_range,
                  "bare_get": bare_get, "head_headers": head_headers, "get_headers": get_headers}
        with self._lock:
            self._quirks.append((glob, {k: v for k, v in quirks.items() if v}))

    def _quirks_for(self, target: str) -> Dict[str, object]:
        merged: Dict[str, object] = {}
        with self._lock:
            for glob, quirks in self._quirks:
                if fnmatch.fnmatchcase(target, glob):
                    merged.update(quirks)
        return merged

    def clear_faults(self) -> None:
        """Remove every fault switch, quirk and the throttle."""
        with self._lock:
            self._faults.clear()
            self._quirks.clear()
        self._rate = None

    def _add_fault(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, kinds: Tuple[str, ...], method: str, target: str,
                    applies: Callable[[_Fault], bool] = lambda fault: True) -> Optional[_Fault]:
        with self._lock:
            for fault in self._faults:
                if fault.kind in kinds and fault.matches(method, target) and applies(fault):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m amsrepomirror.testing.scmdouble",
        description="Serve a (synthetic) SCM package repository on loopback. The first line on "
        "stdout is the listing URL; runs until SIGINT/SIGTERM.",
    )
    p.add_argument("--root", required=True, type=Path, help="folder holding Downloads/packages/")
    p.add_argument("--make", action="store_true", help="(re)generate the synthetic repository first")
    p.add_argument("--version", default=DEFAULT_VERSION)
    p.add_argument("--tiny", type=int, default=0, help="add N tiny files (with --make)")
    p.add_argument("--big-size", type=int, default=DEFAULT_BIG_SIZE, help="size of the big file (with --make)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--user", default=DEMO_USER)
    p.add_argument("--password-env", metavar="VAR",
                   help=f"read the password from environment variable VAR (default: {DEMO_PASSWORD!r})")
    p.add_argument("--unauthorized-prefix", action="append", default=None,
                   help="path prefix (relative to /Downloads/packages/) answering 401; repeatable "
                   "(default: licensed/)")
    p.add_argument("--verbose", action="store_true", help="log each request on stderr")
    args = p.parse_args(argv)

    if args.password_env:
        password = os.environ.get(args.password_env)
        if password is None:
            print(f"scmdouble: environment variable {args.password_env} is not set", file=sys.stderr)
            return 2
    else:
        password = DEMO_PASSWORD
    if args.make:
        make_repository(args.root, args.version, tiny=args.tiny, big_size=args.big_size, seed=args.seed)
    elif not listing_path(args.root, args.version).is_file():
        print(f"scmdouble: no listing at {listing_path(args.root, args.version)} (use --make)", file=sys.stderr)
        return 2

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    prefixes = tuple(args.unauthorized_prefix) if args.unauthorized_prefix is not None else ("licensed/",)
    double = ScmDouble(args.root, {args.user: password}, prefixes, args.host, args.port, verbose=args.verbose)
    with double:
        print(double.listing_url(args.version), flush=True)
        print(f"scmdouble: serving {double.root} at {double.base_url} as user {args.user!r}", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The SCM double: a small, real HTTP server standing in for SCM's package repository.

Tests and ``make demo`` run the mirror against it on 127.0.0.1. It is not a mock: it speaks
HTTP/1.1 with keep-alive over a real socket, serves whatever is on disk at the moment of each
request (no caching), and can be told to misbehave (cut connections, answer 503, throttle, lie).

The double lives in three modules:

* :mod:`amsrepomirror.testing.repository` writes the deterministic synthetic repository it serves
  (:func:`~amsrepomirror.testing.repository.make_repository`) and its listings.
* This module: :class:`ScmDouble` serves ``root`` with HTTP basic auth, Range, ETag/Last-Modified
  validators, conditional requests, a request log and fault switches; over HTTPS when given a
  certificate (``tls=``: one PEM file holding the private key and the certificate chain, e.g. made
  with ``trustme`` in a test), which can be swapped while it runs (:meth:`ScmDouble.use_certificate`).
  Every fault it can be switched to is listed, with what it does, in :data:`FAULTS`.
* :mod:`amsrepomirror.testing.cli` is its command line
  (``python -m amsrepomirror.testing.scmdouble --root DIR --make``; ``--help`` lists the faults).

On ``start()`` the double rewrites the origin of every listing on disk to its own base URL
(:func:`~amsrepomirror.testing.repository.retarget_listing`), so the file on disk is what is served.

Stdlib only.
"""

from __future__ import annotations

import base64
import email.utils
import fnmatch
import gzip
import hmac
import io
import mimetypes
import os
import re
import socket
import ssl
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from amsrepomirror.testing.repository import (
    DEFAULT_VERSION,
    PACKAGES_PREFIX,
    listing_versions,
    retarget_listing,
    url_for,
)

__all__ = [
    "DEMO_USER",
    "DEMO_PASSWORD",
    "FAULTS",
    "FaultKind",
    "RequestRecord",
    "ScmDouble",
]

DEMO_USER = "demo"
DEMO_PASSWORD = "demo-pass"  # public credentials of the double's demo account, not a secret
REALM = "SCM"

_SEND_BLOCK = 64 * 1024


# --------------------------------------------------------------------------------------------
# The faults
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultKind:
    """One way the double can be told to misbehave."""

    switch: str  # the ScmDouble call that switches it on
    does: str  # what the double then does
    answers: str = ""  # lies only: the GETs a lie answers, "range" (a Range the double would honour) or "whole"


#: Every fault the double can be switched to, with what it does: the one list the handler, the switches,
#: ``--help`` and the docs read. Keys are what ``RequestRecord.fault`` says when the fault fired
#: (``hook``, ``throttle`` and ``quirk:*`` fire on every match and leave no mark there).
#: Per-request switches take ``glob`` (fnmatch, ``*`` crosses ``/``) on the path relative to
#: /Downloads/packages/ (e.g. "linux/*", "*.zst", "listings/*"), ``times`` (the first N matching
#: requests; None = until cleared) and ``method`` (GET or HEAD only). ``status`` fires before the auth
#: check (like an overloaded front end) and counts any matching request; ``cut``/``stall`` only count
#: responses that carry a body; a lie's ``times`` counts only requests it applies to.
FAULTS: dict[str, FaultKind] = {
    "hook": FaultKind("on_request(glob, then)",
                      "call then() in the server thread when a matching request arrives, before it is answered"),
    "status": FaultKind("fail_status(glob, status=503, retry_after=None)",
                        "answer that status (with Retry-After when given) instead of serving, before the auth check"),
    "slow-headers": FaultKind("slow_headers(glob, seconds)",
                              "send a status line, then one byte of a header every `seconds` without end (a slowloris)"),
    "redirect": FaultKind("redirect(glob, location, status=302)",
                          "answer that status with Location: location(target) instead of serving, before the auth check"),
    "cut": FaultKind("cut_after(glob, nbytes=0, then=None)",
                     "send full headers (whole Content-Length), close after nbytes of body, then call then()"),
    "stall": FaultKind("stall_after(glob, nbytes=0, seconds=5.0)",
                       "send headers and nbytes of body, then go silent for `seconds` before going on"),
    "lie:gzip-200": FaultKind("lie(glob, 'gzip-200')", "to a Range: 200, the whole file gzip-compressed on the fly "
                              "with Content-Encoding: gzip and the same ETag, no Content-Length", "range"),
    "lie:multipart": FaultKind("lie(glob, 'multipart')", "to a Range: 206 with the right Content-Range header but a "
                               "multipart/byteranges body, no Content-Length", "range"),
    "lie:range-end": FaultKind("lie(glob, 'range-end', nbytes=1000)",
                               "to a Range: a range nbytes shorter than asked, said honestly", "range"),
    "lie:range-start": FaultKind("lie(glob, 'range-start', nbytes=1000)",
                                 "to a Range: a range starting nbytes later, said honestly", "range"),
    "lie:total": FaultKind("lie(glob, 'total', nbytes=1000)",
                           "to a Range: another complete length (nbytes more) in Content-Range", "range"),
    "lie:validators": FaultKind("lie(glob, 'validators')", "to a Range: another strong ETag", "range"),
    "lie:no-etag": FaultKind("lie(glob, 'no-etag')", "to a Range: no ETag, only Last-Modified", "range"),
    "lie:long": FaultKind("lie(glob, 'long', nbytes=1000)",
                          "to a Range: the right headers, no Content-Length, nbytes more body bytes", "range"),
    "lie:short": FaultKind("lie(glob, 'short', nbytes=1000)",
                           "to a Range: the right headers, no Content-Length, nbytes fewer body bytes", "range"),
    "lie:206-whole": FaultKind("lie(glob, '206-whole')", "to a GET without Range: the whole file as a 206", "whole"),
    "throttle": FaultKind("throttle(bytes_per_second)",
                          "limit every body to that rate per connection, transfers already running too; None lifts it"),
    "quirk:head_length": FaultKind("misbehave(glob, head_length=N)", "HEAD announces N bytes more (or fewer) than GET sends"),
    "quirk:ignore_if_range": FaultKind("misbehave(glob, ignore_if_range=True)",
                                       "honour Range even when If-Range no longer matches (splices a resume)"),
    "quirk:content_encoding": FaultKind("misbehave(glob, content_encoding='gzip')",
                                        "label bodies with this Content-Encoding, bytes unchanged (gzip files on disk)"),
    "quirk:gzip_on_the_fly": FaultKind("misbehave(glob, gzip_on_the_fly=True)",
                                       "gzip 200 bodies and announce the compressed length"),
    "quirk:etag": FaultKind("misbehave(glob, etag='weak'|'none')", "send a weak ETag, or no ETag at all"),
    "quirk:ignore_range": FaultKind("misbehave(glob, ignore_range=True)",
                                    "answer every GET with the whole file and a 200, Range or not"),
    "quirk:bare_get": FaultKind("misbehave(glob, bare_get=True)", "GET answers carry no ETag or Last-Modified (HEAD still does)"),
    "quirk:head_headers": FaultKind("misbehave(glob, head_headers={name: value})", "send value instead of that header of a "
                                    "HEAD answer (None drops it, a list repeats it; headers not sent are not added)"),
    "quirk:get_headers": FaultKind("misbehave(glob, get_headers={name: value})",
                                   "the same for GET answers"),
}


def fault_table() -> str:
    """The fault list as text, one fault a line: for ``--help`` and for reading in a terminal."""
    width = max(map(len, FAULTS))
    return "\n".join(f"{name:<{width}}  {kind.switch}: {kind.does}" for name, kind in FAULTS.items())


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
    relpath: str | None  # relative to /Downloads/packages/, or None outside it
    range: str | None  # Range request header
    if_range: str | None  # If-Range request header
    user: str | None  # authenticated user, None if auth failed or missing
    client_port: int  # peer port: equal ports = same (keep-alive) connection
    status: int | None = None
    body_bytes: int = 0
    fault: str | None = None  # the key in FAULTS of the fault that answered ("cut", "lie:short", ...)
    tls: str | None = None  # TLS version of the connection (e.g. "TLSv1.3"); None over plain HTTP
    concurrent: int = 0  # requests being answered when this one arrived, itself included
    started: float = field(default_factory=time.monotonic)
    duration: float | None = None  # set when the handler finished (informational)


@dataclass
class _Fault:
    kind: str  # a key of FAULTS, or "lie" (with ``how``)
    glob: str
    times: int | None
    method: str | None
    nbytes: int = 0
    status: int = 503
    retry_after: str | None = None
    seconds: float = 0.0
    then: Callable[[], None] | None = None  # run (in the server thread) right after a cut; a hook's action
    how: str = ""  # a lie's kind (see ScmDouble.lie)
    location: Callable[[str], str] = str  # a redirect's Location for the target

    def __post_init__(self):
        if self.name not in FAULTS:
            raise ValueError(f"no such fault: {self.name!r}")

    @property
    def name(self) -> str:
        """The fault's key in FAULTS, which its request record carries."""
        return f"lie:{self.how}" if self.kind == "lie" else self.kind

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
    double: ScmDouble

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

    _override: dict[str, str] = {}

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

    def _simple(self, status: int, text: str, headers: dict[str, str] | None = None, head=False):
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

    def _auth_user(self) -> str | None:
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
        except (TimeoutError, BrokenPipeError, ConnectionResetError, ConnectionAbortedError, OSError):
            self.close_connection = True
        finally:
            rec.duration = time.monotonic() - rec.started
            self._rec = None
            with double._lock:
                double._in_flight -= 1

    def _serve_inner(self, double: ScmDouble, head: bool, path: str, relpath: str | None, rec: RequestRecord):
        segments = path.split("/")
        if not path.startswith("/") or ".." in segments or "\0" in path or "\\" in path:
            self._simple(400, "bad request\n", head=head)
            return
        rec.user = self._auth_user()
        target = relpath if relpath is not None else path
        if self._answered_by_front_end_fault(double, head, target, rec):
            return
        if self._refused(double, head, relpath, rec.user):
            return
        self._serve_path(double, head, path, rec, target)

    def _answered_by_front_end_fault(self, double: ScmDouble, head: bool, target: str, rec: RequestRecord) -> bool:
        """The faults that act before the auth check, as a front end would; True when one answered."""
        hook = double._take_fault(("hook",), self.command, target, self.headers.get("Range"))
        if hook is not None:
            hook.then()

        fault = double._take_fault(("status",), self.command, target, self.headers.get("Range"))
        if fault is not None:
            rec.fault = fault.name
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            self._simple(fault.status, f"injected status {fault.status}\n", extra, head=head)
            return True

        slow = double._take_fault(("slow-headers",), self.command, target, self.headers.get("Range"))
        if slow is not None:  # a status line, then one byte of a header line every `seconds`
            rec.fault, self.close_connection = slow.name, True
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not double._stopping.wait(slow.seconds):
                self.wfile.write(b"a")
                self.wfile.flush()
            return True

        moved = double._take_fault(("redirect",), self.command, target, self.headers.get("Range"))
        if moved is not None:
            rec.fault = moved.name
            self._simple(moved.status, "moved\n", {"Location": moved.location(target)}, head=head)
            return True
        return False

    def _refused(self, double: ScmDouble, head: bool, relpath: str | None, user: str | None) -> bool:
        """Answer 401 to a request without a valid account, or for a file the account is not licensed for."""
        challenge = {"WWW-Authenticate": f'Basic realm="{REALM}"'}
        if user is None:
            self._simple(401, "authorization required\n", challenge, head=head)
            return True
        if relpath is not None and any(relpath.startswith(p) for p in double.unauthorized_prefixes):
            self._simple(401, "not licensed for this file\n", challenge, head=head)
            return True
        return False

    def _serve_path(self, double: ScmDouble, head: bool, path: str, rec: RequestRecord, target: str):
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

    def _serve_file(self, double: ScmDouble, head: bool, f, st, rec: RequestRecord, target: str):
        size, mtime = st.st_size, int(st.st_mtime)
        quirks = double._quirks_for(target)
        etag, validators = _validators(st, quirks, head)
        if self._not_modified_since(etag, mtime):
            self._not_modified(validators)
            return
        byte_range = self._requested_range(quirks, etag, mtime, size)
        if byte_range == "unsatisfiable":
            self._unsatisfiable(size, validators)
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
            answers = "range" if status == 206 else "whole"
            lie = double._take_fault(("lie",), self.command, target, self.headers.get("Range"),
                                     lambda fault: FAULTS[fault.name].answers == answers)
            if lie is not None:
                rec.fault = lie.name
                f.seek(start)
                self._send_lie(f, size, start, length, lie, validators, ctype, rec)
                return
        self._send_file_headers(head, quirks, status, ctype, start, length, size, validators)
        if head or length == 0:
            return
        self._send_file_body(double, f, start, length, rec, target)

    def _not_modified_since(self, etag: str, mtime: int) -> bool:
        """If-None-Match (weak comparison) decides when present; otherwise If-Modified-Since."""
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            return _etag_list_matches(inm, etag)
        ims = _parse_http_date(self.headers.get("If-Modified-Since"))
        return ims is not None and mtime <= ims

    def _requested_range(self, quirks: dict[str, object], etag: str, mtime: int, size: int):
        """The range to serve (see :func:`_parse_range`), or None for the whole file."""
        range_header = self.headers.get("Range")
        if range_header is None or quirks.get("ignore_range"):
            return None  # ignore_range: a server without range support, every GET is the whole file with a 200
        if_range = self.headers.get("If-Range")
        if if_range is None or quirks.get("ignore_if_range") or _if_range_matches(if_range, etag, mtime):
            return _parse_range(range_header, size)
        return None

    def _unsatisfiable(self, size: int, validators: dict[str, str]):
        self.send_response(416)
        self.send_header("Content-Range", f"bytes */{size}")
        self.send_header("Content-Length", "0")
        for k, v in validators.items():
            self.send_header(k, v)
        self.end_headers()

    def _send_file_headers(self, head: bool, quirks: dict[str, object], status: int, ctype: str, start: int,
                           length: int, size: int, validators: dict[str, str]):
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

    def _send_file_body(self, double: ScmDouble, f, start: int, length: int, rec: RequestRecord, target: str):
        cut = double._take_fault(("cut",), self.command, target, self.headers.get("Range"))
        stall = double._take_fault(("stall",), self.command, target, self.headers.get("Range"))
        if cut is not None:
            rec.fault = cut.name
        elif stall is not None:
            rec.fault = stall.name
        f.seek(start)
        self._send_body(double, f, length, rec, cut, stall)

    def _send_lie(self, f, size: int, start: int, length: int, lie: _Fault, validators: dict[str, str], ctype: str,
                  rec: RequestRecord):
        """Answer as a hostile or broken server would (``FAULTS["lie:*"]``): headers that look right
        around other bytes, or bytes that look right under other headers."""
        answer = _lie_answer(lie, f, size, start, length, validators, ctype)
        self.send_response(answer.status)
        for k, v in {**answer.headers, **answer.validators}.items():
            self.send_header(k, v)
        if answer.status == 206:
            self.send_header("Content-Range", f"bytes {answer.first}-{answer.last}/{answer.total}")
        if answer.delimited:
            self.send_header("Content-Length", str(len(answer.body)))
        else:  # the body ends when the connection closes (HTTP/1.1 without a length)
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        rec.body_bytes += len(answer.body)
        self.wfile.write(answer.body)

    def _not_modified(self, validators: dict[str, str]):
        self.send_response(304)
        for k, v in validators.items():
            self.send_header(k, v)
        self.end_headers()

    def _send_body(self, double: ScmDouble, f, length: int, rec: RequestRecord, cut: _Fault | None, stall: _Fault | None):
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


def _validators(st: os.stat_result, quirks: dict[str, object], head: bool) -> tuple[str, dict[str, str]]:
    """The file's entity tag (what conditional requests compare against) and the validators its answer
    carries, as the ``etag`` and ``bare_get`` quirks leave them."""
    etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
    if quirks.get("etag") == "weak":
        etag = "W/" + etag
    validators = {"ETag": etag, "Last-Modified": email.utils.formatdate(int(st.st_mtime), usegmt=True)}
    if quirks.get("etag") == "none":
        del validators["ETag"]
    if quirks.get("bare_get") and not head:
        validators = {}
    return etag, validators


@dataclass
class _LieAnswer:
    """What a lie sends: a status, headers and validators, a Content-Range of first-last/total (for a 206)
    and a body, delimited by Content-Length or by closing the connection."""

    status: int
    headers: dict[str, str]
    validators: dict[str, str]
    body: bytes
    first: int
    last: int
    total: int
    delimited: bool = True


def _lie_answer(lie: _Fault, f, size: int, start: int, length: int, validators: dict[str, str],
                ctype: str) -> _LieAnswer:
    """The answer of ``lie`` (one of ``FAULTS["lie:*"]``) to a GET of ``length`` bytes from ``start``; ``f``
    is positioned at ``start``."""
    how, n = lie.how, lie.nbytes or 1000
    wanted = f.read(length)
    answer = _LieAnswer(206, {"Content-Type": ctype}, validators, wanted, start, start + length - 1, size)
    if how == "gzip-200":  # the whole file, compressed on the fly, same validators, no length
        f.seek(0)
        answer.status, answer.body, answer.delimited = 200, gzip.compress(f.read(), mtime=0), False
        answer.headers["Content-Encoding"] = "gzip"
    elif how == "multipart":  # the right Content-Range header over a multipart/byteranges body, no length
        boundary, answer.delimited = "SCMDOUBLEBOUNDARY", False
        answer.headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
        answer.body = (f"--{boundary}\r\nContent-Type: {ctype}\r\nContent-Range: bytes {answer.first}-{answer.last}/"
                       f"{answer.total}\r\n\r\n".encode() + wanted + f"\r\n--{boundary}--\r\n".encode())
    elif how == "range-end":  # a shorter range than asked, said honestly
        answer.last, answer.body = max(answer.first, answer.last - n), wanted[:max(1, length - n)]
    elif how == "range-start":  # the bytes n after the first byte asked, said honestly
        answer.first = min(start + n, size - 1)
        f.seek(answer.first)
        answer.body = f.read(answer.last - answer.first + 1)
    elif how == "total":  # another complete length
        answer.total = size + n
    elif how == "validators":  # a strong ETag other than the one asked for
        answer.validators = {**validators, "ETag": f'"other-{size:x}"'}
    elif how == "no-etag":  # the Last-Modified date only, though If-Range carried the ETag
        answer.validators = {k: v for k, v in validators.items() if k != "ETag"}
    elif how == "long":  # right headers, no Content-Length, n bytes more than the range
        answer.body, answer.delimited = wanted + b"\0" * n, False
    elif how == "short":  # right headers, no Content-Length, the body ends n bytes early
        answer.body, answer.delimited = wanted[:max(0, length - n)], False
    elif how != "206-whole":  # 206-whole: the whole file (all a GET without Range asked for) as a 206
        raise ValueError(f"unknown lie {how!r}")
    return answer


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


def _parse_http_date(value: str | None) -> int | None:
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
        users: dict[str, str] | None = None,
        unauthorized_prefixes: Sequence[str] = ("licensed/",),
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        verbose: bool = False,
        tls: Path | None = None,
    ):
        self.root = Path(root).resolve()
        self.root_str = str(self.root)
        self.users = dict(users) if users is not None else {DEMO_USER: DEMO_PASSWORD}
        self.unauthorized_prefixes = tuple(unauthorized_prefixes)
        self.host = host
        self.port = port
        self.verbose = verbose
        self.scheme = "https" if tls is not None else "http"
        self._tls_context: ssl.SSLContext | None = None
        self._handshake_failures: list[str] = []
        if tls is not None:
            self.use_certificate(tls)
        self._lock = threading.Lock()
        self._log: list[RequestRecord] = []
        self._faults: list[_Fault] = []
        self._spared_range: str | None = None  # spare_probes
        self._quirks: list[tuple[str, dict[str, object]]] = []
        self._rate: int | None = None
        self._in_flight = 0  # requests being answered now
        self._conns: set = set()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> ScmDouble:
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

    def __enter__(self) -> ScmDouble:
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
        return url_for(self.base_url, relpath)

    # -- request log ---------------------------------------------------------------------------
    @property
    def log(self) -> list[RequestRecord]:
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
    def handshake_failures(self) -> list[str]:
        """Why TLS handshakes failed (the client refused the certificate, ...), oldest first. No
        request record exists for these connections: the client sent nothing."""
        with self._lock:
            return list(self._handshake_failures)

    def _note_handshake_failure(self, exc: BaseException) -> None:
        with self._lock:
            self._handshake_failures.append(f"{exc.__class__.__name__}: {exc}")

    def records(self, method: str | None = None, glob: str = "*", status: int | None = None) -> list[RequestRecord]:
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
    # What each switch makes the double do, and what glob/times/method mean: FAULTS (module top).

    def cut_after(self, glob: str = "*", nbytes: int = 0, times: int | None = 1, method: str | None = None,
                  then: Callable[[], None] | None = None) -> None:
        """Send full headers (whole Content-Length), then close after ``nbytes`` of body; call
        ``then()`` right after the cut (e.g. to change the file before the client resumes)."""
        self._add_fault(_Fault("cut", glob, times, method, nbytes=nbytes, then=then))

    def fail_status(self, glob: str = "*", status: int = 503, retry_after=None, times: int | None = 1,
                    method: str | None = None) -> None:
        """Answer ``status`` (with ``Retry-After`` when given) instead of serving."""
        ra = None if retry_after is None else str(retry_after)
        self._add_fault(_Fault("status", glob, times, method, status=status, retry_after=ra))

    def stall_after(self, glob: str = "*", nbytes: int = 0, seconds: float = 5.0, times: int | None = 1,
                    method: str | None = None) -> None:
        """Send headers and ``nbytes`` of body, then go silent for ``seconds`` before going on
        (for client read timeouts)."""
        self._add_fault(_Fault("stall", glob, times, method, nbytes=nbytes, seconds=seconds))

    def on_request(self, glob: str, then: Callable[[], None], times: int | None = 1,
                   method: str | None = None) -> None:
        """Call ``then()`` (in the server thread) when a matching request arrives, before it is
        answered: e.g. ``on_request("listings/*", lambda: double.use_certificate(other))``."""
        self._add_fault(_Fault("hook", glob, times, method, then=then))

    def lie(self, glob: str, how: str, times: int | None = None, nbytes: int = 1000) -> None:
        """Answer GETs with a response that is not the bytes asked for, its status and validators
        otherwise as usual: ``how`` is one of the ``lie:*`` entries of FAULTS."""
        lies = sorted(name.removeprefix("lie:") for name in FAULTS if name.startswith("lie:"))
        if how not in lies:
            raise ValueError(f"unknown lie {how!r}: one of {lies}")
        self._add_fault(_Fault("lie", glob, times, "GET", nbytes=nbytes, how=how))

    def redirect(self, glob: str, location: Callable[[str], str], status: int = 302, times: int | None = None,
                 method: str | None = None) -> None:
        """Answer ``status`` with ``Location: location(target)`` (before any auth check, as a front
        end would) instead of serving."""
        self._add_fault(_Fault("redirect", glob, times, method, status=status, location=location))

    def slow_headers(self, glob: str, seconds: float, times: int | None = 1, method: str | None = None) -> None:
        """Send a status line, then a header one byte every ``seconds`` without end (a slowloris:
        each byte beats any read timeout)."""
        self._add_fault(_Fault("slow-headers", glob, times, method, seconds=seconds))

    def throttle(self, bytes_per_second: int | None) -> None:
        """Limit every body to ``bytes_per_second`` per connection; ``None`` lifts it. Takes
        effect on transfers already running too."""
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive or None")
        self._rate = bytes_per_second

    def misbehave(self, glob: str = "*", *, head_length: int = 0, ignore_if_range: bool = False,
                  content_encoding: str | None = None, gzip_on_the_fly: bool = False,
                  etag: str | None = None, ignore_range: bool = False, bare_get: bool = False,
                  head_headers: dict[str, object] | None = None, get_headers: dict[str, object] | None = None) -> None:
        """Lasting quirks of real servers, for files matching ``glob`` (until ``clear_faults``): the
        ``quirk:*`` entries of FAULTS say what each does."""
        quirks = {"head_length": head_length, "ignore_if_range": ignore_if_range, "content_encoding": content_encoding,
                  "gzip_on_the_fly": gzip_on_the_fly, "etag": etag, "ignore_range": ignore_range,
                  "bare_get": bare_get, "head_headers": head_headers, "get_headers": get_headers}
        with self._lock:
            self._quirks.append((glob, {k: v for k, v in quirks.items() if v}))

    def _quirks_for(self, target: str) -> dict[str, object]:
        merged: dict[str, object] = {}
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

    def spare_probes(self, first_bytes: int) -> None:
        """Let every fault pass over a GET of exactly the first ``first_bytes`` bytes of a file: a first run's probe
        with [http] first_bytes on, so that a fault armed for a file's transfer meets its transfer (0: spare none)."""
        self._spared_range = f"bytes=0-{first_bytes - 1}" if first_bytes else None

    def _take_fault(self, kinds: tuple[str, ...], method: str, target: str, asked_range: str | None,
                    applies: Callable[[_Fault], bool] = lambda fault: True) -> _Fault | None:
        if method == "GET" and asked_range is not None and asked_range == self._spared_range:
            return None
        with self._lock:
            for fault in self._faults:
                if fault.kind in kinds and fault.matches(method, target) and applies(fault):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None



if __name__ == "__main__":
    # `python -m amsrepomirror.testing.scmdouble` is how the double is started: the command line lives in cli.py
    from amsrepomirror.testing.cli import main

    sys.exit(main())

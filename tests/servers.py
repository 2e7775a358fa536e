"""Test helpers: a real nginx serving a repository tree on loopback, its access log, and
``require_tool`` (skip when a tool is missing, fail instead when CI demands the tools).

nginx serves ``root`` the way :class:`amsrepomirror.testing.scmdouble.ScmDouble` does: basic auth on
everything, 401 (with ``WWW-Authenticate``) for unauthorized prefixes, ``etag on``, Range; over
HTTPS when given ``tls=`` (one PEM file holding the private key and the certificate chain).
Differences from the double worth knowing: nginx's ETag/Last-Modified have one-second
resolution (``"<hex mtime s>-<hex size>"``), a directory answers 301/403 rather than 404, and
nginx writes its access-log line *after* the response, so use ``access_log(min_records=...)``
which waits for lines to appear.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from amsrepomirror.testing.repository import DEFAULT_VERSION, PACKAGES_PREFIX, listing_versions, retarget_listing
from amsrepomirror.testing.scmdouble import DEMO_PASSWORD, DEMO_USER

REQUIRE_TOOLS_ENV = "AMSREPOMIRROR_REQUIRE_TOOLS"
_EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def find_tool(name: str) -> str | None:
    """Absolute path of ``name`` (PATH plus the sbin folders), or None."""
    if os.path.isabs(name):
        return name if os.access(name, os.X_OK) else None
    search = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH])
    return shutil.which(name, path=search)


def require_tool(name: str) -> str:
    """Return the tool's path; when missing, skip the test, or fail it when
    ``AMSREPOMIRROR_REQUIRE_TOOLS=1`` (CI sets this so a missing install step cannot hide)."""
    path = find_tool(name)
    if path is None:
        skip_or_fail(f"{name} is not installed (apt-get install {'nginx' if 'nginx' in name else name})")
    return path


def skip_or_fail(msg: str) -> None:
    """Skip the test; fail it instead under ``AMSREPOMIRROR_REQUIRE_TOOLS=1``."""
    if os.environ.get(REQUIRE_TOOLS_ENV) == "1":
        pytest.fail(f"{msg}; {REQUIRE_TOOLS_ENV}=1 requires it", pytrace=False)
    pytest.skip(msg)


_index_answer: list[str | None] = []


def require_package_index() -> None:
    """Skip (or fail, as for tools) when pip cannot download from its package index: the tests of
    ``bundle --with-tool`` download wheels. Asked once per test run: pip downloads its own wheel."""
    if not _index_answer:
        with tempfile.TemporaryDirectory() as dest:
            try:
                done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                                       "--only-binary=:all:", "--timeout", "10", "--retries", "0", "--dest", dest, "pip"],
                                      capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
                lines = done.stderr.strip().splitlines()
                _index_answer.append(None if done.returncode == 0 else (lines[-1] if lines else "pip failed"))
            except subprocess.TimeoutExpired:
                _index_answer.append("pip download took longer than 120 s")
    if _index_answer[0] is not None:
        skip_or_fail(f"no package index reachable for pip download ({_index_answer[0]})")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class AccessRecord:
    """One nginx access-log line (``-`` fields become None / 0)."""

    method: str
    uri: str  # normalized, percent-decoded $uri
    status: int
    body_bytes: int  # $body_bytes_sent
    range: str | None
    if_range: str | None
    user: str | None
    connection: int  # $connection: equal numbers = same (keep-alive) connection
    request_time: float
    tls: str | None = None  # $ssl_protocol, e.g. "TLSv1.3"; None over plain HTTP

    @property
    def relpath(self) -> str | None:
        return self.uri[len(PACKAGES_PREFIX):] if self.uri.startswith(PACKAGES_PREFIX) else None


_LOG_FORMAT = (
    "$request_method\\t$uri\\t$status\\t$body_bytes_sent\\t$http_range\\t$http_if_range"
    "\\t$remote_user\\t$connection\\t$request_time\\t$ssl_protocol"
)
_ESC = re.compile(rb"\\x([0-9A-Fa-f]{2})")


def _unescape(field: str) -> str | None:
    if field == "-":
        return None
    raw = _ESC.sub(lambda m: bytes([int(m.group(1), 16)]), field.encode("latin-1", "backslashreplace"))
    return raw.decode("utf-8", "replace")


def parse_access_log(path: str | Path) -> list[AccessRecord]:
    """Parse an access log written with this module's tab-separated format."""
    out = []
    try:
        text = Path(path).read_text(encoding="latin-1")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 10:
            continue
        method, uri, status, nbytes, rng, if_range, user, conn, rtime, tls = parts
        out.append(AccessRecord(
            method=method,
            uri=_unescape(uri) or "",
            status=int(status),
            body_bytes=int(nbytes) if nbytes.isdigit() else 0,
            range=_unescape(rng),
            if_range=_unescape(if_range),
            user=_unescape(user),
            connection=int(conn) if conn.isdigit() else 0,
            request_time=float(rtime) if rtime not in ("", "-") else 0.0,
            tls=_unescape(tls),
        ))
    return out


def _nginx_string(value: str) -> str:
    if any(c in value for c in "\"\\\n\r;{}$"):
        raise ValueError(f"unsupported character in nginx config value: {value!r}")
    return f'"{value}"'


class NginxServer:
    """A real nginx on a free 127.0.0.1 port serving ``root`` (a tree with Downloads/packages/).

    Runs in the foreground under its own prefix directory (config, user file, logs, pid, temp
    folders); ``start()`` waits until the port answers. Like ScmDouble, ``start()`` rewrites the
    origin of every ``listings/*.txt`` on disk to this server's base URL.
    """

    def __init__(
        self,
        root: str | Path,
        users: dict[str, str] | None = None,
        unauthorized_prefixes: Sequence[str] = ("licensed/",),
        limit_rate: int | str | None = None,
        *,
        nginx: str | None = None,
        workdir: str | Path | None = None,
        tls: str | Path | None = None,
    ):
        self.root = Path(root).resolve()
        self.users = dict(users) if users is not None else {DEMO_USER: DEMO_PASSWORD}
        self.unauthorized_prefixes = tuple(unauthorized_prefixes)
        self.limit_rate = limit_rate
        self.tls = Path(tls).resolve() if tls is not None else None
        self.nginx = nginx or find_tool("nginx") or "/usr/sbin/nginx"
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="nginx-"))
        self.host = "127.0.0.1"
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def listing_url(self, version: str = DEFAULT_VERSION) -> str:
        return f"{self.base_url}{PACKAGES_PREFIX}listings/{quote(version)}.txt"

    def url(self, relpath: str) -> str:
        return f"{self.base_url}{PACKAGES_PREFIX}{quote(relpath, safe='/')}"

    @property
    def access_log_path(self) -> Path:
        return self.workdir / "access.log"

    @property
    def error_log_path(self) -> Path:
        return self.workdir / "error.log"

    def _write_config(self) -> Path:
        wd = self.workdir
        wd.mkdir(parents=True, exist_ok=True)
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (wd / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        lines = []
        for user, password in self.users.items():
            if ":" in user or "\n" in user or "\n" in password:
                raise ValueError("user names must not contain ':' or newlines")
            digest = base64.b64encode(hashlib.sha1(password.encode("utf-8")).digest()).decode("ascii")
            lines.append(f"{user}:{{SHA}}{digest}\n")
        htpasswd = wd / "htpasswd"
        htpasswd.write_text("".join(lines))
        os.chmod(htpasswd, 0o644)
        locations = "".join(
            f"        location ^~ {_nginx_string(PACKAGES_PREFIX + p.lstrip('/'))} {{\n"
            f"            add_header WWW-Authenticate 'Basic realm=\"SCM\"' always;\n"
            f"            return 401;\n"
            f"        }}\n"
            for p in self.unauthorized_prefixes
        )
        rate = f"        limit_rate {self.limit_rate};\n" if self.limit_rate else ""
        # Workers drop to user "nobody" when the master runs as root and then cannot read
        # pytest's tmp dirs (mode 0700): keep them as root in that case.
        user_line = "user root;\n" if os.geteuid() == 0 else ""
        mime = "    include /etc/nginx/mime.types;\n" if Path("/etc/nginx/mime.types").is_file() else ""
        pem = _nginx_string(str(self.tls)) if self.tls else ""
        tls = f"        ssl_certificate {pem};\n        ssl_certificate_key {pem};\n" if self.tls else ""
        conf = f"""{user_line}worker_processes 1;
pid {wd / 'nginx.pid'};
error_log {wd / 'error.log'} warn;
events {{ worker_connections 1024; }}
http {{
{mime}    default_type application/octet-stream;
    client_body_temp_path {wd / 'tmp/client_body'};
    proxy_temp_path {wd / 'tmp/proxy'};
    fastcgi_temp_path {wd / 'tmp/fastcgi'};
    uwsgi_temp_path {wd / 'tmp/uwsgi'};
    scgi_temp_path {wd / 'tmp/scgi'};
    log_format mirror "{_LOG_FORMAT}";
    access_log {wd / 'access.log'} mirror;
    sendfile on;
    keepalive_timeout 60s;
    keepalive_requests 100000;
    server_tokens off;
    server {{
        listen {self.host}:{self.port}{" ssl" if self.tls else ""};
{tls}        root {_nginx_string(str(self.root))};
        etag on;
        auth_basic "SCM";
        auth_basic_user_file {wd / 'htpasswd'};
{rate}{locations}    }}
}}
"""
        path = wd / "nginx.conf"
        path.write_text(conf)
        return path

    def start(self, timeout: float = 10.0) -> NginxServer:
        if self.proc is not None:
            raise RuntimeError("already started")
        last_error = ""
        for _attempt in range(3):  # the free port may be taken between probe and bind
            self.port = free_port(self.host)
            conf = self._write_config()
            self.error_log_path.write_text("")
            self.proc = subprocess.Popen(
                [self.nginx, "-p", str(self.workdir), "-c", str(conf), "-g", "daemon off;"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    with socket.create_connection((self.host, self.port), timeout=0.5):
                        break
                except OSError:
                    time.sleep(0.02)
            if self.proc.poll() is None:
                for version in listing_versions(self.root):
                    retarget_listing(self.root, version, self.base_url)
                return self
            stderr = self.proc.stderr.read().decode("utf-8", "replace") if self.proc.stderr else ""
            last_error = (stderr + self.error_log_path.read_text(errors="replace")).strip()
            self.proc = None
            if "Address already in use" not in last_error:
                break
        raise RuntimeError(f"nginx did not start: {last_error}")

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # fast shutdown: also drops keep-alive connections
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if proc.stderr:
            proc.stderr.close()

    def cleanup(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> NginxServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def access_log(self, min_records: int = 0, timeout: float = 3.0) -> list[AccessRecord]:
        """Parsed access log, waiting up to ``timeout`` for at least ``min_records`` lines
        (nginx logs after it has sent the response)."""
        deadline = time.monotonic() + timeout
        while True:
            records = parse_access_log(self.access_log_path)
            if len(records) >= min_records or time.monotonic() >= deadline:
                return records
            time.sleep(0.02)

    def clear_access_log(self) -> None:
        """Truncate the access log (nginx appends with O_APPEND, so this is safe while running)."""
        with open(self.access_log_path, "w"):
            pass

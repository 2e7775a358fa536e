"""HTTP: one pooled session with urllib3 retries, HEAD probes, and resumable downloads.

Connection errors, 5xx and 429 (honouring ``Retry-After``) are retried by urllib3's ``Retry``
inside the adapter. A body cut mid-stream cannot be retried there, so ``fetch_to_part`` spends
the same ``Retry`` budget on resuming at the byte with ``Range`` + ``If-Range``.
"""

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

from . import __version__
from .credentials import Credentials
from .errors import AuthError, FetchError
from .fsutil import local_writes
from .hashing import sha256_stream
from .listing import decode_listing, redact

RETRY_STATUSES = (429, 500, 502, 503, 504)
# urllib3 drops a partly filled read buffer when the connection dies, so read in modest blocks:
# after a cut at most this much is fetched again.
STREAM_BLOCK = 128 * 1024


class Unauthorized(FetchError):
    """The server answered 401/403 for this URL (the account is not licensed for it)."""


@dataclass(frozen=True)
class RemoteInfo:
    """What the server says of a file now; None fields were not sent."""

    status: int
    size: Optional[int] = None
    etag: Optional[str] = None
    last_modified: Optional[str] = None

    def validators(self):
        return {"size": self.size, "etag": self.etag, "last_modified": self.last_modified}


@dataclass(frozen=True)
class FetchResult:
    size: int
    sha256: str
    etag: Optional[str]
    last_modified: Optional[str]
    bytes_transferred: int  # body bytes received, including those of resumed attempts


def make_retry(retries: int, backoff: float) -> Retry:
    return Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=retries,
        backoff_factor=backoff,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "HEAD"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )


def make_session(credentials: Optional[Credentials], *, verify_ssl: bool = True, retries: int = 5,
                 backoff: float = 0.5, pool_size: int = 4) -> requests.Session:
    """A pooled session: basic auth (or ~/.netrc through requests), retries, our User-Agent."""
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=make_retry(retries, backoff), pool_connections=4, pool_maxsize=max(pool_size, 4))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = f"amsrepomirror/{__version__}"
    if credentials:
        session.auth = credentials.as_auth()
    if not verify_ssl:
        session.verify = False
        warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    session.retry_template = make_retry(retries, backoff)  # budget for mid-body resumes
    session.pool_size = max(pool_size, 4)
    return session


def _request(session: requests.Session, method: str, url: str, timeout: float, **kwargs) -> requests.Response:
    try:
        return session.request(method, url, timeout=timeout, allow_redirects=True, **kwargs)
    except requests.exceptions.SSLError as exc:
        raise FetchError(f"TLS error for {redact(url)} (use --no-ssl only if you trust the network): {exc.__class__.__name__}") from None
    except requests.exceptions.RequestException as exc:
        raise FetchError(f"cannot fetch {redact(url)}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
    if isinstance(inner, MaxRetryError):
        inner = inner.reason or inner
    return f"{inner.__class__.__name__}: {inner}".splitlines()[0][:300]


def fetch_text(session: requests.Session, url: str, timeout: float) -> str:
    """GET the listing and decode it from its bytes (``decode_listing``); 401/403 is an AuthError."""
    resp = _request(session, "GET", url, timeout)
    if resp.status_code in (401, 403):
        raise AuthError(
            f"the server refused the SCM account for the listing {redact(url)} (HTTP {resp.status_code}): "
            "check SCM_USER/SCM_PASSWORD or ~/.netrc"
        )
    if resp.status_code != 200:
        raise FetchError(f"cannot fetch the listing {redact(url)}: HTTP {resp.status_code}")
    return decode_listing(resp.content, url)


def _head_client(session: requests.Session, url: str) -> urllib3.PoolManager:
    """A bare urllib3 pool for HEAD probes, set up as requests would (proxy from the environment,
    CA bundle, TLS verification, the same Retry): requests costs over twice as much per request,
    which dominates a no-change run over thousands of files."""
    parts = urllib3.util.parse_url(url)
    key = (parts.scheme, parts.host, parts.port)
    clients = session.__dict__.setdefault("head_clients", {})
    if key not in clients:
        tls = {"cert_reqs": "CERT_NONE"} if session.verify is False else {
            "cert_reqs": "CERT_REQUIRED",
            "ca_certs": os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or requests.certs.where(),
        }
        retries = session.get_adapter(url).max_retries
        proxy = requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url))
        common = dict(num_pools=4, maxsize=getattr(session, "pool_size", 4), retries=retries, **tls)
        clients[key] = urllib3.ProxyManager(proxy, **common) if proxy else urllib3.PoolManager(**common)
    return clients[key]


def probe(session: requests.Session, url: str, timeout: float) -> RemoteInfo:
    """HEAD a file: size and validators, or the refusing status."""
    headers = {"User-Agent": session.headers["User-Agent"], "Accept-Encoding": "identity"}
    if session.auth:
        headers.update(urllib3.util.make_headers(basic_auth=":".join(session.auth)))
    try:
        resp = _head_client(session, url).request("HEAD", url, headers=headers, timeout=timeout, redirect=True)
    except urllib3.exceptions.HTTPError as exc:
        raise FetchError(f"cannot fetch {redact(url)}: {_reason(exc)}") from None
    if resp.status != 200:
        return RemoteInfo(status=resp.status)
    length = resp.headers.get("Content-Length")
    return RemoteInfo(
        status=200,
        size=int(length) if length is not None and length.isdigit() else None,
        etag=resp.headers.get("ETag"),
        last_modified=resp.headers.get("Last-Modified"),
    )


def _part_meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _resume_point(part: Path, remote: RemoteInfo) -> int:
    """Bytes of ``part`` that belong to the file the server serves now (0 when unknown or stale)."""
    try:
        meta = json.loads(_part_meta_path(part).read_text())
        size = part.stat().st_size
    except (OSError, ValueError):
        return 0
    same = meta.get("etag") == remote.etag and meta.get("last_modified") == remote.last_modified
    if not same or not (remote.etag or remote.last_modified) or (remote.size is not None and size > remote.size):
        return 0
    return size


def fetch_to_part(session: requests.Session, url: str, part: Path, remote: RemoteInfo, timeout: float,
                  on_bytes: Callable[[int], None] = lambda n: None) -> FetchResult:
    """Download ``url`` into ``part``, resuming at the byte; return size, sha256 and validators.

    The part is accepted only when its length equals the length the server announced; the
    caller renames it into the mirror. ``remote`` is the HEAD answer this run planned with.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    retry = getattr(session, "retry_template", None) or make_retry(5, 0.5)
    transferred = 0
    while True:
        offset = _resume_point(part, remote)
        hasher = hashlib.sha256()
        if offset:
            with open(part, "rb") as f:
                sha256_stream(f, hasher, limit=offset)
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            headers["If-Range"] = remote.etag or remote.last_modified
        resp = _request(session, "GET", url, timeout, headers=headers, stream=True)
        try:
            if resp.status_code in (401, 403):
                raise Unauthorized(f"HTTP {resp.status_code} for {redact(url)}")
            if resp.status_code == 416 and offset:
                _discard(part)
                continue
            if resp.status_code == 206 and offset:
                total = _content_range_total(resp, offset, url)
            elif resp.status_code == 200:
                offset, hasher = 0, hashlib.sha256()
                total = int(resp.headers["Content-Length"]) if "Content-Length" in resp.headers else None
            else:
                raise FetchError(f"cannot fetch {redact(url)}: HTTP {resp.status_code}")
            etag, last_modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
            with local_writes(str(part)):
                _part_meta_path(part).write_text(json.dumps({"etag": etag, "last_modified": last_modified}))
                with open(part, "r+b" if offset else "wb") as out:
                    out.seek(offset)
                    out.truncate()
                    cut = _stream_into(resp, out, hasher, on_bytes)
                    size = out.tell()
                    if cut is None:
                        out.flush()
                        os.fsync(out.fileno())
                transferred += size - offset
            if cut is not None:
                retry = _spend(retry, url, cut)
                continue
        finally:
            resp.close()
        total = total if total is not None else remote.size
        if total is not None and size != total:
            retry = _spend(retry, url, FetchError(f"got {size} of {total} bytes"))
            continue
        _part_meta_path(part).unlink()
        return FetchResult(size, hasher.hexdigest(), etag, last_modified, transferred)


def _stream_into(resp: requests.Response, out, hasher, on_bytes: Callable[[int], None]) -> Optional[Exception]:
    """Copy the body into ``out``; return the network error that cut it, if any.

    Local write errors propagate (a full disk is not worth a retry).
    """
    blocks = resp.iter_content(chunk_size=STREAM_BLOCK)
    while True:
        try:
            block = next(blocks, None)
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            return exc
        if block is None:
            return None
        out.write(block)
        hasher.update(block)
        on_bytes(len(block))


def _discard(part: Path) -> None:
    for p in (part, _part_meta_path(part)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _content_range_total(resp: requests.Response, offset: int, url: str) -> Optional[int]:
    value = resp.headers.get("Content-Range", "")
    try:
        unit, rest = value.split(" ", 1)
        span, total = rest.split("/")
        start = int(span.split("-")[0])
    except ValueError:
        raise FetchError(f"bad Content-Range {value!r} from {redact(url)}") from None
    if unit != "bytes" or start != offset:
        raise FetchError(f"server resumed {redact(url)} at the wrong offset ({value!r}, wanted {offset})")
    return int(total) if total.isdigit() else None


def _spend(retry: Retry, url: str, exc: BaseException) -> Retry:
    """Charge one failed attempt to the urllib3 retry budget, sleep its backoff, or give up."""
    try:
        retry = retry.increment(method="GET", url=url, error=_as_urllib3(exc))
    except MaxRetryError:
        raise FetchError(f"giving up on {redact(url)} after retries: {_reason(exc)}") from None
    retry.sleep()
    return retry


def _as_urllib3(exc: BaseException) -> Exception:
    # Retry.increment classifies by urllib3 exception type; a cut body is a read error.
    return urllib3.exceptions.ProtocolError(str(exc)[:200])

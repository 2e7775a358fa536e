"""HTTP: one pooled session with urllib3 retries, HEAD probes, and resumable downloads.

Connection errors, 5xx and 429 (honouring ``Retry-After``) are retried by urllib3's ``Retry``
inside the adapter. A body cut mid-stream cannot be retried there, so ``fetch_to_part`` charges
the same ``Retry`` budget on resuming at the byte with ``Range`` + ``If-Range``. Body downloads
use :func:`body_session`, whose ``Retry`` leaves 429 and 503 alone: those raise
:class:`ServerBusy`, so the code that schedules connections (``segments``) can open fewer.
"""

import base64
import contextlib
import email.utils
import errno
import hashlib
import heapq
import itertools
import json
import logging
import os
import re
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

from amsrepomirror import __version__
from amsrepomirror.errors import AuthError, FetchError, UsageError
from amsrepomirror.online.credentials import Credentials
from amsrepomirror.online.listing import decode_listing, redact
from amsrepomirror.util.fsutil import local_writes
from amsrepomirror.util.hashing import sha256_stream
from amsrepomirror.util.jsonread import read_json

log = logging.getLogger(__name__)

RETRY_STATUSES = (429, 500, 502, 503, 504)
#: The listing is the first request of a run: a wrong host or port must show at once, so it gets
#: a short connect timeout and a few quick retries (file bodies keep the patient [http] policy).
LISTING_RETRIES = 4
LISTING_CONNECT_TIMEOUT = 5.0
LISTING_BACKOFF_MAX = 2.0
#: A listing of 100,000 files is about 12 MiB; more than this is no listing (read as it arrives, decoded).
LISTING_MAX_BYTES = 64 * 2**20
#: A retry of a file that waits at least this long (seconds) is said on the terminal.
ANNOUNCE_BACKOFF = 2.0
#: The longest ``Retry-After`` (seconds) a run waits: a longer one is not honoured (the backoff
#: applies, and after the retries the request fails), so no server can park a run for hours.
MAX_RETRY_AFTER = 120.0
# "Too many requests" / "unavailable": the server asks for less; body downloads hand them to the scheduler.
BUSY_STATUSES = (429, 503)
# urllib3 drops a partly filled read buffer when the connection dies, so read in modest blocks:
# after a cut at most this much is fetched again.
STREAM_BLOCK = 128 * 1024
RESUMABLE_FROM = 256 * 1024  # a cut download of this many bytes or more resumes at the byte


class Unauthorized(FetchError):
    """The server answered 401/403 for this URL (the account is not licensed for it)."""


class ServerNotAuthenticated(AuthError):
    """The server's TLS certificate failed verification: who answered is unproven, so nothing it
    sends may be mirrored (exit 3, the authentication failure)."""


#: Where a CA bundle to trust may be named, in the order requests and curl read them. requests
#: itself ignores SSL_CERT_FILE (OpenSSL's variable); here every connection honours all three.
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")


def ca_bundle() -> str:
    """The CA certificates that verify servers: the first of ``CA_BUNDLE_VARIABLES`` set, else
    requests' bundle (certifi). A named path that does not exist is a UsageError."""
    for name in CA_BUNDLE_VARIABLES:
        value = os.environ.get(name)
        if value:
            if not os.path.exists(value):
                raise UsageError(f"{name}={value}: no such CA certificate file or folder")
            return value
    return requests.certs.where()


def _certificate_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind ``exc`` (requests and urllib3 wrap it in
    several layers), or None when ``exc`` is something else."""
    return next((e for e in _causes(exc) if isinstance(e, ssl.SSLCertVerificationError)), None)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception behind it (requests and urllib3 wrap the socket's error in layers;
    SSLError.reason is a str, not one of them)."""
    pending, seen = [exc], set()
    while pending:
        e = pending.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        pending += [e.__cause__, e.__context__, getattr(e, "reason", None)]
        pending += list(e.args)


#: OpenSSL's reasons when the other end does not speak TLS at all (a plain-HTTP server).
_NOT_TLS_REASONS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG",
                    "UNKNOWN_PROTOCOL")


def _plain_http_answer(exc: BaseException) -> bool:
    """Whether a TLS handshake failed because the server answered in plain HTTP."""
    return any(isinstance(e, ssl.SSLError) and not isinstance(e, ssl.SSLCertVerificationError)
               and (e.reason in _NOT_TLS_REASONS or "wrong version number" in str(e)) for e in _causes(exc))


def _cause(exc: BaseException) -> str:
    """What went wrong on the connection, in words an admin reads (not an exception class name)."""
    causes = list(_causes(exc))
    kinds = tuple(type(e) for e in causes)
    if any(issubclass(k, urllib3.exceptions.NameResolutionError) or issubclass(k, socket.gaierror) for k in kinds):
        return "the host name does not resolve"
    if any(issubclass(k, ConnectionRefusedError) for k in kinds):
        return "connection refused"
    if any(issubclass(k, urllib3.exceptions.ConnectTimeoutError) for k in kinds):
        return "no answer within the connect timeout"
    if any(issubclass(k, (urllib3.exceptions.ReadTimeoutError, TimeoutError, socket.timeout)) for k in kinds):
        return "timed out waiting for the server"
    if _plain_http_answer(exc):
        return "the server answers plain HTTP, not TLS"
    if any(issubclass(k, ConnectionResetError) for k in kinds):
        return "connection reset by the server"
    if any(isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH) for e in causes):
        return "network or host unreachable"
    if any(issubclass(k, urllib3.exceptions.IncompleteRead) or k.__name__ == "IncompleteRead" for k in kinds):
        return "the connection broke before the whole body arrived"
    if any(issubclass(k, ConnectionAbortedError) or k.__name__ == "RemoteDisconnected" for k in kinds):
        return "the server closed the connection without an answer"
    inner = causes[-1] if causes else exc
    if isinstance(inner, urllib3.exceptions.ProtocolError) and all(isinstance(a, str) for a in inner.args):
        return str(inner).splitlines()[0][:300]  # a cut or too slow body, already said in words (_as_urllib3)
    return f"{inner.__class__.__name__}: {inner}".splitlines()[0][:300]


def _speaks_tls(url: str, timeout: float = 3.0) -> bool:
    """Whether the server of a plain-http URL completes a TLS handshake (it is an https server)."""
    parts = urllib3.util.parse_url(url)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # only asking which protocol it speaks
    try:
        with socket.create_connection((parts.host, parts.port or 80), timeout) as sock:
            with context.wrap_socket(sock, server_hostname=parts.host):
                return True
    except (OSError, ValueError):
        return False


def _protocol_hint(url: str, exc: BaseException | None) -> str:
    """When the URL's scheme does not match what the server speaks: the fix; else ""."""
    parts = urllib3.util.parse_url(url)
    where = f"{parts.host}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    if parts.scheme == "https" and exc is not None and _plain_http_answer(exc):
        return f"the server at {where} speaks plain HTTP, not HTTPS: use an http:// URL (--no-ssl does not change this)"
    if parts.scheme == "http" and _speaks_tls(url):
        return f"the server at {where} speaks HTTPS (TLS), not plain HTTP: use an https:// URL"
    return ""


def _not_authenticated(url: str, failure: ssl.SSLCertVerificationError) -> ServerNotAuthenticated:
    reason = failure.verify_message or failure.reason or "verification failed"
    return ServerNotAuthenticated(
        f"the server of {redact(url)} could not be authenticated: certificate verification failed ({reason}); "
        "if it uses a private CA, name that CA's certificate in REQUESTS_CA_BUNDLE or SSL_CERT_FILE "
        "(--no-ssl only if you trust the network)")


@dataclass(frozen=True)
class RemoteInfo:
    """What the server says of a file now; None fields were not sent."""

    status: int
    size: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    weak_date: bool = False  # Last-Modified not a second before the answer's Date: it ties no range (weak_date)

    def validators(self):
        return {"size": self.size, "etag": self.etag, "last_modified": self.last_modified, "weak_date": self.weak_date}

    @classmethod
    def of_entry(cls, entry) -> "RemoteInfo":
        """The answer a snapshot entry recorded (its ``validators()``), for the GETs that follow."""
        # an entry without the key was written before the one-second rule: its date is taken to tie nothing
        return cls(200, entry.get("size"), entry.get("etag"), entry.get("last_modified"),
                   entry.get("weak_date") is not False)

    @classmethod
    def of_answer(cls, size: int | None, headers) -> "RemoteInfo":
        """A 200's (or a probe's) size and validators, as ``headers`` tell them."""
        last_modified = headers.get("Last-Modified")
        return cls(200, size, headers.get("ETag"), last_modified, weak_date(last_modified, headers.get("Date")))


@dataclass(frozen=True)
class FetchResult:
    size: int
    sha256: str
    etag: str | None
    last_modified: str | None
    bytes_transferred: int  # body bytes received, including those of resumed attempts


class _Retry(Retry):
    """urllib3's Retry, except that a certificate that failed verification is not tried again:
    it fails the same way every time, and the user should hear so at once."""

    #: Say each retry whose backoff is at least this many seconds on the terminal (None: never).
    announce_after: float | None = None
    attempts = 0  # of the whole budget, for "attempt n/m"

    def parse_retry_after(self, retry_after: str) -> float:
        return retry_after_seconds(retry_after) or 0.0  # 0: urllib3 falls back to the backoff

    def new(self, **kw):
        retry = super().new(**kw)
        retry.announce_after, retry.attempts = self.announce_after, self.attempts
        return retry

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        location = response.get_redirect_location() if response is not None else None
        if location:  # a redirect the HEAD probes' pool is about to follow
            refuse_redirect(url or "", location)
        if error is not None and (_certificate_failure(error) is not None or _plain_http_answer(error)):
            raise error  # fails the same way every time: say so at once
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        if self.announce_after is not None and retry.get_backoff_time() >= self.announce_after:
            where = f"{_pool.scheme}://{_pool.host}:{_pool.port}{url}" if _pool is not None else url
            why = _cause(error) if error is not None else f"HTTP {response.status}" if response is not None else "?"
            log.info(f"retrying {method} {redact(where or '')} (attempt {len(retry.history) + 1}/{self.attempts}, {why})")
        return retry


def make_retry(retries: int, backoff: float, statuses=RETRY_STATUSES, *,
               announce_after: float | None = ANNOUNCE_BACKOFF, backoff_max: float = 120.0) -> Retry:
    """urllib3's retries; with ``statuses`` lacking 429 and 503, those answers are returned, Retry-After or not."""
    retry = _Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=retries,
        backoff_factor=backoff,
        status_forcelist=statuses,
        allowed_methods=frozenset({"GET", "HEAD"}),
        respect_retry_after_header=429 in statuses,  # else urllib3 retries any 429/503 that sends Retry-After
        raise_on_status=False,
        backoff_max=backoff_max,
    )
    retry.announce_after, retry.attempts = announce_after, retries + 1
    return retry


class RedirectRefused(FetchError):
    """A redirect that is not followed (:func:`refuse_redirect`)."""


def refuse_redirect(url: str, location: str) -> None:
    """The one rule for redirects, on every request path (requests' sessions and the HEAD probes'
    pool): one from https may only lead to https, and only to http(s) at all. A redirect to plain
    http would carry the file, and the password that ~/.netrc gives for that host, across the
    network unprotected."""
    try:
        source, target = urlsplit(url), urlsplit(urljoin(url, location))
    except ValueError:  # "http://[x": not a URL at all
        raise RedirectRefused(f"{redact(url)} redirects to a location that is not a URL; not followed") from None
    allowed = ("https",) if source.scheme.lower() == "https" else ("http", "https")
    if target.scheme.lower() not in allowed:  # guard: redirect-no-downgrade
        raise RedirectRefused(f"{redact(url)} redirects to {redact(target.geturl())}: a redirect from "
                              f"{source.scheme} to {target.scheme or 'no scheme'} is not followed; not stored")


#: The status line and headers of every answer must arrive within this many read timeouts: a server
#: that sends them a byte at a time beats every read timeout (a slowloris) and would hold a run forever.
HEADER_DEADLINE_TIMEOUTS = 3


class _Watchdog:
    """One thread that runs each scheduled action at its deadline unless it was cancelled first
    (cheaper than a timer thread per request: a no-change run makes thousands of HEAD probes)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, delay: float, action: Callable[[], None]) -> list:
        entry = [time.monotonic() + delay, next(self._order), action]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None or not self._thread.is_alive():  # none yet, or lost in a fork
                self._thread = threading.Thread(target=self._run, name="header-deadline", daemon=True)
                self._thread.start()
            self._cond.notify()
        return entry

    def cancel(self, entry: list) -> None:
        with self._cond:
            entry[2] = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][2] is None:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                action = heapq.heappop(self._heap)[2]
            try:
                action()
            except Exception:  # an action only shuts a socket down; it must not stop the others
                log.debug("header deadline action failed", exc_info=True)


_WATCHDOG = _Watchdog()


class _HeaderDeadline:
    """A urllib3 connection whose answer (status line and headers) must arrive within
    :data:`HEADER_DEADLINE_TIMEOUTS` read timeouts, on every request path (requests' adapters and
    the HEAD probes' pools): past it the socket is shut down and the attempt is a read timeout,
    retried like one."""

    def getresponse(self, *args, **kwargs):
        read_timeout = self.timeout if isinstance(self.timeout, (int, float)) else 60.0
        late, settled = threading.Event(), threading.Lock()

        def expire() -> None:
            with settled:  # not once the headers are in: the socket then carries the body
                if answered:
                    return
                late.set()
                if self.sock is not None:
                    with contextlib.suppress(OSError):
                        self.sock.shutdown(socket.SHUT_RDWR)

        answered = False
        entry = _WATCHDOG.schedule(read_timeout * HEADER_DEADLINE_TIMEOUTS, expire)
        try:
            response = super().getresponse(*args, **kwargs)
        except Exception:
            if late.is_set():
                raise TimeoutError("the server sent its answer's headers too slowly") from None
            raise
        finally:
            with settled:
                answered = True
            _WATCHDOG.cancel(entry)
        if late.is_set():  # guard: header-deadline
            # the headers read before the shutdown may end early and look complete: never used
            response.close()
            raise TimeoutError("the server sent its answer's headers too slowly")
        return response


class _HTTPConnection(_HeaderDeadline, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_HeaderDeadline, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


#: Every pool of the tool's: its connections keep the header deadline.
POOL_CLASSES = {"http": _HTTPPool, "https": _HTTPSPool}


def _with_deadline(manager: urllib3.PoolManager) -> urllib3.PoolManager:
    manager.pool_classes_by_scheme = POOL_CLASSES
    return manager


class _Adapter(HTTPAdapter):
    """requests' adapter, its pools (direct or through a proxy) made of :class:`_HeaderDeadline` connections."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        _with_deadline(self.poolmanager)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        return _with_deadline(super().proxy_manager_for(proxy, **proxy_kwargs))


class _Session(requests.Session):
    """A requests Session that reads the environment's proxy settings once per server, not per request
    (requests walks the whole environment twice per request: a tenth of a small file's cost)."""

    def __init__(self) -> None:
        super().__init__()
        self._environment_settings: dict = {}
        self._environment_lock = threading.Lock()

    def get_redirect_target(self, resp):
        location = super().get_redirect_target(resp)
        if location:
            refuse_redirect(resp.url, location)
        return location

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        parts = urllib3.util.parse_url(url)
        key = (parts.scheme, parts.host, parts.port, stream, verify, cert,
               tuple(sorted((proxies or {}).items())))
        with self._environment_lock:
            if key not in self._environment_settings:
                proxy_for(url)  # a proxy setting requests would fail on, quoting part of its password: exit 2 first
                self._environment_settings[key] = super().merge_environment_settings(url, proxies, stream, verify, cert)
            settings = self._environment_settings[key]
        return {**settings, "proxies": dict(settings["proxies"])}


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``https_proxy``, ``all_proxy``, ``no_proxy``, as requests reads
    them), as an http(s) URL; UsageError (exit 2) for one that requests and urllib3 would fail on mid-run with an
    error quoting part of its account (a "/", "#" or "?" left unencoded in its password), or could not send (an
    account beyond Latin-1, a scheme other than http(s), SOCKS): the variable is named, its value never shown."""
    proxy = requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url))
    if not proxy:
        return None
    try:
        proxy = requests.utils.prepend_scheme_if_needed(proxy, "http")
        parts = urllib3.util.parse_url(proxy)
        readable = parts.scheme in ("http", "https") and bool(parts.host)
        HTTPAdapter.proxy_headers(None, proxy)  # the Proxy-Authorization requests and the probes send
    except (ValueError, UnicodeError, urllib3.exceptions.LocationParseError):
        readable = False
    if not readable:  # guard: proxy-setting-unshown
        scheme = urlsplit(url).scheme.lower()
        raise UsageError(f"the proxy for {scheme}:// URLs (${scheme}_proxy or $all_proxy) cannot be read as an http:// "
                         "or https:// URL: write it as http://HOST:PORT, with the characters / # ? @ : and any beyond "
                         "Latin-1 in its account percent-encoded (its value is not shown: it may hold a password)")
    return proxy


def make_session(credentials: Credentials | None, *, verify_ssl: bool = True, retries: int = 5,
                 backoff: float = 0.5, pool_size: int = 4) -> requests.Session:
    """A pooled session: basic auth (or ~/.netrc through requests), retries, our User-Agent.

    ``session.verify`` is the one TLS setting of the run: False (``--no-ssl``) or the CA bundle
    (:func:`ca_bundle`); the HEAD probes (:func:`_head_client`) read it from there too.
    """
    session = _Session()
    adapter = _Adapter(max_retries=make_retry(retries, backoff), pool_connections=4, pool_maxsize=max(pool_size, 4))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = f"amsrepomirror/{__version__}"
    if credentials:
        # UTF-8, as browsers and curl send it (RFC 7617): requests would encode str as Latin-1 and
        # fail with an error that quotes a character of the password.
        session.auth = tuple(s.encode("utf-8") for s in credentials.as_auth())
    session.verify = ca_bundle() if verify_ssl else False
    if not verify_ssl:
        warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    session.retry_template = make_retry(retries, backoff)  # budget for mid-body resumes
    session.pool_size = max(pool_size, 4)
    return session


def body_session(session: requests.Session, pool_size: int) -> requests.Session:
    """A session like ``session`` (auth, TLS, User-Agent, retry budget) for body downloads over up to
    ``pool_size`` connections, whose adapter does not retry 429/503 itself: they raise
    :class:`ServerBusy` instead, for the scheduler to lower the number of connections."""
    retry = session.retry_template
    body = _Session()
    adapter = _Adapter(max_retries=make_retry(retry.total, retry.backoff_factor,
                                                 tuple(s for s in RETRY_STATUSES if s not in BUSY_STATUSES)),
                          pool_connections=4, pool_maxsize=max(pool_size, 4))
    body.mount("http://", adapter)
    body.mount("https://", adapter)
    body.headers.update(session.headers)
    body.auth, body.verify, body.trust_env = session.auth, session.verify, session.trust_env
    body.retry_template = retry
    body.pool_size = max(pool_size, 4)
    return body


def _request(session: requests.Session, method: str, url: str, timeout, what: str = "", **kwargs) -> requests.Response:
    try:
        # verify given per request: requests would otherwise let REQUESTS_CA_BUNDLE override the
        # session's setting, even a --no-ssl False
        return session.request(method, url, timeout=timeout, allow_redirects=True, verify=session.verify, **kwargs)
    except requests.exceptions.RequestException as exc:
        failure = _certificate_failure(exc)
        if failure is not None:
            raise _not_authenticated(url, failure) from None
        raise FetchError(f"cannot fetch {what}{redact(url)}: {_protocol_hint(url, exc) or _cause(exc)}") from None


def _listing_session(session: requests.Session) -> requests.Session:
    """``session``'s account, TLS setting and headers with the listing's quick retry policy, each
    retry said on the terminal."""
    template = getattr(session, "retry_template", None)
    retries = min(template.total, LISTING_RETRIES) if template is not None else LISTING_RETRIES
    backoff = template.backoff_factor if template is not None else 0.5
    listing = _Session()
    adapter = _Adapter(max_retries=make_retry(retries, backoff, announce_after=0.0, backoff_max=LISTING_BACKOFF_MAX))
    listing.mount("http://", adapter)
    listing.mount("https://", adapter)
    listing.headers.update(session.headers)
    listing.auth, listing.verify = session.auth, session.verify
    return listing


def fetch_text(session: requests.Session, url: str, timeout: float, low_speed: Optional["LowSpeed"] = None) -> str:
    """GET the listing and decode it from its bytes (``decode_listing``); 401/403 is an AuthError,
    404 a UsageError (a wrong version or URL). Connection failures show within seconds
    (``_listing_session``): this is where a wrong host or port is noticed. ``low_speed``: the
    run's limit for bodies, which the listing's body is held to as well."""
    with _listing_session(session) as listing:
        resp = _request(listing, "GET", url, (min(LISTING_CONNECT_TIMEOUT, timeout), timeout), what="the listing ",
                        stream=True)
        with resp:
            return decode_listing(_listing_body(resp, url, low_speed or LowSpeed()), url)


def _listing_body(resp: requests.Response, url: str, low_speed: "LowSpeed") -> bytes:
    """The listing's bytes (decoded from any Content-Encoding), refused past
    :data:`LISTING_MAX_BYTES`, or when they arrive slower than ``low_speed`` on average: a listing
    that never ends, trickles, or a small compressed body that inflates to gigabytes, must not
    fill the memory or hold the run. 401/403 is an AuthError, 404 a UsageError."""
    if resp.status_code in (401, 403):
        raise AuthError(
            f"the server refused the SCM account for the listing {redact(url)} (HTTP {resp.status_code}): "
            "check SCM_USER/SCM_PASSWORD or ~/.netrc"
        )
    if resp.status_code in (404, 410):
        raise UsageError(f"there is no listing at {redact(url)} (HTTP {resp.status_code}): "
                         "check --version (e.g. AMS2026.1) and --listing-url")
    if resp.status_code != 200:
        hint = _protocol_hint(url, None) if resp.status_code == 400 else ""
        raise FetchError(f"cannot fetch the listing {redact(url)}: HTTP {resp.status_code}" + (f"; {hint}" if hint else ""))
    body, started = bytearray(), time.monotonic()
    try:
        while True:
            block = resp.raw.read1(STREAM_BLOCK, decode_content=True)  # what has arrived, not a whole block
            if not block:
                return bytes(body)
            body += block
            if len(body) > LISTING_MAX_BYTES:  # guard: listing-size-bound
                raise UsageError(f"the listing {redact(url)} is larger than {LISTING_MAX_BYTES // 2**20} MiB "
                                 "(once decoded): not a listing of this repository; check --listing-url")
            elapsed = time.monotonic() - started
            slow = len(body) < low_speed.limit * elapsed
            if low_speed.limit and elapsed >= low_speed.seconds and slow:  # guard: listing-low-speed
                raise FetchError(f"cannot fetch the listing {redact(url)}: slower than {low_speed.limit} bytes/s "
                                 f"for {elapsed:.0f} s ([http] low_speed_limit)")
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise FetchError(f"cannot fetch the listing {redact(url)}: {_cause(exc)}") from None


def _head_client(session: requests.Session, url: str) -> urllib3.PoolManager:
    """A bare urllib3 pool for HEAD probes, set up as requests would (proxy from the environment,
    CA bundle, TLS verification, the same Retry): requests costs over twice as much per request,
    which dominates a no-change run over thousands of files."""
    parts = urllib3.util.parse_url(url)
    key = (parts.scheme, parts.host, parts.port)
    clients = session.__dict__.setdefault("head_clients", {})
    if key not in clients:
        if session.verify is False:
            tls = {"cert_reqs": "CERT_NONE"}
        else:  # the CA bundle make_session chose, as a file or (like requests allows) a folder
            where = "ca_cert_dir" if os.path.isdir(session.verify) else "ca_certs"
            tls = {"cert_reqs": "CERT_REQUIRED", where: session.verify}
        adapter = session.get_adapter(url)
        proxy = proxy_for(url)
        common = dict(num_pools=4, maxsize=getattr(session, "pool_size", 4), retries=adapter.max_retries, **tls)
        if proxy:  # as requests reads it: an account in it is sent to the proxy only
            manager = urllib3.ProxyManager(proxy, proxy_headers=adapter.proxy_headers(proxy), **common)
        else:
            manager = urllib3.PoolManager(**common)
        clients[key] = _with_deadline(manager)
    return clients[key]


def _pooled_request(session: requests.Session, method: str, url: str, timeout: float, headers: dict,
                    stream: bool = False) -> urllib3.BaseHTTPResponse:
    """``method`` on the bare pool of :func:`_head_client` with the session's User-Agent and account; ``stream``:
    the body is left to read (raw, never decoded)."""
    headers = {"User-Agent": session.headers["User-Agent"], **headers}
    if session.auth:
        headers["Authorization"] = basic_auth_header(*session.auth)
    try:
        return _head_client(session, url).request(method, url, headers=headers, timeout=timeout, redirect=True,
                                                  preload_content=not stream, decode_content=False)
    except ValueError:  # urllib3 joins a redirect's Location before any check: one that is no URL ("http://[x")
        raise RedirectRefused(f"{redact(url)} redirects to a location that is not a URL; not followed") from None
    except urllib3.exceptions.HTTPError as exc:
        failure = _certificate_failure(exc)
        if failure is not None:
            raise _not_authenticated(url, failure) from None
        raise FetchError(f"cannot fetch {redact(url)}: {_cause(exc)}") from None


def _as_response(raw: urllib3.BaseHTTPResponse, url: str) -> requests.Response:
    """A bare pool's streaming answer as the requests.Response that the gate and :func:`stream_into` read."""
    resp = requests.Response()
    resp.status_code, resp.reason, resp.raw = raw.status, raw.reason, raw
    resp.headers = requests.structures.CaseInsensitiveDict(raw.headers)
    resp.url = urljoin(url, raw.geturl() or "")  # urllib3 gives the path asked, or a redirect's Location as sent
    return resp


def probe(session: requests.Session, url: str, timeout: float) -> RemoteInfo:
    """HEAD a file: size and validators, or the refusing status."""
    resp = _pooled_request(session, "HEAD", url, timeout, {"Accept-Encoding": "identity"}, stream=True)
    _release_head(resp)
    if resp.status in (403, 405):
        # Some servers and CDNs refuse HEAD but serve GET; a 401 is a challenge for any method.
        return _probe_with_get(session, url, timeout)
    if resp.status != 200:
        return RemoteInfo(status=resp.status)
    # an unreadable length: the GET's length decides
    return RemoteInfo.of_answer(parse_content_length(resp.headers.get("Content-Length")), resp.headers)


def _release_head(resp: urllib3.BaseHTTPResponse) -> None:
    """Give a HEAD's connection back to the pool, unread: unless the answer has a body after all (urllib3 follows
    a 303 with a GET, whose body a preloading read would hold in memory however long): then the connection is
    closed, its body never read, and never taken as the start of the next answer on it."""
    try:
        body = resp.read(1, decode_content=False)
    except (urllib3.exceptions.HTTPError, OSError):
        body = b"?"  # a body that cannot even be read: its connection is not used again either
    if body:  # guard: head-body-unread
        resp.close()
    else:
        resp.release_conn()


def _probe_with_get(session: requests.Session, url: str, timeout: float) -> RemoteInfo:
    """What HEAD would have said, from a GET of the first byte (the body is not read)."""
    resp = _request(session, "GET", url, timeout, headers={"Range": "bytes=0-0", "Accept-Encoding": "identity"},
                    stream=True)
    with resp:
        if resp.status_code == 206:
            size = (parse_content_range(resp.headers.get("Content-Range")) or (None, None, None))[2]
        elif resp.status_code == 200:
            size = parse_content_length(resp.headers.get("Content-Length"))
        else:
            return RemoteInfo(status=resp.status_code)
        return RemoteInfo.of_answer(size, resp.headers)


def probe_with_body(session: requests.Session, url: str, timeout: float, into: Path, first_bytes: int,
                    reserve: Callable[[int], None], low_speed: Optional["LowSpeed"] = None,
                    stop: Optional["StopSignal"] = None) -> tuple[RemoteInfo, str | None]:
    """What :func:`probe` says, from a GET of the ``first_bytes`` first bytes instead of a HEAD ([http]
    first_bytes); its body too, written to ``into`` (its sha256, else None): the whole file when it fits,
    else the file's first ``first_bytes`` bytes, which its download goes on from (:func:`start_part`).

    One request instead of a HEAD and a GET for each small file of a first run, and no byte of a larger
    one served twice. Every answer with a body passes :func:`accept_response`, with its own length and
    validators (which the run then plans with, as HEAD's): as the whole file when it is one, else as the
    first bytes asked for. ``reserve`` (the run's free-space account) is charged before a byte is written.
    The first bytes of a longer file that a resume could not be tied to (a 200, or no validator If-Range
    may carry) are read and dropped (the connection stays usable). An answer the gate refuses (another range, a Content-Encoding,
    a multipart body, a 206 without a validator, a wrong Content-Length), or that cannot be read this way
    (405, 416, 501, no complete length), is asked again as a HEAD: the run plans with HEAD's word, as it
    would have without ``first_bytes``. ``stop`` (the probes' StopSignal): Ctrl-C aborts a body that trickles.
    """
    headers = {"Range": f"bytes=0-{first_bytes - 1}", "Accept-Encoding": "identity"}
    # on the bare pool, as HEAD: requests' own work would double a tiny file's cost
    resp = _as_response(_pooled_request(session, "GET", url, timeout, headers, stream=True), url)
    with resp, (stop.watching(resp) if stop is not None else contextlib.nullcontext()):
        remote, asked, whole = _prefetch_answer(resp, first_bytes)
        if remote is None:
            return probe(session, url, timeout), None
        if asked is None:  # a refusal (401, 403, 404, 5xx after the retries): what HEAD would have met
            return remote, None
        try:
            body = accept_response(resp, url, remote, asked)  # guard: prefetch-gate
        except (UnusableRange, WrongBody):  # not the bytes asked, as they are: ask as HEAD would have, no body
            return probe(session, url, timeout), None
        if not whole and not _resumable_prefix(resp, remote):
            _drain_prefix(resp, first_bytes)
            return remote, None
        reserve(body.length)  # the whole file, or its first bytes: the start of its download (start_part)
        hasher = hashlib.sha256()
        with local_writes(str(into)):
            into.parent.mkdir(parents=True, exist_ok=True)
            with open(into, "wb") as out:
                cut = stream_into(resp, _writer(out, hasher), lambda n: None, low_speed or LowSpeed(), limit=body.length)
                size = out.tell()
    if cut is not None or size != body.length:  # guard: prefetch-complete
        into.unlink(missing_ok=True)  # its DownloadFile fetches it as any other
        return remote, None
    return remote, hasher.hexdigest()


def _prefetch_answer(resp: requests.Response, first_bytes: int) -> tuple[RemoteInfo | None, "Asked | None", bool]:
    """The answer to the first bytes as HEAD's (None: ask HEAD); what the gate judges its body as (None: a
    refusal, no body to judge): the whole file when it carries it (as a range, or the whole file), else the
    first bytes asked for; and whether it carries the whole file."""
    status = resp.status_code
    first = Asked(0, first_bytes, ranged=True, own=True)
    if status == 206:
        total = (parse_content_range(resp.headers.get("Content-Range")) or (None, None, None))[2]
        if total is None:
            return None, None, False
        whole = 0 < total <= first_bytes
        return RemoteInfo.of_answer(total, resp.headers), Asked(0, total, ranged=True, own=True) if whole else first, whole
    if status == 200:
        size = parse_content_length(resp.headers.get("Content-Length"))
        whole = size is not None and size <= first_bytes
        return RemoteInfo.of_answer(size, resp.headers), Asked() if whole else first, whole
    if status in (405, 416, 501):  # no range or no GET of this kind: HEAD answers
        return None, None, False
    return RemoteInfo(status=status), None, False  # 401/403 refuse any method (probe asks a 403 HEAD again as a GET)


def _resumable_prefix(resp: requests.Response, remote: RemoteInfo) -> bool:
    """Whether the first bytes of a longer file can start its download: a 206 of them, with a validator that
    ties the rest (asked with If-Range) to them (``if_range_validator``)."""
    return resp.status_code == 206 and if_range_validator(remote) is not None


def weak_date(last_modified: str | None, date: str | None) -> bool:
    """Whether a Last-Modified ties nothing: it is not at least a second before the Date of the answer that
    carried it (RFC 9110, 13.1.5: a file rewritten within its Last-Modified second keeps the date, so ranges or
    a resume tied to it could join one version to another). A missing or unreadable Date counts as weak."""
    return last_modified is not None and not _date_before(last_modified, date)  # guard: strong-date


def _date_before(last_modified: str | None, date: str | None) -> bool:
    """Whether the HTTP date ``last_modified`` is at least a second before ``date`` (False when either is unreadable)."""
    try:
        modified, sent = email.utils.parsedate_to_datetime(last_modified), email.utils.parsedate_to_datetime(date)
        return (sent - modified).total_seconds() >= 1
    except (TypeError, ValueError, IndexError, OverflowError):
        return False


def start_part(part: Path, first: Path, remote: RemoteInfo) -> None:
    """Make ``first`` (the first bytes of the file ``remote`` describes, as a probe brought them) the start of
    ``part``, recorded as a download to resume (:func:`resume_point`): the rest is asked with If-Range."""
    with local_writes(str(part)):
        _part_meta_path(part).unlink(missing_ok=True)  # an earlier run's record never ties these bytes
        os.replace(first, part)
        _write_part_meta(part, remote.etag, remote.last_modified)  # after: a kill between leaves no record, no resume


def _drain_prefix(resp: requests.Response, first_bytes: int) -> None:
    """Read the rest of a 206 of the first bytes, no more than were asked for, so that its connection is
    reused; a 200 with the whole of a larger file is closed instead, by the caller's ``with``."""
    if resp.status_code == 206:
        read = 0
        with contextlib.suppress(requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError):
            while read <= first_bytes:
                block = resp.raw.read1(STREAM_BLOCK, decode_content=False)
                if not block:
                    return
                read += len(block)


def basic_auth_header(user: bytes, password: bytes) -> str:
    return "Basic " + base64.b64encode(user + b":" + password).decode("ascii")


def _part_meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


PART_SCHEMA = "amsrepomirror/part/2"  # /2: written only for a file whose validator ties a resume (weak_date)


def _write_part_meta(part: Path, etag: str | None, last_modified: str | None) -> None:
    """The record that ties a part's bytes to the file that served them, for a resume with If-Range."""
    _part_meta_path(part).write_text(json.dumps({"schema": PART_SCHEMA, "etag": etag, "last_modified": last_modified}))


def if_range_validator(remote: RemoteInfo) -> str | None:
    """What ``If-Range`` may carry: a strong ETag, else a Last-Modified date at least a second before the
    answer that told it (``weak_date``), else nothing: no ranges, no resume, the file is one GET.

    A weak ETag must not be used: RFC 9110 forbids it in If-Range, and a server that compared it
    weakly would splice a changed file.
    """
    if remote.etag and not remote.etag.startswith("W/"):
        return remote.etag
    if remote.weak_date:  # guard: if-range-weak-date
        return None
    return remote.last_modified or None


def same_file(remote: RemoteInfo, etag: str | None, last_modified: str | None) -> bool | None:
    """Whether a response's validators name the file ``remote`` describes: the ETag when both carry
    one, else Last-Modified; None when there is nothing to compare."""
    if etag is not None and remote.etag is not None:
        return etag == remote.etag
    if last_modified is not None and remote.last_modified is not None:
        return last_modified == remote.last_modified
    return None


def resume_point(part: Path, remote: RemoteInfo) -> int:
    """Bytes of ``part`` that belong to the file the server serves now (0 when unknown or stale)."""
    if if_range_validator(remote) is None:
        return 0
    try:
        meta = read_json(_part_meta_path(part), "download record")
        size = part.stat().st_size
    except (OSError, ValueError):
        return 0
    if not isinstance(meta, dict) or meta.get("schema") != PART_SCHEMA:  # guard: part-record-schema
        return 0  # no record of ours, or one from before the one-second rule (its bytes may be of two versions)
    same = meta.get("etag") == remote.etag and meta.get("last_modified") == remote.last_modified
    if not same or (remote.size is not None and size > remote.size):
        return 0
    return size


class Stopped(Exception):
    """The run is being interrupted: the transfer stopped, its part stays for the next run."""


class StopSignal(threading.Event):
    """An Event that also aborts the transfers in flight when set (Ctrl-C must not wait for a
    slow body): ``set()`` shuts down the socket of every response read under ``watching``."""

    def __init__(self) -> None:
        super().__init__()
        self._responses: set = set()
        self._guard = threading.Lock()

    def set(self) -> None:
        super().set()
        with self._guard:
            responses = list(self._responses)
        for resp in responses:
            _shutdown(resp)

    def raise_if_set(self) -> None:
        if self.is_set():
            raise Stopped()

    @contextlib.contextmanager
    def watching(self, resp: requests.Response):
        with self._guard:
            self._responses.add(resp)
        try:
            if self.is_set():
                raise Stopped()
            yield
        finally:
            with self._guard:
                self._responses.discard(resp)


def _shutdown(resp: requests.Response) -> None:
    try:
        resp.raw.shutdown()  # unblocks a read in another thread (urllib3 >= 2.3)
    except (OSError, ValueError, RuntimeError):
        # ValueError, or RuntimeError (urllib3 2.5: "connection has already been released to the pool"): the body
        # is already read and its connection released: nothing to abort
        pass


class DropPart(FetchError):
    """A refusal after which the part's bytes cannot be trusted: the part and its records are dropped."""


class FileChanged(DropPart):
    """The server now serves other bytes than the HEAD answer this run planned with."""


class WrongBody(DropPart):
    """A whole-file answer that is not the file HEAD described (another length, an encoding, multipart)."""


class BodyTooLong(DropPart):
    """A body went on past the bytes its response announced (no Content-Length): some bytes of it
    may already be written, so nothing of it is kept."""


class UnusableRange(FetchError):
    """An answer to a range or resume that cannot be tied to the bytes asked for (another status,
    first or last byte, length, complete length or encoding; multipart; not the validator asked
    for): nothing of it is written, the range is asked again."""


def changed_message(url: str) -> str:
    return (f"{redact(url)} changed on the server during this run (its validators no longer match); "
            "not stored: run mirror again to fetch the new version")


class ServerBusy(FetchError):
    """429 or 503: the server asks for fewer requests (``retry_after``: its Retry-After in seconds, if any)."""

    def __init__(self, url: str, status: int, retry_after: float | None):
        super().__init__(f"cannot fetch {redact(url)}: HTTP {status} (the server is busy)")
        self.status, self.retry_after = status, retry_after


def _busy(resp: requests.Response, url: str) -> ServerBusy:
    return ServerBusy(url, resp.status_code, retry_after_seconds(resp.headers.get("Retry-After")))


def retry_after_seconds(value: str | None) -> float | None:
    """The one reading of ``Retry-After`` (every request path: listing, HEAD, bodies): seconds to
    wait, or None when absent, unreadable or longer than :data:`MAX_RETRY_AFTER` (then the
    run's own backoff applies: a server must not make a run sleep for hours)."""
    value = (value or "").strip(" \t")
    if re.fullmatch(r"[0-9]{1,20}", value, re.ASCII):
        seconds = float(value)
    else:
        try:
            seconds = max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time()) if value else None
        except (TypeError, ValueError, OverflowError):
            return None
    if seconds is None or seconds > MAX_RETRY_AFTER:  # guard: retry-after-bounded
        return None
    return seconds


@dataclass(frozen=True)
class LowSpeed:
    """Give up an attempt whose average rate stays below ``limit`` bytes/s for ``seconds``
    (curl's --speed-limit/--speed-time): a trickle that beats every read timeout must not hold a
    run forever. ``limit`` 0 turns it off."""

    limit: int = 0
    seconds: float = 30.0


class TooSlow(Exception):
    pass


def fetch_to_part(session: requests.Session, url: str, part: Path, remote: RemoteInfo, timeout: float,
                  on_bytes: Callable[[int], None] = lambda n: None, *, stop: StopSignal | None = None,
                  low_speed: LowSpeed = LowSpeed(), durable: bool = True, resume: bool = False) -> FetchResult:
    """Download ``url`` into ``part``, resuming at the byte; return size, sha256 and validators.

    ``remote`` is the HEAD answer this run planned with, and the one truth of what is expected:
    its size (or, when HEAD sent none, the first GET's) is the length the part must reach, and a
    response whose validators name another file raises :class:`FileChanged` with the part
    dropped, so bytes of two versions are never joined. Every answer passes
    :func:`accept_response` before a byte of it is written; the body is stored exactly as sent.
    ``durable=False``: the complete part is not fsynced here (the caller makes a group durable at once).
    ``resume``: ``part`` holds a start to go on from (:func:`start_part`) although the file is small.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    stop = stop or StopSignal()
    retry = getattr(session, "retry_template", None) or make_retry(5, 0.5)
    # resumable: a cut is resumed at the byte, tied by If-Range (a date that ties nothing: never)
    expected, transferred = remote.size, 0
    resumable = (resume or _resumable(remote)) and if_range_validator(remote) is not None  # guard: resume-tied-only
    while True:
        stop.raise_if_set()
        asked, hasher = _resume(part, remote, resumable)
        resp = _request(session, "GET", url, timeout, headers=asked.headers(remote), stream=True)
        try:
            with stop.watching(resp):
                try:
                    body = accept_response(resp, url, remote, asked)
                except UnusableRange as exc:  # a resume not tied to the bytes we hold: start again from byte 0
                    _discard(part)
                    retry = charge_retry_budget(retry, url, exc)
                    continue
                validators = _validators(resp, remote)
                if body.at == 0:
                    hasher = hashlib.sha256()
                if body.length is not None:
                    expected = body.at + body.length
                cut, size = _write_body(resp, part, body, hasher, validators if resumable else None,
                                        on_bytes, low_speed, durable)
                transferred += size - body.at
        except DropPart:
            _discard(part)
            raise
        finally:
            resp.close()
        stop.raise_if_set()
        if cut is not None:
            retry = charge_retry_budget(retry, url, cut)
            continue
        _check_complete(part, url, size, expected, resumable)
        return FetchResult(size, hasher.hexdigest(), *validators, transferred)


def _resumable(remote: RemoteInfo) -> bool:
    """Whether a cut download of the file resumes at the byte: a small file is fetched again whole
    instead, with no sidecar of validators to write, read and remove for each of thousands of them."""
    return remote.size is None or remote.size >= RESUMABLE_FROM


def _validators(resp: requests.Response, remote: RemoteInfo) -> tuple[str | None, str | None]:
    """The ETag and Last-Modified of an accepted response, each HEAD's where it sent none."""
    return resp.headers.get("ETag") or remote.etag, resp.headers.get("Last-Modified") or remote.last_modified


def _resume(part: Path, remote: RemoteInfo, resumable: bool) -> tuple["Asked", "hashlib._Hash"]:
    """What to ask for next: the bytes after those of ``part`` that belong to ``remote`` (a range),
    else the whole file; and the hash of the bytes held."""
    offset = resume_point(part, remote) if resumable else 0
    hasher = hashlib.sha256()
    if offset:
        with open(part, "rb") as f:
            sha256_stream(f, hasher, limit=offset)
    return (Asked(offset, ranged=True) if offset else Asked()), hasher


def _write_body(resp: requests.Response, part: Path, body: "Body", hasher, validators: tuple | None,
                on_bytes: Callable[[int], None], low_speed: LowSpeed, durable: bool) -> tuple[Exception | None, int]:
    """Stream an accepted body into ``part`` from byte ``body.at`` (after recording ``validators``
    for a resume, unless None); return what cut it (None: it ended) and the part's size."""
    with local_writes(str(part)):
        if validators is None:  # no resume: a record an earlier run left must not tie these bytes to its validators
            _part_meta_path(part).unlink(missing_ok=True)
        with open(part, "r+b" if body.at else "wb") as out:
            out.seek(body.at)
            out.truncate()
            if validators is not None:  # once the part holds only bytes they tie (a kill before: no record, no resume)
                _write_part_meta(part, *validators)
            cut = stream_into(resp, _writer(out, hasher), on_bytes, low_speed, limit=body.length)
            size = out.tell()
            if cut is None and durable:
                out.flush()
                os.fsync(out.fileno())
    return cut, size


def _check_complete(part: Path, url: str, size: int, expected: int | None, resumable: bool) -> None:
    """A body that ended cleanly before its length (no Content-Length: it may have been cut) is not
    stored; a complete part loses its resume record."""
    if expected is not None and size != expected:
        _discard(part)
        raise FetchError(f"{redact(url)}: got {size} bytes, expected {expected}; not stored")
    if resumable:
        _part_meta_path(part).unlink()


@dataclass(frozen=True)
class Asked:
    """What a GET asks for: the whole file, or (``ranged``) bytes ``start`` to ``end`` (exclusive;
    None: to the end of the file) tied by ``If-Range`` to the file HEAD described. ``joined``: a
    whole-file 200 answer would be joined to bytes other responses wrote (a range of a segmented file).
    ``own``: the first bytes of a file nothing is known of yet, asked by ``probe_with_body`` (its own
    request, without If-Range; ``headers`` is not used for it): the answer's own validators are what describe
    it, its date even when that ties nothing more."""

    start: int = 0
    end: int | None = None
    ranged: bool = False
    joined: bool = False
    own: bool = False

    def headers(self, remote: RemoteInfo) -> dict:
        headers = {"Accept-Encoding": "identity"}
        if self.ranged:
            validator = if_range_validator(remote)
            if validator is None:  # never a range without If-Range: its bytes would be tied to nothing
                raise FetchError("a byte range with nothing to tie it to the bytes held; not asked")
            headers["Range"] = f"bytes={self.start}-{'' if self.end is None else self.end - 1}"
            headers["If-Range"] = validator
        return headers


@dataclass(frozen=True)
class Body:
    """Where an accepted response's body goes: its first byte is byte ``at`` of the file, and it
    must be exactly ``length`` bytes long (None: not known before it ends)."""

    at: int
    length: int | None


def accept_response(resp: requests.Response, url: str, remote: RemoteInfo, asked: Asked) -> Body:
    """The one gate for what the mirror writes from the network (whole files, resumes and the ranges
    of ``segments``): whether ``resp`` may be written to a part as the bytes ``asked`` of the file
    ``remote`` (HEAD's answer) describes; where its body goes and how long it must be
    (:func:`stream_into` enforces that length: never a byte more).

    Refuses, by raising: 401/403 (:class:`Unauthorized`), 429/503 (:class:`ServerBusy`), other
    validators than HEAD's or a 416 inside the file (:class:`FileChanged`), any status but 200 to a
    whole-file request or 200/206 to a range, a Content-Encoding other than identity on a range
    or on a file of unknown length (bodies are stored raw, never decoded; a labelled whole file
    must have HEAD's length), a Transfer-Encoding other than chunked, a ``multipart/byteranges`` body, a 206 whose
    Content-Range is not exactly the first byte, last byte and complete length asked for or that
    lacks the validator sent in If-Range, a Content-Length other than the bytes asked, and a 200
    to a range that would be joined to other ranges without the validators that tie it to them.
    Refusals of an answer to a range are :class:`UnusableRange` (asked again); of a whole-file
    answer :class:`WrongBody` (the file fails).
    """
    _check_status(resp, url, remote, asked)
    etag, last_modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
    if same_file(remote, etag, last_modified) is False:  # guard: response-gate-validators-changed
        raise FileChanged(changed_message(url))
    _check_raw_single_body(resp, url, remote, asked)
    if resp.status_code == 206:
        body = _partial_body(resp, remote, asked, etag, last_modified)
    else:
        body = _whole_body(url, remote, asked, etag, last_modified)
    return _check_content_length(resp, url, remote, asked, body)


def _check_status(resp: requests.Response, url: str, remote: RemoteInfo, asked: Asked) -> None:
    """Refuse every status but 200 to a whole-file request and 200/206 to a range (401/403, 429/503 and
    a 416 each as what they mean)."""
    status = resp.status_code
    if status in (401, 403):
        raise Unauthorized(f"HTTP {status} for {redact(url)}")
    if status in BUSY_STATUSES:
        raise _busy(resp, url)
    if status == 416 and asked.ranged:
        if remote.size is not None and asked.start < remote.size:
            raise FileChanged(changed_message(url))  # the file got shorter
        raise UnusableRange(f"HTTP 416 for bytes from {asked.start}")
    if status not in ((200, 206) if asked.ranged else (200,)):  # guard: response-gate-status
        raise FetchError(f"cannot fetch {redact(url)}: HTTP {status}")


def _check_raw_single_body(resp: requests.Response, url: str, remote: RemoteInfo, asked: Asked) -> None:
    """Refuse a body that is not the file's bytes as they are: a Content-Encoding (except a labelled whole
    file of known length), a Transfer-Encoding other than chunked, a multipart body."""
    refused = UnusableRange if asked.ranged else WrongBody
    encoding = resp.headers.get("Content-Encoding", "").strip().lower()
    # A label on a whole file whose length HEAD gave is stored raw, length-checked: Apache labels .tgz
    # files gzip (AddEncoding) and sends their bytes as they are. A labelled range is never joined.
    labelled_file = not asked.ranged and remote.size is not None
    if encoding not in ("", "identity") and not labelled_file:  # guard: response-gate-encoding
        raise refused(f"{redact(url)}: the server sent the body with Content-Encoding {encoding!r}, although only "
                      "identity was asked for: it may not be the file's bytes; not stored")
    if resp.headers.get("Transfer-Encoding", "").strip().lower() not in ("", "chunked"):
        raise refused(f"{redact(url)}: Transfer-Encoding {resp.headers['Transfer-Encoding']!r}; not stored")
    media_type = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media_type.startswith("multipart/"):  # guard: response-gate-multipart
        raise refused(f"{redact(url)}: a {media_type} body where the bytes of one range were asked for; not stored")


def _partial_body(resp: requests.Response, remote: RemoteInfo, asked: Asked, etag: str | None,
                  last_modified: str | None) -> Body:
    """Where a 206's body goes, once its Content-Range is exactly the first byte, last byte and complete
    length asked for and it carries the validator sent in If-Range."""
    content_range = parse_content_range(resp.headers.get("Content-Range"))
    if content_range is None:
        raise UnusableRange(f"unusable 206 (Content-Range {resp.headers.get('Content-Range')!r})")
    first, last, total = content_range
    want_total = remote.size if remote.size is not None else total
    want_last = asked.end - 1 if asked.end is not None else (want_total - 1 if want_total is not None else last)
    unusable = f"unusable 206 (Content-Range {resp.headers.get('Content-Range')!r} for bytes {asked.start}-" \
               f"{'' if asked.end is None else asked.end - 1} of {want_total})"
    if first != asked.start:  # guard: response-gate-range-start
        raise UnusableRange(unusable)
    if last != want_last:  # guard: response-gate-range-end
        raise UnusableRange(unusable)
    if total != want_total:  # guard: response-gate-total
        raise UnusableRange(unusable)
    if not validator_returned(remote, etag, last_modified, own=asked.own):  # guard: response-gate-validators-asked
        sent = "ETag" if remote.etag and not remote.etag.startswith("W/") else "Last-Modified"
        raise UnusableRange(f"unusable 206 (not the {sent} asked for in If-Range)")
    return Body(first, last - first + 1)


def _whole_body(url: str, remote: RemoteInfo, asked: Asked, etag: str | None, last_modified: str | None) -> Body:
    """Where a 200's body goes (the whole file, from byte 0), unless it would be joined to the bytes of
    other ranges without the validators that tie it to them."""
    if asked.joined and not validator_returned(remote, etag, last_modified):  # guard: response-gate-validators-joined
        # A 200 to If-Range may be a newer file; without validators it cannot be tied to the bytes
        # the other ranges wrote, so it must not be joined to them.
        raise FileChanged(f"{redact(url)} answered a byte range with the whole file and no ETag or "
                          "Last-Modified to tie it to the rest; not stored (set [http] max_ranges_per_file "
                          "= 1 for this server)")
    return Body(0, remote.size)


def _check_content_length(resp: requests.Response, url: str, remote: RemoteInfo, asked: Asked, body: Body) -> Body:
    """``body`` with the length its Content-Length announces, refused unless that is the bytes asked."""
    announced = resp.headers.get("Content-Length")
    if announced is None:
        return body
    length = parse_content_length(announced)
    if length is None or (body.length is not None and length != body.length):  # guard: response-gate-length
        if resp.status_code == 206:
            raise UnusableRange(f"unusable 206 (Content-Length {announced!r} for a range of {body.length} bytes)")
        raise (UnusableRange if asked.ranged else WrongBody)(
            f"{redact(url)}: the server announces {announced} bytes on GET but {remote.size} on HEAD; not stored")
    return Body(body.at, length)


def validator_returned(remote: RemoteInfo, etag: str | None, last_modified: str | None, own: bool = False) -> bool:
    """Whether a response carries the validator ``If-Range`` sent (:func:`if_range_validator`)
    unchanged: the strong ETag, else the Last-Modified date. ``own`` (:class:`Asked`): no If-Range was
    sent and ``remote`` is this answer's own word: its date counts as the validator even when it ties nothing."""
    sent = if_range_validator(replace(remote, weak_date=False) if own else remote)
    if sent is None:
        return False
    return etag == sent if sent == remote.etag else last_modified == sent


def get_range(session: requests.Session, url: str, remote: RemoteInfo, start: int, end: int,
              timeout: float) -> tuple[requests.Response, Body]:
    """GET bytes [start, end) of the file ``remote`` describes, tied to it by ``If-Range``.

    Returns the streaming response and where its body goes (:func:`accept_response`): a 206 of
    exactly those bytes, or a 200 carrying the whole file (a server that does not honour Range).
    """
    asked = Asked(start, end, ranged=True, joined=True)
    resp = _request(session, "GET", url, timeout, headers=asked.headers(remote), stream=True)
    try:
        return resp, accept_response(resp, url, remote, asked)
    except BaseException:
        resp.close()
        raise


def _writer(out, hasher) -> Callable[[bytes], None]:
    def write(block: bytes) -> None:
        out.write(block)
        hasher.update(block)
    return write


def stream_into(resp: requests.Response, write: Callable[[bytes], None], on_bytes: Callable[[int], None],
                low_speed: LowSpeed, limit: int | None = None) -> Exception | None:
    """Hand the raw body (never decoded) to ``write``; return what cut it (network error, too slow).

    ``limit``: the body's length as :func:`accept_response` accepted it; a body that goes on past
    it raises :class:`BodyTooLong` before the extra bytes are written. ``read1`` returns what has
    arrived instead of waiting for a whole block, so a trickle is measured as it comes. Local write
    errors propagate (a full disk is not worth a retry).
    """
    window_start, window_bytes, received = time.monotonic(), 0, 0
    while True:
        try:
            block = resp.raw.read1(STREAM_BLOCK, decode_content=False)
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            return exc
        if not block:
            return None
        received += len(block)
        if limit is not None and received > limit:  # guard: response-gate-body-count
            raise BodyTooLong(f"{redact(resp.url or '')}: the body went on past the {limit} bytes its response "
                              "announced; not stored")
        write(block)
        on_bytes(len(block))
        if low_speed.limit:
            window_bytes += len(block)
            elapsed = time.monotonic() - window_start
            if elapsed >= low_speed.seconds:
                if window_bytes < low_speed.limit * elapsed:
                    return TooSlow(f"slower than {low_speed.limit} bytes/s for {low_speed.seconds:g} s")
                window_start, window_bytes = time.monotonic(), 0


def _discard(part: Path) -> None:
    for p in (part, _part_meta_path(part)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,20})-([0-9]{1,20})/([0-9]{1,20}|\*)", re.ASCII | re.IGNORECASE)


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """(first byte, last byte, complete length or None for ``*``) of a 206's Content-Range
    (RFC 9110 14.4), or None unless it is exactly one valid range: first <= last < length."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip(" \t"))
    if not match:
        return None
    first, last = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    if first > last or (total is not None and last >= total):
        return None
    return first, last, total


def parse_content_length(value: str | None) -> int | None:
    """A Content-Length's number, or None unless it is plain ASCII digits (one value, not a list)."""
    value = (value or "").strip(" \t")
    return int(value) if re.fullmatch(r"[0-9]{1,20}", value, re.ASCII) else None


def charge_retry_budget(retry: Retry, url: str, exc: BaseException) -> Retry:
    """Charge one failed attempt to the urllib3 retry budget, sleep its backoff, or give up."""
    try:
        retry = retry.increment(method="GET", url=url, error=_as_urllib3(exc))
    except MaxRetryError:
        raise FetchError(f"giving up on {redact(url)} after retries: {_cause(exc)}") from None
    retry.sleep()
    return retry


def _as_urllib3(exc: BaseException) -> Exception:
    # Retry.increment classifies by urllib3 exception type; a cut body is a read error.
    return urllib3.exceptions.ProtocolError(str(exc)[:200])

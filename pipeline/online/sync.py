"""The work of mirroring: snapshot the listing, fetch what is stale, verify, prune.

The Luigi tasks of ``amsrepomirror.tasks.mirror`` call these; each function is usable (and tested) without Luigi.
"""

import contextlib
import dataclasses
import email.utils
import os
import posixpath
import stat
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import requests

from amsrepomirror import __version__
from amsrepomirror.errors import AuthError, DiskSpaceError, IntegrityError, MirrorError, UsageError
from amsrepomirror.online.http import (
    FetchResult,
    LowSpeed,
    RemoteInfo,
    ServerNotAuthenticated,
    Stopped,
    StopSignal,
    body_session,
    fetch_text,
    fetch_to_part,
    probe,
    probe_with_body,
    start_part,
)
from amsrepomirror.online.listing import (
    ListedFile,
    excluded_platforms,
    listing_sha256,
    parse_listing,
    redact,
    select_platforms,
)
from amsrepomirror.online.manifest import FileEntry, Manifest
from amsrepomirror.online.segments import SegmentPolicy, Slowdown, Transfers, drop_ranges_record
from amsrepomirror.online.workspace import THIS_PROCESS, FileRecord, Workspace
from amsrepomirror.util.fsutil import atomic_write_json, free_bytes, local_writes, make_durable, require_free_space
from amsrepomirror.util.hashing import sha256_file
from amsrepomirror.util.jsonread import JsonDamaged, read_json
from amsrepomirror.util.progress import ByteProgress, CountProgress
from amsrepomirror.util.skipped_files import Lacking, excluded_by, unlicensed
from amsrepomirror.util.timestamps import utc_now
from amsrepomirror.util.units import counted, format_size

SNAPSHOT_SCHEMA = "amsrepomirror/listing-snapshot/2"  # /2: entries say weak_date (http.weak_date)
SELECTION_SCHEMA = "amsrepomirror/version-selection/1"


def take_snapshot(session: requests.Session, version: str, listing_url: str, platforms: Sequence[str],
                  rules: Mapping, *, strict_authentication: bool, jobs: int, timeout: float,
                  low_speed: LowSpeed | None = None, ws: Workspace | None = None, first_bytes: int = 0) -> dict:
    """Fetch and check the listing, then ask the server (HEAD) what each selected file is now.

    ``first_bytes`` (with the mirror ``ws``): its files without a record are asked with a GET of their first
    ``first_bytes`` bytes instead (``Prefetch``): a small one arrives with its answer, and is not asked again;
    of a larger one, its download goes on from the bytes that came.
    """
    text = fetch_text(session, listing_url, timeout, low_speed)
    listed = parse_listing(text, listing_url)
    index = f"{version}.yml"
    if index not in {f.path for f in listed}:
        raise UsageError(f"the listing {redact(listing_url)} does not name {index}: is it the listing of {version}?")
    selected = select_platforms(listed, platforms, rules)
    checking = CountProgress(len(selected), "checking")
    stop = StopSignal()  # Ctrl-C also aborts the bodies of the probes of the first bytes in flight
    ask = Prefetch(session, ws, version, first_bytes, timeout, low_speed, stop) if ws is not None and first_bytes > 0 \
        else None
    try:
        answers = run_concurrently(lambda f: _counted(checking, _probe_or_error(session, f, timeout, ask)), selected,
                                   jobs, stop)
    finally:
        checking.close()
    files, unauthorized, refused_with, failed = [], [], {}, []
    for item, answer in zip(selected, answers, strict=True):
        if isinstance(answer, MirrorError):
            failed.append({"path": item.path, "message": str(answer)})
        elif answer.status in (401, 403):
            unauthorized.append(item.path)
            refused_with[item.path] = answer.status
        elif answer.status != 200:
            failed.append({"path": item.path, "message": f"HTTP {answer.status} for {redact(item.url)}"})
        else:
            files.append({"path": item.path, "url": item.url, **answer.validators(), **(ask.held(item.path) if ask else {})})
    if unauthorized and not files and not failed:
        raise AuthError(f"the server refused the SCM account for all {counted(len(unauthorized), 'file')}: "
                        "wrong user or password?")
    if unauthorized and strict_authentication:
        raise AuthError(
            f"HTTP {refused_with[unauthorized[0]]} for {len(unauthorized)} file(s), e.g. {unauthorized[0]}; "
            "--strict-authentication makes this fatal (the account is not licensed for them)"
        )
    return {
        "schema": SNAPSHOT_SCHEMA,
        "version": version,
        "listing_url": redact(listing_url),
        "listing_sha256": listing_sha256(text),
        "created": utc_now(),
        "listed": [f.path for f in listed],
        "files": files,
        "unauthorized": unauthorized,
        "refused_with": refused_with,  # path -> HTTP status (401 or 403), for the summary
        "failed": failed,
        "excluded": excluded_platforms(listed, platforms, rules),  # path -> the platform --platform left out
    }


class Prefetch:
    """A first run's probes that bring small files along (``http.probe_with_body``), and the first bytes of
    larger ones, each written to a name of its own beside its part (:func:`prefetched_path`) and noted in
    the snapshot entry (``prefetched``: its sha256, its length and the process that wrote it), for its
    DownloadFile to install instead of fetching it again (:func:`prefetched_part`), or to go on from
    (:func:`prefetched_start`): no byte the probe brought is asked for again.

    Their bytes are written before VerifyTree's space check of all downloads, so they are charged to
    an account of their own first: the free space when the first one arrives, never more (DiskSpaceError,
    exit 5, before a byte beyond it is written). A file the mirror has a record of, or that the version's
    last run selected (a file refused with 401 has no record), is asked with a HEAD, as before: a rerun
    transfers no body of a file that has not changed, nor an error page for each file it may not have.
    """

    BLOCK = 4096  # a file takes whole blocks of the filesystem

    def __init__(self, session: requests.Session, ws: Workspace, version: str, first_bytes: int, timeout: float,
                 low_speed: LowSpeed | None, stop: StopSignal | None = None):
        self.session, self.ws, self.first_bytes, self.timeout, self.low_speed = session, ws, first_bytes, timeout, low_speed
        self.stop = stop
        self.known = last_selection(ws, version)
        self.free: int | None = None
        self.reserved = 0
        self.sha256: dict[str, tuple[str, int]] = {}  # path -> the sha256 and length of the bytes brought
        self.lock = threading.Lock()

    def ask(self, item: ListedFile):
        if self.known is None or item.path in self.known or self.ws.current_record(item.path) is not None:
            return probe(self.session, item.url, self.timeout)
        answer, sha256 = probe_with_body(self.session, item.url, self.timeout, prefetched_path(self.ws, item.path),
                                         self.first_bytes, self.reserve, self.low_speed, self.stop)
        if sha256 is not None:
            with self.lock:
                self.sha256[item.path] = (sha256, min(answer.size, self.first_bytes))
        return answer

    def reserve(self, size: int) -> None:
        """Charge ``size`` bytes (whole blocks) to the account; DiskSpaceError when they would not fit."""
        blocks = -(-max(size, 1) // self.BLOCK) * self.BLOCK
        with self.lock:
            if self.free is None:
                self.free = free_bytes(self.ws.mirror)
            if self.reserved + blocks > self.free:  # guard: prefetch-space
                raise DiskSpaceError(f"not enough disk space for the small files of the listing at {self.ws.mirror}: "
                                     f"need more than {format_size(self.reserved + blocks)}, "
                                     f"{format_size(self.free)} free")
            self.reserved += blocks

    def held(self, path: str) -> dict:
        """What a snapshot entry says of the file's prefetched copy (nothing when there is none)."""
        brought = self.sha256.get(path)
        return {"prefetched": {"sha256": brought[0], "bytes": brought[1], "by": THIS_PROCESS}} if brought else {}


def last_selection(ws: Workspace, version: str) -> set[str] | None:
    """The paths the version's last run selected (empty: none ran yet); None when its record cannot be read."""
    path = ws.selection_path(version)
    if not path.exists():
        return set()
    try:
        return set(read_json(path, "selection")["paths"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def prefetched_path(ws: Workspace, rel: str, by: str = THIS_PROCESS) -> Path:
    """Where process ``by`` keeps a file its probe brought: a name of its own, so that two processes taking
    the listing of one shared run never write each other's (only the snapshot that wins is used)."""
    part = ws.part_path(rel)
    return part.with_name(f"{part.name}.first-{by.replace('/', '_')}")


def prefetched_bytes(entry: dict) -> int:
    """How many of the file's first bytes the run's probe brought (its size: the whole file; 0: none)."""
    held = entry.get("prefetched")
    return held.get("bytes", entry.get("size") or 0) if held and entry.get("size") is not None else 0


def _checked_copy(ws: Workspace, entry: dict) -> Path | None:
    """What the run's probe brought of the file, when it still holds exactly the bytes the probe hashed (the
    snapshot's length and sha256); None when there is none or it differs."""
    held = entry.get("prefetched")
    if not held or entry.get("size") is None:
        return None
    path, length = prefetched_path(ws, entry["path"], held["by"]), prefetched_bytes(entry)
    try:
        if path.stat().st_size != length or sha256_file(path) != held["sha256"]:  # guard: prefetched-hash
            return None
    except OSError:
        return None
    return path


def prefetched_part(ws: Workspace, entry: dict) -> FetchResult | None:
    """The file the run's probe brought whole, moved to its part, when it still holds exactly the bytes the probe
    hashed; None: fetch it as any other (from the start the probe brought, :func:`prefetched_start`)."""
    path = _checked_copy(ws, entry) if prefetched_bytes(entry) == entry.get("size") else None
    if path is None:
        return None
    try:
        with local_writes(str(path)):
            os.replace(path, ws.part_path(entry["path"]))
    except OSError:
        return None
    return FetchResult(entry["size"], entry["prefetched"]["sha256"], entry.get("etag"), entry.get("last_modified"),
                       entry["size"])


def prefetched_start(ws: Workspace, entry: dict) -> int:
    """The first bytes of a larger file the run's probe brought, made the start of its part (``http.start_part``)
    when they are still exactly the bytes it hashed, so that its download asks only for the rest; how many (0:
    none, it is fetched from its first byte)."""
    held = prefetched_bytes(entry)
    if not held or held == entry.get("size"):
        return 0
    path = _checked_copy(ws, entry)
    if path is None:
        return 0
    part = ws.part_path(entry["path"])
    try:
        drop_ranges_record(part)  # ranges of an earlier run describe another part
        start_part(part, path, RemoteInfo.of_entry(entry))
    except OSError:
        return 0
    return held


def drop_prefetched(ws: Workspace, snapshot: dict) -> None:
    """Remove what this process's probes brought: its snapshot lost to another process's, which is used instead."""
    for entry in snapshot["files"]:
        if entry.get("prefetched"):
            prefetched_path(ws, entry["path"]).unlink(missing_ok=True)


def _probe_or_error(session, item: ListedFile, timeout: float, prefetch: Prefetch | None = None):
    try:
        return prefetch.ask(item) if prefetch else probe(session, item.url, timeout)
    except (ServerNotAuthenticated, DiskSpaceError):
        raise  # not one file's failure: nothing this server answers can be trusted, or nothing more fits
    except MirrorError as exc:
        return exc


def _counted(counter: CountProgress, answer):
    counter.update()
    return answer


def run_concurrently(fn: Callable, items: Sequence, jobs: int, stop: StopSignal | None = None) -> list:
    """``[fn(x) for x in items]`` on ``jobs`` threads; Ctrl-C or an error stops the rest at once.

    The threads take items one by one (not a future per item: 100,000 of them would cost ~100 MB).
    Items not yet taken are skipped and transfers in flight are aborted (``StopSignal``), so an
    interrupted run ends promptly (their partial downloads stay for the next run to resume).
    """
    stop = stop or StopSignal()
    results: list = [None] * len(items)
    queue, taking = iter(enumerate(items)), threading.Lock()

    def work(_thread: int) -> None:
        while not stop.is_set():
            with taking:
                taken = next(queue, None)
            if taken is None:
                return
            results[taken[0]] = fn(taken[1])

    threads = max(1, min(jobs, len(items)))
    pool = ThreadPoolExecutor(max_workers=threads)
    futures = [pool.submit(work, n) for n in range(threads)]
    try:
        for future in as_completed(futures):
            future.result()
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return results


@lru_cache(maxsize=8)
def load_snapshot(path: str) -> dict:
    """A run's snapshot (immutable once written), indexed by path; cached per process."""
    try:
        body = read_json(Path(path), "listing snapshot")
    except JsonDamaged as exc:
        raise MirrorError(f"cannot read the run's listing snapshot {path}: {exc}; start a new run") from None
    body["by_path"] = {f["path"]: f for f in body["files"]}
    return body


def is_current(ws: Workspace, remote: dict, run_id: str) -> bool:
    """The mirror holds exactly what the server serves now for this entry of run ``run_id``'s snapshot."""
    record = ws.current_record(remote["path"])
    return record is not None and record.matches_remote(remote, run_id)


def adopt_existing(ws: Workspace, entries: Iterable[dict]) -> list[str]:
    """``mirror --adopt``: take over files a folder already holds from ``wget -x`` or SCM's script, which kept no
    checksum. A file with no record of ours is taken as the server's when it is a plain file whose size is the
    server's length and whose modification time is the server's Last-Modified, as wget leaves them; it is
    hashed and recorded as adopted. Any other is fetched as usual. Returns the adopted paths."""
    adopted = []
    for entry in entries:
        served = _http_seconds(entry.get("last_modified"))
        if entry.get("size") is None or served is None or ws.current_record(entry["path"]) is not None:
            continue
        path = ws.file(entry["path"])
        try:
            before = os.lstat(path)
        except OSError:
            continue
        as_served = stat.S_ISREG(before.st_mode) and (before.st_size, int(before.st_mtime)) == (entry["size"], served)
        if not as_served:  # guard: adopt-size-and-date
            continue
        sha256 = sha256_file(path)
        after = os.lstat(path)
        if (after.st_ino, after.st_size, after.st_mtime_ns) != (before.st_ino, before.st_size, before.st_mtime_ns):
            continue  # changed while it was hashed: fetched instead
        ws.write_record(entry["path"], FileRecord(before.st_size, before.st_mtime_ns, sha256, entry["url"],
                                                  entry.get("etag"), entry.get("last_modified"), adopted=True))
        adopted.append(entry["path"])
    return adopted


def _http_seconds(value: str | None) -> int | None:
    """An HTTP date (Last-Modified) as whole seconds since the epoch; None when absent or unreadable."""
    try:
        return int(email.utils.parsedate_to_datetime(value).timestamp()) if value else None
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def fetched_and_pending(ws: Workspace, entries: Iterable[dict], run_id: str) -> tuple[list[dict], list[dict]]:
    """The entries run ``run_id`` has fetched already (by any of its processes, still as fetched), and those still
    to fetch (not current): a process joining a shared run late counts the first as done."""
    fetched, pending = [], []
    for entry in entries:
        record = ws.current_record(entry["path"])
        if record is not None and record.fetched_run == run_id:
            fetched.append(entry)
        elif record is None or not record.matches_remote(entry, run_id):
            pending.append(entry)
    return fetched, pending


def bytes_to_fetch(ws: Workspace, entries: Iterable[dict]) -> int:
    """Bytes still to transfer: full sizes minus what partial downloads already hold (a file the probe
    brought holds all of them)."""
    return sum(max((e.get("size") or 0) - _held_bytes(ws, e), 0) for e in entries)


def _held_bytes(ws: Workspace, entry: dict) -> int:
    held = entry.get("prefetched")
    if held and prefetched_path(ws, entry["path"], held["by"]).exists():
        return prefetched_bytes(entry)
    return ws.part_bytes(entry["path"])


def check_space(ws: Workspace, entries: list[dict]) -> int:
    needed = bytes_to_fetch(ws, entries)
    require_free_space(ws.mirror, needed, f"{len(entries)} file(s) to download")
    return needed


@dataclass
class DownloadOutcome:
    fetched: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def fetch_part(session: requests.Session, ws: Workspace, entry: dict, timeout: float, on_bytes: Callable[[int], None],
               *, stop: StopSignal | None = None, low_speed: LowSpeed = LowSpeed(), durable: bool = True,
               resume: bool = False) -> FetchResult:
    """Fetch one file into its ``.part`` as one stream (``resume``: on from the start the probe brought).

    Only a part that ``fetch_to_part`` accepted (the length and validators of this run's HEAD
    answer) is returned, for ``install_part`` to move into the mirror; anything else raises and
    leaves the mirror as it was.
    """
    part = ws.part_path(entry["path"])
    remote = RemoteInfo.of_entry(entry)
    with local_writes(str(part)):
        part.parent.mkdir(parents=True, exist_ok=True)
    drop_ranges_record(part)  # ranges of an earlier run describe a part this stream rewrites
    return fetch_to_part(session, entry["url"], part, remote, timeout, on_bytes, stop=stop, low_speed=low_speed,
                         durable=durable, resume=resume)


def install_part(ws: Workspace, entry: dict, result: FetchResult, run_id: str, *, durable: bool = True,
                 folders: set[str] | None = None) -> None:
    """Move an accepted ``.part`` into the mirror and write its record (the old record goes first).

    ``durable=False``: the part's bytes are durable already and the caller makes the new name and
    the record durable (``GroupInstall``); ``folders``: mirror folders known to exist in this run.
    """
    rel, part = entry["path"], ws.part_path(entry["path"])
    target = ws.file(rel)
    folder = posixpath.dirname(rel)
    with local_writes(str(target)):
        ws.clear_way(rel, folders)
        if folders is None or folder not in folders:
            target.parent.mkdir(parents=True, exist_ok=True)
            if folders is not None:
                folders.add(folder)
        ws.drop_record(rel)  # the old record must never describe the new file
        os.replace(part, target)
        st = os.stat(target)
        ws.write_record(rel, FileRecord(st.st_size, st.st_mtime_ns, result.sha256, entry["url"], result.etag,
                                        result.last_modified, run_id, result.bytes_transferred, THIS_PROCESS),
                    durable=durable)


class GroupInstall:
    """Installs files fetched whole a group at a time, with the crash guarantee of one at a time.

    A file counts as done once its record describes it, so a record may become durable only after
    its file's bytes have: the group's parts are made durable together (one syncfs where Linux has
    it, instead of an fsync per file and per record), then moved into the mirror with their records
    written, then names and records are made durable together. A crash at any point leaves files
    without records (fetched again by the next run), never a record over bytes that were not on disk.
    """

    FILES = 64  # files per group
    BYTES = 64 * 2**20  # bytes per group: dirty data waiting for the group's flush stays bounded

    def __init__(self, ws: Workspace, run_id: str, on_installed: Callable[[dict], None],
                 on_failed: Callable[[dict, MirrorError], None]):
        self.ws, self.run_id, self.on_installed, self.on_failed = ws, run_id, on_installed, on_failed
        self.pending: list = []
        self.pending_bytes = 0
        self.folders: set[str] = set()  # mirror folders made or checked in this run
        self.lock, self.flushing = threading.Lock(), threading.Lock()

    def add(self, entry: dict, result: FetchResult) -> None:
        with self.lock:
            self.pending.append((entry, result))
            self.pending_bytes += result.size
            full = len(self.pending) >= self.FILES or self.pending_bytes >= self.BYTES
        if full:
            self.flush()

    def flush(self) -> None:
        with self.flushing:
            with self.lock:
                group, self.pending, self.pending_bytes = self.pending, [], 0
            if not group:
                return
            ws = self.ws
            if not self._durable([entry for entry, _ in group], [ws.part_path(entry["path"]) for entry, _ in group]):
                return
            installed = []
            for entry, result in group:
                try:
                    install_part(ws, entry, result, self.run_id, durable=False, folders=self.folders)
                    installed.append(entry)
                except MirrorError as exc:
                    self.on_failed(entry, exc)
            if self._durable(installed, [ws.record_path(entry["path"]) for entry in installed],
                             {ws.file(entry["path"]).parent for entry in installed}):
                for entry in installed:
                    self.on_installed(entry)

    def _durable(self, entries: list[dict], files: list[Path], folders=()) -> bool:
        """``make_durable``; when that fails, each of ``entries`` fails with its reason."""
        try:
            with local_writes(f"{len(entries)} downloaded file(s)"):
                make_durable(files, folders)
            return True
        except MirrorError as exc:
            for entry in entries:
                self.on_failed(entry, exc)
            return False


class _Downloads:
    """What the connections of one ``download_many`` report to: bytes streamed (checked against
    Ctrl-C), files fetched whole (installed a group at a time), files fetched as ranges, failures."""

    def __init__(self, session: requests.Session, ws: Workspace, run_id: str, *, jobs: int, timeout: float,
                 progress: ByteProgress | None, low_speed: LowSpeed, started: Mapping[str, int]):
        self.ws, self.run_id, self.timeout, self.progress, self.low_speed = ws, run_id, timeout, progress, low_speed
        self.started = started  # path -> first bytes the listing's probe brought, the start of its part
        self.outcome = DownloadOutcome()
        self.stop = StopSignal()
        self.bodies = body_session(session, jobs)
        self.group = GroupInstall(ws, run_id, self.installed, self.failed)

    def on_bytes(self, n: int) -> None:
        if self.stop.is_set():
            raise Stopped()
        if self.progress:
            self.progress.update(n)

    def installed(self, entry: dict) -> None:
        self.outcome.fetched.append(entry["path"])
        if self.progress:
            self.progress.file_done()

    def failed(self, entry: dict, exc: MirrorError) -> None:
        if isinstance(exc, (DiskSpaceError, AuthError)):
            raise exc  # no other file can do better: stop the run
        self.outcome.failed[entry["path"]] = str(exc)

    def fetch_whole(self, entry: dict) -> None:
        held = prefetched_part(self.ws, entry)
        if held is not None:  # brought by the listing's probe: installed with the others, not fetched again
            self.group.add(entry, held)
            return
        started = self.started.get(entry["path"], 0)
        result = fetch_part(self.bodies, self.ws, entry, self.timeout, self.on_bytes, stop=self.stop,
                            low_speed=self.low_speed, durable=False, resume=bool(started))
        self.group.add(entry, self._with_probe(entry, result))

    def done(self, entry: dict, result: FetchResult) -> None:
        """A file fetched as ranges: its part is durable already (``segments``)."""
        install_part(self.ws, entry, self._with_probe(entry, result), self.run_id)
        self.installed(entry)

    def _with_probe(self, entry: dict, result: FetchResult) -> FetchResult:
        """``result`` with the bytes the listing's probe transferred of it counted too."""
        started = self.started.get(entry["path"], 0)
        return dataclasses.replace(result, bytes_transferred=result.bytes_transferred + started) if started else result


def download_many(session: requests.Session, ws: Workspace, entries: list[dict], run_id: str, *, jobs: int,
                  timeout: float, progress: ByteProgress | None, low_speed: LowSpeed = LowSpeed(),
                  segments: SegmentPolicy = SegmentPolicy()) -> DownloadOutcome:
    """Fetch entries over at most ``jobs`` concurrent connections (files and byte ranges together,
    largest file first, large files as several ranges: ``segments.Transfers``); one failure does
    not stop the others. 429/503 answers lower the number of connections for a while.

    A 401 here, after HEAD was allowed, is a failure like any other (the HEAD probe is where
    unlicensed files are sorted out).
    """
    # the first bytes of larger files the listing's probes brought start their parts: only the rest is asked for
    started = {e["path"]: n for e in entries if (n := prefetched_start(ws, e))}
    run = _Downloads(session, ws, run_id, jobs=jobs, timeout=timeout, progress=progress, low_speed=low_speed,
                     started=started)
    transfers = Transfers(run.bodies, entries, ws.part_path, jobs=jobs, policy=segments, timeout=timeout,
                          low_speed=low_speed, stop=run.stop, on_bytes=run.on_bytes, fetch_whole=run.fetch_whole,
                          on_done=run.done, on_failed=run.failed)
    try:
        run_concurrently(transfers.worker, range(jobs), jobs, run.stop)
    except BaseException:
        with contextlib.suppress(MirrorError):
            run.group.flush()  # files that arrived whole before the stop are kept
        raise
    finally:
        transfers.close_all()  # every connection has ended: no write can reach a closed part
    run.group.flush()
    _note_download_failures(ws, run_id, run.outcome, transfers.slowdown)
    return run.outcome


def _note_download_failures(ws: Workspace, run_id: str, outcome: DownloadOutcome, slowdown: Slowdown | None) -> None:
    """Record each failed file, and how 429/503 answers slowed the run, for the run summary (``summarize``)."""
    for path, message in sorted(outcome.failed.items()):
        ws.note_failure(run_id, "file", message, path)
    if slowdown is not None:
        ws.note_failure(run_id, "slowdown", slowdown.message())


def build_manifest(ws: Workspace, snapshot: dict, version: str, *, run_id: str, deep: bool = False) -> Manifest:
    """The manifest of the verified tree: every selected file, its hash and validators.

    A file whose size and mtime still match its record keeps the hash taken while it streamed
    in; ``deep`` re-reads every file instead. Every file that no longer matches is noted as a
    failure of the run (its record dropped, so the next run fetches it), then one IntegrityError
    counts them.
    """
    entries, bad = [], {}
    for remote in snapshot["files"]:
        rel = remote["path"]
        record = ws.current_record(rel)
        if record is None or not record.matches_remote(remote, run_id):
            bad[rel] = f"{rel} is missing or was modified in the mirror after download"
        elif deep and sha256_file(ws.file(rel)) != record.sha256:  # guard: mirror-record-hash
            ws.drop_record(rel)
            bad[rel] = f"{rel} does not match the sha256 recorded when it was downloaded"
        else:
            entries.append(FileEntry(rel, record.size, record.sha256, redact(record.url), record.etag,
                                     record.last_modified))
    for rel, message in bad.items():
        ws.note_failure(run_id, "file", message, rel)
    if bad:
        first = next(iter(bad.values()))
        raise IntegrityError(f"{len(bad)} file(s) in the mirror are missing or corrupt (first: {first}); "
                             "run mirror again to fetch them")
    index = f"{version}.yml"
    if index not in {e.path for e in entries}:
        why = "the server refused it (HTTP 401)" if index in snapshot["unauthorized"] else "it is not in the verified tree"
        raise IntegrityError(f"{index}, the index amspackages needs, is missing: {why}")
    return Manifest(version=version, files=entries, listing_url=snapshot["listing_url"], created=utc_now(),
                    tool_version=__version__, skipped_unauthorized=list(snapshot["unauthorized"]),
                    lacking=lacking_of(snapshot))


def lacking_of(snapshot: dict) -> list[Lacking]:
    """The listed files this run's tree does not hold on purpose: refused by the server (only when
    authentication is not strict, else the run failed) or left out by ``--platform``."""
    refused = [Lacking(p, unlicensed(snapshot.get("refused_with", {}).get(p, 401))) for p in snapshot["unauthorized"]]
    excluded = [Lacking(p, excluded_by(platform)) for p, platform in snapshot.get("excluded", {}).items()]
    return sorted(refused + excluded, key=lambda e: e.path)


def drop_stale_parts(ws: Workspace, snapshot: dict) -> None:
    """Once every selected file is current, partial downloads of this version's files are stale; so are all
    partial downloads when the mirror holds no other version (whose next run may still resume its own)."""
    if ws.held_versions() in ([], [snapshot["version"]]):
        ws.drop_parts()
        return
    for entry in snapshot["files"]:
        part = ws.part_path(entry["path"])
        part.unlink(missing_ok=True)
        drop_ranges_record(part)
        if entry.get("prefetched"):
            prefetched_path(ws, entry["path"], entry["prefetched"]["by"]).unlink(missing_ok=True)


def selected_paths(snapshot: dict) -> list[str]:
    """The paths a run keeps in the mirror: those it fetched or verified, and those refused or failed."""
    return sorted([f["path"] for f in snapshot["files"]] + snapshot["unauthorized"] + [f["path"] for f in snapshot["failed"]])


def record_selection(ws: Workspace, snapshot: dict) -> None:
    """Record what this version's listing selects, so a run for another version knows not to delete it."""
    atomic_write_json(ws.selection_path(snapshot["version"]), {
        "schema": SELECTION_SCHEMA, "version": snapshot["version"], "listing_url": snapshot["listing_url"],
        "created": snapshot["created"], "paths": selected_paths(snapshot)})


def paths_of_held_versions(ws: Workspace) -> set[str]:
    """Every path that some version held by the mirror lists: its last recorded selection, else (a mirror
    made before selections were recorded) its last verified manifest. Unreadable state stops a prune."""
    keep: set[str] = set()
    for version in ws.held_versions():
        path = ws.selection_path(version)
        if not path.exists():
            manifest = Manifest.read(ws.manifest_path(version))
            keep.update(f.path for f in manifest.files)
            keep.update(manifest.skipped_unauthorized)
            continue
        try:
            body = read_json(path, "selection")
            if body.get("schema") != SELECTION_SCHEMA or not all(isinstance(p, str) for p in body["paths"]):
                raise ValueError(f"not a selection of schema {SELECTION_SCHEMA}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"cannot tell what {version} lists ({path}: {exc}); nothing deleted: "
                                 f"run mirror for {version} again") from None
        keep.update(body["paths"])
    return keep


def unlisted_files(ws: Workspace, keep: Iterable[str]) -> list[str]:
    """Mirror files that the listing (as selected) no longer names."""
    keep = set(keep)
    return sorted(p for p in ws.repository_files() if p not in keep)


def prune_unlisted(ws: Workspace, keep: Iterable[str], *, dry_run: bool, force: bool) -> list[str]:
    """Delete unlisted files; refuse to delete more than a quarter of the mirror without ``force``."""
    keep = set(keep)
    doomed = unlisted_files(ws, keep)
    present = len(doomed) + sum(1 for p in keep if ws.file(p).exists())
    if doomed and not dry_run and not force and len(doomed) * 4 > present:
        raise UsageError(
            f"--delete-unlisted would remove {len(doomed)} of {counted(present, 'file')} (more than a quarter): "
            "the listing may be truncated; check with --dry-run, then add --force"
        )
    if dry_run:
        return doomed
    for rel in doomed:
        ws.file(rel).unlink(missing_ok=True)  # another process of a shared run may have pruned it
        ws.drop_record(rel)
        folder = posixpath.dirname(rel)
        while folder:
            try:
                ws.file(folder).rmdir()
            except OSError:
                break
            folder = posixpath.dirname(folder)
    return doomed


def summarize(ws: Workspace, run_id: str, snapshot: dict | None, elapsed: float) -> dict:
    """Counts for the end-of-run summary and ``--report``, derived from the state on disk."""
    failures = ws.failures(run_id)
    failed = sorted({f["path"] for f in failures if f["kind"] == "file"} |
                    {f["path"] for f in (snapshot or {}).get("failed", [])})
    unauthorized = sorted((snapshot or {}).get("unauthorized", []))
    fetched, fetched_bytes, transferred, up_to_date = [], 0, 0, 0
    fetched_here, transferred_here = 0, 0  # by this process: a run shared through luigid has several
    for entry in (snapshot or {}).get("files", []):
        record = ws.read_record(entry["path"])
        if record and record.fetched_run == run_id:
            fetched.append(entry["path"])
            fetched_bytes += record.size
            transferred += record.bytes_transferred
            if record.fetched_by == THIS_PROCESS:
                fetched_here += 1
                transferred_here += record.bytes_transferred
        elif record and entry["path"] not in failed and record.matches_remote(entry, run_id) and ws.current_record(entry["path"]):
            up_to_date += 1
    return {
        "run_id": run_id,
        "listing_url": (snapshot or {}).get("listing_url", ""),
        "listed": len((snapshot or {}).get("listed", [])),
        "selected": len((snapshot or {}).get("files", [])) + len(unauthorized) + len((snapshot or {}).get("failed", [])),
        "fetched": len(fetched),
        "up_to_date": up_to_date,
        "skipped_unauthorized": unauthorized,
        "refused_with": {p: (snapshot or {}).get("refused_with", {}).get(p, 401) for p in unauthorized},
        "failed": failed,
        "bytes_fetched": fetched_bytes,
        "bytes_transferred": transferred,
        "fetched_by_this_process": fetched_here,
        "adopted": len((snapshot or {}).get("adopted", [])),
        "bytes_transferred_by_this_process": transferred_here,
        "seconds": round(elapsed, 3),
        "rate_bytes_per_second": round(transferred / elapsed) if elapsed > 0 else 0,
        "errors": [f["message"] for f in failures if f["kind"] not in ("file", "slowdown")],
        "slowed_down": [f["message"] for f in failures if f["kind"] == "slowdown"],
    }

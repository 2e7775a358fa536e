"""Downloads under one connection budget: large files as several byte ranges, written in place.

``jobs`` worker threads share one budget of connections (:class:`Transfers`). A free connection
goes, in this order, to a range waiting to be retried, the next piece of a started file that no
one is fetching, the rest of a file's first request (which asks for all of it) once the server
has answered a range with 206, and else the next file, largest first; a file of the threshold or
more runs at most ``max_ranges`` ranges at once. The rest is handed out in file order, a piece
(16 MiB) per request on the connections' kept-alive sockets, and once no file is left to start,
the largest range still running is halved (down to 1 MiB): no connection stays idle at the end,
and the prefix the hash follows grows at the rate of all connections together.

Each range is a ``Range`` + ``If-Range`` GET written with ``pwrite`` at its offset into the
file's ``.part``. Which bytes are on disk is kept in a small record next to the part
(``.part.ranges``: the validators and, per range, its start, end and bytes written), replaced
atomically after an ``fdatasync`` of the part, so a killed run resumes every range where it
stopped and never takes unwritten bytes as data. Every answer passes ``http.accept_response``
(status, Content-Range first and last byte and length, body length, identity encoding, no
multipart, the validator asked for) before a byte of it is written; a refused answer is asked
again, a changed file (or a body longer than announced) fails with its part dropped, never
spliced. A server that answers a range with 200 does not honour Range: the file goes on as one stream.

The SHA-256 follows the contiguous prefix: a block written at the hash frontier is hashed as it
streams; a follower thread per file reads back from the page cache what lies before a range once
every byte before it is on disk, and asks the kernel to start writing what is hashed to disk, so
that the fsync at the end has little left. Measured on 1 GiB at --jobs 8 under a 20 MiB/s
per-connection limit (nginx on loopback): with ranges made by halving, 550-790 MiB were still to
hash when the last range ended (0.45-1.2 s); handed out in order as pieces, 15-65 MiB (0.02-0.09 s).

429 and 503 reach this code (``http.body_session``): the budget is halved, the request waits its
``Retry-After``, and the budget grows back by one connection per calm interval.
"""

import hashlib
import io
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import requests

from amsrepomirror.errors import FetchError, MirrorError
from amsrepomirror.online.http import (
    Body,
    DropPart,
    FetchResult,
    LowSpeed,
    RemoteInfo,
    ServerBusy,
    Stopped,
    StopSignal,
    UnusableRange,
    charge_retry_budget,
    get_range,
    if_range_validator,
    resume_point,
    stream_into,
)
from amsrepomirror.online.listing import redact
from amsrepomirror.util.fsutil import atomic_write_json, local_writes, start_writeback
from amsrepomirror.util.hashing import FILE_BLOCK
from amsrepomirror.util.jsonread import read_json

#: The run's log (Luigi's, in the run folder): where a segmented file's end is timed (``Transfers._finish_if_complete``).
run_log = logging.getLogger("luigi-interface")

MiB = 1024 * 1024
RANGES_SCHEMA = "amsrepomirror/part-ranges/2"  # /2: a file whose date ties nothing is never fetched as ranges
CHECKPOINT_SECONDS = 2.0  # how often a running range records its progress
CALM_SECONDS = 10.0  # after a 429/503, this long (or its Retry-After, if longer) before the budget grows again
WRITEBACK_STEP = 8 * MiB  # hashed bytes after which the follower asks the kernel to start writing them to disk
GROW_SECONDS = 2.0  # then one more connection per this many seconds without a busy answer


@dataclass(frozen=True)
class SegmentPolicy:
    """When a file is fetched as ranges: ``threshold`` bytes or more, at most ``max_ranges`` ranges
    at once, handed out in file order as pieces of ``piece`` bytes, and at the end running ranges
    halved down to ``min_range`` bytes."""

    threshold: int = 16 * MiB
    max_ranges: int = 8
    piece: int = 16 * MiB
    min_range: int = 1 * MiB


def ranges_record_path(part: Path) -> Path:
    return part.with_name(part.name + ".ranges")


def drop_ranges_record(part: Path) -> None:
    ranges_record_path(part).unlink(missing_ok=True)


@dataclass
class Extent:
    """Bytes [start, end) of a file; [start, pos) are on disk. ``end`` shrinks when split."""

    start: int
    end: int
    pos: int
    busy: bool = False


class RangesStopped(Exception):
    """This file's ranges must stop (the file failed, or went back to one stream)."""


class RangeDone(Exception):
    """The range reached its end (which a split may have moved closer): close its connection."""


@dataclass
class ConnectionWork:
    """One connection's work: a range of a segmented file, or a whole file."""

    entry: dict
    file: Optional["SegmentedFile"] = None
    extent: Extent | None = None
    busy_answers: int = 0
    not_before: float = 0.0
    epoch: int = 0


class SegmentedFile:
    """A file fetched as ranges into its part: the extents, the part's descriptor, the hash frontier."""

    def __init__(self, entry: dict, part: Path, lock: threading.Condition):
        self.entry, self.part, self.lock = entry, part, lock  # lock: the scheduler's, which guards the extents
        self.remote = RemoteInfo.of_entry(entry)
        self.honours_ranges = False  # a 206 seen: ranges may be split off
        self.stopped: BaseException | None = None
        self.discarded = False
        self.finishing = False
        self.transferred = 0
        self.requests = 0  # range requests sent for it (the log's count)
        self.hasher, self.hashed = hashlib.sha256(), 0
        self.written_back = 0  # bytes from 0 the follower asked the kernel to start writing to disk
        self._hash_lock, self._record_lock = threading.Lock(), threading.Lock()
        self._recorded_at = 0.0
        self._hash_wanted, self._hash_stop = threading.Event(), threading.Event()
        self._follower: threading.Thread | None = None
        with local_writes(str(part)):
            part.parent.mkdir(parents=True, exist_ok=True)
            self.extents = self._resumable() or []
            if not self.extents:
                self.fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                self.extents = [Extent(0, entry["size"], 0)]
            else:
                self.fd = os.open(part, os.O_RDWR)
            self.record(force=True)
            part.with_name(part.name + ".json").unlink(missing_ok=True)  # a single stream's record, now taken over

    def _resumable(self) -> list[Extent]:
        """The extents a previous run left, when its record names this very file; else nothing."""
        try:
            body = read_json(ranges_record_path(self.part), "ranges record")
            on_disk = self.part.stat().st_size
        except (OSError, ValueError):
            on_disk = -1
            body = None
        if isinstance(body, dict) and body.get("schema") == RANGES_SCHEMA and \
                [body.get(k) for k in ("size", "etag", "last_modified")] == \
                [self.remote.size, self.remote.etag, self.remote.last_modified]:
            try:
                extents = [Extent(int(a), int(b), int(c)) for a, b, c in body["extents"]]
            except (KeyError, TypeError, ValueError):
                return []
            covered = 0
            for e in extents:
                if e.start != covered or not e.start <= e.pos <= e.end or e.pos > on_disk:
                    return []
                covered = e.end
            return extents if covered == self.remote.size else []
        held = resume_point(self.part, self.remote)  # a part one stream left: its first bytes are good
        return [Extent(0, self.remote.size, held)] if held else []

    # -- progress record ------------------------------------------------------------------------

    def record(self, force: bool = False) -> None:
        """Write which bytes are on disk (after they are made durable); at most every few seconds unless ``force``."""
        if not force and time.monotonic() - self._recorded_at < CHECKPOINT_SECONDS:
            return
        if not self._record_lock.acquire(blocking=force):
            return
        try:
            if self.fd < 0 or self.discarded:
                return
            with self.lock:
                extents = [[e.start, e.end, e.pos] for e in self.extents]  # read before the sync: all on disk
            with local_writes(str(self.part)):
                os.fdatasync(self.fd)
                atomic_write_json(ranges_record_path(self.part), {
                    "schema": RANGES_SCHEMA, "size": self.remote.size, "etag": self.remote.etag,
                    "last_modified": self.remote.last_modified, "extents": extents})
            self._recorded_at = time.monotonic()
        finally:
            self._record_lock.release()

    # -- hash frontier --------------------------------------------------------------------------

    def hash_written(self, offset: int, block: bytes, before_on_disk: bool) -> None:
        """Hash ``block``, just written at ``offset``, when it sits at the hash frontier; when the
        frontier is behind but every byte before the block is on disk (``before_on_disk``), wake the
        follower to read them back. Else (or while it reads) the block is read back later."""
        if self._hash_lock.acquire(blocking=False):
            try:
                if offset == self.hashed:
                    self.hasher.update(block)
                    self.hashed += len(block)
                    if self.hashed - self.written_back >= WRITEBACK_STEP:
                        self._hash_wanted.set()  # the follower starts its writing to disk
                    return
            finally:
                self._hash_lock.release()
        if before_on_disk:
            self._hash_wanted.set()

    def follow(self) -> None:
        """Start the thread that hashes the contiguous prefix read back from the part as it grows, so
        little is left to read when the last range ends (ranges run side by side: a network thread must
        not stall on it)."""
        self._follower = threading.Thread(target=self._follow, name=f"hash {self.part.name}", daemon=True)
        self._follower.start()

    def _follow(self) -> None:
        while not self._hash_stop.is_set():
            self._hash_wanted.wait(1.0)
            self._hash_wanted.clear()
            with self.lock:
                prefix = self.contiguous()
            try:
                self.hash_prefix(prefix)
            except (OSError, FetchError):
                return  # the finish reads again and reports it
            hashed = self.hashed
            start_writeback(self.fd, self.written_back, hashed - self.written_back)  # the fsync at the end has little left
            self.written_back = hashed

    def stop_following(self) -> None:
        self._hash_stop.set()
        self._hash_wanted.set()
        if self._follower is not None and self._follower is not threading.current_thread():
            self._follower.join()

    def hash_prefix(self, prefix: int) -> None:
        """Bring the hash up to ``prefix`` (bytes known to be on disk) by reading the part."""
        with self._hash_lock:
            if self.hashed >= prefix or self.fd < 0:
                return
            view = memoryview(bytearray(min(FILE_BLOCK, prefix - self.hashed)))
            with io.FileIO(self.fd, "rb", closefd=False) as f:
                f.seek(self.hashed)
                while self.hashed < prefix:
                    n = f.readinto(view[:min(len(view), prefix - self.hashed)])
                    if not n:
                        raise FetchError(f"{self.part}: shorter than the bytes recorded as written")
                    self.hasher.update(view[:n])
                    self.hashed += n

    def coalesce(self) -> None:
        """Join each extent that no range is running to the one before it when that one is all on disk
        and not running either (the caller holds the lock): the list, walked per block written, and the
        record stay short however many pieces a file had."""
        joined = [self.extents[0]]
        for e in self.extents[1:]:
            before = joined[-1]
            if not e.busy and not before.busy and before.pos == before.end:  # guard: coalesce-only-whole
                before.end, before.pos = e.end, e.pos
            else:
                joined.append(e)
        self.extents[:] = joined

    def contiguous(self) -> int:
        """Bytes from 0 that are all on disk."""
        done = 0
        for e in self.extents:
            if e.start != done:
                break
            done = e.pos
            if e.pos < e.end:
                break
        return done

    def close(self) -> None:
        """Close the part (only once no range of it is running: a write must never reach a reused descriptor)."""
        self.stop_following()
        with self._record_lock, self._hash_lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def discard(self) -> None:
        """The file changed on the server: its part and record go, and no record is written again."""
        with self._record_lock:
            self.discarded = True
            self.part.unlink(missing_ok=True)
            drop_ranges_record(self.part)


@dataclass
class Slowdown:
    """What the run's 429/503 answers did to the budget, for the summary."""

    jobs: int
    lowest: int
    statuses: Counter = field(default_factory=Counter)
    retry_after: float | None = None

    def message(self) -> str:
        said = ", ".join(f"{n}× HTTP {s}" for s, n in sorted(self.statuses.items()))
        wait = f", Retry-After up to {self.retry_after:g} s" if self.retry_after is not None else ""
        return (f"slowed down: the server answered {said}{wait}; connections lowered from {self.jobs} "
                f"to {self.lowest} for a while")


class Transfers:
    """The scheduler: ``jobs`` connections shared by whole files and ranges (see the module doc)."""

    def __init__(self, session: requests.Session, entries: list[dict], part_path: Callable[[str], Path], *,
                 jobs: int, policy: SegmentPolicy, timeout: float, low_speed: LowSpeed, stop: StopSignal,
                 on_bytes: Callable[[int], None], fetch_whole: Callable[[dict], None],
                 on_done: Callable[[dict, FetchResult], None], on_failed: Callable[[dict, MirrorError], None]):
        self.session, self.part_path, self.jobs, self.policy = session, part_path, jobs, policy
        self.timeout, self.low_speed, self.stop, self.on_bytes = timeout, low_speed, stop, on_bytes
        self.fetch_whole, self.on_done, self.on_failed = fetch_whole, on_done, on_failed
        self.pending = sorted(entries, key=lambda e: -(e.get("size") or 0))  # largest first
        self.pending.reverse()  # pop() takes the largest
        self.files: list[SegmentedFile] = []
        self.delayed: list[ConnectionWork] = []
        self.cond = threading.Condition()
        self.in_use, self.limit, self.epoch = 0, jobs, 0
        self.grow_at = 0.0
        self.last_full: float | None = None  # the last moment every connection of the budget was busy
        self.slowdown: Slowdown | None = None

    def close_all(self) -> None:
        """Close every part still open (a run stopped by Ctrl-C or a fatal error leaves some); only
        once no connection is running."""
        for f in self.files:
            f.close()

    # -- the budget -----------------------------------------------------------------------------

    def next_work(self) -> ConnectionWork | None:
        """Block until a connection of the budget is free and there is work for it; None when all is done."""
        with self.cond:
            while not self.stop.is_set():
                now = time.monotonic()
                if self.limit < self.jobs and now >= self.grow_at:
                    self.limit, self.grow_at = self.limit + 1, now + GROW_SECONDS
                if self.in_use < self.limit:
                    work = self._pick(now)
                    if work is not None:
                        self.in_use += 1
                        if self.in_use >= self.limit:
                            self.last_full = now
                        work.epoch = self.epoch
                        return work
                if not (self.pending or self.delayed or self.in_use or any(not f.finishing for f in self.files)):
                    return None
                self.cond.wait(0.2)
        return None

    def _pick(self, now: float) -> ConnectionWork | None:
        ready = [u for u in self.delayed if u.not_before <= now]
        if ready:
            self.delayed.remove(ready[0])
            return ready[0]
        for f in self.files:
            idle = next((e for e in f.extents if not e.busy and e.pos < e.end), None)
            if idle is not None and not f.stopped and sum(e.busy for e in f.extents) < self.policy.max_ranges:
                return ConnectionWork(f.entry, f, self._piece_of(f, idle))
        split = self._split(halve=not self.pending)
        if split is not None:
            return split
        while self.pending:
            entry = self.pending.pop()
            if not self._segmentable(entry):
                return ConnectionWork(entry)
            f = SegmentedFile(entry, self.part_path(entry["path"]), self.cond)  # a disk error here stops the run
            f.follow()
            self.files.append(f)
            extent = next((e for e in f.extents if e.pos < e.end), None)
            if extent is None:  # every byte was already on disk: only the check and the move remain
                return ConnectionWork(entry, f, None)
            extent.busy = True
            return ConnectionWork(entry, f, extent)
        return None

    def _segmentable(self, entry: dict) -> bool:
        remote = RemoteInfo.of_entry(entry)
        return remote.size is not None and remote.size >= self.policy.threshold and if_range_validator(remote) is not None

    def _piece_of(self, f: SegmentedFile, idle: Extent) -> Extent:
        """Reserve the first piece of an idle extent (the rest stays idle), so that ranges are handed
        out in file order and the prefix the hash follows grows at the rate of all connections; the
        whole extent while the server has not yet shown that it honours ranges."""
        cut = idle.pos + self.policy.piece
        if f.honours_ranges and idle.end - cut >= self.policy.min_range:
            f.extents.insert(f.extents.index(idle) + 1, Extent(cut, idle.end, cut))  # guard: piece-rest-unwritten
            idle.end = cut
        idle.busy = True
        return idle

    def _split(self, halve: bool) -> ConnectionWork | None:
        """Split the largest running range that is worth it: a range longer than two pieces (a file's
        first request asks for all of it) keeps one piece, and the rest is handed out in pieces, the first
        to the connection asking; once no file is left to start (``halve``), a range is halved: a cut costs its connection,
        which a file waiting to start does not need."""
        best = None
        for f in self.files:
            if not f.honours_ranges or f.stopped or f.finishing or sum(e.busy for e in f.extents) >= self.policy.max_ranges:
                continue
            for e in f.extents:
                left = e.end - e.pos
                if e.busy and left >= 2 * self.policy.min_range and (halve or left > 2 * self.policy.piece) and \
                        (best is None or left > best[1].end - best[1].pos):
                    best = (f, e)
        if best is None:
            return None
        f, e = best
        left = e.end - e.pos
        middle = e.pos + (self.policy.piece if left > 2 * self.policy.piece else left // 2)
        rest = Extent(middle, e.end, middle)  # guard: split-rest-unwritten
        e.end = middle
        f.extents.insert(f.extents.index(e) + 1, rest)
        return ConnectionWork(f.entry, f, self._piece_of(f, rest))

    def _release(self, work: ConnectionWork, requeued: bool) -> None:
        f = work.file
        with self.cond:
            self.in_use -= 1
            if work.extent is not None and not requeued:
                work.extent.busy = False
            if f is not None:
                f.coalesce()
            idle = f is not None and f.stopped is not None and not any(e.busy for e in f.extents)
            self.cond.notify_all()
        if idle:
            f.close()

    def _busy(self, work: ConnectionWork, exc: ServerBusy) -> bool:
        """Halve the budget (once per round of requests), and try this work again after the wait asked for."""
        retries = self.session.retry_template.total
        with self.cond:
            if work.epoch == self.epoch:
                self.limit = max(1, min(self.limit, self.in_use) // 2)
                self.epoch += 1
            wait = exc.retry_after if exc.retry_after is not None else \
                self.session.retry_template.backoff_factor * (2 ** work.busy_answers)
            self.grow_at = max(self.grow_at, time.monotonic() + max(CALM_SECONDS, wait))
            if self.slowdown is None:
                self.slowdown = Slowdown(self.jobs, self.limit)
            self.slowdown.lowest = min(self.slowdown.lowest, self.limit)
            self.slowdown.statuses[exc.status] += 1
            if exc.retry_after is not None:
                self.slowdown.retry_after = max(self.slowdown.retry_after or 0, exc.retry_after)
            work.busy_answers += 1
            if work.busy_answers <= retries:
                if work.extent is not None:
                    work.extent.busy = True  # held for this work while it waits
                work.not_before = time.monotonic() + wait
                self.delayed.append(work)
                return True
        self._fail(work, exc)
        return False

    # -- the work -------------------------------------------------------------------------------

    def worker(self, _index: int) -> None:
        """One connection: take work until there is none."""
        while True:
            work = self.next_work()
            if work is None:
                return
            requeued = False
            try:
                requeued = self._run(work)
            finally:
                self._release(work, requeued)

    def _run(self, work: ConnectionWork) -> bool:
        """Do one piece of work; True when it waits to be tried again (its range stays reserved)."""
        try:
            if work.file is None:
                self.fetch_whole(work.entry)
                return False
            if work.extent is not None:
                self._fetch_extent(work.file, work.extent)
                with self.cond:
                    work.extent.busy = False
            self._finish_if_complete(work.file)
        except ServerBusy as exc:
            if work.file is not None:
                work.file.record(force=True)
            return self._busy(work, exc)
        except (Stopped, RangesStopped):
            if work.file is not None and work.file.stopped is None:
                work.file.record(force=True)
        except MirrorError as exc:
            self._fail(work, exc)
        return False

    @staticmethod
    def _log_end(f: SegmentedFile, ranges: int, on_disk: float, last_full: float | None, left: int, hashed: float):
        """Time the end of a file fetched as ranges in the run's log: how long before its last range was on disk
        the connections stopped being all busy, then the hash read back and the fsync: what keeps a run from
        being busy to the end."""
        idle = f"{on_disk - last_full:.3f} s after all connections were last busy" if last_full is not None \
            else "and the connections never all busy"
        run_log.info(f"ranges ended: {f.entry['path']} ({f.remote.size} bytes, {ranges} range requests) on disk {idle}; "
                     f"{left} bytes hashed after in {hashed - on_disk:.3f} s, fsync {time.monotonic() - hashed:.3f} s")

    def _fail(self, work: ConnectionWork, exc: MirrorError) -> None:
        """The file failed: stop its other ranges; its part stays to resume, unless it changed on the server."""
        f = work.file
        if f is not None:
            with self.cond:
                if f.stopped is not None:
                    return
                finished = f.finishing
                f.stopped, f.finishing = exc, True
                for waiting in [u for u in self.delayed if u.file is f]:
                    self.delayed.remove(waiting)
                    waiting.extent.busy = False
            if isinstance(exc, DropPart):
                f.discard()
            elif not finished:
                f.record(force=True)
        self.on_failed(work.entry, exc)

    def _fetch_extent(self, f: SegmentedFile, e: Extent) -> None:
        """Fetch one range to its end, resuming after cuts (each range has its own retry budget)."""
        url = f.entry["url"]
        retry = self.session.retry_template
        while True:
            if self.stop.is_set():
                raise Stopped()
            with self.cond:
                if f.stopped is not None:
                    raise RangesStopped()
                if e.pos >= e.end:
                    return
                start, end = e.pos, e.end
                f.requests += 1
            try:
                resp, body = get_range(self.session, url, f.remote, start, end, self.timeout)
            except UnusableRange as exc:  # nothing of it written: ask again
                retry = charge_retry_budget(retry, url, exc)
                continue
            try:
                with self.stop.watching(resp):
                    if resp.status_code == 206:
                        if not f.honours_ranges:
                            with self.cond:
                                f.honours_ranges = True
                                self.cond.notify_all()  # idle connections may split it now
                    elif self._one_stream(f, e):
                        continue
                    cut = stream_into(resp, self._writer(f, e, body), self.on_bytes, self.low_speed, limit=body.length)
            except RangeDone:
                cut = None
            finally:
                resp.close()
            if f.stopped is not None:
                raise RangesStopped()
            if self.stop.is_set():
                raise Stopped()
            if e.pos >= e.end:
                f.record()
                return
            f.record(force=True)
            retry = charge_retry_budget(retry, url, cut or FetchError("the body ended before the range did"))

    def _one_stream(self, f: SegmentedFile, e: Extent) -> bool:
        """A 200 to a range (tied to HEAD's file by its validators, see ``get_range``): the server does
        not honour Range, so no more splits. A range that starts where a running range ends is handed
        back to it (True: nothing left to fetch here; if that one is a bounded 206 it ends at its old
        end and the rest is fetched again by a retry); else this stream reads from byte 0 and writes
        from the range's start."""
        with self.cond:
            f.honours_ranges = False
            index = f.extents.index(e)
            before = f.extents[index - 1] if index else None
            if before is not None and before.busy and before.end == e.start and e.pos == e.start:
                before.end = e.end
                f.extents.remove(e)
                e.pos = e.end = e.start
                return True
        return False

    def _writer(self, f: SegmentedFile, e: Extent, body: Body) -> Callable[[bytes], None]:
        at = body.at  # offset in the file of the next body byte
        body_end = body.at + body.length

        def write(block: bytes) -> None:
            nonlocal at
            with self.cond:
                if f.stopped is not None:
                    raise RangesStopped()
                skip = max(0, e.pos - at)  # a 200's bytes before the range
                keep = max(0, min(len(block) - skip, e.end - e.pos))
                offset = e.pos
            at += len(block)
            if keep:
                data = memoryview(block)[skip:skip + keep]
                with local_writes(str(f.part)):
                    os.pwrite(f.fd, data, offset)
                with self.cond:
                    before_on_disk = f.contiguous() >= offset
                f.hash_written(offset, data, before_on_disk)
                with self.cond:
                    e.pos += keep
                    f.transferred += keep
                f.record()
            if e.pos >= e.end and e.end < body_end:  # a split moved the range's end: the rest is another's
                raise RangeDone()
        return write

    def _finish_if_complete(self, f: SegmentedFile) -> None:
        """When every range of ``f`` is on disk: finish the hash, check the length, hand it over."""
        with self.cond:
            if f.finishing or f.stopped is not None or any(e.busy or e.pos < e.end for e in f.extents):
                return
            f.finishing = True
            prefix = f.contiguous()
            on_disk, last_full, ranges = time.monotonic(), self.last_full, f.requests
        try:
            with local_writes(str(f.part)):
                left = prefix - f.hashed  # not yet hashed when the last range was on disk (the follower may be at it)
                f.stop_following()
                start_writeback(f.fd, f.written_back, prefix - f.written_back)  # while the rest is hashed
                f.hash_prefix(prefix)
                hashed = time.monotonic()
                if f.hashed != f.remote.size or os.fstat(f.fd).st_size != f.remote.size:
                    raise FetchError(f"{redact(f.entry['url'])}: got {f.hashed} bytes, expected {f.remote.size}; not stored")
                os.fsync(f.fd)
        finally:
            f.close()
        self._log_end(f, ranges, on_disk, last_full, left, hashed)
        self.on_done(f.entry, FetchResult(f.remote.size, f.hasher.hexdigest(), f.remote.etag,
                                          f.remote.last_modified, f.transferred))
        drop_ranges_record(f.part)

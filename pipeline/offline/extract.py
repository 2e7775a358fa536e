"""Hardened extraction of bundle chunks into a staging directory.

A chunk is untrusted input until proven otherwise, even though its SHA-256 is listed in the
bundle's SHA256SUMS: the bundle may have been tampered with or built by a buggy tool. So:

* :func:`amsrepomirror.bundle.chunks.check_members` reads only the archive's header and refuses,
  before anything is written, every member that is not a plain, safely named regular file listed
  in the chunk: names :func:`amsrepomirror.util.paths.path_problem` refuses (absolute names,
  drive letters, backslashes, ``.``/``..``/empty segments, control characters, our reserved
  ``.amsrepomirror-`` names), symlinks, junctions, sockets, device files and fifos, duplicates,
  members not in ``chunk.members`` and expected members that are missing.
  Directory entries are allowed only when they are a parent directory of an expected member
  (7-Zip writes such entries when it archives a folder); any other directory entry is refused.
  (The 7z format has no hard-link member type; a member with Unix mode bits of anything but a
  regular file or directory is refused as a special file.)
* :func:`extract_chunk` decompresses through py7zr's writer factory, so py7zr itself creates
  nothing on disk: every byte goes through our writers, which accept only the expected members,
  never more bytes than expected (py7zr's ``max_extract_size`` is set to the expected total as
  well), and hash each member (SHA-256, in a second thread) as it is written. Whole files are
  written into a private, freshly created temporary directory inside ``dest_dir`` (opened with
  ``O_EXCL | O_NOFOLLOW``, so a pre-existing symlink can never redirect a write) and renamed into
  place only after every member of the chunk has the expected size and SHA-256. With ``files``,
  the parts of a split file are written straight to their offset in
  a partial file named by a hash of its name (see :func:`reassemble`). Every directory component on the way
  is checked with ``lstat`` and created by us; nothing ever follows a symlink in ``dest_dir``.
* :func:`reassemble` finishes split files: it checks the whole file's SHA-256 (one read) and
  renames it into place, or joins parts extracted as separate files; it is resumable.
* :func:`verify_tree` is the final gate: the tree equals the manifest, nothing more, nothing less.
* :func:`sync_tree` makes it all durable with one ``syncfs`` (instead of an fsync per file).

Every problem with the content is an :class:`IntegrityError` (exit code 4); running out of disk
space is a :class:`DiskSpaceError` (exit code 5).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import io
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

import py7zr
import py7zr.exceptions
from py7zr.io import Py7zIO, WriterFactory

from amsrepomirror.bundle.chunks import MAX_LISTED, Expected, WriteOnlySink, check_members, parent_dirs, unsafe_content
from amsrepomirror.bundle.format import BundleFile, Chunk, Part, part_layout_problem
from amsrepomirror.errors import DiskSpaceError, IntegrityError
from amsrepomirror.util.fsutil import remove_entry
from amsrepomirror.util.hashing import sha256_fd
from amsrepomirror.util.paths import RESERVED_PREFIX, path_problem, printable

#: Per-chunk temporary extraction directories live under ``dest_dir/EXTRACT_TMP``.
EXTRACT_TMP = RESERVED_PREFIX + "extract"
#: Suffix of the temporary file a split file is reassembled into.
PARTIAL_PREFIX = RESERVED_PREFIX + "partial-"


def partial_name(path: str) -> str:
    """Name of the file a split file is joined in, beside it: short (a hash of the name), so a
    name already as long as the filesystem allows never overflows."""
    return PARTIAL_PREFIX + hashlib.sha256(path.rpartition("/")[2].encode("utf-8", "surrogateescape")).hexdigest()[:20]

FILE_MODE = 0o644
DIR_MODE = 0o755
#: Read size when hashing or joining files we wrote (large blocks: fewer syscalls and GIL trips).
READ_BLOCK = 8 * 1024 * 1024
#: Written blocks (py7zr hands over ~1 MiB at a time) that may wait for the hashing thread.
HASH_QUEUE_DEPTH = 8

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: No effect on regular files; keeps an open() of a fifo planted in the tree from blocking.
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


# --------------------------------------------------------------------------------------------
# helpers


def _no_space(exc: OSError) -> bool:
    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)


def _os_error(exc: OSError, what: str) -> Exception:
    """Map an OSError to our exception types (ENOSPC -> DiskSpaceError)."""
    if _no_space(exc):
        return DiskSpaceError(f"not enough disk space while {what}: {exc}")
    return IntegrityError(f"{what} failed: {exc}")


def open_regular(path: Path, what: str = "") -> int:
    """Open a regular file for reading, never following a symlink; IntegrityError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IntegrityError(f"{what or path} is a symlink, expected a regular file") from exc
        raise IntegrityError(f"cannot open {what or path}: {exc}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IntegrityError(f"{what or path} is not a regular file")
    return fd


def _hash_regular(path: Path) -> tuple[int, str]:
    """(size, sha256) of a regular file, never following a symlink; IntegrityError otherwise."""
    fd = open_regular(path)
    try:
        return sha256_fd(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data, offset: int | None = None) -> None:
    """Write all of ``data`` (at ``offset`` with pwrite, else at the file position)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        if offset is not None:
            offset += n
        view = view[n:]


def safe_makedirs(root: Path, rel_dir: str) -> Path:
    """Create ``root/rel_dir`` component by component, refusing anything that is not a real dir.

    ``root`` itself must be a real directory (not a symlink). Returns the directory path.
    """
    root = Path(root)
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise IntegrityError(f"{root} is not a directory (symlink or file); refusing to write there")
    current = root
    for seg in [s for s in rel_dir.split("/") if s]:
        current = current / seg
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            try:
                os.mkdir(current, DIR_MODE)
            except OSError as exc:
                raise _os_error(exc, f"creating directory {current}") from exc
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise IntegrityError(
                f"{current} exists and is not a real directory (symlink or file); refusing to write through it"
            )
    return current


# --------------------------------------------------------------------------------------------
# writing members as py7zr decompresses them


class _HashThread:
    """Feeds written blocks to their SHA-256 in a second thread.

    hashlib releases the GIL on large buffers, so hashing runs alongside py7zr's read, CRC and
    write of the next block instead of after it. Blocks are handed over in order through one FIFO
    queue (a member is decompressed by one thread, so its blocks reach its hasher in order); at
    most ``HASH_QUEUE_DEPTH`` blocks wait, which bounds the memory this takes.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue(HASH_QUEUE_DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="amsrepomirror-sha256", daemon=True)
        self._thread.start()
        self._stopped = False

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    item[0].update(item[1])
                except BaseException as exc:  # keep draining so producers never block
                    self._error = exc

    def update(self, hasher, data: bytes) -> None:
        self._queue.put((hasher, data))

    def stop(self) -> None:
        """Wait until every block handed over is hashed (idempotent)."""
        if not self._stopped:
            self._stopped = True
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise IntegrityError(f"hashing extracted data failed: {self._error}")


class _MemberWriter(WriteOnlySink):
    """Receives one member from py7zr: writes it at ``offset`` of ``fd`` and hashes it."""

    def __init__(self, member: str, fd: int, offset: int, limit: int, hashes: _HashThread,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        self.member = member
        self.on_bytes = on_bytes
        self.fd = fd
        self.offset = offset
        self.limit = limit
        self.hashes = hashes
        self.hasher = hashlib.sha256()
        self.written = 0

    def write(self, s) -> int:
        n = len(s)
        if self.written + n > self.limit:
            raise IntegrityError(f"member {self.member!r} is longer than the {self.limit} bytes the bundle "
                                 f"manifest lists")
        # The hashing thread sees the block later: hand it an immutable copy, never a buffer
        # py7zr might reuse (py7zr passes bytes or a fresh bytearray; copying 1 MiB is cheap).
        data = s if isinstance(s, bytes) else bytes(s)
        _write_all(self.fd, data, self.offset + self.written)
        self.written += n
        self.hashes.update(self.hasher, data)
        if self.on_bytes is not None:
            self.on_bytes(n)
        return n


class _Writers(WriterFactory):
    """py7zr's writer factory for one chunk: a writer only for each expected member, once.

    Whole files go to ``tmp/<member>`` (private directory, created ``O_EXCL | O_NOFOLLOW``);
    members in ``in_place`` (parts of split files) go to their offset in the split file's
    partial file (:func:`partial_name`) in ``dest_dir``. py7zr may call ``create`` from several
    threads (one per 7z folder), hence the lock.
    """

    def __init__(self, tmp: Path, dest_dir: Path, exp: Expected, in_place: dict[str, tuple[BundleFile, Part]],
                 on_bytes: Callable[[int], None] | None = None):
        self.on_bytes = on_bytes
        self.tmp = PurePosixPath(tmp.as_posix())
        self.tmp_path = tmp
        self.dest_dir = dest_dir
        self.exp = exp
        self.in_place = in_place
        self.hashes = _HashThread()
        self.writers: dict[str, _MemberWriter] = {}
        self.fds: list[int] = []
        self.partials: dict[str, tuple[Path, int]] = {}  # split file path -> (partial path, fd)
        self.lock = threading.Lock()

    def create(self, filename: str) -> Py7zIO:
        try:
            rel = PurePosixPath(filename).relative_to(self.tmp).as_posix()
        except ValueError:
            raise IntegrityError(f"py7zr asked to write {filename!r}, outside the extraction folder") from None
        with self.lock:
            if rel not in self.exp:
                raise IntegrityError(f"member {rel!r}: not listed for this chunk in the bundle manifest")
            if rel in self.writers:
                raise IntegrityError(f"member {rel!r}: duplicate name")
            if rel in self.in_place:
                bf, part = self.in_place[rel]
                fd, offset = self._partial(bf), part.offset
            else:
                parent = safe_makedirs(self.tmp_path, rel.rpartition("/")[0])
                fd = os.open(parent / rel.rpartition("/")[2],
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _O_CLOEXEC, 0o600)
                self.fds.append(fd)
                offset = 0
            writer = _MemberWriter(rel, fd, offset, self.exp[rel][0], self.hashes, self.on_bytes)
            self.writers[rel] = writer
            return writer

    def _partial(self, bf: BundleFile) -> int:
        """fd of ``bf``'s partial file, sized to the whole file; created if missing."""
        if bf.path in self.partials:
            return self.partials[bf.path][1]
        parent = safe_makedirs(self.dest_dir, bf.path.rpartition("/")[0])
        path = parent / partial_name(bf.path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC, FILE_MODE)
        self.fds.append(fd)
        self.partials[bf.path] = (path, fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise IntegrityError(f"{path} is not a plain regular file (special file or hard link); refusing "
                                 f"to write {bf.path} into it")
        if st.st_size != bf.size:
            os.ftruncate(fd, bf.size)  # earlier chunks' parts stay; a stale tail is cut off
        os.fchmod(fd, FILE_MODE)
        return fd

    def finish(self) -> dict[str, tuple[int, str]]:
        """Wait for the hashes; {member: (bytes written, sha256)} of every member py7zr wrote."""
        self.hashes.stop()
        return {m: (w.written, w.hasher.hexdigest()) for m, w in self.writers.items()}

    def close(self) -> None:
        """Stop hashing and close every fd (idempotent; also after a failure)."""
        try:
            self.hashes.stop()
        except IntegrityError:
            pass
        fds, self.fds = self.fds, []
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


def _refuse_unsafe_names(bf: BundleFile) -> None:
    """IntegrityError when the path of split file ``bf`` or one of its part members is unsafe."""
    for name in [bf.path] + [p.member for p in bf.parts]:
        why = path_problem(name)
        if why:
            raise IntegrityError(f"bundle manifest: unsafe path {name!r} ({why})")


def _split_layout(files: Iterable[BundleFile]) -> dict[str, tuple[BundleFile, Part]]:
    """{part member: (split file, part)} for every split file, after checking its layout."""
    layout: dict[str, tuple[BundleFile, Part]] = {}
    for bf in split_files(files):
        _refuse_unsafe_names(bf)
        for p in _check_parts(bf):
            layout[p.member] = (bf, p)
    return layout


def _chunk_expectations(chunk: Chunk, expected: Expected, files: Iterable[BundleFile] | None
                        ) -> tuple[dict[str, tuple[int, str]], dict[str, tuple[BundleFile, Part]]]:
    """What the manifest says ``chunk`` holds, checked before the archive is opened: {member: (size,
    sha256)} and {part member written in place: (split file, part)} (empty without ``files``)."""
    missing = [m for m in chunk.members if m not in expected]
    if missing:
        raise IntegrityError(f"bundle manifest has no size/sha256 for member(s) {missing[:MAX_LISTED]} of chunk {chunk.name}")
    exp = {m: (int(expected[m][0]), str(expected[m][1]).lower()) for m in chunk.members}
    if path_problem(chunk.name) or "/" in chunk.name:
        raise IntegrityError(f"unsafe chunk name {chunk.name!r}")
    layout = _split_layout(files) if files is not None else {}
    in_place = {m: layout[m] for m in exp if m in layout}
    for m, (bf, part) in in_place.items():
        if exp[m] != (part.size, part.sha256.lower()):
            raise IntegrityError(f"bundle manifest: part {m!r} of {bf.path} has two different sizes/sha256")
    return exp, in_place


def _private_folder(dest_dir: Path, chunk: Chunk) -> tuple[Path, Path]:
    """(the folder of extraction folders in ``dest_dir``, this chunk's folder in it, not yet created):
    a leftover of a killed extraction of the same chunk is removed first."""
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error(exc, f"creating {dest_dir}") from exc
    tmp_root = safe_makedirs(dest_dir, EXTRACT_TMP)
    tmp = tmp_root / chunk.name
    remove_entry(tmp)
    return tmp_root, tmp


def _decompress(archive_path, chunk: Chunk, tmp: Path, writers: _Writers, limit: int) -> dict[str, tuple[int, str]]:
    """Decompress the chunk through ``writers`` (never more than ``limit`` bytes); {member: (bytes
    written, sha256)}. Whatever py7zr or our writers raise is an IntegrityError (DiskSpaceError for ENOSPC)."""
    try:
        # With a writer factory py7zr creates nothing itself (no files, directories, links,
        # modes or times): every byte goes through ``writers``. ``path`` is only the root
        # py7zr checks member names against -- our private, empty directory.
        with py7zr.SevenZipFile(archive_path, mode="r", max_extract_size=limit) as sz:
            sz.extractall(path=tmp, factory=writers)
        return writers.finish()
    except IntegrityError as exc:  # from our writers: unexpected member, too long, unsafe target
        raise IntegrityError(f"extracting chunk {chunk.name} ({archive_path}) refused: {exc}") from exc
    except OSError as exc:
        raise _os_error(exc, f"extracting chunk {chunk.name}") from exc
    except py7zr.exceptions.DecompressionBombError as exc:
        raise IntegrityError(f"chunk {chunk.name} expands beyond the expected {limit} bytes: {exc}") from exc
    except Exception as exc:  # py7zr raises assorted types on corrupt input
        raise IntegrityError(f"extracting chunk {chunk.name} ({archive_path}) failed: {exc}") from exc
    finally:
        writers.close()


def _stray_entries(tmp: Path, exp: dict[str, tuple[int, str]], in_place: dict) -> list[str]:
    """Anything in the private folder but the expected whole files (and their parent dirs). Only our
    writers created anything there; this walk is a cheap second look."""
    problems: list[str] = []
    for dirpath, dirnames, filenames in os.walk(tmp, followlinks=False):
        for entry in dirnames + filenames:
            full = Path(dirpath) / entry
            rel = full.relative_to(tmp).as_posix()
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                problems.append(f"{rel!r} extracted as a non-regular file")
            elif rel not in exp or rel in in_place:
                problems.append(f"{rel!r} appeared but is not expected")
    return problems


def _member_mismatches(exp: dict[str, tuple[int, str]], got: dict[str, tuple[int, str]]) -> list[str]:
    """Each expected member that was not written, or was written with another size or sha256."""
    problems: list[str] = []
    for m in sorted(exp):
        if m not in got:
            problems.append(f"member {m!r} was not extracted")
        elif got[m][0] != exp[m][0]:
            problems.append(f"member {m!r}: size {got[m][0]} != expected {exp[m][0]}")
        elif got[m][1] != exp[m][1]:  # guard: extract-member-hash
            problems.append(f"member {m!r}: sha256 {got[m][1]} != expected {exp[m][1]}")
    return problems


def _move_into_place(tmp: Path, dest_dir: Path, chunk: Chunk, members: Iterable[str]) -> None:
    """Rename the checked whole files from the private folder to their paths in ``dest_dir``; every
    directory on the way is checked/created without following links."""
    for m in sorted(members):
        parent = safe_makedirs(dest_dir, m.rpartition("/")[0])
        target = parent / m.rpartition("/")[2]
        try:
            st = os.lstat(target)
            if stat.S_ISDIR(st.st_mode):
                raise IntegrityError(f"{target} is a directory where chunk {chunk.name} has file {m!r}")
        except FileNotFoundError:
            pass
        src = tmp / m
        os.chmod(src, FILE_MODE)  # just verified a regular file in our private dir
        os.replace(src, target)  # rename never follows a symlink at target


def _discard(tmp_root: Path, tmp: Path, partials: Iterable[Path]) -> None:
    """Remove the chunk's private folder (and the folder of them when it is empty) and ``partials``."""
    for path in partials:
        try:
            os.unlink(path)
        except OSError:
            pass
    try:
        remove_entry(tmp)
        os.rmdir(tmp_root)
    except OSError:
        pass  # another chunk's temp dir still there, or already gone


# --------------------------------------------------------------------------------------------
# public API


def extract_chunk(archive_path, chunk: Chunk, dest_dir, expected: Expected,
                  files: Iterable[BundleFile] | None = None, on_bytes: Callable[[int], None] | None = None) -> list[str]:
    """Extract ``chunk`` into ``dest_dir`` after :func:`check_members`, verifying every member.

    ``expected`` maps each member name (at least all of ``chunk.members``) to (size, sha256).
    Each member is hashed as it is written (no re-read). Whole files are renamed into place
    (existing files of the same name are replaced) only when every member of the chunk matches.
    Without ``files``, parts of split files are extracted as files of their own (``<path>.part-N``)
    for :func:`reassemble` to join. With ``files`` (the bundle manifest's files), each part is
    written straight to its offset in ``<path>.amsrepomirror-partial`` and checked on its own
    (size and sha256); :func:`reassemble` then checks the whole file and renames it into place.

    On failure nothing of this chunk is left in ``dest_dir`` (a partial file it wrote parts into
    is removed, so :func:`reassemble` reports those parts missing). Re-extracting a chunk is
    idempotent. Nothing is fsynced: call :func:`sync_tree` before relying on the tree surviving
    a crash. Returns the list of members. ``on_bytes`` hears every block written (a progress bar).
    """
    exp, in_place = _chunk_expectations(chunk, expected, files)
    check_members(archive_path, chunk, exp)
    dest_dir = Path(os.path.abspath(dest_dir))
    tmp_root, tmp = _private_folder(dest_dir, chunk)
    writers: _Writers | None = None
    placed = False
    try:
        os.mkdir(tmp, 0o700)
        writers = _Writers(tmp, dest_dir, exp, in_place, on_bytes)
        got = _decompress(archive_path, chunk, tmp, writers, sum(size for size, _ in exp.values()))
        problems = _stray_entries(tmp, exp, in_place) + _member_mismatches(exp, got)
        if problems:
            raise unsafe_content(archive_path, chunk, problems)
        _move_into_place(tmp, dest_dir, chunk, set(exp) - set(in_place))
        placed = True
        return sorted(exp)
    finally:
        partials = [path for path, _ in writers.partials.values()] if writers is not None and not placed else []
        _discard(tmp_root, tmp, partials)


def split_files(files: Iterable[BundleFile]) -> list[BundleFile]:
    """The files stored as several parts (or under a member name other than their path)."""
    return [f for f in files if len(f.parts) != 1 or f.parts[0].member != f.path]


def space_needed(files: Iterable[BundleFile], in_place: bool = False) -> int:
    """Peak bytes an unpack writes into staging: the whole tree, plus the largest split file
    unless its parts are written in place (``extract_chunk(..., files=...)``): joined from
    separate part files, the parts and the joined file coexist until the parts are removed."""
    files = list(files)
    extra = 0 if in_place else max((f.size for f in split_files(files)), default=0)
    return sum(f.size for f in files) + extra


def _check_parts(bf: BundleFile) -> list:
    """``bf``'s parts by offset, after the one part-layout rule (``part_layout_problem``): contiguous,
    covering the file. Parts are written at their offsets, so the chunk order does not matter here
    (``verify_bundle``, which unpack runs first, checks it against the manifest's chunk list)."""
    why = part_layout_problem(bf)
    if why:
        raise IntegrityError(f"bundle manifest: {why}")
    return sorted(bf.parts, key=lambda p: p.offset)


def _matches_file(path: Path, bf: BundleFile) -> bool | None:
    """None when ``path`` is missing; else whether it is a plain regular file (not hard-linked)
    with the size and sha256 of ``bf`` (one read when the size is right)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size != bf.size:
        return False
    return _hash_regular(path) == (bf.size, bf.sha256.lower())


def _place(src: Path, final: Path, bf: BundleFile) -> None:
    try:
        if stat.S_ISDIR(os.lstat(final).st_mode):
            raise IntegrityError(f"{final} is a directory, expected file {bf.path}")
    except FileNotFoundError:
        pass
    os.replace(src, final)  # rename never follows a symlink at final


def _join_parts(dest_dir: Path, bf: BundleFile, parts: list[Part], partial: Path) -> None:
    """Join part files into ``partial`` (one read and one write of each byte), hashing the whole
    file on the way. The parts were verified when their chunk was extracted, so only when the
    whole file is wrong are they hashed again, to name the culprit."""
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise _os_error(exc, f"creating {partial}") from exc
    hasher = hashlib.sha256()
    view = memoryview(bytearray(READ_BLOCK))
    total = 0
    try:
        for p in parts:
            try:
                pfd = open_regular(dest_dir / p.member, f"part {p.member}")
            except IntegrityError as exc:
                if not os.path.lexists(dest_dir / p.member):
                    raise IntegrityError(
                        f"part {p.member} of {bf.path} is missing (re-extract chunk {p.chunk})") from None
                raise exc
            try:
                raw = io.FileIO(pfd, "rb", closefd=False)
                psize = 0
                while True:
                    n = raw.readinto(view)
                    if not n:
                        break
                    hasher.update(view[:n])
                    try:
                        _write_all(fd, view[:n])
                    except OSError as exc:
                        raise _os_error(exc, f"reassembling {bf.path}") from exc
                    psize += n
            finally:
                os.close(pfd)
            if psize != p.size:
                raise IntegrityError(f"part {p.member} of {bf.path} is {psize} bytes, the manifest says {p.size} "
                                     f"(re-extract chunk {p.chunk})")
            total += psize
    finally:
        os.close(fd)
    if total != bf.size or hasher.hexdigest() != bf.sha256.lower():
        for p in parts:
            if _hash_regular(dest_dir / p.member) != (p.size, p.sha256.lower()):
                raise IntegrityError(
                    f"part {p.member} of {bf.path} does not match the manifest (re-extract chunk {p.chunk})")
        raise IntegrityError(f"reassembled {bf.path} does not match the manifest (size {total}, "
                             f"sha256 {hasher.hexdigest()})")


def _rebuild_from_parts(dest_dir: Path, bf: BundleFile, parts: list[Part], partial: Path, final: Path,
                        in_place: bool | None) -> None:
    """Join ``bf``'s part files into ``partial`` and rename it to ``final``; IntegrityError when the
    parts are gone and ``partial`` (``in_place``: False when it exists but is wrong) cannot be used."""
    if in_place is False and not any(os.path.lexists(dest_dir / p.member) for p in parts):
        remove_entry(partial)
        raise IntegrityError(
            f"{bf.path}, written in place from its parts, does not match the manifest's size and "
            f"sha256 (a chunk of it was not extracted, or the bundle manifest is inconsistent; "
            f"chunks {', '.join(sorted({p.chunk for p in parts}))})")
    remove_entry(partial)
    try:
        _join_parts(dest_dir, bf, parts, partial)
        _place(partial, final, bf)
    except BaseException:
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise


def _remove_part_files(dest_dir: Path, bf: BundleFile, parts: list[Part]) -> None:
    """Remove the part files of ``bf`` that are still there (none when they were written in place)."""
    for p in parts:
        if p.member == bf.path:
            continue
        try:
            os.unlink(dest_dir / p.member)
        except OSError as exc:  # absent, or a name too long to exist (parts are joined in place)
            if exc.errno not in (errno.ENOENT, errno.ENAMETOOLONG):
                raise


def reassemble(dest_dir, files: list[BundleFile]) -> list[str]:
    """Finish split files: check the whole file's size and sha256, rename it into place, remove
    the parts. Returns the paths reassembled (or finished).

    A split file comes either from its partial file ``<path>.amsrepomirror-partial``, into which
    ``extract_chunk(..., files=...)`` wrote each part at its offset (then the whole file is hashed
    once and renamed into place: no copy), or from its parts extracted as separate files (then
    they are joined into the partial file, hashed on the way, and it is renamed into place).

    Resumable: if the final file is already complete and correct, leftover parts are just
    removed; a partial file with the right content is used as it is; otherwise the file is
    rebuilt from its parts. A kill of the process at any moment leaves either the parts, or the
    partial file, or the correct file. Nothing is fsynced (see :func:`sync_tree`).
    """
    dest_dir = Path(os.path.abspath(dest_dir))
    done = []
    for bf in split_files(files):
        _refuse_unsafe_names(bf)
        parts = _check_parts(bf)
        parent = safe_makedirs(dest_dir, bf.path.rpartition("/")[0])
        final = parent / bf.path.rpartition("/")[2]
        partial = final.with_name(partial_name(bf.path))
        if not _matches_file(final, bf):
            in_place = _matches_file(partial, bf)
            if in_place:
                _place(partial, final, bf)
            else:
                _rebuild_from_parts(dest_dir, bf, parts, partial, final, in_place)
        _remove_part_files(dest_dir, bf, parts)
        if os.path.lexists(partial):
            remove_entry(partial)  # a stale one, when the final file was already right
        done.append(bf.path)
    return done


def sync_tree(dest_dir) -> None:
    """Make everything written under ``dest_dir`` durable: file data, new names, renames.

    One ``syncfs(2)`` of the filesystem holding ``dest_dir`` (Linux) -- the writeback of the
    whole tree at once, instead of an fsync per file and directory while extracting; elsewhere
    (or where syncfs is missing) ``sync()``. A write-back error is a DiskSpaceError (ENOSPC,
    EDQUOT) or an IntegrityError: the tree must not be swapped in then.
    """
    fd = os.open(dest_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
    try:
        syncfs = None
        try:
            syncfs = ctypes.CDLL(None, use_errno=True).syncfs
        except (OSError, AttributeError):
            pass
        if syncfs is not None:
            if syncfs(fd) == 0:
                return
            err = ctypes.get_errno()
            if err not in (errno.ENOSYS, errno.EINVAL, errno.EBADF):
                raise _os_error(OSError(err, os.strerror(err)), f"syncing {dest_dir} to disk")
        os.sync()
    finally:
        os.close(fd)


def tree_problems(dest_dir, files: Iterable[BundleFile], check_hashes: bool = True) -> list[str]:
    """How the tree at ``dest_dir`` differs from ``files`` (one line each; empty when it holds
    exactly them: each with its size, and sha256 when ``check_hashes``, nothing else).

    Extra directories that are not a parent of any expected file count as extra entries;
    symlinks and special files are always wrong. Names found on disk are shown escaped.
    """
    dest_dir = Path(os.path.abspath(dest_dir))
    want = {f.path: f for f in files}
    dirs = {p for path in want for p in parent_dirs(path)}
    try:
        st = os.lstat(dest_dir)
    except FileNotFoundError:
        return [f"{dest_dir} does not exist"]
    if not stat.S_ISDIR(st.st_mode):
        return [f"{dest_dir} is not a directory"]
    problems: list[str] = []
    seen = set()
    for dirpath, dirnames, filenames in os.walk(dest_dir, followlinks=False):
        for entry in sorted(dirnames + filenames):
            full = Path(dirpath) / entry
            rel = full.relative_to(dest_dir).as_posix()
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                if rel not in dirs:
                    problems.append(f"extra directory {printable(rel)}")
            elif not stat.S_ISREG(st.st_mode):
                problems.append(f"not a regular file: {printable(rel)}")
            elif rel not in want:
                problems.append(f"extra file {printable(rel)}")
            else:
                seen.add(rel)
                f = want[rel]
                if st.st_size != f.size:
                    problems.append(f"wrong size {printable(rel)} ({st.st_size} != {f.size})")
                elif check_hashes and _hash_regular(full)[1] != f.sha256.lower():  # guard: tree-hash-check
                    problems.append(f"wrong sha256 {printable(rel)}")
    for rel in sorted(set(want) - seen):
        problems.append(f"missing {printable(rel)}")
    return problems


def verify_tree(dest_dir, files: Iterable[BundleFile], check_hashes: bool = True) -> None:
    """The tree at ``dest_dir`` must hold exactly ``files`` (see :func:`tree_problems`);
    IntegrityError lists the first few problems."""
    problems = tree_problems(dest_dir, files, check_hashes)
    if problems:
        shown_problems = "; ".join(problems[:MAX_LISTED])
        more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        raise IntegrityError(f"{len(problems)} problem(s) in {os.path.abspath(dest_dir)}: {shown_problems}{more}")

"""Reading a chunk without trusting it: its members checked before anything is written, and hashed
without writing anything (both sides: ``verify`` and ``unpack``).

:func:`check_members` reads only the archive's header and refuses every member that is not a plain,
safely named regular file listed in the chunk (see ``offline.extract`` for what unpack does next);
:func:`hash_members` decompresses every member into a hasher.
"""

import hashlib
import io
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import py7zr
import py7zr.exceptions
from py7zr.io import Py7zIO, WriterFactory

from amsrepomirror.bundle.format import Chunk
from amsrepomirror.errors import IntegrityError
from amsrepomirror.util.paths import path_problem

MAX_LISTED = 5


Expected = dict[str, tuple[int, str]]


def parent_dirs(name: str) -> Iterable[str]:
    """The folders above ``name`` (a/b/c: a, a/b), which an archive may list as directory entries."""
    segs = name.split("/")
    for i in range(1, len(segs)):
        yield "/".join(segs[:i])


def _member_type(f) -> tuple[str, str | None]:
    """('file'|'dir'|'bad', reason) for a py7zr ArchiveFile."""
    if f.is_symlink:
        return "bad", "symlink"
    if f.is_junction:
        return "bad", "junction / reparse point"
    if f.is_socket:
        return "bad", "socket"
    fmt = f.st_fmt
    if fmt is not None and fmt not in (stat.S_IFREG, stat.S_IFDIR):
        kinds = {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFIFO: "fifo",
                 stat.S_IFLNK: "symlink", stat.S_IFSOCK: "socket"}
        return "bad", kinds.get(fmt, f"special file (mode {fmt:o})")
    if f.is_directory or fmt == stat.S_IFDIR:
        if fmt is not None and fmt != stat.S_IFDIR:
            return "bad", "directory attribute on a non-directory"
        return "dir", None
    if not f.is_file:
        return "bad", "not a regular file"
    return "file", None


def unsafe_content(archive_path, chunk: Chunk, problems: list[str]) -> IntegrityError:
    """One error naming the chunk and its first few problems (the check of the header, or extraction)."""
    shown = "; ".join(problems[:MAX_LISTED])
    more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
    return IntegrityError(f"unsafe or unexpected content in chunk {chunk.name} ({archive_path}): {shown}{more}")


def check_members(archive_path, chunk: Chunk, expected: Expected | None = None) -> dict[str, int]:
    """Refuse unsafe or unexpected members of ``archive_path`` before anything is written.

    Returns ``{member: declared uncompressed size}`` for the file members. When ``expected`` is
    given, the declared sizes must also match it. Raises IntegrityError naming chunk and member.
    """
    entries = _read_entries(archive_path, chunk)
    wanted = set(chunk.members)
    problems = _unsafe_listed(wanted)
    files, seen, entry_problems = _check_entries(entries, wanted, expected)
    problems += entry_problems
    problems += _missing_members(wanted, files, seen)
    if problems:
        raise unsafe_content(archive_path, chunk, problems)
    return files


def _read_entries(archive_path, chunk: Chunk) -> list:
    """The archive's header entries (py7zr ArchiveFile); IntegrityError when it is encrypted or unreadable."""
    try:
        with py7zr.SevenZipFile(archive_path, mode="r") as sz:
            if sz.needs_password():
                raise IntegrityError(f"chunk {chunk.name} ({archive_path}) is encrypted; bundles never are")
            return list(sz.files)
    except IntegrityError:
        raise
    except (py7zr.exceptions.ArchiveError, py7zr.exceptions.PasswordRequired, EOFError, ValueError,
            KeyError, IndexError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"chunk {chunk.name} ({archive_path}) is not a readable 7z archive: {exc}") from exc
    except OSError as exc:
        raise IntegrityError(f"cannot read chunk {chunk.name} ({archive_path}): {exc}") from exc


def _unsafe_listed(wanted: set[str]) -> list[str]:
    """Members the manifest lists under names unpack would never write."""
    problems = []
    for m in sorted(wanted):
        why = path_problem(m)
        if why:
            problems.append(f"manifest lists unsafe member {m!r} ({why})")
    return problems


def _check_entries(entries: list, wanted: set[str], expected: Expected | None) -> tuple[dict[str, int], set[str], list[str]]:
    """Each entry in archive order: a safe name, not seen before, then what it is (``_entry_problem``).
    Returns the file members with their declared sizes, every name seen, and the problems."""
    allowed_dirs = {p for m in wanted for p in parent_dirs(m)}
    files: dict[str, int] = {}
    seen: set[str] = set()
    problems: list[str] = []
    for f in entries:
        name = f.filename
        why = path_problem(name)  # guard: extract-member-path
        if why:
            problems.append(f"member {name!r}: {why}")
            continue
        if name in seen:
            problems.append(f"member {name!r}: duplicate name")
            continue
        seen.add(name)
        why = _entry_problem(f, name, wanted, allowed_dirs, expected, files)
        if why:
            problems.append(f"member {name!r}: {why}")
    return files, seen, problems


def _entry_problem(f, name: str, wanted: set[str], allowed_dirs: set[str], expected: Expected | None,
                   files: dict[str, int]) -> str | None:
    """What is wrong with one (safely named) entry: only the chunk's listed regular files, of the
    expected declared size, and folders above them may be there. A listed file is added to ``files``."""
    kind, why = _member_type(f)
    if kind == "bad":  # guard: member-type-check
        return f"{why} (only regular files are allowed)"
    if kind == "dir":
        return None if name in allowed_dirs else "directory entry that is not a parent of any expected member"
    if name not in wanted:
        return "not listed for this chunk in the bundle manifest"
    files[name] = int(f.uncompressed or 0)
    if expected is not None and name in expected and files[name] != expected[name][0]:
        return f"declared size {files[name]} != expected {expected[name][0]}"
    return None


def _missing_members(wanted: set[str], files: dict[str, int], seen: set[str]) -> list[str]:
    """Listed members the archive does not hold at all (one held as something else is already refused)."""
    return [f"member {m!r}: listed in the bundle manifest but missing from the chunk"
            for m in sorted(wanted - set(files)) if m not in seen]


class WriteOnlySink(Py7zIO):
    """Base of the sinks py7zr writes a member into when we only take its bytes (hash or place
    them): nothing to read back, and never rewound; ``written`` counts what was taken."""

    written = 0

    def read(self, size: int | None = None) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        raise io.UnsupportedOperation(f"{type(self).__name__} is not seekable")

    def seekable(self) -> bool:  # tells py7zr's MemIO.close() not to rewind us
        return False

    def flush(self) -> None:
        pass

    def size(self) -> int:
        return self.written


class _HashingSink(WriteOnlySink):
    """Takes one member from py7zr and only hashes it: verify decompresses without writing."""

    def __init__(self, hashers: Sequence, on_bytes: Callable[[int], None] | None = None):
        self.hashers = hashers
        self.on_bytes = on_bytes
        self.written = 0

    def write(self, s) -> int:
        for hasher in self.hashers:
            hasher.update(s)
        self.written += len(s)
        if self.on_bytes is not None:
            self.on_bytes(len(s))
        return len(s)


class _HashingSinks(WriterFactory):
    """py7zr's writer factory for verify: one hashing sink per member; ``also`` adds a hasher to a member."""

    def __init__(self, also: Mapping[str, object], on_bytes: Callable[[int], None] | None = None):
        self.also, self.on_bytes = also, on_bytes
        self.sinks: dict[str, tuple[_HashingSink, hashlib._Hash]] = {}

    def create(self, filename: str) -> Py7zIO:
        if filename in self.sinks:
            raise IntegrityError(f"member {filename!r}: duplicate name")
        own = hashlib.sha256()
        sink = _HashingSink((own, self.also[filename]) if filename in self.also else (own,), self.on_bytes)
        self.sinks[filename] = (sink, own)
        return sink


def hash_members(path: Path, also: Mapping[str, object] | None = None,
                 on_bytes: Callable[[int], None] | None = None) -> tuple[dict[str, tuple[int, str]], str | None]:
    """Decompress every member of a 7z file (streaming; py7zr checks each member's CRC) and hash it.

    Returns ``({member: (size, sha256)}, None)``, or ``(..., a short description of the damage)``
    when the archive cannot be read through. ``also`` maps a member to one more hasher to feed
    (verify hashes split files whole across chunks). Names and types of members are not checked
    here: call ``bundle.chunks.check_members`` first, as unpack does.
    """
    sinks = _HashingSinks(also or {}, on_bytes)
    trouble = None
    try:
        with py7zr.SevenZipFile(path, "r") as archive:
            archive.extractall(factory=sinks)
    except Exception as exc:  # py7zr raises many types for damaged archives
        trouble = f"{type(exc).__name__}: {exc}"
    return {m: (sink.written, own.hexdigest()) for m, (sink, own) in sinks.sinks.items()}, trouble

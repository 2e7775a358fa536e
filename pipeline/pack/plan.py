"""Plan how mirror files are packed into bundle chunks (no I/O here).

``chunk_plan`` is deterministic *and local*: a change to a few files changes only the chunks that
hold them (and at most a neighbour each), so a full bundle made after a small change shares every
other chunk, byte for byte and by name, with the previous one.

* Files are taken in path order. Files that fit in an empty chunk form a stream cut into chunks
  at content-defined boundaries: after each file, ``_cut_after`` cuts when a hash of its name and
  sha256 falls under a threshold proportional to its size (chunks then hold about half a chunk's
  capacity on average); a file that would not fit forces a cut before it. After a change the
  plan falls back into step at the next content-defined cut.
* A file too big for one chunk is split at fixed offsets: every part but the last is
  ``part_size`` bytes (from the chunk size, compression and the file's own name only) and gets a
  chunk of its own; the last part starts the next chunk of the stream. So its parts are the same
  bytes, under the same names, month after month.
* A chunk is named by its content (``chunk_key``): compression and each member's name, file
  sha256, offset and size, known before it is written (the 7z file is written deterministically).

Each chunk is one standalone 7z archive whose finished size must stay at or below the chunk
size, so the plan budgets for the 7z overhead (see ``chunk_size_bound``).
"""

import bisect
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from amsrepomirror.bundle.format import (
    COMPRESSIONS,
    BundleFile,
    BundleManifest,
    Part,
    ReusedFile,
    chunk_name,
    part_member,
)
from amsrepomirror.errors import IntegrityError, UsageError
from amsrepomirror.online.manifest import FileEntry
from amsrepomirror.util.paths import path_problem, printable
from amsrepomirror.util.units import format_size

DEFAULT_CHUNK_SIZE = 3900 * 1024**2  # below FAT32's 4 GiB - 1 file size limit, with room to spare

# --- 7z size budget ------------------------------------------------------------------------------
# A chunk is written by py7zr as one solid folder with a plain (not LZMA-encoded) header:
#   32-byte signature header + packed data + header.
# The header holds a fixed part (streams info, coder info, property ids: well under 300 bytes;
# we allow 1 KiB) and, per member, its UTF-16LE name + NUL (2), mtime (8), attributes (4),
# unpack size (<= 9), CRC32 (4) and a share of some bit vectors (<= 1).
FIXED_OVERHEAD = 1024  # signature header + fixed header fields, generously rounded up
MEMBER_OVERHEAD = 2 + 8 + 4 + 9 + 4 + 1  # per member, on top of the UTF-16LE name

# Part names are budgeted as if a file had this many parts, so the part size does not depend on it.
MAX_PARTS = 10**9 - 1
# What a chunk's bytes depend on besides its members: the 7z writer's settings (fixed times and
# attributes, compression levels, plain header). Change it when they change, so names stay honest.
CHUNK_KEY_SCHEME = "amsrepomirror-chunk/1"


def member_overhead(member: str) -> int:
    """Header bytes one archive member costs (upper bound)."""
    return len(member.encode("utf-16-le")) + MEMBER_OVERHEAD


def expansion_bound(payload: int, compression: str) -> int:
    """Most bytes by which ``payload`` bytes may grow when packed (incompressible data)."""
    if compression == "copy":
        return 0
    if compression == "zstd":
        # ZSTD_COMPRESSBOUND: src + src/256 + (128 KiB - src)/2048 for small inputs; plus frame
        # header and checksum.
        return (payload >> 8) + 1024
    if compression == "lzma2":
        # LZMA2 stores incompressible data as raw chunks of <= 64 KiB with a 3-byte header
        # (measured 1/20000 on random data with py7zr/liblzma); we allow 1/4096 plus the end
        # marker and slack.
        return (payload >> 12) + 1024
    raise UsageError(f"unknown compression {compression!r}: use one of {', '.join(COMPRESSIONS)}")


def chunk_size_bound(payload: int, header_bytes: int, compression: str) -> int:
    """Upper bound of a chunk file's size with ``payload`` data bytes and members costing ``header_bytes``."""
    return FIXED_OVERHEAD + header_bytes + payload + expansion_bound(payload, compression)


def _room(chunk_size: int, payload: int, header_bytes: int, compression: str) -> int:
    """Most data bytes that can still be added to a chunk (may be negative: does not fit)."""
    avail = chunk_size - FIXED_OVERHEAD - header_bytes
    if avail < 0:
        return -1
    if compression == "copy":
        return avail - payload
    # largest total x with x + expansion_bound(x) <= avail, found from a close estimate
    shift = 8 if compression == "zstd" else 12
    x = max(0, ((avail - 1024) << shift) // ((1 << shift) + 1))
    while x + 1 + expansion_bound(x + 1, compression) <= avail:
        x += 1
    while x > 0 and x + expansion_bound(x, compression) > avail:
        x -= 1
    if x + expansion_bound(x, compression) > avail:
        return -1
    return x - payload


@dataclass(frozen=True)
class Piece:
    path: str    # the repository file this piece comes from
    member: str  # archive member name: ``path`` for a whole file, ``part_member(path, i)`` for a part
    offset: int  # first byte of the piece within the file
    size: int

    @property
    def is_part(self) -> bool:
        return self.member != self.path


@dataclass(frozen=True)
class ChunkSpec:
    name: str                # chunk file name: ``chunk_name(chunk_key(...))``, by content
    pieces: list[Piece]      # in archive order (path order)
    payload: int             # data bytes (sum of piece sizes)
    chunk_size: int = 0      # the limit the finished 7z file must respect
    compression: str = "copy"
    max_size: int = 0        # planned upper bound of the finished file size (<= chunk_size)

    @property
    def members(self) -> list[str]:
        return sorted(p.member for p in self.pieces)


def distinct_contents(files: Iterable[FileEntry]) -> tuple[list[FileEntry], list[ReusedFile]]:
    """The files to carry, one per distinct content (the first in path order), and the others as
    copies of it: identical bytes under several paths (a file of two versions under two names)
    are carried once and placed again by unpack."""
    carried, copies, first = [], [], {}
    for f in sorted(files, key=lambda f: f.path):
        source = first.setdefault((f.size, f.sha256), f.path)
        if source == f.path:
            carried.append(f)
        else:
            copies.append(ReusedFile(f.path, f.size, f.sha256, source))
    return carried, copies


def _check_path(path: str) -> None:
    why = path_problem(path)
    if why:
        raise UsageError(f"cannot bundle file with unsafe path {printable(path)} ({why})")


def part_size(path: str, chunk_size: int, compression: str) -> int:
    """Bytes in each part of split file ``path`` but the last: what a chunk of its own holds of it.

    Depends on the chunk size, the compression and the file's name only, never on its neighbours,
    so the split offsets stay where they are from one bundle to the next.
    """
    return _room(chunk_size, 0, member_overhead(part_member(path, MAX_PARTS)), compression)


def _cut_after(piece: Piece, file_sha256: str, target: int) -> bool:
    """Content-defined boundary after ``piece``: with probability (its bytes / ``target``), decided by
    a hash of its name, content and offset only, so the same file cuts the same way in every plan."""
    key = f"{piece.member}\0{file_sha256}\0{piece.offset}".encode("utf-8", "surrogatepass")
    draw = int.from_bytes(hashlib.sha256(key).digest()[:8], "big")
    return draw * target < (piece.size + member_overhead(piece.member)) << 64


def chunk_key(compression: str, pieces: Sequence[Piece], sha256_of: Mapping[str, str]) -> str:
    """sha256 (hex) of what a chunk holds: the bytes of its 7z file follow from it."""
    hasher = hashlib.sha256(f"{CHUNK_KEY_SCHEME}\n{compression}\n".encode())
    for p in pieces:
        hasher.update(f"{p.member}\0{sha256_of[p.path]}\0{p.offset}\0{p.size}\n".encode("utf-8", "surrogatepass"))
    return hasher.hexdigest()


def chunk_plan(files: Sequence[FileEntry], chunk_size: int, version: str, compression: str = "copy") -> list[ChunkSpec]:
    """Pack ``files`` into chunks of at most ``chunk_size`` bytes each; same input, same plan."""
    if compression not in COMPRESSIONS:
        raise UsageError(f"unknown compression {compression!r}: use one of {', '.join(COMPRESSIONS)}")
    if not version or "/" in version or "\\" in version or version.startswith("."):
        raise UsageError(f"bad version {version!r}")
    ordered = sorted(files, key=lambda f: f.path)
    paths = _checked_paths(ordered)
    empty_room = _check_room(ordered, chunk_size, compression)
    filler = _ChunkFiller(chunk_size, compression, target=max(1, empty_room // 2))  # about half of what fits
    split_paths = []
    for f in ordered:
        if _room(chunk_size, 0, member_overhead(f.path), compression) >= f.size:
            filler.stream(Piece(f.path, f.path, 0, f.size), f.sha256)
        else:
            split_paths.append(f.path)
            filler.split(f)
    filler.close()
    _check_collisions(paths, split_paths, filler.groups)
    return _chunk_specs(filler.groups, {f.path: f.sha256 for f in ordered}, chunk_size, compression)


def _checked_paths(ordered: Sequence[FileEntry]) -> set[str]:
    """The paths of ``ordered``, each checked by the one path rule, listed once, of a size >= 0."""
    paths = set()
    for f in ordered:
        _check_path(f.path)
        if f.path in paths:
            raise UsageError(f"file {f.path!r} is listed twice")
        if f.size < 0:
            raise UsageError(f"file {f.path!r} has a negative size")
        paths.add(f.path)
    return paths


def _check_room(ordered: Sequence[FileEntry], chunk_size: int, compression: str) -> int:
    """What an empty chunk holds; every file must fit in one with at least one byte (its whole self if empty)."""
    empty_room = _room(chunk_size, 0, 0, compression)
    if empty_room <= 0:
        raise UsageError(
            f"chunk size {chunk_size} bytes is too small to hold any data: the 7z overhead alone is "
            f"about {FIXED_OVERHEAD} bytes; use something like {format_size(DEFAULT_CHUNK_SIZE)}"
        )
    for f in ordered:
        longest = f.path if f.size == 0 else part_member(f.path, MAX_PARTS)
        if _room(chunk_size, 0, member_overhead(longest), compression) < min(1, f.size):
            raise UsageError(
                f"chunk size {chunk_size} bytes is too small to hold any data of {f.path!r} "
                f"(7z header for its name alone needs {FIXED_OVERHEAD + member_overhead(longest)} bytes)"
            )
    return empty_room


class _ChunkFiller:
    """The chunks of the plan as they are filled in path order (``groups``: each chunk's pieces)."""

    def __init__(self, chunk_size: int, compression: str, target: int):
        self.chunk_size, self.compression, self.target = chunk_size, compression, target
        self.groups: list[list[Piece]] = []
        self.current: list[Piece] = []
        self.payload = self.header = 0

    def close(self) -> None:
        """End the chunk being filled (if it holds anything)."""
        if self.current:
            self.groups.append(self.current)
        self.current = []
        self.payload = self.header = 0

    def stream(self, piece: Piece, file_sha256: str) -> None:
        """Add ``piece`` to the chunk being filled: after a forced cut if it does not fit; cut after it
        where its content says so."""
        if self.current and _room(self.chunk_size, self.payload, self.header + member_overhead(piece.member),
                                  self.compression) < piece.size:
            self.close()
        self.current.append(piece)
        self.payload += piece.size
        self.header += member_overhead(piece.member)
        if _cut_after(piece, file_sha256, self.target):
            self.close()

    def split(self, f: FileEntry) -> None:
        """A file too big for one chunk: a chunk of its own for each full part, the last part streamed."""
        self.close()
        size = part_size(f.path, self.chunk_size, self.compression)
        offset, index = 0, 1
        while f.size - offset > size:
            self.groups.append([Piece(f.path, part_member(f.path, index), offset, size)])
            offset, index = offset + size, index + 1
        self.stream(Piece(f.path, part_member(f.path, index), offset, f.size - offset), f.sha256)


def _chunk_specs(groups: list[list[Piece]], sha256_of: Mapping[str, str], chunk_size: int,
                 compression: str) -> list[ChunkSpec]:
    """Each group of pieces as a chunk, named by its content, with the bound of its finished size."""
    plan = []
    for pieces in groups:
        payload = sum(p.size for p in pieces)
        header = sum(member_overhead(p.member) for p in pieces)
        bound = chunk_size_bound(payload, header, compression)
        assert bound <= chunk_size, (bound, chunk_size)
        plan.append(ChunkSpec(
            name=chunk_name(chunk_key(compression, pieces, sha256_of)), pieces=pieces, payload=payload,
            chunk_size=chunk_size, compression=compression, max_size=bound,
        ))
    return plan


def _check_collisions(paths: set, split_paths: list[str], groups: list[list[Piece]]) -> None:
    """A part name must not be a real path, and no real path may match ``<split file>.part-*``
    (``cat path.part-* > path`` on unpack would pick it up)."""
    members = set()
    for pieces in groups:
        for p in pieces:
            if p.is_part and p.member in paths:
                raise UsageError(f"part {p.member!r} of split file {p.path!r} collides with a real file of that name")
            if p.member in members:
                raise UsageError(f"archive member {p.member!r} would be written twice")
            members.add(p.member)
    ordered = sorted(paths)
    for split in split_paths:
        prefix = split + ".part-"
        i = bisect.bisect_left(ordered, prefix)
        if i < len(ordered) and ordered[i].startswith(prefix):
            raise UsageError(
                f"file {ordered[i]!r} collides with the part names of split file {split!r}; "
                "use a bigger chunk size or rename it"
            )



def pack_sticks(sizes: Mapping[str, int], stick_size: int) -> list[list[str]]:
    """Which chunks go together on a stick (first-fit decreasing); every size must be <= stick_size."""
    sticks: list[list[str]] = []
    free: list[int] = []
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        for i, left in enumerate(free):
            if sizes[name] <= left:
                sticks[i].append(name)
                free[i] -= sizes[name]
                break
        else:
            sticks.append([name])
            free.append(stick_size - sizes[name])
    for s in sticks:
        s.sort()
    return sticks


def build_bundle_manifest(
    plan: Sequence[ChunkSpec],
    results: Iterable["object"],
    files: Sequence[FileEntry],
    *,
    version: str,
    compression: str | None = None,
    chunk_size: int | None = None,
    tool_version: str = "",
    created: str = "",
    mirror_manifest_sha256: str = "",
) -> BundleManifest:
    """Assemble the ``BundleManifest`` from the plan and every chunk's ``ChunkResult``.

    Checks that each planned piece was written and that a whole file's piece hash equals the
    file's recorded sha256.
    """
    by_name = {r.chunk.name: r for r in results}
    parts = _written_parts(plan, by_name)
    entries = {f.path: f for f in files}
    bundle_files = [_bundle_file(entries[path], sorted(parts.get(path, []), key=lambda p: p.offset))
                    for path in sorted(entries)]
    unplanned = set(parts) - set(entries)
    if unplanned:
        raise IntegrityError(f"plan holds files not in the mirror manifest: {', '.join(sorted(unplanned)[:5])}")
    return BundleManifest(
        version=version,
        files=bundle_files,
        chunks=[by_name[s.name].chunk for s in plan],
        compression=compression or (plan[0].compression if plan else "copy"),
        chunk_size=chunk_size if chunk_size is not None else (plan[0].chunk_size if plan else 0),
        tool_version=tool_version,
        created=created,
        mirror_manifest_sha256=mirror_manifest_sha256,
    )


def _written_parts(plan: Sequence[ChunkSpec], by_name: Mapping[str, "object"]) -> dict[str, list[Part]]:
    """Each file's pieces as written (path -> its parts): every planned chunk written with the
    planned members, and a sha256 recorded for each piece."""
    missing = [s.name for s in plan if s.name not in by_name]
    if missing:
        raise IntegrityError(f"chunks not written yet: {', '.join(missing)}")
    parts: dict[str, list[Part]] = {}
    for spec in plan:
        result = by_name[spec.name]
        if sorted(result.chunk.members) != spec.members:
            raise IntegrityError(f"chunk {spec.name} does not hold the planned members")
        for p in spec.pieces:
            sha = result.piece_sha256.get(p.member)
            if sha is None:
                raise IntegrityError(f"no sha256 recorded for {p.member} in {spec.name}")
            parts.setdefault(p.path, []).append(Part(chunk=spec.name, member=p.member, offset=p.offset, size=p.size, sha256=sha))
    return parts


def _bundle_file(entry: FileEntry, ps: list[Part]) -> BundleFile:
    """A file of the bundle from its parts (in offset order): they must cover it without a gap, and a
    file in one piece must still have the sha256 it was verified with."""
    path, pos = entry.path, 0
    for p in ps:
        if p.offset != pos:
            raise IntegrityError(f"pieces of {path} are not contiguous at byte {pos}")
        pos += p.size
    if pos != entry.size or not ps:
        raise IntegrityError(f"pieces of {path} cover {pos} of {entry.size} bytes")
    if len(ps) == 1 and ps[0].sha256 != entry.sha256:
        raise IntegrityError(f"{path} changed since it was verified; re-run mirror")
    return BundleFile(path=path, size=entry.size, sha256=entry.sha256, parts=ps)

"""Plan how mirror files are packed into bundle chunks (no I/O here).

``chunk_plan`` is deterministic: files are sorted by path and packed greedily in that order.
Each chunk is one standalone 7z archive whose finished size must stay at or below the chunk
size, so the plan budgets for the 7z overhead (see ``chunk_size_bound``). A file that fits in an
empty chunk is never split (it starts a new chunk when the current one is too full); a file too
big for one chunk is split into parts ``part_member(path, i)`` that fill the rest of the current
chunk, then whole chunks, and the last part shares its chunk with the files that follow.
"""

import bisect
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from amsrepomirror.bundle.format import COMPRESSIONS, BundleFile, BundleManifest, Part, chunk_name, part_member
from amsrepomirror.errors import IntegrityError, UsageError
from amsrepomirror.online.manifest import FileEntry
from amsrepomirror.util.paths import path_problem, shown
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

# A file that does not fit whole in the current chunk but must be split anyway only starts in
# that chunk when at least this fraction of a chunk is left (avoids silly tiny first parts).
MIN_PART_FRACTION = 64


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
    name: str                # chunk file name (``chunk_name``)
    pieces: List[Piece]      # in archive order (path order)
    payload: int             # data bytes (sum of piece sizes)
    chunk_size: int = 0      # the limit the finished 7z file must respect
    compression: str = "copy"
    max_size: int = 0        # planned upper bound of the finished file size (<= chunk_size)

    @property
    def members(self) -> List[str]:
        return sorted(p.member for p in self.pieces)


def _check_path(path: str) -> None:
    why = path_problem(path)
    if why:
        raise UsageError(f"cannot bundle file with unsafe path {shown(path)} ({why})")


def chunk_plan(files: Sequence[FileEntry], chunk_size: int, version: str, compression: str = "copy") -> List[ChunkSpec]:
    """Pack ``files`` into chunks of at most ``chunk_size`` bytes each; same input, same plan."""
    if compression not in COMPRESSIONS:
        raise UsageError(f"unknown compression {compression!r}: use one of {', '.join(COMPRESSIONS)}")
    if not version or "/" in version or "\\" in version or version.startswith("."):
        raise UsageError(f"bad version {version!r} for chunk names")
    ordered = sorted(files, key=lambda f: f.path)
    paths = set()
    for f in ordered:
        _check_path(f.path)
        if f.path in paths:
            raise UsageError(f"file {f.path!r} is listed twice")
        if f.size < 0:
            raise UsageError(f"file {f.path!r} has a negative size")
        paths.add(f.path)

    # Every file must fit in an empty chunk with at least one byte (its whole self if empty).
    empty_room = _room(chunk_size, 0, 0, compression)
    if empty_room <= 0:
        raise UsageError(
            f"chunk size {chunk_size} bytes is too small to hold any data: the 7z overhead alone is "
            f"about {FIXED_OVERHEAD} bytes; use something like {format_size(DEFAULT_CHUNK_SIZE)}"
        )
    for f in ordered:
        longest = f.path if f.size == 0 else part_member(f.path, 9999)
        if _room(chunk_size, 0, member_overhead(longest), compression) < min(1, f.size):
            raise UsageError(
                f"chunk size {chunk_size} bytes is too small to hold any data of {f.path!r} "
                f"(7z header for its name alone needs {FIXED_OVERHEAD + member_overhead(longest)} bytes)"
            )
    min_first_part = max(1, chunk_size // MIN_PART_FRACTION)

    groups: List[List[Piece]] = []
    current: List[Piece] = []
    state = {"payload": 0, "header": 0}

    def close() -> None:
        nonlocal current
        if current:
            groups.append(current)
        current = []
        state["payload"] = 0
        state["header"] = 0

    def room_for(member: str) -> int:
        return _room(chunk_size, state["payload"], state["header"] + member_overhead(member), compression)

    def add(piece: Piece) -> None:
        current.append(piece)
        state["payload"] += piece.size
        state["header"] += member_overhead(piece.member)

    split_paths = []
    for f in ordered:
        if room_for(f.path) >= f.size:
            add(Piece(f.path, f.path, 0, f.size))
            continue
        if _room(chunk_size, 0, member_overhead(f.path), compression) >= f.size:
            close()  # fits whole in a fresh chunk: never split it
            add(Piece(f.path, f.path, 0, f.size))
            continue
        split_paths.append(f.path)
        offset, index = 0, 1
        while offset < f.size:
            member = part_member(f.path, index)
            room = room_for(member)
            remaining = f.size - offset
            if current and (room < 1 or (index == 1 and room < min(min_first_part, remaining))):
                close()
                continue
            take = min(room, remaining)
            if take < 1:  # cannot happen after the size check above
                raise UsageError(f"chunk size {chunk_size} bytes is too small for {f.path!r}")
            add(Piece(f.path, member, offset, take))
            offset += take
            index += 1
            if offset < f.size:
                close()
    close()

    _check_collisions(paths, split_paths, groups)

    count = len(groups)
    plan = []
    for i, pieces in enumerate(groups, start=1):
        payload = sum(p.size for p in pieces)
        header = sum(member_overhead(p.member) for p in pieces)
        bound = chunk_size_bound(payload, header, compression)
        assert bound <= chunk_size, (bound, chunk_size)
        plan.append(ChunkSpec(
            name=chunk_name(version, i, count), pieces=pieces, payload=payload,
            chunk_size=chunk_size, compression=compression, max_size=bound,
        ))
    return plan


def _check_collisions(paths: set, split_paths: List[str], groups: List[List[Piece]]) -> None:
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



def _pack_sticks(sizes: Mapping[str, int], stick_size: int) -> List[List[str]]:
    """First-fit decreasing; every size must be <= stick_size."""
    sticks: List[List[str]] = []
    free: List[int] = []
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


def describe_plan(plan: Sequence[ChunkSpec], files: Sequence[FileEntry], stick_size: Optional[int] = None) -> str:
    """Human summary for the ``plan`` command: totals, each chunk, and how many sticks are needed."""
    total = sum(f.size for f in files)
    lines = [f"{len(files)} files, {format_size(total)} ({total} bytes) in {len(plan)} chunks"]
    if plan:
        lines[0] += f" of at most {format_size(plan[0].chunk_size)}, compression {plan[0].compression}"
    width = max((len(s.name) for s in plan), default=0)
    for spec in plan:
        parts = sum(1 for p in spec.pieces if p.is_part)
        what = f"{len(spec.pieces)} pieces" + (f" ({parts} parts of split files)" if parts else "")
        lines.append(f"  {spec.name:<{width}}  {what:<40}  {format_size(spec.payload):>10}  "
                     f"(file <= {format_size(spec.max_size)})")
    split = {}
    for spec in plan:
        for p in spec.pieces:
            if p.is_part:
                split[p.path] = split.get(p.path, 0) + 1
    if split:
        lines.append(f"{len(split)} files are split into parts:")
        for path in sorted(split):
            lines.append(f"  {path}: {split[path]} parts")
    if stick_size is not None:
        sizes = {s.name: s.max_size for s in plan}
        too_big = [n for n in sorted(sizes) if sizes[n] > stick_size]
        if too_big:
            lines.append(
                f"ERROR: {len(too_big)} chunks are bigger than a stick of {format_size(stick_size)} "
                f"(e.g. {too_big[0]}, up to {format_size(max(sizes[n] for n in too_big))}): choose a chunk size "
                f"below the stick size"
            )
        else:
            sticks = _pack_sticks(sizes, stick_size)
            lines.append(f"{len(sticks)} sticks of {format_size(stick_size)} needed (file system overhead not counted):")
            for i, names in enumerate(sticks, start=1):
                used = sum(sizes[n] for n in names)
                lines.append(f"  stick {i}: {len(names)} chunks, {format_size(used)}: {', '.join(names)}")
    return "\n".join(lines) + "\n"


def build_bundle_manifest(
    plan: Sequence[ChunkSpec],
    results: Iterable["object"],
    files: Sequence[FileEntry],
    *,
    version: str,
    compression: Optional[str] = None,
    chunk_size: Optional[int] = None,
    tool_version: str = "",
    created: str = "",
    mirror_manifest_sha256: str = "",
) -> BundleManifest:
    """Assemble the ``BundleManifest`` from the plan and every chunk's ``ChunkResult``.

    Checks that each planned piece was written and that a whole file's piece hash equals the
    file's recorded sha256.
    """
    by_name = {}
    for r in results:
        by_name[r.chunk.name] = r
    missing = [s.name for s in plan if s.name not in by_name]
    if missing:
        raise IntegrityError(f"chunks not written yet: {', '.join(missing)}")
    entries = {f.path: f for f in files}
    parts: Dict[str, List[Part]] = {}
    for spec in plan:
        result = by_name[spec.name]
        if sorted(result.chunk.members) != spec.members:
            raise IntegrityError(f"chunk {spec.name} does not hold the planned members")
        for p in spec.pieces:
            sha = result.piece_sha256.get(p.member)
            if sha is None:
                raise IntegrityError(f"no sha256 recorded for {p.member} in {spec.name}")
            parts.setdefault(p.path, []).append(Part(chunk=spec.name, member=p.member, offset=p.offset, size=p.size, sha256=sha))
    bundle_files = []
    for path in sorted(entries):
        entry = entries[path]
        ps = sorted(parts.get(path, []), key=lambda p: p.offset)
        pos = 0
        for p in ps:
            if p.offset != pos:
                raise IntegrityError(f"pieces of {path} are not contiguous at byte {pos}")
            pos += p.size
        if pos != entry.size or not ps:
            raise IntegrityError(f"pieces of {path} cover {pos} of {entry.size} bytes")
        if len(ps) == 1 and ps[0].sha256 != entry.sha256:
            raise IntegrityError(f"{path} changed since it was verified; re-run mirror")
        bundle_files.append(BundleFile(path=path, size=entry.size, sha256=entry.sha256, parts=ps))
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

"""Write one bundle chunk: a standalone 7z archive built with py7zr (write side only).

Memory: py7zr's ``SevenZipFile.writef(bio, arcname)`` does not buffer its input. For a
``io.BufferedIOBase`` it only seeks to the end and back to learn the size, then
``Worker.writestr`` -> ``SevenZipCompressor.compress(fd, fp)`` reads ``bio`` in blocks of
``get_default_blocksize()`` (1 MiB on 64-bit CPython) and writes each compressed block straight
to the archive file. Only per-member header records (name, size, CRC, times) are kept until
``close()`` writes the header. So peak memory is one block plus the compressor's own state
(zstd window; lzma2 preset 6 dictionary), independent of file size.

We feed ``writef`` a ``_PieceReader``: a read-only view of one byte range of a mirror file that
hashes every byte as py7zr reads it, so each piece is read exactly once. That hash is the only
check that the bytes packed are the bytes downloaded (a file rotted on disk keeps its size and
mtime), so every piece is hashed and compared: a whole file with its verified sha256 right away;
the parts of a split file each on their own (for the bundle manifest) and, through a
``Sha256State`` carried from chunk to chunk, as the whole file when its last part is packed.

The header is written plain (``set_encoded_header_mode(False)``) so its size is exactly
predictable for the chunk-size budget in ``amsrepomirror.pack.plan``.

Chunks are written deterministically (members in plan order, fixed times and attributes; see
``_FixedTimeSevenZipFile``): the same members give the same bytes, so a chunk named by its content
(``plan.chunk_key``) is the same file in every bundle that holds it.

Note: stock 7-Zip (7zz 26.01 tested) cannot decode the zstd method in 7z archives
("Unsupported Method"); zstd chunks need py7zr or a 7-Zip build with zstd support.
"""

import ctypes
import hashlib
import io
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import py7zr
from py7zr.helpers import ArchiveTimestamp

from amsrepomirror.bundle.format import COMPRESSIONS, Chunk
from amsrepomirror.errors import IntegrityError, MirrorError, UsageError
from amsrepomirror.online.manifest import FileEntry
from amsrepomirror.pack.plan import ChunkSpec
from amsrepomirror.util.fsutil import fsync_dir
from amsrepomirror.util.hashing import sha256_stream

ZSTD_LEVEL = 3
LZMA2_PRESET = 6  # xz's default; ~94 MiB to compress, 8 MiB dictionary
# (a change to how chunks are written, e.g. these levels, must change plan.CHUNK_KEY_SCHEME)

#: The times of every member (7z FILETIME): 1980-01-01T00:00:00Z, the DOS epoch, never the clock.
MEMBER_TIME = ArchiveTimestamp.from_datetime(315532800)


class _FixedTimeSevenZipFile(py7zr.SevenZipFile):
    """py7zr's writer with fixed member times, so two writes of the same members are byte-identical.

    py7zr's public ``writef`` stamps each member with the current time, in
    ``SevenZipFile._make_file_info_from_name`` (py7zr 1.1.x). That is private API: pyproject.toml
    pins ``py7zr>=1.1.4,<1.2``; tests/test_dependencies.py checks that the override still takes effect,
    and tests/test_stable_chunks.py that the same chunk written twice is the same bytes. Attributes are
    py7zr's constant ones for a regular file.
    """

    @staticmethod
    def _make_file_info_from_name(bio, size: int, arcname: str):
        info = py7zr.SevenZipFile._make_file_info_from_name(bio, size, arcname)
        info.update(creationtime=MEMBER_TIME, lastwritetime=MEMBER_TIME, lastaccesstime=MEMBER_TIME)
        return info


def filters_for(compression: str):
    """py7zr filter chain for a bundle compression name."""
    if compression == "copy":
        return [{"id": py7zr.FILTER_COPY}]
    if compression == "zstd":
        return [{"id": py7zr.FILTER_ZSTD, "level": ZSTD_LEVEL}]
    if compression == "lzma2":
        return [{"id": py7zr.FILTER_LZMA2, "preset": LZMA2_PRESET}]
    raise UsageError(f"unknown compression {compression!r}: use one of {', '.join(COMPRESSIONS)}")


class ContentMismatch(IntegrityError):
    """A mirror file's bytes, hashed as they were packed, are not the bytes verified when it was downloaded."""

    def __init__(self, path: str):
        super().__init__(f"{path} does not match the sha256 recorded when it was downloaded")
        self.path = path


@lru_cache(maxsize=1)
def _libcrypto():
    """OpenSSL's libcrypto (the library behind hashlib: already loaded), for its SHA256_* functions."""
    for name in ("libcrypto.so.3", "libcrypto.so.1.1"):
        try:
            lib = ctypes.CDLL(name)
            init, update, final = lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final
        except (OSError, AttributeError):
            continue
        init.argtypes = [ctypes.c_void_p]
        update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        final.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        return lib
    raise MirrorError("cannot bundle a file split over several chunks: OpenSSL's libcrypto was not found "
                      "(its SHA-256 state carries the file's hash from chunk to chunk); use a chunk size "
                      "larger than the largest file")


class Sha256State:
    """SHA-256 whose running state can be saved and resumed in another process.

    The parts of a split file are packed by different chunk writers (separate processes), yet
    the whole file must be hashed from the very bytes packed, without reading it twice.
    hashlib's state cannot leave its process; OpenSSL's plain ``SHA256_CTX`` (112 bytes: the
    eight state words, the bit count, the pending block) can: ``state()`` is its hex.
    """

    CTX_SIZE = 112

    def __init__(self, state: str | None = None):
        self._lib = _libcrypto()
        if state is None:
            self._ctx = ctypes.create_string_buffer(self.CTX_SIZE)
            self._lib.SHA256_Init(self._ctx)
        else:
            raw = bytes.fromhex(state)
            if len(raw) != self.CTX_SIZE:
                raise ValueError(f"a SHA-256 state is {self.CTX_SIZE} bytes, not {len(raw)}")
            self._ctx = ctypes.create_string_buffer(raw, self.CTX_SIZE)

    def update(self, data: bytes) -> None:
        self._lib.SHA256_Update(self._ctx, data, len(data))

    @property
    def length(self) -> int:
        """Bytes hashed so far (from the context's 64-bit bit count, words 8 and 9)."""
        low, high = (int.from_bytes(self._ctx.raw[i:i + 4], sys.byteorder) for i in (32, 36))
        return ((high << 32) | low) >> 3

    def state(self) -> str:
        return self._ctx.raw.hex()

    def hexdigest(self) -> str:
        done = ctypes.create_string_buffer(self._ctx.raw, self.CTX_SIZE)  # finishing must not end this one
        digest = ctypes.create_string_buffer(32)
        self._lib.SHA256_Final(digest, done)
        return digest.raw.hex()


class _PieceReader(io.BufferedIOBase):
    """Bytes ``offset .. offset+size`` of ``raw``, fed to each of ``hashers`` as they are read.

    Seeking is allowed (py7zr seeks to the end and back to learn the size), but reads must be
    sequential so that the hashes cover each byte once and in order.
    """

    def __init__(self, raw, offset: int, size: int, hashers: Sequence = (),
                 on_bytes: Callable[[int], None] | None = None):
        super().__init__()
        self._on_bytes = on_bytes
        self._raw = raw
        self._offset = offset
        self._size = size
        self._pos = 0
        self.hashed = 0  # bytes hashed so far
        self._hashers = hashers
        raw.seek(offset)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            new = pos
        elif whence == io.SEEK_CUR:
            new = self._pos + pos
        elif whence == io.SEEK_END:
            new = self._size + pos
        else:
            raise ValueError(f"bad whence {whence}")
        if new < 0:
            raise ValueError("negative seek position")
        self._pos = new
        return new

    def read(self, n: int | None = -1) -> bytes:
        if self._pos >= self._size:
            return b""
        if self._pos != self.hashed:
            raise RuntimeError("piece reader: non-sequential read")
        want = self._size - self._pos
        if n is not None and n >= 0:
            want = min(n, want)
        self._raw.seek(self._offset + self._pos)
        data = self._raw.read(want)
        for hasher in self._hashers:
            hasher.update(data)
        self._pos += len(data)
        self.hashed += len(data)
        if self._on_bytes is not None and data:
            self._on_bytes(len(data))
        return data

    read1 = read


@dataclass(frozen=True)
class ChunkResult:
    """What ``write_chunk`` produced: the finished chunk and the sha256 of every piece in it."""

    chunk: Chunk                 # name, size and sha256 of the finished 7z file, sorted members
    piece_sha256: dict[str, str]  # archive member name -> sha256 of that member's bytes
    # split file -> Sha256State.state() after its part in this chunk, when more parts follow
    sha256_state: dict[str, str] = field(default_factory=dict)


def _source_path(mirror_dir: Path, rel: str) -> Path:
    return Path(mirror_dir).joinpath(*rel.split("/"))


def write_chunk(
    spec: ChunkSpec,
    mirror_dir: Path,
    dest: Path,
    compression: str,
    expected: Mapping[str, FileEntry],
    *,
    resume: Mapping[str, str] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> ChunkResult:
    """Write chunk ``spec`` from files under ``mirror_dir`` into the bundle folder ``dest``.

    Every byte is hashed as it is packed. A whole file must match its sha256 in ``expected``;
    so must a split file, hashed across chunks: its first part starts a ``Sha256State``, a later
    part resumes the state in ``resume`` (``sha256_state`` of the chunk with the part before),
    and its last part finishes it. A mismatch raises ``ContentMismatch`` naming the file and
    leaves no chunk behind.

    ``dest`` is the bundle folder (the chunk becomes ``dest/spec.name``); a path whose name is
    ``spec.name`` is accepted too. The archive is built under a hidden temp name
    ``.<chunk name>.<random>.tmp`` in the same folder, fsynced, hashed and only then renamed into
    place, so a chunk with its final name is always complete. On any error the temp file is
    removed (a killed process may leave one behind: see ``amsrepomirror.pack.build.remove_partial_files``).
    """
    if compression != spec.compression:
        raise UsageError(
            f"chunk {spec.name} was planned for compression {spec.compression!r}, not {compression!r}; re-plan"
        )
    filters = filters_for(compression)
    final = _chunk_destination(spec, Path(dest))
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{spec.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o644)  # chunks are read by other accounts on shared filesystems
        with os.fdopen(fd, "w+b") as fp:
            piece_sha, carried = _write_archive(fp, spec, Path(mirror_dir), filters, expected, resume or {}, on_bytes)
            hasher, size = _durable_sha256(fp)
        _check_chunk_size(spec, size)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    chunk = Chunk(name=spec.name, size=size, sha256=hasher.hexdigest(), members=sorted(piece_sha))
    return ChunkResult(chunk=chunk, piece_sha256=piece_sha, sha256_state=carried)


def _chunk_destination(spec: ChunkSpec, dest: Path) -> Path:
    """Where the chunk goes: ``dest/spec.name``, or ``dest`` itself when it has that name; its folder made."""
    final = dest if dest.name == spec.name else dest / spec.name
    final.parent.mkdir(parents=True, exist_ok=True)
    return final


def _durable_sha256(fp) -> tuple:
    """Make the written archive durable and hash it whole (py7zr rewrites the signature header at the
    end, so only the finished file has the chunk's bytes); (hasher, size)."""
    fp.flush()
    os.fsync(fp.fileno())
    fp.seek(0)
    return sha256_stream(fp)


def _check_chunk_size(spec: ChunkSpec, size: int) -> None:
    """A chunk over the chunk size means the plan's 7z overhead budget is wrong: never kept."""
    if size > spec.chunk_size:
        raise MirrorError(
            f"internal error: chunk {spec.name} came out {size} bytes, over the chunk size "
            f"{spec.chunk_size} (planned at most {spec.max_size}); the 7z overhead budget is wrong"
        )


def _whole_file_hasher(piece, resume: Mapping[str, str], src) -> Sha256State:
    """The running hash of split file ``piece.path`` up to the first byte of ``piece``: resumed from
    the state the chunk with the part before left, else (that chunk was reused from an earlier
    bundle, so it left none) hashed afresh from ``src``, the file itself."""
    state = resume.get(piece.path) if piece.offset else None
    whole = Sha256State(state) if state else Sha256State()
    if whole.length == piece.offset:
        return whole
    whole = Sha256State()
    src.seek(0)
    done = 0
    while done < piece.offset:
        block = src.read(min(1 << 20, piece.offset - done))
        if not block:
            raise IntegrityError(f"{piece.path} changed since it was verified; re-run mirror (ends at byte {done})")
        whole.update(block)
        done += len(block)
    return whole


def _write_archive(fp, spec: ChunkSpec, mirror_dir: Path, filters, expected: Mapping[str, FileEntry],
                   resume: Mapping[str, str], on_bytes: Callable[[int], None] | None = None,
                   ) -> tuple[dict[str, str], dict[str, str]]:
    """Pack the pieces; return ({member: sha256}, {split file: Sha256State.state() when more parts follow})."""
    piece_sha: dict[str, str] = {}
    carried: dict[str, str] = {}
    archive = _FixedTimeSevenZipFile(fp, "w", filters=filters)
    archive.set_encoded_header_mode(False)
    for piece in spec.pieces:
        entry = expected.get(piece.path)
        if entry is None:
            raise IntegrityError(f"{piece.path} is not in the verified mirror manifest; re-run mirror")
        source = _source_path(mirror_dir, piece.path)
        try:
            src = open(source, "rb")
        except FileNotFoundError:
            raise IntegrityError(f"{piece.path} is missing from the mirror at {mirror_dir}; re-run mirror") from None
        with src:
            actual_size = os.fstat(src.fileno()).st_size
            if actual_size != entry.size:
                raise IntegrityError(
                    f"{piece.path} changed since it was verified; re-run mirror "
                    f"(size {actual_size}, verified {entry.size})"
                )
            if piece.offset + piece.size > entry.size:
                raise UsageError(f"plan piece {piece.member} lies beyond the end of {piece.path}; re-plan")
            hasher = hashlib.sha256()
            whole = _whole_file_hasher(piece, resume, src) if piece.is_part else None
            reader = _PieceReader(src, piece.offset, piece.size, (hasher, whole) if whole else (hasher,), on_bytes)
            archive.writef(reader, piece.member)
            if reader.hashed != piece.size:
                raise IntegrityError(
                    f"{piece.path} changed since it was verified; re-run mirror "
                    f"(read {reader.hashed} of {piece.size} bytes of {piece.member})"
                )
        piece_sha[piece.member] = hasher.hexdigest()
        if whole is not None and piece.offset + piece.size < entry.size:
            carried[piece.path] = whole.state()
        elif (whole.hexdigest() if whole else piece_sha[piece.member]) != entry.sha256:
            raise ContentMismatch(piece.path)
    archive.close()  # writes the header; does not close fp (we passed a file object)
    return piece_sha, carried



"""Write one bundle chunk: a standalone 7z archive built with py7zr (write side only).

Memory: py7zr's ``SevenZipFile.writef(bio, arcname)`` does not buffer its input. For a
``io.BufferedIOBase`` it only seeks to the end and back to learn the size, then
``Worker.writestr`` -> ``SevenZipCompressor.compress(fd, fp)`` reads ``bio`` in blocks of
``get_default_blocksize()`` (1 MiB on 64-bit CPython) and writes each compressed block straight
to the archive file. Only per-member header records (name, size, CRC, times) are kept until
``close()`` writes the header. So peak memory is one block plus the compressor's own state
(zstd window; lzma2 preset 6 dictionary), independent of file size.

We feed ``writef`` a ``_PieceReader``: a read-only view of one byte range of a mirror file that
hashes every byte as py7zr reads it, so each piece is read exactly once.

The header is written plain (``set_encoded_header_mode(False)``) so its size is exactly
predictable for the chunk-size budget in ``pipeline.chunking``.

Note: stock 7-Zip (7zz 26.01 tested) cannot decode the zstd method in 7z archives
("Unsupported Method"); zstd chunks need py7zr or a 7-Zip build with zstd support.
"""

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional

import py7zr

from .bundle import COMPRESSIONS, Chunk
from .chunking import ChunkSpec
from .errors import IntegrityError, MirrorError, UsageError
from .fsutil import fsync_dir
from .hashing import sha256_stream
from .manifest import FileEntry

ZSTD_LEVEL = 3
LZMA2_PRESET = 6  # xz's default; ~94 MiB to compress, 8 MiB dictionary


def filters_for(compression: str):
    """py7zr filter chain for a bundle compression name."""
    if compression == "copy":
        return [{"id": py7zr.FILTER_COPY}]
    if compression == "zstd":
        return [{"id": py7zr.FILTER_ZSTD, "level": ZSTD_LEVEL}]
    if compression == "lzma2":
        return [{"id": py7zr.FILTER_LZMA2, "preset": LZMA2_PRESET}]
    raise UsageError(f"unknown compression {compression!r}: use one of {', '.join(COMPRESSIONS)}")


class _PieceReader(io.BufferedIOBase):
    """Bytes ``offset .. offset+size`` of ``raw``, hashed (sha256) as they are read unless ``hash`` is False.

    Seeking is allowed (py7zr seeks to the end and back to learn the size), but reads must be
    sequential so that the hash covers each byte once and in order.
    """

    def __init__(self, raw, offset: int, size: int, hash: bool = True):
        super().__init__()
        self._raw = raw
        self._offset = offset
        self._size = size
        self._pos = 0
        self.hashed = 0  # bytes hashed so far
        self.hasher = hashlib.sha256() if hash else None
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

    def read(self, n: Optional[int] = -1) -> bytes:
        if self._pos >= self._size:
            return b""
        if self._pos != self.hashed:
            raise RuntimeError("piece reader: non-sequential read")
        want = self._size - self._pos
        if n is not None and n >= 0:
            want = min(n, want)
        self._raw.seek(self._offset + self._pos)
        data = self._raw.read(want)
        if self.hasher is not None:
            self.hasher.update(data)
        self._pos += len(data)
        self.hashed += len(data)
        return data

    read1 = read


@dataclass(frozen=True)
class ChunkResult:
    """What ``write_chunk`` produced: the finished chunk and the sha256 of every piece in it."""

    chunk: Chunk                 # name, size and sha256 of the finished 7z file, sorted members
    piece_sha256: Dict[str, str]  # archive member name -> sha256 of that member's bytes




def _source_path(mirror_dir: Path, rel: str) -> Path:
    return Path(mirror_dir).joinpath(*rel.split("/"))


def write_chunk(
    spec: ChunkSpec,
    mirror_dir: Path,
    dest: Path,
    compression: str,
    expected: Mapping[str, FileEntry],
    *,
    rehash_whole_files: bool = True,
) -> ChunkResult:
    """Write chunk ``spec`` from files under ``mirror_dir`` into the bundle folder ``dest``.

    Parts of split files are always hashed as they are packed (their sha256 goes into the
    bundle manifest). Whole files are hashed and compared with ``expected`` unless
    ``rehash_whole_files`` is False, for callers that have already tied each file to its
    verified record (size and mtime), as the mirror's own hash cache does.

    ``dest`` is the bundle folder (the chunk becomes ``dest/spec.name``); a path whose name is
    ``spec.name`` is accepted too. The archive is built under a hidden temp name
    ``.<chunk name>.<random>.tmp`` in the same folder, fsynced, hashed and only then renamed into
    place, so a chunk with its final name is always complete. On any error the temp file is
    removed (a killed process may leave one behind: see ``bundle.remove_partial_files``).
    """
    if compression != spec.compression:
        raise UsageError(
            f"chunk {spec.name} was planned for compression {spec.compression!r}, not {compression!r}; re-plan"
        )
    filters = filters_for(compression)
    dest = Path(dest)
    final = dest if dest.name == spec.name else dest / spec.name
    final.parent.mkdir(parents=True, exist_ok=True)

    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{spec.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o644)  # chunks are read by other accounts on shared filesystems
        with os.fdopen(fd, "w+b") as fp:
            piece_sha = _write_archive(fp, spec, Path(mirror_dir), filters, expected, rehash_whole_files)
            fp.flush()
            os.fsync(fp.fileno())
            # py7zr rewrites the signature header at the end: hash the finished file.
            fp.seek(0)
            hasher, size = sha256_stream(fp)
        if size > spec.chunk_size:
            raise MirrorError(
                f"internal error: chunk {spec.name} came out {size} bytes, over the chunk size "
                f"{spec.chunk_size} (planned at most {spec.max_size}); the 7z overhead budget is wrong"
            )
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    chunk = Chunk(name=spec.name, size=size, sha256=hasher.hexdigest(), members=sorted(piece_sha))
    return ChunkResult(chunk=chunk, piece_sha256=piece_sha)


def _write_archive(fp, spec: ChunkSpec, mirror_dir: Path, filters, expected: Mapping[str, FileEntry],
                   rehash_whole_files: bool) -> Dict[str, str]:
    piece_sha: Dict[str, str] = {}
    archive = py7zr.SevenZipFile(fp, "w", filters=filters)
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
            reader = _PieceReader(src, piece.offset, piece.size, hash=piece.is_part or rehash_whole_files)
            archive.writef(reader, piece.member)
            if reader.hashed != piece.size:
                raise IntegrityError(
                    f"{piece.path} changed since it was verified; re-run mirror "
                    f"(read {reader.hashed} of {piece.size} bytes of {piece.member})"
                )
        if reader.hasher is None:
            piece_sha[piece.member] = entry.sha256
            continue
        digest = reader.hasher.hexdigest()
        if not piece.is_part and digest != entry.sha256:
            raise IntegrityError(f"{piece.path} changed since it was verified; re-run mirror (sha256 differs)")
        piece_sha[piece.member] = digest
    archive.close()  # writes the header; does not close fp (we passed a file object)
    return piece_sha


def test_archive(path: Path) -> Optional[str]:
    """Check a 7z file's structure and every member's CRC by decompressing it (streaming).

    Returns None when it is fine, else a short description of the problem. (py7zr's ``test()``
    only checks packed-stream CRCs, which py7zr does not write for unencrypted archives, so it
    would check nothing here; ``testzip()`` decompresses each member and checks its CRC32.)
    """
    try:
        with py7zr.SevenZipFile(path, "r") as archive:
            bad = archive.testzip()
        if bad is not None:
            return f"CRC error in member {bad}"
        return None
    except Exception as exc:  # py7zr raises many types for damaged archives
        return f"{type(exc).__name__}: {exc}"


def archive_members(path: Path):
    """Sorted member names of a 7z file (reads only the header)."""
    with py7zr.SevenZipFile(path, "r") as archive:
        return sorted(archive.getnames())

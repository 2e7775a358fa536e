"""Streaming SHA-256: files are hashed in fixed-size blocks, never read whole."""

import hashlib
import io
from pathlib import Path
from typing import BinaryIO, Optional

BLOCK = 1024 * 1024
FILE_BLOCK = 8 * 1024 * 1024


def sha256_stream(stream: BinaryIO, hasher: Optional["hashlib._Hash"] = None, limit: Optional[int] = None):
    """Feed ``stream`` (up to ``limit`` bytes) into ``hasher``; return (hasher, bytes read)."""
    hasher = hasher or hashlib.sha256()
    total = 0
    while limit is None or total < limit:
        block = stream.read(BLOCK if limit is None else min(BLOCK, limit - total))
        if not block:
            break
        hasher.update(block)
        total += len(block)
    return hasher, total


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file: big reads into one reused buffer, so a hashing thread spends its
    time in hashlib and the kernel, outside the GIL (verify hashes two chunks at a time)."""
    hasher = hashlib.sha256()
    view = memoryview(bytearray(FILE_BLOCK))
    with io.FileIO(path, "rb") as f:
        while True:
            n = f.readinto(view)
            if not n:
                break
            hasher.update(view[:n])
    return hasher.hexdigest()

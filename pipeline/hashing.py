"""Streaming SHA-256: files are hashed in fixed-size blocks, never read whole."""

import hashlib
from pathlib import Path
from typing import BinaryIO, Optional

BLOCK = 1024 * 1024


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
    """Hex SHA-256 of a file."""
    with open(path, "rb") as f:
        return sha256_stream(f)[0].hexdigest()

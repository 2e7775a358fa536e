"""Streaming SHA-256: files are hashed in fixed-size blocks, never read whole."""

import errno
import hashlib
import io
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Optional

BLOCK = 1024 * 1024
FILE_BLOCK = 8 * 1024 * 1024


def sha256_stream(stream: BinaryIO, hasher: Optional["hashlib._Hash"] = None, limit: int | None = None):
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


def read_block(fd: int) -> int:
    """The buffer for reading what is left of ``fd``: FILE_BLOCK, or for a smaller regular file its rest and one
    byte (the read that finds the end), so that hashing a tiny file does not map and zero 8 MiB each time
    (about 0.1 ms, ten times the rest of the work, per file of a tree of tiny files)."""
    try:
        info = os.fstat(fd)
        left = info.st_size - os.lseek(fd, 0, os.SEEK_CUR) if stat.S_ISREG(info.st_mode) else FILE_BLOCK
    except OSError:
        return FILE_BLOCK
    return max(4096, min(FILE_BLOCK, left + 1))


def sha256_fd(fd: int, on_bytes: Callable[[int], None] | None = None) -> tuple[int, str]:
    """(bytes read, hex SHA-256) of what is left to read from the open ``fd``: big reads into one
    reused buffer, so a hashing thread spends its time in hashlib and the kernel, outside the GIL."""
    hasher = hashlib.sha256()
    view = memoryview(bytearray(read_block(fd)))
    size = 0
    with io.FileIO(fd, "rb", closefd=False) as f:
        while True:
            n = f.readinto(view)
            if not n:
                break
            hasher.update(view[:n])
            size += n
            if on_bytes is not None:
                on_bytes(n)
    return size, hasher.hexdigest()


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """Hex SHA-256 of a regular file; ``on_bytes`` hears each block. Anything else by that name (a
    FIFO, a device) is an OSError at once, never waited on or read without end."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not hold up the open
    with io.FileIO(fd, "rb"):
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        return sha256_fd(fd, on_bytes)[1]

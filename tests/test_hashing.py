"""Streaming SHA-256: the buffer is sized to what is left of a file, the digest never depends on it."""

import hashlib
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from amsrepomirror.util import hashing
from amsrepomirror.util.hashing import read_block, sha256_fd, sha256_file


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 3 * 4096 + 7), skip=st.integers(0, 4096 * 2), block=st.sampled_from([4096, 8192, 1 << 20]))
def test_sha256_fd_hashes_exactly_the_rest_of_a_file(tmp_path_factory, size, skip, block):
    data = os.urandom(size)
    path = tmp_path_factory.mktemp("h") / "f"
    path.write_bytes(data)
    skip = min(skip, size)
    old = hashing.FILE_BLOCK
    hashing.FILE_BLOCK = block  # the cap on the buffer: files larger than it take several reads
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.lseek(fd, skip, os.SEEK_SET)
            assert sha256_fd(fd) == (size - skip, hashlib.sha256(data[skip:]).hexdigest())
        finally:
            os.close(fd)
        assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    finally:
        hashing.FILE_BLOCK = old


def test_read_block_fits_a_small_file_and_caps_a_large_one(tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    small.write_bytes(b"x" * 100)
    with open(large, "wb") as f:
        f.truncate(hashing.FILE_BLOCK * 2)  # sparse: no bytes written
    with open(small, "rb") as f:
        assert read_block(f.fileno()) == 4096
    with open(large, "rb") as f:
        assert read_block(f.fileno()) == hashing.FILE_BLOCK


def test_a_file_that_grows_while_hashed_is_read_to_its_end(tmp_path):
    """The buffer fits the file as it was when hashing began; bytes appended meanwhile are still read."""
    path = tmp_path / "f"
    path.write_bytes(b"a" * 10)
    fd = os.open(path, os.O_RDONLY)
    try:
        block = read_block(fd)
        with open(path, "ab") as f:
            f.write(b"b" * (block * 3))
        assert sha256_fd(fd) == (10 + block * 3, hashlib.sha256(b"a" * 10 + b"b" * (block * 3)).hexdigest())
    finally:
        os.close(fd)

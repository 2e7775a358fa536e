"""``bundle --parity PERCENT``: PAR2 recovery files over the chunks, made in the bundle folder after them.

Block size: par2 splits the chunks into blocks and makes recovery blocks of the same size; damage is counted in
blocks (one flipped byte costs one block, a lost chunk all of its blocks). ``block_size`` aims at par2's own
default of about 2000 source blocks for the whole bundle (so the work grows with the bundle, not with its
count of blocks) and never below 4 KiB: far under par2's limit of 32768 source blocks whatever the chunk size,
and a 512 MiB chunk is about 2000 blocks of a 1 TiB bundle.
"""

import re
from pathlib import Path

from amsrepomirror.bundle.format import PARITY_NAME_PATTERN, Chunk, Parity, ToolFile
from amsrepomirror.bundle.parity import INDEX_NAME, run_par2, tail
from amsrepomirror.errors import IntegrityError, UsageError
from amsrepomirror.util.hashing import sha256_file

#: Source blocks par2 is asked for over the whole bundle (par2's own default block count).
TARGET_BLOCKS = 2000
#: The smallest block (bytes): a multiple of 4, as par2 requires.
MIN_BLOCK = 4096
_PERCENT = re.compile(r"([1-9][0-9]?|100)%?")


def parse_parity(value: str) -> int:
    """``--parity`` as a percent (1 to 100, e.g. 10%); UsageError otherwise."""
    match = _PERCENT.fullmatch(value.strip())
    if not match:
        raise UsageError(f"--parity {value!r}: give a percent of the chunks' size from 1% to 100%, e.g. --parity 10%")
    return int(match.group(1))


def block_size(chunk_sizes: list[int]) -> int:
    """The par2 block size for chunks of these sizes (module docstring), a multiple of ``MIN_BLOCK``."""
    total = sum(chunk_sizes)
    wanted = -(-total // TARGET_BLOCKS)
    return max(MIN_BLOCK, -(-wanted // MIN_BLOCK) * MIN_BLOCK)


def remove_parity_files(folder: Path) -> None:
    """Drop the PAR2 files of an earlier bundle written into ``folder``: they cover other chunks."""
    for path in Path(folder).iterdir():
        if PARITY_NAME_PATTERN.fullmatch(path.name) and path.is_file():
            path.unlink()


def make_parity(folder: Path, chunks: list[Chunk], redundancy: int) -> Parity | None:
    """PAR2 files over ``chunks`` (already in ``folder``) at ``redundancy`` percent, listed for the manifest;
    without ``redundancy``, None, after removing an earlier bundle's PAR2 files."""
    folder = Path(folder)
    remove_parity_files(folder)
    if not redundancy or not chunks:
        return None
    size = block_size([c.size for c in chunks])
    done = run_par2(["create", "-q", "-q", f"-r{redundancy}", f"-s{size}", "--", INDEX_NAME,
                     *(c.name for c in chunks)], folder)
    if done.returncode != 0:
        remove_parity_files(folder)
        raise IntegrityError(f"par2 create failed (exit {done.returncode}): {tail(done.stdout + done.stderr)}")
    files = sorted(p.name for p in folder.iterdir() if PARITY_NAME_PATTERN.fullmatch(p.name))
    listed = [ToolFile(path=name, size=(folder / name).stat().st_size, sha256=sha256_file(folder / name))
              for name in files]
    recovery = sum(int(m.group(1)) for m in (re.search(r"\+([0-9]+)\.par2$", n) for n in files) if m)
    return Parity(redundancy=redundancy, block_size=size, recovery_blocks=recovery, files=listed)

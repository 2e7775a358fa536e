"""``bundle --parity PERCENT`` or ``--parity one-stick``: PAR2 recovery files over the chunks, made in the bundle
folder after them, and with ``--stick-size`` placed on the sticks like chunks.

Block size: par2 splits the chunks into blocks and makes recovery blocks of the same size; damage is counted in
blocks (one flipped byte costs one block, a lost chunk all of its blocks: ``data_blocks``). par2's work is its pass
over the data (MD5 and CRC32 of every block) plus computing each recovery block from every source block, which
grows with data x recovery blocks: at par2's own default of 2000 source blocks, 10 % over 2 GB took par2 1.6 times
as long as at 256 from a cold cache, 3 times from a warm one (docs/benchmarks.md). ``block_size`` aims at
``TARGET_BLOCKS`` source blocks for the whole bundle (so the work grows with the bundle, not with its count of
blocks), never below 4 KiB: far under par2's limit of 32768 source blocks whatever the chunk size. The price is
coarser damage counting: 10 % mends 25 damaged places anywhere, or any run of damage up to a tenth of the bundle.

On sticks (``make_parity_on_sticks``): par2 is asked for a count of recovery blocks (``-c``) in volumes of one
size (``-u -n``). With a percent, the volumes are no bigger than the biggest chunk and go on the sticks with
the chunks, first-fit decreasing. With ``one-stick`` (S sticks, at least 3, for the chunks alone) there is one
volume per stick, each of ``c = ceil(D / (S - 1))`` blocks, D the most data blocks any one stick carries: a
lost stick k takes its D_k <= D data blocks and its own c recovery blocks, and leaves (S - 1) * c >= D >= D_k
recovery blocks on the others, which is what par2 needs to rebuild D_k blocks. Each stick keeps room for its
volume (``volume_bound``), so the chunks are planned again on sticks of less room until the volume fits
(S grows, and each volume shrinks with it).
"""

import re
from dataclasses import dataclass
from pathlib import Path

from amsrepomirror.bundle.format import PARITY_INDEX, PARITY_NAME_PATTERN, Chunk, Parity, StickPlan, ToolFile
from amsrepomirror.bundle.parity import INDEX_NAME, run_par2, tail
from amsrepomirror.errors import IntegrityError, UsageError
from amsrepomirror.pack.plan import pack_sticks
from amsrepomirror.util.hashing import sha256_file
from amsrepomirror.util.units import format_size

#: Source blocks par2 is asked for over the whole bundle (module docstring; par2's own default is 2000).
TARGET_BLOCKS = 256
#: ... but a chunk is at least this many blocks (the last one padded),
BLOCKS_PER_CHUNK = 16
#: ... unless that would make par2 count more source blocks than this for the data (half of par2's limit of 32768:
#: the padded last block of each chunk comes on top).
MAX_DATA_BLOCKS = 16384
#: The smallest block (bytes): a multiple of 4, as par2 requires.
MIN_BLOCK = 4096
#: ``--parity one-stick``: as much parity as losing any one whole stick needs, placed so that it survives that.
ONE_STICK = "one-stick"
#: Sticks one-stick parity needs at least (with 2, the parity would be a whole stick: carry a copy instead).
MIN_STICKS = 3
#: par2 create makes at most this many recovery files in one run (``-n``).
MAX_VOLUMES = 31
#: one-stick: the room a stick keeps for its recovery volume is tried in steps of this part of the stick.
KEPT_STEPS = 128
#: Bytes a recovery block costs in a volume besides its data: the packet header (64) and its exponent (4).
SLICE_OVERHEAD = 68
_PERCENT = re.compile(r"([1-9][0-9]?|100)%?")
_VOLUME = re.compile(r"\.vol([0-9]+)\+([0-9]+)\.par2$")


def parse_parity(value: str) -> int | str:
    """``--parity`` as a percent (1 to 100, e.g. 10%), or ``one-stick``; UsageError otherwise."""
    if value.strip() == ONE_STICK:
        return ONE_STICK
    match = _PERCENT.fullmatch(value.strip())
    if not match:
        raise UsageError(f"--parity {value!r}: give a percent of the chunks' size from 1% to 100%, e.g. --parity 10%, "
                         f"or {ONE_STICK} (with --stick-size: enough to lose any one stick)")
    return int(match.group(1))


def parity_setting(parity: Parity | None) -> str:
    """What ``--parity`` a bundle's parity record was made with ("" for none), as BundleArchive keeps it."""
    if parity is None:
        return ""
    return ONE_STICK if parity.one_stick else str(parity.redundancy)


def block_size(chunk_sizes: list[int]) -> int:
    """The par2 block size for chunks of these sizes (module docstring), a multiple of ``MIN_BLOCK``: about
    ``TARGET_BLOCKS`` over the bundle, but no more than a ``BLOCKS_PER_CHUNK``-th of the biggest chunk (each chunk's
    last block is padded, and damage is counted in whole blocks), unless the bundle is so big that par2 would count
    more than ``MAX_DATA_BLOCKS``."""
    total, biggest = sum(chunk_sizes), max(chunk_sizes, default=0)
    wanted = max(-(-total // MAX_DATA_BLOCKS), min(-(-total // TARGET_BLOCKS), -(-biggest // BLOCKS_PER_CHUNK)))
    return max(MIN_BLOCK, -(-wanted // MIN_BLOCK) * MIN_BLOCK)


def data_blocks(size: int, block: int) -> int:
    """The source blocks par2 counts for a file of ``size`` bytes (its last block is padded)."""
    return -(-size // block)


def index_bound(sizes: dict[str, int], block: int) -> int:
    """Most bytes of the index parity.par2 (and of one copy of the packets each volume repeats): the main packet,
    and per file its description (name included) and a checksum pair of 20 bytes per block."""
    return 1024 + sum(320 + len(name.encode()) + 20 * data_blocks(size, block) for name, size in sizes.items())


def volume_bound(blocks: int, block: int, index: int) -> int:
    """Most bytes of a recovery volume of ``blocks`` blocks: the blocks, and par2's copies of the index's
    packets (one more than the bits of ``blocks``)."""
    return blocks * (block + SLICE_OVERHEAD) + (blocks.bit_length() + 1) * index


@dataclass(frozen=True)
class StickParity:
    """Parity planned for sticks: ``recovery_blocks`` in ``volumes`` volumes of ``volume_bytes`` at most each,
    the chunks per stick (``chunks``), and per stick the numbers (0-based, in block order) of its volumes."""
    block: int
    recovery_blocks: int
    volumes: int
    volume_bytes: int
    index_bytes: int
    chunks: list[list[str]]
    placed: list[list[int]]


def plan_on_sticks(sizes: dict[str, int], parity: int | str, room: int) -> StickParity:
    """Where the recovery volumes go with the chunks of ``sizes`` on sticks of ``room`` bytes for them
    (module docstring); UsageError when one-stick has fewer than 3 sticks or nothing fits."""
    block = block_size(list(sizes.values()))
    index = index_bound(sizes, block)
    if room - index < max(sizes.values(), default=0):
        raise UsageError(f"the biggest chunk and the parity index (up to {format_size(index)}) do not fit on a stick: "
                         "use a smaller --chunk-size or larger sticks")
    if parity == ONE_STICK:
        return _one_stick(sizes, block, index, room - index)
    total = sum(data_blocks(size, block) for size in sizes.values())
    wanted = max(1, -(-total * int(parity) // 100))
    volumes = min(MAX_VOLUMES, max(1, -(-volume_bound(wanted, block, index) // max(sizes.values()))))
    per_volume = -(-wanted // volumes)
    bound = volume_bound(per_volume, block, index)
    names = {**sizes, **{f"\0{i}": bound for i in range(volumes)}}
    if bound > room - index:
        raise UsageError(f"a recovery volume of {format_size(bound)} does not fit on a stick beside the parity index: "
                         "use a lower --parity or larger sticks")
    sticks = pack_sticks(names, room - index)
    return StickParity(block, per_volume * volumes, volumes, bound, index,
                       [[n for n in s if n in sizes] for s in sticks],
                       [[int(n[1:]) for n in s if n not in sizes] for s in sticks])


def _one_stick(sizes: dict[str, int], block: int, index: int, room: int) -> StickParity:
    """One volume per stick, each of ceil(D / (S - 1)) blocks. The chunks are planned again on sticks that keep
    ``kept`` bytes for the volume, trying ``kept`` from small to large in steps of 1/``KEPT_STEPS`` of the room,
    until the volume that plan needs fits in what it keeps (module docstring)."""
    first = pack_sticks(sizes, room)
    if len(first) < MIN_STICKS:
        raise UsageError(f"--parity {ONE_STICK} needs at least {MIN_STICKS} sticks, and the chunks fill "
                         f"{len(first)}: with {len(first)} the parity would cost a whole stick (carry a second copy "
                         "instead), or use --parity PERCENT, or smaller sticks")
    too_many = 0
    for step in range(KEPT_STEPS):
        kept = room * step // KEPT_STEPS
        if room - kept < max(sizes.values()):
            break
        sticks = pack_sticks(sizes, room - kept)
        if len(sticks) > MAX_VOLUMES:
            too_many = len(sticks)
            continue
        most = max(sum(data_blocks(sizes[n], block) for n in s) for s in sticks)
        per_volume = -(-most // (len(sticks) - 1))
        need = volume_bound(per_volume, block, index)
        if need <= kept:
            return StickParity(block, per_volume * len(sticks), len(sticks), need, index, sticks,
                               [[i] for i in range(len(sticks))])
    if too_many:
        raise UsageError(f"--parity {ONE_STICK} places one recovery volume per stick, and par2 makes at most "
                         f"{MAX_VOLUMES}; the bundle needs {too_many} sticks with them: use larger sticks or "
                         "--parity PERCENT")
    raise UsageError(f"with {ONE_STICK} parity each stick keeps room for a recovery volume of up to half a stick's "
                     "chunks, and no plan leaves room beside it for the biggest chunk: use a smaller --chunk-size or "
                     "larger sticks")


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
    files = _create(folder, chunks, [f"-r{redundancy}", f"-s{size}"])
    recovery = sum(count for _, count in (_volume_blocks(n) for n in files if n != INDEX_NAME))
    return Parity(redundancy=redundancy, block_size=size, recovery_blocks=recovery, files=_listed(folder, files))


def make_parity_on_sticks(folder: Path, chunks: list[Chunk], parity: int | str, stick_size: int,
                          room: int) -> tuple[Parity, StickPlan]:
    """PAR2 files over ``chunks`` placed on sticks of ``stick_size`` bytes with ``room`` bytes for chunks and
    volumes (``plan_on_sticks``), and the stick plan that says where each chunk and volume goes."""
    folder = Path(folder)
    remove_parity_files(folder)
    sizes = {c.name: c.size for c in chunks}
    planned = plan_on_sticks(sizes, parity, room)
    files = _create(folder, chunks, [f"-s{planned.block}", f"-c{planned.recovery_blocks}", f"-n{planned.volumes}", "-u"])
    volumes = sorted((n for n in files if n != INDEX_NAME), key=lambda n: _volume_blocks(n)[0])
    if len(volumes) != planned.volumes:
        raise IntegrityError(f"par2 made {len(volumes)} recovery volumes, not the {planned.volumes} asked for")
    listed = _listed(folder, files)
    sticks = StickPlan(size=stick_size, chunks=planned.chunks,
                       parity=[[volumes[i] for i in numbers] for numbers in planned.placed])
    _check_placement(sticks, listed, sizes, planned, room, parity == ONE_STICK)
    total = sum(data_blocks(size, planned.block) for size in sizes.values())
    return (Parity(redundancy=-(-100 * planned.recovery_blocks // total) if parity == ONE_STICK else int(parity),
                   block_size=planned.block, recovery_blocks=planned.recovery_blocks, files=listed,
                   one_stick=parity == ONE_STICK), sticks)


def _check_placement(sticks: StickPlan, listed: list[ToolFile], sizes: dict[str, int], planned: StickParity,
                     room: int, one_stick: bool) -> None:
    """The volumes as par2 made them fit where they were planned, and (one-stick) the blocks left when any
    one stick is lost are enough to rebuild its chunks; IntegrityError otherwise (nothing is placed)."""
    size_of = {f.path: f.size for f in listed}
    blocks = {n: _volume_blocks(n)[1] for n in size_of if n != PARITY_INDEX}
    for number in range(1, len(sticks.chunks) + 1):
        used = sum(sizes[n] for n in sticks.chunks[number - 1]) + sum(size_of[n] for n in sticks.parity[number - 1])
        if used + size_of[PARITY_INDEX] > room:
            raise IntegrityError(f"{sticks.label(number)} would hold {used} bytes of chunks and parity, more than "
                                 f"the {room} planned: build the bundle again with larger sticks")
        lost = sum(data_blocks(sizes[n], planned.block) for n in sticks.chunks[number - 1])
        left = sum(blocks.values()) - sum(blocks[n] for n in sticks.parity[number - 1])
        if one_stick and left < lost:  # guard: one-stick-covers-each-stick
            raise IntegrityError(f"losing {sticks.label(number)} would leave {left} recovery blocks for its {lost} "
                                 "data blocks: the one-stick parity does not cover it")


def _create(folder: Path, chunks: list[Chunk], options: list[str]) -> list[str]:
    """par2 create with ``options`` over ``chunks`` in ``folder``; the PAR2 files it made, by name."""
    # largest first: par2 reads and hashes two files at a time, and a big chunk left to the end would be hashed
    # alone (a third slower from a cold cache on the 2 GB tree of docs/benchmarks.md); the PAR2 set is the same
    names = [c.name for c in sorted(chunks, key=lambda c: (-c.size, c.name))]
    done = run_par2(["create", "-q", "-q", *options, "--", INDEX_NAME, *names], folder)
    if done.returncode != 0:
        remove_parity_files(folder)
        raise IntegrityError(f"par2 create failed (exit {done.returncode}): {tail(done.stdout + done.stderr)}")
    return sorted(p.name for p in folder.iterdir() if PARITY_NAME_PATTERN.fullmatch(p.name))


def _listed(folder: Path, files: list[str]) -> list[ToolFile]:
    return [ToolFile(path=name, size=(folder / name).stat().st_size, sha256=sha256_file(folder / name))
            for name in files]


def _volume_blocks(name: str) -> tuple[int, int]:
    """(first block, block count) from a volume's name ``parity.volF+C.par2``; (0, 0) for the index."""
    match = _VOLUME.search(name)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)

"""``amsrepomirror plan``: the chunk plan of a bundle and which chunks go on which USB stick, written
as text; also what ``bundle --dry-run`` prints. Writes nothing."""

from collections.abc import Mapping, Sequence
from pathlib import Path

from amsrepomirror.bundle.format import COMPRESSIONS, MANIFEST_NAME, BundleManifest
from amsrepomirror.cli.options import add_command, option_or_setting, setting_default
from amsrepomirror.cli.output import print_stderr
from amsrepomirror.errors import MirrorError, UsageError
from amsrepomirror.online.listing import listing_url_for
from amsrepomirror.online.manifest import FileEntry, Manifest, union_manifest
from amsrepomirror.online.workspace import Workspace
from amsrepomirror.pack.build import SIDE_FILES_SLACK
from amsrepomirror.pack.delta_base import resolve_base, select_delta
from amsrepomirror.pack.parity import (
    ONE_STICK,
    block_size,
    data_blocks,
    index_bound,
    parse_parity,
    plan_on_sticks,
    volume_bound,
)
from amsrepomirror.pack.plan import ChunkSpec, chunk_plan, distinct_contents, pack_sticks
from amsrepomirror.util.units import counted, format_size, parse_size

FAT32_LIMIT = 4 * 1024**3 - 1
MIN_CHUNK = 64 * 1024


def add_parser(sub) -> None:
    p = add_command(sub, "plan", "show the chunk plan and which chunks go on which USB stick; writes nothing")
    p.add_argument("--mirror", required=True, type=Path, help="the mirror folder")
    p.add_argument("--version", action="append", default=[], metavar="AMS_VERSION",
                   help="AMS version, e.g. AMS2026.1, not the tool's (repeatable, to plan a bundle of several; "
                   "default: the mirror's only version)")
    p.add_argument("--chunk-size", metavar="SIZE",
                   help=f"largest chunk, e.g. 3900MiB ({setting_default('BundleArchive', 'chunk_size')})")
    p.add_argument("--compression", choices=COMPRESSIONS, help=setting_default("BundleArchive", "compression"))
    p.add_argument("--stick-size", metavar="SIZE", help="size of one USB stick, e.g. 64GB: print which chunks go on which "
                   "stick (default: no stick plan)")
    p.add_argument("--parity", metavar="PERCENT|one-stick",
                   help="show what bundle --parity adds: the recovery files' bytes and, with --stick-size, the stick "
                   "each goes on (default: none)")
    p.add_argument("--since", metavar="BASE",
                   help="what a delta since BASE (last, a bundle folder, its manifest.json, a receipt) carries; "
                   "for a bundle on the transfer disk also the chunks of a new full bundle to copy over it "
                   "(default: a full bundle)")
    p.set_defaults(func=run)


def run(args) -> int:
    chunk_size, compression = chunk_settings(args)
    parity = parity_option(args)
    if args.since and len(args.version) > 1:
        raise UsageError("--since works with one --version at a time (a delta of several versions is not supported)")
    if args.since:
        print_delta_plan(args.mirror, args.version[0] if args.version else None, chunk_size, compression,
                         args.stick_size, args.since, parity=parity)
        if base_manifest(Path(args.since)) is None:
            return 0
        print(f"\nor a full bundle over the one in {args.since}:")
    return print_plan(args.mirror, args.version, chunk_size, compression, args.stick_size, args.since, parity)


def parity_option(args) -> int | str:
    """``--parity`` parsed ("" without it); one-stick only goes with --stick-size."""
    parity = parse_parity(args.parity) if args.parity else ""
    if parity == ONE_STICK and not args.stick_size:
        raise UsageError(f"--parity {ONE_STICK} needs --stick-size: it is sized and placed so that any one stick may be "
                         "lost (without sticks, give a percent, e.g. --parity 10%)")
    return parity


def chunk_settings(args):
    """Chunk size and compression from the command line, else [BundleArchive]; checked up front."""
    chunk_size = option_or_setting(args.chunk_size, "BundleArchive", "chunk_size")
    compression = option_or_setting(args.compression, "BundleArchive", "compression")
    size = parse_size(chunk_size)
    if size < MIN_CHUNK:
        raise UsageError(f"chunk size {chunk_size} is too small: use at least 64KiB (3900MiB suits USB sticks)")
    if compression not in COMPRESSIONS:
        raise UsageError(f"unknown compression {compression!r} in [BundleArchive] (see amsrepomirror config): "
                         f"use one of {', '.join(COMPRESSIONS)}")
    if size > FAT32_LIMIT:
        print_stderr(f"note: chunks of {chunk_size} do not fit on FAT32 sticks (files must stay below 4 GiB)")
    if compression == "zstd":
        print_stderr("note: --compression zstd: stock 7-Zip cannot open zstd chunks (7-Zip-zstd and amsrepomirror "
                     "can); checking by hand with 7z needs copy or lzma2")
    return chunk_size, compression


def base_manifest(base: Path) -> BundleManifest | None:
    """The manifest of bundle ``base`` (its folder or its manifest.json), or None when BASE is not a
    bundle (``last``, a receipt): the chunks to copy over an earlier full bundle need one."""
    path = base / MANIFEST_NAME if base.is_dir() else base
    if not path.is_file():
        return None
    try:
        return BundleManifest.read(path)
    except MirrorError:
        return None


def _verified_manifest(mirror: Path, version: str | None) -> Manifest:
    """The mirror's verified manifest of ``version`` (or of its only version)."""
    paths = _verified_manifest_paths(mirror, [version] if version else [])
    return Manifest.read(paths[0])


def _verified_manifest_paths(mirror: Path, versions: Sequence[str]) -> list[Path]:
    ws = Workspace(mirror)
    if not versions:
        found = sorted(ws.state.glob("*.manifest.json"))
        if len(found) != 1:
            raise UsageError(f"{mirror}: give --version ({len(found)} verified versions found)")
        paths = found
    else:
        for version in versions:
            listing_url_for(version)  # refuses a malformed version before it names a file
        paths = [ws.manifest_path(version) for version in versions]
    for path in paths:
        if not path.exists():
            raise UsageError(f"{mirror} has no verified mirror manifest ({path.name}); run mirror first")
    return paths


def print_plan(mirror: Path, versions: Sequence[str], chunk_size: str, compression: str, stick_size: str | None,
               since: str | None = None, parity: int | str = "") -> int:
    """The full bundle's chunk plan; with ``since`` a bundle already on the transfer disk, the
    chunks of it to copy again (the others are the same bytes)."""
    manifests = [Manifest.read(path) for path in _verified_manifest_paths(mirror, versions)]
    manifest = manifests[0] if len(manifests) == 1 else union_manifest(manifests)
    base = base_manifest(Path(since)) if since else None
    carried, _ = distinct_contents(manifest.files)
    plan = chunk_plan(carried, parse_size(chunk_size), manifest.version, compression)
    stick = parse_size(stick_size) if stick_size else None
    print(describe_plan(plan, carried, stick, parity), end="")
    if base is not None:
        print(describe_since(plan, base, str(since)), end="")
    if stick and any(c.max_size > stick for c in plan):
        raise UsageError(f"chunks of {chunk_size} do not fit on sticks of {stick_size}: use a smaller --chunk-size")
    return 0


def check_parity_on_sticks(mirror: Path, versions: Sequence[str], chunk_size: str, compression: str, stick_size: str,
                           parity: int | str) -> None:
    """bundle --parity with --stick-size: refuse what the sticks cannot take (one-stick on fewer than 3 sticks, a
    volume that fits no stick) before anything is written, from the plan of the last verified mirror (none yet:
    the bundle checks it once its chunks are written)."""
    try:
        paths = _verified_manifest_paths(mirror, versions)
    except UsageError:
        return
    manifests = [Manifest.read(path) for path in paths]
    manifest = manifests[0] if len(manifests) == 1 else union_manifest(manifests)
    carried, _ = distinct_contents(manifest.files)
    plan = chunk_plan(carried, parse_size(chunk_size), manifest.version, compression)
    if plan:
        plan_on_sticks({s.name: s.max_size for s in plan}, parity, parse_size(stick_size) - SIDE_FILES_SLACK)


def print_delta_plan(mirror: Path, version: str | None, chunk_size: str, compression: str,
                     stick_size: str | None, since: str, dropped: Sequence[str] = (), parity: int | str = "") -> int:
    """What a delta since ``since`` would carry, reuse and remove, and its chunk plan; writes nothing."""
    manifest = _verified_manifest(mirror, version)
    base = resolve_base(since, Workspace(mirror), manifest.version, manifest.files, dropped)
    delta = select_delta(base, manifest.files, manifest.version)
    carried = sum(f.size for f in delta.carried)
    print(f"delta since {base.described} (tree {base.identity[:12]}): {len(delta.carried)} of {len(manifest.files)} "
          f"files new or changed, {format_size(carried)} ({carried} bytes) of {format_size(manifest.total_bytes)}; "
          f"{len(delta.reused)} reused from the base under another path; {len(delta.removed)} removed")
    reused = [f"{r.path} (from {r.source})" for r in delta.reused]
    for title, paths in (("carried", [f.path for f in delta.carried]), ("reused", reused), ("removed", delta.removed)):
        for path in paths:
            print(f"  {title}: {path}")
    carried, _ = distinct_contents(delta.carried)
    plan = chunk_plan(carried, parse_size(chunk_size), manifest.version, compression)
    stick = parse_size(stick_size) if stick_size else None
    print(describe_plan(plan, carried, stick, parity), end="")
    return 0


def describe_plan(plan: Sequence[ChunkSpec], files: Sequence[FileEntry], stick_size: int | None = None,
                  parity: int | str = "") -> str:
    """Human summary for the ``plan`` command: totals, each chunk, which chunks go on which stick, and what
    ``parity`` adds (its bytes, and with sticks the stick of each recovery volume)."""
    total = sum(f.size for f in files)
    lines = [f"{counted(len(files), 'file')}, {format_size(total)} ({total} bytes) in {counted(len(plan), 'chunk')}"]
    if plan:
        lines[0] += f" of at most {format_size(plan[0].chunk_size)}, compression {plan[0].compression}"
    split = {}
    for spec in plan:
        for p in spec.pieces:
            if p.is_part:
                split[p.path] = split.get(p.path, 0) + 1
    lines.append("Each chunk holds whole files" + (", and parts of the files too big for one chunk (unpack joins "
                                                   "the parts again)" if split else "") + ":")
    width = max((len(s.name) for s in plan), default=0)
    for spec in plan:
        parts = sum(1 for p in spec.pieces if p.is_part)
        what = counted(len(spec.pieces) - parts, "file") + (f" + {counted(parts, 'part')}" if parts else "")
        lines.append(f"  {spec.name:<{width}}  {what:<24}  {format_size(spec.payload):>10}  "
                     f"(file <= {format_size(spec.max_size)})")
    if split:
        lines.append(f"{counted(len(split), 'file')} {'is' if len(split) == 1 else 'are'} split into parts:")
        for path in sorted(split):
            lines.append(f"  {path}: {split[path]} parts")
    if stick_size is not None:
        sizes = {s.name: s.max_size for s in plan}
        too_big = [n for n in sorted(sizes) if sizes[n] + SIDE_FILES_SLACK > stick_size]  # as bundle plans them
        if too_big:
            lines.append(
                f"ERROR: {counted(len(too_big), 'chunk')} "
                f"{'does' if len(too_big) == 1 else 'do'} not fit on a stick of {format_size(stick_size)} with the "
                f"bundle's small files (e.g. {too_big[0]}, up to {format_size(max(sizes[n] for n in too_big))}; "
                f"{format_size(SIDE_FILES_SLACK)} kept for them): choose a chunk size below that"
            )
        elif parity and plan:
            lines += describe_parity_on_sticks(sizes, parity, stick_size)
        else:
            lines += describe_sticks(sizes, stick_size, SIDE_FILES_SLACK)
    elif parity and plan:
        lines.append(describe_parity({s.name: s.max_size for s in plan}, parity))
    return "\n".join(lines) + "\n"


def describe_parity(sizes: Mapping[str, int], percent: int) -> str:
    """What ``--parity PERCENT`` adds to a bundle without a stick plan (chunk sizes at most as planned)."""
    block = block_size(list(sizes.values()))
    blocks = sum(data_blocks(size, block) for size in sizes.values())
    wanted = max(1, -(-blocks * percent // 100))
    index = index_bound(dict(sizes), block)
    most = volume_bound(wanted, block, index) + index
    return (f"parity {percent}%: {wanted} recovery blocks of {format_size(block)} over the {blocks} blocks of the "
            f"chunks, at most {format_size(most)} ({most} bytes) more: parity.par2 and its recovery volumes, in the "
            "bundle folder beside the chunks")


def describe_parity_on_sticks(sizes: Mapping[str, int], parity: int | str, stick_size: int) -> list[str]:
    """What ``--parity`` adds on sticks: the recovery volumes (at most as planned) and the stick of each."""
    placed = plan_on_sticks(dict(sizes), parity, stick_size - SIDE_FILES_SLACK)
    names = [f"recovery volume {i + 1}" for i in range(placed.volumes)]
    total = placed.volumes * placed.volume_bytes + len(placed.chunks) * placed.index_bytes
    what = ("enough to rebuild any one whole stick, no stick carrying the volume it would need" if parity == ONE_STICK
            else f"{parity}% of the chunks' blocks")
    lines = [f"parity {parity if parity == ONE_STICK else f'{parity}%'}: {placed.recovery_blocks} recovery blocks of "
             f"{format_size(placed.block)} ({what}) in {counted(placed.volumes, 'recovery volume')} of at most "
             f"{format_size(placed.volume_bytes)}, and parity.par2 (at most {format_size(placed.index_bytes)}) on every "
             f"stick: at most {format_size(total)} ({total} bytes) more in all"]
    return lines + describe_sticks({**sizes, **{n: placed.volume_bytes for n in names}}, stick_size, SIDE_FILES_SLACK,
                                   plan=placed.chunks, parity=[[names[i] for i in p] for p in placed.placed])


def describe_sticks(sizes: Mapping[str, int], stick_size: int, extras: int = 0, tool: str = "amsrepomirror",
                    plan: Sequence[Sequence[str]] | None = None,
                    parity: Sequence[Sequence[str]] | None = None) -> list[str]:
    """Which chunks go on which stick (``sizes``: chunk name -> bytes; ``plan``: as a bundle records it, else
    planned here); every stick also carries every file that is not a chunk (manifest, sums, README, and the
    signature and tool/ of bundles that have them: ``extras`` bytes, when known), so each can be checked alone.
    ``parity``: the recovery volumes per stick (their sizes in ``sizes`` too); parity.par2 then goes on each."""
    sticks = plan if plan is not None else pack_sticks(sizes, stick_size - extras)
    lines = [f"{counted(len(sticks), 'stick')} of {format_size(stick_size)} needed (file system overhead not counted); "
             "copy every file that is not a chunk (manifest.json, SHA256SUMS, README.txt, and manifest.json.sig and "
             "tool/ when the bundle has them" + (", and parity.par2" if parity else "") + ") onto every stick, and "
             "check each one as it arrives "
             f"with: {tool} verify --partial STICK"]
    for i, names in enumerate(sticks, start=1):
        used = sum(sizes[n] for n in names)
        line = f"  stick {i}: {counted(len(names), 'chunk')}, {format_size(used)}: {', '.join(names)}"
        if parity:
            volumes = parity[i - 1]
            line += (f"; parity: {counted(len(volumes), 'recovery volume')}, "
                     f"{format_size(sum(sizes[n] for n in volumes))}" + (f": {', '.join(volumes)}" if volumes else ""))
        lines.append(line)
    return lines


def describe_since(plan: Sequence[ChunkSpec], base: BundleManifest, base_label: str) -> str:
    """What to carry when the transfer disk holds the bundle ``base``: the planned chunks it lacks
    (chunks are named by content, so a name it has is the same bytes), and its chunks no longer used."""
    have = {c.name: c for c in base.chunks}
    planned = {s.name for s in plan}
    new = [s for s in plan if s.name not in have]
    kept = [s for s in plan if s.name in have]
    gone = [c for c in base.chunks if c.name not in planned]
    new_bytes, kept_bytes = sum(s.max_size for s in new), sum(have[s.name].size for s in kept)
    lines = [f"since {base_label}: copy {len(new)} of {counted(len(plan), 'chunk')} (at most {format_size(new_bytes)}, "
             f"{new_bytes} bytes); {counted(len(kept), 'chunk')} ({format_size(kept_bytes)}) "
             f"{'is' if len(kept) == 1 else 'are'} unchanged; "
             f"{counted(len(gone), 'chunk')} of the base {'is' if len(gone) == 1 else 'are'} no longer used"]
    lines += [f"  copy    {s.name}  (file <= {format_size(s.max_size)})" for s in new]
    lines += [f"  remove  {c.name}" for c in gone]
    return "\n".join(lines) + "\n"

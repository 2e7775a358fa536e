"""The work of BundleArchive and WriteChunk: plan, write chunks (each with a done-marker), assemble the bundle.

A chunk's done-marker is a small JSON beside the chunk results (``.amsrepomirror-work/<key>/``,
key = mirror manifest + settings), written after the chunk is renamed into place. It also holds
the SHA-256 state of a split file whose next part is in the next chunk, so that chunk's writer
(another process) goes on hashing the file where this one stopped. The work folder is removed
once SHA256SUMS is written.

Chunks are named by content and written deterministically, so a bundle written into the folder of
the previous one keeps each chunk that folder already holds with the name, size and sha256 its
manifest.json lists (``reusable``), writes only the others, and removes the chunks no longer planned.
"""

import dataclasses
import hashlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from amsrepomirror import __version__
from amsrepomirror.bundle.format import (
    CHUNK_SUFFIX,
    MANIFEST_NAME,
    README_NAME,
    SUMS_NAME,
    BundleManifest,
    Chunk,
    ReusedFile,
    StickPlan,
    chunk_name_pattern,
)
from amsrepomirror.bundle.signature import SIGNATURE_NAME, drop_signature, key_fingerprint, sign_manifest
from amsrepomirror.bundle.sums import write_sums
from amsrepomirror.bundle.transfer_report import make_report, write_report
from amsrepomirror.errors import IntegrityError, UsageError
from amsrepomirror.online.manifest import FileEntry, Manifest
from amsrepomirror.online.workspace import Workspace
from amsrepomirror.pack.delta_base import Base, DeltaSelection, read_base, record_bundle, select_delta
from amsrepomirror.pack.parity import make_parity, make_parity_on_sticks, parse_parity
from amsrepomirror.pack.plan import ChunkSpec, build_bundle_manifest, chunk_plan, distinct_contents, pack_sticks
from amsrepomirror.pack.readme import readme_text
from amsrepomirror.pack.sevenzip import ChunkResult, ContentMismatch, write_chunk
from amsrepomirror.pack.tool import ToolSpec, write_tool
from amsrepomirror.util.fsutil import atomic_write_bytes, atomic_write_json, require_free_space
from amsrepomirror.util.hashing import sha256_file
from amsrepomirror.util.jsonread import read_json
from amsrepomirror.util.paths import is_plain_file_name
from amsrepomirror.util.timestamps import utc_now
from amsrepomirror.util.units import format_size, parse_size

WORK_DIR = ".amsrepomirror-work"
SEQUENCE_FILE = "bundle-sequence"  # in the mirror's state folder: how many bundles the mirror has written
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundlePlan:
    manifest: Manifest
    manifest_sha256: str
    chunks: list[ChunkSpec]
    chunk_size: int
    compression: str
    files: list[FileEntry]  # what the chunks hold: one file per distinct content of the mirror (or the delta)
    copies: list[ReusedFile]  # the other paths of those contents, placed by unpack
    base: Base | None = None  # a delta bundle's base tree
    delta: DeltaSelection | None = None  # what the delta carries, reuses and removes

    @property
    def key(self) -> str:
        base = self.base.identity + "".join(f"-{v}" for v in self.base.dropped) if self.base else ""
        return hashlib.sha256(f"{self.manifest_sha256}/{self.chunk_size}/{self.compression}/{base}".encode()).hexdigest()[:16]


@lru_cache(maxsize=4)
def plan_for(manifest_path: str, chunk_size: str, version: str, compression: str, base_path: str = "") -> BundlePlan:
    """The deterministic chunk plan of a verified mirror manifest (cached per process); with
    ``base_path`` (a snapshot from ``pack.delta_base.write_base``), of the delta against that base."""
    manifest = Manifest.read(Path(manifest_path))
    if manifest.version != version:
        raise IntegrityError(f"{manifest_path} is a manifest of {manifest.version}, not {version}")
    size = parse_size(chunk_size)
    base = read_base(base_path) if base_path else None
    delta = select_delta(base, manifest.files, version) if base else None
    files, copies = distinct_contents(delta.carried if delta else manifest.files)
    return BundlePlan(manifest, manifest.sha256(), chunk_plan(files, size, version, compression), size, compression,
                      files, copies, base, delta)


def _marker(out: str, plan: BundlePlan, index: int) -> Path:
    return Path(out) / WORK_DIR / plan.key / (plan.chunks[index].name + ".json")


def chunk_done(out: str, plan: BundlePlan, index: int) -> bool:
    """Chunk ``index`` of this plan is in place with the size its marker records."""
    try:
        recorded = read_json(_marker(out, plan, index), "chunk marker")
        return ((Path(out) / plan.chunks[index].name).stat().st_size == recorded["chunk"]["size"]
                and "sha256_state" in recorded)  # markers of older versions lack what the next chunk needs
    except (OSError, ValueError, KeyError):
        return False


def prepare_out(out: str, plan: BundlePlan) -> None:
    """Make the folder ready: no SHA256SUMS while chunks change, no temp leftovers, enough space."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SUMS_NAME).unlink(missing_ok=True)
    remove_partial_files(folder)
    pending = [c for i, c in enumerate(plan.chunks) if not chunk_done(out, plan, i)]
    require_free_space(folder, sum(c.max_size for c in pending), f"{len(pending)} chunk(s) of the bundle")


def check_unchanged(mirror: str, plan: BundlePlan, index: int) -> None:
    """Refuse up front when a file of this chunk is no longer the one verified (size, mtime, sha256).

    A cheap first look, before anything is written: a file replaced or touched since the mirror
    run. Bytes that changed under the same size and mtime only show when hashed: write_chunk
    does that as it packs them.
    """
    ws, entries = Workspace(mirror), plan.manifest.by_path()
    for path in sorted({piece.path for piece in plan.chunks[index].pieces}):
        record = ws.current_record(path)
        if record is None or record.sha256 != entries[path].sha256:
            raise IntegrityError(f"{path} changed in the mirror since it was verified; run mirror again, then bundle")


def continued_from(plan: BundlePlan, index: int) -> int | None:
    """The chunk holding the part before chunk ``index``'s first piece, when that piece continues a
    split file: its writer leaves the file's SHA-256 state, so it must be written first."""
    first = plan.chunks[index].pieces[0]
    if not first.is_part or first.offset == 0:
        return None
    return next(i for i in range(index - 1, -1, -1)
                if any(p.path == first.path and p.offset + p.size == first.offset for p in plan.chunks[i].pieces))


@lru_cache(maxsize=2)
def _manifest_in(path: str, stamp: tuple) -> BundleManifest | None:
    """The bundle manifest at ``path`` (as of ``stamp``: its mtime and size), or None if unreadable."""
    try:
        return BundleManifest.read(Path(path))
    except IntegrityError:
        return None


def reusable(out: str, plan: BundlePlan, index: int) -> ChunkResult | None:
    """Chunk ``index`` as the bundle already in ``out`` holds it, or None.

    Reused only when that bundle's manifest.json lists a chunk of this name (the same content key:
    members, their files' sha256, offsets and sizes) with the same pieces of the same files, and
    the file in ``out`` has the size and sha256 listed there: then it is the very chunk
    ``write_chunk`` would write, and the member hashes recorded when it was written still hold.
    """
    spec, entries = plan.chunks[index], plan.manifest.by_path()
    path = Path(out) / MANIFEST_NAME
    try:
        st = path.stat()
    except OSError:
        return None
    previous = _manifest_in(str(path), (st.st_mtime_ns, st.st_size))
    chunk = next((c for c in previous.chunks if c.name == spec.name), None) if previous else None
    if chunk is None or sorted(chunk.members) != spec.members:
        return None
    held = {p.member: (f, p) for f in previous.files for p in f.parts if p.chunk == spec.name}
    for piece in spec.pieces:
        f, part = held.get(piece.member, (None, None))
        if f is None or (f.path, f.sha256, part.offset, part.size) != (
                piece.path, entries[piece.path].sha256, piece.offset, piece.size):
            return None
    try:
        if (Path(out) / spec.name).stat().st_size != chunk.size or sha256_file(Path(out) / spec.name) != chunk.sha256:
            return None
    except OSError:
        return None
    return ChunkResult(chunk=chunk, piece_sha256={m: part.sha256 for m, (_, part) in held.items()})


def write_planned_chunk(mirror: str, out: str, plan: BundlePlan, index: int,
                        on_bytes: Callable[[int], None] | None = None) -> ChunkResult:
    """Write (or keep, when the bundle already holds it) chunk ``index``; ``on_bytes`` hears of
    every byte packed (a kept chunk's all at once), for a progress bar."""
    spec = plan.chunks[index]
    check_unchanged(mirror, plan, index)
    result = reusable(out, plan, index)
    if result is not None:
        log.info(f"bundle: kept {spec.name} from the bundle already in {out} ({result.chunk.size} bytes)")
        if on_bytes is not None:
            on_bytes(sum(piece.size for piece in spec.pieces))
    else:
        previous = continued_from(plan, index)
        resume = _read_result(out, plan, previous).sha256_state if previous is not None else None
        try:
            result = write_chunk(spec, Path(mirror), Path(out), plan.compression, plan.manifest.by_path(), resume=resume,
                                 on_bytes=on_bytes)
        except ContentMismatch as exc:
            mark_stale(mirror, out, plan, exc.path)
            raise IntegrityError(f"{exc}; it is marked stale: run mirror again, then bundle") from None
        log.info(f"bundle: wrote {spec.name} ({len(spec.pieces)} file(s) or parts, {result.chunk.size} bytes)")
    atomic_write_json(_marker(out, plan, index), {"chunk": asdict(result.chunk), "piece_sha256": result.piece_sha256,
                                                  "sha256_state": result.sha256_state})
    return result


def mark_stale(mirror: str, out: str, plan: BundlePlan, path: str) -> None:
    """``path`` rotted in the mirror: drop its record, so the next mirror run fetches it again (no
    --deep needed), and forget the chunks already written with its earlier parts."""
    Workspace(mirror).drop_record(path)
    for i, spec in enumerate(plan.chunks):
        if any(piece.path == path for piece in spec.pieces):
            _marker(out, plan, i).unlink(missing_ok=True)


def _read_result(out: str, plan: BundlePlan, index: int) -> ChunkResult:
    body = read_json(_marker(out, plan, index), "chunk marker")
    return ChunkResult(chunk=Chunk(**body["chunk"]), piece_sha256=body["piece_sha256"],
                       sha256_state=body["sha256_state"])


def next_sequence(ws: Workspace) -> int:
    """The mirror's bundle count, this bundle included (kept in its state folder): each bundle the
    mirror writes gets a higher one than the one before."""
    path = ws.state / SEQUENCE_FILE
    try:
        last = int(path.read_text().strip())
    except FileNotFoundError:
        last = 0
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"cannot read the bundle count {path}: {exc}; remove it only if no bundle of this "
                             "mirror is installed anywhere (unpack would need --allow-downgrade)") from None
    atomic_write_bytes(path, f"{last + 1}\n".encode())
    return last + 1


def assemble_bundle(mirror: str, out: str, plan: BundlePlan, tool: ToolSpec | None = None, sign_key: str = "",
                    stick_size: int = 0, parity: str = "") -> None:
    """Write the tool/ folder (``tool``: bundle --with-tool), manifest.json, README.txt and SHA256SUMS
    (with ``sign_key``, manifest.json.sig too; with ``stick_size``, the stick plan in the manifest); drop chunks
    of older plans and the work folder; with ``parity`` (--parity: a percent or one-stick), the PAR2 files over the
    chunks (on the sticks too, with ``stick_size``); keep a copy of the manifest in the mirror's bundle history."""
    results = [_read_result(out, plan, i) for i in range(len(plan.chunks))]
    manifest = build_bundle_manifest(plan.chunks, results, plan.files, version=plan.manifest.version,
                                     compression=plan.compression, chunk_size=plan.chunk_size,
                                     tool_version=__version__, created=utc_now(),
                                     mirror_manifest_sha256=plan.manifest_sha256)
    manifest.sequence = next_sequence(Workspace(mirror))
    manifest.versions = plan.manifest.all_versions
    manifest.version_paths = plan.manifest.version_paths
    manifest.copies = plan.copies
    manifest.lacking = plan.manifest.lacking  # a delta's mirror manifest is its target's
    manifest.tool = write_tool(Path(out), Path(out) / WORK_DIR, tool)
    if plan.delta:
        manifest = dataclasses.replace(manifest, base=plan.base.identity, base_created=plan.base.created,
                                       removed=plan.delta.removed, reused=plan.delta.reused, target=plan.delta.target,
                                       versions=plan.delta.versions, version_paths=plan.delta.version_paths,
                                       dropped=list(plan.base.dropped), **base_records(plan))
    manifest.signer = key_fingerprint(Path(sign_key)) if sign_key else ""  # for the transfer report
    if stick_size:
        manifest.sticks = stick_plan(manifest, stick_size)
    folder = Path(out)
    keep = {c.name for c in plan.chunks}
    ours = chunk_name_pattern(plan.manifest.version)
    for stale in folder.glob("*" + CHUNK_SUFFIX):
        if stale.name not in keep and ours.fullmatch(stale.name):
            stale.unlink()
    if stick_size and parity:  # the recovery volumes go on the sticks too (pack.parity)
        manifest.parity, manifest.sticks = make_parity_on_sticks(folder, manifest.chunks, parse_parity(parity),
                                                                 stick_size, stick_room(manifest, stick_size))
    else:
        manifest.parity = make_parity(folder, manifest.chunks, parse_parity(parity) if parity else 0)
    finish_bundle(folder, manifest, sign_key=Path(sign_key) if sign_key else None)
    shutil.rmtree(folder / WORK_DIR, ignore_errors=True)
    record_bundle(Workspace(mirror), manifest)


def base_records(plan: BundlePlan) -> dict:
    """A delta's ``removed_files`` and ``replaced_files``: the base's record of each path it removes or gives other
    bytes, so the transfer report lists them with their sizes."""
    at_path = {t.path: t for t in plan.base.tree}
    new = {t.path: t for t in plan.delta.target}
    return dict(removed_files=[at_path[p] for p in plan.delta.removed],
                replaced_files=[old for p, old in sorted(at_path.items()) if p in new and new[p].sha256 != old.sha256])


#: Room kept on every stick for the files that go on each besides its chunks, over their sizes as planned: the
#: sums and the signature, and what the stick plan itself adds to manifest.json and README.txt.
SIDE_FILES_SLACK = 256 * 1024


def side_files_size(manifest: BundleManifest) -> int:
    """Bytes of the files every stick carries besides its chunks (manifest.json, README.txt, SHA256SUMS, the
    signature, the transfer report, tool/), from the manifest before its stick plan is added, with room to spare."""
    report = sum(len(part) for part in make_report(manifest)) + 2 * 200 * len(manifest.chunks)  # with its stick plan
    return (len(manifest.to_json()) + len(readme_text(manifest).encode("utf-8")) + sum(t.size for t in manifest.tool)
            + 2 * 100 * (len(manifest.chunks) + len(manifest.tool)) + report + SIDE_FILES_SLACK)


def stick_room(manifest: BundleManifest, stick_size: int) -> int:
    """Bytes of a stick left for chunks (and recovery volumes) besides the side files every stick carries."""
    return stick_size - side_files_size(manifest)


def stick_plan(manifest: BundleManifest, stick_size: int) -> StickPlan:
    """Which chunks go on which stick of ``stick_size`` bytes, each stick also carrying every side file;
    UsageError when a chunk and the side files do not fit on one."""
    room = stick_room(manifest, stick_size)
    sizes = {c.name: c.size for c in manifest.chunks}
    too_big = sorted(name for name, size in sizes.items() if size > room)
    if too_big:
        raise UsageError(f"chunk {too_big[0]} and the bundle's small files do not fit on a stick of "
                         f"{format_size(stick_size)}: use a smaller --chunk-size")
    return StickPlan(size=stick_size, chunks=pack_sticks(sizes, room))


def remove_partial_files(bundle_dir: Path) -> list[Path]:
    """Delete temp files a killed run may have left (``.<name>.<random>.tmp``); return them."""
    removed = []
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        return removed
    for p in sorted(bundle_dir.iterdir()):
        if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
            p.unlink()
            removed.append(p)
    return removed


def finish_bundle(bundle_dir: Path, manifest: BundleManifest, *, rehash: bool = False,
                  sign_key: Path | None = None) -> dict[str, str]:
    """Write the transfer report, ``manifest.json`` (listing the report), with ``sign_key`` its signature
    ``manifest.json.sig``, ``README.txt`` and, last, ``SHA256SUMS`` (chunks, those files, the tool/ files).

    The report is made from the manifest without its ``report`` list (``bundle.transfer_report``): the far side
    makes it again from the manifest it carries; the signature covers the report through that list.

    Any old SHA256SUMS is removed first, so its presence always means a finished bundle. Each
    chunk must exist with its recorded size; its sha256 is taken from the manifest (computed from
    the finished file by ``write_chunk``) unless ``rehash``.
    """
    bundle_dir = Path(bundle_dir)
    sums_path = bundle_dir / SUMS_NAME
    if sums_path.exists():
        sums_path.unlink()
    for chunk in manifest.chunks:
        if not is_plain_file_name(chunk.name) or chunk.name in (MANIFEST_NAME, SUMS_NAME, README_NAME):
            raise IntegrityError(f"bad chunk name {chunk.name!r} in bundle manifest")
        path = bundle_dir / chunk.name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise IntegrityError(f"chunk {chunk.name} is missing from {bundle_dir}; re-run bundle") from None
        if size != chunk.size:
            raise IntegrityError(f"chunk {chunk.name} is {size} bytes, expected {chunk.size}; re-run bundle")
    readme = readme_text(manifest, signed=sign_key is not None).encode("utf-8")
    manifest.readme_sha256 = hashlib.sha256(readme).hexdigest()  # signed with the manifest
    manifest.report = write_report(bundle_dir, dataclasses.replace(manifest, report=[]))  # signed with the manifest
    manifest.write(bundle_dir / MANIFEST_NAME)
    drop_signature(bundle_dir)  # an older one signs another manifest
    if sign_key is not None:
        sign_manifest(bundle_dir, sign_key)
    atomic_write_bytes(bundle_dir / README_NAME, readme)
    listed = list(manifest.tool) + (manifest.parity.files if manifest.parity else [])
    known = {} if rehash else {**{c.name: c.sha256 for c in manifest.chunks}, **{t.path: t.sha256 for t in listed},
                               **{r.name: r.sha256 for r in manifest.report}}
    names = ([c.name for c in manifest.chunks] + [MANIFEST_NAME, README_NAME] + [t.path for t in listed]
             + [r.name for r in manifest.report])
    if sign_key is not None:
        names.append(SIGNATURE_NAME)
    return write_sums(bundle_dir, names, known)



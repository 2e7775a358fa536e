"""The work of BundleArchive and WriteChunk: plan, write chunks with resumable targets, finish.

A chunk's done-marker is a small JSON beside the chunk results (``.amsrepomirror-work/<key>/``,
key = mirror manifest + settings), written after the chunk is renamed into place. The work
folder is removed once SHA256SUMS is written.
"""

import hashlib
import json
import re
import shutil
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import List

import luigi

from . import __version__
from .bundle import CHUNK_SUFFIX, SUMS_NAME, Chunk, finish_bundle, remove_partial_files
from .chunking import ChunkSpec, build_bundle_manifest, chunk_plan
from .errors import IntegrityError
from .fsutil import atomic_write_json, require_free_space
from .manifest import Manifest
from .mirror import utc_now
from .sevenzip import ChunkResult, write_chunk
from .units import parse_size
from .workspace import Workspace

WORK_DIR = ".amsrepomirror-work"


@dataclass(frozen=True)
class BundlePlan:
    manifest: Manifest
    manifest_sha256: str
    chunks: List[ChunkSpec]
    chunk_size: int
    compression: str

    @property
    def key(self) -> str:
        return hashlib.sha256(f"{self.manifest_sha256}/{self.chunk_size}/{self.compression}".encode()).hexdigest()[:16]


@lru_cache(maxsize=4)
def plan_for(manifest_path: str, chunk_size: str, version: str, compression: str) -> BundlePlan:
    """The deterministic chunk plan of a verified mirror manifest (cached per process)."""
    manifest = Manifest.read(Path(manifest_path))
    if manifest.version != version:
        raise IntegrityError(f"{manifest_path} is a manifest of {manifest.version}, not {version}")
    size = parse_size(chunk_size)
    return BundlePlan(manifest, manifest.sha256(), chunk_plan(manifest.files, size, version, compression), size, compression)


def _marker(out: str, plan: BundlePlan, index: int) -> Path:
    return Path(out) / WORK_DIR / plan.key / (plan.chunks[index].name + ".json")


class ChunkTarget(luigi.Target):
    """Exists when chunk ``index`` of this plan is in place with the size its marker records."""

    def __init__(self, out: str, plan: BundlePlan, index: int):
        self.out, self.plan, self.index = out, plan, index

    def exists(self):
        try:
            recorded = json.loads(_marker(self.out, self.plan, self.index).read_text())
            return (Path(self.out) / self.plan.chunks[self.index].name).stat().st_size == recorded["chunk"]["size"]
        except (OSError, ValueError, KeyError):
            return False


def prepare_out(out: str, plan: BundlePlan) -> None:
    """Make the folder ready: no SHA256SUMS while chunks change, no temp leftovers, enough space."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SUMS_NAME).unlink(missing_ok=True)
    remove_partial_files(folder)
    pending = [c for i, c in enumerate(plan.chunks) if not ChunkTarget(out, plan, i).exists()]
    require_free_space(folder, sum(c.max_size for c in pending), f"{len(pending)} chunk(s) of the bundle")


def check_unchanged(mirror: str, plan: BundlePlan, index: int) -> None:
    """Refuse when a file of this chunk is no longer the one verified (size, mtime and recorded sha256).

    write_chunk hashes whole files as it packs them, but the parts of a split file land in
    different chunks, so only this check ties them to the verified file before they travel.
    """
    ws, entries = Workspace(mirror), plan.manifest.by_path()
    for path in sorted({piece.path for piece in plan.chunks[index].pieces}):
        record = ws.current_record(path)
        if record is None or record.sha256 != entries[path].sha256:
            raise IntegrityError(f"{path} changed in the mirror since it was verified; run mirror again, then bundle")


def write_planned_chunk(mirror: str, out: str, plan: BundlePlan, index: int) -> ChunkResult:
    spec = plan.chunks[index]
    check_unchanged(mirror, plan, index)
    # check_unchanged tied every file to its verified record: hash only the parts of split files.
    result = write_chunk(spec, Path(mirror), Path(out), plan.compression, plan.manifest.by_path(),
                         rehash_whole_files=False)
    atomic_write_json(_marker(out, plan, index), {"chunk": asdict(result.chunk), "piece_sha256": result.piece_sha256})
    print(f"bundle: wrote {spec.name} ({len(spec.pieces)} file(s) or parts, {result.chunk.size} bytes)", flush=True)
    return result


def _read_result(out: str, plan: BundlePlan, index: int) -> ChunkResult:
    body = json.loads(_marker(out, plan, index).read_text())
    return ChunkResult(chunk=Chunk(**body["chunk"]), piece_sha256=body["piece_sha256"])


def finish(out: str, plan: BundlePlan) -> None:
    """Write manifest.json, README.txt and SHA256SUMS; drop chunks of older plans and the work folder."""
    results = [_read_result(out, plan, i) for i in range(len(plan.chunks))]
    manifest = build_bundle_manifest(plan.chunks, results, plan.manifest.files, version=plan.manifest.version,
                                     compression=plan.compression, chunk_size=plan.chunk_size,
                                     tool_version=__version__, created=utc_now(),
                                     mirror_manifest_sha256=plan.manifest_sha256)
    folder = Path(out)
    keep = {c.name for c in plan.chunks}
    ours = re.compile(re.escape(plan.manifest.version) + r"-\d{4,}" + re.escape(CHUNK_SUFFIX))
    for stale in folder.glob("*" + CHUNK_SUFFIX):
        if stale.name not in keep and ours.fullmatch(stale.name):
            stale.unlink()
    finish_bundle(folder, manifest)
    shutil.rmtree(folder / WORK_DIR, ignore_errors=True)

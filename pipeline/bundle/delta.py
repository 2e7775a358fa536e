"""Delta bundles, online side: where the base tree comes from and what a delta carries.

A delta names its base by the base tree's identity (``placement.tree_identity``: sha256 of its
sorted path, size and sha256 list), whatever bundle or chunking that tree arrived in. BASE is
``last`` (the mirror's own history of bundle manifests it wrote, in ``<state>/bundles/``), a
bundle folder or its ``manifest.json`` (a full bundle's files, or a delta's target), or a
receipt carried back from the offline side. The resolved base is snapshotted in the history
folder, so every task of one bundle run plans against the same tree.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

from amsrepomirror.bundle.format import MANIFEST_NAME, SCHEMAS, BundleManifest, ReusedFile, TreeFile, copy_problems
from amsrepomirror.errors import IntegrityError, MirrorError, UsageError
from amsrepomirror.offline.placement import RECEIPT_SCHEMA, receipt_tree, tree_identity
from amsrepomirror.online.manifest import FileEntry
from amsrepomirror.online.workspace import Workspace
from amsrepomirror.util.fsutil import atomic_write_bytes, atomic_write_json
from amsrepomirror.util.jsonread import read_json
from amsrepomirror.util.paths import shown

HISTORY_DIR = "bundles"
HISTORY_SUFFIX = ".manifest.json"
#: Bundle manifests kept in the history (a receipt still bases a delta after its bundle dropped out).
HISTORY_KEEP = 12
BASE_SCHEMA = "amsrepomirror/delta-base/1"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Base:
    """The tree a delta applies to."""
    version: str
    tree: List[TreeFile]
    created: str    # when its bundle was made ("" when unknown)
    described: str  # where it came from, for messages

    @property
    def identity(self) -> str:
        return tree_identity(self.tree)


@dataclass(frozen=True)
class DeltaSelection:
    """What a delta holds: files to carry, files reused from the base, paths removed, the whole target."""
    carried: List[FileEntry]
    reused: List[ReusedFile]
    removed: List[str]
    target: List[TreeFile]


def target_of(manifest: BundleManifest) -> List[TreeFile]:
    """The whole tree a bundle installs: a full bundle's files and their copies, a delta's target."""
    return manifest.tree


def select_delta(base: Base, files: Sequence[FileEntry]) -> DeltaSelection:
    """Carry a file only when the base has no file with its bytes: unchanged paths are kept, and a
    file whose sha256 the base holds under another path (a rename) is reused from there."""
    at_path = {t.path: t for t in base.tree}
    with_bytes = {}
    for t in sorted(base.tree, key=lambda t: t.path):
        with_bytes.setdefault((t.size, t.sha256), t.path)
    carried, reused = [], []
    for f in sorted(files, key=lambda f: f.path):
        old = at_path.get(f.path)
        if old is not None and (old.size, old.sha256) == (f.size, f.sha256):
            continue
        source = with_bytes.get((f.size, f.sha256))
        if source is None:
            carried.append(f)
        else:
            reused.append(ReusedFile(f.path, f.size, f.sha256, source))
    paths = {f.path for f in files}
    return DeltaSelection(carried=carried, reused=reused, removed=sorted(set(at_path) - paths),
                          target=[TreeFile(f.path, f.size, f.sha256) for f in sorted(files, key=lambda f: f.path)])


def delta_problems(manifest: BundleManifest) -> List[str]:
    """How a delta's lists contradict each other (carried, copied and reused files must be in the
    target with their size and sha256, none in two of those lists, nothing removed that is a target)."""
    target = {t.path: (t.size, t.sha256) for t in manifest.target}
    problems = copy_problems(manifest)
    if len(target) != len(manifest.target):
        problems.append("its target lists a path twice")
    for f in list(manifest.files) + list(manifest.copies):
        if target.get(f.path) != (f.size, f.sha256):
            problems.append(f"carried file {shown(f.path)} is not in its target manifest with that size and sha256")
    carried = {f.path for f in manifest.files} | {c.path for c in manifest.copies}
    for r in manifest.reused:
        if target.get(r.path) != (r.size, r.sha256) or r.path in carried:
            problems.append(f"reused file {shown(r.path)} is not in its target manifest with that size and sha256, "
                            "or is also carried")
    for path in manifest.removed:
        if path in target:
            problems.append(f"{shown(path)} is both removed and in its target manifest")
    return problems


# --- the history of bundles a mirror wrote ---------------------------------------------------------

def _history(ws: Workspace) -> Path:
    return ws.state / HISTORY_DIR


def record_bundle(ws: Workspace, manifest: BundleManifest) -> None:
    """Keep a copy of a finished bundle's manifest (the newest HISTORY_KEEP), for ``--since last``."""
    folder = _history(ws)
    atomic_write_bytes(folder / f"{time.time_ns()}{HISTORY_SUFFIX}", manifest.to_json())
    for old in sorted(folder.glob("*" + HISTORY_SUFFIX), reverse=True)[HISTORY_KEEP:]:
        old.unlink()


def _last_bundle(ws: Workspace, version: str, current: str) -> Base:
    """The newest bundle of ``version`` whose tree differs from the mirror's now (``current``), so
    that running the same ``--since last`` again rebuilds the same delta; when every bundle holds
    the current tree, the newest one (an empty delta)."""
    same = None
    for path in sorted(_history(ws).glob("*" + HISTORY_SUFFIX), reverse=True):
        try:
            manifest = BundleManifest.read(path)
        except IntegrityError as exc:
            log.warning(f"bundle history: skipping {path.name}: {exc}")
            continue
        if manifest.version != version:
            continue
        base = Base(version, target_of(manifest), manifest.created, f"the bundle of {manifest.created or '?'}")
        if base.identity != current:
            return base
        same = same or base
    if same is None:
        raise UsageError(f"--since last: the mirror {ws.mirror} has no {version} bundle in its history yet; "
                         "write a full bundle first, or give a bundle folder, its manifest.json or a receipt")
    return same


def _read_base_file(path: Path) -> Base:
    """A bundle manifest (its target tree) or a receipt (its installed tree)."""
    try:
        body = read_json(path, "bundle manifest")
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"cannot read {path} ({exc}): it is damaged or cut short; carry it again") from None
    schema = body.get("schema") if isinstance(body, dict) else None
    if schema in SCHEMAS:
        manifest = BundleManifest.read(path)
        return Base(manifest.version, target_of(manifest), manifest.created, f"the bundle {path}")
    if schema == RECEIPT_SCHEMA:
        version = body.get("version")
        tree = [TreeFile(r.path, r.size, r.sha256) for r in receipt_tree(body, path)]
        return Base(str(version), tree, str(body.get("bundle_created", "")), f"the receipt {path}")
    raise UsageError(f"{path} is neither a bundle manifest nor a receipt: give last, a bundle folder, "
                     "its manifest.json, or a receipt (amsrepomirror receipt on the offline side)")


def resolve_base(since: str, ws: Workspace, version: str, current: str) -> Base:
    """The base ``since`` names, for a bundle of ``version`` whose mirror tree is ``current`` now."""
    if since == "last":
        return _last_bundle(ws, version, current)
    path = Path(since)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise UsageError(f"--since {since}: no such bundle folder, manifest.json or receipt "
                         "(give last, a bundle folder, its manifest.json, or a receipt)")
    base = _read_base_file(path)
    if base.version != version:
        raise UsageError(f"--since {since} is a base of {shown(base.version)}, not {version}: "
                         f"give a bundle or receipt of {version}")
    return base


def write_base(ws: Workspace, base: Base) -> Path:
    """Snapshot the resolved base in the history folder; the tasks plan against this file."""
    path = _history(ws) / f"base-{base.identity[:32]}.json"
    atomic_write_json(path, {"schema": BASE_SCHEMA, "version": base.version, "created": base.created,
                             "described": base.described, "tree": [[t.path, t.size, t.sha256] for t in base.tree]})
    return path


def read_base(path: str) -> Base:
    """A base snapshot written by :func:`write_base`."""
    try:
        body = read_json(Path(path), "delta base")
        if body.get("schema") != BASE_SCHEMA:
            raise ValueError(f"not a {BASE_SCHEMA}")
        return Base(body["version"], [TreeFile(*row) for row in body["tree"]], body["created"], body["described"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MirrorError(f"cannot read the delta base {path}: {exc}; run bundle --since again") from None

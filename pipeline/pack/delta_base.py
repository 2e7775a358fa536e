"""Delta bundles, online side: where the base tree comes from and what a delta carries.

A delta names its base by the base tree's identity (``bundle.receipt.tree_identity``: sha256 of its
sorted path, size and sha256 list), whatever bundle or chunking that tree arrived in. BASE is
``last`` (the mirror's own history of bundle manifests it wrote, in ``<state>/bundles/``), a
bundle folder or its ``manifest.json`` (a full bundle's files, or a delta's target), or a
receipt carried back from the offline side. The resolved base is snapshotted in the history
folder, so every task of one bundle run plans against the same tree.

A base may hold several AMS versions (a bundle of several, unpacked into one AMSHOME). A delta
updates one of them and keeps what every other version needs; it removes a version's files
only when asked to drop that version (``--drop-version``, recorded in its manifest as
``dropped``). :func:`removal_problems` is that rule, applied when the delta is selected here and
when it is unpacked (``offline.apply_delta``), against what the receipt says each version needs.
"""

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from amsrepomirror.bundle.delta_rules import removal_problems, target_of
from amsrepomirror.bundle.format import MANIFEST_NAME, SCHEMAS, BundleManifest, ReusedFile, TreeFile
from amsrepomirror.bundle.receipt import RECEIPT_SCHEMAS, receipt_tree, receipt_version_paths, tree_identity
from amsrepomirror.errors import IntegrityError, MirrorError, UsageError
from amsrepomirror.online.manifest import FileEntry
from amsrepomirror.online.workspace import Workspace
from amsrepomirror.util.fsutil import atomic_write_bytes, atomic_write_json
from amsrepomirror.util.jsonread import read_json
from amsrepomirror.util.paths import printable

HISTORY_DIR = "bundles"
HISTORY_SUFFIX = ".manifest.json"
#: Bundle manifests kept in the history (a receipt still bases a delta after its bundle dropped out).
HISTORY_KEEP = 12
BASE_SCHEMA = "amsrepomirror/delta-base/2"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Base:
    """The tree a delta applies to."""
    version: str
    tree: list[TreeFile]
    created: str    # when its bundle was made ("" when unknown)
    described: str  # where it came from, for messages
    versions: tuple[str, ...] = ()  # every version the tree holds (``version`` first; empty: ``version`` only)
    # The paths each of them needs; None when the base does not say (a receipt of an older tool).
    version_paths: Mapping[str, Iterable[str]] | None = None
    dropped: tuple[str, ...] = ()  # versions of it the delta removes on purpose (bundle --drop-version)

    @property
    def identity(self) -> str:
        return tree_identity(self.tree)

    @property
    def all_versions(self) -> list[str]:
        return list(self.versions) or [self.version]


@dataclass(frozen=True)
class DeltaSelection:
    """What a delta holds: files to carry, files reused from the base, paths removed, the whole target,
    the versions the target holds (the updated one first) and the paths each needs."""
    carried: list[FileEntry]
    reused: list[ReusedFile]
    removed: list[str]
    target: list[TreeFile]
    versions: list[str]
    version_paths: dict[str, list[str]]


def _kept_files(base: Base, version: str, files: Sequence[FileEntry]) -> dict[str, TreeFile]:
    """The base's files that the versions a delta of ``version`` does not update or drop still need:
    they stay as they are. UsageError when ``files`` (``version``'s tree now) has one of them with
    other bytes: one tree cannot serve both."""
    kept_versions = [v for v in base.all_versions if v != version and v not in base.dropped]
    held = base.version_paths or {}
    at_path = {t.path: t for t in base.tree}
    kept = {p: at_path[p] for v in kept_versions for p in held.get(v, ())}  # guard: delta-removal-online
    new = {f.path: f for f in files}
    for path, old in sorted(kept.items()):
        now = new.get(path)
        if now is not None and (now.size, now.sha256) != (old.size, old.sha256):
            needs = next(v for v in kept_versions if path in set(held[v]))
            raise UsageError(f"{printable(path)} has other bytes in {version} now than in {base.described}, where {needs} "
                             f"still needs it: make a full bundle of both versions (--version {version} --version "
                             f"{needs}), or drop {needs} with --drop-version {needs}")
    return kept


def select_delta(base: Base, files: Sequence[FileEntry], version: str) -> DeltaSelection:
    """Carry a file only when the base has no file with its bytes: unchanged paths are kept, and a
    file whose sha256 the base holds under another path (a rename) is reused from there. The files
    other versions of the base need are kept (:func:`_kept_files`); UsageError when the delta would
    still remove one of them (:func:`removal_problems`)."""
    at_path = {t.path: t for t in base.tree}
    kept = _kept_files(base, version, files)
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
    target = dict(kept)
    target.update((f.path, TreeFile(f.path, f.size, f.sha256)) for f in files)
    removed = sorted(set(at_path) - set(target))
    problems = removal_problems(base.version_paths, removed, {version, *base.dropped})
    if problems:
        raise UsageError(f"a delta of {version} since {base.described} {problems[0]}; nothing was written: "
                         "make a full bundle of every version the far side holds, once")
    held = base.version_paths or {}
    versions = [version] + [v for v in base.all_versions if v != version and v not in base.dropped]
    version_paths = {v: sorted(held.get(v, ())) for v in versions[1:]}
    version_paths[version] = sorted(f.path for f in files)
    return DeltaSelection(carried=carried, reused=reused, removed=removed,
                          target=[target[p] for p in sorted(target)], versions=versions, version_paths=version_paths)


# --- the history of bundles a mirror wrote ---------------------------------------------------------

def _history(ws: Workspace) -> Path:
    return ws.state / HISTORY_DIR


def record_bundle(ws: Workspace, manifest: BundleManifest) -> None:
    """Keep a copy of a finished bundle's manifest (the newest HISTORY_KEEP), for ``--since last``."""
    folder = _history(ws)
    atomic_write_bytes(folder / f"{time.time_ns()}{HISTORY_SUFFIX}", manifest.to_json())
    for old in sorted(folder.glob("*" + HISTORY_SUFFIX), reverse=True)[HISTORY_KEEP:]:
        old.unlink()


def base_of(manifest: BundleManifest, described: str) -> Base:
    """The tree a bundle installs, as a base: its versions and the paths each needs."""
    return Base(manifest.version, target_of(manifest), manifest.created, described, tuple(manifest.all_versions),
                manifest.paths_by_version)


def _last_bundle(ws: Workspace, version: str, files: Sequence[FileEntry], dropped: tuple[str, ...]) -> Base:
    """The newest bundle holding ``version`` (among the versions it holds) whose tree differs from the
    target a delta of ``files`` would make from it, so that running the same ``--since last`` again
    rebuilds the same delta; when every bundle holds that target, the newest one (an empty delta)."""
    same = None
    for path in sorted(_history(ws).glob("*" + HISTORY_SUFFIX), reverse=True):
        try:
            manifest = BundleManifest.read(path)
        except IntegrityError as exc:
            log.warning(f"bundle history: skipping {path.name}: {exc}")
            continue
        if version not in manifest.all_versions:
            continue
        base = _with_drops(base_of(manifest, f"the bundle of {manifest.created or '?'}"), version, dropped)
        try:
            target = select_delta(base, files, version).target
        except UsageError:
            if same is None:
                raise
            break  # an older bundle this delta cannot be made from: the newest one holds the target already
        if tree_identity(target) != base.identity:
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
        return base_of(BundleManifest.read(path), f"the bundle {path}")
    if schema in RECEIPT_SCHEMAS:
        version = str(body.get("version"))
        tree = receipt_tree(body, path)
        held = receipt_version_paths(body, path, tree)
        versions = tuple([version] + sorted(set(held or ()) - {version}))
        return Base(version, [TreeFile(r.path, r.size, r.sha256) for r in tree], str(body.get("bundle_created", "")),
                    f"the receipt {path}", versions, held)
    raise UsageError(f"{path} is neither a bundle manifest nor a receipt: give last, a bundle folder, "
                     "its manifest.json, or a receipt (amsrepomirror receipt on the offline side)")


def _with_drops(base: Base, version: str, dropped: tuple[str, ...]) -> Base:
    """``base`` with the versions a delta of ``version`` drops on purpose: each one held by the base, none
    ``version`` itself; UsageError otherwise."""
    for gone in dropped:
        if gone == version or gone not in base.all_versions:
            raise UsageError(f"--drop-version {gone}: {base.described} holds {' and '.join(base.all_versions)}; "
                             f"drop one of them other than {version}, the version this delta updates")
    return dataclasses.replace(base, dropped=tuple(sorted(set(dropped))))


def resolve_base(since: str, ws: Workspace, version: str, files: Sequence[FileEntry], dropped: Sequence[str] = ()) -> Base:
    """The base ``since`` names, for a delta of ``version`` whose mirror tree is ``files`` now, that
    drops the versions ``dropped`` of it."""
    if since == "last":
        return _last_bundle(ws, version, files, tuple(dropped))
    path = Path(since)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise UsageError(f"--since {since}: no such bundle folder, manifest.json or receipt "
                         "(give last, a bundle folder, its manifest.json, or a receipt)")
    base = _read_base_file(path)
    if version not in base.all_versions:
        raise UsageError(f"--since {since} is a base of {printable(' and '.join(base.all_versions))}, not {version}: "
                         f"give a bundle or receipt of {version}")
    return _with_drops(base, version, tuple(dropped))


def write_base(ws: Workspace, base: Base) -> Path:
    """Snapshot the resolved base in the history folder; the tasks plan against this file."""
    dropping = "".join(f"-drop-{v}" for v in base.dropped)
    path = _history(ws) / f"base-{base.identity[:32]}{dropping}.json"
    held = None if base.version_paths is None else {v: sorted(p) for v, p in base.version_paths.items()}
    atomic_write_json(path, {"schema": BASE_SCHEMA, "version": base.version, "created": base.created,
                             "described": base.described, "tree": [[t.path, t.size, t.sha256] for t in base.tree],
                             "versions": list(base.all_versions), "version_paths": held, "dropped": list(base.dropped)})
    return path


def read_base(path: str) -> Base:
    """A base snapshot written by :func:`write_base`."""
    try:
        body = read_json(Path(path), "delta base")
        if body.get("schema") != BASE_SCHEMA:
            raise ValueError(f"not a {BASE_SCHEMA}")
        return Base(body["version"], [TreeFile(*row) for row in body["tree"]], body["created"], body["described"],
                    tuple(body["versions"]), body["version_paths"], tuple(body["dropped"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MirrorError(f"cannot read the delta base {path}: {exc}; run bundle --since again") from None

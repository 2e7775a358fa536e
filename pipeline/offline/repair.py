"""``repair``: rebuild a bundle's damaged or missing chunks from its PAR2 files into another folder.

The bundle folder (a stick, perhaps write-protected) is only read: par2 repairs in place, so it runs on copies in
a scratch folder inside DIR (``SCRATCH``), never on links to the bundle's files. A rebuilt chunk counts only when
its sha256 is the one the (signed) manifest lists: parity data is outside input like the rest. DIR then holds a
complete bundle: the chunks, and every other file copied byte for byte (manifest.json as it was checked against
its signature), SHA256SUMS written last, so unpack takes it with the same --allowed-signers rules.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from amsrepomirror.bundle.format import MANIFEST_NAME, README_NAME, SUMS_NAME, BundleManifest
from amsrepomirror.bundle.parity import INDEX_NAME, run_par2, tail
from amsrepomirror.bundle.signature import SIGNATURE_NAME
from amsrepomirror.bundle.verify import side_paths, verify_bundle
from amsrepomirror.errors import IntegrityError, UsageError
from amsrepomirror.util.fsutil import atomic_write_bytes, fsync_dir, require_free_space
from amsrepomirror.util.hashing import sha256_file

#: The scratch folder inside DIR where par2 works; removed at the start of every run and at its end.
SCRATCH = ".amsrepomirror-repair"


@dataclass(frozen=True)
class Repaired:
    into: Path
    rebuilt: list[str]  # the chunks par2 rebuilt (each checked against the manifest)


def check_into(bundle: Path, into: Path, manifest: BundleManifest) -> None:
    """UsageError when DIR is the bundle folder, inside it or holds it, or holds files no bundle has (DIR may
    hold what an earlier, interrupted repair of a bundle left: its names are the bundle's)."""
    b, d = Path(bundle).resolve(), Path(into).resolve()
    if _same_folder(b, d):  # guard: repair-never-into-bundle
        raise UsageError(f"--into {into} must be a folder outside the bundle {bundle} (repair never writes to the bundle)")
    if not d.exists():
        return
    if not d.is_dir():
        raise UsageError(f"--into {into} is not a folder")
    ours = bundle_names(manifest) | {SCRATCH, "tool"}
    # a leftover of an interrupted write here (".NAME.….tmp", written beside a file, then renamed) is ours too
    strange = sorted(e.name for e in os.scandir(d) if e.name not in ours and not _leftover(e.name))
    if strange:
        raise UsageError(f"--into {into} holds {strange[0]}, which is no file of this bundle: choose an empty folder")
    if (d / "tool").is_symlink() or ((d / "tool").exists() and not (d / "tool").is_dir()):  # guard: repair-tool-folder
        raise UsageError(f"--into {into} holds tool, which is not a folder of its own (a link?): choose an empty folder "
                         "(repair never writes through a link)")
    linked = _linked_to_bundle(b, d, manifest)
    if linked:  # guard: repair-no-hard-links
        raise UsageError(f"--into {into} holds {linked}, which is the bundle's own file (a hard link): choose an empty "
                         "folder (repair never writes to the bundle)")


def _leftover(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _same_folder(bundle: Path, into: Path) -> bool:
    """Whether ``into`` (or a folder above it) is the bundle folder, or the bundle sits in ``into``, also under
    another name (a bind mount, a case-insensitive filesystem such as a FAT stick's): compared by device and inode,
    not by path."""
    def same(a: Path, b: Path) -> bool:
        try:
            return os.path.samefile(a, b)
        except OSError:  # not there (yet): not the same
            return False
    existing = [p for p in (into, *into.parents) if p.exists()]
    return any(same(p, bundle) for p in existing) or any(same(into, p) for p in (bundle, *bundle.parents))


def _linked_to_bundle(bundle: Path, into: Path, manifest: BundleManifest) -> str | None:
    """The first file in ``into`` that is one of the bundle's files under the same inode (``cp -al``), or None."""
    inodes = set()
    for name in bundle_names(manifest):
        try:
            st = os.stat(bundle / name)
        except OSError:
            continue
        inodes.add((st.st_dev, st.st_ino))
    for name in sorted(bundle_names(manifest)):
        try:
            st = os.stat(into / name, follow_symlinks=False)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in inodes:
            return name
    return None


def _copy_as_new(source: Path, dest: Path) -> None:
    """Copy ``source`` to ``dest`` as a new file (written beside it, then renamed over it): never through an inode
    ``dest`` may share with another file."""
    temporary = dest.with_name(f".{dest.name}.repair.tmp")
    temporary.unlink(missing_ok=True)
    shutil.copyfile(source, temporary)
    os.replace(temporary, dest)


def bundle_names(manifest: BundleManifest) -> set[str]:
    """Every file name of the bundle folder (tool/ files as paths)."""
    return ({c.name for c in manifest.chunks} | set(side_paths(manifest))
            | {MANIFEST_NAME, README_NAME, SUMS_NAME, SIGNATURE_NAME})


def repair_bundle(bundle: Path, into: Path, manifest_bytes: bytes, manifest: BundleManifest) -> Repaired:
    """Rebuild ``bundle``'s chunks in ``into`` (module docstring); IntegrityError when par2 cannot, or when a chunk
    it rebuilt is not the one the manifest lists (nothing is placed then)."""
    bundle, into = Path(bundle), Path(into)
    check_into(bundle, into, manifest)
    into.mkdir(parents=True, exist_ok=True)
    present = [n for n in bundle_names(manifest) if (bundle / n).is_file()]
    require_free_space(into, sum((bundle / n).stat().st_size for n in present) + sum(c.size for c in manifest.chunks),
                       "the repaired bundle and par2's scratch copies")
    (into / SUMS_NAME).unlink(missing_ok=True)  # its presence means a finished repair
    scratch = into / SCRATCH
    if scratch.is_symlink():  # the name is ours; a link there (into the bundle, say) is never followed
        scratch.unlink()
    shutil.rmtree(scratch, ignore_errors=True)  # an interrupted run's copies: start again from the bundle
    scratch.mkdir()
    try:
        rebuilt = _rebuild(bundle, scratch, manifest)
        _place(bundle, into, scratch, manifest, manifest_bytes)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = verify_bundle(into, test_archives=False, manifest_bytes=manifest_bytes)
    if not result.ok:
        raise IntegrityError(f"the repaired bundle in {into} does not verify: {result.message()}")
    return Repaired(into=into, rebuilt=rebuilt)


def _rebuild(bundle: Path, scratch: Path, manifest: BundleManifest) -> list[str]:
    """Copy the chunks and PAR2 files that are there into ``scratch``, run ``par2 repair`` on the copies, and
    check every chunk against the manifest; the chunks that were rebuilt."""
    damaged = []
    for c in manifest.chunks:
        source = bundle / c.name
        if source.is_file():
            shutil.copyfile(source, scratch / c.name)  # copies: par2 rewrites damaged files in place
        if not source.is_file() or source.stat().st_size != c.size or sha256_file(scratch / c.name) != c.sha256:
            damaged.append(c.name)
    for f in manifest.parity.files:
        source = bundle / f.path
        if source.is_file() and source.stat().st_size == f.size:
            shutil.copyfile(source, scratch / f.path)
            if sha256_file(scratch / f.path) != f.sha256:  # guard: repair-listed-recovery-only
                (scratch / f.path).unlink()  # not the file manifest.json lists: par2 never reads it
    done = run_par2(["repair", "-q", "--", INDEX_NAME], scratch)  # guard: repair-in-scratch
    if done.returncode != 0:
        raise IntegrityError(f"par2 could not rebuild {', '.join(damaged) or 'the chunks'} (exit {done.returncode}): "
                             f"{tail(done.stdout + done.stderr)}; carry those chunks again")
    for c in manifest.chunks:
        path = scratch / c.name
        if not path.is_file() or sha256_file(path) != c.sha256:  # guard: repair-rebuilt-chunk-check
            raise IntegrityError(f"{c.name} after par2's repair is not the chunk {MANIFEST_NAME} lists (sha256 differs): "
                                 "refused, nothing was placed; the recovery files may be tampered with: carry the "
                                 "damaged chunks again")
    return damaged


def _place(bundle: Path, into: Path, scratch: Path, manifest: BundleManifest, manifest_bytes: bytes) -> None:
    """Move the checked chunks from ``scratch`` into ``into``; copy the other files byte for byte (the manifest as
    it was checked); SHA256SUMS last."""
    for c in manifest.chunks:
        os.replace(scratch / c.name, into / c.name)
    atomic_write_bytes(into / MANIFEST_NAME, manifest_bytes)
    wanted = {t.path: t.sha256 for t in manifest.tool}
    if manifest.parity:
        wanted.update({f.path: f.sha256 for f in manifest.parity.files})
    wanted.update({r.name: r.sha256 for r in manifest.report})  # the transfer report
    for name in [README_NAME, SIGNATURE_NAME, *wanted]:
        copied = scratch / name  # a recovery file par2 read: already copied; checked again here, after par2 ran
        if name in wanted and copied.is_file() and sha256_file(copied) == wanted[name]:
            os.replace(copied, into / name)
            continue
        source = bundle / name
        if not source.is_file() or (name in wanted and sha256_file(source) != wanted[name]):
            continue  # a damaged recovery file or report is left out: the repaired bundle needs none
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        _copy_as_new(source, into / name)
    _copy_as_new(bundle / SUMS_NAME, into / SUMS_NAME)
    fsync_dir(into)

"""Unpack of a delta bundle: the new tree is built in staging from the installed repository plus
the delta, checked whole against the delta's target manifest, and swapped in like a full unpack.

Nothing in ``$AMSHOME/repository`` is ever written: unchanged and reused files are hard-linked
into staging (copied where a link is refused), carried files are extracted there. Every refusal
(another base, a damaged receipt or delta, an installed file the delta relies on that changed
since the receipt) happens before staging exists.

What is trusted how: carried files by sha256 as they are extracted (like a full unpack); files
taken from the installed tree by the sha256 the receipt records, each hashed once before it is
linked (:func:`amsrepomirror.offline.installed.installed_file_problem`), and its link in staging
checked to be the very file that was hashed; copies are hashed as they are copied. With
``trust_installed`` (an admin's choice, recorded in the new receipt) a file whose size, mtime and
inode are still the receipt's is taken without hashing; any other is hashed all the same.
"""

import errno
import hashlib
import io
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from amsrepomirror.bundle.delta_rules import delta_problems, removal_problems
from amsrepomirror.bundle.format import BundleManifest, ReusedFile
from amsrepomirror.bundle.receipt import InstalledFile, make_receipt, receipt_tree, receipt_version_paths, tree_identity
from amsrepomirror.bundle.verify import require_intact, verify_bundle
from amsrepomirror.errors import IntegrityError, UsageError
from amsrepomirror.offline import extract, placement
from amsrepomirror.offline.extract import open_regular
from amsrepomirror.offline.installed import Identity, installed_file_problem
from amsrepomirror.util.paths import printable
from amsrepomirror.util.units import counted

log = logging.getLogger(__name__)

#: A hard link refused for these reasons is replaced by a copy (other filesystem, protected_hardlinks,
#: too many links, a filesystem without hard links).
LINK_REFUSED = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
COPY_BLOCK = 8 * 1024 * 1024


def _short(identity: str | None) -> str:
    return (identity or "?")[:12]


def installed_tree(home: Path, manifest: BundleManifest, bundle_dir: Path) -> tuple[dict, list[InstalledFile]] | None:
    """AMSHOME's receipt and the tree it records when that is the delta's base; None when it already
    is the delta's target. UsageError (naming the base needed and what is installed) otherwise."""
    needs = f"the tree {_short(manifest.base)} (the bundle of {manifest.base_created or '?'})"
    try:
        receipt = placement.read_receipt(home)
        if receipt is None:
            raise UsageError(f"delta {bundle_dir} applies to {needs}, but AMSHOME {home} has no receipt "
                             "(nothing unpacked by amsrepomirror): unpack a full bundle first")
        tree = receipt_tree(receipt, home / placement.RECEIPT)
    except IntegrityError as exc:
        raise IntegrityError(f"{exc}; a delta cannot be applied: unpack a full bundle with --reinstall") from None
    installed = receipt["tree_sha256"]
    if installed == tree_identity(manifest.target):
        return None
    if installed != manifest.base:  # guard: delta-base-check
        raise UsageError(f"delta {bundle_dir} applies to {needs}, but {home / placement.REPOSITORY} holds the tree "
                         f"{_short(installed)} (the bundle of {receipt.get('bundle_created') or '?'}, installed "
                         f"{receipt.get('installed', '?')}): carry the delta made from that tree, or a full bundle")
    return receipt, tree


def _what(manifest: BundleManifest, bundle_dir: Path) -> str:
    return f"delta {bundle_dir} of {manifest.version}" if manifest.is_delta else f"bundle {bundle_dir}"


def refuse_drop_versions(home: Path, manifest: BundleManifest, bundle_dir: Path, drop_versions: Sequence[str],
                         installed: set[str] | None) -> None:
    """UsageError for an ``unpack --drop-version`` this bundle cannot carry out, so that a typo or a
    wrong version is never silently ignored: a version the bundle holds (it installs it), one a
    delta does not drop, or, when ``installed`` (the versions the receipt records) is known, one
    that is not installed. ``installed`` None: not checked (a receipt that does not say, or the
    bundle is installed already, so rerunning the same command stays nothing to do)."""
    what = _what(manifest, bundle_dir)
    for version in sorted(set(drop_versions)):
        if version in manifest.all_versions:
            raise UsageError(f"--drop-version {version}: {what} holds {version} and installs it; nothing was changed: "
                             f"leave out --drop-version {version} (a version goes with a bundle that does not hold it)")
        if manifest.is_delta and version not in manifest.dropped:
            raise UsageError(f"--drop-version {version}: {what} does not drop {version}; nothing was changed: to "
                             f"remove it, make a delta with bundle --since ... --drop-version {version}")
        if installed is not None and version not in installed:
            raise UsageError(f"--drop-version {version}: {version} is not installed in {home / placement.REPOSITORY} "
                             f"(installed there: {', '.join(sorted(installed)) or 'none'}); nothing was changed: "
                             "check the version's spelling")


def refuse_removals(home: Path, receipt: dict, tree: Sequence[InstalledFile], manifest: BundleManifest,
                    bundle_dir: Path, drop_versions: Sequence[str]) -> dict[str, set[str]] | None:
    """UsageError unless :func:`bundle.delta_rules.removal_problems` allows what the bundle removes (every
    installed path not in its tree, whatever a delta's ``removed`` list says) against what the receipt
    says each installed version needs. An installed version goes only when the admin says so
    (``drop_versions``) and, for a delta, the delta drops it too; a full bundle replaces the versions
    it holds. Returns the paths each version needs afterwards (None: not known)."""
    held = receipt_version_paths(receipt, home / placement.RECEIPT, tree)
    refuse_drop_versions(home, manifest, bundle_dir, drop_versions, None if held is None else set(held))
    confirmed = set(drop_versions)
    said = set(manifest.dropped) if manifest.is_delta else confirmed
    what = _what(manifest, bundle_dir)
    for version in sorted(said - confirmed):
        raise UsageError(f"{what} drops {version}: it removes {version} and the files only it needs from "
                         f"{home / placement.REPOSITORY}; nothing was changed: to accept that, run unpack again "
                         f"with --drop-version {version}")
    if held is None and not manifest.is_delta:
        return manifest.paths_by_version  # nothing known to keep: a full bundle is the way to a complete record
    replaced = {manifest.version} if manifest.is_delta else set(manifest.all_versions)
    problems = removal_problems(held, {r.path for r in tree} - {t.path for t in manifest.tree}, replaced | said)
    if problems:
        way = ("unpack a full bundle of every version installed here once (bundle --version ... --version ...); "
               "its receipt records what each version needs" if held is None else
               "make the delta again with this amsrepomirror from this AMSHOME (bundle --since last, or --since "
               "the file amsrepomirror receipt writes here: every other version is kept), or drop a version on "
               "purpose with bundle --drop-version VERSION and unpack --drop-version VERSION" if manifest.is_delta else
               "unpack a bundle of every version installed here (bundle --version ... --version ...), or remove "
               "the other version on purpose with unpack --drop-version VERSION")
        raise UsageError(f"{what} {problems[0]}; nothing was changed: {way}")
    if held is None or not manifest.is_delta:
        return None if held is None else manifest.paths_by_version
    after = {v: paths for v, paths in held.items() if v not in replaced | said}
    after[manifest.version] = (manifest.paths_by_version or {}).get(manifest.version) or {t.path for t in manifest.target}
    return after


def _sources(manifest: BundleManifest, installed: dict[str, InstalledFile]) -> dict[str, InstalledFile]:
    """target path -> the installed file it is taken from, for every target file the delta does not
    carry (nor places as a copy of a carried file)."""
    carried = {f.path for f in manifest.files} | {c.path for c in manifest.copies}
    reused = {r.path: r.source for r in manifest.reused}
    sources = {}
    for t in manifest.target:
        if t.path in carried:
            continue
        source = installed.get(reused.get(t.path, t.path))
        if source is None or (source.size, source.sha256) != (t.size, t.sha256):
            raise IntegrityError(f"the delta's target manifest does not match its files: {printable(t.path)} is neither "
                                 "carried nor in its base with that size and sha256; carry the delta again")
        sources[t.path] = source
    return sources


def _changed(path: Path, identity: Identity) -> bool:
    """``path`` is not the regular file of ``identity`` (inode, size, mtime) any more."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    return not stat.S_ISREG(st.st_mode) or (st.st_ino, st.st_size, st.st_mtime_ns) != identity


def check_installed(repo: Path, rows: Sequence[InstalledFile], trust_installed: bool = False) -> dict[str, Identity]:
    """Every installed file the delta relies on holds the bytes the receipt names (hashed; with
    ``trust_installed``, unless size, mtime and inode are still the receipt's); IntegrityError
    naming the first that does not. Returns path -> the identity each file had when checked."""
    seen = {}
    for row in sorted(set(rows), key=lambda r: r.path):
        check = installed_file_problem(repo.joinpath(*row.path.split("/")), row, trust_metadata=trust_installed)
        if check.problem:  # guard: installed-reuse-refuse
            raise IntegrityError(
                f"{repo} no longer matches its receipt: {printable(row.path)}, which the delta relies on: "
                f"{check.problem}; nothing was changed: unpack a full bundle with --reinstall")
        seen[row.path] = check.identity
    return seen


def _copy(src: Path, dst: Path, row, mismatch: str) -> None:
    """Copy ``src`` to a new file ``dst``, hashing on the way: it must have ``row``'s size and sha256
    (``mismatch``: the message when it has not)."""
    hasher, size = hashlib.sha256(), 0
    view = memoryview(bytearray(COPY_BLOCK))
    sfd = open_regular(src)
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, extract.FILE_MODE)
        try:
            raw = io.FileIO(sfd, "rb", closefd=False)
            while True:
                n = raw.readinto(view)
                if not n:
                    break
                hasher.update(view[:n])
                extract._write_all(dfd, view[:n])
                size += n
        finally:
            os.close(dfd)
    except OSError as exc:
        raise extract._os_error(exc, f"copying {row.path} into staging") from exc
    finally:
        os.close(sfd)
    if (size, hasher.hexdigest()) != (row.size, row.sha256):
        raise IntegrityError(mismatch)


def link_or_copy(src: Path, dst: Path, row: InstalledFile, identity: Identity | None = None) -> bool:
    """Put the installed file ``src`` (recorded as ``row``) at ``dst``: a hard link, checked to be
    the very file :func:`check_installed` saw (``identity``; default: the receipt's), or a hashed
    copy where links are refused. True when linked."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in LINK_REFUSED:
            raise extract._os_error(exc, f"linking {row.path} into staging") from exc
        _copy(src, dst, row, f"installed {printable(row.path)} does not have the sha256 its receipt records; "
                             "nothing was changed: unpack a full bundle with --reinstall")
        return False
    if _changed(dst, identity or (row.ino, row.size, row.mtime_ns)):  # replaced between the check and the link
        raise IntegrityError(f"installed {printable(row.path)} changed while the delta was applied; nothing was changed")
    return True


def place_copies(staging: Path, copies: Sequence[ReusedFile]) -> int:
    """Put each copy (identical bytes carried once, see ``BundleManifest.copies``) at its path in
    ``staging``: a hard link to its source, already extracted and checked there, or a hashed copy
    where links are refused. Returns how many were linked."""
    linked = 0
    for copy in sorted(copies, key=lambda c: c.path):
        src = staging.joinpath(*copy.source.split("/"))
        parent, _, name = copy.path.rpartition("/")
        dst = extract.safe_makedirs(staging, parent) / name
        try:
            os.link(src, dst, follow_symlinks=False)
            linked += 1
        except OSError as exc:
            if exc.errno not in LINK_REFUSED:
                raise extract._os_error(exc, f"linking {copy.path} in staging") from exc
            _copy(src, dst, copy, f"{printable(copy.source)}, copied to {printable(copy.path)}, does not have the size and "
                                  "sha256 the bundle lists; nothing was placed")
    if copies:
        log.info(f"unpack: {counted(len(copies), 'file')} with the bytes of another path placed ({linked} hard-linked)")
    return linked


def _check_chunks(bundle_dir: Path, home: Path, manifest: BundleManifest, manifest_bytes: bytes,
                  version_files: Sequence[str]) -> None:
    """Every chunk of the delta against ``manifest_bytes`` and SHA256SUMS, the installed AMS version,
    and the disk space staging needs."""
    log.info(f"unpack: checking every chunk of {bundle_dir} against manifest.json and SHA256SUMS")
    for warning in require_intact(verify_bundle(bundle_dir, test_archives=False, manifest_bytes=manifest_bytes)).warnings:
        log.warning(f"unpack: {warning}")
    log.info(f"unpack: {placement.check_version(manifest.all_versions, home, version_files)}")
    placement.require_space(home, extract.space_needed(manifest.files, in_place=True))


def _link_installed(repo: Path, staging: Path, sources: dict[str, InstalledFile], seen: dict[str, Identity]) -> None:
    """Put each installed file the delta reuses (``sources``: target path -> installed file) at its
    target path in staging: hard-linked, or copied where links are refused."""
    linked = 0
    for path, row in sorted(sources.items()):
        parent, _, name = path.rpartition("/")
        linked += link_or_copy(repo.joinpath(*row.path.split("/")), extract.safe_makedirs(staging, parent) / name, row,
                               seen[row.path])
    log.info(f"unpack: {linked} unchanged files hard-linked, {len(sources) - linked} copied")


def _add_carried(bundle_dir: Path, staging: Path, manifest: BundleManifest) -> None:
    """Extract the delta's chunks into staging (beside the linked files), finish split files and
    copies, and check the whole tree against the delta's target manifest."""
    expected = {p.member: (p.size, p.sha256) for f in manifest.files for p in f.parts}
    for i, chunk in enumerate(manifest.chunks, start=1):
        log.info(f"unpack: extracting {chunk.name} ({i}/{len(manifest.chunks)})")
        extract.extract_chunk(bundle_dir / chunk.name, chunk, staging, expected, files=manifest.files)
    extract.reassemble(staging, manifest.files)
    place_copies(staging, manifest.copies)
    log.info(f"unpack: verifying {counted(len(manifest.target), 'file')} against the delta's target manifest")
    extract.verify_tree(staging, manifest.target, check_hashes=False)
    for index in (f"{version}.yml" for version in manifest.all_versions):
        if not (staging / index).is_file():
            raise IntegrityError(f"the delta's tree lacks {index}, the index amspackages needs; nothing was placed")


def unpack_delta(bundle_dir: Path, home: Path, manifest: BundleManifest, manifest_bytes: bytes, *,
                 keep_previous: bool, deep: bool, version_files: Sequence[str],
                 trust_installed: bool = False, drop_versions: Sequence[str] = ()) -> None:
    """Build the delta's target tree in staging from the installed tree and the delta; swap it in.

    Every installed file it reuses is hashed first; ``trust_installed`` (unless ``deep``) takes
    those whose size, mtime and inode are still the receipt's without hashing, and the receipt says so.

    ``manifest`` is parsed from ``manifest_bytes``, the delta's manifest.json as unpack read (and
    signature-checked) it: the chunks are checked against these bytes and the receipt names them.
    ``drop_versions``: installed versions the delta may remove (it must say it drops them)."""
    problems = delta_problems(manifest)
    if problems:
        raise IntegrityError(f"delta {bundle_dir} contradicts itself: {problems[0]}; carry it again")
    installed = installed_tree(home, manifest, bundle_dir)
    repo = home / placement.REPOSITORY
    if installed is None:
        changes = extract.tree_problems(repo, manifest.target, check_hashes=False)
        if changes:
            raise IntegrityError(f"{repo} should hold this delta's tree but differs from it ({changes[0]}); "
                                 "unpack a full bundle with --reinstall")
        log.info(f"unpack: {repo} already holds the tree this delta makes; nothing to do")
        return
    receipt, tree = installed
    version_paths = refuse_removals(home, receipt, tree, manifest, bundle_dir, drop_versions)
    sources = _sources(manifest, {r.path: r for r in tree})
    trust = trust_installed and not deep  # guard: installed-reuse-default
    log.info(f"unpack: checking the {len(set(sources.values()))} installed files the delta relies on"
             f"{' (size, mtime, inode from the receipt: --trust-installed)' if trust else ' (hashing them)'}")
    seen = check_installed(repo, list(sources.values()), trust)
    _check_chunks(bundle_dir, home, manifest, manifest_bytes, version_files)
    with placement.new_staging(home) as staging:
        _link_installed(repo, staging, sources, seen)
        _add_carried(bundle_dir, staging, manifest)
        receipt = make_receipt(hashlib.sha256(manifest_bytes).hexdigest(), manifest.version, str(bundle_dir.absolute()),
                               tree=placement.installed_files(staging, manifest.target),
                               bundle_created=manifest.created, bundle_sequence=manifest.sequence,
                               lacking=manifest.lacking, trust_installed=trust, version_paths=version_paths)
        log.info("unpack: writing the new tree to disk (sync)")
        extract.sync_tree(staging)
        how = placement.swap_into_place(home, staging, keep_previous=keep_previous, receipt=receipt)
    log.info(f"unpack: {repo} now holds {manifest.version} after the delta ({how}): "
             f"{len(manifest.files)} carried, {len(manifest.reused)} reused, {len(manifest.removed)} removed")

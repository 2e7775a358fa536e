"""The work of Unpack: check every chunk, extract into staging inside AMSHOME, verify, swap in.

Nothing is extracted before every chunk's sha256 matches; nothing is placed before every file's
size and sha256 match the bundle manifest, ``<VERSION>.yml`` is present and the new tree is on disk
(synced).

After the chunk check, each byte is hashed once more, as it is written: every member (a whole
file or a part of a split file) against the manifest; a split file is then hashed once as a whole
(the end-to-end check of what was joined). Nothing is read back and hashed again after that.
"""

import hashlib
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from amsrepomirror.bundle.delta_rules import target_of
from amsrepomirror.bundle.format import MANIFEST_NAME, BundleManifest, read_manifest_bytes
from amsrepomirror.bundle.receipt import make_receipt, receipt_tree, tree_identity
from amsrepomirror.bundle.trust import Trust, resolve_trust, signature_verdict
from amsrepomirror.bundle.verify import require_intact, verify_bundle
from amsrepomirror.errors import IntegrityError, UsageError
from amsrepomirror.offline import extract, placement
from amsrepomirror.offline.apply_delta import place_copies, refuse_drop_versions, refuse_removals, unpack_delta
from amsrepomirror.util.progress import ByteProgress
from amsrepomirror.util.units import counted

log = logging.getLogger(__name__)


#: At most this many differences of an installed tree are listed, one line each.
MAX_CHANGES_LISTED = 20


def installed_changes(amshome, manifest: BundleManifest, manifest_sha256: str, by_tree: bool = False) -> list[str] | None:
    """How $AMSHOME/repository differs from the bundle of ``manifest`` (the sha256 of its
    manifest.json: ``manifest_sha256``) (missing, extra, other size, not a plain file; one line
    each) when AMSHOME's receipt says it holds the bundle; None when it does not. ``by_tree``: a delta
    counts as held when the receipt's tree is the one it makes (only after its unpack checked it).

    Names, sizes and file types only: re-hashing the whole tree on every rerun would cost as much
    as unpacking again, so a same-size change is undone only by ``--reinstall``.
    """
    try:
        receipt = placement.read_receipt(amshome)
    except IntegrityError:
        return None  # an unreadable receipt vouches for nothing; the next swap writes a new one
    if not receipt or not _receipt_names(receipt, manifest, manifest_sha256, by_tree):
        return None
    files = target_of(manifest)  # a delta's whole tree, not what it carries
    return extract.tree_problems(Path(amshome) / placement.REPOSITORY, files, check_hashes=False)


def _receipt_names(receipt: dict, manifest: BundleManifest, manifest_sha256: str, by_tree: bool) -> bool:
    """The receipt names this bundle: its manifest.json, or (``by_tree``), for a delta, the very tree it makes
    (a delta that changes nothing, or one made again, installs what the receipt's bundle placed). By tree only
    once this delta has been checked as any bundle (signature, chunks): a delta that merely claims the installed
    tree is never taken as installed unchecked."""
    if receipt.get("manifest_sha256") == manifest_sha256:
        return True
    same_tree = receipt.get("tree_sha256") == tree_identity(manifest.target)
    return by_tree and manifest.is_delta and same_tree  # guard: receipt-names-delta-tree


class CheckedManifest(NamedTuple):
    """A bundle's manifest.json as one read of it parsed, and the sha256 of those bytes (what a receipt names)."""
    manifest: BundleManifest
    sha256: str


def installed_and_intact(amshome, checked: CheckedManifest, by_tree: bool = False) -> bool:
    """True when AMSHOME's receipt names ``checked`` and the repository still matches it (``by_tree``:
    installed_changes)."""
    try:
        return installed_changes(amshome, *checked, by_tree=by_tree) == []
    except IntegrityError:
        return False


def installed_and_nothing_to_recover(amshome, checked: CheckedManifest) -> bool:
    """``installed_and_intact``, and a killed unpack left nothing there for the next one to recover (a swap to
    finish, a staging tree to remove)."""
    return not placement.interrupted(amshome) and installed_and_intact(amshome, checked)


def installed_bundle(bundle: str, amshome: str) -> CheckedManifest | None:
    """The bundle folder's manifest (read once) when AMSHOME holds it (``installed_and_nothing_to_recover``);
    None when it does not."""
    try:
        data = read_manifest_bytes(Path(bundle))
        if data is None:
            return None
        checked = CheckedManifest(BundleManifest.from_bytes(data, Path(bundle) / MANIFEST_NAME),
                                  hashlib.sha256(data).hexdigest())
    except IntegrityError:
        return None
    return checked if installed_and_nothing_to_recover(amshome, checked) else None


def _refuse_changed(bundle_dir: Path, manifest: BundleManifest, home: Path, changes: list[str]) -> IntegrityError:
    """List what changed in the installed tree; the error says how to install the bundle again."""
    for line in changes[:MAX_CHANGES_LISTED]:
        log.info(f"unpack: {line}")
    if len(changes) > MAX_CHANGES_LISTED:
        log.info(f"unpack: ... and {len(changes) - MAX_CHANGES_LISTED} more")
    again = "FULL_BUNDLE" if manifest.is_delta else shlex.quote(str(bundle_dir))
    return IntegrityError(
        f"{home / placement.REPOSITORY} no longer matches the bundle its receipt names ({len(changes)} "
        f"difference(s), listed above); to install it again run: amsrepomirror unpack {again} "
        f"--amshome {shlex.quote(str(home))} --reinstall")


def usage_hints(home: Path, versions: Sequence[str]) -> str:
    """What the package manager of each version needs: several AMS installations share one repository."""
    return "\n".join(placement.usage_hint(home, version) for version in versions)


def _parsed(bundle_dir: Path, data: bytes) -> BundleManifest | None:
    """The manifest in ``data``; None when it does not parse (the chunk check then names what is
    wrong with it)."""
    try:
        return BundleManifest.from_bytes(data, bundle_dir / MANIFEST_NAME)
    except IntegrityError:
        return None


def refuse_downgrade(bundle_dir: Path, manifest: BundleManifest, home: Path) -> None:
    """UsageError when the receipt says a later bundle of the mirror is installed (higher sequence,
    or any sequence when the bundle has none): going back needs ``--allow-downgrade``."""
    try:
        receipt = placement.read_receipt(home) or {}
    except IntegrityError:
        return  # an unreadable receipt vouches for nothing
    if manifest.is_delta and manifest.base != receipt.get("tree_sha256"):
        return  # refused by the delta's base check, which says which tree it needs
    installed = receipt.get("bundle_sequence")
    if type(installed) is not int or installed <= 0:
        return  # the installed bundle carried no number: nothing to be older than
    number = f"number {manifest.sequence} of its mirror" if manifest.sequence else "no number of its mirror"
    # A bundle without a number cannot show that it is newer: it is taken for older, like a lower one.
    if manifest.sequence < installed:  # guard: downgrade-check
        raise UsageError(f"bundle {bundle_dir} ({number}, made {manifest.created or '?'}) is older than the "
                         f"installed one (number {installed}, made {receipt.get('bundle_created') or '?'}); "
                         "to go back to it add --allow-downgrade")


def _read_signed_manifest(bundle_dir: Path, trust: Trust | None) -> bytes:
    """manifest.json of ``bundle_dir``, read once, whose signature ``trust`` (default: the site's
    setting) accepts; IntegrityError for a refused signature or a missing manifest."""
    trust = trust or resolve_trust()
    data = read_manifest_bytes(bundle_dir)
    signed, refusal = signature_verdict(bundle_dir, trust, data)
    if refusal:
        raise IntegrityError(f"{refusal}; nothing was extracted")
    if signed is not None:
        log.info(f"unpack: {signed.describe()}")
    if trust.allowed_signers is not None:
        placement.checkpoint("unpack:signature-checked")
    if data is None:
        raise IntegrityError(f"bundle {bundle_dir} failed verification: {MANIFEST_NAME}: missing; nothing was extracted")
    return data


def _already_installed(bundle_dir: Path, manifest: BundleManifest, sha256: str, home: Path, *, reinstall: bool,
                       drop_versions: Sequence[str]) -> bool:
    """True when the receipt says the bundle is installed and the tree still matches (nothing to do);
    IntegrityError when the tree changed since. Always False with ``reinstall``."""
    changes = None if reinstall else installed_changes(home, manifest, sha256)
    if changes:
        raise _refuse_changed(bundle_dir.absolute(), manifest, home, changes)
    if changes != []:
        return False
    refuse_drop_versions(home, manifest, bundle_dir, drop_versions, None)
    log.info(f"unpack: {home / placement.REPOSITORY} already holds this bundle; nothing to do")
    return True


def _unpack_full_with_progress(bundle_dir: Path, data: bytes, manifest: BundleManifest | None, home: Path, *,
                               keep_previous: bool, version_files: Sequence[str],
                               drop_versions: Sequence[str]) -> BundleManifest:
    """:func:`_unpack_full`, with a progress bar on a terminal (the chunks hashed, then extracted)."""
    log.info(f"unpack: checking every chunk of {bundle_dir} against manifest.json and SHA256SUMS")
    bar = ByteProgress(None, "unpack") if sys.stderr.isatty() else None  # chunks hashed, then extracted
    try:
        return _unpack_full(bundle_dir, data, _member_bytes(manifest) if bar else 0, home, bar,
                            keep_previous=keep_previous, version_files=version_files, drop_versions=drop_versions)
    finally:
        if bar is not None:
            bar.close(clear=True)


def unpack_bundle(bundle: str, amshome: str, *, keep_previous: bool, version_files: Sequence[str],
                  reinstall: bool = False, deep: bool = False, trust: Trust | None = None,
                  allow_downgrade: bool = False, trust_installed: bool = False,
                  drop_versions: Sequence[str] = ()) -> CheckedManifest:
    """Place the bundle's tree as $AMSHOME/repository; return its manifest, as read and checked here,
    and the sha256 of those bytes (what to tell the package manager and the admin, and what the
    receipt must name from now on, come from them, not from the folder).

    When the receipt says the bundle is installed, only check the tree (and refuse when it changed)
    unless ``reinstall``. A delta bundle is built on the installed tree (``offline.apply_delta``: every
    installed file it relies on is hashed; ``trust_installed``, unless ``deep``: not those whose size,
    mtime and inode are still the receipt's). A bundle whose signature ``trust`` (the site's trust
    setting, trust.resolve_trust) refuses is refused before anything else, by the same verdict as
    verify's (trust.signature_verdict); a bundle older than the installed one is refused unless
    ``allow_downgrade``. ``drop_versions``: installed versions a delta may remove, when it says it drops them.

    manifest.json is read once: its signature is checked on those bytes, and every later step
    (downgrade and installed checks, the chunk check, extraction, the receipt) uses what they say,
    never the file again, which may hold other bytes by then.
    """
    bundle_dir = Path(bundle)
    if not bundle_dir.is_dir():
        raise UsageError(f"bundle folder {bundle} does not exist")
    data = _read_signed_manifest(bundle_dir, trust)
    manifest, sha256 = _parsed(bundle_dir, data), hashlib.sha256(data).hexdigest()
    home = placement.check_amshome(amshome)
    placement.refuse_bundle_in_tree(bundle_dir, home)
    with placement.amshome_lock(home):
        for action in placement.recover(home):
            log.info(f"unpack: {action} (left by an interrupted run)")
        if manifest is not None:
            if not allow_downgrade:
                refuse_downgrade(bundle_dir, manifest, home)
            if _already_installed(bundle_dir, manifest, sha256, home, reinstall=reinstall, drop_versions=drop_versions):
                return CheckedManifest(manifest, sha256)
            if manifest.is_delta:
                unpack_delta(bundle_dir.absolute(), home, manifest, data, keep_previous=keep_previous, deep=deep,
                             version_files=version_files, trust_installed=trust_installed,
                             drop_versions=drop_versions)
                return CheckedManifest(manifest, sha256)
        return CheckedManifest(_unpack_full_with_progress(bundle_dir, data, manifest, home, keep_previous=keep_previous,
                                                          version_files=version_files, drop_versions=drop_versions),
                               sha256)


def _removals_allowed(home: Path, manifest: BundleManifest, bundle_dir: Path, drop_versions: Sequence[str]):
    """What each version of a full bundle needs, for its receipt, once ``refuse_removals`` allows what it
    removes from the installed tree. A receipt that cannot vouch for a tree (none, unreadable, damaged,
    or written before receipts listed it) keeps nothing: a full bundle is the way out of it."""
    receipt = {}  # unreadable: which versions are installed is not known
    try:
        receipt = placement.read_receipt(home)
        tree = receipt_tree(receipt, home / placement.RECEIPT) if receipt else None
    except (IntegrityError, UsageError):
        tree = None
    if tree is None:
        refuse_drop_versions(home, manifest, bundle_dir, drop_versions, set() if receipt is None else None)
        return manifest.paths_by_version
    try:
        return refuse_removals(home, receipt, tree, manifest, bundle_dir, drop_versions)
    except IntegrityError:  # its record of each version's paths is damaged
        return manifest.paths_by_version


def _unpack_full(bundle_dir: Path, manifest_bytes: bytes, extracting: int, home: Path, bar: ByteProgress | None, *,
                 keep_previous: bool, version_files: Sequence[str], drop_versions: Sequence[str] = ()) -> BundleManifest:
    """A full bundle into AMSHOME (locked by the caller): checked, extracted into staging, swapped in.

    ``manifest_bytes``: manifest.json as unpack read (and signature-checked) it; ``extracting``:
    the bytes of the members it lists, for the progress bar."""
    report = require_intact(verify_bundle(bundle_dir, test_archives=False, on_bytes=bar.update if bar else None,
                                          on_total=(lambda n: bar.set_total(n + extracting)) if bar else None,
                                          manifest_bytes=manifest_bytes))
    placement.checkpoint("unpack:chunks-checked")
    for warning in report.warnings:
        log.warning(f"unpack: {warning}")
    manifest = report.manifest
    version_paths = _removals_allowed(home, manifest, bundle_dir, drop_versions)
    log.info(f"unpack: {placement.check_version(manifest.all_versions, home, version_files)}")
    placement.require_space(home, extract.space_needed(manifest.files, in_place=True))
    expected = {p.member: (p.size, p.sha256) for f in manifest.files for p in f.parts}
    with placement.new_staging(home) as staging:
        for i, chunk in enumerate(manifest.chunks, start=1):
            log.info(f"unpack: extracting {chunk.name} ({i}/{len(manifest.chunks)})")
            # files=: parts of split files go straight to their offset in the joined file
            extract.extract_chunk(bundle_dir / chunk.name, chunk, staging, expected, files=manifest.files,
                                  on_bytes=bar.update if bar else None)
            placement.checkpoint("unpack:chunk-extracted")
        extract.reassemble(staging, manifest.files)
        place_copies(staging, manifest.copies)
        log.info(f"unpack: verifying {counted(len(manifest.tree), 'file')}")
        # Sizes and names only, no re-hash: every file's sha256 was already checked on the way in
        # (extract_chunk hashes each member as it writes it, reassemble hashes each split file
        # whole), into the private staging folder that only this process writes to, under the
        # AMSHOME lock. Hashing 2 GB again here would add time, not safety. What is left to check
        # is the shape: every file present with its size, nothing else, no links or special files.
        extract.verify_tree(staging, manifest.tree, check_hashes=False)
        for index in (f"{version}.yml" for version in manifest.all_versions):
            if not (staging / index).is_file():
                raise IntegrityError(f"the bundle lacks {index}, the index amspackages needs; nothing was placed")
        placement.checkpoint("unpack:verified")
        receipt = make_receipt(hashlib.sha256(manifest_bytes).hexdigest(), manifest.version,
                                         str(bundle_dir.absolute()),
                                         tree=placement.installed_files(staging, manifest.tree),
                                         bundle_created=manifest.created, bundle_sequence=manifest.sequence,
                                         lacking=manifest.lacking, version_paths=version_paths)
        log.info("unpack: writing the new tree to disk (sync)")
        extract.sync_tree(staging)  # one syncfs before the swap instead of an fsync per file
        how = placement.swap_into_place(home, staging, keep_previous=keep_previous, receipt=receipt)
    log.info(f"unpack: {home / placement.REPOSITORY} now holds {' and '.join(manifest.all_versions)} ({how})")
    return manifest


def _member_bytes(manifest: BundleManifest | None) -> int:
    """Bytes unpack extracts from the bundle (0 when its manifest does not parse: the chunk check says why)."""
    return sum(p.size for f in manifest.files for p in f.parts) if manifest is not None else 0

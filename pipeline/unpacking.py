"""The work of Unpack: check every chunk, extract into staging inside AMSHOME, verify, swap in.

Nothing is extracted before every chunk's sha256 matches; nothing is placed before every file's
size and sha256 match the bundle manifest, ``<VERSION>.yml`` is present and the new tree is on disk
(synced).

After the chunk check, each byte is hashed once more, as it is written: every member (a whole
file or a part of a split file) against the manifest; a split file is then hashed once as a whole
(the end-to-end check of what was joined). Nothing is read back and hashed again after that.
"""

import sys
from pathlib import Path
from typing import Sequence

from . import extract, placement
from .bundle import MANIFEST_NAME, BundleManifest, require_intact, verify_bundle
from .errors import IntegrityError, UsageError
from .hashing import sha256_file


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def manifest_sha256(bundle: str) -> str:
    return sha256_file(Path(bundle) / MANIFEST_NAME)


def is_installed(bundle: str, amshome: str) -> bool:
    """True when AMSHOME's receipt names this bundle's manifest and the repository holds its index."""
    try:
        receipt = placement.read_receipt(amshome)
        if not receipt or not (Path(bundle) / MANIFEST_NAME).is_file():
            return False
        index = Path(amshome) / placement.REPOSITORY / f"{BundleManifest.read(Path(bundle) / MANIFEST_NAME).version}.yml"
        return receipt.get("manifest_sha256") == manifest_sha256(bundle) and index.is_file()
    except IntegrityError:
        return False


def unpack_bundle(bundle: str, amshome: str, *, keep_previous: bool, version_files: Sequence[str]) -> str:
    """Place the bundle's tree as $AMSHOME/repository; return what the package manager needs to know."""
    bundle_dir = Path(bundle)
    if not bundle_dir.is_dir():
        raise UsageError(f"bundle folder {bundle} does not exist")
    home = placement.check_amshome(amshome)
    with placement.amshome_lock(home):
        for action in placement.recover(home):
            say(f"unpack: {action} (left by an interrupted run)")
        say(f"unpack: checking every chunk of {bundle_dir} against manifest.json and SHA256SUMS")
        report = require_intact(verify_bundle(bundle_dir, test_archives=False))
        manifest = report.manifest
        say(f"unpack: {placement.check_version(manifest.version, home, version_files)}")
        placement.require_space(home, extract.space_needed(manifest.files, in_place=True))
        staging = placement.staging_dir(home)
        expected = {p.member: (p.size, p.sha256) for f in manifest.files for p in f.parts}
        for i, chunk in enumerate(manifest.chunks, start=1):
            say(f"unpack: extracting {chunk.name} ({i}/{len(manifest.chunks)})")
            # files=: parts of split files go straight to their offset in the joined file
            extract.extract_chunk(bundle_dir / chunk.name, chunk, staging, expected, files=manifest.files)
        extract.reassemble(staging, manifest.files)
        say(f"unpack: verifying {len(manifest.files)} files")
        # Sizes and names only, no re-hash: every file's sha256 was already checked on the way in
        # (extract_chunk hashes each member as it writes it, reassemble hashes each split file
        # whole), into the private staging folder that only this process writes to, under the
        # AMSHOME lock. Hashing 2 GB again here would add time, not safety. What is left to check
        # is the shape: every file present with its size, nothing else, no links or special files.
        extract.verify_tree(staging, manifest.files, check_hashes=False)
        index = f"{manifest.version}.yml"
        if not (staging / index).is_file():
            raise IntegrityError(f"the bundle lacks {index}, the index amspackages needs; nothing was placed")
        receipt = placement.make_receipt(manifest_sha256(bundle), manifest.version, str(bundle_dir.absolute()))
        say("unpack: writing the new tree to disk (sync)")
        extract.sync_tree(staging)  # one syncfs before the swap instead of an fsync per file
        how = placement.swap_into_place(home, staging, keep_previous=keep_previous, receipt=receipt)
        say(f"unpack: {home / placement.REPOSITORY} now holds {manifest.version} ({how})")
        return placement.usage_hint(home, manifest.version)

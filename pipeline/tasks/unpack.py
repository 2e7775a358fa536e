"""Unpack wiring (offline side): one task whose target is AMSHOME's receipt.

The unpacking code (``offline.unpack``: 7z, signatures) is imported in the methods that use it: every run
registers this task (``amsrepomirror.tasks``), and a mirror run should not load what only unpack needs.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import luigi

from amsrepomirror.errors import UsageError
from amsrepomirror.tasks.base import ReportsFailure

if TYPE_CHECKING:
    from amsrepomirror.offline import unpack as unpacking


class unpack(luigi.Config):
    """[unpack]: where the installed AMS version can be read, relative to AMSHOME; whether a delta
    takes installed files by size, mtime and inode without hashing them. Its older allowed_signers
    and signature_verifier keys are read by trust.resolve_trust (now in [trust])."""

    installed_version_files = luigi.ListParameter()
    allowed_signers = luigi.Parameter(default="")
    signature_verifier = luigi.Parameter(default="")
    trust_installed = luigi.BoolParameter(default=False)


def unpack_settings() -> unpack:
    """[unpack] as Luigi parses it; a value it cannot parse (``trust_installed = ture``) is a UsageError
    naming the key and the form, not Luigi's ValueError (exit 1)."""
    try:
        return unpack()
    except ValueError as exc:
        named = re.search(r"value of '(\w+)'", str(exc))
        key = named.group(1) if named else "?"
        form = {"trust_installed": "true or false",
                "installed_version_files": 'a JSON list, e.g. ["VERSION.txt"]'}.get(key, "a valid value")
        raise UsageError(f"[unpack] {key} cannot be read: use {form}") from None


class ReceiptTarget(luigi.Target):
    """Exists when AMSHOME's receipt says its repository holds this bundle's manifest, and it still does;
    ``checked`` then holds that manifest as exists() read it."""

    def __init__(self, amshome: str, bundle: str):
        self.amshome, self.bundle = amshome, bundle
        self.checked: unpacking.CheckedManifest | None = None

    def exists(self):
        from amsrepomirror.offline import unpack as unpacking  # here: see the module's docstring

        self.checked = unpacking.installed_bundle(self.bundle, self.amshome)
        return self.checked is not None


class Unpack(ReportsFailure, luigi.Task):
    """Verify a bundle, stage it inside AMSHOME, and swap it in as $AMSHOME/repository."""

    bundle = luigi.Parameter(description="bundle folder (the chunks, manifest.json, SHA256SUMS)")
    amshome = luigi.Parameter(description="the AMS installation folder")
    keep_previous = luigi.BoolParameter(default=False, significant=False, description="keep repository.previous")
    reinstall = luigi.BoolParameter(default=False, significant=False, description="install even when already installed")
    deep = luigi.BoolParameter(default=False, significant=False,
                               description="delta: hash the installed files it relies on even when trust_installed is set")
    trust_installed = luigi.BoolParameter(default=False, significant=False,
                                          description="delta: take installed files whose size, mtime and inode are the "
                                          "receipt's without hashing them (else [unpack] trust_installed)")
    allowed_signers = luigi.Parameter(default="", significant=False,
                                      description="OpenSSH allowed_signers file: a signature by a key in it is "
                                                  "required (default: the [trust] setting)")
    revoked_keys = luigi.Parameter(default="", significant=False,
                                   description="OpenSSH revoked keys file (default: the [trust] setting)")
    allow_downgrade = luigi.BoolParameter(default=False, significant=False,
                                          description="install a bundle older than the installed one")
    drop_versions = luigi.ListParameter(default=[], significant=False,
                                        description="delta: installed versions it may remove (made with bundle --drop-version)")

    def output(self):
        return ReceiptTarget(self.amshome, self.bundle)

    #: The manifest run() placed, or complete() found installed, as read once; None until then. Luigi
    #: hands out this same object for the same parameters for the rest of the process: whoever uses
    #: it (the unpack command) sets it back to None, so that the next check reads the folder again.
    checked: unpacking.CheckedManifest | None = None

    def complete(self):
        # After run: the receipt must still name the manifest.json that run read and checked, and the
        # tree still match it; the folder is not read again (it may hold another by now), and another
        # unpack's staging in AMSHOME by now is no sign against this one.
        # --reinstall: not done until this run has installed it again.
        if self.checked is not None:  # checked by run(): a delta that made no change counts by the tree it makes
            from amsrepomirror.offline import unpack as unpacking  # here: see the module's docstring

            return unpacking.installed_and_intact(self.amshome, self.checked, by_tree=True)
        if self.reinstall or self.drop_versions:  # a --drop-version is checked by run, also when nothing is to do
            return False
        target = self.output()
        if not target.exists():
            return False
        self.checked = target.checked
        return True

    def run(self):
        from amsrepomirror.bundle.trust import resolve_trust  # here: see the module's docstring
        from amsrepomirror.offline import unpack as unpacking  # here: see the module's docstring

        settings = unpack_settings()
        self.checked = unpacking.unpack_bundle(
            self.bundle, self.amshome, keep_previous=self.keep_previous, reinstall=self.reinstall, deep=self.deep,
            version_files=list(settings.installed_version_files),
            trust=resolve_trust(self.allowed_signers, self.revoked_keys), allow_downgrade=self.allow_downgrade,
            trust_installed=self.trust_installed or settings.trust_installed,
            drop_versions=list(self.drop_versions))

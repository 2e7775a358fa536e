"""Unpack wiring (offline side): one task whose target is AMSHOME's receipt."""

import luigi

from amsrepomirror.offline import install
from amsrepomirror.tasks.base import ReportsFailure


class unpack(luigi.Config):
    """[unpack]: where the installed AMS version can be read, relative to AMSHOME; whose signature
    a bundle must carry (an OpenSSH allowed_signers file; empty: none required)."""

    installed_version_files = luigi.ListParameter()
    allowed_signers = luigi.Parameter(default="")
    signature_verifier = luigi.Parameter(default="auto")


class ReceiptTarget(luigi.Target):
    """Exists when AMSHOME's receipt says its repository holds this bundle's manifest, and it still does."""

    def __init__(self, amshome: str, bundle: str):
        self.amshome, self.bundle = amshome, bundle

    def exists(self):
        return install.is_installed(self.bundle, self.amshome)


class Unpack(ReportsFailure, luigi.Task):
    """Verify a bundle, stage it inside AMSHOME, and swap it in as $AMSHOME/repository."""

    bundle = luigi.Parameter(description="bundle folder (the chunks, manifest.json, SHA256SUMS)")
    amshome = luigi.Parameter(description="the AMS installation folder")
    keep_previous = luigi.BoolParameter(default=False, significant=False, description="keep repository.previous")
    reinstall = luigi.BoolParameter(default=False, significant=False, description="install even when already installed")
    deep = luigi.BoolParameter(default=False, significant=False,
                               description="delta: re-hash the installed files it relies on instead of trusting the receipt")
    allowed_signers = luigi.Parameter(default="", significant=False,
                                      description="OpenSSH allowed_signers file: a signature by a key in it is required")
    revoked_keys = luigi.Parameter(default="", significant=False, description="OpenSSH revoked keys file")
    allow_downgrade = luigi.BoolParameter(default=False, significant=False,
                                          description="install a bundle older than the installed one")

    def output(self):
        return ReceiptTarget(self.amshome, self.bundle)

    def complete(self):
        # Once run, done: the receipt names the manifest.json that run read and checked (``placed``),
        # and the folder may hold another by now. --reinstall: not done until this run has installed it again.
        if getattr(self, "placed", None) is not None:
            return True
        return not self.reinstall and super().complete()

    def run(self):
        self.placed = install.unpack_bundle(
            self.bundle, self.amshome, keep_previous=self.keep_previous, reinstall=self.reinstall, deep=self.deep,
            version_files=list(unpack().installed_version_files),
            allowed_signers=self.allowed_signers or unpack().allowed_signers, revoked_keys=self.revoked_keys,
            allow_downgrade=self.allow_downgrade, signature_verifier=unpack().signature_verifier)

"""The task graph, wiring only: FetchListing → DownloadFile → VerifyTree → BundleArchive, and Unpack.

Each task's ``output()`` is the single truth of "done"; the work is done by plain functions in
``mirror``, ``bundle``, ``sevenzip``, ``extract`` and ``placement``. Parameters default from the
``luigi.cfg`` section named after the task and can be overridden on the command line.
"""

import datetime
import functools
import json
import os
import traceback
import warnings
from pathlib import Path

import luigi
from luigi.util import inherits

from . import mirror, progress
from .credentials import resolve_credentials
from .errors import FetchError, MirrorError, exit_code_for
from .fetch import LowSpeed, make_session
from .listing import compile_platform_rules, listing_url_for
from .manifest import Manifest
from .units import parse_size
from .workspace import Workspace

DEFAULT_PLATFORM_RULES = {
    "linux": r"(^|/)linux([/._-]|$)|[._-]linux([/._-]|$)|manylinux",
    "macos": r"(^|/)(macos|darwin|osx)([/._-]|$)|[._-](macos|darwin|osx)([/._-]|$)|macosx",
    "windows": r"(^|/)(windows|win32|win64)([/._-]|$)|[._-](windows|win32|win_amd64|win64)([/._-]|$)",
}


def new_run_id() -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{os.getpid()}"


# max_batch_size in [DownloadFile] is read as a class attribute, not a parameter.
warnings.filterwarnings("ignore", message=".*'max_batch_size'.*", category=luigi.parameter.UnconsumedParameterWarning)

# One run id per process unless the CLI passes one: every plain `luigi` invocation re-reads the listing.
PROCESS_RUN_ID = new_run_id()


class http(luigi.Config):
    """[http] in luigi.cfg: how patient we are with the network."""

    retries = luigi.IntParameter(default=6, description="attempts per request for connection errors, 5xx and 429")
    backoff = luigi.FloatParameter(default=0.5, description="urllib3 backoff factor in seconds")
    timeout = luigi.FloatParameter(default=60.0, description="connect/read timeout in seconds")
    low_speed_limit = luigi.IntParameter(default=1000, description="bytes/s below which an attempt is given up (0: off)")
    low_speed_time = luigi.FloatParameter(default=60.0, description="... when the rate stays below it this many seconds")

    def low_speed(self) -> LowSpeed:
        return LowSpeed(self.low_speed_limit, self.low_speed_time)


def platform_rules():
    """[platforms] in luigi.cfg: name = regex over repository paths; defaults when absent."""
    config = luigi.configuration.get_config()
    rules = dict(DEFAULT_PLATFORM_RULES)
    if config.has_section("platforms"):
        rules = {k: v for k, v in config.items("platforms") if k not in config.defaults()} or rules
    return compile_platform_rules(rules)


class MirrorTask(luigi.Task):
    """Base: knows the mirror workspace; reports failures as a JSON line the CLI maps to an exit code."""

    version = luigi.Parameter(description="AMS version, e.g. AMS2026.1")
    mirror = luigi.Parameter(description="mirror folder (becomes $AMSHOME/repository)")

    @property
    def workspace(self) -> Workspace:
        return Workspace(self.mirror)

    @classmethod
    @functools.lru_cache(maxsize=None)
    def get_params(cls):
        # Luigi rebuilds this list with dir(cls) on every instantiation and clone; with one
        # DownloadFile per listed file that alone costs seconds, and a class's parameters never change.
        return super().get_params()

    def on_failure(self, exception):
        message = str(exception) if isinstance(exception, MirrorError) else f"{exception.__class__.__name__}: {exception}"
        return json.dumps({"code": exit_code_for(exception), "message": message.splitlines()[0] if message else "",
                           "traceback": traceback.format_exc()})


class FetchListing(MirrorTask):
    """The listing of one version plus what the server says of each selected file now."""

    listing_url = luigi.Parameter(default="", description="default: SCM's listing for the version")
    platform = luigi.ListParameter(default=[], description="keep only these platforms (+ platform-independent)")
    strict_authentication = luigi.BoolParameter(default=False, description="a 401 on any file is fatal")
    no_ssl = luigi.BoolParameter(default=False, significant=False, description="do not verify TLS certificates")
    jobs = luigi.IntParameter(default=4, significant=False, description="concurrent connections")
    run_id = luigi.Parameter(default=PROCESS_RUN_ID, description="one per mirror run; a new run re-reads the listing")

    def output(self):
        return luigi.LocalTarget(str(self.workspace.snapshot_path(self.run_id)))

    def session(self):
        url = listing_url_for(self.version, self.listing_url)
        return make_session(resolve_credentials(url), verify_ssl=not self.no_ssl, retries=http().retries,
                            backoff=http().backoff, pool_size=self.jobs)

    def run(self):
        url = listing_url_for(self.version, self.listing_url)
        snapshot = mirror.take_snapshot(self.session(), self.version, url, list(self.platform), platform_rules(),
                                        strict_authentication=self.strict_authentication, jobs=self.jobs,
                                        timeout=http().timeout)
        with self.output().open("w") as f:
            json.dump(snapshot, f, indent=1)

    def snapshot(self):
        return mirror.load_snapshot(self.output().path)


class MirrorFileTarget(luigi.Target):
    """Exists when the mirror holds exactly the file the run's snapshot says the server serves."""

    def __init__(self, workspace: Workspace, snapshot_path: str, path: str):
        self.workspace, self.snapshot_path, self.path = workspace, snapshot_path, path

    def exists(self):
        remote = mirror.load_snapshot(self.snapshot_path)["by_path"].get(self.path)
        return remote is not None and mirror.is_current(self.workspace, remote)


@inherits(FetchListing)
class DownloadFile(MirrorTask):
    """One listed file; Luigi batches many into one run so scheduling stays linear."""

    path = luigi.Parameter(batch_method="\n".join, description="repository path (newline-joined when batched)")
    # Luigi reads this class attribute to size batches; luigi.cfg [DownloadFile] max_batch_size sets it.
    max_batch_size = luigi.configuration.get_config().getint("DownloadFile", "max_batch_size", 2000)

    def requires(self):
        return self.clone(FetchListing)

    def paths(self):
        return self.path.split("\n")

    def output(self):
        snapshot = str(self.workspace.snapshot_path(self.run_id))  # FetchListing's output, without a clone per check
        return [MirrorFileTarget(self.workspace, snapshot, p) for p in self.paths()]

    def run(self):
        snapshot = self.requires().snapshot()
        entries = [snapshot["by_path"][p] for p in self.paths()]
        entries = [e for e in entries if not mirror.is_current(self.workspace, e)]
        bar = progress.for_run(self.run_id, mirror.bytes_to_fetch(self.workspace, entries))
        outcome = mirror.download_many(self.requires().session(), self.workspace, entries, self.run_id,
                                       jobs=self.jobs, timeout=http().timeout, progress=bar,
                                       low_speed=http().low_speed())
        if outcome.failed:
            first = sorted(outcome.failed.items())[0][1]
            raise FetchError(f"{len(outcome.failed)} of {len(entries)} file(s) could not be fetched; first: {first}")


@inherits(FetchListing)
class VerifyTree(MirrorTask):
    """The verified mirror: every selected file present and current, recorded in the manifest."""

    deep = luigi.BoolParameter(default=False, description="re-read and re-hash every file instead of trusting size+mtime")

    def requires(self):
        return self.clone(FetchListing)

    def output(self):
        return luigi.LocalTarget(str(self.workspace.run_manifest_path(self.run_id)))

    def run(self):
        snapshot = self.requires().snapshot()
        downloads = [self.clone(DownloadFile, path=e["path"]) for e in snapshot["files"]]
        pending = [e for e in snapshot["files"] if not mirror.is_current(self.workspace, e)]
        if pending:
            needed = mirror.check_space(self.workspace, pending)
            progress.for_run(self.run_id, needed, desc="download")
        yield downloads
        progress.close_run(self.run_id)
        if snapshot["failed"]:
            first = snapshot["failed"][0]
            raise FetchError(f"{len(snapshot['failed'])} listed file(s) could not be fetched; first: {first['message']}")
        manifest = mirror.build_manifest(self.workspace, snapshot, self.version, run_id=self.run_id, deep=self.deep)
        self.workspace.drop_parts()  # every selected file is current: any partial download left is stale
        manifest.write(self.workspace.manifest_path(self.version))
        with self.output().open("w") as f:
            f.write(manifest.to_json().decode())


# ---- bundle (online side, after VerifyTree) -------------------------------------------------------

class VerifiedMirror(luigi.ExternalTask):
    """The latest verified manifest of a mirror, for bundling without contacting the server."""

    version = luigi.Parameter()
    mirror = luigi.Parameter()

    def output(self):
        return luigi.LocalTarget(str(Workspace(self.mirror).manifest_path(self.version)))


class BundleTarget(luigi.Target):
    """Exists when the bundle folder is finished (SHA256SUMS written last) for this mirror manifest and settings."""

    def __init__(self, out: str, mirror_manifest_path: str, chunk_size: str, compression: str):
        self.out, self.mirror_manifest_path = Path(out), Path(mirror_manifest_path)
        self.chunk_size, self.compression = parse_size(chunk_size), compression

    def exists(self):
        from .bundle import MANIFEST_NAME, SUMS_NAME, BundleManifest
        if not (self.out / SUMS_NAME).exists() or not self.mirror_manifest_path.exists():
            return False
        try:
            built = BundleManifest.read(self.out / MANIFEST_NAME)
        except MirrorError:
            return False
        return ((built.chunk_size, built.compression) == (self.chunk_size, self.compression)
                and built.mirror_manifest_sha256 == Manifest.read(self.mirror_manifest_path).sha256())


@inherits(VerifyTree)
class BundleArchive(MirrorTask):
    """The bundle folder: independent 7z chunks, manifest.json, README.txt and SHA256SUMS."""

    out = luigi.Parameter(description="bundle folder to write")
    chunk_size = luigi.Parameter(default="3900MiB", description="largest chunk file (fits FAT32 below 4 GiB)")
    compression = luigi.ChoiceParameter(default="copy", choices=["copy", "zstd", "lzma2"],
                                        description="copy: packages are already compressed")
    offline = luigi.BoolParameter(default=False, description="bundle the last verified mirror without the network")

    def requires(self):
        if self.offline:
            return VerifiedMirror(version=self.version, mirror=self.mirror)
        return self.clone(VerifyTree)

    def output(self):
        return BundleTarget(self.out, self.input().path, self.chunk_size, self.compression)

    def run(self):
        from . import bundling
        manifest_path = self.input().path
        plan = bundling.plan_for(manifest_path, self.chunk_size, self.version, self.compression)
        bundling.prepare_out(self.out, plan)
        yield [WriteChunk(mirror=self.mirror, version=self.version, out=self.out, manifest_path=manifest_path,
                          chunk_size=self.chunk_size, compression=self.compression, index=i)
               for i in range(len(plan.chunks))]
        bundling.finish(self.out, plan)


class WriteChunk(luigi.Task):
    """One chunk of a bundle; its own target, so a killed bundle run resumes at the chunk where it stopped."""

    mirror = luigi.Parameter()
    version = luigi.Parameter()
    out = luigi.Parameter()
    manifest_path = luigi.Parameter()
    chunk_size = luigi.Parameter()
    compression = luigi.Parameter()
    index = luigi.IntParameter()

    def plan(self):
        from . import bundling
        return bundling.plan_for(self.manifest_path, self.chunk_size, self.version, self.compression)

    def requires(self):
        # A chunk that continues a split file resumes its hash where the chunk before left it.
        from . import bundling
        previous = bundling.continued_from(self.plan(), self.index)
        return [] if previous is None else self.clone(index=previous)

    def output(self):
        from . import bundling
        return bundling.ChunkTarget(self.out, self.plan(), self.index)

    def run(self):
        from . import bundling
        bundling.write_planned_chunk(self.mirror, self.out, self.plan(), self.index)

    on_failure = MirrorTask.on_failure


# ---- unpack (offline side) ------------------------------------------------------------------------

class unpack(luigi.Config):
    """[unpack] in luigi.cfg: where the installed AMS version can be read, relative to AMSHOME."""

    installed_version_files = luigi.ListParameter(default=[])


class ReceiptTarget(luigi.Target):
    """Exists when AMSHOME's receipt says its repository holds this bundle's manifest, and it still does."""

    def __init__(self, amshome: str, bundle: str):
        self.amshome, self.bundle = amshome, bundle

    def exists(self):
        from . import unpacking
        return unpacking.is_installed(self.bundle, self.amshome)


class Unpack(luigi.Task):
    """Verify a bundle, stage it inside AMSHOME, and swap it in as $AMSHOME/repository."""

    bundle = luigi.Parameter(description="bundle folder (the chunks, manifest.json, SHA256SUMS)")
    amshome = luigi.Parameter(description="the AMS installation folder")
    keep_previous = luigi.BoolParameter(default=False, significant=False, description="keep repository.previous")
    reinstall = luigi.BoolParameter(default=False, significant=False, description="install even when already installed")

    def output(self):
        return ReceiptTarget(self.amshome, self.bundle)

    def complete(self):
        # --reinstall: not done until this run has installed the bundle again (then the receipt decides)
        if self.reinstall and not getattr(self, "_reinstalled", False):
            return False
        return super().complete()

    def run(self):
        from . import unpacking
        unpacking.unpack_bundle(self.bundle, self.amshome, keep_previous=self.keep_previous, reinstall=self.reinstall,
                                version_files=list(unpack().installed_version_files))
        self._reinstalled = True

    on_failure = MirrorTask.on_failure

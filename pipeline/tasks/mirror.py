"""Mirror wiring: FetchListing → DownloadFile (one per file, batched) → VerifyTree; JoinRun for shared runs."""

import functools
import json
import threading
import time
import warnings
from pathlib import Path

import luigi
from luigi.util import inherits

from amsrepomirror.errors import FetchError, MirrorError
from amsrepomirror.online import sync
from amsrepomirror.online.credentials import resolve_credentials
from amsrepomirror.online.http import make_session
from amsrepomirror.online.listing import listing_url_for
from amsrepomirror.online.workspace import Workspace
from amsrepomirror.tasks import shared_run
from amsrepomirror.tasks.base import PROCESS_RUN_ID, FolderTask, MirrorTask, http, platform_rules, workspace_of
from amsrepomirror.util import progress
from amsrepomirror.util.fsutil import atomic_write_bytes, write_new_bytes
from amsrepomirror.util.units import format_size, parse_size

# max_batch_size, shared_batch_size and run_batch_size in [DownloadFile] are read as settings, not parameters.
warnings.filterwarnings("ignore", message=".*'(max|shared|run)_batch_size'.*",
                        category=luigi.parameter.UnconsumedParameterWarning)
# A task that inherits jobs or deep reads its own section first, then the declaring task's (config_path):
# one setting for every task, which Luigi calls deprecated but still supports.
warnings.filterwarnings("ignore", message=r"The use of the configuration \[(FetchListing\] jobs|VerifyTree\] deep)",
                        category=DeprecationWarning)


class FetchListing(MirrorTask):
    """The listing of one version plus what the server says of each selected file now."""

    listing_url = luigi.Parameter(default="", description="default: SCM's listing for the version")
    platform = luigi.ListParameter(default=[], description="keep only these platforms (+ platform-independent)")
    strict_authentication = luigi.BoolParameter(default=False, description="a 401 on any file is fatal")
    no_ssl = luigi.BoolParameter(default=False, significant=False, description="do not verify TLS certificates")
    jobs = luigi.IntParameter(significant=False, config_path=dict(section="FetchListing", name="jobs"),
                              description="concurrent connections")
    run_id = luigi.Parameter(default=PROCESS_RUN_ID, description="one per mirror run; a new run re-reads the listing")
    adopt = luigi.BoolParameter(default=False, significant=False,
                                description="take over files a folder made by wget -x or SCM's script holds "
                                "(sync.adopt_existing)")

    def output(self):
        return luigi.LocalTarget(str(self.workspace.snapshot_path(self.run_id)))

    def session(self):
        url = listing_url_for(self.version, self.listing_url)
        return make_session(resolve_credentials(url), verify_ssl=not self.no_ssl, retries=http().retries,
                            backoff=http().backoff, pool_size=self.jobs)

    def run(self):
        url = listing_url_for(self.version, self.listing_url)
        self.set_status_message(f"reading the listing and asking the server about each file ({self.jobs} connections)")
        # --adopt: files on disk without a record are taken over, not fetched: no first bytes for them
        snapshot = sync.take_snapshot(self.session(), self.version, url, list(self.platform), platform_rules(),
                                      strict_authentication=self.strict_authentication, jobs=self.jobs,
                                      timeout=http().timeout, low_speed=http().low_speed(),
                                      ws=self.workspace, first_bytes=0 if self.adopt else first_bytes())
        sync.record_selection(self.workspace, snapshot)
        if self.adopt:
            snapshot["adopted"] = sync.adopt_existing(self.workspace, snapshot["files"])
        # The run's parameters, for DownloadFile (listing_of_run); connections and TLS checking are
        # each process's own (not part of the task's identity), so they are left out.
        snapshot["task"] = self.to_str_params(only_significant=True)
        snapshot["identity"] = self.identity(snapshot["listing_sha256"])
        body = json.dumps(snapshot, separators=(",", ":")).encode()  # compact: 5× faster than with an indent
        if not write_new_bytes(Path(self.output().path), body):
            # Another process's FetchListing of this run id (another listing, or the same) was first:
            # its snapshot stays, and this one may go on only when it names the same work.
            sync.drop_prefetched(self.workspace, snapshot)
            shared_run.check_run_identity(self.run_id, snapshot["identity"], self.snapshot().get("identity"))

    def identity(self, listing_sha256: str):
        """This run's identity (shared_run.run_identity) with the listing's content as ``listing_sha256``."""
        return shared_run.run_identity(self.version, self.listing_url, self.platform, self.strict_authentication,
                                    listing_sha256)

    def snapshot(self):
        return sync.load_snapshot(self.output().path)


def first_bytes() -> int:
    """[http] first_bytes as bytes: 0 (HEAD every file) or a size."""
    value = str(http().first_bytes).strip()
    return 0 if value == "0" else parse_size(value)


class MirrorFileTarget(luigi.Target):
    """Exists when the mirror holds exactly the file the run's snapshot says the server serves."""

    def __init__(self, workspace: Workspace, snapshot_path: str, path: str, run_id: str):
        self.workspace, self.snapshot_path, self.path, self.run_id = workspace, snapshot_path, path, run_id

    def exists(self):
        try:
            remote = sync.load_snapshot(self.snapshot_path)["by_path"].get(self.path)
        except FileNotFoundError:  # no listing yet: not done (DownloadFile.requires says why)
            return False
        return remote is not None and sync.is_current(self.workspace, remote, self.run_id)


class SchedulerProgress:
    """Bytes go on to the terminal bar as they arrive, and every few seconds to the scheduler (progress
    percentage and a status line: bytes, rate, files), so luigid's page shows each batch's state."""

    EVERY = 2.0  # seconds between messages to the scheduler

    def __init__(self, task: luigi.Task, bar, total_bytes: int, to_fetch: int, in_batch: int):
        self.task, self.bar, self.total, self.to_fetch, self.in_batch = task, bar, total_bytes, to_fetch, in_batch
        self.done, self.started, self.shown = 0, time.monotonic(), 0.0
        self.lock = threading.Lock()
        self._show()

    def update(self, n: int) -> None:
        if self.bar:
            self.bar.update(n)
        with self.lock:
            self.done += n
            due = time.monotonic() - self.shown >= self.EVERY
            if due:
                self.shown = time.monotonic()  # one thread tells the scheduler; the others go on
        if due:
            self._show()  # RPCs to luigid, outside the lock: a slow scheduler must not hold up transfers

    def file_done(self) -> None:
        if self.bar:
            self.bar.file_done()

    def _show(self) -> None:
        self.shown = time.monotonic()
        rate = self.done / max(self.shown - self.started, 1e-3)
        self.task.set_progress_percentage(round(100 * self.done / self.total) if self.total else 0)
        self.task.set_status_message(f"{format_size(self.done)} of {format_size(self.total)} at {format_size(rate)}/s; "
                                     f"{self.to_fetch} of {self.in_batch} file(s) in this batch to fetch")

    def finish(self, fetched: int, failed: int) -> None:
        self.task.set_progress_percentage(100)
        self.task.set_status_message(f"{fetched} fetched, {failed} failed, {self.in_batch - self.to_fetch} already "
                                     f"current of {self.in_batch} file(s); {format_size(self.done)} transferred")


def listing_of_run(mirror: str, run_id: str) -> FetchListing:
    """The FetchListing that took run ``run_id``'s snapshot, rebuilt from the parameters the snapshot
    records, with this process's connections and TLS checking ([FetchListing] jobs and no_ssl, which
    the mirror command sets from --jobs and --no-ssl): made once per run and settings, as Luigi asks
    every DownloadFile for it."""
    settings = luigi.configuration.get_config()
    own = tuple(settings.get("FetchListing", name, fallback="") for name in ("jobs", "no_ssl"))
    return _listing_of_run(mirror, run_id, own)


@functools.lru_cache(maxsize=16)
def _listing_of_run(mirror: str, run_id: str, own: tuple) -> FetchListing:
    path = workspace_of(mirror).snapshot_path(run_id)
    try:
        recorded = sync.load_snapshot(str(path)).get("task")
    except FileNotFoundError:
        raise MirrorError(f"run {run_id} of the mirror {mirror} has no listing yet ({path}); a DownloadFile is "
                          "made by the run's VerifyTree: run that (or amsrepomirror mirror) instead") from None
    if recorded is None:
        raise MirrorError(f"the listing of run {run_id} ({path}) was taken by an earlier amsrepomirror that did not "
                          "record the run's parameters: start a new run (a new --run-id, or none)")
    # Only what names the run's work; where the mirror is now and the run asked for, whatever path
    # the snapshot was taken under.
    naming = {k: v for k, v in recorded.items() if k in _SIGNIFICANT}
    return FetchListing.from_str_params({**naming, "mirror": mirror, "run_id": run_id})


_SIGNIFICANT = {name for name, parameter in FetchListing.get_params() if parameter.significant}


class DownloadFile(FolderTask):
    """One listed file of a run; Luigi batches many into one run so scheduling stays linear.

    Its parameters only name it (mirror, run, path): the scheduler and the worker keep a record of
    every DownloadFile, 100,000s of them, and each parameter costs both. The run's other parameters
    (version, listing, platforms) come with its snapshot, which exists before any DownloadFile is
    made (VerifyTree makes them after FetchListing); connections and TLS checking are the running
    process's own (listing_of_run).
    """

    run_id = luigi.Parameter(description="the mirror run this file belongs to (names its listing snapshot)")
    path = luigi.Parameter(batch_method="\n".join, description="repository path (newline-joined when batched)")

    LOCAL_BATCHES = 16

    @property
    def max_batch_size(self):
        """Files per batch, read by Luigi once per worker when the graph is scheduled (so a --config
        file given on the command line counts). Luigi's scheduler spends O(tasks) for every batch it
        hands out, so a local run hands out at most LOCAL_BATCHES of them, bigger than [DownloadFile]
        max_batch_size on long listings (100,000 files in batches of 2,000 cost half a minute of
        gaps). A run shared under a central scheduler keeps the small batches the CLI chose for it
        ([DownloadFile] run_batch_size), so that they spread over the workers."""
        settings = luigi.configuration.get_config()
        if settings.has_option("DownloadFile", "run_batch_size"):
            return settings.getint("DownloadFile", "run_batch_size")
        size = settings.getint("DownloadFile", "max_batch_size")
        try:
            listed = len(self.requires().snapshot()["files"])
        except MirrorError:  # no listing yet: Luigi reports that from requires()
            return size
        return max(size, -(-listed // self.LOCAL_BATCHES))

    def requires(self):
        # Reads the run's snapshot (once per process), as JoinRun's does: the price of naming each
        # of 100,000s of tasks by three parameters instead of nine.
        return listing_of_run(self.mirror, self.run_id)

    def paths(self):
        return self.path.split("\n")

    def output(self):
        snapshot = str(self.workspace.snapshot_path(self.run_id))  # FetchListing's output, without a clone per check
        return [MirrorFileTarget(self.workspace, snapshot, p, self.run_id) for p in self.paths()]

    def run(self):
        snapshot = self.requires().snapshot()
        entries = [snapshot["by_path"][p] for p in self.paths()]
        entries = [e for e in entries if not sync.is_current(self.workspace, e, self.run_id)]
        total = sync.bytes_to_fetch(self.workspace, entries)
        shown = SchedulerProgress(self, progress.for_run(self.run_id, total), total, len(entries), len(self.paths()))
        outcome = sync.download_many(self.requires().session(), self.workspace, entries, self.run_id,
                                     jobs=self.requires().jobs, timeout=http().timeout, progress=shown,
                                     low_speed=http().low_speed(), segments=http().segments())
        shown.finish(len(outcome.fetched), len(outcome.failed))
        if outcome.failed:
            first = sorted(outcome.failed.items())[0][1]
            raise FetchError(f"{len(outcome.failed)} of {len(entries)} file(s) could not be fetched; first: {first}")


@inherits(FetchListing)
class VerifyTree(MirrorTask):
    """The verified mirror: every selected file present and current, recorded in the manifest."""

    deep = luigi.BoolParameter(config_path=dict(section="VerifyTree", name="deep"),
                               description="re-read and re-hash every file instead of trusting size+mtime")

    def requires(self):
        return self.clone(FetchListing)

    def output(self):
        return luigi.LocalTarget(str(self.workspace.run_manifest_path(self.run_id)))

    _downloads = None

    def downloads(self):
        """A DownloadFile for each selected file that the mirror does not hold as served now. A file
        already current needs none: a no-op rerun of 10,000 files spares Luigi 10,000 tasks to make
        and check. Made once per task: Luigi runs run() again from the start once they are done."""
        if self._downloads is None:
            self._downloads = [self.clone(DownloadFile, path=e["path"]) for e in self.requires().snapshot()["files"]
                               if not sync.is_current(self.workspace, e, self.run_id)]
        return self._downloads

    _planned = False

    def run(self):
        snapshot = self.requires().snapshot()
        downloads = self.downloads()
        if downloads and not self._planned:  # once: run() starts again after the downloads
            self._planned = True
            pending = [snapshot["by_path"][task.path] for task in downloads]
            needed = sync.check_space(self.workspace, pending)
            progress.for_run(self.run_id, needed, desc="download", files=len(pending))
        yield downloads
        progress.close_run(self.run_id)
        if snapshot["failed"]:
            first = snapshot["failed"][0]
            raise FetchError(f"{len(snapshot['failed'])} listed file(s) could not be fetched; first: {first['message']}")
        self.set_status_message(f"verifying {len(snapshot['files'])} file(s) and writing the manifest")
        manifest = sync.build_manifest(self.workspace, snapshot, self.version, run_id=self.run_id, deep=self.deep)
        sync.drop_stale_parts(self.workspace, snapshot)
        body = manifest.write(self.workspace.manifest_path(self.version))
        atomic_write_bytes(Path(self.output().path), body)  # the same bytes, not decoded again (tens of MB)
        self.set_status_message(f"done: {len(snapshot['files'])} file(s) verified, manifest written")  # luigid's last word


@inherits(VerifyTree)
class JoinRun(luigi.WrapperTask):
    """One per process working on a shared run under a central scheduler (``process`` tells them apart).

    Each ``stage`` waits for part of the shared graph: "listing" the run's snapshot; "downloads" every
    DownloadFile of the snapshot, added by this process itself (a dynamic dependency goes only to the
    worker that yielded it, so the others could not take any); "tree" the run's VerifyTree, which then
    finds every download done. Until its part is done or has failed it stays pending, which keeps this
    process's worker alive (worker keep-alive) for whatever tasks the scheduler hands it.
    """

    process = luigi.Parameter(description="host and pid of the process this task keeps waiting")
    stage = luigi.ChoiceParameter(choices=["listing", "downloads", "tree"], description="the part of the run to wait for")

    def requires(self):
        if self.stage == "listing":
            return self.clone(FetchListing)
        tree = self.clone(VerifyTree)
        return tree.downloads() if self.stage == "downloads" else tree

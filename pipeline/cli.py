"""``amsrepomirror``: the command line over the task graph. Errors end here as one line and an exit code."""

import argparse
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import luigi
from tqdm import tqdm

from amsrepomirror import __version__, config, errors
from amsrepomirror.bundle.format import (
    COMPRESSIONS,
    MANIFEST_NAME,
    SUMS_NAME,
    BundleManifest,
    read_manifest_bytes,
    refuse_settings_read_from,
)
from amsrepomirror.bundle.receipt import receipt_lacking, receipt_tree
from amsrepomirror.bundle.sums import read_sums
from amsrepomirror.bundle.trust import NO_SIGNERS, Trust, resolve_trust, signature_verdict
from amsrepomirror.bundle.verify import not_a_bundle, verify_bundle
from amsrepomirror.errors import MirrorError, UsageError, exit_code_for
from amsrepomirror.offline import placement
from amsrepomirror.offline.extract import tree_problems
from amsrepomirror.offline.installed import no_receipt, require_intact, scrub
from amsrepomirror.offline.unpack import MAX_CHANGES_LISTED, usage_hints
from amsrepomirror.online import sync
from amsrepomirror.online.credentials import require_account_or_none
from amsrepomirror.online.http import LowSpeed, fetch_text
from amsrepomirror.online.listing import listing_sha256, listing_url_for, repository_root, select_platforms
from amsrepomirror.online.manifest import Manifest, union_manifest
from amsrepomirror.online.workspace import Workspace
from amsrepomirror.pack.delta_base import resolve_base, select_delta, write_base
from amsrepomirror.pack.plan import chunk_plan, describe_plan, describe_since, describe_sticks, distinct_contents
from amsrepomirror.pack.tool import SUPPORTED_PYTHONS
from amsrepomirror.tasks import shared_run
from amsrepomirror.tasks.base import new_run_id, platform_rules
from amsrepomirror.tasks.bundle import BundleArchive
from amsrepomirror.tasks.mirror import FetchListing, JoinRun, VerifyTree
from amsrepomirror.tasks.unpack import Unpack
from amsrepomirror.util import progress, skipped_files
from amsrepomirror.util.fsutil import atomic_write_json, exclusive_lock, run_lock, why_unwritable
from amsrepomirror.util.units import format_size, parse_size

EXIT_PRIORITY = (errors.AUTH_FAILURE, errors.NO_SPACE, errors.INTEGRITY_FAILURE, errors.USAGE_ERROR, errors.RUNTIME_FAILURE)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _ConsoleFormat(logging.Formatter):
    """The package's log on the terminal: plain lines, warnings marked as such."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return f"warning: {message}" if record.levelno >= logging.WARNING else message


class _ConsoleHandler(logging.Handler):
    """Log lines on stderr, above any progress bar shown there (tqdm.write redraws the bar below)."""

    console = True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 -- logging's contract: a failing handler reports, never raises
            self.handleError(record)


def _console_logging() -> None:
    """Messages the package's modules log (logging.getLogger(__name__)) go to stderr as lines."""
    logger = logging.getLogger("amsrepomirror")
    if not any(getattr(h, "console", False) for h in logger.handlers):
        handler = _ConsoleHandler()
        handler.setFormatter(_ConsoleFormat())
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _open_log(log_file: Path):
    """``log_file`` opened for appending, or None when it cannot be used.

    Opened without following a symlink (or blocking on a fifo): a link planted at the log's name,
    e.g. in a shared AMSHOME, must not make this run append to, or create, a file elsewhere.
    """
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        for name in ("O_NOFOLLOW", "O_NONBLOCK", "O_CLOEXEC"):  # POSIX; Windows has no symlinks to plant here
            flags |= getattr(os, name, 0)
        fd = os.open(log_file, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            say(f"warning: {log_file} is a symlink; not writing the log there (remove the link to get the log back)")
        return None  # otherwise unwritable (read-only AMSHOME, full disk): the task reports that itself
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        say(f"warning: {log_file} is not a plain file (special file or hard link); not writing the log there")
        return None
    return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace")


def _configure_logging(log_file: Path | None, verbose: bool) -> None:
    """Luigi's chatter goes to a log file (and the terminal with --verbose), never in the way of our summary."""
    logging.raiseExceptions = False  # a log file on a full disk must not print tracebacks over our one-line error
    log = _open_log(log_file) if log_file else None
    for name in ("luigi", "luigi-interface"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = False
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        if log:
            handler = logging.StreamHandler(log)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
        if verbose:
            logger.addHandler(logging.StreamHandler(sys.stderr))
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())


def run_graph(tasks: list[luigi.Task], *, workers: int = 1, log_file: Path | None = None, verbose: bool = False,
              scheduler_url: str | None = None) -> list[dict]:
    """Run tasks with the local scheduler, or the central one at ``scheduler_url``; return the
    failures (code, message) of this graph's failed tasks (not those of other runs the scheduler knows)."""
    _configure_logging(log_file, verbose)
    # Shipped defaults for plain luigi runs; forced here so that no settings file can turn them off:
    # this command owns logging, and a task whose output is missing after a successful run() must
    # fail instead of being run again (no task may loop).
    settings = luigi.configuration.get_config()
    settings.set("core", "no_configure_logging", "true")
    settings.set("worker", "check_complete_on_run", "true")
    if scheduler_url:
        # Idle workers wait for the tasks other processes still run (JoinRun keeps one pending).
        with config.for_this_command({("worker", "keep_alive"): "true"}):
            result = luigi.build(tasks, scheduler_url=scheduler_url, workers=workers, detailed_summary=True)
    else:
        result = luigi.build(tasks, local_scheduler=True, workers=workers, detailed_summary=True)
    scheduler, ours = result.worker._scheduler, set(result.worker._scheduled_tasks)
    failures = []
    failed = {**scheduler.task_list("FAILED", "", limit=False), **scheduler.task_list("DISABLED", "", limit=False)}
    # In the order they failed, so that worst() breaks ties as the run went.
    for task_id in sorted(set(failed) & ours, key=lambda t: (failed[t].get("last_updated") or 0, t)):
        expl = scheduler.fetch_error(task_id).get("error") or ""
        try:
            failure = json.loads(expl)
            failures.append(json.loads(failure) if isinstance(failure, str) else failure)  # luigi may encode it twice
        except ValueError:
            last_line = expl.strip().splitlines()[-1] if expl.strip() else (
                f"{failed[task_id].get('name', task_id)} was given up: the process running it stopped or lost the "
                "scheduler (killed, host down); run the command again")
            failures.append({"code": errors.RUNTIME_FAILURE, "message": last_line})
    if not failures and not result.scheduling_succeeded:
        failures.append({"code": errors.RUNTIME_FAILURE,
                         "message": f"the task graph did not complete ({result.status.name}); see {log_file or 'the log'}"})
    return failures


def worst(failures: list[dict]) -> dict | None:
    """The failure whose exit code matters most to an admin (auth, space, integrity, usage, runtime)."""
    for code in EXIT_PRIORITY:
        for failure in failures:
            if failure.get("code") == code:
                return failure
    return failures[0] if failures else None


# ---- mirror -----------------------------------------------------------------------------------

def add_mirror_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action="append", required=True, metavar="AMS_VERSION",
                   help="AMS version whose listing to mirror, e.g. AMS2026.1 (not the tool's version); "
                   "repeat it to hold several versions in one mirror")
    p.add_argument("--mirror", required=True, type=Path,
                   help="mirror folder, best outside this checkout; it becomes $AMSHOME/repository offline")
    p.add_argument("--listing-url", action="append", default=[], metavar="URL",
                   help="default: https://downloads.scm.com/Downloads/packages/listings/<AMS_VERSION>.txt; "
                        "repeat it once per --version, in the same order")
    p.add_argument("--platform", action="append", default=[],
                   help="keep only this platform (repeatable; rules in [platforms]; default: every platform)")
    p.add_argument("--strict-authentication", action="store_true",
                   help="a 401 on any file is fatal (exit 3), instead of skipping files the account is not licensed for")
    p.add_argument("--no-ssl", action="store_true", help="do not verify TLS certificates (warns every run)")
    p.add_argument("--jobs", type=int, help=f"concurrent connections ({setting_default('FetchListing', 'jobs')})")
    p.add_argument("--deep", action="store_true", default=None,
                   help=f"re-hash every file instead of trusting size+mtime ({setting_default('VerifyTree', 'deep')})")
    p.add_argument("--report", type=Path, metavar="FILE", help="write the run summary as JSON to this file (default: none)")
    p.add_argument("--verbose", action="store_true", help="show Luigi's log on the terminal")
    p.add_argument("--scheduler-url", metavar="URL",
                   help="Luigi's central scheduler (luigid, see make scheduler), so that several processes or hosts "
                        "share the run (default: [core] default-scheduler-url when set, else a local scheduler)")
    p.add_argument("--local-scheduler", action="store_true",
                   help="use a local scheduler even when [core] default-scheduler-url is set")
    p.add_argument("--run-id", metavar="ID",
                   help="with a central scheduler: name the shared run (letters, digits, . _ -), so that processes "
                        "started at once join it; a new ID for each run (default: join the scheduler's live run "
                        "of the same work, else start one)")


def setting(given, section: str, key: str) -> str:
    """A command-line value, else the effective setting (shipped defaults under every settings file)."""
    if given is not None:
        return str(given)
    return luigi.configuration.get_config().get(section, key)


def versions_and_urls(args) -> list[tuple[str, str]]:
    """(version, listing URL or "") for each --version, in order; the URLs checked up front."""
    versions, urls = args.version, args.listing_url
    if urls and len(urls) != len(versions):
        raise UsageError(f"give --listing-url once per --version, in the same order "
                         f"({len(versions)} version(s), {len(urls)} listing URL(s))")
    repeated = sorted({v for v in versions if versions.count(v) > 1})
    if repeated:
        raise UsageError(f"--version {repeated[0]} is given more than once")
    pairs = list(zip(versions, urls or [""] * len(versions), strict=True))
    for version, url in pairs:
        repository_root(listing_url_for(version, url))
    return pairs


def _mirror_params(args) -> list[dict]:
    """The task parameters of each version's mirror run (one run id each, so their state stays apart)."""
    pairs = versions_and_urls(args)
    jobs = setting(args.jobs, "FetchListing", "jobs")
    if not jobs.isdigit() or int(jobs) < 1:
        raise UsageError(f"--jobs must be a whole number of at least 1 (got {jobs})")
    select_platforms([], args.platform, platform_rules())  # refuse unknown platform names up front
    if args.run_id is not None and not RUN_ID.fullmatch(args.run_id):
        raise UsageError(f"--run-id {args.run_id!r}: use letters, digits, '.', '_' and '-' only (it names a folder)")
    run_id = args.run_id or new_run_id()
    runs = [dict(version=version, mirror=str(args.mirror.absolute()), listing_url=url,
                 platform=sorted({p.lower() for p in args.platform}), strict_authentication=args.strict_authentication,
                 no_ssl=args.no_ssl, jobs=int(jobs), run_id=run_id if len(pairs) == 1 else f"{run_id}-{version}")
            for version, url in pairs]
    args.run_identities = {}  # run id -> this process's identity of that run's work (a shared run's only)
    for params in runs if args.scheduler_url else []:
        identity = _run_identity(params)
        if not args.run_id:
            params["run_id"] = shared_run.shared_run_id(args.scheduler_url, shared_run.work_key(params["mirror"], identity))
        args.run_identities[params["run_id"]] = identity
    return runs


RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _run_identity(params: dict) -> dict[str, str]:
    """This process's identity of a run's work (shared_run.run_identity), with the listing's content as
    read now: processes share a run only when they read the same listing."""
    task = FetchListing(**params)
    timeout = float(setting(None, "http", "timeout"))
    low_speed = LowSpeed(int(setting(None, "http", "low_speed_limit")), float(setting(None, "http", "low_speed_time")))
    text = fetch_text(task.session(), listing_url_for(params["version"], params["listing_url"]), timeout, low_speed)
    return task.identity(listing_sha256(text))


def use_scheduler(args) -> None:
    """Settle args.scheduler_url (None: a local scheduler) and check that a central one answers."""
    args.scheduler_url = shared_run.configured_url(args.scheduler_url, args.local_scheduler)
    if args.scheduler_url:
        shared_run.check_reachable(args.scheduler_url)
    elif args.run_id is not None:
        raise UsageError("--run-id goes with a central scheduler (--scheduler-url or [core] default-scheduler-url)")


@contextlib.contextmanager
def mirror_lock(ws: Workspace, args, run: str = ""):
    """The per-mirror lock: exclusive for a local-scheduler run. The processes of one shared run
    under a central scheduler (which never runs one task twice at once) hold it together, and keep
    out local runs and processes of any other ``run`` (their tasks would write the same files)."""
    busy = f"another amsrepomirror run is using the mirror {args.mirror}"
    with exclusive_lock(ws.state / "lock", busy, shared=bool(args.scheduler_url)):
        if not args.scheduler_url:
            yield
            return
        if len(run) > 100:  # several versions' run ids: keep the lock file's name short
            run = "runs-" + hashlib.sha256(run.encode()).hexdigest()[:32]
        with run_lock(ws.state / "shared-runs", run or "bundle", busy):
            yield


def run_mirror(args) -> int:
    """The mirror command."""
    use_scheduler(args)
    return mirror_versions(args)


def mirror_versions(args) -> int:
    """Mirror the listing(s) into --mirror; print the summary; return the exit code."""

    runs = _mirror_params(args)
    # This process's connections and TLS checking also for the FetchListing that DownloadFile rebuilds
    # from a run's snapshot (listing_of_run), which records neither: they are each process's own.
    own = {("FetchListing", "jobs"): str(runs[0]["jobs"]), ("FetchListing", "no_ssl"): "true" if args.no_ssl else "false"}
    with config.for_this_command(own):
        return _mirror_versions(args, runs)


def _mirror_versions(args, runs: list[dict]) -> int:
    ws = Workspace(args.mirror)
    why = why_unwritable(ws.state if ws.state.is_dir() else args.mirror)  # before a password is asked for
    if why:
        raise UsageError(f"cannot write to the mirror {args.mirror}: {why}")
    if args.no_ssl:
        say("WARNING: --no-ssl: TLS certificates are NOT verified; anyone on the network path can alter what is mirrored")
    found = [require_account_or_none(listing_url_for(r["version"], r["listing_url"]), interactive=True) for r in runs]
    if None in found:
        say("note: no SCM account found (SCM_USER and SCM_PASSWORD, ~/.netrc or a terminal prompt); trying without one")
    ws.state.mkdir(parents=True, exist_ok=True)
    with mirror_lock(ws, args, "+".join(r["run_id"] for r in runs)):
        return _locked_mirror(args, runs, ws)


def _shared_run(args, params: dict, deep: dict, log_file: Path) -> list[dict]:
    """One process's part in a run shared under a central scheduler, stage by stage (JoinRun): the
    snapshot, the downloads (in batches small enough to spread over the workers), the verified tree."""
    joined = dict(deep, process=shared_run.process_token(), **params)

    def stage(name: str) -> list[dict]:
        return run_graph([JoinRun(stage=name, **joined)], log_file=log_file, verbose=args.verbose,
                         scheduler_url=args.scheduler_url)

    failures = stage("listing")
    if failures:
        return failures
    snapshot = FetchListing(**params).snapshot()  # of whichever process was first, when several started at once
    shared_run.check_run_identity(params["run_id"], args.run_identities[params["run_id"]], snapshot.get("identity"))
    files = len(snapshot["files"])
    largest = luigi.configuration.get_config().getint("DownloadFile", "shared_batch_size")
    batch = shared_run.batch_size(files, params["jobs"], largest)
    with config.for_this_command({("DownloadFile", "run_batch_size"): str(batch)}):
        return stage("downloads") or stage("tree")


def _mirror_one_version(args, params: dict, ws) -> tuple[dict | None, dict, list[dict]]:
    """Run one version's graph: its snapshot (None without a listing), its summary and its failures."""
    started = time.monotonic()
    deep = {} if args.deep is None else {"deep": True}
    log_file = ws.run_dir(params["run_id"]) / "luigi.log"
    if args.scheduler_url:
        failures = _shared_run(args, params, deep, log_file)
    else:
        failures = run_graph([VerifyTree(**deep, **params)], log_file=log_file, verbose=args.verbose)
    snapshot_task = FetchListing(**params)
    snapshot = sync.load_snapshot(snapshot_task.output().path) if snapshot_task.complete() else None
    summary = sync.summarize(ws, params["run_id"], snapshot, time.monotonic() - started)
    summary["version"] = params["version"]
    summary["manifest"] = "" if failures else str(ws.manifest_path(params["version"]))
    return snapshot, summary, failures


def _locked_mirror(args, runs: list[dict], ws) -> int:
    """Each version in turn, then (when all succeeded) one prune that keeps what any version held lists."""
    results = [_mirror_one_version(args, params, ws) for params in runs]
    snapshots = [snapshot for snapshot, _, _ in results]
    failures = [f for _, _, version_failures in results for f in version_failures]
    pruned: dict[str, list[str]] = {}
    if not failures and None not in snapshots:
        try:
            keep = sync.paths_of_held_versions(ws).union(*(sync.selected_paths(s) for s in snapshots))
            if args.delete_unlisted:
                pruned["unlisted_" + ("would_delete" if args.dry_run else "deleted")] = sync.prune_unlisted(
                    ws, keep, dry_run=args.dry_run, force=args.force)
            else:
                pruned["unlisted_kept"] = sync.unlisted_files(ws, keep)
        except MirrorError as exc:
            failures.append({"code": exc.exit_code, "message": str(exc)})
    failure = worst(failures)
    summaries = [summary for _, summary, _ in results]
    exit_code = failure["code"] if failure else (errors.RUNTIME_FAILURE if any(s["failed"] for s in summaries) else 0)
    for snapshot, summary, _ in results:
        if snapshot is not None:  # without a listing there is nothing to summarize: the error line says why
            _print_mirror_summary(summary, args, several=len(results) > 1)
    _print_pruned(pruned, args)
    report = dict(summaries[0]) if len(summaries) == 1 else {"mirror": str(ws.mirror), "versions": summaries}
    report.update(pruned, exit_code=exit_code, error=failure["message"] if failure else "")
    if args.report:
        atomic_write_json(args.report, report)
    ws.prune_runs(keep=5 * len(runs))
    if failure:
        say(f"error: {failure['message']}")
    return exit_code


def _print_mirror_summary(s: dict, args, several: bool) -> None:
    which = f" ({s['version']})" if several else ""
    say(f"mirror {args.mirror}{which}: {s['fetched']} fetched, {s['up_to_date']} up to date, "
        f"{len(s['skipped_unauthorized'])} skipped (not licensed), {len(s['failed'])} failed; "
        f"{format_size(s['bytes_transferred'])} transferred in {s['seconds']:.1f} s "
        f"({format_size(s['rate_bytes_per_second'])}/s)")
    for path in s["skipped_unauthorized"][:10]:
        say(f"  skipped (HTTP {s['refused_with'][path]}, not licensed for this account): {path}")
    if len(s["skipped_unauthorized"]) > 10:
        say(f"  ... and {len(s['skipped_unauthorized']) - 10} more skipped")
    for path in s["failed"][:10]:
        say(f"  failed: {path}")
    for message in s.get("slowed_down", []):
        say(f"  {message}")


def _print_pruned(pruned: dict[str, list[str]], args) -> None:
    """What happened to the files no listing names any more: kept (and how to remove them), the list
    of what would be deleted (on stdout, one path a line), or what was deleted."""
    kept = pruned.get("unlisted_kept", [])
    if kept:
        say(f"  {len(kept)} file(s) in the mirror are no longer listed (kept); to see them: "
            f"{command_line(args, '--delete-unlisted', '--dry-run')}")
    if "unlisted_would_delete" in pruned:
        doomed = pruned["unlisted_would_delete"]
        say(f"  --dry-run: --delete-unlisted would delete {len(doomed)} file(s) no longer listed"
            + (" (listed on stdout; run again without --dry-run to delete them):" if doomed else ""))
        for path in doomed:
            print(path)
    deleted = pruned.get("unlisted_deleted")
    if deleted is not None:
        for path in deleted[:20]:
            say(f"  deleted (no longer listed): {path}")
        say(f"  {len(deleted)} unlisted file(s) deleted")


def tool_command() -> str:
    """How to run this tool as typed: ``amsrepomirror`` when that is on PATH, else its full path."""
    script = Path(sys.executable).with_name("amsrepomirror")
    found = shutil.which("amsrepomirror")
    if found and Path(found).resolve() == script.resolve():
        return "amsrepomirror"
    return shlex.quote(str(script)) if script.exists() else f"{shlex.quote(sys.executable)} -m amsrepomirror"


def command_line(args, *extra: str) -> str:
    """This run's command line with ``extra`` options added, ready to paste."""
    return f"{tool_command()} {shlex.join([*[a for a in args.argv if a not in extra], *extra])}"


# ---- bundle, plan, verify, unpack -------------------------------------------------------------------

def add_bundle_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="bundle folder to write (outside the mirror)")
    p.add_argument("--chunk-size", metavar="SIZE",
                   help=f"largest chunk, e.g. 3900MiB ({setting_default('BundleArchive', 'chunk_size')})")
    p.add_argument("--compression", choices=COMPRESSIONS, help=setting_default("BundleArchive", "compression"))
    p.add_argument("--offline", action="store_true", help="bundle the last verified mirror; do not contact the server")
    p.add_argument("--dry-run", action="store_true", help="print the chunk plan and write nothing")
    p.add_argument("--stick-size", metavar="SIZE",
                   help="size of one USB stick, e.g. 64GB: print which chunks go on which stick, with --dry-run or "
                   "once the bundle is written (default: no stick plan)")
    p.add_argument("--with-tool", action="store_true",
                   help="add tool/: amsrepomirror and its dependencies as wheels, and install.sh for the offline side")
    p.add_argument("--tool-python", action="append", default=[], choices=SUPPORTED_PYTHONS, metavar="X.Y",
                   help="with --with-tool: the offline side's Python (repeatable; default: this one)")
    p.add_argument("--tool-platform", action="append", default=[], metavar="TAG",
                   help="with --with-tool: pip platform tag, e.g. manylinux2014_x86_64 (repeatable; default: this machine's)")
    p.add_argument("--sign-key", type=Path, metavar="KEY",
                   help="sign manifest.json with this OpenSSH key (ssh-keygen -Y sign; a passphrase is asked for "
                   "or the key is used through ssh-agent); writes manifest.json.sig (default: unsigned)")


def add_since_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", metavar="BASE", help="a delta: only what changed since BASE (last, a bundle folder, "
                   "its manifest.json, or a receipt from the offline side; default: a full bundle)")
    p.add_argument("--drop-version", action="append", default=[], metavar="AMS_VERSION",
                   help="with --since: remove this other version BASE holds, with the files only it needs "
                   "(repeatable; unpack needs the same --drop-version; default: every other version is kept)")


FAT32_LIMIT = 4 * 1024**3 - 1
MIN_CHUNK = 64 * 1024


def _bundle_settings(args):
    """Chunk size and compression from the command line, else [BundleArchive]; checked up front."""
    chunk_size = setting(args.chunk_size, "BundleArchive", "chunk_size")
    compression = setting(args.compression, "BundleArchive", "compression")
    size = parse_size(chunk_size)
    if size < MIN_CHUNK:
        raise UsageError(f"chunk size {chunk_size} is too small: use at least 64KiB (3900MiB suits USB sticks)")
    if compression not in COMPRESSIONS:
        raise UsageError(f"unknown compression {compression!r} in [BundleArchive] (see amsrepomirror config): "
                         f"use one of {', '.join(COMPRESSIONS)}")
    if size > FAT32_LIMIT:
        say(f"note: chunks of {chunk_size} do not fit on FAT32 sticks (files must stay below 4 GiB)")
    if compression == "zstd":
        say("note: --compression zstd: stock 7-Zip cannot open zstd chunks (7-Zip-zstd and amsrepomirror can); "
            "checking by hand with 7z needs copy or lzma2")
    return chunk_size, compression


def _check_bundle_folder(mirror: Path, out: Path) -> None:
    """The bundle folder and the mirror must not hold each other: a later ``mirror --delete-unlisted``
    would delete a bundle inside the mirror, and a mirror inside the bundle folder would travel in it."""
    mirror_real, out_real = mirror.resolve(), out.resolve()
    if out_real == mirror_real or mirror_real in out_real.parents:
        raise UsageError(f"--out {out} is inside the mirror {mirror} (mirror --delete-unlisted would remove it): "
                         "choose a bundle folder outside the mirror")
    if out_real in mirror_real.parents:
        raise UsageError(f"the mirror {mirror} is inside the bundle folder --out {out}: "
                         "choose a bundle folder outside the mirror")


def run_bundle(args) -> int:
    """Mirror (unless --offline), then write the bundle folder."""

    _check_bundle_folder(args.mirror, args.out)
    versions = [version for version, _ in versions_and_urls(args)]
    chunk_size, compression = _bundle_settings(args)
    if (args.tool_python or args.tool_platform) and not args.with_tool:
        raise UsageError("--tool-python and --tool-platform go with --with-tool")
    if args.since and len(versions) > 1:
        raise UsageError("--since works with one --version at a time (a delta of several versions is not supported)")
    if args.drop_version and not args.since:
        raise UsageError("--drop-version goes with --since: a delta drops a version of its base "
                         "(a full bundle holds only the versions it names)")
    if args.dry_run and args.since:
        return _print_delta_plan(args.mirror, versions[0], chunk_size, compression, args.stick_size, args.since,
                                 args.drop_version)
    if args.dry_run:
        return _print_plan(args.mirror, versions, chunk_size, compression, args.stick_size)
    if args.stick_size:
        parse_size(args.stick_size)  # refused now, not after the bundle is written
    why = why_unwritable(args.out)
    if why:
        raise UsageError(f"cannot write the bundle folder --out {args.out}: {why}")
    if args.sign_key is not None and not args.sign_key.is_file():
        raise UsageError(f"--sign-key {args.sign_key} does not exist")
    use_scheduler(args)
    if not args.offline:
        code = mirror_versions(args)
        if code:
            say("bundle: not written, because the mirror is not complete")
            return code
    ws = Workspace(args.mirror)
    for version in versions:
        if not ws.manifest_path(version).exists():
            raise UsageError(f"--offline: {args.mirror} has no verified {version} mirror yet; run mirror first")
    # The mirror run above verified the tree; bundling reads its manifest, so it needs no network.
    task = BundleArchive(version=versions[0], versions=versions if len(versions) > 1 else [], mirror=str(ws.mirror),
                         offline=True, out=str(args.out.absolute()), chunk_size=chunk_size, compression=compression,
                         since=_delta_base(ws, versions[0], args.since, args.drop_version), with_tool=args.with_tool,
                         tool_pythons=args.tool_python, tool_platforms=args.tool_platform,
                         sign_key=str(args.sign_key.absolute()) if args.sign_key else "")
    with mirror_lock(ws, args), progress.shared_bar("bundle"):
        failure = worst(run_graph([task], workers=2, log_file=ws.run_dir(new_run_id()) / "bundle.log",
                                  verbose=args.verbose, scheduler_url=args.scheduler_url))
    if failure:
        say(f"error: {failure['message']}")
        return failure["code"]
    say(f"bundle: {args.out} is complete; check it with: {tool_command()} verify {shlex.quote(str(args.out))}")
    if args.stick_size:
        print_sticks(args.out, parse_size(args.stick_size))
    return 0


def print_sticks(bundle: Path, stick_size: int) -> None:
    """Which chunks of the written bundle go on which stick; every other file (manifest, sums, README,
    signature, tool/) goes on each."""
    manifest = BundleManifest.read(bundle / MANIFEST_NAME)
    chunks = {c.name for c in manifest.chunks}
    carried = [name for name in read_sums(bundle) if name not in chunks] + [SUMS_NAME]  # signature and tool/ too
    extras = sum((bundle / name).stat().st_size for name in carried)
    sizes = {c.name: c.size for c in manifest.chunks}
    too_big = [name for name, size in sizes.items() if size + extras > stick_size]
    if too_big:
        raise UsageError(f"chunk {too_big[0]} and the bundle's small files do not fit on a stick of "
                         f"{format_size(stick_size)}: use a smaller --chunk-size")
    for line in describe_sticks(sizes, stick_size, extras, tool_command()):
        print(line)


def _base_manifest(base: Path) -> BundleManifest | None:
    """The manifest of bundle ``base`` (its folder or its manifest.json), or None when BASE is not a
    bundle (``last``, a receipt): the chunks to copy over an earlier full bundle need one."""
    path = base / MANIFEST_NAME if base.is_dir() else base
    if not path.is_file():
        return None
    try:
        return BundleManifest.read(path)
    except MirrorError:
        return None


def _delta_base(ws: Workspace, version: str, since: str | None, dropped: Sequence[str] = ()) -> str:
    """``--since`` resolved against the verified mirror and snapshotted in its history: the file
    BundleArchive plans the delta against ("" for a full bundle)."""
    if not since:
        return ""
    current = Manifest.read(ws.manifest_path(version))
    base = resolve_base(since, ws, version, current.files, dropped)
    select_delta(base, current.files, version)  # refused now (exit 2), not in a task
    kept = [v for v in base.all_versions if v != version and v not in base.dropped]
    say(f"bundle: a delta of {version} since {base.described} (tree {base.identity[:12]})"
        + (f", keeping {' and '.join(kept)}" if kept else "")
        + (f", dropping {' and '.join(base.dropped)}" if base.dropped else ""))
    return str(write_base(ws, base))


def _verified_manifest(mirror: Path, version: str | None) -> Manifest:
    """The mirror's verified manifest of ``version`` (or of its only version)."""
    paths = _verified_manifest_paths(mirror, [version] if version else [])
    return Manifest.read(paths[0])


def _verified_manifest_paths(mirror: Path, versions: Sequence[str]) -> list[Path]:
    ws = Workspace(mirror)
    if not versions:
        found = sorted(ws.state.glob("*.manifest.json"))
        if len(found) != 1:
            raise UsageError(f"{mirror}: give --version ({len(found)} verified versions found)")
        paths = found
    else:
        for version in versions:
            listing_url_for(version)  # refuses a malformed version before it names a file
        paths = [ws.manifest_path(version) for version in versions]
    for path in paths:
        if not path.exists():
            raise UsageError(f"{mirror} has no verified mirror manifest ({path.name}); run mirror first")
    return paths


def _print_plan(mirror: Path, versions: Sequence[str], chunk_size: str, compression: str, stick_size: str | None,
                since: str | None = None) -> int:
    """The full bundle's chunk plan; with ``since`` a bundle already on the transfer disk, the
    chunks of it to copy again (the others are the same bytes)."""
    manifests = [Manifest.read(path) for path in _verified_manifest_paths(mirror, versions)]
    manifest = manifests[0] if len(manifests) == 1 else union_manifest(manifests)
    base = _base_manifest(Path(since)) if since else None
    carried, _ = distinct_contents(manifest.files)
    plan = chunk_plan(carried, parse_size(chunk_size), manifest.version, compression)
    stick = parse_size(stick_size) if stick_size else None
    print(describe_plan(plan, carried, stick), end="")
    if base is not None:
        print(describe_since(plan, base, str(since)), end="")
    if stick and any(c.max_size > stick for c in plan):
        raise UsageError(f"chunks of {chunk_size} do not fit on sticks of {stick_size}: use a smaller --chunk-size")
    return 0


def _print_delta_plan(mirror: Path, version: str | None, chunk_size: str, compression: str,
                      stick_size: str | None, since: str, dropped: Sequence[str] = ()) -> int:
    """What a delta since ``since`` would carry, reuse and remove, and its chunk plan; writes nothing."""
    manifest = _verified_manifest(mirror, version)
    base = resolve_base(since, Workspace(mirror), manifest.version, manifest.files, dropped)
    delta = select_delta(base, manifest.files, manifest.version)
    carried = sum(f.size for f in delta.carried)
    print(f"delta since {base.described} (tree {base.identity[:12]}): {len(delta.carried)} of {len(manifest.files)} "
          f"files new or changed, {format_size(carried)} ({carried} bytes) of {format_size(manifest.total_bytes)}; "
          f"{len(delta.reused)} reused from the base under another path; {len(delta.removed)} removed")
    reused = [f"{r.path} (from {r.source})" for r in delta.reused]
    for title, paths in (("carried", [f.path for f in delta.carried]), ("reused", reused), ("removed", delta.removed)):
        for path in paths:
            print(f"  {title}: {path}")
    carried, _ = distinct_contents(delta.carried)
    plan = chunk_plan(carried, parse_size(chunk_size), manifest.version, compression)
    stick = parse_size(stick_size) if stick_size else None
    print(describe_plan(plan, carried, stick), end="")
    return 0


def run_plan(args) -> int:
    chunk_size, compression = _bundle_settings(args)
    if args.since and len(args.version) > 1:
        raise UsageError("--since works with one --version at a time (a delta of several versions is not supported)")
    if args.since:
        _print_delta_plan(args.mirror, args.version[0] if args.version else None, chunk_size, compression,
                          args.stick_size, args.since)
        if _base_manifest(Path(args.since)) is None:
            return 0
        print(f"\nor a full bundle over the one in {args.since}:")
    return _print_plan(args.mirror, args.version, chunk_size, compression, args.stick_size, args.since)


def site_trust(args) -> Trust:
    """The site's trust setting for this command (trust.resolve_trust), its notes said once."""
    found = resolve_trust(args.allowed_signers, args.revoked_keys)
    for note in found.notes:
        say(note)
    return found


def print_signature_verdict(found: Trust, check, refusal: str | None) -> None:
    """Print what the bundle's signature says under the site's trust setting (trust.signature_verdict)."""
    print(check.describe() if check else "signature: unsigned")
    if refusal is None and found.allowed_signers is None:
        print(NO_SIGNERS)


def run_verify(args) -> int:
    if args.installed:
        return run_verify_installed(args)
    if args.amshome is not None:
        raise UsageError("--amshome goes with --installed: verify --installed --amshome DIR checks the installed tree")
    if args.bundle is None:
        raise UsageError("verify checks a bundle folder: give it (verify BUNDLE), or check the installed tree "
                         "with verify --installed [--amshome DIR]")
    why_not = not_a_bundle(args.bundle, tool_command())
    if why_not:
        raise UsageError(why_not)
    refuse_settings_read_from(args.bundle)  # before anything those settings could steer
    found = site_trust(args)
    manifest_bytes = read_manifest_bytes(args.bundle)  # read once: the chunks and the signature are checked on it
    # The signature first, as unpack: no chunk that only a manifest the site's signers refuse names is read.
    check, bad_signature = signature_verdict(args.bundle, found, manifest_bytes)
    if bad_signature:  # guard: verify-signature-first
        print_signature_verdict(found, check, bad_signature)
        say(f"error: {bad_signature}")
        return errors.INTEGRITY_FAILURE
    bar = progress.ByteProgress(None, "verify") if sys.stderr.isatty() else None  # in logs: only the verdict
    try:
        report = verify_bundle(args.bundle, test_archives=not args.no_test, partial=args.partial,
                               on_bytes=bar.update if bar else None, on_total=bar.set_total if bar else None,
                               manifest_bytes=manifest_bytes)
    finally:
        if bar is not None:
            bar.close(clear=True)
    for warning in report.warnings:
        say(f"warning: {warning}")
    if report.not_here:
        print(f"not here yet ({len(report.not_here)} of {len(report.manifest.chunks) if report.manifest else '?'} "
              f"chunks): {', '.join(report.not_here)}")
    if report.ok:
        manifest = report.manifest
        if report.not_here:
            print(f"bundle {args.bundle}: the {report.chunks_checked} chunk(s) here are intact; verify again, without "
                  "--partial, once all chunks are in one folder")
        else:
            print(f"bundle {args.bundle} is intact: {len(manifest.chunks)} chunk(s), {len(manifest.files)} file(s), "
                  f"{format_size(manifest.total_bytes)} of {' and '.join(manifest.all_versions)}")
        print_signature_verdict(found, check, bad_signature)
        for line in skipped_files.describe(manifest.lacking, "the bundle"):
            print(line)
        return 0
    for problem in report.problems:
        say(f"  {problem}")
    say(f"error: {report.message()}")
    return errors.INTEGRITY_FAILURE


def run_verify_installed(args) -> int:
    """The scrub (for cron): re-hash $AMSHOME/repository against its receipt; name what differs."""
    if args.bundle is not None or args.partial or args.no_test or args.allowed_signers or args.revoked_keys:
        raise UsageError("verify --installed checks AMSHOME's repository against its receipt: it takes no bundle "
                         "folder and none of --partial, --no-test, --allowed-signers, --revoked-keys")
    home = amshome_of(args).absolute()
    if not home.is_dir():
        raise UsageError(f"AMSHOME {home} is not a directory")
    if not os.path.lexists(home / placement.RECEIPT):  # only reads: no lock file is left in a folder that is no AMSHOME
        raise no_receipt(home)
    bar = progress.ByteProgress(None, "verify") if sys.stderr.isatty() else None
    try:
        with placement.amshome_lock(home, shared=True):  # no unpack swaps the tree meanwhile (one running: exit 2)
            if placement.interrupted(home):
                raise UsageError(f"an interrupted unpack left work in AMSHOME {home}: run that unpack again to finish "
                                 "it, then verify --installed")
            report = scrub(home, on_bytes=bar.update if bar else None, on_total=bar.set_total if bar else None)
    finally:
        if bar is not None:
            bar.close(clear=True)
    found = report.differences
    for line in found[:MAX_CHANGES_LISTED]:
        say(f"  {line}")
    if len(found) > MAX_CHANGES_LISTED:
        say(f"  ... and {len(found) - MAX_CHANGES_LISTED} more")
    if report.receipt.get("trust_installed"):
        say("note: the last delta unpack took installed files by size, mtime and inode without hashing them "
            "(--trust-installed); this check is the first to hash them since")
    require_intact(home, report)
    print(f"{home / placement.REPOSITORY} is intact: {report.files} files, {format_size(report.bytes)} hashed against "
          f"its receipt (tree {report.receipt['tree_sha256'][:12]}, {' and '.join(report.versions)})")
    return 0


def amshome_of(args) -> Path:
    """--amshome, else $AMSHOME from the environment (said on stderr, so the admin sees which)."""
    if args.amshome is not None:
        placement.refuse_repository_folder(args.amshome)  # before a log or lock is written there
        return args.amshome
    from_environment = os.environ.get("AMSHOME", "")
    if not from_environment:
        raise UsageError("give --amshome DIR or set AMSHOME: the AMS installation folder whose repository/ to fill")
    say(f"{args.command}: AMSHOME {from_environment} (from the environment; --amshome overrides it)")
    placement.refuse_repository_folder(from_environment)
    return Path(from_environment)


def run_unpack(args) -> int:
    why_not = not_a_bundle(args.bundle, tool_command())
    if why_not:
        raise UsageError(why_not)
    refuse_settings_read_from(args.bundle)  # before anything those settings could steer (the task, its worker)
    args.amshome = amshome_of(args)
    site_trust(args)  # a setting that cannot be checked is refused before anything else; notes said once
    task = Unpack(bundle=str(args.bundle.absolute()), amshome=str(args.amshome.absolute()), keep_previous=args.keep_previous,
                  reinstall=args.reinstall, deep=args.deep, trust_installed=args.trust_installed,
                  allow_downgrade=args.allow_downgrade, drop_versions=sorted(set(args.drop_version)),
                  allowed_signers=str(args.allowed_signers.absolute()) if args.allowed_signers else "",
                  revoked_keys=str(args.revoked_keys.absolute()) if args.revoked_keys else "")
    try:
        if task.complete():
            say(f"unpack: {args.amshome}/repository already holds this bundle; nothing to do")
        else:
            log = args.amshome.absolute() / ".amsrepomirror-unpack.log" if args.amshome.is_dir() else None
            # Run in this process: what the task checked and placed (task.checked) is read below.
            with config.for_this_command({("worker", "force_multiprocessing"): "false"}):
                failure = worst(run_graph([task], log_file=log, verbose=args.verbose))
            if failure:
                say(f"error: {failure['message']}")
                return failure["code"]
        # The manifest this run checked (placed, or found installed), not the folder's, which may hold another by now.
        manifest = task.checked.manifest
    finally:
        task.checked = None  # the same object serves a later unpack of this bundle in this process: it must look again
    for line in skipped_files.describe(manifest.lacking, f"unpack: {args.amshome}/repository"):
        say(line)
    print(usage_hints(args.amshome.absolute(), manifest.all_versions))
    return 0


def run_receipt(args) -> int:
    """Write AMSHOME's receipt (the installed tree; no secrets) to a file to carry to the online side."""

    home = amshome_of(args).absolute()
    receipt = placement.read_receipt(home)
    if receipt is None:
        raise UsageError(f"AMSHOME {home} has no receipt: nothing was unpacked there by amsrepomirror")
    tree = receipt_tree(receipt, home / placement.RECEIPT)
    changes = tree_problems(home / placement.REPOSITORY, tree, check_hashes=False)
    if changes:
        say(f"warning: {home / placement.REPOSITORY} no longer matches this receipt ({changes[0]}); "
            "a delta built on it will be refused: unpack a full bundle with --reinstall")
    for line in skipped_files.describe(receipt_lacking(receipt, home / placement.RECEIPT), "receipt: the installed tree"):
        say(line)
    identity = receipt["tree_sha256"]
    out = args.out or Path(f"receipt-{receipt['version']}-{identity[:12]}.json")
    if str(out) == "-":
        print(json.dumps(receipt, indent=1, sort_keys=True))
    else:
        atomic_write_json(out, receipt)
        say(f"receipt: wrote {out}: {receipt['version']}, {len(tree)} files, tree {identity[:12]}; carry it to the "
            f"online side for: amsrepomirror bundle ... --since {out}")
    return 0


def run_config(args) -> int:
    """Print the effective settings, each with the file it came from."""

    print("# settings files, lowest priority first (a later file wins key by key; command-line options beat all):")
    read = config.sources()
    width = max(len(label) for label, _ in read)
    for label, path in read:
        if path is None:
            where = "(not set)" if label.startswith("$") else "(not given)"
        else:
            where = Path(path).absolute() if Path(path).is_file() else f"(no {path})"
        print(f"#   {label:<{width}}  {where}")
    section = None
    for (name, key), (value, label) in config.effective().items():
        if name != section:
            print(f"\n[{name}]")
            section = name
        print(f"{key} = {value}  # {label}")
    return 0


def run_demo(args) -> int:
    """Mirror, bundle, verify and unpack the SCM double's synthetic repository, end to end."""

    # Imported here: the SCM double is test and demo material, not part of a production run.
    from amsrepomirror.testing.repository import DEFAULT_VERSION, make_repository
    from amsrepomirror.testing.scmdouble import DEMO_PASSWORD, DEMO_USER, ScmDouble  # likewise

    work = (args.workdir or Path(tempfile.mkdtemp(prefix="amsrepomirror-demo-"))).absolute()
    server_root, mirror_dir, bundle_dir, amshome = work / "scm", work / "mirror", work / "bundle", work / "amshome"
    if not server_root.exists():
        make_repository(server_root, DEFAULT_VERSION)
    amshome.mkdir(parents=True, exist_ok=True)
    os.environ["SCM_USER"], os.environ["SCM_PASSWORD"] = DEMO_USER, DEMO_PASSWORD  # the double's public demo account
    double = ScmDouble(server_root, port=args.port)
    try:
        double.start()
    except OSError as exc:
        raise UsageError(f"demo: cannot serve on port {args.port} ({exc.strerror}): choose another --port, "
                         "or --port 0 for any free one") from None
    try:
        say(f"demo: SCM double serving {server_root} at {double.base_url} (user {DEMO_USER})")
        steps = [
            ["bundle", "--version", DEFAULT_VERSION, "--mirror", mirror_dir, "--listing-url", double.listing_url(DEFAULT_VERSION),
             "--out", bundle_dir, "--chunk-size", "1MiB"],
            ["verify", bundle_dir],
            ["unpack", bundle_dir, "--amshome", amshome],
        ]
        for step in steps:
            say(f"\n$ amsrepomirror {' '.join(map(str, step))}")
            code = main([str(s) for s in step])
            if code:
                say(f"demo: step failed with exit code {code}; what it left is in {work} (remove it with: "
                    f"rm -rf {shlex.quote(str(work))})")
                return code
    finally:
        double.stop()
    if args.clean:
        shutil.rmtree(work)
        say(f"\ndemo: done; removed {work} (--clean)")
        return 0
    say(f"\ndemo: everything is in {work}:\n  mirror  {mirror_dir}\n  bundle  {bundle_dir}\n"
        f"  AMSHOME {amshome} (repository/ placed there)\nremove it with: rm -rf {shlex.quote(str(work))}")
    return 0


# ---- entry point --------------------------------------------------------------------------------

def add_signer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allowed-signers", type=Path, metavar="FILE",
                   help="OpenSSH allowed_signers file: require a signature of manifest.json by a key in it "
                        f"({setting_default('trust', 'allowed_signers')})")
    p.add_argument("--revoked-keys", type=Path, metavar="FILE",
                   help="OpenSSH revoked keys file (ssh-keygen -Y verify -r): refuse signatures by these keys "
                   f"({setting_default('trust', 'revoked_keys')})")


PURPOSE = ("Mirror SCM's AMS package repository, carry it across an air gap in checksummed 7z chunks, "
           "and place it as $AMSHOME/repository.")

EXIT_CODES = """exit codes:
  0    done
  1    runtime failure (network, server, a file that could not be fetched)
  2    usage: a bad option, setting, folder or listing URL; nothing was changed
  3    authentication: the server refused the SCM account, or its TLS certificate failed
  4    integrity: a checksum, size or archive does not match
  5    not enough disk space
  130  interrupted (Ctrl-C): run the same command again to continue"""

ACCOUNT = """SCM account (never on the command line), the first found:
  SCM_USER and SCM_PASSWORD   both in the environment
  ~/.netrc                    machine downloads.scm.com login USER password PASS  (chmod 600)
  a prompt                    when run on a terminal
A private CA: name its certificate in REQUESTS_CA_BUNDLE or SSL_CERT_FILE.
Settings (defaults of the options below): amsrepomirror config shows each and the file it came from."""

SIZES = """sizes: KiB, MiB, GiB are 1024-based, kB, MB, GB 1000-based (as USB sticks are sold); a bare K, M or G
is refused as ambiguous. Sizes are shown 1024-based (KiB, MiB, GiB) everywhere."""

WORKFLOW = """online, with network:
  amsrepomirror bundle --version AMS2026.1 --mirror /data/ams-mirror --out /data/bundle-2026.1
offline, on the cluster (AMSHOME set, or --amshome DIR):
  amsrepomirror verify BUNDLE      (or verify --partial STICK, one stick at a time)
  amsrepomirror unpack BUNDLE"""


class AdminHelp(argparse.RawDescriptionHelpFormatter):
    """Help for admins: every option says its default (a flag: off), epilogs printed as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.required or "default" in text or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if action.default not in (None, []):
            return f"{text} (default: %(default)s)"
        return text


def setting_default(section: str, key: str) -> str:
    """'default: VALUE, the [SECTION] key setting' for an option's help (the value in effect now)."""
    config.install_defaults()
    value = luigi.configuration.get_config().get(section, key, "")
    return f"default: {value or 'none'}, the [{section}] {key} setting"


def add_command(sub, name: str, purpose: str, epilog: str = EXIT_CODES) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=purpose, description=purpose[0].upper() + purpose[1:] + ".", epilog=epilog,
                          formatter_class=AdminHelp)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amsrepomirror", description=f"{PURPOSE}\n\n{WORKFLOW}",
                                     epilog=f"{ACCOUNT}\n\n{SIZES}\n\n{EXIT_CODES}", formatter_class=AdminHelp)
    parser.add_argument("--version", action="version", version=f"amsrepomirror {__version__}",
                        help="print the version of amsrepomirror and exit (after a command, --version is an AMS version)")
    parser.add_argument("--config", metavar="FILE", help="settings file read last, over every luigi.cfg "
                        "(amsrepomirror config shows what applies; default: none)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    online = f"{ACCOUNT}\n\n{EXIT_CODES}"

    p = add_command(sub, "mirror", "mirror the SCM repository from its listing, resumably, and verify it", online)
    add_mirror_options(p)
    p.add_argument("--delete-unlisted", action="store_true", help="remove mirror files the listing no longer names")
    p.add_argument("--dry-run", action="store_true", help="with --delete-unlisted: only list what would be removed")
    p.add_argument("--force", action="store_true", help="with --delete-unlisted: allow removing more than a quarter")
    p.set_defaults(func=run_mirror)

    p = add_command(sub, "bundle", "mirror, then pack the verified mirror into checksummed 7z chunks", online)
    add_mirror_options(p)
    add_bundle_options(p)
    add_since_option(p)
    p.set_defaults(func=run_bundle, delete_unlisted=False, force=False)

    p = add_command(sub, "plan", "show the chunk plan and which chunks go on which USB stick; writes nothing")
    p.add_argument("--mirror", required=True, type=Path, help="the mirror folder")
    p.add_argument("--version", action="append", default=[], metavar="AMS_VERSION",
                   help="AMS version, e.g. AMS2026.1, not the tool's (repeatable, to plan a bundle of several; "
                   "default: the mirror's only version)")
    p.add_argument("--chunk-size", metavar="SIZE",
                   help=f"largest chunk, e.g. 3900MiB ({setting_default('BundleArchive', 'chunk_size')})")
    p.add_argument("--compression", choices=COMPRESSIONS, help=setting_default("BundleArchive", "compression"))
    p.add_argument("--stick-size", metavar="SIZE", help="size of one USB stick, e.g. 64GB: print which chunks go on which "
                   "stick (default: no stick plan)")
    p.add_argument("--since", metavar="BASE",
                   help="what a delta since BASE (last, a bundle folder, its manifest.json, a receipt) carries; "
                   "for a bundle on the transfer disk also the chunks of a new full bundle to copy over it "
                   "(default: a full bundle)")
    p.set_defaults(func=run_plan)

    p = add_command(sub, "verify", "check a bundle folder offline: every chunk's sha256, size and 7z CRCs; "
                    "or, with --installed, AMSHOME's repository against its receipt")
    p.add_argument("bundle", type=Path, nargs="?",
                   help="the bundle folder (holding manifest.json, SHA256SUMS and the chunks)")
    p.add_argument("--installed", action="store_true",
                   help="instead of a bundle, re-hash $AMSHOME/repository against its receipt and name every file "
                   "changed, missing or added (for cron; exit 4 when it differs)")
    p.add_argument("--amshome", type=Path, help="with --installed: the AMS installation folder "
                   "(default: $AMSHOME from the environment)")
    p.add_argument("--no-test", action="store_true", help="skip the 7z CRC test (sha256 only)")
    p.add_argument("--partial", action="store_true",
                   help="one stick of several: check the chunks that are here, list the others as not here yet")
    add_signer_options(p)
    p.set_defaults(func=run_verify)

    p = add_command(sub, "unpack", "verify a bundle and place it atomically as $AMSHOME/repository")
    p.add_argument("bundle", type=Path, help="the bundle folder (all chunks in it)")
    p.add_argument("--amshome", type=Path, help="the AMS installation folder (default: $AMSHOME from the environment)")
    p.add_argument("--keep-previous", action="store_true", help="keep the replaced tree as repository.previous")
    p.add_argument("--reinstall", action="store_true",
                   help="check and unpack the bundle again even when AMSHOME's receipt says it is installed")
    trust = p.add_mutually_exclusive_group()
    trust.add_argument("--deep", action="store_true",
                       help="delta: hash the installed files it keeps even when [unpack] trust_installed is set "
                       "(hashing them is the default)")
    trust.add_argument("--trust-installed", action="store_true",
                       help="delta: take installed files whose size, mtime and inode are still the receipt's without "
                       "hashing them (faster; bit rot goes unseen; the receipt records it) "
                       f"({setting_default('unpack', 'trust_installed')})")
    add_signer_options(p)
    p.add_argument("--allow-downgrade", action="store_true",
                   help="install a bundle older than the installed one (a lower sequence of its mirror)")
    p.add_argument("--drop-version", action="append", default=[], metavar="AMS_VERSION",
                   help="delta: accept that it removes this installed version (made with bundle --drop-version; "
                   "repeatable; default: a delta that drops a version is refused)")
    p.add_argument("--verbose", action="store_true", help="show Luigi's log on the terminal")
    p.set_defaults(func=run_unpack)

    p = add_command(sub, "receipt", "write what AMSHOME's repository holds (for bundle --since on the online side)")
    p.add_argument("--amshome", type=Path, help="the AMS installation folder (default: $AMSHOME from the environment)")
    p.add_argument("--out", type=Path, help="file to write (default: receipt-<VERSION>-<tree>.json here; - for stdout)")
    p.set_defaults(func=run_receipt)

    p = add_command(sub, "config", "print the effective settings and the file each came from")
    p.set_defaults(func=run_config)

    p = add_command(sub, "demo", "the whole chain against a local SCM double, in a temporary folder")
    p.add_argument("--workdir", type=Path, help="where to put the demo (default: a new temporary folder)")
    p.add_argument("--port", type=int, default=0, help="port of the local SCM double (default: 0, any free port)")
    kept = p.add_mutually_exclusive_group()
    kept.add_argument("--keep", dest="clean", action="store_false", help="keep what the demo made (default)")
    kept.add_argument("--clean", dest="clean", action="store_true", help="remove what the demo made when it succeeds "
                      "(default: off)")
    p.set_defaults(func=run_demo, clean=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    _console_logging()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse already printed one line of usage error
        return errors.USAGE_ERROR if exc.code else 0
    if args.command == "mirror" and args.dry_run and not args.delete_unlisted:
        say("error: --dry-run needs --delete-unlisted")
        return errors.USAGE_ERROR
    try:
        config.load(args.config)
        return args.func(args)
    except KeyboardInterrupt:
        progress.clear_all()  # the bar's line wiped first: the message starts on a clean line
        say("interrupted; rerun the same command to continue where it stopped")
        return 130
    except MirrorError as exc:
        say(f"error: {exc}")
        return exit_code_for(exc)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            say(f"error: disk full: {exc.filename or ''} {exc.strerror}".replace("  ", " "))
            return errors.NO_SPACE
        say(f"error: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
        return errors.RUNTIME_FAILURE


if __name__ == "__main__":
    sys.exit(main())

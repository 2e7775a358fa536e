"""``amsrepomirror mirror``: mirror SCM's repository from its listing(s), resumably, and verify it; its
options (which ``bundle`` shares), the per-mirror lock, a run shared through luigid, and its summary."""

import argparse
import contextlib
import hashlib
import posixpath
import re
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import luigi

from amsrepomirror import config, errors
from amsrepomirror.cli import options
from amsrepomirror.cli.exit_codes import most_severe_failure
from amsrepomirror.cli.options import (
    ACCOUNT,
    ACCOUNT_NOT_HERE,
    EXIT_CODES,
    add_command,
    folder_path,
    option_or_setting,
    setting_default,
)
from amsrepomirror.cli.output import command_line, print_stderr
from amsrepomirror.cli.report import add_report_option
from amsrepomirror.cli.runner import run_graph, use_scheduler
from amsrepomirror.errors import MirrorError, UsageError
from amsrepomirror.online import sync
from amsrepomirror.online.credentials import require_account_or_none
from amsrepomirror.online.http import LowSpeed, fetch_text
from amsrepomirror.online.listing import listing_sha256, listing_url_for, repository_root, select_platforms
from amsrepomirror.online.manifest import Manifest
from amsrepomirror.online.workspace import Workspace
from amsrepomirror.tasks import shared_run
from amsrepomirror.tasks.base import new_run_id, platform_rules
from amsrepomirror.tasks.mirror import FetchListing, JoinRun, VerifyTree
from amsrepomirror.util import progress
from amsrepomirror.util.fsutil import exclusive_lock, run_lock, why_unwritable
from amsrepomirror.util.paths import VERSION_PATTERN
from amsrepomirror.util.units import format_size

#: The commands that talk to SCM: their help ends with where the account comes from.
ONLINE_EPILOG = f"{ACCOUNT}\n\n{EXIT_CODES}"


def add_mirror_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    positional = "" if required else " (default: from LISTING_URL FOLDER)"
    p.add_argument("--version", action="append", required=required, metavar="AMS_VERSION",
                   help="AMS version whose listing to mirror, e.g. AMS2026.1 (not the tool's version); "
                   f"repeat it to hold several versions in one mirror{positional}")
    p.add_argument("--mirror", required=required, type=folder_path,
                   help=f"mirror folder, best outside this checkout; it becomes $AMSHOME/repository offline{positional}")
    p.add_argument("--listing-url", action="append", default=[], metavar="URL",
                   help="default: https://downloads.scm.com/Downloads/packages/listings/<AMS_VERSION>.txt; "
                        "repeat it once per --version, in the same order")
    p.add_argument("--platform", action="append", default=[],
                   help="keep only this platform (repeatable; rules in [platforms]; default: every platform)")
    p.add_argument("--local-platform-only", action="store_true",
                   help="keep only this machine's platform, as SCM's download_repository.py does (the same as "
                   f"--platform {LOCAL_PLATFORM.get(sys.platform, sys.platform)} here; default: every platform)")
    p.add_argument("--strict-authentication", action="store_true",
                   help="a 401 on any file is fatal (exit 3), instead of skipping files the account is not licensed for")
    p.add_argument("--no-ssl", action="store_true", help="do not verify TLS certificates (warns every run)")
    p.add_argument("--jobs", type=int, help=f"concurrent connections ({setting_default('FetchListing', 'jobs')})")
    p.add_argument("--deep", action="store_true", default=None,
                   help=f"re-hash every file instead of trusting size+mtime ({setting_default('VerifyTree', 'deep')})")
    add_report_option(p)
    p.add_argument("--verbose", action="store_true", help="show Luigi's log on the terminal")
    options.add_luigi_summary_option(p)
    p.add_argument("--scheduler-url", metavar="URL",
                   help="Luigi's central scheduler (luigid, see make scheduler), so that several processes or hosts "
                        "share the run (default: [core] default-scheduler-url when set, else a local scheduler)")
    p.add_argument("--local-scheduler", action="store_true",
                   help="use a local scheduler even when [core] default-scheduler-url is set")
    p.add_argument("--run-id", metavar="ID",
                   help="with a central scheduler: name the shared run (letters, digits, . _ -), so that processes "
                        "started at once join it; a new ID for each run (default: join the scheduler's live run "
                        "of the same work, else start one)")


def add_parser(sub) -> None:
    p = add_command(sub, "mirror", "mirror the SCM repository from its listing, resumably, and verify it", ONLINE_EPILOG)
    p.add_argument("scm_style", nargs="*", metavar="LISTING_URL FOLDER",
                   help="as SCM's download_repository.py takes them: the listing URL and the mirror folder, the AMS "
                   "version taken from the listing's name (instead of --listing-url, --mirror and --version; the "
                   "account never goes on the command line) (default: the options)")
    add_mirror_options(p, required=False)
    p.add_argument("--delete-unlisted", action="store_true", help="remove mirror files the listing no longer names")
    p.add_argument("--dry-run", action="store_true", help="with --delete-unlisted: only list what would be removed")
    p.add_argument("--force", action="store_true", help="with --delete-unlisted: allow removing more than a quarter")
    p.add_argument("--adopt", action="store_true",
                   help="take over the files a folder made by wget -x or SCM's script holds when their size and date are "
                   "the server's (hashed and recorded, not fetched again; default: fetch every file this tool has no "
                   "record of)")
    p.set_defaults(func=run, check_before_settings=check_mirror_arguments)


#: sys.platform -> the [platforms] rule of this machine's platform (--local-platform-only).
LOCAL_PLATFORM = {"linux": "linux", "darwin": "macos", "win32": "windows", "cygwin": "windows"}

def check_mirror_arguments(args) -> None:
    """What the options alone decide: --dry-run previews --delete-unlisted (alone it would look like a mirror run
    that changes nothing); SCM's script's way of giving the listing and the folder; the local platform."""
    if args.dry_run and not args.delete_unlisted:
        raise UsageError("--dry-run needs --delete-unlisted")
    scm_style_arguments(args)
    if args.version is None or args.mirror is None:
        missing = " and ".join(o for o, v in (("--version", args.version), ("--mirror", args.mirror)) if v is None)
        raise UsageError(f"mirror needs {missing} (or, as SCM's script: mirror LISTING_URL FOLDER)")
    local_platform(args)


def scm_style_arguments(args) -> None:
    """``mirror LISTING_URL FOLDER`` as download_repository.py takes them: the version from the listing's name.
    Its USER and PASSWORD are refused without being repeated anywhere (ACCOUNT_NOT_HERE)."""
    given = args.scm_style
    if not given:
        return
    if len(given) > 2:
        raise UsageError(f"mirror takes LISTING_URL FOLDER; {ACCOUNT_NOT_HERE}")
    if len(given) < 2:
        raise UsageError("mirror LISTING_URL FOLDER: give both (or --listing-url, --mirror and --version)")
    if args.listing_url or args.mirror or args.version:
        raise UsageError("give the listing and the folder either as LISTING_URL FOLDER or as --listing-url and --mirror, "
                         "not both")
    url, folder = given
    if "://" in folder and "://" not in url:
        raise UsageError("the listing URL comes first: mirror LISTING_URL FOLDER")
    if not folder:
        raise UsageError("mirror LISTING_URL FOLDER: FOLDER is empty (an unset variable?); name the mirror folder")
    name = posixpath.basename(urlsplit(url).path)
    version = name[:-len(".txt")] if name.endswith(".txt") else ""
    if not VERSION_PATTERN.fullmatch(version):
        raise UsageError(f"cannot tell the AMS version from the listing's name {name!r} (AMS2026.1.txt, say): "
                         "give it with --version")
    args.listing_url, args.mirror, args.version = [url], Path(folder), [version]


def local_platform(args) -> None:
    """--local-platform-only: --platform of this machine's platform, which must have a [platforms] rule."""
    if not args.local_platform_only:
        return
    if args.platform:
        raise UsageError("--local-platform-only keeps this machine's platform: leave out --platform")
    args.platform = [LOCAL_PLATFORM.get(sys.platform, sys.platform)]


def run(args) -> int:
    """The mirror command."""
    use_scheduler(args)
    return mirror_versions(args)


def versions_and_urls(args) -> list[tuple[str, str]]:
    """(version, listing URL or "") for each --version, in order; the URLs checked up front."""
    versions, urls = args.version, args.listing_url
    if urls and len(urls) != len(versions):
        raise UsageError(f"give --listing-url once per --version, in the same order "
                         f"({len(versions)} version(s), {len(urls)} listing URL(s))")
    repeated = sorted({v for v in versions if versions.count(v) > 1})
    if repeated:
        raise UsageError(f"--version {repeated[0]} is given more than once")
    pairs = list(zip(versions, urls or [recorded_listing_url(args.mirror, v) for v in versions], strict=True))
    for version, url in pairs:
        repository_root(listing_url_for(version, url))
    return pairs


def recorded_listing_url(mirror: Path, version: str) -> str:
    """The listing URL the mirror's last verified ``version`` was made from ("" when none is recorded): without
    --listing-url, a mirror goes on with the listing it was made from, not SCM's default."""
    try:
        return Manifest.read(Workspace(mirror).manifest_path(version)).listing_url
    except (OSError, MirrorError):  # no verified mirror of it yet, or a manifest this run will write anew
        return ""


def mirror_params(args) -> list[dict]:
    """The task parameters of each version's mirror run (one run id each, so their state stays apart)."""
    pairs = versions_and_urls(args)
    jobs = option_or_setting(args.jobs, "FetchListing", "jobs")
    if not jobs.isdigit() or int(jobs) < 1:
        raise UsageError(f"--jobs must be a whole number of at least 1 (got {jobs})")
    select_platforms([], args.platform, platform_rules())  # refuse unknown platform names up front
    if args.run_id is not None and not RUN_ID.fullmatch(args.run_id):
        raise UsageError(f"--run-id {args.run_id!r}: use letters, digits, '.', '_' and '-' only (it names a folder)")
    run_id = args.run_id or new_run_id()
    for version, url in pairs if not args.listing_url else []:
        if url and url != listing_url_for(version):
            print_stderr(f"{args.command}: {version}: the listing this mirror was made from, {url} "
                         "(--listing-url to use another)")
    runs = [dict(version=version, mirror=str(args.mirror.absolute()), listing_url=url,
                 platform=sorted({p.lower() for p in args.platform}), strict_authentication=args.strict_authentication,
                 no_ssl=args.no_ssl, jobs=int(jobs), run_id=run_id if len(pairs) == 1 else f"{run_id}-{version}",
                 adopt=getattr(args, "adopt", False))
            for version, url in pairs]
    args.run_identities = {}  # run id -> this process's identity of that run's work (a shared run's only)
    for params in runs if args.scheduler_url else []:
        identity = run_identity(params)
        if not args.run_id:
            params["run_id"] = shared_run.shared_run_id(args.scheduler_url, shared_run.work_key(params["mirror"], identity))
        args.run_identities[params["run_id"]] = identity
    return runs


RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def run_identity(params: dict) -> dict[str, str]:
    """This process's identity of a run's work (shared_run.run_identity), with the listing's content as
    read now: processes share a run only when they read the same listing."""
    task = FetchListing(**params)
    settings = luigi.configuration.get_config()
    timeout = float(settings.get("http", "timeout"))
    low_speed = LowSpeed(int(settings.get("http", "low_speed_limit")), float(settings.get("http", "low_speed_time")))
    text = fetch_text(task.session(), listing_url_for(params["version"], params["listing_url"]), timeout, low_speed)
    return task.identity(listing_sha256(text))


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


def mirror_versions(args) -> int:
    """Mirror the listing(s) into --mirror; print the summary; return the exit code."""

    runs = mirror_params(args)
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
        print_stderr("WARNING: --no-ssl: TLS certificates are NOT verified; anyone on the network path can alter "
                     "what is mirrored")
    found = [require_account_or_none(listing_url_for(r["version"], r["listing_url"]), interactive=True) for r in runs]
    if None in found:
        print_stderr("note: no SCM account found (SCM_USER and SCM_PASSWORD, ~/.netrc or a terminal prompt); trying without one")
    ws.state.mkdir(parents=True, exist_ok=True)
    with mirror_lock(ws, args, "+".join(r["run_id"] for r in runs)):
        return _locked_mirror(args, runs, ws)


def _shared_run(args, params: dict, deep: dict, log_file: Path) -> list[dict]:
    """One process's part in a run shared under a central scheduler, stage by stage (JoinRun): the
    snapshot, the downloads (in batches small enough to spread over the workers), the verified tree."""
    joined = dict(deep, process=shared_run.process_token(), **params)

    def stage(name: str) -> list[dict]:
        return run_graph([JoinRun(stage=name, **joined)], log_file=log_file, verbose=args.verbose, summary=args.luigi_summary,
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
        ws = Workspace(params["mirror"])
        ran, pending = sync.fetched_and_pending(ws, snapshot["files"], params["run_id"])
        # One bar over the run's downloads (what the run fetched before this process joined counted as done).
        before = sum(e.get("size") or 0 for e in ran)
        progress.for_run(params["run_id"], before + sync.bytes_to_fetch(ws, pending), desc="download",
                         files=len(ran) + len(pending), done=before, files_done=len(ran))
        try:
            failures = stage("downloads")
        finally:
            progress.close_run(params["run_id"])
        return failures or stage("tree")


def _mirror_one_version(args, params: dict, ws) -> tuple[dict | None, dict, list[dict]]:
    """Run one version's graph: its snapshot (None without a listing), its summary and its failures."""
    started = time.monotonic()
    deep = {} if args.deep is None else {"deep": True}
    log_file = ws.run_dir(params["run_id"]) / "luigi.log"
    if args.scheduler_url:
        failures = _shared_run(args, params, deep, log_file)
    else:
        failures = run_graph([VerifyTree(**deep, **params)], log_file=log_file, verbose=args.verbose, summary=args.luigi_summary)
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
    failure = most_severe_failure(failures)
    summaries = [summary for _, summary, _ in results]
    exit_code = failure["code"] if failure else (errors.RUNTIME_FAILURE if any(s["failed"] for s in summaries) else 0)
    for snapshot, summary, _ in results:
        if snapshot is not None:  # without a listing there is nothing to summarize: the error line says why
            _print_mirror_summary(summary, args, several=len(results) > 1)
    _print_pruned(pruned, args)
    # --report: the summary (each version's, with several) and the unlisted files, beside the run's exit code
    args.report_facts.update(summaries[0] if len(summaries) == 1 else {"versions": summaries}, mirror=str(ws.mirror),
                             **pruned)
    ws.prune_runs(keep=5 * len(runs))
    if failure:
        print_stderr(f"error: {failure['message']}")
    return exit_code


def _print_mirror_summary(s: dict, args, several: bool) -> None:
    which = f" ({s['version']})" if several else ""
    adopted = f" ({s['adopted']} of them adopted: size and date the server's)" if s.get("adopted") else ""
    counts = (f"{s['fetched']} fetched, {s['up_to_date']} up to date{adopted}, {len(s['skipped_unauthorized'])} "
              f"skipped (not licensed), {len(s['failed'])} failed")
    if args.scheduler_url:  # a shared run: what this process did, and what the run did with the others
        here, seconds = s["bytes_transferred_by_this_process"], s["seconds"]
        print_stderr(f"mirror {args.mirror}{which}: this process fetched {s['fetched_by_this_process']}, "
                     f"{format_size(here)} in {seconds:.1f} s ({format_size(here / seconds if seconds else 0)}/s); "
                     f"the shared run {s['run_id']}: {counts}, {format_size(s['bytes_transferred'])} transferred")
    else:
        print_stderr(f"mirror {args.mirror}{which}: {counts}; {format_size(s['bytes_transferred'])} transferred in "
                     f"{s['seconds']:.1f} s ({format_size(s['rate_bytes_per_second'])}/s)")
    for path in s["skipped_unauthorized"][:10]:
        print_stderr(f"  skipped (HTTP {s['refused_with'][path]}, not licensed for this account): {path}")
    if len(s["skipped_unauthorized"]) > 10:
        print_stderr(f"  ... and {len(s['skipped_unauthorized']) - 10} more skipped")
    for path in s["failed"][:10]:
        print_stderr(f"  failed: {path}")
    for message in s.get("slowed_down", []):
        print_stderr(f"  {message}")


def _print_pruned(pruned: dict[str, list[str]], args) -> None:
    """What happened to the files no listing names any more: kept (and how to remove them), the list
    of what would be deleted (on stdout, one path a line), or what was deleted."""
    kept = pruned.get("unlisted_kept", [])
    if kept:
        print_stderr(f"  {len(kept)} file(s) in the mirror are no longer listed (kept); to see them: "
                     f"{command_line(args, '--delete-unlisted', '--dry-run')}")
    if "unlisted_would_delete" in pruned:
        doomed = pruned["unlisted_would_delete"]
        print_stderr(f"  --dry-run: --delete-unlisted would delete {len(doomed)} file(s) no longer listed"
                     + (" (listed on stdout; run again without --dry-run to delete them):" if doomed else ""))
        for path in doomed:
            print(path)
    deleted = pruned.get("unlisted_deleted")
    if deleted is not None:
        for path in deleted[:20]:
            print_stderr(f"  deleted (no longer listed): {path}")
        print_stderr(f"  {len(deleted)} unlisted file(s) deleted")


"""``amsrepomirror``: the command line over the task graph. Errors end here as one line and an exit code."""

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import luigi

from . import __version__, errors
from .errors import MirrorError, UsageError, exit_code_for
from .fsutil import atomic_write_json
from .listing import listing_url_for, redact, repository_root
from .units import format_size, parse_size

EXIT_PRIORITY = (errors.AUTH_FAILURE, errors.NO_SPACE, errors.INTEGRITY_FAILURE, errors.USAGE_ERROR, errors.RUNTIME_FAILURE)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _configure_logging(log_file: Optional[Path], verbose: bool) -> None:
    """Luigi's chatter goes to a log file (and the terminal with --verbose), never in the way of our summary."""
    for name in ("luigi", "luigi-interface"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = False
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        if log_file:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(log_file)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
        if verbose:
            logger.addHandler(logging.StreamHandler(sys.stderr))
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())


def run_graph(tasks: List[luigi.Task], *, workers: int = 1, log_file: Optional[Path] = None, verbose: bool = False) -> List[Dict]:
    """Run tasks with the local scheduler; return the failures (code, message) of failed tasks."""
    _configure_logging(log_file, verbose)
    config = luigi.configuration.get_config()
    if not config.has_section("core"):
        config.add_section("core")
    config.set("core", "no_configure_logging", "true")
    result = luigi.build(tasks, local_scheduler=True, workers=workers, detailed_summary=True)
    scheduler = result.worker._scheduler
    failures = []
    for task_id in scheduler.task_list("FAILED", ""):
        expl = scheduler.fetch_error(task_id).get("error") or ""
        try:
            failure = json.loads(expl)
            failures.append(json.loads(failure) if isinstance(failure, str) else failure)  # luigi may encode it twice
        except ValueError:
            failures.append({"code": errors.RUNTIME_FAILURE, "message": expl.strip().splitlines()[-1] if expl.strip() else task_id})
    if not failures and not result.scheduling_succeeded:
        failures.append({"code": errors.RUNTIME_FAILURE, "message": f"the task graph did not complete ({result.status.name}); see {log_file or 'the log'}"})
    return failures


def worst(failures: List[Dict]) -> Optional[Dict]:
    """The failure whose exit code matters most to an admin (auth, space, integrity, usage, runtime)."""
    for code in EXIT_PRIORITY:
        for failure in failures:
            if failure.get("code") == code:
                return failure
    return failures[0] if failures else None


# ---- mirror -----------------------------------------------------------------------------------

def add_mirror_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", required=True, help="AMS version whose listing to mirror, e.g. AMS2026.1")
    p.add_argument("--mirror", required=True, type=Path, help="mirror folder; becomes $AMSHOME/repository")
    p.add_argument("--listing-url", default="", help="default: https://downloads.scm.com/Downloads/packages/listings/<VERSION>.txt")
    p.add_argument("--platform", action="append", default=[], help="keep only this platform (repeatable); rules in luigi.cfg [platforms]")
    p.add_argument("--strict-authentication", action="store_true", help="a 401 on any file is fatal (exit 3)")
    p.add_argument("--no-ssl", action="store_true", help="do not verify TLS certificates (warns every run)")
    p.add_argument("--jobs", type=int, default=4, help="concurrent connections (default 4)")
    p.add_argument("--deep", action="store_true", help="re-hash every file instead of trusting size+mtime")
    p.add_argument("--report", type=Path, help="write the run summary as JSON to this file")
    p.add_argument("--verbose", action="store_true", help="show Luigi's log on the terminal")


def _mirror_params(args) -> Dict:
    url = listing_url_for(args.version, args.listing_url)
    repository_root(url)
    if args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    from .tasks import new_run_id, platform_rules
    from .listing import select_platforms
    select_platforms([], args.platform, platform_rules())  # refuse unknown platform names up front
    return dict(version=args.version, mirror=str(args.mirror.absolute()), listing_url=args.listing_url,
                platform=sorted({p.lower() for p in args.platform}), strict_authentication=args.strict_authentication,
                no_ssl=args.no_ssl, jobs=args.jobs, run_id=new_run_id())


def run_mirror(args) -> int:
    """Mirror the listing into --mirror; print the summary; return the exit code."""
    from . import mirror as work
    from .credentials import resolve_credentials
    from .tasks import FetchListing, VerifyTree
    from .workspace import Workspace

    params = _mirror_params(args)
    if args.no_ssl:
        say("WARNING: --no-ssl: TLS certificates are NOT verified; anyone on the network path can alter what is mirrored")
    url = listing_url_for(args.version, args.listing_url)
    credentials = resolve_credentials(url, interactive=True)
    if credentials is None:
        say("note: no SCM account found (SCM_USER/SCM_PASSWORD, ~/.netrc or a terminal prompt); trying without one")
    ws = Workspace(args.mirror)
    ws.mirror.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    failures = run_graph([VerifyTree(deep=args.deep, **params)], log_file=ws.run_dir(params["run_id"]) / "luigi.log",
                         verbose=args.verbose)
    snapshot_task = FetchListing(**params)
    snapshot = work.load_snapshot(snapshot_task.output().path) if snapshot_task.complete() else None
    summary = work.summarize(ws, params["run_id"], snapshot, time.monotonic() - started)
    if snapshot is not None and args.delete_unlisted and not failures:
        keep = [f["path"] for f in snapshot["files"]] + snapshot["unauthorized"] + [f["path"] for f in snapshot["failed"]]
        try:
            removed = work.prune_unlisted(ws, keep, dry_run=args.dry_run, force=args.force)
            summary["unlisted_" + ("would_delete" if args.dry_run else "deleted")] = removed
        except MirrorError as exc:
            failures.append({"code": exc.exit_code, "message": str(exc)})
    failure = worst(failures)
    summary["exit_code"] = failure["code"] if failure else (errors.RUNTIME_FAILURE if summary["failed"] else 0)
    summary["error"] = failure["message"] if failure else ""
    summary["manifest"] = str(ws.manifest_path(args.version)) if not failure else ""
    _print_mirror_summary(summary, args)
    if args.report:
        atomic_write_json(args.report, summary)
    ws.prune_runs()
    if failure:
        say(f"error: {failure['message']}")
    return summary["exit_code"]


def _print_mirror_summary(s: Dict, args) -> None:
    say(f"mirror {args.mirror}: {s['fetched']} fetched, {s['up_to_date']} up to date, "
        f"{len(s['skipped_unauthorized'])} skipped (HTTP 401), {len(s['failed'])} failed; "
        f"{format_size(s['bytes_transferred'])} transferred in {s['seconds']:.1f} s "
        f"({format_size(s['rate_bytes_per_second'])}/s)")
    for path in s["skipped_unauthorized"][:10]:
        say(f"  skipped (401, not licensed for this account): {path}")
    if len(s["skipped_unauthorized"]) > 10:
        say(f"  ... and {len(s['skipped_unauthorized']) - 10} more skipped")
    for path in s["failed"][:10]:
        say(f"  failed: {path}")
    for key, verb in (("unlisted_would_delete", "would delete"), ("unlisted_deleted", "deleted")):
        for path in s.get(key, [])[:20]:
            say(f"  {verb} (no longer listed): {path}")
        if key in s:
            say(f"  {len(s[key])} unlisted file(s) {verb.split()[-1]}")


# ---- entry point --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amsrepomirror", description=__doc__)
    parser.add_argument("--tool-version", action="version", version=f"amsrepomirror {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("mirror", help="mirror the SCM repository from its listing, resumably, and verify it")
    add_mirror_options(p)
    p.add_argument("--delete-unlisted", action="store_true", help="remove mirror files the listing no longer names")
    p.add_argument("--dry-run", action="store_true", help="with --delete-unlisted: only list what would be removed")
    p.add_argument("--force", action="store_true", help="with --delete-unlisted: allow removing more than a quarter")
    p.set_defaults(func=run_mirror)
    return parser



def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed one line of usage error
        return errors.USAGE_ERROR if exc.code else 0
    if getattr(args, "dry_run", False) and not getattr(args, "delete_unlisted", True):
        say("error: --dry-run needs --delete-unlisted")
        return errors.USAGE_ERROR
    try:
        return args.func(args)
    except KeyboardInterrupt:
        say("interrupted; rerun the same command to continue where it stopped")
        return 130
    except MirrorError as exc:
        say(f"error: {exc}")
        return exit_code_for(exc)


if __name__ == "__main__":
    sys.exit(main())

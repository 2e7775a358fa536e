"""``amsrepomirror unpack``: verify a bundle and place it atomically as $AMSHOME/repository (the Unpack
task, run in this process), then say what the bundle lacks and how AMS finds the repository."""

from pathlib import Path

from amsrepomirror import config, errors
from amsrepomirror.bundle.format import refuse_settings_read_from
from amsrepomirror.bundle.verify import not_a_bundle
from amsrepomirror.cli import options
from amsrepomirror.cli.exit_codes import most_severe_failure
from amsrepomirror.cli.options import (
    add_command,
    add_signer_options,
    amshome_of,
    folder_path,
    installed_facts,
    refuse_settings_in_the_bundle,
    setting_default,
    site_trust,
)
from amsrepomirror.cli.output import command_line, print_result, print_stderr, tool_command
from amsrepomirror.cli.report import add_report_option
from amsrepomirror.cli.runner import run_graph
from amsrepomirror.errors import UsageError
from amsrepomirror.offline import placement
from amsrepomirror.offline.unpack import installed_bundle, usage_hints
from amsrepomirror.tasks.unpack import Unpack
from amsrepomirror.util import progress, skipped_files


def add_parser(sub) -> None:
    p = add_command(sub, "unpack", "verify a bundle and place it atomically as $AMSHOME/repository")
    p.add_argument("bundle", type=Path, help="the bundle folder (all chunks in it)")
    p.add_argument("--amshome", type=folder_path, help="the AMS installation folder (default: $AMSHOME from the environment)")
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
    add_report_option(p)
    options.add_luigi_summary_option(p)
    p.set_defaults(func=run, check_before_settings=refuse_settings_in_the_bundle)  # before settings are checked


def run(args) -> int:
    why_not = not_a_bundle(args.bundle, tool_command())
    if why_not:
        raise UsageError(why_not)
    refuse_settings_read_from(args.bundle)  # before anything those settings could steer (the task, its worker)
    args.amshome = amshome_of(args)
    args.report_facts.update(bundle=str(args.bundle.absolute()), amshome=str(args.amshome.absolute()), placed=False)
    try:
        return _unpack(args)
    finally:  # --report: what AMSHOME holds now, whichever way the unpack ended
        args.report_facts["installed"] = installed_facts(args.amshome.absolute())


def _unpack(args) -> int:
    """Run the Unpack task unless AMSHOME holds the bundle already; say what it lacks and how AMS finds it."""
    site_trust(args)  # a setting that cannot be checked is refused before anything else; notes said once
    task = Unpack(bundle=str(args.bundle.absolute()), amshome=str(args.amshome.absolute()), keep_previous=args.keep_previous,
                  reinstall=args.reinstall, deep=args.deep, trust_installed=args.trust_installed,
                  allow_downgrade=args.allow_downgrade, drop_versions=sorted(set(args.drop_version)),
                  allowed_signers=str(args.allowed_signers.absolute()) if args.allowed_signers else "",
                  revoked_keys=str(args.revoked_keys.absolute()) if args.revoked_keys else "")
    try:
        if task.complete():
            print_stderr(f"unpack: {args.amshome}/repository already holds this bundle; nothing to do")
        else:
            log = args.amshome.absolute() / ".amsrepomirror-unpack.log" if args.amshome.is_dir() else None
            # Run in this process: what the task checked and placed (task.checked) is read below.
            with config.for_this_command({("worker", "force_multiprocessing"): "false"}):
                failure = most_severe_failure(run_graph([task], log_file=log, verbose=args.verbose,
                                                             summary=args.luigi_summary))
            if failure:
                print_stderr(f"error: {failure['message']}")
                return failure["code"]
            args.report_facts["placed"] = True
        # The manifest this run checked (placed, or found installed), not the folder's, which may hold another by now.
        manifest = task.checked.manifest
        for line in skipped_files.describe(manifest.lacking, f"unpack: {args.amshome}/repository"):
            print_stderr(line)
        print_result(usage_hints(args.amshome.absolute(), manifest.all_versions))
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (errors.Terminated: "terminated", exit 143)
        progress.clear_all()
        print_stderr(f"{'terminated' if isinstance(exc, errors.Terminated) else 'interrupted'}: {_state_of(args)}")
        return errors.exit_code_for(exc)
    finally:
        task.checked = None  # the same object serves a later unpack of this bundle in this process: it must look again
    return 0


def _state_of(args) -> str:
    """What an interrupted unpack left, read from AMSHOME itself, and what to run next: the last line, whatever
    step the interruption came at (the swap is atomic: the old tree or the new one, never a mix)."""
    repo = args.amshome / "repository"
    if installed_bundle(str(args.bundle.absolute()), str(args.amshome.absolute())) is not None:
        return f"{repo} holds this bundle and its receipt is written: the unpack is complete, nothing more to run"
    again = command_line(args)
    if placement.interrupted(args.amshome):
        return f"{repo} is the old tree or the new one, never a mix; finish the unpack with: {again}"
    return f"{repo} is as it was; unpack the bundle with: {again}"


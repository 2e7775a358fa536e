"""``amsrepomirror bundle``: mirror (unless --offline), then pack the verified mirror into a bundle folder
of checksummed 7z chunks, full or a delta since a base; its options and what it prints."""

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path

from amsrepomirror.bundle.format import COMPRESSIONS, MANIFEST_NAME, BundleManifest
from amsrepomirror.bundle.parity import require_par2
from amsrepomirror.cli.exit_codes import most_severe_failure
from amsrepomirror.cli.mirror import (
    ONLINE_EPILOG,
    add_mirror_options,
    local_platform,
    mirror_lock,
    mirror_versions,
    versions_and_urls,
)
from amsrepomirror.cli.options import add_command, folder_path, setting_default
from amsrepomirror.cli.output import print_result, print_stderr, tool_command
from amsrepomirror.cli.plan import (
    check_parity_on_sticks,
    chunk_settings,
    describe_sticks,
    parity_option,
    print_delta_plan,
    print_plan,
)
from amsrepomirror.cli.runner import run_graph, use_scheduler
from amsrepomirror.errors import MirrorError, UsageError
from amsrepomirror.online.manifest import Manifest
from amsrepomirror.online.workspace import Workspace
from amsrepomirror.pack.build import SIDE_FILES_SLACK
from amsrepomirror.pack.delta_base import resolve_base, select_delta, write_base
from amsrepomirror.pack.parity import parse_parity
from amsrepomirror.pack.tool import SUPPORTED_PYTHONS, check_spec
from amsrepomirror.tasks.base import new_run_id
from amsrepomirror.tasks.bundle import BundleArchive
from amsrepomirror.util import progress
from amsrepomirror.util.fsutil import why_unwritable
from amsrepomirror.util.units import format_size, parse_size


def add_parser(sub) -> None:
    p = add_command(sub, "bundle", "mirror, then pack the verified mirror into checksummed 7z chunks", ONLINE_EPILOG)
    add_mirror_options(p)
    add_bundle_options(p)
    add_since_option(p)
    p.set_defaults(func=run, delete_unlisted=False, force=False, check_before_settings=local_platform)


def add_bundle_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=folder_path, help="bundle folder to write (outside the mirror)")
    p.add_argument("--chunk-size", metavar="SIZE",
                   help=f"largest chunk, e.g. 3900MiB ({setting_default('BundleArchive', 'chunk_size')})")
    p.add_argument("--compression", choices=COMPRESSIONS, help=setting_default("BundleArchive", "compression"))
    p.add_argument("--offline", action="store_true", help="bundle the last verified mirror; do not contact the server")
    p.add_argument("--dry-run", action="store_true", help="print the chunk plan and write nothing")
    p.add_argument("--stick-size", metavar="SIZE",
                   help="size of one USB stick, e.g. 64GB: print which chunks go on which stick, with --dry-run or "
                   "once the bundle is written (default: no stick plan)")
    p.add_argument("--parity", metavar="PERCENT|one-stick",
                   help="add PAR2 recovery files over the chunks, e.g. 10%%: repair rebuilds damaged or missing chunks "
                   "up to that much of the chunks' size; one-stick (with --stick-size, 3 sticks or more): as much as "
                   "losing any one whole stick needs, placed on the sticks (needs par2: amsrepomirror[parity] or "
                   "Debian's par2; default: none)")
    p.add_argument("--with-tool", action="store_true",
                   help="add tool/: amsrepomirror and its dependencies as wheels, and install.sh for the offline side")
    p.add_argument("--tool-python", action="append", default=[], choices=SUPPORTED_PYTHONS, metavar="X.Y",
                   help="with --with-tool: the offline side's Python (repeatable; default: this one)")
    p.add_argument("--tool-platform", action="append", default=[], metavar="TAG",
                   help="with --with-tool: pip platform tag, e.g. manylinux2014_x86_64 (repeatable; default: this machine's)")
    p.add_argument("--tool-wheel", type=Path, metavar="FILE",
                   help="with --with-tool: amsrepomirror's own wheel, of this version (default: built from the source "
                   "folder it was installed from, else its installed files packed as a wheel)")
    p.add_argument("--sign-key", type=Path, metavar="KEY",
                   help="sign manifest.json with this OpenSSH key (ssh-keygen -Y sign; a passphrase is asked for "
                   "or the key is used through ssh-agent); writes manifest.json.sig (default: unsigned)")


def add_since_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", metavar="BASE", help="a delta: only what changed since BASE (last, a bundle folder, "
                   "its manifest.json, or a receipt from the offline side; default: a full bundle)")
    p.add_argument("--drop-version", action="append", default=[], metavar="AMS_VERSION",
                   help="with --since: remove this other version BASE holds, with the files only it needs "
                   "(repeatable; unpack needs the same --drop-version; default: every other version is kept)")


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


def run(args) -> int:
    """Mirror (unless --offline), then write the bundle folder."""
    # --report: the bundle folder, and once it is complete its chunks (beside the mirror run's summary)
    args.report_facts.update(bundle=str(args.out.absolute()), offline=args.offline, dry_run=args.dry_run, written=False,
                             chunks=None, bytes=None)
    _check_bundle_folder(args.mirror, args.out)
    versions = [version for version, _ in versions_and_urls(args)]
    chunk_size, compression = chunk_settings(args)
    _refuse_option_mix(args, versions)
    parity = parity_option(args)
    if args.with_tool:  # before anything is written: the mirror run, a chunk, or tool/
        check_spec(args.tool_python, args.tool_platform, str(args.tool_wheel or ""))
    if args.dry_run and args.since:
        return print_delta_plan(args.mirror, versions[0], chunk_size, compression, args.stick_size, args.since,
                                args.drop_version, parity)
    if args.dry_run:
        return print_plan(args.mirror, versions, chunk_size, compression, args.stick_size, parity=parity)
    _check_before_writing(args, chunk_size)
    if parity and args.stick_size and not args.since:
        check_parity_on_sticks(args.mirror, versions, chunk_size, compression, args.stick_size, parity)
    use_scheduler(args)
    if not args.offline:
        code = mirror_versions(args)
        if code:
            print_stderr(f"bundle: not written: {_why_not_mirrored(args, versions)}")
            return code
    return _write_bundle(args, versions, chunk_size, compression)


def _why_not_mirrored(args, versions: Sequence[str]) -> str:
    """The end of the line said when mirroring failed (the error above says why): when every file the mirror last
    verified is still in place (the server could not be reached, say), --offline bundles that; else the mirror is
    not complete."""
    ws, verified = Workspace(args.mirror), []
    for version in versions:
        try:
            manifest = Manifest.read(ws.manifest_path(version))
        except (OSError, MirrorError):
            return "the mirror is not complete"
        if any((r := ws.current_record(f.path)) is None or r.sha256 != f.sha256 for f in manifest.files):
            # this run changed it (or left it half done): the last verified state is gone
            return "the mirror is not complete"
        verified.append(manifest.created)
    return (f"the mirror could not be brought up to date (above); it still holds what was verified {max(verified)}: "
            "to bundle that without contacting the server, add --offline")


def _refuse_option_mix(args, versions: Sequence[str]) -> None:
    """Options that only go together with others, or with one version."""
    if (args.tool_python or args.tool_platform or args.tool_wheel) and not args.with_tool:
        raise UsageError("--tool-python, --tool-platform and --tool-wheel go with --with-tool")
    if args.since and len(versions) > 1:
        raise UsageError("--since works with one --version at a time (a delta of several versions is not supported)")
    if args.drop_version and not args.since:
        raise UsageError("--drop-version goes with --since: a delta drops a version of its base "
                         "(a full bundle holds only the versions it names)")


def _check_before_writing(args, chunk_size: str) -> None:
    """What would make a written bundle fail at its end, refused before the mirror run."""
    if args.stick_size and parse_size(chunk_size) + SIDE_FILES_SLACK > parse_size(args.stick_size):
        raise UsageError(f"--stick-size {args.stick_size} holds no chunk of --chunk-size {chunk_size} with the bundle's "
                         f"small files ({format_size(SIDE_FILES_SLACK)} kept for them): choose a chunk size of at most "
                         f"{format_size(parse_size(args.stick_size) - SIDE_FILES_SLACK)}, or larger sticks")
    if args.parity:
        require_par2()
    why = why_unwritable(args.out)
    if why:
        raise UsageError(f"cannot write the bundle folder --out {args.out}: {why}")
    if args.sign_key is not None and not args.sign_key.is_file():
        raise UsageError(f"--sign-key {args.sign_key} does not exist")


def _write_bundle(args, versions: list[str], chunk_size: str, compression: str) -> int:
    """Pack the verified mirror of ``versions`` into --out (BundleArchive); say how to check it."""
    ws = Workspace(args.mirror)
    for version in versions:
        if not ws.manifest_path(version).exists():
            raise UsageError(f"--offline: {args.mirror} has no verified {version} mirror yet; run mirror first")
    # The mirror run above verified the tree; bundling reads its manifest, so it needs no network.
    task = BundleArchive(version=versions[0], versions=versions if len(versions) > 1 else [], mirror=str(ws.mirror),
                         offline=True, out=str(args.out.absolute()), chunk_size=chunk_size, compression=compression,
                         since=_delta_base(ws, versions[0], args.since, args.drop_version), with_tool=args.with_tool,
                         tool_pythons=args.tool_python, tool_platforms=args.tool_platform,
                         tool_wheel=str(args.tool_wheel.absolute()) if args.tool_wheel else "",
                         sign_key=str(args.sign_key.absolute()) if args.sign_key else "",
                         stick_size=parse_size(args.stick_size) if args.stick_size else 0,
                         parity=str(parse_parity(args.parity)) if args.parity else "")
    with mirror_lock(ws, args), progress.shared_bar("bundle"):
        failures = run_graph([task], workers=2, log_file=ws.run_dir(new_run_id()) / "bundle.log", verbose=args.verbose,
                             scheduler_url=args.scheduler_url, summary=args.luigi_summary)
    failure = most_severe_failure(failures)
    if failure:
        print_stderr(f"error: {failure['message']}")
        return failure["code"]
    print_stderr(f"bundle: {args.out} is complete; check it with: {tool_command()} verify {shlex.quote(str(args.out))}")
    manifest = BundleManifest.read(args.out / MANIFEST_NAME)
    args.report_facts.update(written=True, chunks=len(manifest.chunks), bytes=sum(c.size for c in manifest.chunks),
                             bundle_versions=list(manifest.all_versions), delta=manifest.is_delta)
    if args.stick_size:
        print_sticks(manifest)
    return 0


def print_sticks(manifest: BundleManifest) -> None:
    """Which chunks (and recovery volumes) of the written bundle go on which stick, as its manifest records; every
    other file (manifest, sums, README, signature, tool/, parity.par2) goes on each."""
    volumes = manifest.parity.files if manifest.parity else []
    sizes = {c.name: c.size for c in manifest.chunks} | {f.path: f.size for f in volumes}
    for line in describe_sticks(sizes, manifest.sticks.size, tool=tool_command(), plan=manifest.sticks.chunks,
                                parity=manifest.sticks.parity or None):
        print_result(line)


def _delta_base(ws: Workspace, version: str, since: str | None, dropped: Sequence[str] = ()) -> str:
    """``--since`` resolved against the verified mirror and snapshotted in its history: the file
    BundleArchive plans the delta against ("" for a full bundle)."""
    if not since:
        return ""
    current = Manifest.read(ws.manifest_path(version))
    base = resolve_base(since, ws, version, current.files, dropped)
    select_delta(base, current.files, version)  # refused now (exit 2), not in a task
    kept = [v for v in base.all_versions if v != version and v not in base.dropped]
    print_stderr(f"bundle: a delta of {version} since {base.described} (tree {base.identity[:12]})"
                 + (f", keeping {' and '.join(kept)}" if kept else "")
                 + (f", dropping {' and '.join(base.dropped)}" if base.dropped else ""))
    return str(write_base(ws, base))

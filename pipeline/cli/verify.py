"""``amsrepomirror verify``: check a bundle folder offline (every chunk's sha256, size and 7z CRCs, and its
signature under the site's trust setting), or with --installed AMSHOME's repository against its receipt."""

import dataclasses
import os
import sys
from pathlib import Path

from amsrepomirror import errors
from amsrepomirror.bundle import transfer_report
from amsrepomirror.bundle.format import REPORT_HTML_NAME, REPORT_JSON_NAME, read_manifest_bytes, refuse_settings_read_from
from amsrepomirror.bundle.trust import NO_SIGNERS, Trust, signature_verdict
from amsrepomirror.bundle.verify import not_a_bundle, verify_bundle
from amsrepomirror.cli.options import (
    add_command,
    add_signer_options,
    amshome_of,
    installed_facts,
    refuse_settings_in_the_bundle,
    site_trust,
)
from amsrepomirror.cli.output import print_result, print_stderr, tool_command
from amsrepomirror.cli.report import add_report_option
from amsrepomirror.errors import UsageError
from amsrepomirror.offline import placement
from amsrepomirror.offline.installed import no_receipt, require_intact, scrub
from amsrepomirror.offline.unpack import MAX_CHANGES_LISTED
from amsrepomirror.util import progress, skipped_files
from amsrepomirror.util.fsutil import atomic_write_bytes, why_unwritable
from amsrepomirror.util.units import counted, format_size


def add_parser(sub) -> None:
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
    p.add_argument("--transfer-report", type=Path, metavar="FILE",
                   help="also make the transfer report again from the bundle alone: its JSON to FILE, its page to FILE "
                   "with .html for .json (else FILE.html), and say whether they equal the bundle's own (exit 4 when "
                   "the JSON differs; default: not made)")
    add_signer_options(p)
    add_report_option(p)
    p.set_defaults(func=run, check_before_settings=refuse_settings_in_the_bundle)  # before settings are checked


def run(args) -> int:
    """The verify command: a bundle folder, or (--installed) AMSHOME's repository."""
    if args.installed:
        return run_installed(args)
    if args.amshome is not None:
        raise UsageError("--amshome goes with --installed: verify --installed --amshome DIR checks the installed tree")
    if args.bundle is None:
        raise UsageError("verify checks a bundle folder: give it (verify BUNDLE), or check the installed tree "
                         "with verify --installed [--amshome DIR]")
    why_not = not_a_bundle(args.bundle, tool_command())
    if why_not:
        raise UsageError(why_not)
    if args.transfer_report is not None:
        remade_paths(args)  # refused before any work
    refuse_settings_read_from(args.bundle)  # before anything those settings could steer
    # --report: ok stays null when the check stopped before its verdict (the error line says why)
    args.report_facts.update(bundle=str(args.bundle.absolute()), partial=args.partial, ok=None, problems=[],
                             not_here=[])
    found = site_trust(args)
    manifest_bytes = read_manifest_bytes(args.bundle)  # read once: the chunks and the signature are checked on it
    # The signature first, as unpack: no chunk that only a manifest the site's signers refuse names is read.
    check, bad_signature = signature_verdict(args.bundle, found, manifest_bytes)
    if bad_signature:  # guard: verify-signature-first
        args.report_facts.update(ok=False, problems=[bad_signature])
        print_signature_verdict(found, check, bad_signature)
        print_stderr(f"error: {bad_signature}")
        return errors.INTEGRITY_FAILURE
    bar = progress.ByteProgress(None, "verify") if sys.stderr.isatty() else None  # in logs: only the verdict
    try:
        report = verify_bundle(args.bundle, test_archives=not args.no_test, partial=args.partial,
                               on_bytes=bar.update if bar else None, on_total=bar.set_total if bar else None,
                               manifest_bytes=manifest_bytes)
    finally:
        if bar is not None:
            bar.close(clear=True)
    args.report_facts.update(ok=report.ok, problems=[str(p) for p in report.problems], not_here=list(report.not_here),
                             chunks_checked=report.chunks_checked, bytes_checked=report.bytes_checked)
    if args.transfer_report is not None and report.manifest is not None:
        same = _transfer_report(args, report.manifest, check)
        code = _print_report(args, report, found, check)
        if not same and code == 0:
            print_stderr(f"error: the transfer report made again from {args.bundle} differs from the one it carries "
                         f"({REPORT_JSON_NAME}): compare {args.transfer_report} with it")
            return errors.INTEGRITY_FAILURE
        return code
    return _print_report(args, report, found, check)


def remade_paths(args) -> tuple[Path, Path]:
    """Where verify --transfer-report FILE writes the report it makes: (FILE, its page); UsageError when that is
    in the bundle folder (it would be a file the manifest does not list) or cannot be written."""
    json_path = args.transfer_report
    html_path = json_path.with_suffix(".html") if json_path.suffix == ".json" else Path(f"{json_path}.html")
    bundle = args.bundle.absolute().resolve()
    for path in (json_path, html_path):
        where = path.absolute().resolve()
        if where == bundle or bundle in where.parents:
            raise UsageError(f"--transfer-report {path} is in the bundle folder {args.bundle}: write it outside")
        why = "it is a directory" if path.is_dir() else why_unwritable(path.parent)
        if why:
            raise UsageError(f"cannot write --transfer-report {path}: {why}")
    return json_path, html_path


def _transfer_report(args, manifest, check) -> bool:
    """Make the transfer report again from ``manifest``, write it, and say whether it equals the bundle's (the
    JSON in canonical form; the page byte for byte); True when the JSON does."""
    json_path, html_path = remade_paths(args)
    remade = transfer_report.make_report(dataclasses.replace(manifest, report=[]))
    carried = transfer_report.carried_report(args.bundle, manifest)
    for path, data in zip((json_path, html_path), remade, strict=True):
        atomic_write_bytes(path, data)
    same_json = carried[0] is not None and transfer_report.canonical_form(carried[0]) == remade[0]
    same_html = carried[1] == remade[1]
    args.report_facts.update(transfer_report={"json": str(json_path.absolute()), "html": str(html_path.absolute()),
                                              "json_equal": same_json, "html_equal": same_html})
    if carried[0] is None:
        print_result(f"transfer report: made again in {json_path} and {html_path}; the bundle carries none to compare "
                     "(made by a tool without it)")
        return not manifest.report
    print_result(f"transfer report: made again in {json_path} and {html_path}; its JSON "
                 + ("equals" if same_json else "DIFFERS from") + f" the bundle's {REPORT_JSON_NAME}; the page "
                 + ("is identical" if same_html else f"differs from the bundle's {REPORT_HTML_NAME}"
                    + (" (made by another tool version: compare the JSON)" if same_json else "")))
    if check is not None and check.fingerprint and manifest.signer and check.fingerprint != manifest.signer:
        print_stderr(f"warning: the report names the signer {manifest.signer}, the signature is by {check.fingerprint}")
    return same_json


def _print_report(args, report, found: Trust, check) -> int:
    """What verify found: the bundle intact (or the chunks here, with --partial), or each problem."""
    for warning in report.warnings:
        print_stderr(f"warning: {warning}")
    if report.not_here:
        print_result(_not_here_line(report))
    if not report.ok:
        for problem in report.problems:
            print_stderr(f"  {problem}")
        print_stderr(f"error: {report.message()}")
        return errors.INTEGRITY_FAILURE
    manifest = report.manifest
    if report.not_here:
        print_result(f"bundle {args.bundle}: {_here(report)} intact; verify again, without --partial, once all chunks are "
                     "in one folder")
    else:
        print_result(f"bundle {args.bundle} is intact: {len(manifest.chunks)} chunk(s), {len(manifest.files)} file(s), "
                     f"{format_size(manifest.total_bytes)} of {' and '.join(manifest.all_versions)}")
    print_signature_verdict(found, check, None)
    for line in skipped_files.describe(manifest.lacking, "the bundle"):
        print_result(line)
    return 0


def _not_here_line(report) -> str:
    """verify --partial: the chunks not in this folder; by stick when the bundle records its stick plan."""
    sticks = report.manifest.sticks if report.manifest else None
    if not sticks:
        return (f"not here yet ({len(report.not_here)} of {_parts(report.manifest) if report.manifest else '?'}): "
                f"{', '.join(report.not_here)}")
    missing = set(report.not_here)
    away = sorted({sticks.stick_of(n) for n in missing})
    return "not here yet: " + "; ".join(
        f"{sticks.label(i)} ({', '.join(n for n in sticks.files_on(i) if n in missing)})" for i in away)


def _parts(manifest) -> str:
    """The chunks, and the recovery volumes of a bundle with parity: what verify --partial finds or not."""
    volumes = len(manifest.parity.volumes) if manifest.parity else 0
    return f"{len(manifest.chunks)} chunks" + (f" and {volumes} recovery volumes" if volumes else "")


def _here(report) -> str:
    """verify --partial: what is here (the whole sticks, when the bundle records its stick plan)."""
    sticks = report.manifest.sticks
    if not sticks:
        return f"the {report.chunks_checked} chunk(s) here are"
    missing = set(report.not_here)
    whole = [i for i in range(1, len(sticks.chunks) + 1) if not missing.intersection(sticks.files_on(i))]
    if not whole:
        return (f"no whole stick is here; the {counted(report.chunks_checked, 'chunk')} here "
                f"{'is' if report.chunks_checked == 1 else 'are'}")
    stray = report.chunks_checked - sum(len(sticks.chunks[i - 1]) for i in whole)
    return (f"{', '.join(sticks.label(i) for i in whole)} here"
            + (f" with {counted(stray, 'chunk')} of other sticks" if stray else "")
            + f" ({counted(report.chunks_checked, 'chunk')}) {'is' if len(whole) == 1 and not stray else 'are'}")


def print_signature_verdict(found: Trust, check, refusal: str | None) -> None:
    """Print what the bundle's signature says under the site's trust setting (trust.signature_verdict)."""
    print_result(check.describe() if check else "signature: unsigned")
    if refusal is None and found.allowed_signers is None:
        print_result(NO_SIGNERS)


def run_installed(args) -> int:
    """The scrub (for cron): re-hash $AMSHOME/repository against its receipt; name what differs."""
    if (args.bundle is not None or args.partial or args.no_test or args.allowed_signers or args.revoked_keys
            or args.transfer_report is not None):
        raise UsageError("verify --installed checks AMSHOME's repository against its receipt: it takes no bundle "
                         "folder and none of --partial, --no-test, --allowed-signers, --revoked-keys, --transfer-report")
    home = amshome_of(args).absolute()
    if not home.is_dir():
        raise UsageError(f"AMSHOME {home} is not a directory")
    args.report_facts.update(amshome=str(home), ok=None, problems=[], installed=installed_facts(home))
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
    args.report_facts.update(ok=not found, problems=found)
    for line in found[:MAX_CHANGES_LISTED]:
        print_stderr(f"  {line}")
    if len(found) > MAX_CHANGES_LISTED:
        print_stderr(f"  ... and {len(found) - MAX_CHANGES_LISTED} more")
    if report.receipt.get("trust_installed"):
        print_stderr("note: the last delta unpack took installed files by size, mtime and inode without hashing them "
                     "(--trust-installed); this check is the first to hash them since")
    require_intact(home, report)
    print_result(f"{home / placement.REPOSITORY} is intact: {counted(report.files, 'file')}, {format_size(report.bytes)} "
                 f"hashed against its receipt (tree {report.receipt['tree_sha256'][:12]}, {' and '.join(report.versions)})")
    return 0


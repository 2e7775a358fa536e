"""``amsrepomirror repair BUNDLE --into DIR``: rebuild a damaged bundle's chunks from its PAR2 files into DIR,
never writing to BUNDLE (offline.repair), so DIR is a bundle unpack takes as usual."""

import shlex
from pathlib import Path

from amsrepomirror import errors
from amsrepomirror.bundle.format import read_manifest_bytes, refuse_settings_read_from
from amsrepomirror.bundle.parity import require_par2
from amsrepomirror.bundle.trust import signature_verdict
from amsrepomirror.bundle.verify import not_a_bundle, verify_bundle
from amsrepomirror.cli.options import add_command, add_signer_options, folder_path, refuse_settings_in_the_bundle, site_trust
from amsrepomirror.cli.output import print_result, print_stderr, tool_command
from amsrepomirror.errors import IntegrityError, UsageError
from amsrepomirror.offline.repair import repair_bundle


def add_parser(sub) -> None:
    p = add_command(sub, "repair", "rebuild a bundle's damaged or missing chunks from its parity (bundle --parity) "
                    "into another folder; the bundle itself is only read")
    p.add_argument("bundle", type=Path, help="the damaged bundle folder (holding manifest.json and parity.par2)")
    p.add_argument("--into", required=True, type=folder_path, metavar="DIR",
                   help="an empty folder outside the bundle: the repaired bundle is written there")
    add_signer_options(p)
    p.set_defaults(func=run, check_before_settings=refuse_settings_in_the_bundle)


def run(args) -> int:
    """The repair command: the signature first (as unpack), then verify, then par2 on copies in DIR."""
    why_not = not_a_bundle(args.bundle, tool_command())
    if why_not:
        raise UsageError(why_not)
    refuse_settings_read_from(args.bundle)
    require_par2()  # exit 2 naming Debian's par2, before anything is read
    found = site_trust(args)
    manifest_bytes = read_manifest_bytes(args.bundle)
    check, bad_signature = signature_verdict(args.bundle, found, manifest_bytes)
    if bad_signature:
        print_stderr(f"error: {bad_signature}")
        return errors.INTEGRITY_FAILURE
    print_result(check.describe() if check else "signature: unsigned")
    report = verify_bundle(args.bundle, test_archives=False, manifest_bytes=manifest_bytes)
    if report.ok:
        print_result(f"bundle {args.bundle} is intact: nothing to repair; unpack it as it is")
        return 0
    if report.manifest is None or report.manifest.parity is None:
        raise IntegrityError(f"{report.message()}; it has no parity (made without bundle --parity): nothing to repair with")
    if not report.parity_damaged and (report.repair is None or not report.repair.repairable):
        raise IntegrityError(report.message())  # (with damaged recovery files, par2 on the intact ones decides)
    repaired = repair_bundle(args.bundle, args.into, manifest_bytes, report.manifest)
    print_result(f"repaired {len(repaired.rebuilt)} chunk(s) into {args.into} ({', '.join(repaired.rebuilt)}); "
                 f"{args.bundle} was not changed; unpack it with: {tool_command()} unpack {shlex.quote(str(args.into))}")
    return 0

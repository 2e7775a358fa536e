"""``amsrepomirror receipt``: write what AMSHOME's repository holds (its receipt; no secrets), to carry to
the online side for ``bundle --since``."""

import json
from pathlib import Path

from amsrepomirror.bundle.receipt import receipt_lacking, receipt_tree
from amsrepomirror.cli.options import add_command, amshome_of, installed_facts
from amsrepomirror.cli.output import print_stderr
from amsrepomirror.cli.report import add_report_option
from amsrepomirror.errors import UsageError
from amsrepomirror.offline import placement
from amsrepomirror.offline.extract import tree_problems
from amsrepomirror.util import skipped_files
from amsrepomirror.util.fsutil import atomic_write_json
from amsrepomirror.util.units import counted


def add_parser(sub) -> None:
    p = add_command(sub, "receipt", "write what AMSHOME's repository holds (for bundle --since on the online side)")
    p.add_argument("--amshome", type=Path, help="the AMS installation folder (default: $AMSHOME from the environment)")
    p.add_argument("--out", type=Path, help="file to write (default: receipt-<VERSION>-<tree>.json here; - for stdout)")
    add_report_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    """Write AMSHOME's receipt (the installed tree; no secrets) to a file to carry to the online side."""

    home = amshome_of(args).absolute()
    args.report_facts.update(amshome=str(home), receipt_file=None, installed=installed_facts(home))
    receipt = placement.read_receipt(home)
    if receipt is None:
        raise UsageError(f"AMSHOME {home} has no receipt: nothing was unpacked there by amsrepomirror")
    tree = receipt_tree(receipt, home / placement.RECEIPT)
    changes = tree_problems(home / placement.REPOSITORY, tree, check_hashes=False)
    if changes:
        print_stderr(f"warning: {home / placement.REPOSITORY} no longer matches this receipt ({changes[0]}); "
                     "a delta built on it will be refused: unpack a full bundle with --reinstall")
    for line in skipped_files.describe(receipt_lacking(receipt, home / placement.RECEIPT), "receipt: the installed tree"):
        print_stderr(line)
    identity = receipt["tree_sha256"]
    out = args.out or Path(f"receipt-{receipt['version']}-{identity[:12]}.json")
    args.report_facts["receipt_file"] = "-" if str(out) == "-" else str(out.absolute())
    if str(out) == "-":
        print(json.dumps(receipt, indent=1, sort_keys=True))
    else:
        atomic_write_json(out, receipt)
        print_stderr(f"receipt: wrote {out}: {receipt['version']}, "
                     f"{counted(len(tree), 'file')}, tree {identity[:12]}; carry it to the "
                     f"online side for: amsrepomirror bundle ... --since {out}")
    return 0

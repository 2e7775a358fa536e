"""The ``amsrepomirror`` argument parser: its global options and help, and each command's parser, added by
that command's module (``add_parser``) in the order the help lists them."""

import argparse

from amsrepomirror import __version__
from amsrepomirror.cli import bundle, config, demo, mirror, plan, receipt, unpack, verify
from amsrepomirror.cli.options import ACCOUNT, EXIT_CODES, AdminHelp

PURPOSE = ("Mirror SCM's AMS package repository, carry it across an air gap in checksummed 7z chunks, "
           "and place it as $AMSHOME/repository.")

SIZES = """sizes: KiB, MiB, GiB are 1024-based, kB, MB, GB 1000-based (as USB sticks are sold); a bare K, M or G
is refused as ambiguous. Sizes are shown 1024-based (KiB, MiB, GiB) everywhere."""

WORKFLOW = """online, with network:
  amsrepomirror bundle --version AMS2026.1 --mirror /data/ams-mirror --out /data/bundle-2026.1
offline, on the cluster (AMSHOME set, or --amshome DIR):
  amsrepomirror verify BUNDLE      (or verify --partial STICK, one stick at a time)
  amsrepomirror unpack BUNDLE"""

#: The commands, in the order the help lists them.
COMMANDS = (mirror, bundle, plan, verify, unpack, receipt, config, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amsrepomirror", description=f"{PURPOSE}\n\n{WORKFLOW}",
                                     epilog=f"{ACCOUNT}\n\n{SIZES}\n\n{EXIT_CODES}", formatter_class=AdminHelp)
    parser.add_argument("--version", action="version", version=f"amsrepomirror {__version__}",
                        help="print the version of amsrepomirror and exit (after a command, --version is an AMS version)")
    parser.add_argument("--config", metavar="FILE", help="settings file read last, over every luigi.cfg "
                        "(amsrepomirror config shows what applies; default: none)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser

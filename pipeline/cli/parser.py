"""The ``amsrepomirror`` argument parser: its global options and help, and each command's parser, added by
that command's module (``add_parser``) in the order the help lists them."""

import argparse
import re

from amsrepomirror import __version__
from amsrepomirror.cli import bundle, config, demo, mirror, plan, receipt, unpack, verify
from amsrepomirror.cli.mirror import ACCOUNT_NOT_HERE
from amsrepomirror.cli.options import ACCOUNT, EXIT_CODES, AdminHelp
from amsrepomirror.errors import USAGE_ERROR
from amsrepomirror.util.units import counted

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


CONFIG_HELP = "settings file read last, over every luigi.cfg (amsrepomirror config shows what applies; default: none)"


class OneLineErrors(argparse.ArgumentParser):
    """A parser whose errors are one ``error:`` line, with where to look, as every other error of the tool
    (argparse's own are a usage block and a line starting with the program's name); exit 2 stays."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"error: {without_values(message)} (see: {self.prog} --help)\n")


def without_values(message: str) -> str:
    """argparse's message with nothing the admin typed repeated but option names: a word it could not place may be
    an account given where SCM's script takes it (mirror LISTING_URL FOLDER USER PASSWORD)."""
    if message.startswith("unrecognized arguments: "):
        words = message[len("unrecognized arguments: "):].split(" ")
        options = [w.split("=", 1)[0] for w in words if w.startswith("-")]
        others = len(words) - len(options)
        shown = options + ([f"{counted(others, 'other word')} (not repeated here)"] if others else [])
        return (f"unrecognized arguments: {', '.join(shown)}"
                + (f"; {ACCOUNT_NOT_HERE}" if others else ""))
    return re.sub(r"invalid (\w+) value: '.*'$|invalid choice: '.*?' \(", lambda m: m.group(0).split(":")[0]
                  + (" (" if m.group(0).endswith("(") else ""), message)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="amsrepomirror", description=f"{PURPOSE}\n\n{WORKFLOW}",
                           epilog=f"{ACCOUNT}\n\n{SIZES}\n\n{EXIT_CODES}", formatter_class=AdminHelp)
    parser.add_argument("--version", action="version", version=f"amsrepomirror {__version__}",
                        help="print the version of amsrepomirror and exit (after a command, --version is an AMS version)")
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    for command_parser in sub.choices.values():  # also after the command, where an admin adds it to a command line
        command_parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP)
    return parser

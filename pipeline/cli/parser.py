"""The ``amsrepomirror`` argument parser: its global options and help, and each command's parser, added by
that command's module (``add_parser``) in the order the help lists them.

A command line imports the module of its own command only (``build_parser(every_command=False)``): a
``mirror`` run does not load the packing, unpacking and signature code of the other commands, a tenth of a
second of imports (docs/benchmarks.md, start-up). ``build_parser()`` makes every command's parser at once,
for the man page, shell completion and the tests that read them.
"""

import argparse
import importlib
import re
from pathlib import Path

from amsrepomirror import __version__
from amsrepomirror.cli.options import ACCOUNT, ACCOUNT_NOT_HERE, EXIT_CODES, AdminHelp, folder_path
from amsrepomirror.cli.output import quiet_mode
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

#: The commands, in the order the help lists them: each is the module amsrepomirror.cli.<name>, whose
#: ``add_parser`` adds its parser.
COMMANDS = ("mirror", "bundle", "plan", "verify", "repair", "unpack", "receipt", "config", "demo")


CONFIG_HELP = "settings file read last, over every luigi.cfg (amsrepomirror config shows what applies; default: none)"
QUIET_HELP = ("errors only, for cron: no progress, notes, summaries or verdicts; error and warning lines and the exit "
              "code stay (what config, plan and receipt are asked to print is printed) (default: off)")

#: Options that ask for more on the terminal (by their dest): refused beside --quiet, which shows errors only.
LOUDER = {"verbose": "--verbose", "luigi_summary": "--luigi-summary"}

#: Options and arguments that name a folder (besides those of type folder_path), for shell completion; every other
#: path (type Path, or a FILE) completes as a file.
FOLDER_DESTS = {"mirror", "amshome", "workdir", "bundle"}
COMPLETE_FILE = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}
COMPLETE_FOLDER = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/", "tcsh": "d"}


class OneLineErrors(argparse.ArgumentParser):
    """A parser whose errors are one ``error:`` line, with where to look, as every other error of the tool
    (argparse's own are a usage block and a line starting with the program's name); exit 2 stays."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"error: {without_values(message)} (see: {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        """The command line, its output options settled: --quiet (errors only) or not, never with --verbose."""
        parsed = super().parse_args(args, namespace)
        louder = [option for dest, option in LOUDER.items() if getattr(parsed, dest, False)]
        if parsed.quiet and louder:
            self.error(f"give --quiet or {louder[0]}, not both: --quiet shows errors only")
        quiet_mode(parsed.quiet)
        return parsed


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


class Commands(argparse._SubParsersAction):
    """The commands' parsers, each made when it is first needed: when argparse meets the command's name on the
    command line, or for a help that lists them all. Until then the name alone is known (a wrong one is refused
    with the list of names, as before)."""

    def __call__(self, parser, namespace, values, option_string=None):
        make_command(self, values[0])
        super().__call__(parser, namespace, values, option_string)


class EveryCommandHelp(argparse._HelpAction):
    """``amsrepomirror --help``: lists every command with its purpose, so it makes every command's parser first."""

    def __call__(self, parser, namespace, values, option_string=None):
        commands = next(a for a in parser._actions if isinstance(a, Commands))
        for name in COMMANDS:
            make_command(commands, name)
        super().__call__(parser, namespace, values, option_string)


#: Stands for a command whose parser is not made yet (see Commands).
NOT_MADE = None


def make_command(commands: Commands, name: str) -> argparse.ArgumentParser:
    """The parser of command ``name``, made once: its module's options, then the global options that may also be
    given after the command."""
    made = commands._name_parser_map.get(name, NOT_MADE)
    if made is not NOT_MADE:
        return made
    commands._name_parser_map.pop(name, None)
    importlib.import_module(f"amsrepomirror.cli.{name}").add_parser(commands)
    command_parser = commands._name_parser_map[name]
    # also after the command, where an admin adds it to a command line
    command_parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP)
    command_parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
    mark_paths_for_completion(command_parser)
    return command_parser


def build_parser(every_command: bool = True) -> argparse.ArgumentParser:
    """The whole parser; with ``every_command=False`` a command's parser (and module) is made only when the command
    line names it (Commands)."""
    parser = OneLineErrors(prog="amsrepomirror", description=f"{PURPOSE}\n\n{WORKFLOW}",
                           epilog=f"{ACCOUNT}\n\n{SIZES}\n\n{EXIT_CODES}", formatter_class=AdminHelp, add_help=False)
    parser.add_argument("-h", "--help", action=EveryCommandHelp, help="show this help message and exit")
    parser.add_argument("--version", action="version", version=f"amsrepomirror {__version__}",
                        help="print the version of amsrepomirror and exit (after a command, --version is an AMS version)")
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", action=Commands)
    for name in COMMANDS:
        commands._name_parser_map[name] = NOT_MADE
        if every_command:
            make_command(commands, name)
    mark_paths_for_completion(parser)
    return parser


def mark_paths_for_completion(parser: argparse.ArgumentParser) -> None:
    """Options and arguments that name a file or folder complete as such in the shell (man/completion: make
    completion); shtab reads ``complete``, argparse ignores it. A command's parser is marked when it is made."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        if action.type is folder_path or action.dest in FOLDER_DESTS:
            action.complete = COMPLETE_FOLDER
        elif action.type is Path or action.metavar == "FILE":
            action.complete = COMPLETE_FILE

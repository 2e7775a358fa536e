"""``amsrepomirror``: the command line over the task graph. Errors end here as one line and an exit code.

One module per command (its options, its run function, what it prints); ``parser`` puts them together,
``runner`` runs the Luigi graph, ``exit_codes`` turns what went wrong into the documented exit code, and
``output`` holds the printing and logging shared by all. Only this package prints.
"""

import sys

from amsrepomirror import errors
from amsrepomirror.cli.exit_codes import EXPECTED, exit_code_after, reader_gone, stop_on_sigterm
from amsrepomirror.cli.output import console_logging
from amsrepomirror.cli.parser import build_parser
from amsrepomirror.cli.report import run_reported
from amsrepomirror.config import load as load_settings

__all__ = ["main", "reader_gone"]


def main(argv: list[str] | None = None) -> int:
    """Run one command line (``sys.argv[1:]`` when None); return its exit code. With ``--report FILE`` the report
    is written here, around the whole command, so that no way out of it skips the report (cli.report)."""
    console_logging()
    parser = build_parser(every_command=False)  # the command named on the line: its module only
    try:
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse already printed one line of usage error (no report: the line was not read)
        return errors.USAGE_ERROR if exc.code else 0
    return run_reported(args, _run_command)


def _run_command(args) -> int:
    """The command's exit code: what its function returned, or the code of what stopped it (exit_code_after)."""
    if sum(a == "--config" or a.startswith("--config=") for a in args.argv) > 1:  # one would silently win
        return exit_code_after(errors.UsageError("give --config once: one settings file is read last, over the others"))
    try:
        stop_on_sigterm()  # from here SIGTERM ends the command as Ctrl-C does (exit 143); before, it just ends it
        check_before_settings = getattr(args, "check_before_settings", None)  # options refused whatever the settings
        if check_before_settings:
            check_before_settings(args)
        load_settings(args.config)
        return args.func(args)
    except EXPECTED as exc:
        return exit_code_after(exc)
